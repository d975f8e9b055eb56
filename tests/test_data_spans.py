"""Span corruption (T5) and denoising (BART) batches: noise statistics, exact lengths, the
corrupted formats and their reconstruction, determinism, exact resume, N processes == 1."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from llmkit.data.shards import TokenShards, WindowSampler
from llmkit.data.spans import (Corruptor, SpanBatches, noise_mask, permute_sentences, span_corrupt, span_lengths,
                               span_val_batches, text_infilling)
from llmkit.errors import LLMKitError
from llmkit.tokenizer import Tokenizer
from llmkit.training.losses import IGNORE_INDEX
from tests.test_tokenizer_unigram import english

SENTINELS = [499 - i for i in range(100)]  # T5's order: <extra_id_0> at the top of a 500-token vocabulary
EOS, PAD, MASK = 1, 0, 4


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def reconstruct(inputs: torch.Tensor, targets: torch.Tensor, sentinels=SENTINELS) -> list[int]:
    """The original tokens from T5's (inputs, targets): each sentinel of the inputs replaced by
    the tokens after the same sentinel in the targets (both end with EOS)."""
    spans: dict[int, list[int]] = {}
    current = None
    for t in targets[:-1].tolist():
        if t in sentinels:
            current = spans.setdefault(t, [])
        else:
            current.append(t)
    assert targets[-1] == EOS and inputs[-1] == EOS and targets[0].item() in sentinels
    out = []
    for t in inputs[:-1].tolist():
        out += spans.pop(t) if t in sentinels else [t]
    assert not spans  # every span of the targets was used once
    return out


# --- T5 noise ------------------------------------------------------------------------------------
def test_noise_mask_counts_and_statistics():
    # Exact counts per draw: round(L * 0.15) noise tokens in round(that / 3) spans, starting with
    # non-noise and ending with noise (T5's random_spans_noise_mask).
    for L in (2, 5, 10, 100, 512, 568):
        for s in range(20):
            m = noise_mask(L, generator=gen(s))
            n_noise = min(max(round(L * 0.15), 1), L - 1)
            starts = m.clone()
            starts[1:] &= ~m[:-1]
            assert m.dtype == torch.bool and m.shape == (L,)
            assert int(m.sum()) == n_noise and int(starts.sum()) == max(round(n_noise / 3), 1)
            assert not m[0] and m[-1]
    assert noise_mask(1, generator=gen(0)).tolist() == [False]
    # Over many draws: density ~0.15 at every position away from the ends, span lengths of mean
    # 77/26 ~ 3 that vary, with the share of 1-token spans of a uniform random split, (s-1)/(k-1).
    L, draws = 512, 2000
    masks = torch.stack([noise_mask(L, generator=gen(s)) for s in range(draws)]).float()  # (draws, L)
    per_position = masks.mean(0)
    assert abs(per_position.mean().item() - 77 / 512) < 1e-6
    assert (per_position[50:460] - 0.15).abs().max() < 0.05
    lengths = []
    for row in masks.bool()[:300]:
        runs = torch.unique_consecutive(row, return_counts=True)
        lengths += runs[1][runs[0]].tolist()
    lengths = torch.tensor(lengths, dtype=torch.float)
    assert abs(lengths.mean().item() - 77 / 26) < 1e-6 and lengths.max() >= 8
    assert abs((lengths == 1).float().mean().item() - 25 / 76) < 0.02
    # The same generator state gives the same mask; another seed another one.
    assert torch.equal(noise_mask(L, generator=gen(3)), noise_mask(L, generator=gen(3)))
    assert not torch.equal(noise_mask(L, generator=gen(3)), noise_mask(L, generator=gen(4)))
    with pytest.raises(LLMKitError, match="noise_density"):
        noise_mask(10, noise_density=0.0)
    with pytest.raises(LLMKitError, match="mean_span_length"):
        noise_mask(10, mean_span_length=0.5)


def hf_lengths(inputs_length: int, density: float = 0.15, mean: float = 3.0) -> tuple[int, int]:
    """transformers' run_t5_mlm_flax.py `compute_input_and_target_lengths` (its linear search),
    written out from its description, for cross-checking."""
    def lengths(n):
        noise = int(round(n * density))
        spans = int(round(noise / mean))
        return n - noise + spans + 1, noise + spans + 1

    n = inputs_length
    while lengths(n + 1)[0] <= inputs_length:
        n += 1
    return n, lengths(n)[1]


def test_span_lengths_are_exact():
    assert span_lengths(512) == (568, 114)  # T5's documented figures (and HF's)
    # By the formula: 568 tokens -> 85 noise in 28 spans -> 483 + 28 + 1 = 512 inputs, 85 + 28 + 1
    # = 114 targets; one more token would make 513 inputs.
    assert (568 - round(568 * 0.15) + round(85 / 3) + 1, round(568 * 0.15) + round(85 / 3) + 1) == (512, 114)
    assert 569 - round(569 * 0.15) + round(round(569 * 0.15) / 3) + 1 == 513
    for L in (16, 64, 100, 128, 256, 512, 626, 1024):
        raw, T = span_lengths(L)
        assert (raw, T) == hf_lengths(L), L
        for s in range(5):
            x = torch.randint(5, 400, (raw,), generator=gen(s))
            inputs, targets = span_corrupt(x, noise_mask(raw, generator=gen(100 + s)), SENTINELS, EOS)
            assert (len(inputs), len(targets)) == (L, T), L
    assert span_lengths(3) == (2, 3)
    raw, T = span_lengths(114, noise_density=0.5, mean_span_length=3.0)
    assert len(span_corrupt(torch.arange(raw), noise_mask(raw, 0.5, 3.0, gen(0)), SENTINELS, EOS)[0]) == 114
    with pytest.raises(LLMKitError, match="inputs_length must be >= 3"):
        span_lengths(2)


def test_span_corrupt_format_and_reconstruction():
    # "The cute dog walks in the park" -> "The <X> walks in <Y> park </s>", "<X> cute dog <Y> the </s>".
    The, cute, dog, walks, in_, the, park = range(10, 17)
    X, Y = SENTINELS[:2]
    ids = torch.tensor([The, cute, dog, walks, in_, the, park])
    mask = torch.tensor([0, 1, 1, 0, 0, 1, 0], dtype=torch.bool)
    inputs, targets = span_corrupt(ids, mask, SENTINELS, EOS)
    assert inputs.tolist() == [The, X, walks, in_, Y, park, EOS]
    assert targets.tolist() == [X, cute, dog, Y, the, EOS]
    # A span at either end; no span at all; too few sentinels.
    inputs, targets = span_corrupt(ids[:4], torch.tensor([1, 1, 0, 1], dtype=torch.bool), SENTINELS, EOS)
    assert inputs.tolist() == [X, dog, Y, EOS] and targets.tolist() == [X, The, cute, Y, walks, EOS]
    inputs, targets = span_corrupt(ids, torch.zeros(7, dtype=torch.bool), SENTINELS, EOS)
    assert inputs.tolist() == ids.tolist() + [EOS] and targets.tolist() == [EOS]
    with pytest.raises(LLMKitError, match="2 noise spans but only 1 sentinel"):
        span_corrupt(ids, mask, SENTINELS[:1], EOS)
    # Inputs + targets give the original back, for many random masks.
    for s in range(200):
        x = torch.randint(5, 400, (568,), generator=gen(s))
        inputs, targets = span_corrupt(x, noise_mask(568, generator=gen(1000 + s)), SENTINELS, EOS)
        assert reconstruct(inputs, targets) == x.tolist()
        used = [t for t in inputs.tolist() if t in SENTINELS]
        assert used == SENTINELS[:len(used)]  # <extra_id_0>, <extra_id_1>, ... in order


# --- BART noise ----------------------------------------------------------------------------------
def infilled_gaps(source: list[int], n: int) -> list[int]:
    """For the infilling of arange(10, 10 + n) with mask id MASK: the number of tokens each mask
    hides (0 for an insertion), checking that the kept tokens are in order and that every hidden
    run is replaced by exactly one mask."""
    hidden, prev, pending = [], 9, 0
    for t in source + [10 + n]:
        if t == MASK:
            pending += 1
            continue
        assert t > prev
        gap = t - prev - 1
        assert pending == (1 if gap else pending) and pending <= 1, (prev, t, pending)
        if pending:
            hidden.append(gap)
        prev, pending = t, 0
    return hidden


def test_text_infilling_ratio_and_spans():
    n, draws = 1000, 300
    ids = torch.arange(10, 10 + n)
    hidden_all, n_masks = [], []
    for s in range(draws):
        out = text_infilling(ids, MASK, gen(s))
        hidden = infilled_gaps(out.tolist(), n)
        assert sum(hidden) == math.ceil(0.3 * n) and len(out) == n - sum(hidden) + len(hidden) <= n
        hidden_all += hidden
        n_masks.append(len(hidden))
    hidden_all = torch.tensor(hidden_all, dtype=torch.float)
    # Poisson(3) spans: ~5% of them 0-length insertions (e^-3), the others of mean 3 / (1 - e^-3).
    assert abs((hidden_all == 0).float().mean().item() - math.exp(-3)) < 0.015
    assert abs(hidden_all[hidden_all > 0].mean().item() - 3 / (1 - math.exp(-3))) < 0.15
    assert 95 < sum(n_masks) / draws < 106  # ~300 / 3 spans per text
    assert torch.equal(text_infilling(ids, MASK, gen(1)), text_infilling(ids, MASK, gen(1)))
    # Edge cases: nothing to mask, everything masked, a short text.
    assert torch.equal(text_infilling(ids, MASK, gen(0), mask_ratio=0.0), ids)
    assert text_infilling(ids[:10], MASK, gen(0), mask_ratio=1.0).tolist() == [MASK]
    for s in range(50):
        out = text_infilling(ids[:3], MASK, gen(s))
        assert sum(infilled_gaps(out.tolist(), 3)) == 1


def test_permute_sentences():
    dot = 3
    ids = torch.tensor([11, 12, dot, 21, dot, 31, 32, 33, dot, 41])
    sentences = [(11, 12, dot), (21, dot), (31, 32, 33, dot), (41,)]
    seen = set()
    orders = {sum(p, ()) for p in itertools.permutations(sentences)}  # the 24 arrangements
    for s in range(30):
        out = tuple(permute_sentences(ids, [dot], gen(s)).tolist())
        assert out in orders  # whole sentences, each once; the cut-off last one counts as one
        seen.add(out)
    assert len(seen) > 10
    assert torch.equal(permute_sentences(ids[:2], [dot], gen(0)), ids[:2])


# --- batches over shards -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def t5_data(tmp_path_factory):
    """A Unigram (T5) tokenizer and line-per-document shards of English sentences."""
    from llmkit.data.prepare import prepare
    from llmkit.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("spans")
    (root / "corpus.txt").write_text("\n".join(english(1500, seed=5)) + "\n", encoding="utf-8")
    train_tokenizer([str(root / "corpus.txt")], vocab_size=400, out=str(root / "tok"), kind="unigram")
    prepare([str(root / "corpus.txt")], tokenizer=str(root / "tok"), out=str(root / "data"), seq_len=64,
            val_fraction=0.1, text_unit="line")
    shards = TokenShards(root / "data", "train")
    return shards, Tokenizer.from_dir(shards.tokenizer_dir), TokenShards(root / "data", "val")


def test_span_batches_follow_t5(t5_data):
    shards, tok, _ = t5_data
    raw, T = span_lengths(64)
    corruptor = Corruptor(tok, seed=0)
    batches = SpanBatches(shards, 64, 8, corruptor, seed=0)
    windows = WindowSampler(shards, raw, 8, seed=0)
    for _ in range(3):
        b, (x, _) = next(batches), next(windows)
        assert set(b) == {"src", "src_mask", "idx", "labels"} and all(v.dtype == torch.long for v in b.values())
        assert b["src"].shape == b["src_mask"].shape == (8, 64) and b["idx"].shape == b["labels"].shape == (8, T)
        assert (b["src_mask"] == 1).all() and (b["labels"] != IGNORE_INDEX).all()  # no padding at all
        assert (b["src"][:, -1] == tok.eos_id).all() and (b["labels"][:, -1] == tok.eos_id).all()
        assert (b["idx"][:, 0] == tok.pad_id).all() and torch.equal(b["idx"][:, 1:], b["labels"][:, :-1])
        assert (b["labels"][:, 0] == tok.sentinel_ids[0]).all()
        for r in range(8):
            assert reconstruct(b["src"][r], b["labels"][r], tok.sentinel_ids) == x[r].tolist()
    # Text: "... <extra_id_0> ... </s>" decodes as T5's.
    text = tok.decode(b["labels"][0], skip_special=False)
    assert text.startswith("<extra_id_0>") and text.endswith("</s>")


def is_subsequence(part: list[int], whole: list[int]) -> bool:
    it = iter(whole)
    return all(t in it for t in part)


@pytest.mark.parametrize("permute", [False, True])
def test_denoise_batches_follow_bart(t5_data, permute):
    shards, tok, _ = t5_data
    corruptor = Corruptor(tok, seed=0, permute=permute)
    assert tok.mask_id is None and corruptor.mask_id == tok.sentinel_ids[0]  # T5: <extra_id_0> masks
    assert tok.token_to_id(".") in corruptor.sentence_end_ids and tok.eos_id in corruptor.sentence_end_ids
    batches = SpanBatches(shards, 64, 8, corruptor, seed=0, objective="denoise", decoder_start_id=tok.eos_id)
    windows = WindowSampler(shards, 63, 8, seed=0)
    reordered = 0
    for _ in range(10):
        b, (x, _) = next(batches), next(windows)
        assert b["src"].shape == (8, 64) and b["idx"].shape == b["labels"].shape == (8, 64)
        lengths = b["src_mask"].sum(1)
        for r in range(8):
            n = int(lengths[r])
            assert (b["src_mask"][r, :n] == 1).all() and (b["src_mask"][r, n:] == 0).all()
            assert b["src"][r, n - 1] == tok.eos_id and (b["src"][r, n:] == tok.pad_id).all()
            kept = [t for t in b["src"][r, :n - 1].tolist() if t != corruptor.mask_id]
            assert len(kept) == 63 - math.ceil(0.3 * 63)  # exactly 30% hidden, rounded up
            assert not Counter(kept) - Counter(x[r].tolist())  # kept tokens come from the window
            in_order = is_subsequence(kept, x[r].tolist())
            assert in_order or permute
            reordered += not in_order
        # The target is the window itself + EOS; the decoder starts with EOS (BART's convention).
        assert torch.equal(b["labels"], torch.cat([x, torch.full((8, 1), tok.eos_id)], 1))
        assert (b["idx"][:, 0] == tok.eos_id).all() and torch.equal(b["idx"][:, 1:], b["labels"][:, :-1])
    assert (reordered > 40) == permute  # sentence permutation reorders (almost) every row
    # A tokenizer with its own mask token (BART's <mask>) uses it.
    bart = SimpleNamespace(eos_id=2, pad_id=1, mask_id=50, sentinel_ids=[], token_to_id=lambda t: None)
    assert Corruptor(bart).mask_id == 50
    with pytest.raises(LLMKitError, match="sentinel tokens"):
        Corruptor(bart).check("span")


def test_labels_are_ignored_at_padding_only(t5_data):
    """Targets of different lengths are right-padded: -100 exactly at the padding."""
    shards, tok, _ = t5_data

    class Ragged(Corruptor):
        def corrupt(self, ids, objective, generator):
            k = int(torch.randint(1, len(ids) + 1, (1,), generator=generator))
            return torch.cat([ids[:k], torch.tensor([self.eos_id])]), torch.cat([ids[:k], torch.tensor([self.eos_id])])

    b = next(SpanBatches(shards, 32, 8, Ragged(tok, seed=0), objective="denoise"))
    real = b["src_mask"].bool()
    assert torch.equal(b["labels"] == IGNORE_INDEX, ~real) and len(set(real.sum(1).tolist())) > 1
    assert torch.equal(b["labels"][real], b["src"][real])


@pytest.mark.parametrize("objective", ["span", "denoise"])
def test_determinism_resume_and_processes(t5_data, objective):
    shards, tok, val = t5_data

    def make(seed=0, B=4, rank=0, world=1):
        return SpanBatches(shards, 48, B, Corruptor(tok, seed=seed), seed=seed, rank=rank, world_size=world,
                           objective=objective)

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    a, b = make(), make()
    first = [next(a) for _ in range(6)]
    assert all(same(x, next(b)) for x in first)
    assert not same(first[0], next(make(seed=1)))
    # Resume: a fresh iterator given the state after 3 batches continues with batch 4, 5, 6.
    c = make()
    for _ in range(3):
        next(c)
    state = c.state_dict()
    d = make()
    d.load_state_dict(state)
    assert all(same(first[i], next(d)) for i in range(3, 6))
    # 2 processes x 2 rows == 1 process x 4 rows, batch for batch.
    r0, r1 = make(B=2, rank=0, world=2), make(B=2, rank=1, world=2)
    for i in range(6):
        x0, x1 = next(r0), next(r1)
        assert same(first[i], {k: torch.cat([x0[k], x1[k]]) for k in x0}), i
    # Validation batches are the same every time.
    v1 = list(span_val_batches(val, 48, 4, Corruptor(tok, seed=0), objective, max_batches=3))
    v2 = list(span_val_batches(val, 48, 4, Corruptor(tok, seed=0), objective, max_batches=3))
    assert len(v1) == 3 and all(same(x, y) for x, y in zip(v1, v2))
    with pytest.raises(LLMKitError, match="objective"):
        other = SpanBatches(shards, 48, 4, Corruptor(tok), objective="span" if objective == "denoise" else "denoise")
        other.load_state_dict(state)


def test_errors(t5_data, tmp_path):
    shards, tok, _ = t5_data
    with pytest.raises(LLMKitError, match="unknown objective 'prefix'"):
        SpanBatches(shards, 64, 4, Corruptor(tok), objective="prefix")
    from tests.helpers import build_wordpiece

    bert = Tokenizer.from_dir(build_wordpiece(tmp_path / "wp"))
    with pytest.raises(LLMKitError, match="EOS"):
        Corruptor(bert)
    with pytest.raises(LLMKitError, match="too few for one batch"):
        SpanBatches(shards, 4096, 64, Corruptor(tok))
