"""Summarization and translation metrics: `rouge_scores` and `sacrebleu_scores` give exactly what
rouge_score and sacrebleu give when called directly (the wrappers' whole job is passing the
arguments right), on hand-made and real sentences; edge cases and errors; the home-made
`rouge_l` / `corpus_bleu` agree with the libraries where their definitions coincide; the
sentence splitter and the lead / copy baselines."""

from __future__ import annotations

import json
import math

import pytest

from llmkit.errors import LLMKitError
from llmkit.evaluate import metrics as M
from llmkit.evaluate.metrics import (bleu_tokens, copy_source, corpus_bleu, lead_sentence, newline_sentences,
                                     rouge_l, rouge_scores, sacrebleu_scores, split_sentences, text_metrics)
from tests.conftest import SHARED_DATA

import sacrebleu  # noqa: E402  (dependencies of llmkit: their absence is a failure, not a skip)
from rouge_score import rouge_scorer  # noqa: E402

PREDS = ["The cats were sitting on the mats today.", "A quick brown fox jumped over the dogs.",
         "Hello world, how are you?", "We propose a new method for training networks. It is fast."]
REFS = ["The cat sat on the mat today.", "The quick brown fox jumps over the lazy dog.",
        "Hello world, how are you doing?", "A new training method is proposed.\nIt runs fast."]
TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def direct_rouge(preds, refs, types=TYPES, use_stemmer=True):
    """rouge_score by hand: one scorer, mean F1 over examples, x 100 (best reference counts)."""
    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=use_stemmer)
    out = {t: 0.0 for t in types}
    for p, r in zip(preds, refs):
        s = scorer.score_multi(r, p) if isinstance(r, list) else scorer.score(r, p)
        for t in types:
            out[t] += s[t].fmeasure
    return {t: 100 * v / len(preds) for t, v in out.items()}


# --- ROUGE -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("use_stemmer", [True, False])
def test_rouge_equals_rouge_score(use_stemmer):
    got = rouge_scores(PREDS, REFS, use_stemmer=use_stemmer)
    assert set(got) == set(TYPES)
    assert got == pytest.approx(direct_rouge(PREDS, REFS, use_stemmer=use_stemmer), abs=1e-12)
    # The stemmer matters here ("cats"/"cat", "sitting"/"sat" no, "mats"/"mat"): the flag is passed on.
    stemmed, plain = rouge_scores(PREDS, REFS, use_stemmer=True), rouge_scores(PREDS, REFS, use_stemmer=False)
    assert stemmed["rouge1"] != plain["rouge1"]


def test_rouge_by_hand():
    # the cat sat on the mat | the cat is on the mat: unigrams 5/6, bigrams 3/5, LCS 5/6.
    got = rouge_scores(["the cat sat on the mat"], ["the cat is on the mat"], use_stemmer=False)
    assert got == pytest.approx({"rouge1": 100 * 5 / 6, "rouge2": 60.0, "rougeL": 100 * 5 / 6,
                                 "rougeLsum": 100 * 5 / 6})


def test_rouge_types_subset_and_multiple_references():
    refs = [[r, "something else entirely"] for r in REFS]
    got = rouge_scores(PREDS, refs, types=("rouge2", "rougeL"))
    assert list(got) == ["rouge2", "rougeL"]
    assert got == pytest.approx(direct_rouge(PREDS, refs, types=("rouge2", "rougeL")))
    # The better reference counts: adding a worse one changes nothing.
    assert got == pytest.approx(rouge_scores(PREDS, REFS, types=("rouge2", "rougeL")))
    # Mixed: one string reference, one list.
    assert rouge_scores(PREDS[:2], [REFS[0], [REFS[1]]]) == pytest.approx(rouge_scores(PREDS[:2], REFS[:2]))


def test_rouge_lsum_splits_at_newlines_only():
    one_line = [p.replace("\n", " ") for p in PREDS], [r.replace("\n", " ") for r in REFS]
    s = rouge_scores(*one_line)
    assert s["rougeLsum"] == pytest.approx(s["rougeL"])  # one sentence each: summary-level LCS = LCS
    # Sentence splitting puts one sentence per line first; only rougeLsum sees it.
    split = rouge_scores(*one_line, sentence_split=True, sentence_method="rules")
    nl = [[newline_sentences(t, "rules") for t in texts] for texts in one_line]
    assert "\n" in nl[0][3] and "\n" in nl[1][3]
    assert split == pytest.approx(direct_rouge(nl[0], nl[1]))
    assert split["rougeLsum"] != pytest.approx(split["rougeL"])
    assert {k: split[k] for k in ("rouge1", "rouge2", "rougeL")} == pytest.approx(
        {k: s[k] for k in ("rouge1", "rouge2", "rougeL")})


