"""Decoding: prefill + cached decoding, stop handling, streaming, batching (the token choice
itself is `llmkit.generate.sampling`).

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

An encoder-decoder (T5, BART) decodes the same way: its prompt is the source, which the
prefill runs through the encoder once, writing each decoder layer's cross-attention keys and
values into the row's cache; the decoder then starts from the decoder-start token at position
0 (`Sequence.context_ids`), and a step is one decoder token per row, exactly as for a decoder.

The prefill runs on all prompt tokens but the last; the first decode step then feeds each
row's last prompt token at its own position. That gives every row its next-token logits from
a `last_only` forward (one vocabulary projection per row, not per prompt token) even when the
prompts of a batch have different lengths.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Optional, Sequence as Seq

import torch

from llmkit.errors import LLMKitError
from llmkit.generate.sampling import SamplingParams, force_token, forced_tokens, sample

if TYPE_CHECKING:
    from llmkit.prompts import PromptStyle
    from llmkit.tokenizer import Tokenizer

# Prefill work per forward call: rows x tokens. Bounds the activations and the attention
# scores of long or many prompts; the cache makes chunks exact (later chunks attend to it).
PREFILL_CHUNK_TOKENS = 4096


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
        # Decoding state: the next token to feed and its position. The decoder's context is the
        # prompt, or for an encoder-decoder the decoder-start token(s) (`start_decoder`).
        self.context_ids = self.prompt_ids
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

    def start_decoder(self, start_ids: list[int]) -> None:
        """An encoder-decoder's sequence: the prompt is the source; the decoder begins with
        `start_ids` (its decoder-start token; a forced first token is chosen like any other, in `_pick`)."""
        self.context_ids = list(start_ids)
        self.next_input, self.pos = self.context_ids[-1], len(self.context_ids) - 1

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
                                      or len(self.context_ids) + len(self.token_ids) >= self.max_len):
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

    def __init__(self, model, batch_size: int, max_len: Optional[int] = None, src_len: Optional[int] = None):
        self.model = model
        self.max_len = min(max_len or model.max_seq_len, model.max_seq_len)
        self.batch_size = batch_size
        self.seq2seq = model.cfg.is_seq2seq
        self.src_len = min(src_len or model.max_seq_len, model.max_seq_len) if self.seq2seq else 0
        with torch.inference_mode():
            self.cache = model.new_cache(batch_size, self.max_len, **({"src_len": self.src_len} if self.seq2seq else {}))
        self.device = self.cache.k[0].device
        self.seqs: list[Sequence] = []
        extra = model.cfg.extra
        # Where an encoder-decoder's decoder starts (T5: the pad token; BART: </s>), and the tokens
        # a checkpoint's config forces first and last (BART: <s>, </s>), as transformers' generate.
        self.start_ids = [extra.get("decoder_start_token_id", extra.get("pad_token_id", 0))]
        self.forced_bos, self.forced_eos = forced_tokens(model.cfg)

    @property
    def free(self) -> int:
        return self.batch_size - len(self.seqs)

    def check(self, seq: Sequence) -> None:
        """Raise LLMKitError if `seq` cannot run in this batch."""
        n = len(seq.prompt_ids)
        if self.seq2seq and n > self.src_len:
            raise LLMKitError(f"the source is {n} tokens; the encoder takes at most {self.src_len}")
        if self.seq2seq and seq.params.prompt_logprobs is not None:
            raise LLMKitError("prompt log-probabilities are for decoder-only models (an encoder-decoder's "
                              "prompt is its source, which nothing predicts)")
        if not self.seq2seq and n >= self.max_len:
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
            if self.seq2seq:
                s.start_decoder(self.start_ids)
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

    def _prefill_sources(self, row: int, seqs: list[Sequence]) -> None:
        """An encoder-decoder's prefill: the sources, right-padded, through the encoder once, in
        chunks of rows; their cross-attention keys/values land in rows row, row+1, ..."""
        rows_per_chunk = max(1, PREFILL_CHUNK_TOKENS // max(len(s.prompt_ids) for s in seqs))
        for r0 in range(0, len(seqs), rows_per_chunk):
            chunk = seqs[r0: r0 + rows_per_chunk]
            S = max(len(s.prompt_ids) for s in chunk)
            src = torch.zeros(len(chunk), S, dtype=torch.long)
            mask = torch.zeros(len(chunk), S, dtype=torch.bool)
            for i, s in enumerate(chunk):
                src[i, : len(s.prompt_ids)] = torch.tensor(s.prompt_ids)
                mask[i, : len(s.prompt_ids)] = True
            self.model.prefill_source(src.to(self.device), mask.to(self.device),
                                      self.cache.rows(row + r0, row + r0 + len(chunk)))

    def _prefill(self, row: int, seqs: list[Sequence]) -> None:
        """Write context[:-1] of `seqs` (the prompt; an encoder-decoder's decoder-start tokens,
        after its source) into rows row, row+1, ...; logits only when scoring."""
        if self.seq2seq and seqs:
            self._prefill_sources(row, seqs)
        lengths = [len(s.context_ids) - 1 for s in seqs]
        T = max(lengths, default=0)
        if T == 0:
            return
        ids = torch.zeros(len(seqs), T, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : lengths[i]] = torch.tensor(s.context_ids[:-1])
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
            # The first token is BOS and the last one max_new_tokens allows is EOS when a checkpoint's
            # config asks (transformers' ForcedBOS/ForcedEOSTokenLogitsProcessor; BART's does).
            forced = self.forced_bos if not s.token_ids else None
            if self.forced_eos is not None and len(s.token_ids) + 1 >= s.params.max_new_tokens:
                forced = self.forced_eos
            if forced is not None:
                force_token(logits[i], forced)
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
            self.cache.move_row(last, i, min(moved.pos + 1, self.max_len))  # slots written so far
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


def with_style_stops(params: SamplingParams, style: "PromptStyle",
                     tokenizer: "Tokenizer") -> tuple[SamplingParams, set[int]]:
    """(params, stop ids) for a prompt rendered in a chat `style`: the style's stop strings join
    `params.stop` (those not there yet) and its stop tokens join the tokenizer's EOS ids, since
    a reply ends at whichever comes first."""
    stop = params.stop + tuple(s for s in style.stop_strings if s not in params.stop)
    return params.replace(stop=stop), set(tokenizer.eos_ids) | style.stop_token_ids(tokenizer)


def _params(params: Optional[SamplingParams], overrides: dict) -> SamplingParams:
    params = params or SamplingParams()
    return params.replace(**overrides) if overrides else params


def _cache_len(model, prompt_lens: list[int], params: SamplingParams) -> int:
    # Just what these sequences need: a short cache keeps attention and memory small. An
    # encoder-decoder's decoder holds its start tokens and the generated ones, not the source.
    context = 2 if model.cfg.is_seq2seq else max(prompt_lens)
    return min(model.max_seq_len, context + max(params.max_new_tokens, 1))


def _new_batch(model, n: int, prompt_lens: list[int], params: SamplingParams) -> DecodeBatch:
    return DecodeBatch(model, n, _cache_len(model, prompt_lens, params), src_len=max(prompt_lens))


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
    batch = _new_batch(model, len(seqs), [len(p) for p in ids], params)
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
        batch = _new_batch(self.model, 1, [len(seq.prompt_ids)], seq.params)
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
