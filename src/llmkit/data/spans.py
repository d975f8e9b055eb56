"""Span-corruption (T5) and denoising (BART) pretraining batches for encoder-decoder models.

Two objectives over the same contiguous windows of a prepared token stream (WindowSampler,
documents separated by EOS inside a window, as transformers' run_t5_mlm_flax.py packs them):

    span      T5's span corruption (Raffel et al. 2020, sec. 3.1.4 and 3.3.4; the t5 repo's
              preprocessors.py): 15% of the tokens, in spans of mean length 3 (`noise_mask`),
              each span replaced by one sentinel in the input, the target listing every span
              after its sentinel (`span_corrupt`):
                  original  The cute dog walks in the park
                  inputs    The <extra_id_0> walks in <extra_id_1> park </s>
                  targets   <extra_id_0> cute dog <extra_id_1> the </s>
              The window is `span_lengths(inputs_length)` raw tokens long, so that every input
              is exactly `inputs_length` tokens and every target `targets_length`: no padding.
    denoise   BART's text infilling (Lewis et al. 2020, sec. 2.2, and 5.1's best setting): 30% of
              the tokens, in spans of Poisson(3) lengths, each span replaced by ONE mask token
              (a 0-length span inserts one), optionally after permuting the sentences; the
              target is the original window + EOS (`text_infilling`, `permute_sentences`). The
              mask token is the tokenizer's own (BART's <mask>) or, for a tokenizer without one
              (T5's), the first sentinel <extra_id_0>, which is also T5's single mask token
              (`Corruptor.mask_id`).

Batches are dicts of LongTensors:
    src       (B, S) encoder inputs, right-padded with the pad id (denoising inputs vary)
    src_mask  (B, S) 1 at real tokens, 0 at padding
    idx       (B, T) decoder inputs: [decoder_start] + targets[:-1] (T5 starts with the pad id,
              BART with EOS), pad id after the end
    labels    (B, T) the targets, -100 (IGNORE_INDEX) at padding

Randomness, resumable exactly and independent of the number of processes: row r of batch n (r
counted in the global batch, rank * B + b) is corrupted with a generator seeded by (seed,
stream, n, r) through numpy's SeedSequence, as `Masker` seeds its batches. A resumed run that
restores n and the sampler's position continues with the same noise, and 2 processes x B rows
corrupt exactly as 1 process x 2B rows (WindowSampler splits the windows the same way). Unlike
`Masker`, which draws one (world_size * B, T) tensor per global batch, each process draws only
its own rows here: the number of draws of a row depends on its tokens (Poisson span counts,
sentences), so a shared stream would tie every row's noise to the other processes' data.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

from llmkit.data.shards import TokenShards, WindowSampler
from llmkit.errors import LLMKitError
from llmkit.training.losses import IGNORE_INDEX

OBJECTIVES = ("span", "denoise")
TRAIN, VAL = 0, 1  # the first element of a generator key: training or validation batches


# --- T5: span corruption ------------------------------------------------------------------------
def _check_span_settings(noise_density: float, mean_span_length: float) -> None:
    if not 0.0 < noise_density < 1.0:
        raise LLMKitError(f"noise_density must be between 0 and 1 (exclusive), got {noise_density}")
    if mean_span_length < 1.0:
        raise LLMKitError(f"mean_span_length must be >= 1, got {mean_span_length}")


def _noise_counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) of a sequence of `length` >= 2 tokens, as T5 counts them:
    round(length * density) tokens, at least 1 and at most length - 1, in round(tokens / mean)
    spans, at least 1. Python's round, like tf.round and HF's script, rounds halves to even.
    The spans are also capped by the non-noise tokens (each span needs one before it), which
    T5 does not do but only binds for densities far above T5's (there T5 merges spans)."""
    n_noise = min(max(round(length * noise_density), 1), length - 1)
    n_spans = max(round(n_noise / mean_span_length), 1)
    return n_noise, min(n_spans, length - n_noise)


def _random_segmentation(n_items: int, n_segments: int, generator: Optional[torch.Generator]) -> torch.Tensor:
    """The lengths of `n_items` split into `n_segments` positive parts, uniformly over all such
    splits: the segments start at item 0 and at n_segments - 1 distinct items drawn among the
    other n_items - 1 (T5 shuffles a 0/1 vector of those starts: the same distribution)."""
    starts = torch.zeros(n_items, dtype=torch.long)
    starts[0] = 1
    starts[torch.randperm(n_items - 1, generator=generator)[:n_segments - 1] + 1] = 1
    return torch.bincount(torch.cumsum(starts, 0) - 1, minlength=n_segments)  # (n_segments,)


