"""The HTTP API: OpenAI-compatible completions and chat completions, plus /predict and helpers.

Routes (all but /health and the web page need the API key when one is set: `Authorization: Bearer KEY`):

    GET  /health                 {"status": "ok"}
    GET  /, /static/{name}       the web chat page and its scripts (serve/web.py)
    GET  /v1/models              the one model served
    POST /v1/completions         prompt: str | [str] | [ids] | [[ids]] -> one choice per prompt;
                                 echo + logprobs give the prompt's per-token logprobs
                                 (what lm-evaluation-harness `local-completions` needs)
    POST /v1/chat/completions    messages rendered with the model's chat template (or --style)
    POST /v1/embeddings          input: str | [str] | [ids] | [[ids]] -> one embedding per input:
                                 the mean of the final hidden states over its tokens,
                                 L2-normalised (recipes/embed.py); encoding_format float or
                                 base64 (little-endian float32), dimensions: the first N,
                                 renormalised (as OpenAI's text-embedding-3 models answer it)
    POST /predict                {"prompt": ...} -> {"output": ...} (the prompt as a user message)
    POST /tokenize, /detokenize, GET /tokenizer_info
                                 vLLM-style tokenizer endpoints; lm-eval's remote tokenizer uses
                                 them, so evaluation needs no local copy of the tokenizer

/predict is llmkit's own route, with the sampling defaults of `llmkit generate` (temperature
0.8, top-k 50, 256 new tokens at most; see `COMMAND_DEFAULTS`). Its body's fields:

    prompt          str, required: sent as one user message through the chat template
    max_new_tokens  int >= 1; default: 256, or what the context leaves (400 past the context)
    max_tokens      the same, under OpenAI's name (both given: they must agree)
    temperature     float >= 0 (0: greedy)
    top_k           int >= 0 (0: off)
    top_p           float in (0, 1]
    seed            int (64-bit): reproducible sampling

Streaming answers are server-sent events (`data: {json}\\n\\n`, ending with `data: [DONE]`).

Errors are OpenAI's JSON (`{"error": {"message", "type", "param", "code"}}`), as vLLM's server
and OpenAI answer them: 400 for a bad request (malformed or too deeply nested JSON, a wrong
field, `min_tokens` above `max_tokens`, a seed outside 64 bits), 401 for a missing key, 404
`model_not_found` for a `model` this server does not serve (the served name, the folder name
and the MODEL argument as given are accepted; an omitted model means this one), 413 for a
body over `max_request_bytes` (checked on Content-Length first, then counted while the body
arrives, so chunked uploads are cut off too), 415 for a body that is not JSON (a Content-Type
other than application/json; none at all is read as JSON).

Tokenizing and detokenizing long texts run in a worker thread (`asyncio.to_thread`), so one
megabyte-sized prompt does not stop the event loop from answering everyone else meanwhile.
Embeddings are computed by the engine thread (the model's one owner) in pieces of at most
EMBED_BATCH rows and EMBED_BATCH_TOKENS padded tokens, one piece between two decode steps, and
the answer's JSON is written in a worker thread: a 2048-input request neither stalls the event
loop nor stops the decoding of others. A model that cannot generate (an encoder such as BERT,
or a classifier) serves /v1/embeddings and the tokenizer routes; its completion routes answer
400.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import sys
import time
import traceback
import uuid
from contextlib import asynccontextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmkit.errors import LLMKitError
from llmkit.generate import (
    COMMAND_DEFAULTS,
    OPENAI_DEFAULTS,
    Completion,
    SamplingParams,
    Sequence,
    TokenLogprob,
    load_for_inference,
    prepare_for_decoding,
    with_defaults,
    with_style_stops,
)
from llmkit.prompts import resolve_style
from llmkit.serve.engine import DoneEvent, Engine, EngineRequest, ErrorEvent, TokenEvent
from llmkit.serve.protocol import (
    DEFAULT_MAX_REQUEST_BYTES,
    MAX_EMBEDDING_INPUTS,
    MAX_EMBEDDING_TOKENS,
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    PredictRequest,
    StreamOptions,
    TokenizeRequest,
    parse,
    reject_unsupported,
    stop_strings,
)
from llmkit.serve.web import add_web_routes

SSE_DONE = "data: [DONE]\n\n"
# Texts (characters) and token lists longer than this are (de)tokenized in a worker thread;
# shorter ones take well under a millisecond, less than the hand-over to a thread.
OFF_LOOP_AT = 16384
# One embedding job on the engine thread: at most this many inputs, and rows x longest input
# within this many tokens (a few tens of milliseconds of a small model on a CPU, so decoding
# requests wait no longer than that between two of their steps).
EMBED_BATCH = 64
EMBED_BATCH_TOKENS = 16384


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class _ClientGone(Exception):
    """The HTTP client disconnected before its answer was ready."""


class Service:
    """What the routes share: model, tokenizer, prompt style, engine, settings."""

    def __init__(self, loaded, tokenizer, style, engine: Engine, model_name: str, api_key: Optional[str],
                 aliases: tuple[str, ...] = (), max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES):
        self.loaded, self.tokenizer, self.style, self.engine = loaded, tokenizer, style, engine
        self.model_name, self.api_key = model_name, api_key
        self.model_names = frozenset((model_name, *aliases))  # what a request's `model` may say
        self.max_request_bytes = max_request_bytes
        self.created = int(time.time())
        self.token_str = lru_cache(maxsize=65536)(lambda tid: tokenizer.decode([tid], skip_special=False))

    # --- requests -> sequences ----------------------------------------------------------------
    def check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise APIError(401, "Incorrect or missing API key (send 'Authorization: Bearer <key>')",
                           code="invalid_api_key")

    def check_model(self, model: Optional[str]) -> None:
        """404 model_not_found, as at OpenAI, unless `model` names this server's model (or is
        omitted, as vLLM allows)."""
        if model is not None and model not in self.model_names and model.rstrip("/") not in self.model_names:
            raise APIError(404, f"The model `{model}` does not exist (this server serves `{self.model_name}`)",
                           param="model", code="model_not_found")

    async def read_json(self, request: Request, model: type):
        """The request body parsed into `model`: 415 unless it is JSON, 413 past
        max_request_bytes (Content-Length is checked before anything is read; a chunked body is
        counted as it arrives and cut off at the limit, so memory never holds more)."""
        ctype = request.headers.get("content-type")
        if ctype is not None:
            mime = ctype.split(";", 1)[0].strip().lower()
            if mime != "application/json" and not mime.endswith("+json"):
                raise APIError(415, f"Content-Type must be application/json, got '{ctype}'",
                               code="unsupported_media_type")
        return parse(model, await read_limited(request, self.max_request_bytes, self.too_large))

    def too_large(self, size: Optional[int]) -> APIError:
        limit = self.max_request_bytes
        got = f"{size} bytes" if size is not None else f"more than {limit} bytes"
        return APIError(413, f"Request body too large ({got}); the limit is {limit} bytes ({limit / 2**20:g} MiB, "
                             "set by `llmkit serve --max-request-mb`)", code="request_too_large")

    async def encode(self, text: str, bos: Optional[bool] = None) -> list[int]:
        """tokenizer.encode, in a worker thread for long texts (see OFF_LOOP_AT). encode_batch
        gives the same ids faster (no offsets) and releases the GIL while the Rust backend works."""
        if len(text) < OFF_LOOP_AT:
            return self.tokenizer.encode(text, bos=bos)
        return (await asyncio.to_thread(self.tokenizer.encode_batch, [text], bos))[0]

    async def decode(self, ids: list[int]) -> str:
        """tokenizer.decode (special tokens kept), in a worker thread for long token lists."""
        if len(ids) < OFF_LOOP_AT:
            return self.tokenizer.decode(ids, skip_special=False)
        return await asyncio.to_thread(self.tokenizer.decode, ids, False)

    def require_generation(self, api: str) -> None:
        """400 on a completion route when the model cannot generate (as vLLM answers it for a
        pooling model)."""
        if not self.engine.generates:
            kind = "an encoder" if not self.loaded.config.causal else "a classifier"
            raise APIError(400, f"The model `{self.model_name}` does not support the {api} API: it is {kind} and "
                                "cannot generate text; it serves /v1/embeddings", code="model_not_supported")

    async def embedding_inputs(self, req: EmbeddingRequest) -> list[list[int]]:
        """The token ids of each input of an embeddings request, checked against the limits:
        OpenAI's counts (MAX_EMBEDDING_INPUTS, MAX_EMBEDDING_TOKENS) and the model's context."""
        p = req.input
        if isinstance(p, str):
            items: list = [p]
        elif not p:
            raise APIError(400, "input must not be empty", param="input")
        elif isinstance(p[0], int):
            items = [p]
        else:
            items = list(p)
        if len(items) > MAX_EMBEDDING_INPUTS:
            raise APIError(400, f"input has {len(items)} items; at most {MAX_EMBEDDING_INPUTS} are allowed per request",
                           param="input", code="invalid_value")
        texts = [x for x in items if isinstance(x, str)]
        if any(not t for t in texts):
            raise APIError(400, "input must not contain empty strings", param="input", code="invalid_value")
        if sum(len(t) for t in texts) < OFF_LOOP_AT:
            encoded = [self.tokenizer.encode(t) for t in texts]
        else:  # one batch call in a worker thread (the Rust backend spreads it over the cores)
            encoded = await asyncio.to_thread(self.tokenizer.encode_batch, texts)
        it = iter(encoded)
        out = [next(it) if isinstance(x, str) else list(x) for x in items]
        for i, ids in enumerate(out):
            self.check_ids(ids, "input")
            if len(ids) > self.engine.max_len:
                raise APIError(400, f"This model's maximum context length is {self.engine.max_len} tokens, however "
                                    f"input {i} has {len(ids)} tokens. Please reduce the length of the input.",
                               param="input", code="context_length_exceeded")
        total = sum(len(ids) for ids in out)
        if total > MAX_EMBEDDING_TOKENS:
            raise APIError(400, f"Requested {total} tokens, max {MAX_EMBEDDING_TOKENS} tokens per request",
                           param="input", code="max_tokens_per_request")
        return out

    async def embed(self, inputs: list[list[int]], request: Request) -> "torch.Tensor":
        """(n, d) float32 embeddings of token id lists, in input order, computed by the engine
        thread in pieces (see EMBED_BATCH); cancelled if the client goes away."""
        import torch

        from llmkit.recipes.embed import encode_ids, pad_id_of

        model, pad_id = self.loaded.model, pad_id_of(self.tokenizer)
        order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))
        chunks: list[list[int]] = []
        for i in order:  # longest first: a piece's padded length is its first input's
            c = chunks[-1] if chunks else None
            if c is None or len(c) >= EMBED_BATCH or (len(c) + 1) * len(inputs[c[0]]) > EMBED_BATCH_TOKENS:
                chunks.append([i])
            else:
                c.append(i)

        def job(rows: list[list[int]]):
            with torch.inference_mode():
                return encode_ids(model, rows, pad_id, batch_size=len(rows))

        futures = [self.engine.call(lambda c=c: job([inputs[i] for i in c])) for c in chunks]
        waiting = asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        try:
            while True:
                try:
                    parts = await asyncio.wait_for(asyncio.shield(waiting), timeout=0.5)
                    break
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        raise _ClientGone() from None
        finally:
            for f in futures:
                f.cancel()  # no effect on finished ones; queued ones never run
            if not waiting.done():
                waiting.cancel()
        out = torch.empty(len(inputs), self.loaded.config.n_embd)
        for c, part in zip(chunks, parts):
            out[c] = part
        return out

    def check_ids(self, ids: list[int], param: str) -> None:
        if not ids:
            raise APIError(400, f"{param} is empty", param=param)
        vocab = self.loaded.config.vocab_size
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise APIError(400, f"token id {bad} is outside the vocabulary (0..{vocab - 1})", param=param)

    def max_new(self, requested: Optional[int], n_prompt: int, param: str, default: Optional[int],
                allow_zero: bool = False) -> int:
        """max_tokens for a prompt of n_prompt tokens: explicit values must fit the context."""
        room = self.engine.max_len - n_prompt
        if requested is None:
            if room < 1:
                raise self.too_long(n_prompt, 1, param)
            return room if default is None else min(default, room)
        if requested < (0 if allow_zero else 1):
            raise APIError(400, f"max_tokens must be at least {0 if allow_zero else 1}, got {requested}",
                           param="max_tokens", code="invalid_value")
        if n_prompt + requested > self.engine.max_len:
            raise self.too_long(n_prompt, requested, param)
        return requested

    def too_long(self, n_prompt: int, n_new: int, param: str) -> APIError:
        return APIError(400, f"This model's maximum context length is {self.engine.max_len} tokens. However, you "
                             f"requested {n_prompt + n_new} tokens ({n_prompt} in the {param}, {n_new} for the "
                             "completion). Please reduce the length of the prompt or of the completion.",
                        param=param, code="context_length_exceeded")

    def params(self, req, max_new: int, **kw) -> SamplingParams:
        """The SamplingParams of an OpenAI request (`kw`: more fields); omitted fields take
        OpenAI's defaults (`OPENAI_DEFAULTS`)."""
        if req.min_tokens is not None and req.min_tokens > max_new:  # as vLLM answers it
            raise APIError(400, f"min_tokens ({req.min_tokens}) must not exceed max_tokens ({max_new})",
                           param="min_tokens", code="invalid_value")
        try:
            return with_defaults(OPENAI_DEFAULTS, max_new_tokens=max_new, temperature=req.temperature, top_k=req.top_k,
                                 top_p=req.top_p, seed=req.seed, stop=stop_strings(req.stop),
                                 min_new_tokens=req.min_tokens, **kw)
        except LLMKitError as e:
            raise APIError(400, str(e), code="invalid_value") from None

    async def chat_ids(self, req: ChatCompletionRequest) -> list[int]:
        messages = []
        for i, m in enumerate(req.messages):
            role = "system" if m.role == "developer" else m.role
            if role not in ("system", "user", "assistant"):
                raise APIError(400, f"messages.{i}.role: '{m.role}' messages are not supported",
                               param=f"messages.{i}.role")
            if m.content is None:
                raise APIError(400, f"messages.{i}.content is missing", param=f"messages.{i}.content")
            content = m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)
            messages.append({"role": role, "content": content})
        try:
            if sum(len(m["content"]) for m in messages) < OFF_LOOP_AT:
                ids = self.style.encode(self.tokenizer, messages)
            else:  # rendering and tokenizing a long conversation: off the event loop
                ids = await asyncio.to_thread(self.style.encode, self.tokenizer, messages)
        except LLMKitError as e:  # the template refused the conversation (raise_exception)
            raise APIError(400, str(e), param="messages") from None
        self.check_ids(ids, "messages")
        return ids

    async def completion_prompts(self, req: CompletionRequest) -> list[tuple[list[int], Optional[str]]]:
        """(ids, text) per prompt; text is the string given, or None for token ids."""
        p = req.prompt
        if isinstance(p, str):
            items: list = [p]
        elif not p:
            raise APIError(400, "prompt must not be empty", param="prompt")
        elif isinstance(p[0], int):
            items = [p]
        else:
            items = list(p)
        out = []
        for x in items:
            ids = await self.encode(x) if isinstance(x, str) else list(x)
            self.check_ids(ids, "prompt")
            out.append((ids, x if isinstance(x, str) else None))
        return out

    # --- running ------------------------------------------------------------------------------
    def submit(self, seqs: list[Sequence], stream: bool) -> tuple[list[EngineRequest], asyncio.Queue]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        reqs = [EngineRequest(s, loop, events, i, stream) for i, s in enumerate(seqs)]
        try:
            for s in seqs:
                self.engine.batch.check(s)
        except LLMKitError as e:
            raise APIError(400, str(e)) from None
        for r in reqs:
            self.engine.submit(r)
        return reqs, events

    async def collect(self, reqs: list[EngineRequest], events: asyncio.Queue, request: Request) -> list[Completion]:
        """Wait for every request's completion; cancel them all if the client goes away."""
        results: dict[int, Completion] = {}
        try:
            while len(results) < len(reqs):
                try:
                    req, ev = await asyncio.wait_for(events.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        raise _ClientGone() from None
                    continue
                if isinstance(ev, DoneEvent):
                    results[req.index] = ev.completion
                elif isinstance(ev, ErrorEvent):
                    raise APIError(ev.status, ev.message, type="server_error" if ev.status >= 500 else
                                   "invalid_request_error")
        finally:
            for r in reqs:
                r.cancel()  # no effect on finished requests
        return [results[i] for i in range(len(reqs))]

    # --- response pieces ----------------------------------------------------------------------
    def completion_logprobs(self, entries: list[TokenLogprob], offset: int) -> dict:
        """OpenAI's legacy `logprobs` object: tokens, token_logprobs, top_logprobs, text_offset."""
        tokens, token_logprobs, top_logprobs, text_offset = [], [], [], []
        for e in entries:
            s = self.token_str(e.token_id)
            tokens.append(s)
            token_logprobs.append(e.logprob)
            if e.logprob is None:
                top_logprobs.append(None)
            else:
                top: dict[str, float] = {}
                for tid, lp in e.top:
                    top.setdefault(self.token_str(tid), lp)
                top.setdefault(s, e.logprob)  # the chosen token is always listed, as at OpenAI
                top_logprobs.append(top)
            text_offset.append(offset)
            offset += len(s)
        return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
                "text_offset": text_offset}

    def chat_logprobs(self, entries: list[TokenLogprob]) -> dict:
        def item(tid: int, lp: float) -> dict:
            s = self.token_str(tid)
            return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))}

        return {"content": [{**item(e.token_id, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]}
                            for e in entries]}

    @staticmethod
    def usage(completions: list[Completion]) -> dict:
        p = sum(len(c.prompt_ids) for c in completions)
        n = sum(len(c.token_ids) for c in completions)
        return {"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n}


# What a refused body may still be read (and thrown away) for: closing a connection with unread
# data in its receive buffer sends a TCP reset, and a client still uploading then loses the 413
# response itself ("peer closed connection"). Draining a bounded amount first lets it read the
# answer; past the bound (a huge or slow upload) the connection is closed anyway. Memory stays
# flat: chunks are dropped as they arrive.
DRAIN_MAX_BYTES = 256 * 2**20
DRAIN_MAX_SECONDS = 5.0


async def read_limited(request: Request, limit: int, too_large: Callable[[Optional[int]], APIError]) -> bytes:
    """The raw body of `request`, at most `limit` bytes. Content-Length is checked before anything
    is read; a chunked body is counted as it arrives and cut off at the limit, so memory never
    holds more. Past the limit the rest is drained (bounded, see `_drain`) and
    `too_large(size or None)` is raised, which the error handlers answer with Connection: close.
    Shared by `llmkit serve` and `llmkit arena`."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.strip().isdigit():
            raise APIError(400, f"invalid Content-Length header: '{length}'")
        if int(length) > limit:
            await _drain(request.stream())
            raise too_large(int(length))
    chunks, size = [], 0
    stream = request.stream()
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            await _drain(stream)
            raise too_large(None)
        chunks.append(chunk)
    return b"".join(chunks)


async def _drain(stream, max_bytes: int = DRAIN_MAX_BYTES, max_seconds: float = DRAIN_MAX_SECONDS) -> None:
    loop = asyncio.get_running_loop()
    deadline, n = loop.time() + max_seconds, 0
    try:
        async for chunk in stream:
            n += len(chunk)
            if n > max_bytes or loop.time() > deadline:
                return
    except Exception:  # the client went away, or the body is already consumed: nothing to drain
        return


def create_app(model, tokenizer=None, *, api_key: Optional[str] = None, max_batch_size: int = 16,
               max_seq_len: Optional[int] = None, style: Optional[str] = None, chat_template: Optional[str] = None,
               model_name: Optional[str] = None, device: str = "cpu", dtype: Optional[str] = None,
               engine_thread: bool = True, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> FastAPI:
    """The FastAPI app serving `model`: a MODEL spec (path or hub id) or a `checkpoint.Loaded`
    (whose model is then prepared for decoding in place: eval mode, no gradients).

    With `engine_thread` the engine runs in a background thread that starts and stops with the
    app (its lifespan); otherwise the caller runs `app.state.engine.run()` itself. `tokenizer`
    defaults to the one in the model's folder; `style`/`chat_template` choose the chat prompt
    format (default: the model's own template, see `llmkit.prompts.resolve_style`).

    Requests may name the model as `model_name` (default: the folder name), the folder name or
    the MODEL spec as given; any other `model` is a 404. Bodies over `max_request_bytes` (default
    8 MiB) are a 413.
    """
    if max_request_bytes < 1:
        raise LLMKitError(f"max_request_bytes must be at least 1, got {max_request_bytes}")
    if isinstance(model, (str, Path)):
        loaded, _ = load_for_inference(str(model), device, dtype)
    else:
        loaded = model
        prepare_for_decoding(loaded.model)
    tokenizer = tokenizer or loaded.tokenizer
    if max_seq_len is not None and max_seq_len < 2:
        raise LLMKitError(f"max_seq_len must be at least 2, got {max_seq_len}")
    chat_style = resolve_style(tokenizer, style, chat_template)
    engine = Engine(loaded.model, max_batch_size, max_seq_len)
    folder = Path(loaded.path)
    aliases = [folder.name, str(folder)]
    if isinstance(model, (str, Path)):  # the path or hub id as typed, with or without a final slash
        aliases += [str(model), str(model).rstrip("/")]
    svc = Service(loaded, tokenizer, chat_style, engine, model_name or folder.name, api_key, tuple(aliases),
                  max_request_bytes)

    app = FastAPI(title="llmkit", lifespan=_lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = svc
    app.state.engine = engine
    app.state.engine_thread = engine_thread
    add_error_handlers(app)
    for path, route, method in ROUTES:
        app.add_api_route(path, route, methods=[method])
    add_web_routes(app)  # GET / (the chat page) and /static/{name}, open without the key (serve/web.py)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI):
    if app.state.engine_thread:
        app.state.engine.start()
    yield
    if app.state.engine_thread:
        app.state.engine.stop()


# --- errors: OpenAI's error JSON --------------------------------------------------------------
def _error_response(err: APIError) -> JSONResponse:
    # After a 413 the connection is closed: the refused body was drained only up to a bound (see
    # `_drain`), so what is left of it must not be read as the next request.
    headers = {"Connection": "close"} if err.status == 413 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


async def _api_error(request: Request, exc: APIError):
    return _error_response(exc)


async def _http_error(request: Request, exc: StarletteHTTPException):
    return _error_response(APIError(exc.status_code, str(exc.detail), code=None))


def add_error_handlers(app: FastAPI) -> None:
    """OpenAI-style JSON for every error of `app` (APIError, Starlette's 404/405, anything else
    as a logged 500); shared by `llmkit serve` and `llmkit arena`."""
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)


async def _internal_error(request: Request, exc: Exception):
    traceback.print_exception(exc, file=sys.stderr)
    return _error_response(APIError(500, "internal server error", type="server_error"))


# --- routes -----------------------------------------------------------------------------------
def _service(request: Request) -> Service:
    """The app's Service, once the request has shown the API key (when one is set)."""
    svc: Service = request.app.state.service
    svc.check_key(request)
    return svc


async def health():
    return {"status": "ok"}


async def models(request: Request):
    svc = _service(request)
    return {"object": "list", "data": [{"id": svc.model_name, "object": "model", "created": svc.created,
                                        "owned_by": "llmkit", "max_model_len": svc.engine.max_len}]}


async def _openai_request(request: Request, model_cls):
    """(Service, validated body) of an OpenAI route: API key, content type and size, JSON,
    the request's model, fields llmkit does not support."""
    svc = _service(request)
    req = await svc.read_json(request, model_cls)
    svc.check_model(req.model)
    reject_unsupported(req)
    return svc, req


async def completions(request: Request):
    svc, req = await _openai_request(request, CompletionRequest)
    svc.require_generation("Completions")
    prompts = await svc.completion_prompts(req)
    echo = bool(req.echo)
    seqs = []
    for ids, _ in prompts:
        n = svc.max_new(req.max_tokens, len(ids), "prompt", default=OPENAI_DEFAULTS.max_new_tokens, allow_zero=echo)
        params = svc.params(req, n, logprobs=req.logprobs,
                            prompt_logprobs=req.logprobs if echo and req.logprobs is not None else None)
        seqs.append(Sequence(ids, params, svc.tokenizer))
    reqs, events = svc.submit(seqs, bool(req.stream))
    cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": cid, "object": "text_completion", "created": created, "model": svc.model_name}

    echoed: dict[int, str] = {}  # token-id prompts, decoded (off the loop when long) for echo
    if echo:
        for i, (ids, text) in enumerate(prompts):
            if text is None:
                echoed[i] = await svc.decode(ids)

    def echo_text(i: int) -> str:
        text = prompts[i][1]
        return text if text is not None else echoed[i]

    if req.stream:
        offsets: dict[int, int] = {}  # per choice: characters of token text sent so far

        def logprobs(i: int, entries: list[TokenLogprob], previous: Optional[dict]) -> dict:
            lp = svc.completion_logprobs(entries, offsets[i])
            offsets[i] += sum(len(t) for t in lp["tokens"])
            return lp if previous is None else {k: previous[k] + lp[k] for k in lp}

        def chunk(r: EngineRequest, ev) -> Optional[dict]:
            i = r.index
            choice: dict[str, Any] = {"index": i, "text": "", "logprobs": None, "finish_reason": None}
            if i not in offsets:  # echo (and its logprobs) go with a choice's first chunk
                offsets[i] = 0 if echo else len(prompts[i][1] or "")
                if echo:
                    choice["text"] = echo_text(i)
                    if req.logprobs is not None and r.seq.prompt_logprobs is not None:
                        choice["logprobs"] = logprobs(i, r.seq.prompt_logprobs, None)
            if isinstance(ev, TokenEvent):
                choice["text"] += ev.text
                if req.logprobs is not None and ev.logprob is not None:
                    choice["logprobs"] = logprobs(i, [ev.logprob], choice["logprobs"])
                elif not choice["text"] and choice["logprobs"] is None:
                    return None  # nothing to say yet (text held back)
            elif isinstance(ev, DoneEvent):
                choice["finish_reason"] = ev.completion.finish_reason
            return choice

        return _sse_response(_sse_chunks(head, reqs, events, chunk, req.stream_options))

    try:
        results = await svc.collect(reqs, events, request)
    except _ClientGone:
        return Response(status_code=499)
    choices = []
    for i, c in enumerate(results):
        text, logprobs = c.text, None
        if echo:
            text = echo_text(i) + text
        if req.logprobs is not None:
            entries = (c.prompt_logprobs or []) + (c.logprobs or [])
            logprobs = svc.completion_logprobs(entries, 0 if echo else len(prompts[i][1] or ""))
        choices.append({"index": i, "text": text, "logprobs": logprobs, "finish_reason": c.finish_reason})
    # A JSONResponse skips FastAPI's jsonable_encoder, a Python walk over every value on the
    # event loop (~2 s for the million token ids of a 4 MB /tokenize answer; echoed logprobs of
    # a batch of long prompts are as many values).
    return JSONResponse({**head, "choices": choices, "usage": svc.usage(results)})


async def chat_completions(request: Request):
    svc, req = await _openai_request(request, ChatCompletionRequest)
    svc.require_generation("Chat Completions")
    ids = await svc.chat_ids(req)
    requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    n = svc.max_new(requested, len(ids), "messages", default=None)  # None: the rest of the context
    want_logprobs = bool(req.logprobs)
    if req.top_logprobs and not want_logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    params, stop_ids = with_style_stops(svc.params(req, n, logprobs=(req.top_logprobs or 0) if want_logprobs else None),
                                        svc.style, svc.tokenizer)
    reqs, events = svc.submit([Sequence(ids, params, svc.tokenizer, stop_ids)], bool(req.stream))
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": cid, "object": "chat.completion.chunk" if req.stream else "chat.completion",
            "created": created, "model": svc.model_name}

    if req.stream:
        def chunk(r: EngineRequest, ev) -> Optional[dict]:
            if isinstance(ev, TokenEvent):
                lp = svc.chat_logprobs([ev.logprob]) if want_logprobs and ev.logprob is not None else None
                if not ev.text and lp is None:
                    return None
                return {"index": 0, "delta": {"content": ev.text}, "logprobs": lp, "finish_reason": None}
            return {"index": 0, "delta": {}, "logprobs": None, "finish_reason": ev.completion.finish_reason}

        first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        return _sse_response(_sse_chunks(head, reqs, events, chunk, req.stream_options, first=first))

    try:
        (c,) = await svc.collect(reqs, events, request)
    except _ClientGone:
        return Response(status_code=499)
    choice = {"index": 0, "message": {"role": "assistant", "content": c.text},
              "logprobs": svc.chat_logprobs(c.logprobs or []) if want_logprobs else None,
              "finish_reason": c.finish_reason}
    return {**head, "choices": [choice], "usage": svc.usage([c])}


async def predict(request: Request):
    svc = _service(request)
    req: PredictRequest = await svc.read_json(request, PredictRequest)
    svc.require_generation("/predict")
    if req.max_tokens is not None and req.max_new_tokens not in (None, req.max_tokens):
        raise APIError(400, f"max_tokens ({req.max_tokens}) and max_new_tokens ({req.max_new_tokens}) disagree: "
                            "send one of them", param="max_tokens", code="invalid_value")
    requested = req.max_new_tokens if req.max_new_tokens is not None else req.max_tokens
    messages = [{"role": "user", "content": req.prompt}]
    try:
        if len(req.prompt) < OFF_LOOP_AT:
            ids = svc.style.encode(svc.tokenizer, messages)
        else:
            ids = await asyncio.to_thread(svc.style.encode, svc.tokenizer, messages)
    except LLMKitError as e:
        raise APIError(400, str(e), param="prompt") from None
    svc.check_ids(ids, "prompt")
    n = svc.max_new(requested, len(ids), "prompt", default=COMMAND_DEFAULTS.max_new_tokens)
    try:  # the defaults of `llmkit generate`, not OpenAI's: this is llmkit's own route
        params, stop_ids = with_style_stops(
            with_defaults(COMMAND_DEFAULTS, max_new_tokens=n, temperature=req.temperature, top_k=req.top_k,
                          top_p=req.top_p, seed=req.seed), svc.style, svc.tokenizer)
    except LLMKitError as e:
        raise APIError(400, str(e)) from None
    reqs, events = svc.submit([Sequence(ids, params, svc.tokenizer, stop_ids)], stream=False)
    try:
        (c,) = await svc.collect(reqs, events, request)
    except _ClientGone:
        return Response(status_code=499)
    return {"output": c.text}


async def embeddings(request: Request):
    svc, req = await _openai_request(request, EmbeddingRequest)
    d = svc.loaded.config.n_embd
    if req.dimensions is not None and req.dimensions > d:
        raise APIError(400, f"dimensions must be at most the model's {d}, got {req.dimensions}", param="dimensions",
                       code="invalid_value")
    inputs = await svc.embedding_inputs(req)
    try:
        vectors = await svc.embed(inputs, request)
    except _ClientGone:
        return Response(status_code=499)
    n_tokens = sum(len(ids) for ids in inputs)
    body = await asyncio.to_thread(_embedding_body, vectors, req.dimensions, req.encoding_format or "float",
                                   svc.model_name, n_tokens)
    return Response(body, media_type="application/json")


def _embedding_body(vectors, dimensions: Optional[int], encoding_format: str, model_name: str, n_tokens: int) -> bytes:
    """The /v1/embeddings answer as JSON bytes (built in a worker thread: 2048 x 1024 floats
    take about a second to write)."""
    import torch

    if dimensions is not None and dimensions < vectors.shape[1]:
        vectors = torch.nn.functional.normalize(vectors[:, :dimensions], dim=-1)
    arr = vectors.numpy().astype("<f4")  # what the OpenAI client decodes base64 as
    if encoding_format == "base64":
        data: list = [base64.b64encode(row.tobytes()).decode("ascii") for row in arr]
    else:
        data = arr.tolist()
    return json.dumps({"object": "list",
                       "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)],
                       "model": model_name, "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}},
                      ensure_ascii=False).encode()


async def tokenize(request: Request):
    svc = _service(request)
    req: TokenizeRequest = await svc.read_json(request, TokenizeRequest)
    ids = await svc.encode(req.prompt, bos=None if req.add_special_tokens else False)
    return JSONResponse({"tokens": ids, "count": len(ids), "max_model_len": svc.engine.max_len})  # see completions


async def detokenize(request: Request):
    svc = _service(request)
    req: DetokenizeRequest = await svc.read_json(request, DetokenizeRequest)
    svc.check_ids(req.tokens or [0], "tokens")
    return {"prompt": await svc.decode(req.tokens)}


async def tokenizer_info(request: Request):
    svc = _service(request)
    t = svc.tokenizer
    return {**{k: t.special_tokens.get(k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")},
            "chat_template": t.chat_template, "model_max_length": svc.engine.max_len, "vocab_size": t.vocab_size,
            "add_bos_token": t.add_bos, "tokenizer_class": "llmkit"}


# (path, handler, HTTP method), registered by create_app in this order.
ROUTES = [
    ("/health", health, "GET"),
    ("/v1/models", models, "GET"),
    ("/v1/completions", completions, "POST"),
    ("/v1/chat/completions", chat_completions, "POST"),
    ("/v1/embeddings", embeddings, "POST"),
    ("/predict", predict, "POST"),
    ("/tokenize", tokenize, "POST"),
    ("/detokenize", detokenize, "POST"),
    ("/tokenizer_info", tokenizer_info, "GET"),
]


# --- streaming: server-sent events ------------------------------------------------------------
async def _stream_events(reqs: list[EngineRequest], events: asyncio.Queue):
    """(request, event) pairs until every request is done. Leaving early (the client
    disconnected: the response task is cancelled or its generator closed) cancels them."""
    remaining = len(reqs)
    try:
        while remaining:
            req, ev = await events.get()
            if isinstance(ev, ErrorEvent):
                raise APIError(ev.status, ev.message, type="server_error" if ev.status >= 500 else
                               "invalid_request_error")
            if isinstance(ev, DoneEvent):
                remaining -= 1
            yield req, ev
    finally:
        for r in reqs:
            r.cancel()


async def _sse_chunks(head: dict, reqs: list[EngineRequest], events: asyncio.Queue,
                      chunk: Callable[[EngineRequest, Any], Optional[dict]], options: Optional[StreamOptions],
                      first: Optional[dict] = None) -> AsyncIterator[str]:
    """The events of a streamed answer: `first` (a choice sent before any token), then
    `chunk(request, event)` per engine event (None: nothing to send for it), the usage when
    `options.include_usage` asks for it, and [DONE]."""
    if first is not None:
        yield _sse({**head, "choices": [first]})
    done: list[Completion] = []
    async for r, ev in _stream_events(reqs, events):
        if isinstance(ev, DoneEvent):
            done.append(ev.completion)
        choice = chunk(r, ev)
        if choice is not None:
            yield _sse({**head, "choices": [choice]})
    if options is not None and options.include_usage:
        yield _sse({**head, "choices": [], "usage": Service.usage(done)})
    yield SSE_DONE


def _sse_response(chunks: AsyncIterator[str]) -> StreamingResponse:
    async def guarded() -> AsyncIterator[str]:
        # Headers are already sent: an error mid-stream becomes an error event, then [DONE].
        try:
            async for chunk in chunks:
                yield chunk
        except APIError as e:
            yield _sse(e.body())
            yield SSE_DONE
        except Exception as e:  # a bug: keep the server up, tell the client
            traceback.print_exception(e, file=sys.stderr)
            yield _sse(APIError(500, "internal server error", type="server_error").body())
            yield SSE_DONE

    return StreamingResponse(guarded(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
