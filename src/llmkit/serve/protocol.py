"""OpenAI API request shapes, validation and error bodies.

Requests are validated strictly (a string where a number belongs is a 400, as at OpenAI, not
silently converted) and every error is OpenAI's JSON:
`{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}`.
Unknown extra fields are accepted and ignored, as OpenAI-compatible servers do; known fields
whose behaviour llmkit does not implement (penalties, logit_bias, tools, n > 1, best_of...) are
rejected when set to anything but their neutral value, never silently ignored.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmkit.generate.sampling import OPENAI_DEFAULTS

MAX_LOGPROBS = 20  # OpenAI allows top_logprobs up to 20 (completions: 5)
# Seeds are 64-bit signed integers, as in vLLM (torch.Generator takes no more than 64 bits).
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1
# Request bodies above this are answered 413 before they are read in full (`llmkit serve
# --max-request-mb`). 8 MiB holds a batch of 16 prompts of 32k token ids as JSON (~7 bytes per
# id) or a few million characters of text, far more than any context llmkit serves.
DEFAULT_MAX_REQUEST_BYTES = 8 * 2**20
# /v1/embeddings limits, OpenAI's: at most 2048 inputs per request and 300,000 tokens over all of
# them (each input also within the model's context).
MAX_EMBEDDING_INPUTS = 2048
MAX_EMBEDDING_TOKENS = 300_000


class APIError(Exception):
    """An error answered as OpenAI's error JSON with an HTTP status."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class StreamOptions(_Request):
    include_usage: bool = False


class _Sampling(_Request):
    """Fields shared by completions and chat completions."""

    model: Optional[str] = None
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    top_k: Optional[int] = Field(None, ge=0)  # extension (vLLM): 0 disables
    n: Optional[int] = 1
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    stop: Optional[Union[str, list[str]]] = None
    seed: Optional[int] = Field(None, ge=SEED_MIN, le=SEED_MAX)
    min_tokens: Optional[int] = Field(None, ge=0)  # extension (vLLM): forbid the stop tokens until then
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    logit_bias: Optional[dict[str, Any]] = None
    user: Optional[str] = None


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: Optional[int] = OPENAI_DEFAULTS.max_new_tokens
    echo: Optional[bool] = False
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)
    best_of: Optional[int] = None
    suffix: Optional[str] = None


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: str
    content: Optional[Union[str, list[TextPart]]] = None
    name: Optional[str] = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Optional[int] = None  # the rest of the context (see OPENAI_DEFAULTS)
    max_completion_tokens: Optional[int] = None
    logprobs: Optional[bool] = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: Optional[list[Any]] = None
    tool_choice: Optional[Any] = None
    response_format: Optional[dict[str, Any]] = None


class PredictRequest(_Request):
    prompt: str
    max_new_tokens: Optional[int] = Field(None, ge=1)
    max_tokens: Optional[int] = Field(None, ge=1)  # the OpenAI name of max_new_tokens
    temperature: Optional[float] = Field(None, ge=0)
    top_k: Optional[int] = Field(None, ge=0)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    seed: Optional[int] = Field(None, ge=SEED_MIN, le=SEED_MAX)


class EmbeddingRequest(_Request):
    model: Optional[str] = None
    input: Union[str, list[str], list[int], list[list[int]]]
    encoding_format: Optional[Literal["float", "base64"]] = "float"
    dimensions: Optional[int] = Field(None, ge=1)
    user: Optional[str] = None


class TokenizeRequest(_Request):
    prompt: str
    add_special_tokens: bool = True


class DetokenizeRequest(_Request):
    tokens: list[int]


def parse(model: type[BaseModel], raw: bytes) -> Any:
    """Decode a JSON body into `model`; malformed JSON or wrong fields are a 400.

    Nesting deeper than the interpreter's recursion limit (`[[[[...]]]]`, a few bytes per
    level) makes json.loads raise RecursionError: that is the client's fault too, a 400."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
    except RecursionError:
        raise APIError(400, "request body is nested too deeply", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data)
    except RecursionError:
        raise APIError(400, "request body is nested too deeply", code="invalid_json") from None
    except ValidationError as e:
        errors = e.errors()
        loc = errors[0]["loc"]
        if len(errors) > 1 and loc and all(err["loc"][:1] == loc[:1] for err in errors):
            # Every alternative of a union failed: name the field and what it accepts.
            param = str(loc[0])
            message = f"{param}: {_UNION_HINTS.get(param, 'invalid value')}"
        else:
            param = ".".join(str(p) for p in loc) or None
            message = f"{param}: {errors[0]['msg']}" if param else errors[0]["msg"]
        raise APIError(400, message, param=param, code="invalid_value") from None


_UNION_HINTS = {
    "prompt": "expected a string, a list of strings, a list of token ids or a list of lists of token ids",
    "input": "expected a string, a list of strings, a list of token ids or a list of lists of token ids",
    "stop": "expected a string or a list of strings",
    "messages": "expected a list of {\"role\", \"content\"} objects",
}


def reject_unsupported(req: _Request) -> None:
    """400 for features set to values llmkit does not implement."""
    if not isinstance(req, _Sampling):
        return  # embeddings: every field is implemented
    checks = [
        ("n", req.n not in (None, 1), "only n=1 is supported"),
        ("presence_penalty", req.presence_penalty not in (None, 0), "presence_penalty is not supported"),
        ("frequency_penalty", req.frequency_penalty not in (None, 0), "frequency_penalty is not supported"),
        ("logit_bias", bool(req.logit_bias), "logit_bias is not supported"),
    ]
    if isinstance(req, CompletionRequest):
        checks += [("best_of", req.best_of not in (None, 1), "only best_of=1 is supported"),
                   ("suffix", bool(req.suffix), "suffix is not supported")]
    if isinstance(req, ChatCompletionRequest):
        checks += [("tools", bool(req.tools), "tools are not supported"),
                   ("tool_choice", req.tool_choice not in (None, "none"), "tool_choice is not supported"),
                   ("response_format", req.response_format not in (None, {"type": "text"}),
                    "only response_format {\"type\": \"text\"} is supported")]
    for param, bad, message in checks:
        if bad:
            raise APIError(400, message, param=param, code="unsupported_parameter")


def stop_strings(stop: Optional[Union[str, list[str]]]) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    if any(not s for s in stops):
        raise APIError(400, "stop strings must not be empty", param="stop")
    return stops
