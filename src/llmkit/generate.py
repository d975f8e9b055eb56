"""Text generation: prefill + cached decoding, sampling, stop handling, streaming, batching.

    prompt ids ──prefill (all but the last token)──> KV cache rows
    loop: last token of every row ──forward at the row's own position──> logits (B, vocab)
          -> greedy / temperature / top-k / top-p -> next token per row -> stop checks -> text

Everything is built on `DecodeBatch`: sequences share one preallocated KV cache, row i of the
cache holding `batch.seqs[i]`. Rows sit at different positions (`input_pos` is (B, 1)), so
prompts of different lengths decode together and each row gets exactly the positions, hence
the tokens, it would get alone. A row that finishes leaves the batch at once (the last row
moves into its slot, keeping live rows at the front so a step computes only live rows); new
sequences can join between steps. `generate`, `generate_batch` and `stream` below add all
their prompts up front; the server's engine (llmkit.serve) adds and removes them as requests
come and go (continuous batching).

The prefill runs on all prompt tokens but the last; the first decode step then feeds each
row's last prompt token at its own position. That gives every row its next-token logits from
a `last_only` forward (one vocabulary projection per row, not per prompt token) even when the
prompts of a batch have different lengths.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Optional, Sequence as Seq

import torch

from llmkit.errors import LLMKitError

if TYPE_CHECKING:
    from llmkit.tokenizer import Tokenizer

# Prefill work per forward call: rows x tokens. Bounds the activations and the attention
# scores of long or many prompts; the cache makes chunks exact (later chunks attend to it).
PREFILL_CHUNK_TOKENS = 4096


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


# --- results ------------------------------------------------------------------------------------
@dataclass
class TokenLogprob:
    """A token's log-probability and the most likely alternatives at its position."""

    token_id: int
    logprob: Optional[float]  # None for the first prompt token (nothing predicts it)
    top: list[tuple[int, float]] = field(default_factory=list)  # (token id, logprob), best first


@dataclass
class Completion:
    text: str
    token_ids: list[int]  # generated ids, the stop token included when one ended the sequence
    prompt_ids: list[int]
    finish_reason: str  # "stop" (stop token or string) or "length" (max_new_tokens or context)
    logprobs: Optional[list[TokenLogprob]] = None
    prompt_logprobs: Optional[list[TokenLogprob]] = None
    time_to_first_token: float = 0.0  # seconds from the start of prefill
    total_time: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return len(self.token_ids) / self.total_time if self.total_time > 0 else 0.0