def test_rouge_edge_cases():
    assert rouge_scores([""], ["the cat"]) == {t: 0.0 for t in TYPES}  # empty prediction
    assert rouge_scores(["..."], ["!!"]) == {t: 0.0 for t in TYPES}  # no tokens on either side
    assert all(math.isnan(v) for v in rouge_scores([], []).values())
    # rouge_score's tokenizer keeps [a-z0-9] only: umlauts split words ("mäuse" -> "m", "use").
    de = rouge_scores(["Die Mäuse sind klein"], ["Die Mause sind klein"], use_stemmer=False)
    assert de == pytest.approx(direct_rouge(["Die Mäuse sind klein"], ["Die Mause sind klein"], use_stemmer=False))
    assert de["rouge1"] < 100
    # A tokenizer of one's own (whitespace, case-folded) for other languages.
    own = rouge_scores(["Die Mäuse sind klein"], ["die mäuse sind klein"], tokenizer=lambda t: t.lower().split())
    assert own == {t: 100.0 for t in TYPES}
    assert rouge_scores(["日本語の文"], ["日本語の文"]) == {t: 0.0 for t in TYPES}  # no [a-z0-9] at all


def test_rouge_bootstrap_interval_is_seeded_and_brackets_the_mean():
    a = rouge_scores(PREDS, REFS, confidence=0.95, n_samples=200, seed=3)
    b = rouge_scores(PREDS, REFS, confidence=0.95, n_samples=200, seed=3)
    assert a == b
    for t in TYPES:
        assert a[f"{t}_low"] <= a[t] <= a[f"{t}_high"]
    assert a["rouge1"] == pytest.approx(rouge_scores(PREDS, REFS)["rouge1"])


@pytest.mark.parametrize("args,needle", [
    ((["a", "b"], ["a"]), "2 predictions for 1 references"),
    (("a b", ["a b"]), "lists of texts"),
    (([None], ["a"]), "prediction 0 is NoneType"),
    ((["a"], [3]), "reference 0 must be a string or a list of strings"),
    ((["a"], [[]]), "prediction 0 has no reference"),
])
def test_errors(args, needle):
    for fn in (rouge_scores, sacrebleu_scores):
        with pytest.raises(LLMKitError, match=needle):
            fn(*args)


def test_rouge_bad_settings():
    with pytest.raises(LLMKitError, match="unknown ROUGE type 'rougeX'"):
        rouge_scores(["a"], ["a"], types=("rouge1", "rougeX"))
    with pytest.raises(LLMKitError, match="confidence must be in"):
        rouge_scores(["a"], ["a"], confidence=95)


# --- BLEU and chrF ----------------------------------------------------------------------------------
def test_sacrebleu_equals_sacrebleu():
    got = sacrebleu_scores(PREDS, REFS)
    bleu, chrf = sacrebleu.corpus_bleu(PREDS, [REFS]), sacrebleu.corpus_chrf(PREDS, [REFS])
    assert got["bleu"] == pytest.approx(bleu.score, abs=1e-12)
    assert got["chrf"] == pytest.approx(chrf.score, abs=1e-12)
    assert got["precisions"] == pytest.approx(bleu.precisions)
    assert got["brevity_penalty"] == pytest.approx(bleu.bp) and got["length_ratio"] == pytest.approx(bleu.ratio)
    version = sacrebleu.__version__
    assert got["signature"] == f"nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:{version}"
    assert got["chrf_signature"] == f"nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:{version}"
    # Options are passed on.
    low = sacrebleu_scores(PREDS, REFS, tokenize="intl", lowercase=True)
    assert low["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDS, [REFS], tokenize="intl", lowercase=True).score)
    assert "tok:intl" in low["signature"] and "case:lc" in low["signature"]
    with pytest.raises(LLMKitError, match="tokenize='nope'"):
        sacrebleu_scores(PREDS, REFS, tokenize="nope")


def test_sacrebleu_multiple_references_any_number():
    refs = [[REFS[0], "The cat is sitting on a mat today."], [REFS[1]], [REFS[2], "Hello world!", "Hi, how are you?"],
            [REFS[3]]]
    got = sacrebleu_scores(PREDS, refs)
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(3)]
    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDS, streams).score)
    assert got["chrf"] == pytest.approx(sacrebleu.corpus_chrf(PREDS, streams).score)
    assert got["signature"].startswith("nrefs:var|")
    assert got["bleu"] > sacrebleu_scores(PREDS, REFS)["bleu"]  # more references, more matches


