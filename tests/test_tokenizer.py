"""Tokenizer: training, the supported folder layouts, special tokens, BOS handling, streaming."""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

import pytest
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from llmkit.errors import LLMKitError
from llmkit.tokenizer import StreamDecoder, Tokenizer, train_tokenizer
from tests.helpers import cli_error, cli_run

GPT2_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gpt2"
SAMPLES = [
    "Hello world!",
    "  leading and trailing spaces  ",
    "tabs\tand\nnew lines\n\n\nblank runs",
    "Unicode: café, naïve, Ærø, 日本語のテキスト, emoji 😀👍🏽 and 🇯🇵",
    "special <|endoftext|> in the middle",
    "",
]


def corpus_text(n_lines: int = 400, seed: int = 0) -> str:
    rng = random.Random(seed)
    vocab = ["the", "of", "and", "to", "a", "in", "king", "queen", "speak", "lord", "good", "night",
             "thou", "art", "what", "say", "come", "hither", "love", "death", "sword", "crown"]
    lines = []
    for _ in range(n_lines):
        words = [rng.choice(vocab) for _ in range(rng.randint(4, 12))]
        lines.append(rng.choice(["", "KING: ", "QUEEN: "]) + " ".join(words).capitalize() + rng.choice(".!?,;"))
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tok")
    (d / "corpus.txt").write_text(corpus_text(), encoding="utf-8")
    train_tokenizer([str(d / "corpus.txt")], vocab_size=400, out=str(d / "out"))
    return d / "out"


def gpt2_style_files(d: Path, vocab_name: str = "vocab.json", merges_name: str = "merges.txt") -> Path:
    """A tiny GPT-2 format tokenizer: the 256 byte symbols, a few merges, <|endoftext|>."""
    d.mkdir(parents=True, exist_ok=True)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "w"), ("o", "r"), ("Ġw", "or"),
              ("l", "d"), ("Ġwor", "ld"), ("e", "l"), ("el", "l"), ("H", "ell")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (d / vocab_name).write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (d / merges_name).write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return d


