"""Tokenizer encodings with alignments (`encode_offsets`, `encode_windows`) and pair encoding for
any template: equal to transformers' for BERT (WordPiece) and RoBERTa (byte-level BPE)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmkit.errors import LLMKitError
from llmkit.tokenizer import Encoded, Tokenizer
from tests.helpers import ENCODER_TEXT, build_roberta, build_wordpiece

TEXTS = [
    "Who won Super Bowl 50?",
    "The Denver Broncos defeated the Carolina Panthers 24-10, in Santa Clara.",
    "  Café naïve Ærø über — 日本 😀 qzx!  ",  # accents, unknown characters, odd spacing
    "",
]
PAIRS = [(TEXTS[0], TEXTS[1]), ("Where was it played?", "In Santa Clara, California."), (TEXTS[2], "x"), ("a", "")]
WORDS = [["Steve", "Jobs", "visited", "Paris", "."], ["Café", "naïve", "日本", "😀", "qzx"], ["New", "York"]]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("enc")
    return {"bert": build_wordpiece(root / "bert"), "roberta": build_roberta(root / "roberta")}


def both(tokenizers, name):
    from transformers import AutoTokenizer

    return Tokenizer.from_dir(tokenizers[name]), AutoTokenizer.from_pretrained(str(tokenizers[name]))


def assert_same(enc: Encoded, hf_enc, i: int = 0) -> None:
    """One llmkit encoding equals transformers' encoding number `i` in every field."""
    assert enc.ids == hf_enc["input_ids"][i]
    assert enc.type_ids == hf_enc["token_type_ids"][i]
    assert enc.offsets == [tuple(o) for o in hf_enc["offset_mapping"][i]]
    assert enc.word_ids == hf_enc.word_ids(i)
    assert enc.sequence_ids == hf_enc.sequence_ids(i)


def hf_call(hf, *args, **kw):
    return hf(*args, return_offsets_mapping=True, return_token_type_ids=True, **kw)


@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_offsets_match_transformers(tokenizers, name):
    tok, hf = both(tokenizers, name)
    for text in TEXTS:
        assert_same(tok.encode_offsets(text), hf_call(hf, [text]))
        assert tok.encode_offsets(text).ids == tok.encode(text) == hf(text)["input_ids"], text
        assert tok.encode_offsets(text, add_special=False).ids == tok.encode(text, bos=False)
    for a, b in PAIRS:
        assert_same(tok.encode_offsets(a, b), hf_call(hf, [a], [b]))
        # (Batched: transformers' single call takes an empty text_pair for no pair at all.)
        ref = hf([a], [b], return_token_type_ids=True)
        assert tok.encode_pair(a, b) == (ref["input_ids"][0], ref["token_type_ids"][0])
    for words in WORDS:  # pre-tokenized words (NER), alone and as a pair
        assert_same(tok.encode_offsets(words, is_pretokenized=True), hf_call(hf, [words], is_split_into_words=True))
        assert_same(tok.encode_offsets(words, WORDS[0], is_pretokenized=True),
                    hf_call(hf, [words], [WORDS[0]], is_split_into_words=True))


def test_templates(tokenizers):
    bert, roberta = Tokenizer.from_dir(tokenizers["bert"]), Tokenizer.from_dir(tokenizers["roberta"])
    ids, types = bert.encode_pair("who won?", "the broncos")
    assert ids[0] == 2 and ids.count(3) == 2 and ids[-1] == 3 and types == [0] * (ids.index(3) + 1) + [1] * (
        len(ids) - ids.index(3) - 1)
    # RoBERTa: <s> A </s></s> B </s>, all type ids 0; <s> is CLS and BOS at once, added once.
    assert (roberta.cls_id, roberta.sep_id, roberta.bos_id, roberta.eos_id) == (0, 2, 0, 2)
    assert roberta.add_cls_sep and not roberta.add_bos
    ids, types = roberta.encode_pair("who won?", "the broncos")
    a, b = roberta.encode("who won?", bos=False), roberta.encode("the broncos", bos=False)
    assert ids == [0, *a, 2, 2, *b, 2] and types == [0] * len(ids)
    assert roberta.encode("who won?") == [0, *a, 2] and roberta.encode("who won?", bos=True) == [0, *a, 2]
    enc = roberta.encode_offsets("who won?", "the broncos")
    assert enc.sequence_ids == [None] + [0] * len(a) + [None, None] + [1] * len(b) + [None]
    assert enc.offsets[0] == enc.offsets[-1] == (0, 0)
    # Offsets point into each input's own text.
    text = "the broncos"
    pieces = [text[s:e] for (s, e), q in zip(enc.offsets, enc.sequence_ids) if q == 1]
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "")
    # Saved and reloaded, still one <s>, in both loaders.
    from transformers import AutoTokenizer

    out = roberta.save(tokenizers["roberta"].parent / "roberta-saved")
    again = Tokenizer.from_dir(out)
    assert again.encode("who won?") == [0, *a, 2] == AutoTokenizer.from_pretrained(str(out))("who won?")["input_ids"]
    with pytest.raises(LLMKitError, match="pair"):  # a decoder tokenizer has no pair template
        Tokenizer.from_dir(decoder_tokenizer(tokenizers)).encode_pair("a", "b")