# --- one sequence -------------------------------------------------------------------------------
class Sequence:
    """One prompt being continued: generated ids, sampling state, and the text let out so far.

    Text comes from a `StreamDecoder` (never half a UTF-8 character). With stop strings, text
    that could be the beginning of one is held back until the next tokens decide: either the
    stop string completes (the sequence ends, the stop string and what follows are dropped) or
    the held text is let out.
    """

    def __init__(self, prompt_ids: Seq[int], params: SamplingParams, tokenizer: "Tokenizer",
                 stop_ids: Optional[set[int]] = None):
        from llmkit.tokenizer import StreamDecoder

        self.prompt_ids = [int(t) for t in prompt_ids]
        if not self.prompt_ids:
            raise LLMKitError("the prompt is empty (and the tokenizer adds no BOS token)")
        self.params = params
        self.tokenizer = tokenizer
        self.stop_ids = set(tokenizer.eos_ids if stop_ids is None else stop_ids)
        self.generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        self.token_ids: list[int] = []
        self.text = ""  # emitted so far
        self.finish_reason: Optional[str] = None
        self.logprobs: Optional[list[TokenLogprob]] = [] if params.logprobs is not None else None
        self.prompt_logprobs: Optional[list[TokenLogprob]] = None
        self.cancelled = False
        self.max_len = 0  # set by DecodeBatch.add: the cache length bounds prompt + generation
        # Decoding state: the next token to feed and its position.
        self.next_input = self.prompt_ids[-1]
        self.pos = len(self.prompt_ids) - 1
        self._decoder = StreamDecoder(tokenizer)
        self._held = ""
        self.t_start = time.perf_counter()
        self.t_first: Optional[float] = None
        self.t_end: Optional[float] = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def _finish(self, reason: str) -> None:
        self.finish_reason = reason
        self.t_end = time.perf_counter()

    def _release(self, text: str, final: bool) -> str:
        """Add decoded text; return what can be emitted now (held-back text handled)."""
        held = self._held + text
        stops = self.params.stop
        if stops:
            hits = [i for i in (held.find(s) for s in stops) if i >= 0]
            if hits:
                self._held = ""
                self._finish("stop")
                return held[: min(hits)]
            if not final:
                # Longest end of `held` that some stop string starts with: keep it back.
                keep = 0
                for s in stops:
                    for k in range(min(len(s) - 1, len(held)), keep, -1):
                        if held.endswith(s[:k]):
                            keep = k
                            break
                self._held = held[len(held) - keep:] if keep else ""
                return held[: len(held) - keep]
        self._held = ""
        return held

    def append(self, token_id: int, logprob: Optional[TokenLogprob] = None) -> str:
        """Record the next token; return the text it lets out ("" while held back)."""
        if self.t_first is None:
            self.t_first = time.perf_counter()
        self.token_ids.append(token_id)
        if logprob is not None and self.logprobs is not None:
            self.logprobs.append(logprob)
        self.next_input, self.pos = token_id, self.pos + 1
        if token_id in self.stop_ids:
            self._finish("stop")
            out = self._release(self._decoder.flush(), final=True)
        else:
            out = self._release(self._decoder.push(token_id), final=False)
            if not self.finished and (len(self.token_ids) >= self.params.max_new_tokens
                                      or len(self.prompt_ids) + len(self.token_ids) >= self.max_len):
                out += self._release(self._decoder.flush(), final=True)
                if not self.finished:
                    self._finish("length")
        self.text += out
        return out

    def result(self) -> Completion:
        end = self.t_end if self.t_end is not None else time.perf_counter()
        first = self.t_first if self.t_first is not None else end
        return Completion(self.text, list(self.token_ids), list(self.prompt_ids), self.finish_reason or "length",
                          self.logprobs, self.prompt_logprobs, first - self.t_start, end - self.t_start)


