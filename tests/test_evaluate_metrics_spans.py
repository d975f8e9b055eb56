"""Span metrics: entity-level scores (against seqeval's default mode) and SQuAD exact match / F1
(against the official SQuAD v1.1 evaluation functions)."""

from __future__ import annotations

import random
import re
import string
import warnings
from collections import Counter

import pytest

from llmkit.data.conll import read_conll
from llmkit.errors import LLMKitError
from llmkit.evaluate.metrics import entities, entity_scores, squad_f1, squad_normalize, squad_scores
from tests.conftest import SHARED_DATA

TYPES = ["PER", "LOC", "creative-work"]


def seqeval_scores(y_true, y_pred) -> dict:
    """seqeval.metrics in its default (conlleval-compatible, non-strict) mode, in entity_scores' shape."""
    from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero-division and "seems not to be NE tag" warnings
        report = classification_report(y_true, y_pred, output_dict=True, zero_division=0)
        per_type = {k: {"precision": v["precision"], "recall": v["recall"], "f1": v["f1-score"],
                        "support": v["support"]} for k, v in report.items() if not k.endswith(" avg")}
        return {"precision": precision_score(y_true, y_pred, zero_division=0),
                "recall": recall_score(y_true, y_pred, zero_division=0),
                "f1": f1_score(y_true, y_pred, zero_division=0),
                "macro_f1": report["macro avg"]["f1-score"] if per_type else 0.0,
                "accuracy": accuracy_score(y_true, y_pred), "per_type": per_type}


def assert_matches_seqeval(y_true, y_pred) -> dict:
    ours, ref = entity_scores(y_true, y_pred), seqeval_scores(y_true, y_pred)
    for key in ("precision", "recall", "f1", "macro_f1", "accuracy"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-12), key
    assert ours["per_type"].keys() == ref["per_type"].keys()
    for kind, row in ref["per_type"].items():
        assert ours["per_type"][kind] == pytest.approx(row, abs=1e-12), kind
    return ours


def random_tags(rng: random.Random, n: int, weird: bool) -> list[str]:
    """BIO / IOBES tags with no regard for well-formedness (I- after O, type changes, E- without
    B-); with `weird`, also bare B / I and tags that are no entity tag at all."""
    choices = ["O"] * 4 + [f"{p}-{t}" for p in "BIES" for t in TYPES] + [f"B-{t}" for t in TYPES] * 2
    if weird:
        choices += ["B", "I", "X", ".", "X-PER"]
    return [rng.choice(choices) for _ in range(n)]


