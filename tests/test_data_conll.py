"""CoNLL reading, label lists, sub-token label alignment (as transformers' NER recipe) and back."""

from __future__ import annotations

import pytest

from llmkit.data.conll import align_labels, encode_sentences, label_list, read_conll, word_tags
from llmkit.errors import LLMKitError
from llmkit.tokenizer import Tokenizer
from llmkit.training.losses import IGNORE_INDEX
from tests.conftest import SHARED_DATA
from tests.helpers import build_roberta, build_wordpiece

NER = SHARED_DATA / "ner"
CONLL = (
    "-DOCSTART- -X- -X- O\n"
    "\n"
    "Steve\tB-person\n"
    "Jobs\tI-person\n"
    "visited\tO\n"
    "Paris\tB-location\n"
    "\n"
    "\n"
    "-DOCSTART- -X- -X- O\n"
    "EU NNP B-NP B-ORG\n"  # CoNLL-2003's four space-separated columns: the tag is the last
    "rejects VBZ B-VP O\n"
    "-DOCSTART- -X- -X- O\n"  # a document boundary also ends the sentence before it
    "New\tB-location\r\n"
    "York\tI-location"  # no final newline
)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[str, Tokenizer]:
    root = tmp_path_factory.mktemp("ner")
    return {"bert": Tokenizer.from_dir(build_wordpiece(root / "bert")),
            "roberta": Tokenizer.from_dir(build_roberta(root / "roberta"))}


def test_read_conll(tmp_path):
    path = tmp_path / "x.conll"
    path.write_text(CONLL, encoding="utf-8")
    sents = read_conll(path)
    assert [s.words for s in sents] == [("Steve", "Jobs", "visited", "Paris"), ("EU", "rejects"), ("New", "York")]
    assert [s.tags for s in sents] == [("B-person", "I-person", "O", "B-location"), ("B-ORG", "O"),
                                       ("B-location", "I-location")]
    assert [s.where for s in sents] == [f"{path}:3", f"{path}:10", f"{path}:13"]
    assert label_list(sents) == ["O", "B-ORG", "B-location", "B-person", "I-location", "I-person"]


def test_read_conll_errors(tmp_path):
    bad = tmp_path / "bad.conll"
    bad.write_text("Steve\tB-person\nJobs\n", encoding="utf-8")
    with pytest.raises(LLMKitError, match=r"bad.conll:2: expected a token and its tag"):
        read_conll(bad)
    bad.write_text("Steve\t\n", encoding="utf-8")
    with pytest.raises(LLMKitError, match=r"bad.conll:1"):
        read_conll(bad)
    bad.write_text("\n-DOCSTART- O\n\n", encoding="utf-8")
    with pytest.raises(LLMKitError, match="no sentences"):
        read_conll(bad)
    with pytest.raises(LLMKitError, match="no such file"):
        read_conll(tmp_path / "missing.conll")


def hf_align(hf, words: list[str], tags: list[str], label_to_id: dict) -> tuple[list[int], list[int]]:
    """transformers' examples/pytorch/token-classification/run_ner.py, tokenize_and_align_labels
    (label_all_tokens=False), for one sentence: (input ids, labels)."""
    enc = hf([words], is_split_into_words=True)
    labels, previous = [], None
    for word_idx in enc.word_ids(0):
        if word_idx is None:
            labels.append(-100)
        elif word_idx != previous:
            labels.append(label_to_id[tags[word_idx]])
        else:
            labels.append(-100)
        previous = word_idx
    return enc["input_ids"][0], labels


SENTENCES = [
    (["Steve", "Jobs", "visited", "Paris", "."], ["B-person", "I-person", "O", "B-location", "O"]),
    (["Frederic", "Chopin", "wrote", "Nocturnes", "in", "Warsaw"],
     ["B-person", "I-person", "O", "B-creative-work", "O", "B-location"]),
    (["Café", "😀", "qzxv", "Broncos"], ["O", "O", "B-product", "B-group"]),
]