def noise_mask(length: int, noise_density: float = 0.15, mean_span_length: float = 3.0,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(length,) bool: which tokens T5's span corruption replaces (`random_spans_noise_mask`).

    `_noise_counts` fixes how many tokens and spans are noise; the noise tokens and the other
    tokens are each split at random into that many positive parts, and the parts alternate,
    starting with non-noise, so the mask never starts with noise and always ends with it. A
    sequence of 1 token is drawn as 2 and cut, as T5 does.
    """
    if length < 1:
        raise LLMKitError(f"noise_mask needs a length >= 1, got {length}")
    _check_span_settings(noise_density, mean_span_length)
    n = max(length, 2)
    n_noise, n_spans = _noise_counts(n, noise_density, mean_span_length)
    noise = _random_segmentation(n_noise, n_spans, generator)  # drawn first, as in T5
    keep = _random_segmentation(n - n_noise, n_spans, generator)
    lengths = torch.stack([keep, noise], dim=1).reshape(-1)  # (2 * n_spans,): keep, noise, keep, ...
    kinds = torch.tensor([False, True]).repeat(n_spans)
    return kinds.repeat_interleave(lengths)[:length]


def span_corrupt(ids: torch.Tensor, mask: torch.Tensor, sentinel_ids: Sequence[int],
                 eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of T5's span corruption of the 1-D `ids` under the bool `mask`:
    the i-th noise span (a run of masked tokens) becomes `sentinel_ids[i]` in the inputs, the
    targets are each span's sentinel followed by its tokens, and both end with `eos_id`
    (T5's `noise_span_to_unique_sentinel` and `nonnoise_span_to_unique_sentinel`, the same
    sequences for a mask that starts with non-noise and ends with noise, as `noise_mask`'s do).
    Replacing each sentinel of the inputs by its span in the targets gives `ids` back.
    """
    if ids.dim() != 1 or mask.shape != ids.shape:
        raise LLMKitError(f"span_corrupt takes 1-D ids and a mask of the same shape, got {tuple(ids.shape)} "
                          f"and {tuple(mask.shape)}")
    mask = mask.bool()
    eos = torch.tensor([eos_id], dtype=ids.dtype)
    starts = mask.clone()
    starts[1:] &= ~mask[:-1]  # the first token of each span
    n_spans = int(starts.sum())
    if n_spans == 0:
        return torch.cat([ids, eos]), eos.clone()
    if n_spans > len(sentinel_ids):
        raise LLMKitError(f"{n_spans} noise spans but only {len(sentinel_ids)} sentinel tokens: "
                          "use a shorter inputs_length, a longer mean span, or more sentinels (extra_ids)")
    sentinels = torch.as_tensor(list(sentinel_ids[:n_spans]), dtype=ids.dtype)
    span = (torch.cumsum(starts, 0) - 1).clamp(min=0)  # the span each masked token is in
    # Inputs: every span's first token becomes its sentinel, its other tokens go.
    inputs = torch.where(starts, sentinels[span], ids)[~mask | starts]
    # Targets: the masked tokens, each span's sentinel inserted before its first token.
    spanned, first = ids[mask], starts[mask]
    position = torch.arange(len(spanned)) + torch.cumsum(first, 0)  # where each masked token goes
    targets = torch.empty(len(spanned) + n_spans, dtype=ids.dtype)
    targets[position] = spanned
    targets[position[first] - 1] = sentinels
    return torch.cat([inputs, eos]), torch.cat([targets, eos])


def span_lengths(inputs_length: int, noise_density: float = 0.15, mean_span_length: float = 3.0) -> tuple[int, int]:
    """(raw_tokens, targets_length): how many tokens to corrupt so that the inputs are exactly
    `inputs_length` tokens, EOS included, and how long the targets then are.

    n raw tokens with k noise tokens in s spans (`_noise_counts`) give inputs of the n - k kept
    tokens + s sentinels + EOS, and targets of the k tokens + s sentinels + EOS. One more raw
    token adds a kept token (inputs + 1) or a noise token, which adds a span or not (inputs + 1
    or + 0), so the input length passes through every value and the largest n whose inputs fit
    fills them exactly. T5's 512 -> 568 raw tokens, 114 targets (HF's
    `compute_input_and_target_lengths` finds the same n by a linear search; its noise_density
    = 0.5 adjustment, which gives up exactness, is left out).
    """
    _check_span_settings(noise_density, mean_span_length)
    if inputs_length < 3:
        raise LLMKitError(f"inputs_length must be >= 3 (a token, a sentinel and EOS), got {inputs_length}")

    def lengths(n: int) -> tuple[int, int]:
        n_noise, n_spans = _noise_counts(n, noise_density, mean_span_length)
        return n - n_noise + n_spans + 1, n_noise + n_spans + 1

    lo, hi = 2, 2 * inputs_length  # lengths(lo) = (3, 3) fits; grow hi until it does not
    while lengths(hi)[0] <= inputs_length:
        lo, hi = hi, 2 * hi
    while hi - lo > 1:  # the largest n with lengths(n)[0] <= inputs_length is in [lo, hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if lengths(mid)[0] <= inputs_length else (lo, mid)
    got, targets = lengths(lo)
    if got != inputs_length:  # only where the span cap of `_noise_counts` binds
        raise LLMKitError(f"no raw length gives exactly {inputs_length} input tokens at noise_density "
                          f"{noise_density} and mean_span_length {mean_span_length}; try {got}")
    return lo, targets


# --- BART: text infilling and sentence permutation -----------------------------------------------
def text_infilling(ids: torch.Tensor, mask_id: int, generator: Optional[torch.Generator] = None,
                   mask_ratio: float = 0.3, poisson_lambda: float = 3.0) -> torch.Tensor:
    """BART's text infilling of the 1-D `ids` (Lewis et al. 2020, sec. 2.2; fairseq's
    denoising_dataset.py with mask_length="span-poisson", replace_length=1).

    ceil(mask_ratio * n) tokens are masked in spans whose lengths are drawn from Poisson(λ)
    until they cover that many (the last one cut to fit). Each span becomes one `mask_id`; a
    0-length span inserts one. The spans and insertions go to distinct random gaps between the
    kept tokens, in random order, so that each mask token stands for exactly one of them and
    exactly ceil(mask_ratio * n) tokens are hidden (fairseq places span starts independently
    and lets overlapping spans merge, hiding somewhat fewer). Insertions are capped so that the
    result is never longer than `ids`, and where there are more spans than gaps (ratios near 1)
    the last spans are merged. Token-level spans (fairseq can also align them to whole words).
    """
    if ids.dim() != 1:
        raise LLMKitError(f"text_infilling takes a 1-D tensor, got shape {tuple(ids.shape)}")
    if not 0.0 <= mask_ratio <= 1.0 or poisson_lambda <= 0:
        raise LLMKitError(f"need 0 <= mask_ratio <= 1 and poisson_lambda > 0, got {mask_ratio}, {poisson_lambda}")
    n = len(ids)
    n_mask = min(n, math.ceil(n * mask_ratio))
    if n_mask == 0:
        return ids.clone()
    drawn = torch.empty(0, dtype=torch.long)
    while int(drawn.sum()) < n_mask:  # almost always one round: n_mask draws of mean λ
        more = torch.poisson(torch.full((n_mask,), float(poisson_lambda)), generator=generator).long()
        drawn = torch.cat([drawn, more])
    cum = torch.cumsum(drawn, 0)
    last = int(torch.searchsorted(cum, torch.tensor(n_mask)))  # the first span reaching n_mask
    lengths = drawn[:last + 1].clone()
    lengths[last] -= int(cum[last]) - n_mask
    spans = lengths[lengths > 0].tolist()
    n_insert = int((lengths == 0).sum())
    n_gaps = n - n_mask + 1  # before, between and after the kept tokens
    while len(spans) > n_gaps:
        spans[-2:] = [spans[-2] + spans[-1]]
    n_insert = min(n_insert, n_mask - len(spans), n_gaps - len(spans))
    events = spans + [0] * n_insert  # tokens each mask token hides
    order = torch.randperm(len(events), generator=generator).tolist()
    gaps = torch.randperm(n_gaps, generator=generator)[:len(events)].sort().values.tolist()
    pieces, pos, kept = [], 0, 0
    mask = torch.tensor([mask_id], dtype=ids.dtype)
    for gap, e in zip(gaps, order):
        pieces += [ids[pos:pos + gap - kept], mask]  # the kept tokens up to the gap, then the mask
        pos += gap - kept + events[e]
        kept = gap
    pieces.append(ids[pos:])
    return torch.cat(pieces)


def permute_sentences(ids: torch.Tensor, end_ids: Sequence[int],
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The sentences of the 1-D `ids` in a random order (BART's sentence permutation, Lewis et
    al. 2020, sec. 2.2): a sentence ends after a token of `end_ids` (full stops, EOS) or at the
    end of `ids`; the window's cut-off first and last pieces count as sentences."""
    ends = torch.isin(ids, torch.as_tensor(list(end_ids), dtype=ids.dtype))
    ends[-1:] = True
    cuts = (torch.nonzero(ends).flatten() + 1).tolist()
    sentences = [ids[a:b] for a, b in zip([0] + cuts[:-1], cuts)]
    if len(sentences) < 2:
        return ids.clone()
    return torch.cat([sentences[i] for i in torch.randperm(len(sentences), generator=generator).tolist()])


# --- the batches -----------------------------------------------------------------------------------
class Corruptor:
    """The noise settings of one run, their special tokens and their random source.

    Reads from `tokenizer`: `eos_id` (required), `pad_id` (padding; 0 when none),
    `sentinel_ids` (span corruption), `mask_id` and the sentence-final tokens (denoising).
    The denoising mask token is `tokenizer.mask_id` when the tokenizer has one (BART's
    <mask>), otherwise its first sentinel (T5's <extra_id_0>); `mask_id` says which.
    """

    def __init__(self, tokenizer: Any, seed: int = 0, noise_density: float = 0.15, mean_span_length: float = 3.0,
                 mask_ratio: float = 0.3, poisson_lambda: float = 3.0, permute: bool = False):
        if tokenizer.eos_id is None:
            raise LLMKitError("encoder-decoder pretraining needs a tokenizer with an EOS token (T5's </s>)")
        _check_span_settings(noise_density, mean_span_length)
        if not 0.0 <= mask_ratio <= 1.0 or poisson_lambda <= 0:
            raise LLMKitError(f"need 0 <= mask_ratio <= 1 and poisson_lambda > 0, got {mask_ratio}, {poisson_lambda}")
        self.eos_id: int = tokenizer.eos_id
        self.pad_id: int = tokenizer.pad_id if tokenizer.pad_id is not None else 0
        self.sentinel_ids: list[int] = list(getattr(tokenizer, "sentinel_ids", []) or [])
        own_mask = getattr(tokenizer, "mask_id", None)
        self.mask_id: Optional[int] = own_mask if own_mask is not None else \
            (self.sentinel_ids[0] if self.sentinel_ids else None)
        ends = {tokenizer.token_to_id(p) for p in (".", "!", "?", "▁.", "▁!", "▁?", "Ġ.", "Ġ!", "Ġ?")}
        self.sentence_end_ids: list[int] = sorted((ends - {None}) | {self.eos_id})
        self.seed, self.noise_density, self.mean_span_length = seed, noise_density, mean_span_length
        self.mask_ratio, self.poisson_lambda, self.permute = mask_ratio, poisson_lambda, permute

    def check(self, objective: str) -> None:
        """Refuse an objective this tokenizer cannot serve, before any batch is made."""
        if objective not in OBJECTIVES:
            raise LLMKitError(f"unknown objective {objective!r}: expected one of {', '.join(OBJECTIVES)}")
        if objective == "span" and not self.sentinel_ids:
            raise LLMKitError("span corruption needs sentinel tokens <extra_id_0>, <extra_id_1>, ... "
                              "(`llmkit tokenizer train --kind unigram`)")
        if objective == "denoise" and self.mask_id is None:
            raise LLMKitError("denoising needs a mask token (BART's <mask>) or T5's sentinels")

    def generator(self, *key: int) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, *key]).generate_state(2, dtype=np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def lengths(self, objective: str, inputs_length: int) -> tuple[int, int, int]:
        """(raw tokens per window, encoder width, decoder width) for `inputs_length`."""
        self.check(objective)
        if objective == "span":
            raw, targets = span_lengths(inputs_length, self.noise_density, self.mean_span_length)
            return raw, inputs_length, targets
        if inputs_length < 2:
            raise LLMKitError(f"inputs_length must be >= 2 (a token and EOS), got {inputs_length}")
        # The window + EOS is the target; infilling never makes the input longer than that.
        return inputs_length - 1, inputs_length, inputs_length

    def corrupt(self, ids: torch.Tensor, objective: str,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(encoder input, target) of one 1-D window, both ending with EOS."""
        if objective == "span":
            mask = noise_mask(len(ids), self.noise_density, self.mean_span_length, generator)
            return span_corrupt(ids, mask, self.sentinel_ids, self.eos_id)
        eos = torch.tensor([self.eos_id], dtype=ids.dtype)
        noisy = permute_sentences(ids, self.sentence_end_ids, generator) if self.permute else ids
        noisy = text_infilling(noisy, self.mask_id, generator, self.mask_ratio, self.poisson_lambda)
        return torch.cat([noisy, eos]), torch.cat([ids, eos])

    def batch(self, x: torch.Tensor, objective: str, key: tuple[int, ...], first_row: int, src_len: int,
              tgt_len: int, decoder_start_id: int) -> dict:
        """The batch dict (module docstring) of the (B, raw) windows `x`, whose rows are rows
        first_row, first_row + 1, ... of the global batch `key`."""
        B = x.shape[0]
        src = torch.full((B, src_len), self.pad_id, dtype=torch.long)
        src_mask = torch.zeros((B, src_len), dtype=torch.long)
        idx = torch.full((B, tgt_len), self.pad_id, dtype=torch.long)
        labels = torch.full((B, tgt_len), IGNORE_INDEX, dtype=torch.long)
        for b in range(B):
            s, t = self.corrupt(x[b].long(), objective, self.generator(*key, first_row + b))
            src[b, :len(s)], src_mask[b, :len(s)] = s, 1
            labels[b, :len(t)] = t
            idx[b, 0] = decoder_start_id
            idx[b, 1:len(t)] = t[:-1]
        return {"src": src, "src_mask": src_mask, "idx": idx, "labels": labels}


class SpanBatches:
    """Endless encoder-decoder pretraining batches of `objective` over a shuffled WindowSampler.

    `inputs_length` is the encoder width S; the windows are as long as `Corruptor.lengths`
    says (span: `span_lengths`, so S and T are exact; denoise: S - 1 tokens, T = S). The
    decoder starts with `decoder_start_id` (None: the pad id, T5's convention; BART's is EOS).
    `state_dict` / `load_state_dict` as `MaskedWindows`: the sampler's position and the batch
    counter that keys the noise.
    """

    def __init__(self, shards: TokenShards, inputs_length: int, batch_size: int, corruptor: Corruptor, seed: int = 0,
                 rank: int = 0, world_size: int = 1, objective: str = "span",
                 decoder_start_id: Optional[int] = None):
        raw, self.src_len, self.tgt_len = corruptor.lengths(objective, inputs_length)
        self.sampler = WindowSampler(shards, raw, batch_size, seed=seed, rank=rank, world_size=world_size)
        self.corruptor, self.objective, self.first_row = corruptor, objective, rank * batch_size
        self.decoder_start_id = corruptor.pad_id if decoder_start_id is None else decoder_start_id
        self.n = 0

    def __iter__(self) -> "SpanBatches":
        return self

    def __next__(self) -> dict:
        x, _ = next(self.sampler)  # (B, raw): the window's extra label token is unused
        batch = self.corruptor.batch(x, self.objective, (TRAIN, self.n), self.first_row, self.src_len, self.tgt_len,
                                     self.decoder_start_id)
        self.n += 1
        return batch

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "n": self.n, "objective": self.objective}

    def load_state_dict(self, state: dict) -> None:
        if state.get("objective", self.objective) != self.objective:
            raise LLMKitError(f"cannot resume the data order: the checkpoint's objective is {state['objective']}, "
                              f"this run's is {self.objective}")
        self.sampler.load_state_dict(state["sampler"])
        self.n = int(state["n"])

    def close(self) -> None:
        self.sampler.close()


def span_val_batches(shards: TokenShards, inputs_length: int, batch_size: int, corruptor: Corruptor,
                     objective: str = "span", decoder_start_id: Optional[int] = None,
                     max_batches: Optional[int] = None) -> Iterator[dict]:
    """The validation split's windows in order, corrupted the same way every evaluation (the
    last batch may be smaller)."""
    raw, src_len, tgt_len = corruptor.lengths(objective, inputs_length)
    start = corruptor.pad_id if decoder_start_id is None else decoder_start_id
    for b, (x, _) in enumerate(shards.val_batches(raw, batch_size, max_batches)):
        yield corruptor.batch(x, objective, (VAL, b), 0, src_len, tgt_len, start)