def test_entities_examples():
    assert entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    # conlleval's leniency: I- after O starts an entity, a type change ends one and starts another.
    assert entities(["O", "I-PER", "I-PER", "I-LOC", "B-LOC", "I-LOC"]) == [("PER", 1, 2), ("LOC", 3, 3), ("LOC", 4, 5)]
    assert entities(["S-PER", "B-LOC", "E-LOC", "I-creative-work"]) == [("PER", 0, 0), ("LOC", 1, 2),
                                                                      ("creative-work", 3, 3)]
    scores = entity_scores([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "B-PER"]])
    assert (scores["precision"], scores["recall"], scores["n_correct"]) == (0.5, 0.5, 1)
    assert scores["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    with pytest.raises(LLMKitError, match="sequence 0: 2 gold tags but 1 predicted"):
        entity_scores([["O", "O"]], [["O"]])


@pytest.mark.parametrize("weird", [False, True])
def test_entity_scores_match_seqeval_on_random_tags(weird):
    rng = random.Random(0)
    for _ in range(300):
        y_true = [random_tags(rng, rng.randint(1, 12), weird) for _ in range(rng.randint(1, 6))]
        # Predictions: the gold tags, some of them changed (so that entities partly match).
        y_pred = [[t if rng.random() < 0.6 else random_tags(rng, 1, weird)[0] for t in seq] for seq in y_true]
        assert_matches_seqeval(y_true, y_pred)


@pytest.mark.skipif(not (SHARED_DATA / "ner" / "dev.conll").exists(), reason="WNUT-17 files not in shared/data/ner")
def test_entity_scores_match_seqeval_on_wnut17():
    gold = [list(s.tags) for s in read_conll(SHARED_DATA / "ner" / "dev.conll")]
    assert entity_scores(gold, gold)["f1"] == 1.0
    labels = sorted({t for s in gold for t in s})
    rng = random.Random(1)
    for rate in (0.02, 0.1, 0.3):
        pred = [[rng.choice(labels) if rng.random() < rate else t for t in s] for s in gold]
        # Also boundary errors: an entity's B- turned into I- (ill-formed after O), or cut short.
        for s in pred:
            for i, t in enumerate(s):
                if t.startswith("B-") and rng.random() < rate:
                    s[i] = "I-" + t[2:]
        ours = assert_matches_seqeval(gold, pred)
        assert ours["n_true"] == sum(t.startswith("B-") for s in gold for t in s) == 836
        assert 0 < ours["f1"] < 1


# --- SQuAD ----------------------------------------------------------------------------------------
# The official SQuAD v1.1 evaluation (evaluate-v1.1.py, rajpurkar/SQuAD-explorer; the same code as
# huggingface/evaluate metrics/squad/compute_score.py), transcribed as the reference: the
# `evaluate` package's "squad" metric is fetched from the hub, which these tests never reach.
def official_normalize_answer(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def official_f1_score(prediction, ground_truth):
    prediction_tokens = official_normalize_answer(prediction).split()
    ground_truth_tokens = official_normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def official_exact_match_score(prediction, ground_truth):
    return official_normalize_answer(prediction) == official_normalize_answer(ground_truth)


def official_compute_score(references, predictions):
    f1 = exact_match = 0
    for golds, prediction in zip(references, predictions):
        exact_match += max(official_exact_match_score(prediction, g) for g in golds)
        f1 += max(official_f1_score(prediction, g) for g in golds)
    return {"exact_match": 100.0 * exact_match / len(references), "f1": 100.0 * f1 / len(references)}


def perturb(rng: random.Random, golds: list[str], others: list[str]) -> str:
    """A prediction near one of the gold answers: itself, re-cased, with an article or
    punctuation, a word dropped or added, a neighbour's answer, or empty."""
    answer = rng.choice(golds)
    words = answer.split()
    kind = rng.randrange(9)
    if kind == 0:
        return answer
    if kind == 1:
        return answer.upper()
    if kind == 2:
        return "The " + answer + "."
    if kind == 3:
        return " ".join(words[1:])
    if kind == 4:
        return answer + " " + rng.choice(others)
    if kind == 5:
        return rng.choice(others)
    if kind == 6:
        return ""
    if kind == 7:
        return f"({answer}),  an   answer!"
    return " ".join(rng.sample(words, len(words)))


def test_squad_scores_examples():
    assert squad_normalize("The  Denver Broncos!") == "denver broncos"
    assert squad_normalize("an apple a day") == "apple day"
    assert squad_f1("Denver Broncos", "the Denver Broncos") == 1.0
    assert squad_f1("Denver", "Denver Broncos") == pytest.approx(2 / 3)
    assert squad_f1("", "") == 0.0  # as the v1.1 script: no shared word, no credit
    scores = squad_scores(["Denver Broncos", "Santa Clara", "nothing"], [["Denver Broncos"], ["Santa Clara, California",
                                                                          "Santa Clara"], ["the Panthers"]])
    assert scores == pytest.approx({"exact_match": 200 / 3, "f1": 200 / 3})
    assert squad_scores(["x"], ["x"]) == {"exact_match": 100.0, "f1": 100.0}  # a bare string is one gold answer
    with pytest.raises(LLMKitError, match="2 predictions for 1 questions"):
        squad_scores(["a", "b"], [["a"]])


def test_squad_scores_match_official_script():
    rng = random.Random(0)
    golds = [["Denver Broncos", "The Denver Broncos"], ["Santa Clara, California"], ["February 7, 2016"],
             ["a thousand songs in your pocket", "1,000 songs"], ["Frédéric Chopin"], ["$2.5 billion", "2.5 billion"]]
    others = [g[0] for g in golds]
    refs = [rng.choice(golds) for _ in range(500)]
    preds = [perturb(rng, r, others) for r in refs]
    assert squad_scores(preds, refs) == pytest.approx(official_compute_score(refs, preds), abs=1e-9)


@pytest.mark.skipif(not (SHARED_DATA / "qa" / "dev-v1.1.json").exists(), reason="SQuAD files not in shared/data/qa")
def test_squad_scores_on_squad_dev():
    from llmkit.data.squad import read_squad

    dev = read_squad(SHARED_DATA / "qa" / "dev-v1.1.json")
    refs = [list(e.answers) for e in dev]
    assert squad_scores([r[0] for r in refs], refs) == {"exact_match": 100.0, "f1": 100.0}
    rng = random.Random(0)
    refs = refs[::3]  # 3,524 questions: enough, and quick
    others = [r[0] for r in refs]
    preds = [perturb(rng, r, others) for r in refs]
    ours, ref = squad_scores(preds, refs), official_compute_score(refs, preds)
    assert ours == pytest.approx(ref, abs=1e-9) and 20 < ours["exact_match"] < ours["f1"] < 80