def llama_like(d: Path, config: dict | None = None) -> Path:
    """A SentencePiece-style BPE with byte fallback whose post-processor prepends <s> (Llama 2)."""
    d.mkdir(parents=True, exist_ok=True)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for ch in "▁" + string.ascii_letters + string.digits + ".,!?'":
        vocab.setdefault(ch, len(vocab))
    merges = [("▁", "H"), ("e", "l"), ("el", "l"), ("▁H", "ell"), ("▁Hell", "o"), ("▁", "w"), ("o", "r"),
              ("▁w", "or"), ("▁wor", "l"), ("▁worl", "d")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = RustTokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.save(str(d / "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "</s>", "unk_token": "<unk>",
           "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": False}}  # the dict form
    cfg.update(config or {})
    (d / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return d


# --- training and round trips ---------------------------------------------------------------------
def test_train_round_trip_and_specials(trained):
    tok = Tokenizer.from_dir(trained)
    assert 300 < tok.vocab_size <= 400  # a small corpus may run out of pairs to merge
    assert tok.bos_id == tok.eos_id == tok.pad_id == tok.token_to_id("<|endoftext|>") == 0
    assert tok.eos_ids == {0} and tok.add_bos is False
    for text in SAMPLES:
        ids = tok.encode(text)
        assert tok.decode(ids, skip_special=False) == text
    assert tok.encode("ab", eos=True)[-1] == 0 and tok.encode("ab", bos=True)[0] == 0
    # "<|endoftext|>" in text is the special token, and decode(skip_special) drops it.
    ids = tok.encode("a<|endoftext|>b")
    assert 0 in ids and tok.decode(ids) == "ab"
    assert tok.encode_batch(SAMPLES, eos=True) == [tok.encode(t, eos=True) for t in SAMPLES]


def test_train_matches_transformers(trained):
    from transformers import AutoTokenizer

    tok = Tokenizer.from_dir(trained)
    hf = AutoTokenizer.from_pretrained(str(trained))
    for text in SAMPLES:
        ids = tok.encode(text)
        assert hf.encode(text) == ids
        assert hf.decode(ids) == tok.decode(ids, skip_special=False)
    assert hf.eos_token_id == tok.eos_id


def test_train_errors(tmp_path, capsys):
    with pytest.raises(LLMKitError, match="too small"):
        train_tokenizer([str(tmp_path)], vocab_size=100, out=str(tmp_path / "o"))
    with pytest.raises(LLMKitError, match="no such file"):
        train_tokenizer([str(tmp_path / "missing.txt")], out=str(tmp_path / "o"))
    cli_error(capsys, ["tokenizer", "train", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o")], "missing.txt")


# --- WordPiece (BERT) -----------------------------------------------------------------------------
WP_SAMPLES = [
    "The KING, Café naïve Ærø über!",  # casing and accents
    "Résumé of the queen; (yes) -- no?!",  # punctuation is split off
    "kator melan 日本 😀 § qzx",  # characters never seen -> [UNK]
    "  spaces\tand\nnew lines  ",
    "",
]


def wordpiece_corpus(n_lines: int = 400, seed: int = 0) -> str:
    """Sentences over ~160 made-up words built from shared syllables (so "##" pieces are learned),
    with capitals, accented words and punctuation."""
    rng = random.Random(seed)
    syllables = ["ka", "to", "ri", "mel", "an", "por", "ing", "ed", "un", "ver", "sta", "ble", "tion", "qu", "li", "ne"]
    words = ["the", "of", "and", "a", "king", "queen", "Café", "naïve", "Résumé", "Ærø", "über", "night", "SWORD"]
    words += ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(150)]
    lines = []
    for _ in range(n_lines):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(4, 12))).capitalize()
        lines.append(sentence + rng.choice([".", "!", "?", ",", ";", " (yes)", " -- no"]))
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("wp")
    (d / "corpus.txt").write_text(wordpiece_corpus(), encoding="utf-8")
    train_tokenizer([str(d / "corpus.txt")], vocab_size=400, out=str(d / "out"), kind="wordpiece")
    return d / "out"


def test_wordpiece_matches_transformers(wordpiece):
    from transformers import AutoTokenizer, BertTokenizerFast

    tok = Tokenizer.from_dir(wordpiece)
    hf = AutoTokenizer.from_pretrained(str(wordpiece))
    assert isinstance(hf, BertTokenizerFast)
    assert 300 < tok.vocab_size <= 400
    for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]):  # BERT's order: [PAD] = 0
        assert tok.token_to_id(t) == hf.convert_tokens_to_ids(t) == i
    assert (tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 2, 3, 4)
    assert (hf.pad_token_id, hf.cls_token_id, hf.sep_token_id, hf.mask_token_id, hf.unk_token_id) == (0, 2, 3, 4, 1)
    assert tok.special_tokens == {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                                  "sep_token": "[SEP]", "mask_token": "[MASK]"}
    assert tok.bos_id is None and tok.eos_id is None and tok.eos_ids == set() and not tok.add_bos
    assert tok.add_cls_sep and hf.model_max_length == 512
    assert any(t.startswith("##") for t in tok.backend.get_vocab())
    for text in WP_SAMPLES:
        ids = tok.encode(text)
        assert ids == hf(text)["input_ids"], text
        assert ids[0] == 2 and ids[-1] == 3 and ids.count(2) == ids.count(3) == 1
        assert tok.encode(text, bos=False) == ids[1:-1]
        assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True)
        assert tok.decode(ids, skip_special=False) == hf.decode(ids)
    assert tok.encode_batch(WP_SAMPLES) == [tok.encode(t) for t in WP_SAMPLES]
    # Lower-cased, accents stripped, WordPiece's spacing; unseen characters are [UNK].
    assert tok.decode(tok.encode("The KING, Café naïve!")) == "the king, cafe naive!"
    assert 1 in tok.encode("日本 😀")
    pieces = hf.convert_ids_to_tokens(tok.encode("kator melan", bos=False))
    assert any(p.startswith("##") for p in pieces) and tok.decode(tok.encode("kator melan")) == "kator melan"
    # Sentence pairs: [CLS] A [SEP] B [SEP], token type ids 0...0 1...1.
    pair = hf("the king speaks", "a queen!")
    ids, types = tok.encode_pair("the king speaks", "a queen!")
    assert ids == pair["input_ids"] and types == pair["token_type_ids"]
    assert types == [0] * (ids.index(3) + 1) + [1] * (len(ids) - ids.index(3) - 1) and 1 in types
    with pytest.raises(LLMKitError, match="EOS"):
        tok.encode("a", eos=True)
    # Saving again keeps it a BERT tokenizer for both loaders.
    again = Tokenizer.from_dir(tok.save(wordpiece.parent / "saved"))
    assert json.loads((wordpiece.parent / "saved" / "tokenizer_config.json").read_text())["tokenizer_class"] \
        == "BertTokenizerFast"
    assert [again.encode(t) for t in WP_SAMPLES] == [tok.encode(t) for t in WP_SAMPLES]


