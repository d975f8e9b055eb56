"""Unigram (T5) tokenizers: `train_tokenizer(kind="unigram")` and the CLI, T5's special ids and
sentinels, parity with transformers' T5Tokenizer, round trips, the NFKC charsmap, errors."""

from __future__ import annotations

import json
import random
import unicodedata
from pathlib import Path

import pytest
from tokenizers import normalizers

from llmkit.errors import LLMKitError
from llmkit.tokenizer import StreamDecoder, Tokenizer, nfkc_charsmap, train_tokenizer
from tests.conftest import SHARED_DATA
from tests.helpers import cli_error, cli_run

N_SENTINELS = 20
VOCAB = 400


def english(n_lines: int = 400, seed: int = 0) -> list[str]:
    """Varied English sentences: names, numbers, punctuation, quotes, questions, a few accents."""
    rng = random.Random(seed)
    people = ["Alice", "Bob", "the old farmer", "my sister", "a young doctor", "the teacher", "Mr. Brown",
              "our neighbours", "the captain", "José", "Zoë", "the children"]
    verbs = ["walked to", "looked at", "wrote a letter about", "painted", "dreamed of", "talked about",
             "visited", "forgot", "carried a basket to", "remembered", "sold", "built a fence near"]
    things = ["the river", "a small village", "the red house", "the market", "an empty station",
              "the mountains", "a quiet garden", "the harbour", "the library", "a wooden bridge",
              "the café on the corner", "the north road"]
    times = ["yesterday", "on Monday", "in 1999", "after dinner", "at 7 o'clock", "every summer",
             "before the storm", "last week", "in the morning", "at night"]
    lines = []
    for _ in range(n_lines):
        kind = rng.random()
        p, v, t, w = rng.choice(people), rng.choice(verbs), rng.choice(things), rng.choice(times)
        if kind < 0.5:
            s = f"{p[0].upper() + p[1:]} {v} {t} {w}."
        elif kind < 0.65:
            s = f"Did {p} really say that {rng.choice(people)} {rng.choice(verbs)} {t}?"
        elif kind < 0.8:
            s = f"\"We need {rng.randint(2, 99)} more,\" said {p}, \"or {t} will be lost!\""
        elif kind < 0.9:
            then = f"{rng.choice(people)} {rng.choice(verbs)} {rng.choice(things)}"
            s = f"{w[0].upper() + w[1:]}, {p} {v} {t}; then {then}."
        else:
            s = (f"It cost {rng.randint(1, 500)} dollars (about {rng.randint(1, 90)}%) "
                 f"and took {rng.randint(2, 12)} days.")
        lines.append(s)
    return lines


SAMPLES = [
    "Alice walked to the river yesterday.",
    "\"We need 12 more,\" said Bob, \"or the harbour will be lost!\"",
    "Did the captain really say that?",
    "José and Zoë visited the café on the corner.",
    "  Runs   of spaces,\ttabs\nand new lines  ",  # whitespace: one word boundary each
    "Unseen: 日本語, emoji 😀, Ω and ß",  # characters never seen -> <unk>
    "Compatibility forms: ﬁne ＡＢＣ １２３ … ½",  # NFKC: fine ABC 123 ... 1⁄2
    "Sentinels <extra_id_0> in <extra_id_1> text",
    "",
]