def test_sacrebleu_edge_cases_and_umlauts():
    assert sacrebleu_scores(["Die Mäuse sind klein."], ["Die Mäuse sind klein."])["chrf"] == pytest.approx(100.0)
    umlaut = sacrebleu_scores(["Die Mause sind klein."], ["Die Mäuse sind klein."])
    assert umlaut["chrf"] == pytest.approx(sacrebleu.corpus_chrf(["Die Mause sind klein."],
                                                                 [["Die Mäuse sind klein."]]).score)
    assert 50 < umlaut["chrf"] < 100  # characters, not words: one letter off costs little
    de = ["„Wir haben jetzt 4 Monate alte Mäuse“, fügte er hinzu.", "Größe über Maß, straße"]
    ref = ["„Wir haben jetzt vier Monate alte Mäuse“, sagte er.", "Grösse über Mass, Strasse"]
    assert sacrebleu_scores(de, ref)["bleu"] == pytest.approx(sacrebleu.corpus_bleu(de, [ref]).score)
    assert sacrebleu_scores(de, ref)["chrf"] == pytest.approx(sacrebleu.corpus_chrf(de, [ref]).score)
    empty = sacrebleu_scores(["", "the cat"], ["a cat sat", "the cat"])
    assert empty["bleu"] == pytest.approx(sacrebleu.corpus_bleu(["", "the cat"], [["a cat sat", "the cat"]]).score)
    assert empty["chrf"] == pytest.approx(sacrebleu.corpus_chrf(["", "the cat"], [["a cat sat", "the cat"]]).score)
    nothing = sacrebleu_scores([], [])
    assert math.isnan(nothing["bleu"]) and math.isnan(nothing["chrf"]) and nothing["signature"] is None


# --- the home-made metrics agree where the definitions coincide ---------------------------------------
ASCII_PAIRS = [
    ("the cat sat on the mat today", "the cat is on the mat today"),
    ("Give three tips for staying healthy: eat well, sleep, exercise.", "Eat a balanced diet, exercise, sleep well."),
    ("The capital of France is Paris.", "Paris is the capital of France."),
    ("It's 3.5 km (about 2 miles) away!", "It is about 3.5 km away."),
    ("", "nothing predicted"),
]


def test_home_made_rouge_l_equals_rouge_score_on_ascii():
    preds, refs = zip(*ASCII_PAIRS)
    assert rouge_l(preds, refs) == pytest.approx(rouge_scores(preds, refs, types=("rougeL",),
                                                              use_stemmer=False)["rougeL"] / 100)
    # Where they differ, as documented: rouge_l keeps non-ASCII letters as word characters.
    de = (["Die Mäuse sind klein"], ["Die Maus ist klein"])
    assert rouge_l(*de) != pytest.approx(rouge_scores(*de, types=("rougeL",), use_stemmer=False)["rougeL"] / 100)


def test_home_made_bleu_equals_sacrebleu_on_its_own_tokens():
    preds, refs = zip(*ASCII_PAIRS[:4])
    tok_p = [" ".join(bleu_tokens(p)) for p in preds]
    tok_r = [" ".join(bleu_tokens(r)) for r in refs]
    ref = sacrebleu.corpus_bleu(tok_p, [tok_r], tokenize="none", smooth_method="none", force=True)
    assert corpus_bleu(preds, refs)["bleu"] == pytest.approx(ref.score, abs=1e-9)
    assert corpus_bleu(preds, refs)["bleu"] > 0


def test_text_metrics_keep_their_keys():
    got = text_metrics(["Paris."], ["paris"])
    assert set(got) == {"exact_match", "rouge_l", "bleu"} and got["exact_match"] == 1.0