def test_wordpiece_files(wordpiece):
    cfg = json.loads((wordpiece / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert cfg["tokenizer_class"] == "BertTokenizerFast" and cfg["do_lower_case"] is True
    assert cfg["model_max_length"] == 512
    smap = json.loads((wordpiece / "special_tokens_map.json").read_text(encoding="utf-8"))
    assert smap == {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                    "mask_token": "[MASK]"}
    for key, value in smap.items():
        assert cfg[key] == value


def test_bpe_has_no_encoder_specials(trained):
    tok = Tokenizer.from_dir(trained)
    assert tok.cls_id is None and tok.sep_id is None and tok.mask_id is None and not tok.add_cls_sep
    with pytest.raises(LLMKitError, match="pair"):
        tok.encode_pair("a", "b")


def test_wordpiece_cli_cased(tmp_path, capsys):
    from transformers import AutoTokenizer

    (tmp_path / "corpus.txt").write_text(wordpiece_corpus(seed=1), encoding="utf-8")
    out = tmp_path / "cased"
    code, stdout, err = cli_run(capsys, ["tokenizer", "train", tmp_path / "corpus.txt", "--kind", "wordpiece",
                                         "--vocab-size", "350", "--lowercase", "false", "--out", out])
    assert code == 0, err
    assert "WordPiece" in stdout and str(out) in stdout
    tok = Tokenizer.from_dir(out)
    hf = AutoTokenizer.from_pretrained(str(out))
    assert tok.vocab_size <= 350 and hf.do_lower_case is False
    for text in WP_SAMPLES:
        assert tok.encode(text) == hf(text)["input_ids"], text
        assert tok.decode(tok.encode(text)) == hf.decode(hf(text)["input_ids"], skip_special_tokens=True)
    assert tok.decode(tok.encode("Café naïve über")) == "Café naïve über"  # case and accents kept
    cli_error(capsys, ["tokenizer", "train", tmp_path / "corpus.txt", "--kind", "sentencepiece", "--out", out],
              "sentencepiece", "bpe", "wordpiece")
    with pytest.raises(LLMKitError, match="too small"):
        train_tokenizer([str(tmp_path / "corpus.txt")], vocab_size=5, out=str(tmp_path / "o"), kind="wordpiece")


# --- folder layouts --------------------------------------------------------------------------------
@pytest.mark.parametrize("names", [("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")])
def test_gpt2_files_match_transformers(tmp_path, names):
    from transformers import GPT2TokenizerFast

    d = gpt2_style_files(tmp_path / "gpt2", *names)
    tok = Tokenizer.from_dir(d)
    vocab = json.loads((d / names[0]).read_text(encoding="utf-8"))
    merges = [tuple(line.split()) for line in (d / names[1]).read_text(encoding="utf-8").splitlines()[1:]]
    hf = GPT2TokenizerFast(vocab=vocab, merges=merges)
    assert tok.vocab_size == len(vocab)
    assert tok.eos_id == tok.bos_id == vocab["<|endoftext|>"] and not tok.add_bos
    for text in SAMPLES + ["Hello the world"]:
        assert tok.encode(text) == hf.encode(text), text
        assert tok.decode(tok.encode(text), skip_special=False) == text
    assert tok.encode("Hello the world") == [vocab["Hell"], vocab["o"], vocab["Ġthe"], vocab["Ġworld"]]


def test_save_loads_in_transformers(tmp_path):
    from transformers import AutoTokenizer

    src = gpt2_style_files(tmp_path / "gpt2")
    (src / "generation_config.json").write_text(json.dumps({"eos_token_id": [5, 7]}), encoding="utf-8")
    tok = Tokenizer.from_dir(src)
    out = tok.save(tmp_path / "saved")
    assert (out / "generation_config.json").exists()
    again = Tokenizer.from_dir(out)
    hf = AutoTokenizer.from_pretrained(str(out))
    for text in SAMPLES:
        assert again.encode(text) == tok.encode(text) == hf.encode(text)
    assert again.eos_ids == tok.eos_ids == {5, 7, tok.eos_id}


def test_folder_saved_by_transformers(tmp_path):
    from transformers import AutoTokenizer, GPT2TokenizerFast

    src = gpt2_style_files(tmp_path / "gpt2")
    vocab = json.loads((src / "vocab.json").read_text(encoding="utf-8"))
    merges = [tuple(line.split()) for line in (src / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]]
    GPT2TokenizerFast(vocab=vocab, merges=merges).save_pretrained(str(tmp_path / "hf"))
    tok = Tokenizer.from_dir(tmp_path / "hf")
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos) == (hf.bos_token_id, hf.eos_token_id, None, False)
    for text in SAMPLES:
        assert tok.encode(text) == hf.encode(text)


@pytest.mark.skipif(not (GPT2_DATA / "encoder.json").exists(), reason=f"GPT-2 tokenizer files not in {GPT2_DATA}")
def test_real_gpt2_files():
    from transformers import GPT2TokenizerFast

    tok = Tokenizer.from_dir(GPT2_DATA)
    vocab = json.loads((GPT2_DATA / "encoder.json").read_text(encoding="utf-8"))
    lines = (GPT2_DATA / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:]
    hf = GPT2TokenizerFast(vocab=vocab, merges=[tuple(line.split(" ")) for line in lines if line])
    assert tok.vocab_size == 50257 and tok.eos_id == 50256
    for text in SAMPLES + ["The quick brown fox jumps over the lazy dog. It's 2024; we'll see."]:
        assert tok.encode(text) == hf.encode(text), text
    assert tok.encode("Hello world") == [15496, 995]


def test_bos_from_post_processor_not_doubled(tmp_path):
    from transformers import AutoTokenizer

    d = llama_like(tmp_path / "llama")
    tok = Tokenizer.from_dir(d)
    assert tok.bos_id == 1 and tok.eos_id == 2 and tok.add_bos  # detected from the template
    assert tok.special_tokens["bos_token"] == "<s>"
    ids = tok.encode("Hello world")
    assert ids[0] == 1 and ids.count(1) == 1
    assert tok.encode("Hello world", bos=False) == ids[1:]
    assert tok.encode("Hello world", eos=True) == ids + [2]
    assert tok.decode(ids) == "Hello world"
    assert AutoTokenizer.from_pretrained(str(d)).encode("Hello world") == ids
    # add_bos_token in tokenizer_config wins over the template, in both directions.
    assert not Tokenizer.from_dir(llama_like(tmp_path / "nobos", {"add_bos_token": False})).add_bos
    assert Tokenizer.from_dir(llama_like(tmp_path / "bos", {"add_bos_token": True})).encode("Hi").count(1) == 1


def test_config_files_specials_and_templates(trained, tmp_path):
    d = tmp_path / "tok"
    d.mkdir()
    (d / "tokenizer.json").write_bytes((trained / "tokenizer.json").read_bytes())
    cfg = {"eos_token": {"content": "<|endoftext|>", "special": True}, "pad_token": None,
           "added_tokens_decoder": {"0": {"content": "<|endoftext|>", "special": True}},
           "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}
    (d / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 3], "bos_token_id": 0,
                                                          "pad_token_id": 0}), encoding="utf-8")
    tok = Tokenizer.from_dir(d)
    assert tok.eos_id == 0 and tok.eos_ids == {0, 3}
    assert tok.bos_id == 0  # from generation_config: tokenizer_config names none
    assert tok.pad_id is None  # an explicit null in tokenizer_config wins over generation_config
    assert tok.chat_template == "D"
    assert tok.special_tokens["eos_token"] == "<|endoftext|>"
    # chat_template.jinja is read when the config has none, and copied by save().
    cfg.pop("chat_template")
    (d / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    (d / "chat_template.jinja").write_text("{{ bos_token }}J", encoding="utf-8")
    tok = Tokenizer.from_dir(d)
    assert tok.chat_template == "{{ bos_token }}J"
    out = tok.save(tmp_path / "copy")
    assert (out / "chat_template.jinja").read_text(encoding="utf-8") == "{{ bos_token }}J"
    assert Tokenizer.from_dir(out).eos_ids == {0, 3}


def test_from_dir_errors(tmp_path):
    with pytest.raises(LLMKitError, match="nope.*does not exist"):
        Tokenizer.from_dir(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LLMKitError, match="no tokenizer files in .*empty"):
        Tokenizer.from_dir(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(LLMKitError, match="cannot load .*tokenizer.json"):
        Tokenizer.from_dir(tmp_path / "bad")


# --- streaming -------------------------------------------------------------------------------------
STREAM_TEXT = "Hello world! 😀👍🏽 日本語 café 🇯🇵 done"


@pytest.mark.parametrize("kind", ["byte_level", "sentencepiece"])
def test_stream_decoder_multibyte(trained, tmp_path, kind):
    tok = Tokenizer.from_dir(trained if kind == "byte_level" else llama_like(tmp_path / "llama"))
    ids = tok.encode(STREAM_TEXT, bos=False)
    assert len(ids) > len(STREAM_TEXT.encode("utf-8")) / 2  # emoji/CJK really are split into bytes
    sd = StreamDecoder(tok)
    pieces = [sd.push(i) for i in ids]
    pieces.append(sd.flush())
    assert "".join(pieces) == tok.decode(ids) == STREAM_TEXT
    assert not any("\ufffd" in p for p in pieces)
    assert "" in pieces[:-1]  # something was held back while a character was incomplete


def test_stream_decoder_skips_specials_and_flushes_partial(trained):
    tok = Tokenizer.from_dir(trained)
    ids = tok.encode("ab<|endoftext|>cd 😀")
    sd = StreamDecoder(tok)
    assert "".join(sd.push(i) for i in ids) + sd.flush() == "abcd 😀"
    sd = StreamDecoder(tok, skip_special=False)
    assert "".join(sd.push(i) for i in ids) + sd.flush() == "ab<|endoftext|>cd 😀"
    # An unfinished character at the end is held back, then flushed as U+FFFD.
    partial = tok.encode("x😀")[:-1]
    sd = StreamDecoder(tok)
    assert "".join(sd.push(i) for i in partial) == "x"
    assert sd.flush().startswith("\ufffd")


def test_stream_decoder_long_text_window(trained):
    tok = Tokenizer.from_dir(trained)
    text = corpus_text(60, seed=3) + " ünïcödé 😀" * 20
    ids = tok.encode(text)
    sd = StreamDecoder(tok)
    assert "".join(sd.push(i) for i in ids) + sd.flush() == text
    assert len(sd._ids) == 0  # flushed; during the run the window is trimmed, not the whole text