@pytest.fixture(scope="module")
def t5(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("unigram")
    (d / "corpus.txt").write_text("\n".join(english()) + "\n", encoding="utf-8")
    train_tokenizer([str(d / "corpus.txt")], vocab_size=VOCAB, out=str(d / "out"), kind="unigram",
                    extra_ids=N_SENTINELS)
    return d / "out"


def test_t5_ids_and_sentinels(t5):
    tok = Tokenizer.from_dir(t5)
    V = tok.vocab_size
    assert 200 < V <= VOCAB
    # T5's layout: <pad> = 0, </s> = 1, <unk> = 2, the sentinels at the top, <extra_id_0> highest.
    assert [tok.token_to_id(t) for t in ("<pad>", "</s>", "<unk>")] == [0, 1, 2]
    assert (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, None) and tok.eos_ids == {1}
    assert tok.sentinel_ids == list(range(V - 1, V - 1 - N_SENTINELS, -1))
    assert tok.token_to_id("<extra_id_0>") == V - 1
    assert tok.token_to_id(f"<extra_id_{N_SENTINELS - 1}>") == V - N_SENTINELS
    assert tok.token_to_id(f"<extra_id_{N_SENTINELS}>") is None
    assert tok.add_eos and not tok.add_bos and not tok.add_cls_sep and tok.mask_id is None
    model = json.loads((t5 / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    assert model["type"] == "Unigram" and model["unk_id"] == 2 and len(model["vocab"]) == V
    assert [p for p, _ in model["vocab"][-N_SENTINELS:]] == [f"<extra_id_{i}>" for i in reversed(range(N_SENTINELS))]
    cfg = json.loads((t5 / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert cfg["tokenizer_class"] == "T5Tokenizer" and cfg["extra_ids"] == N_SENTINELS
    assert (cfg["eos_token"], cfg["unk_token"], cfg["pad_token"]) == ("</s>", "<unk>", "<pad>")
    assert cfg["additional_special_tokens"] == [f"<extra_id_{i}>" for i in range(N_SENTINELS)]
    # Sentinels are special: never split, dropped by decode(skip_special).
    ids = tok.encode("the <extra_id_0> river <extra_id_3>", eos=False)
    assert tok.sentinel_ids[0] in ids and tok.sentinel_ids[3] in ids
    assert tok.decode(ids) == "the river"


def test_matches_transformers_t5_tokenizer(t5):
    from transformers import AutoTokenizer, T5Tokenizer

    tok = Tokenizer.from_dir(t5)
    hf = AutoTokenizer.from_pretrained(str(t5))
    assert isinstance(hf, T5Tokenizer)
    assert (hf.pad_token_id, hf.eos_token_id, hf.unk_token_id) == (0, 1, 2)
    sentinels = [f"<extra_id_{i}>" for i in range(N_SENTINELS)]
    assert hf.convert_tokens_to_ids(sentinels) == tok.sentinel_ids
    assert set(sentinels) <= set(hf.all_special_tokens) and len(hf) == tok.vocab_size
    for text in SAMPLES + english(50, seed=1):
        ids = tok.encode(text)
        assert ids == hf(text)["input_ids"], text
        assert ids[-1] == 1 and tok.encode(text, eos=False) == ids[:-1]
        assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True), text
    assert tok.encode_batch(SAMPLES) == [tok.encode(t) for t in SAMPLES]
    # Unseen characters are <unk> (2) in both; pairs follow T5's `$A </s> $B </s>`.
    assert 2 in tok.encode("日本語 😀")
    assert tok.backend.encode("Alice", "Bob").ids == hf("Alice", "Bob")["input_ids"]
    assert tok.backend.encode("Alice", "Bob").ids.count(1) == 2


def test_round_trips_and_normalization(t5):
    tok = Tokenizer.from_dir(t5)
    # Text over the corpus's characters comes back exactly, up to T5's whitespace rule.
    for text in english(100, seed=2):
        assert tok.decode(tok.encode(text)) == text
        assert 2 not in tok.encode(text)
    assert tok.decode(tok.encode("  Alice\t walked\n\nto   the river ")) == "Alice walked to the river"
    assert tok.decode(tok.encode("ﬁne ＡＢ １２３")) == "fine AB 123"  # NFKC, as T5's nmt_nfkc
    # Cased by default (T5 is cased), unlike the wordpiece default.
    assert tok.decode(tok.encode("Alice Bob")) == "Alice Bob"
    # Streaming decoding gives the same text as decoding at once (Metaspace's leading spaces).
    for text in SAMPLES[:4]:
        ids = tok.encode(text)
        stream = StreamDecoder(tok)
        assert "".join(stream.push(i) for i in ids) + stream.flush() == tok.decode(ids)
    # Saving again keeps a T5 tokenizer for both loaders.
    again = Tokenizer.from_dir(tok.save(t5.parent / "saved"))
    assert [again.encode(t) for t in SAMPLES] == [tok.encode(t) for t in SAMPLES]
    assert again.sentinel_ids == tok.sentinel_ids and again.add_eos
    assert json.loads((t5.parent / "saved" / "tokenizer_config.json").read_text())["tokenizer_class"] == "T5Tokenizer"


def test_nfkc_charsmap_is_nfkc_for_every_character():
    """The charsmap built here equals Python's NFKC (and NFKC + lower) on every code point."""
    for lowercase in (False, True):
        pre = normalizers.Precompiled(nfkc_charsmap(lowercase))
        bad = []
        for cp in range(0x110000):
            if 0xD800 <= cp < 0xE000:
                continue
            c = chr(cp)
            want = unicodedata.normalize("NFKC", c)
            if lowercase:
                want = want.lower()
            if pre.normalize_str(c) != want:
                bad.append(hex(cp))
        assert not bad, bad[:20]


def test_transformers_built_t5_tokenizer(t5, tmp_path):
    """A tokenizer.json written by transformers' own T5Tokenizer: sentinels found by name (there
    they are appended in ascending order), T5's eos/pad, the same ids in both loaders."""
    from transformers import T5Tokenizer

    vocab = [tuple(p) for p in json.loads((t5 / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]]
    hf = T5Tokenizer(vocab=vocab[:-N_SENTINELS], extra_ids=5)
    hf.save_pretrained(str(tmp_path / "hf"))
    tok = Tokenizer.from_dir(tmp_path / "hf")
    assert tok.sentinel_ids == hf.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(5)])
    assert (tok.eos_id, tok.pad_id) == (hf.eos_token_id, hf.pad_token_id) == (1, 0) and tok.add_eos
    for text in SAMPLES:
        assert tok.encode(text) == hf(text)["input_ids"], text
    # No sentinels in a byte-level BPE vocabulary.
    (tmp_path / "c.txt").write_text("\n".join(english(50)), encoding="utf-8")
    train_tokenizer([str(tmp_path / "c.txt")], vocab_size=300, out=str(tmp_path / "bpe"))
    bpe = Tokenizer.from_dir(tmp_path / "bpe")
    assert bpe.sentinel_ids == [] and not bpe.add_eos and bpe.encode("a b") == bpe.encode("a b", eos=False)


def test_cli_and_errors(tmp_path, capsys):
    from transformers import AutoTokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(english(300, seed=3)) + "\n", encoding="utf-8")
    out = tmp_path / "t5"
    code, stdout, err = cli_run(capsys, ["tokenizer", "train", corpus, "--kind", "unigram", "--vocab-size", "300",
                                         "--extra-ids", "10", "--out", out])
    assert code == 0, err
    assert "Unigram" in stdout and str(out) in stdout
    tok = Tokenizer.from_dir(out)
    assert tok.vocab_size <= 300 and len(tok.sentinel_ids) == 10 and tok.sentinel_ids[0] == tok.vocab_size - 1
    assert tok.encode("Alice") == AutoTokenizer.from_pretrained(str(out))("Alice")["input_ids"]
    # Lower-casing on request, in both loaders (it is part of the charsmap).
    code, _, err = cli_run(capsys, ["tokenizer", "train", corpus, "--kind", "unigram", "--vocab-size", "300",
                                    "--lowercase", "true", "--out", tmp_path / "lower"])
    assert code == 0, err
    lower = Tokenizer.from_dir(tmp_path / "lower")
    assert lower.decode(lower.encode("ALICE Walked")) == "alice walked"
    assert lower.encode("ALICE") == AutoTokenizer.from_pretrained(str(tmp_path / "lower"))("ALICE")["input_ids"]
    # Bad settings: one clear line each.
    cli_error(capsys, ["tokenizer", "train", corpus, "--kind", "unigram", "--vocab-size", "100", "--extra-ids", "100",
                       "--out", tmp_path / "x"], "vocab_size 100 is too small", "100 sentinel(s)")
    with pytest.raises(LLMKitError, match="extra_ids must be >= 0"):
        train_tokenizer([str(corpus)], vocab_size=300, out=str(tmp_path / "x"), kind="unigram", extra_ids=-1)
    with pytest.raises(LLMKitError, match="extra_ids is for --kind unigram"):
        train_tokenizer([str(corpus)], vocab_size=300, out=str(tmp_path / "x"), extra_ids=5)
    with pytest.raises(LLMKitError, match="sentinel name"):
        train_tokenizer([str(corpus)], vocab_size=300, out=str(tmp_path / "x"), kind="unigram",
                        special_tokens=["<extra_id_0>"])
    # A vocabulary smaller than the corpus's alphabet: the trainer's refusal, as one line.
    cli_error(capsys, ["tokenizer", "train", corpus, "--kind", "unigram", "--vocab-size", "30", "--extra-ids", "0",
                       "--out", tmp_path / "x"], "cannot train a Unigram vocabulary of 30")
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(not (SHARED_DATA / "text" / "tinyshakespeare.txt").is_file(),
                    reason="shared data set tinyshakespeare.txt not present")
def test_tinyshakespeare(tmp_path):
    from transformers import AutoTokenizer

    text = (SHARED_DATA / "text" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    (tmp_path / "c.txt").write_text("\n".join(lines[:6000]) + "\n", encoding="utf-8")
    train_tokenizer([str(tmp_path / "c.txt")], vocab_size=1100, out=str(tmp_path / "t5"), kind="unigram")
    tok = Tokenizer.from_dir(tmp_path / "t5")
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "t5"))
    assert tok.vocab_size == 1100 and tok.sentinel_ids[0] == 1099 and len(tok.sentinel_ids) == 100
    held_out = lines[6000:6300]
    assert [tok.encode(t) for t in held_out] == [hf(t)["input_ids"] for t in held_out]
    assert all(tok.decode(tok.encode(t)) == " ".join(t.split()) for t in held_out)
    # Subwords, not characters: well under one token per character.
    n_chars, n_tokens = sum(len(t) for t in held_out), sum(len(tok.encode(t, eos=False)) for t in held_out)
    assert n_tokens < 0.5 * n_chars