def decoder_tokenizer(tokenizers) -> Path:
    from tests.helpers import save_tokenizer

    d = tokenizers["bert"].parent.parent / "bpe"
    d.mkdir(exist_ok=True)
    save_tokenizer(d, 300, bos=False)
    return d


def test_transformers_roberta_tokenizer(tokenizers, tmp_path):
    """The folder transformers' own RobertaTokenizer(Fast) writes loads and encodes the same."""
    from transformers import AutoTokenizer, RobertaTokenizerFast

    model = json.loads((tokenizers["roberta"] / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    RobertaTokenizerFast(vocab=model["vocab"], merges=merges, add_prefix_space=True).save_pretrained(str(tmp_path))
    tok, hf = Tokenizer.from_dir(tmp_path), AutoTokenizer.from_pretrained(str(tmp_path))
    assert type(hf).__name__.startswith("RobertaTokenizer") and (tok.cls_id, tok.sep_id) == (0, 2)
    for text in TEXTS:
        assert tok.encode(text) == hf(text)["input_ids"]
        assert_same(tok.encode_offsets(text), hf_call(hf, [text]))
    for a, b in PAIRS:
        assert tok.encode_pair(a, b)[0] == hf([a], [b])["input_ids"][0]
        assert_same(tok.encode_offsets(a, b), hf_call(hf, [a], [b]))
    for words in WORDS:
        assert_same(tok.encode_offsets(words, is_pretokenized=True), hf_call(hf, [words], is_split_into_words=True))


@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_windows_match_transformers(tokenizers, name):
    tok, hf = both(tokenizers, name)
    question = "Who defeated the Carolina Panthers?"
    for n in (1, 3, 8):
        context = " ".join(ENCODER_TEXT[:n])
        for max_length, stride in ((24, 0), (32, 8), (40, 20), (64, 16), (512, 128)):
            windows = tok.encode_windows(question, context, max_length=max_length, stride=stride)
            ref = hf_call(hf, [question], [context], truncation="only_second", max_length=max_length, stride=stride,
                          return_overflowing_tokens=True)
            assert len(windows) == len(ref["input_ids"]) and all(len(w) <= max_length for w in windows)
            for i, w in enumerate(windows):
                assert_same(w, ref, i)
            first = tok.encode_offsets(question, context, max_length=max_length)
            assert first.ids == hf(question, context, truncation="only_second", max_length=max_length)["input_ids"]
            # One text alone: the text itself is windowed.
            alone = tok.encode_windows(context, max_length=max_length, stride=stride)
            ref = hf(context, truncation=True, max_length=max_length, stride=stride, return_overflowing_tokens=True)
            assert [w.ids for w in alone] == ref["input_ids"]
        if n == 8:
            assert len(tok.encode_windows(question, context, max_length=32, stride=8)) > 3
    # The shared backend is never left truncating: plain encodes stay whole.
    assert len(tok.encode_offsets(question, " ".join(ENCODER_TEXT))) > 512 // 4
    assert tok.backend.truncation is None


def test_window_errors(tokenizers):
    tok = Tokenizer.from_dir(tokenizers["bert"])
    question, context = "Who defeated the Carolina Panthers in the game?", " ".join(ENCODER_TEXT[:3])
    n_question = len(tok.encode(question, bos=False))
    with pytest.raises(LLMKitError, match="no room for the context"):
        tok.encode_windows(question, context, max_length=n_question + 3)
    with pytest.raises(LLMKitError, match="stride 10 must be smaller than the 5 tokens"):
        tok.encode_windows(question, context, max_length=n_question + 8, stride=10)
    with pytest.raises(LLMKitError, match="max_length"):
        tok.encode_windows(question, context, max_length=0)
    # Everything fits: one window, whatever the stride.
    assert len(tok.encode_windows("a", "b", max_length=10, stride=100)) == 1