@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_align_labels_match_transformers_recipe(tokenizers, name):
    from transformers import AutoTokenizer

    tok = tokenizers[name]
    hf = AutoTokenizer.from_pretrained(str(tok.source_dir))
    labels = ["O"] + sorted({t for _, tags in SENTENCES for t in tags} - {"O"})
    label_to_id = {t: i for i, t in enumerate(labels)}
    for words, tags in SENTENCES:
        enc = tok.encode_offsets(words, is_pretokenized=True)
        ids, ref = hf_align(hf, words, tags, label_to_id)
        assert enc.ids == ids
        got = align_labels(enc.word_ids, tags, label_to_id)
        assert got == ref
        # Every word has exactly one labelled token (its first), specials none.
        assert sum(x != IGNORE_INDEX for x in got) == len(words)
        assert got[0] == got[-1] == IGNORE_INDEX
        # Predicting the labels back gives the words' tags.
        assert word_tags(enc.word_ids, [max(x, 0) for x in got], labels, len(words)) == tags
    assert any(len(tok.encode_offsets(w, is_pretokenized=True)) > len(w) + 2 for w, _ in SENTENCES)  # sub-tokens
    with pytest.raises(LLMKitError, match="B-misc"):
        align_labels([None, 0, None], ["B-misc"], label_to_id)


def test_encode_sentences_truncates_and_counts(tokenizers, tmp_path):
    path = tmp_path / "x.conll"
    long = [f"word{i}\t{'B-person' if i % 5 == 0 else 'O'}" for i in range(40)]
    path.write_text("\n".join(["Steve\tB-person", "Jobs\tI-person", ""] + long) + "\n", encoding="utf-8")
    sents = read_conll(path)
    labels = label_list(sents)
    label_to_id = {t: i for i, t in enumerate(labels)}
    feats, n_truncated = encode_sentences(sents, tokenizers["bert"], label_to_id, max_length=32)
    assert n_truncated == 1 and [f.truncated for f in feats] == [False, True]
    assert len(feats[1].ids) == 32 and feats[1].ids[-1] == tokenizers["bert"].sep_id
    assert [f.sentence for f in feats] == [0, 1]
    assert len(feats[0].labels) == len(feats[0].ids) == len(feats[0].word_ids)
    # The words past the cut have no token: predicted back as "O".
    kept = max(w for w in feats[1].word_ids if w is not None) + 1
    assert kept < 40
    tags = word_tags(feats[1].word_ids, [max(x, 0) for x in feats[1].labels], labels, 40)
    assert tags[:kept] == list(sents[1].tags[:kept]) and set(tags[kept:]) == {"O"}
    bad = {"O": 0}
    with pytest.raises(LLMKitError, match=r"x.conll:1: tag 'B-person' is not in the label list"):
        encode_sentences(sents, tokenizers["bert"], bad)


@pytest.mark.skipif(not (NER / "dev.conll").exists(), reason=f"WNUT-17 files not in {NER}")
def test_wnut17_files(tmp_path):
    splits = {name: read_conll(NER / f"{name}.conll") for name in ("train", "dev", "test")}
    # The counts of data/ner/README.md: sentences, tokens, entities (B- tags).
    counts = {name: (len(s), sum(len(x.words) for x in s), sum(t.startswith("B-") for x in s for t in x.tags))
              for name, s in splits.items()}
    assert counts == {"train": (3394, 62730, 1975), "dev": (1009, 15733, 836), "test": (1287, 23394, 1079)}
    labels = label_list(splits["train"])
    assert len(labels) == 13 and labels[0] == "O" and label_list(splits["dev"]) == label_list(splits["test"]) == labels
    # A WordPiece over the training words; every dev sentence aligns and maps back to its tags.
    from llmkit.tokenizer import train_tokenizer

    (tmp_path / "train.txt").write_text("\n".join(" ".join(s.words) for s in splits["train"]), encoding="utf-8")
    train_tokenizer([str(tmp_path / "train.txt")], vocab_size=2000, out=str(tmp_path / "tok"), kind="wordpiece")
    tok = Tokenizer.from_dir(tmp_path / "tok")
    label_to_id = {t: i for i, t in enumerate(labels)}
    feats, n_truncated = encode_sentences(splits["dev"], tok, label_to_id, max_length=128)
    assert n_truncated == 0
    for f, s in zip(feats, splits["dev"]):
        assert word_tags(f.word_ids, [max(x, 0) for x in f.labels], labels, len(s.words)) == list(s.tags)
