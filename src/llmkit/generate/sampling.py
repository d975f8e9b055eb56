"""How the next token is picked: `SamplingParams`, the defaults of every command, and `sample`.

    logits (B, vocab) -> / temperature -> top-k -> top-p (nucleus) -> softmax -> multinomial
    (temperature 0: argmax, greedy)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import torch

from llmkit.errors import LLMKitError


# --- parameters ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplingParams:
    """How tokens are picked and when a sequence stops.

    temperature 0 is greedy decoding. top_k and top_p filter the distribution before sampling
    (top-k first, then nucleus sampling, Holtzman et al. 2020); None/0 and 1.0 disable them.
    `seed` makes sampling reproducible: each sequence draws from its own `torch.Generator`.
    `stop` strings end the sequence and are cut from the text. `min_new_tokens` forbids the
    stop tokens until that many tokens exist (as transformers' `min_new_tokens`).
    `logprobs`: per generated token, its log-probability and the `logprobs` most likely
    alternatives (0: the chosen token only). `prompt_logprobs`: the same for each prompt token
    after the first. Log-probabilities are the model's own (before temperature and filtering).
    """

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: Optional[int] = None
    top_p: float = 1.0
    seed: Optional[int] = None
    stop: tuple[str, ...] = ()
    min_new_tokens: int = 0
    logprobs: Optional[int] = None
    prompt_logprobs: Optional[int] = None

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise LLMKitError(msg)

        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not is_int(self.max_new_tokens) or self.max_new_tokens < 0:
            bad(f"max_new_tokens must be a non-negative integer, got {self.max_new_tokens!r}")
        if not isinstance(self.temperature, (int, float)) or isinstance(self.temperature, bool) \
                or not math.isfinite(self.temperature) or self.temperature < 0:
            bad(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if self.top_k is not None and (not is_int(self.top_k) or self.top_k < 0):
            bad(f"top_k must be a positive integer (or 0/None to disable), got {self.top_k!r}")
        if not isinstance(self.top_p, (int, float)) or isinstance(self.top_p, bool) or not 0 < self.top_p <= 1:
            bad(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and not is_int(self.seed):
            bad(f"seed must be an integer, got {self.seed!r}")
        if not is_int(self.min_new_tokens) or self.min_new_tokens < 0:
            bad(f"min_new_tokens must be a non-negative integer, got {self.min_new_tokens!r}")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        if not all(isinstance(s, str) and s for s in stop):
            bad(f"stop must be a list of non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", stop)
        for name in ("logprobs", "prompt_logprobs"):
            v = getattr(self, name)
            if v is not None and (not is_int(v) or v < 0):
                bad(f"{name} must be a non-negative integer, got {v!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def replace(self, **changes) -> "SamplingParams":
        return dataclasses.replace(self, **changes)



# --- defaults -----------------------------------------------------------------------------------
# The one table of sampling defaults, for a command or a request that leaves a field out:
#
#   who                                 max new tokens             temperature  top_k  top_p
#   SamplingParams() (the Python API)   128                        0 (greedy)   off    1.0
#   llmkit generate, server's /predict  128                        0.8          50     1.0
#   llmkit chat                         512 (CHAT_MAX_NEW_TOKENS)  0.8          50     1.0
#   OpenAI /v1/completions              16                         1.0          off    1.0
#   OpenAI /v1/chat/completions         the rest of the context    1.0          off    1.0
#
# The Python API is deterministic unless asked. The commands sample a little among the likeliest
# tokens (litgpt's generate defaults: text that reads well and differs from run to run); a chat
# reply usually ends at its stop token, so its bound is looser. The OpenAI routes do what the
# OpenAI API reference says of an omitted field, so its clients get what they would get there
# (top_k is a vLLM extension, off unless given).
COMMAND_DEFAULTS = SamplingParams(max_new_tokens=128, temperature=0.8, top_k=50, top_p=1.0)
CHAT_MAX_NEW_TOKENS = 512
OPENAI_DEFAULTS = SamplingParams(max_new_tokens=16, temperature=1.0, top_k=None, top_p=1.0)


def with_defaults(defaults: SamplingParams, **fields) -> SamplingParams:
    """`defaults` with each of `fields` (SamplingParams fields) that is not None: the
    parameters of a request that may leave any field out. Invalid values raise LLMKitError."""
    return defaults.replace(**{k: v for k, v in fields.items() if v is not None})


# --- sampling -----------------------------------------------------------------------------------
def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: Optional[int] = None, top_p: float = 1.0,
           generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Next token ids (B,) from logits (B, vocab): greedy when temperature is 0."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1) the k-th largest
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        # Keep the smallest set of most likely tokens whose probability reaches top_p: drop a
        # token when the tokens ranked above it already hold top_p (the first always stays).
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# --- forced tokens ------------------------------------------------------------------------------
def forced_tokens(cfg) -> tuple[Optional[int], Optional[int]]:
    """(first, last) tokens a checkpoint's config forces (transformers' ForcedBOS /
    ForcedEOSTokenLogitsProcessor: BART's <s> first, </s> at the last allowed step), read from
    config.json / generation_config.json into `cfg.extra`; only encoder-decoders use them here."""
    extra = cfg.extra if cfg.is_seq2seq else {}
    return extra.get("forced_bos_token_id"), extra.get("forced_eos_token_id")


def force_token(scores: torch.Tensor, token: int) -> None:
    """Make `token` the only choice of every row of `scores` (..., vocab), in place: 0 there
    (log-probability 1), -inf elsewhere."""
    scores.fill_(float("-inf"))
    scores[..., token] = 0.0