# --- sentences and baselines ---------------------------------------------------------------------------
def test_rule_sentences():
    text = ('Dr. Smith went to the U.S. Army. He said "Hi!" Then he left. See Fig. 3, e.g. the top row. '
            "It costs 3.5 dollars. Really? Yes... (It was.) J. R. R. Tolkien wrote it.\nA new line starts one")
    assert split_sentences(text, "rules") == [
        "Dr. Smith went to the U.S. Army.", 'He said "Hi!"', "Then he left.", "See Fig. 3, e.g. the top row.",
        "It costs 3.5 dollars.", "Really?", "Yes...", "(It was.)", "J. R. R. Tolkien wrote it.",
        "A new line starts one"]
    assert split_sentences("no end punctuation. lower case goes on", "rules") == [
        "no end punctuation. lower case goes on"]
    assert split_sentences("Er kam. Über Nacht blieb er.", "rules") == ["Er kam.", "Über Nacht blieb er."]
    assert split_sentences("  \n\n ", "rules") == []
    assert newline_sentences("One. Two.", "rules") == "One.\nTwo."


def test_sentence_method_choice(monkeypatch):
    monkeypatch.setattr(M, "punkt_available", lambda: False)
    assert split_sentences("One here. Two here.") == ["One here.", "Two here."]  # auto -> rules
    with pytest.raises(LLMKitError, match="punkt_tab"):
        split_sentences("One. Two.", "punkt")
    with pytest.raises(LLMKitError, match="must be one of"):
        split_sentences("One.", "spacy")


def test_punkt_is_used_when_installed(monkeypatch):
    """The punkt data cannot be downloaded here (offline): nltk's sent_tokenize is stood in for,
    to check that "punkt" and "auto" route each line through it when the data is present."""
    import nltk

    calls = []
    monkeypatch.setattr(M, "punkt_available", lambda: True)
    monkeypatch.setattr(nltk, "sent_tokenize", lambda line: calls.append(line) or line.split(" | "))
    assert split_sentences("a b | c d\ne f", "punkt") == ["a b", "c d", "e f"]
    assert split_sentences("x | y", "auto") == ["x", "y"] and calls == ["a b | c d", "e f", "x | y"]


def test_lead_and_copy_baselines():
    doc = "First sentence here. Second one follows! Third?"
    assert lead_sentence(doc, method="rules") == "First sentence here."
    assert lead_sentence(doc, n=2, method="rules") == "First sentence here. Second one follows!"
    assert lead_sentence("", method="rules") == ""
    with pytest.raises(LLMKitError, match="n >= 1"):
        lead_sentence(doc, n=0)
    assert copy_source("  a  b\nc ") == "a b c" and copy_source("a b c d", max_words=2) == "a b"


# --- real data (skipped without ../shared/data) -------------------------------------------------------
needs_data = pytest.mark.skipif(not (SHARED_DATA / "summarization").is_dir(), reason="shared data folder absent")


def _jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@needs_data
def test_real_scitldr_lead_baseline_equals_rouge_score():
    rows = _jsonl(SHARED_DATA / "summarization" / "dev.jsonl")[:150]
    docs = [" ".join(r["source"]) for r in rows]
    refs = [r["target"] for r in rows]  # several TLDRs per paper
    leads = [lead_sentence(d, method="rules") for d in docs]
    got = rouge_scores(leads, refs)
    assert got == pytest.approx(direct_rouge(leads, refs), abs=1e-12)
    assert 20 < got["rouge1"] < 40  # measured: 29.3 on these 150 (30.1 on all of dev)


@needs_data
def test_real_scitldr_sentence_splits_mostly_agree():
    """The rule splitter against SciTLDR's own sentence lists: most abstracts split identically
    (measured 87% of 3,229; the rest are mostly the data set's splits at colons and "(i)")."""
    same = total = 0
    for split in ("train", "dev", "test"):
        for r in _jsonl(SHARED_DATA / "summarization" / f"{split}.jsonl"):
            gold = [s.strip() for s in r["source"] if s.strip()]
            same += split_sentences(" ".join(gold), "rules") == gold
            total += 1
    assert same / total > 0.8


@needs_data
def test_real_flores_copy_baseline_equals_sacrebleu():
    rows = _jsonl(SHARED_DATA / "translation" / "test.jsonl")
    hyps, refs = [copy_source(r["en"]) for r in rows], [r["de"] for r in rows]
    got = sacrebleu_scores(hyps, refs)
    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-12)
    assert got["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score, abs=1e-12)
    assert 0 < got["bleu"] < 10 and 10 < got["chrf"] < 50  # copying English scores a little (names, numbers)