def _top_logprobs(logprobs: torch.Tensor, chosen: torch.Tensor, k: int) -> list[TokenLogprob]:
    """TokenLogprob per row from log-probabilities (N, vocab) and the chosen ids (N,)."""
    picked = logprobs.gather(-1, chosen[:, None])[:, 0].tolist()
    if k:
        values, ids = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
        tops = [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
    else:
        tops = [[] for _ in picked]
    return [TokenLogprob(int(t), lp, top) for t, lp, top in zip(chosen.tolist(), picked, tops)]


# --- a batch of sequences in one KV cache -------------------------------------------------------
class DecodeBatch:
    """Sequences decoding together: row i of one preallocated KV cache holds `seqs[i]`."""

    def __init__(self, model, batch_size: int, max_len: Optional[int] = None):
        self.model = model
        self.max_len = min(max_len or model.max_seq_len, model.max_seq_len)
        self.batch_size = batch_size
        with torch.inference_mode():
            self.cache = model.new_cache(batch_size, self.max_len)
        self.device = self.cache.k[0].device
        self.seqs: list[Sequence] = []

    @property
    def free(self) -> int:
        return self.batch_size - len(self.seqs)

    def check(self, seq: Sequence) -> None:
        """Raise LLMKitError if `seq` cannot run in this batch."""
        n = len(seq.prompt_ids)
        if n >= self.max_len:
            raise LLMKitError(f"the prompt is {n} tokens; the context is {self.max_len} tokens "
                              "(at least one more is needed to generate)")
        vocab = self.model.cfg.vocab_size
        bad = next((t for t in seq.prompt_ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise LLMKitError(f"token id {bad} is outside the vocabulary (0..{vocab - 1})")

    @torch.inference_mode()
    def add(self, seqs: list[Sequence]) -> None:
        """Prefill `seqs` into free rows; they decode from the next `step` on."""
        if len(seqs) > self.free:
            raise LLMKitError(f"{len(seqs)} sequences do not fit: {self.free} free rows")
        for s in seqs:
            self.check(s)
            s.max_len = self.max_len
        # Rows for prompt log-probabilities come last: they prefill one at a time with logits
        # at every position; the others prefill together, right-padded.
        plain = [s for s in seqs if s.params.prompt_logprobs is None]
        scored = [s for s in seqs if s.params.prompt_logprobs is not None]
        start = len(self.seqs)
        self._prefill(start, plain)
        for i, s in enumerate(scored):
            self._prefill(start + len(plain) + i, [s])
        for s in plain + scored:
            if s.params.max_new_tokens == 0:  # e.g. echo with logprobs only: nothing to generate
                s._finish("length")
            else:
                self.seqs.append(s)

    def _prefill(self, row: int, seqs: list[Sequence]) -> None:
        """Write prompts[:-1] of `seqs` into rows row, row+1, ...; logits only when scoring."""
        lengths = [len(s.prompt_ids) - 1 for s in seqs]
        T = max(lengths, default=0)
        if T == 0:
            return
        ids = torch.zeros(len(seqs), T, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : lengths[i]] = torch.tensor(s.prompt_ids[:-1])
        ids = ids.to(self.device)
        # Right-padded, every row at positions 0..T-1: one shared (T,) position vector, which
        # the cache writes with a single copy (padding slots are overwritten when decoding).
        pos = torch.arange(T, device=self.device)
        score = seqs[0].params.prompt_logprobs is not None  # scored sequences come alone
        t_chunk = min(T, PREFILL_CHUNK_TOKENS)
        rows_per_chunk = max(1, PREFILL_CHUNK_TOKENS // t_chunk)
        scored: list[TokenLogprob] = []
        for r0 in range(0, len(seqs), rows_per_chunk):
            r1 = min(r0 + rows_per_chunk, len(seqs))
            view = self.cache.rows(row + r0, row + r1)
            for t0 in range(0, T, t_chunk):
                t1 = min(t0 + t_chunk, T)
                logits = self.model(ids[r0:r1, t0:t1], pos[t0:t1], view, last_only=not score)
                if score:  # position t predicts prompt token t + 1
                    logprobs = torch.log_softmax(logits[0].float(), dim=-1)  # (t1 - t0, vocab)
                    targets = torch.tensor(seqs[0].prompt_ids[t0 + 1: t1 + 1], device=logprobs.device)
                    scored += _top_logprobs(logprobs, targets, seqs[0].params.prompt_logprobs)
        if score:
            seqs[0].prompt_logprobs = [TokenLogprob(seqs[0].prompt_ids[0], None)] + scored

    def _pick(self, logits: torch.Tensor) -> tuple[list[int], list[Optional[TokenLogprob]]]:
        """Next token per row from float logits (n, vocab), each row with its own parameters."""
        seqs = self.seqs
        for i, s in enumerate(seqs):
            if s.params.min_new_tokens > len(s.token_ids) and s.stop_ids:
                logits[i, list(s.stop_ids)] = float("-inf")
        if all(s.params.greedy for s in seqs):
            tokens = logits.argmax(-1)
        else:
            tokens = torch.stack([
                sample(logits[i: i + 1], s.params.temperature, s.params.top_k, s.params.top_p, s.generator)[0]
                for i, s in enumerate(seqs)])
        infos: list[Optional[TokenLogprob]] = [None] * len(seqs)
        for i, s in enumerate(seqs):
            if s.params.logprobs is not None:
                lp = torch.log_softmax(logits[i: i + 1], dim=-1)
                infos[i] = _top_logprobs(lp, tokens[i: i + 1], s.params.logprobs)[0]
        return tokens.tolist(), infos

    @torch.inference_mode()
    def step(self) -> list[tuple[Sequence, str]]:
        """Decode one token for every row; return (sequence, new text) per row. Sequences that
        finished leave the batch."""
        if not self.seqs:
            return []
        idx = torch.tensor([[s.next_input] for s in self.seqs], device=self.device)  # (n, 1)
        pos = torch.tensor([[s.pos] for s in self.seqs], device=self.device)  # (n, 1)
        logits = self.model(idx, pos, self.cache, last_only=True)[:, -1].float()  # (n, vocab)
        tokens, infos = self._pick(logits)
        out = [(s, s.append(t, info)) for s, t, info in zip(self.seqs, tokens, infos)]
        for i in reversed(range(len(self.seqs))):
            if self.seqs[i].finished:
                self._drop_row(i)
        return out

    @torch.inference_mode()
    def remove(self, seq: Sequence) -> None:
        """Take `seq` out of the batch (e.g. a cancelled request), freeing its row."""
        for i, s in enumerate(self.seqs):
            if s is seq:
                self._drop_row(i)
                return

    def _drop_row(self, i: int) -> None:
        last = len(self.seqs) - 1
        if i != last:  # move the last row into the hole: live rows stay at the front
            moved = self.seqs[last]
            n = min(moved.pos + 1, self.max_len)  # slots written so far
            for buf in self.cache.k + self.cache.v:
                buf[i, :, :n].copy_(buf[last, :, :n])
            self.seqs[i] = moved
        self.seqs.pop()

    def clear(self) -> None:
        self.seqs.clear()


# --- one-call API -------------------------------------------------------------------------------
def encode_prompt(tokenizer: "Tokenizer", prompt: "str | Seq[int]") -> list[int]:
    """Token ids of a prompt given as text (BOS as the tokenizer does) or as ids."""
    if isinstance(prompt, str):
        return tokenizer.encode(prompt)
    ids = list(prompt)
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise LLMKitError("a prompt must be a string or a list of token ids")
    return ids


def _params(params: Optional[SamplingParams], overrides: dict) -> SamplingParams:
    params = params or SamplingParams()
    return params.replace(**overrides) if overrides else params


def _cache_len(model, prompt_lens: list[int], params: SamplingParams) -> int:
    # Just what these sequences need: a short cache keeps attention and memory small.
    return min(model.max_seq_len, max(prompt_lens) + max(params.max_new_tokens, 1))


def generate_batch(model, tokenizer: "Tokenizer", prompts: Seq["str | Seq[int]"],
                   params: Optional[SamplingParams] = None, *, stop_ids: Optional[set[int]] = None,
                   **overrides) -> list[Completion]:
    """Complete several prompts together (one KV cache, rows at their own positions).

    Greedy results equal `generate` on each prompt alone. With a seed, row i samples from its
    own generator seeded with `seed`, like a lone call. `overrides` are SamplingParams fields.
    """
    params = _params(params, overrides)
    ids = [encode_prompt(tokenizer, p) for p in prompts]
    seqs = [Sequence(p, params, tokenizer, stop_ids) for p in ids]
    if not seqs:
        return []
    batch = DecodeBatch(model, len(seqs), _cache_len(model, [len(p) for p in ids], params))
    batch.add(seqs)
    while batch.seqs:
        batch.step()
    return [s.result() for s in seqs]


def generate(model, tokenizer: "Tokenizer", prompt: "str | Seq[int]", params: Optional[SamplingParams] = None,
             *, stop_ids: Optional[set[int]] = None, **overrides) -> Completion:
    """Complete one prompt (text or token ids). `stop_ids` default to the tokenizer's EOS ids;
    `overrides` are SamplingParams fields, e.g. `generate(m, tok, "Hi", max_new_tokens=20)`."""
    return generate_batch(model, tokenizer, [prompt], params, stop_ids=stop_ids, **overrides)[0]


class GenerationStream:
    """Iterate to get the completion's text piece by piece; `.completion` once exhausted.

    The model runs only while the iterator is advanced: stop iterating to stop generating.
    """

    def __init__(self, model, tokenizer: "Tokenizer", prompt: "str | Seq[int]", params: SamplingParams,
                 stop_ids: Optional[set[int]] = None):
        self.seq = Sequence(encode_prompt(tokenizer, prompt), params, tokenizer, stop_ids)
        self.model = model
        self.completion: Optional[Completion] = None

    def __iter__(self) -> Iterator[str]:
        seq = self.seq
        batch = DecodeBatch(self.model, 1, _cache_len(self.model, [len(seq.prompt_ids)], seq.params))
        batch.add([seq])
        while batch.seqs:
            for _, text in batch.step():
                if text:
                    yield text
        self.completion = seq.result()


def stream(model, tokenizer: "Tokenizer", prompt: "str | Seq[int]", params: Optional[SamplingParams] = None,
           *, stop_ids: Optional[set[int]] = None, **overrides) -> GenerationStream:
    """Like `generate`, but yields text as it is decoded: `for text in stream(...)`."""
    return GenerationStream(model, tokenizer, prompt, _params(params, overrides), stop_ids)


# --- model preparation and loading for the commands ---------------------------------------------
# Rows up to which float32 products take MatVecLinear's batched-kernel path (a serving batch
# decodes one token per row): measured faster than F.linear for 1 to 16 rows, e.g. the
# 50257 x 576 output matrix with 4 rows in 2.9 ms instead of 12.7.
MATVEC_MAX_ROWS = 16


class MatVecLinear(torch.nn.Linear):
    """An nn.Linear, sharing the original's Parameters, whose products with one row (decoding
    at batch 1) or a few rows (float32: up to MATVEC_MAX_ROWS, a serving batch) take the
    fastest CPU kernel measured for them; other inputs use `F.linear` as before. Same values: only which kernel sums the products changes.

    Measured on a 2-core AVX-512 CPU over the 211 matrices of a SmolLM2-135M-shaped model
    (bench/bench_decode.py, BENCHMARKS.md "Decode speed"):
    * float32: `F.linear(x, W)` with M = 1 goes to MKL's sgemm and streams the weights at
      ~20 GB/s; `torch.bmm` of W viewed as `blocks` row blocks (blocks, n/blocks, k) against x
      as a column goes to MKL's batched gemm, which reads them at ~36 GB/s (a plain `sum`
      reads ~38 GB/s): ~1.8x faster products (the 50257 x 576 output matrix: 7.2 -> 3.5 ms).
    * bfloat16: oneDNN (PyTorch's default for bf16 matmuls on CPU) is slow for one row (a
      ~20 us floor per call); with oneDNN switched off for the call, PyTorch's own bf16
      matrix-vector kernel (float32 accumulation) is ~1.6x faster over the model.
    """

    def __init__(self, linear: torch.nn.Linear):
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight  # the same Parameter: ties and state_dict keys unchanged
        self.bias = linear.bias
        # Row blocks for bmm (the batched kernel needs >= 2 equal blocks): the smallest divisor
        # of out_features; 0 (plain F.linear) when it has none below 64 (a prime, e.g.).
        n = self.out_features
        self.blocks = next((b for b in range(2, 65) if n % b == 0), 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        rows = x.numel() // self.in_features
        if rows > MATVEC_MAX_ROWS or w.device.type != "cpu" or not w.is_contiguous():
            return torch.nn.functional.linear(x, w, self.bias)
        if w.dtype == torch.bfloat16:
            if rows > 1:  # oneDNN is the fastest bf16 kernel for several rows
                return torch.nn.functional.linear(x, w, self.bias)
            mkldnn = torch._C._get_mkldnn_enabled()
            torch._C._set_mkldnn_enabled(False)
            try:
                return torch.nn.functional.linear(x, w, self.bias)
            finally:
                torch._C._set_mkldnn_enabled(mkldnn)
        if w.dtype != torch.float32 or not self.blocks:
            return torch.nn.functional.linear(x, w, self.bias)
        b, k = self.blocks, self.in_features
        # x as a (k, rows) matrix with strides (1, k): MKL takes the slow path if the unit
        # dimension's stride is 1 (650 vs 60 us for a 1536 x 576 matrix and one row).
        col = x.reshape(rows, k).t().expand(b, k, rows)  # (blocks, k, rows)
        y = torch.bmm(w.view(b, -1, k), col)  # (blocks, n/blocks, rows)
        y = y.permute(2, 0, 1).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


def prepare_for_decoding(model) -> None:
    """Make `model` faster for token-by-token decoding; values and results are unchanged.

    Every plain nn.Linear (also one inside a LoRA wrapper; quantized layers are left alone)
    becomes a `MatVecLinear` holding the same Parameters, so decoding products use the fastest
    CPU kernel (see there); state_dict keys and tied weights are unchanged.
    """
    import torch.nn as nn

    model.eval().requires_grad_(False)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, MatVecLinear(child))


def load_for_inference(model: str, device: str = "cpu", dtype: Optional[str] = None):
    """(Loaded, Tokenizer) for the generate / chat / serve commands, model ready to decode."""
    from llmkit.checkpoint import load_model
    from llmkit.tokenizer import Tokenizer

    loaded = load_model(model, device=device, dtype=dtype)
    tokenizer = Tokenizer.from_dir(loaded.path)
    if tokenizer.vocab_size > loaded.config.vocab_size:
        raise LLMKitError(f"{loaded.path}: the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                          f"{loaded.config.vocab_size}")
    prepare_for_decoding(loaded.model)
    return loaded, tokenizer


def resolve_style(tokenizer: "Tokenizer", style: Optional[str] = None, chat_template: Optional[str] = None):
    """The prompt style for a command: a Jinja template file, a style name, or "auto" (the
    model's own template or a style its vocabulary suggests)."""
    from pathlib import Path

    from llmkit.prompts import PromptStyle

    if chat_template is not None and style is not None:
        raise LLMKitError("give either --style or --chat_template, not both")
    if chat_template is not None:
        path = Path(chat_template)
        if not path.is_file():
            raise LLMKitError(f"chat template file '{chat_template}' does not exist")
        return PromptStyle.from_template(path.read_text(encoding="utf-8"), tokenizer.special_tokens)
    if style is None or style == "auto":
        return PromptStyle.for_model(tokenizer)
    return PromptStyle.from_name(style)


def timing_line(seconds: float, n_tokens: int) -> str:
    """`Time for inference: 3.08 sec total, 13.94 tokens/sec, 43 tokens`"""
    rate = n_tokens / seconds if seconds > 0 else 0.0
    return f"Time for inference: {seconds:.2f} sec total, {rate:.2f} tokens/sec, {n_tokens} tokens"


def generate_cli(
    model: str,
    prompt: str,
    max_new_tokens: int = 128,
    temperature: float = 0.8,
    top_k: Optional[int] = 50,
    top_p: float = 1.0,
    seed: Optional[int] = None,
    stop: Optional[list[str]] = None,
    style: Optional[str] = None,
    chat_template: Optional[str] = None,
    system: Optional[str] = None,
    device: str = "cpu",
    dtype: Optional[str] = None,
) -> None:
    """Generate a continuation of a prompt, streamed to stdout (timing on stderr).

    Args:
        model: an llmkit checkpoint directory, a Hugging Face model directory or a hub repo id
            (with its tokenizer files).
        prompt: the text to continue (or, with --style/--chat_template, the user message).
        max_new_tokens: generate at most this many tokens (fewer if the context ends first).
        temperature: 0 for greedy decoding; higher is more random.
        top_k: sample among the k most likely tokens only (0 or null: all).
        top_p: nucleus sampling: the smallest set of tokens holding this probability, in (0, 1].
        seed: random seed, for reproducible sampling.
        stop: strings that end the generation (cut from the output), e.g. '["\\n\\n"]'.
        style: wrap the prompt as a chat message: "auto" (the model's chat template, or a style
            its vocabulary suggests) or a style name (alpaca, chatml, llama3, llama2, mistral,
            phi3, gemma, plain). Default: the prompt is used as is.
        chat_template: a Jinja chat template file to wrap the prompt with (instead of --style).
        system: system prompt (with --style or --chat_template).
        device: cpu, cuda, cuda:1, mps...
        dtype: float32 or bfloat16 (default: the checkpoint's).
    """
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                            seed=seed, stop=tuple(stop or ()))
    if system is not None and style is None and chat_template is None:
        raise LLMKitError("--system needs --style or --chat_template (a plain prompt has no system part)")
    loaded, tokenizer = load_for_inference(model, device, dtype)
    stop_ids = set(tokenizer.eos_ids)
    if style is None and chat_template is None:
        ids = tokenizer.encode(prompt)
    else:
        chat_style = resolve_style(tokenizer, style, chat_template)
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        ids = chat_style.encode(tokenizer, messages)
        params = params.replace(stop=params.stop + tuple(s for s in chat_style.stop_strings if s not in params.stop))
        stop_ids |= chat_style.stop_token_ids(tokenizer)
    context = loaded.model.max_seq_len
    if len(ids) >= context:
        raise LLMKitError(f"the prompt is {len(ids)} tokens; the model's context is {context} tokens")
    params = params.replace(max_new_tokens=min(params.max_new_tokens, context - len(ids)))
    gen = stream(loaded.model, tokenizer, ids, params, stop_ids=stop_ids)
    for text in gen:
        sys.stdout.write(text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    c = gen.completion
    print(timing_line(c.total_time, len(c.token_ids)), file=sys.stderr)
    print(f"Prompt: {len(ids)} tokens, time to first token {c.time_to_first_token:.2f} sec; "
          f"finish reason: {c.finish_reason}", file=sys.stderr)
