"""Masked-LM masking (proportions, specials, labels, whole words, determinism) and BERT's
next-sentence-prediction pairs."""

from __future__ import annotations

import random

import pytest
import torch

from llmkit.data.masking import (IS_NEXT, IS_RANDOM, mask_tokens, nsp_pairs, special_token_ids, truncate_seq_pair,
                                 word_start_table)
from llmkit.errors import LLMKitError
from llmkit.tokenizer import Tokenizer
from llmkit.training.losses import IGNORE_INDEX
from tests.helpers import ENCODER_TEXT, build_roberta, build_wordpiece

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIALS = [PAD, UNK, CLS, SEP, MASK]
V = 1000


def batch(B: int = 256, T: int = 512, seed: int = 0) -> torch.Tensor:
    """[CLS] random ids [SEP] [PAD]..., rows of random lengths."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (B, T), generator=g)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    for b, n in enumerate(lengths.tolist()):
        ids[b, 0], ids[b, n - 1] = CLS, SEP
        ids[b, n:] = PAD
    return ids


def mask(ids, seed=0, **kw):
    return mask_tokens(ids, mask_id=MASK, vocab_size=V, special_ids=SPECIALS,
                       generator=torch.Generator().manual_seed(seed), **kw)


def test_proportions_specials_and_labels():
    ids = batch()
    original = ids.clone()
    inputs, labels = mask(ids)
    assert torch.equal(ids, original)  # not modified in place
    special = torch.isin(ids, torch.tensor(SPECIALS))
    selected = labels != IGNORE_INDEX
    # Labels: the original ids where selected, -100 elsewhere; specials never selected or changed.
    assert torch.equal(labels[selected], ids[selected]) and not selected[special].any()
    assert torch.equal(inputs[special], ids[special]) and torch.equal(inputs[~selected], ids[~selected])
    # ~100k eligible tokens: 15% selected (std 0.0011), then 80 / 10 / 10 (std <= 0.003). The
    # tolerances are > 5 standard deviations, and the seed is fixed.
    eligible = int((~special).sum())
    n = int(selected.sum())
    assert eligible > 90_000 and abs(n / eligible - 0.15) < 0.006
    masked = int((inputs[selected] == MASK).sum())
    kept = int((inputs[selected] == ids[selected]).sum())
    randomized = n - masked - kept
    assert abs(masked / n - 0.8) < 0.015 and abs(randomized / n - 0.1) < 0.015 and abs(kept / n - 0.1) < 0.015
    # Random replacements are uniform over the whole vocabulary (special ids included, as BERT).
    random_ids = inputs[selected & (inputs != MASK) & (inputs != ids)].float()
    assert abs(random_ids.mean().item() - (V - 1) / 2) < 15 and random_ids.min() < 20 and random_ids.max() > V - 20
    # Other probabilities and splits.
    inputs, labels = mask(ids, mlm_probability=0.4, mask_fraction=1.0, random_fraction=0.0)
    selected = labels != IGNORE_INDEX
    assert abs(int(selected.sum()) / eligible - 0.4) < 0.01 and (inputs[selected] == MASK).all()
    inputs, labels = mask(ids, mlm_probability=0.0)
    assert (labels == IGNORE_INDEX).all() and torch.equal(inputs, ids)


def test_determinism():
    ids = batch(B=8, T=64)
    a, b = mask(ids, seed=3), mask(ids, seed=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(mask(ids, seed=4)[1], a[1])
    # The generator advances by the same amount whatever the data (exact resume): two different
    # batches of one shape leave it in the same state, and a continued stream equals a fresh one
    # started from the saved state.
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    kw = dict(mask_id=MASK, vocab_size=V, special_ids=SPECIALS)
    mask_tokens(ids, generator=g1, **kw)
    mask_tokens(batch(B=8, T=64, seed=9), generator=g2, **kw, word_starts=torch.rand(V) < 0.5)
    assert torch.equal(g1.get_state(), g2.get_state())
    state = g1.get_state()
    after = mask_tokens(ids, generator=g1, **kw)
    resumed = mask_tokens(ids, generator=torch.Generator().set_state(state), **kw)
    assert torch.equal(after[1], resumed[1])


def test_whole_word_masking():
    ids = batch(B=512, T=256, seed=1)
    word_starts = torch.zeros(V, dtype=torch.bool)
    word_starts[5::3] = True  # about one id in three starts a word: words of ~3 tokens
    inputs, labels = mask(ids, word_starts=word_starts)
    selected = labels != IGNORE_INDEX
    special = torch.isin(ids, torch.tensor(SPECIALS))
    assert not selected[special].any()
    starts, rows, flags, specials = word_starts.tolist(), ids.tolist(), selected.tolist(), special.tolist()
    n_words = n_chosen = 0
    for row, chosen, is_special in zip(rows, flags, specials):
        word: list[bool] = []  # the selection flags of the current word's tokens
        for t in range(len(row) + 1):
            if (t == len(row) or is_special[t] or starts[row[t]]) and word:
                assert len(set(word)) == 1  # all tokens of a word selected together, or none
                n_words += 1
                n_chosen += word[0]
                word = []
            if t < len(row) and not is_special[t]:
                word.append(chosen[t])
    # ~33k words (std of the share 0.002), ~100k tokens: tolerances > 5 standard deviations.
    eligible = int((~special).sum())
    assert n_words > 30_000 and abs(n_chosen / n_words - 0.15) < 0.012
    assert abs(int(selected.sum()) / eligible - 0.15) < 0.012  # the same budget, in expectation
    masked = (inputs == MASK) & selected  # 80/10/10 is per token within the chosen words
    assert abs(int(masked.sum()) / int(selected.sum()) - 0.8) < 0.015


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[str, Tokenizer]:
    root = tmp_path_factory.mktemp("mlm")
    return {"bert": Tokenizer.from_dir(build_wordpiece(root / "bert")),
            "roberta": Tokenizer.from_dir(build_roberta(root / "roberta"))}


def test_word_start_table_and_specials(tokenizers):
    bert, roberta = tokenizers["bert"], tokenizers["roberta"]
    assert special_token_ids(bert) == [0, 1, 2, 3, 4] and special_token_ids(roberta) == [0, 1, 2, 3, 4]
    table = word_start_table(bert)
    vocab = bert.backend.get_vocab()
    assert table.shape == (bert.vocab_size,) and any(t.startswith("##") for t in vocab)
    assert all(bool(table[i]) == (not t.startswith("##")) for t, i in vocab.items())
    table = word_start_table(roberta)
    assert all(bool(table[i]) == (t.startswith("Ġ") or i < 5) for t, i in roberta.backend.get_vocab().items())
    # With a real WordPiece tokenizer, every word's sub-tokens are masked together.
    texts = ENCODER_TEXT[:6] + ["Broncoses played superbowls in Clarafornia, pianists."]  # unseen words
    encs = [bert.encode_offsets(text) for text in texts]
    T = max(len(e) for e in encs)
    ids = torch.full((len(encs), T), bert.pad_id)
    for b, e in enumerate(encs):
        ids[b, :len(e)] = torch.tensor(e.ids)
    ids = ids.repeat(50, 1)
    _, labels = mask_tokens(ids, mask_id=bert.mask_id, vocab_size=bert.vocab_size, special_ids=special_token_ids(bert),
                            generator=torch.Generator().manual_seed(0), word_starts=word_start_table(bert),
                            mlm_probability=0.3)
    n_multi = 0
    for b in range(ids.shape[0]):
        e = encs[b % len(encs)]
        groups: dict[int, set] = {}
        for t, w in enumerate(e.word_ids):
            if w is not None:
                groups.setdefault(w, set()).add(bool(labels[b, t] != IGNORE_INDEX))
        assert all(len(g) == 1 for g in groups.values())
        n_multi += sum(e.word_ids.count(w) > 1 for w in groups)
    assert n_multi > 0  # some words really have several sub-tokens


def test_mask_errors():
    with pytest.raises(LLMKitError, match="batch, tokens"):
        mask(torch.zeros(5, dtype=torch.long))
    with pytest.raises(LLMKitError, match="mlm_probability"):
        mask(batch(B=2, T=8), mask_fraction=0.95, random_fraction=0.1)
    with pytest.raises(LLMKitError, match="word_starts covers 10 ids"):
        mask(batch(B=2, T=8), word_starts=torch.ones(10, dtype=torch.bool))


# --- next-sentence prediction ----------------------------------------------------------------------
def documents(n_docs: int = 120, seed: int = 0) -> list[list[list[int]]]:
    """Sentence j of document d holds ids 10_000 * (d + 1) + 100 * j + k: every token says where it is from."""
    rng = random.Random(seed)
    return [[[10_000 * (d + 1) + 100 * j + k for k in range(rng.randint(4, 14))] for j in range(rng.randint(8, 30))]
            for d in range(n_docs)]


def test_nsp_pairs():
    docs = documents()
    pairs = nsp_pairs(docs, cls_id=CLS, sep_id=SEP, max_length=64, seed=0, short_seq_prob=0.0)
    assert nsp_pairs(docs, cls_id=CLS, sep_id=SEP, max_length=64, seed=0, short_seq_prob=0.0) == pairs
    assert nsp_pairs(docs, cls_id=CLS, sep_id=SEP, max_length=64, seed=1, short_seq_prob=0.0) != pairs
    share = sum(p.label == IS_RANDOM for p in pairs) / len(pairs)
    assert len(pairs) > 400 and 0.45 < share < 0.6  # 50%, plus the one-sentence chunks at document ends
    for p in pairs:
        assert len(p.ids) <= 64 and p.ids[0] == CLS and p.ids[-1] == SEP and p.ids.count(SEP) == 2
        cut = p.ids.index(SEP)
        a, b = p.ids[1:cut], p.ids[cut + 1:-1]
        assert a and b and p.type_ids == [0] * (len(a) + 2) + [1] * (len(b) + 1)
        doc_a, doc_b = {t // 10_000 for t in a}, {t // 10_000 for t in b}
        assert len(doc_a) == 1 and len(doc_b) == 1
        if p.label == IS_NEXT:  # B continues A in the same document (at a sentence boundary, when not cut)
            assert doc_a == doc_b
            if len(p.ids) < 64:
                assert (b[0] // 100) % 100 == (a[-1] // 100) % 100 + 1 and b[0] % 100 == 0
        else:
            assert doc_a != doc_b
    # Short targets: some pairs well under the maximum.
    short = nsp_pairs(docs, cls_id=CLS, sep_id=SEP, max_length=64, seed=0, short_seq_prob=0.5)
    assert sum(len(p.ids) < 32 for p in short) > sum(len(p.ids) < 32 for p in pairs)
    with pytest.raises(LLMKitError, match="two non-empty documents"):
        nsp_pairs([docs[0], [[]]], cls_id=CLS, sep_id=SEP, max_length=64)


def test_truncate_seq_pair():
    rng = random.Random(0)
    a, b = list(range(30)), list(range(100, 110))
    truncate_seq_pair(a, b, 24, rng)
    assert len(a) + len(b) == 24 and b == list(range(100, 110))  # the longer side is cut first
    assert a[0] > 0 and a[-1] < 29  # from both ends, at random
    a, b = list(range(30)), list(range(100, 130))
    truncate_seq_pair(a, b, 20, rng)
    assert len(a) == len(b) == 10
