"""Text metrics against hand-computed values (and the reference packages where installed),
the classification report by hand, the judge's reply parsers, and the judge summaries driven by
a fake judge."""

from __future__ import annotations

import math
import threading

import pytest

from llmkit.errors import LLMKitError
from llmkit.evaluate.judge import (DECILES, judge_pairs, judge_scores, parse_score, parse_verdict, summarize_pairs,
                                   summarize_scores)
from llmkit.evaluate.metrics import classification_report, corpus_bleu, exact_match, lcs_length, rouge_l, rouge_l_f

# --- exact match, ROUGE-L, BLEU --------------------------------------------------------------


def test_exact_match_normalizes_case_punctuation_and_spaces():
    assert exact_match(["Paris.", " the  Cat", "dog"], ["paris", "The cat!", "cat"]) == pytest.approx(2 / 3)


def test_rouge_l_hand_computed():
    assert lcs_length("a b c d e".split(), "a c e f".split()) == 3
    # LCS("the cat sat on the mat", "the cat is on the mat") = "the cat on the mat": P = R = 5/6.
    assert rouge_l_f("The cat sat on the mat.", "the cat is on the mat") == pytest.approx(5 / 6)
    # LCS = 2, P = 2/4, R = 2/2, F = 2PR/(P+R) = 2/3.
    assert rouge_l_f("a b c d", "b d") == pytest.approx(2 / 3)
    assert rouge_l_f("", "b d") == 0.0 and rouge_l_f("x y", "b d") == 0.0
    assert rouge_l(["a b c d", "x y"], ["b d", "b d"]) == pytest.approx(1 / 3)


def test_corpus_bleu_hand_computed():
    # Pair 1: the cat sat on the mat | the cat sat on a mat: clipped matches 5/6, 3/5, 2/4, 1/3.
    one = corpus_bleu(["the cat sat on the mat"], ["the cat sat on a mat"])
    assert one["precisions"] == pytest.approx([5 / 6, 3 / 5, 2 / 4, 1 / 3])
    assert one["brevity_penalty"] == 1.0
    assert one["bleu"] == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
    # Corpus level: n-gram counts are summed before dividing; the candidates (8 tokens) are
    # shorter than the references (9), so BP = exp(1 - 9/8).
    two = corpus_bleu(["the cat sat on the mat", "hello world"], ["the cat sat on a mat", "hello world again"])
    assert two["precisions"] == pytest.approx([7 / 8, 4 / 6, 2 / 4, 1 / 3])
    assert two["brevity_penalty"] == pytest.approx(math.exp(1 - 9 / 8))
    assert two["bleu"] == pytest.approx(100 * math.exp(1 - 9 / 8) * (7 / 8 * 4 / 6 * 2 / 4 * 1 / 3) ** 0.25)
    assert corpus_bleu(["a b"], ["c d e f"])["bleu"] == 0.0  # no 4-gram match, no smoothing
    assert corpus_bleu(["x y z w v"], ["x y z w v"])["bleu"] == pytest.approx(100.0)


def test_metrics_agree_with_reference_packages():
    preds = ["the cat sat on the mat today", "a quick brown fox jumped over the dog", "hello world , how are you"]
    refs = ["the cat is on the mat today", "the quick brown fox jumps over the lazy dog", "hello world , how are you ?"]
    sacrebleu = pytest.importorskip("sacrebleu")
    ref = sacrebleu.corpus_bleu(preds, [refs], tokenize="none", smooth_method="none", force=True)
    assert corpus_bleu(preds, refs)["bleu"] == pytest.approx(ref.score, abs=1e-6)
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    expected = sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs)) / len(preds)
    assert rouge_l(preds, refs) == pytest.approx(expected)


# --- classification report -------------------------------------------------------------------
def test_classification_report_by_hand():
    # true: a a a b b c ; predicted: a b a b c c
    r = classification_report([0, 0, 0, 1, 1, 2], [0, 1, 0, 1, 2, 2], ["a", "b", "c"])
    assert r["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["per_class"]["a"] == {"precision": 1.0, "recall": pytest.approx(2 / 3), "f1": pytest.approx(0.8), "support": 3}
    assert r["per_class"]["b"]["precision"] == 0.5 and r["per_class"]["b"]["recall"] == 0.5
    assert r["per_class"]["c"]["precision"] == 0.5 and r["per_class"]["c"]["recall"] == 1.0
    assert r["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


# --- parsing the judge -----------------------------------------------------------------------
@pytest.mark.parametrize("reply,score", [
    ("85", 85), ("Score: 85", 85), ("85/100", 85), ("**85**", 85), ('{"score": 85}', 85),
    ('```json\n{"score": "70"}\n```', 70), ("Rating: **92**.", 92), ("85 out of 100", 85), ("The score is 42.", 42),
    ("100.", 100), ("0", 0), ("Score: 72.5", 72.5),
])
def test_parse_score_accepts_common_formats(reply, score):
    assert parse_score(reply) == (score, None)


@pytest.mark.parametrize("reply,reason", [
    ("150", "out of range"), ("Score: -5", "out of range"), ("Score: 8/10", "not out of 100"),
    ("the fox the fox the", "no score"), ("", "empty"), ("I liked it, 3 of the points are right", "no score"),
])
def test_parse_score_rejects_the_rest(reply, reason):
    score, why = parse_score(reply)
    assert score is None and reason in why


@pytest.mark.parametrize("reply,verdict", [
    ("A", "A"), ("B.", "B"), ("tie", "tie"), ("[[A]]", "A"), ("[[C]]", "tie"), ("Winner: B", "B"),
    ("The better response is A.", "A"), ('{"winner": "b"}', "B"), ("Response B", "B"), ("It is a tie.", "tie"),
    ("the answer is a bit vague", None), ("xyz", None),
])
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply)[0] == verdict


# --- judging with a fake judge ---------------------------------------------------------------
EXAMPLES = [{"instruction": f"Say {w}.", "input": "", "output": w} for w in ("one", "two", "three", "four", "five")]


def test_judge_scores_and_summary_with_fake_judge():
    canned = {"one": "Score: 95", "two": "**40**", "three": "I cannot grade this", "four": "250",
              "five": '{"score": 7}'}
    seen = []
    lock = threading.Lock()

    def judge(messages):
        user = messages[-1]["content"]
        with lock:
            seen.append(user)
        word = next(w for w in canned if f"Say {w}." in user)
        return canned[word]

    records = judge_scores(EXAMPLES, ["one", "2", "3", "4", "5"], judge, concurrency=3, progress=False)
    assert [r["score"] for r in records] == [95, 40, None, None, 7]
    assert len(seen) == 5 and "### Reference answer:\none" in seen[0] and "### Response to grade:\none" in seen[0]
    s = summarize_scores(records)
    assert (s["examples"], s["scored"], s["failures"]) == (5, 3, 2)
    assert s["failure_reasons"] == {"no score in reply": 1, "score out of range": 1}
    assert s["mean"] == pytest.approx((95 + 40 + 7) / 3) and s["median"] == 40
    assert list(s["histogram"]) == DECILES
    assert s["histogram"]["90-100"] == 1 and s["histogram"]["40-49"] == 1 and s["histogram"]["0-9"] == 1
    assert sum(s["histogram"].values()) == 3


def test_judge_request_failures_are_counted_and_a_dead_judge_fails_at_once():
    from llmkit.evaluate.judge import JudgeUnavailable

    calls = []

    def flaky(messages):
        calls.append(1)
        if len(calls) == 3:
            raise JudgeUnavailable("HTTP 503 (after 5 attempts)")
        return "50"

    records = judge_scores(EXAMPLES, ["x"] * 5, flaky, concurrency=1, progress=False)
    assert [r["score"] for r in records] == [50, 50, None, 50, 50]
    assert summarize_scores(records)["failure_reasons"] == {"request failed": 1}

    def dead(messages):
        raise JudgeUnavailable("connection refused")

    with pytest.raises(LLMKitError, match="cannot reach the judge"):
        judge_scores(EXAMPLES, ["x"] * 5, dead, progress=False)


def test_pairwise_alternates_order_and_maps_verdicts_back():
    def prefers_longer(messages):  # an unbiased judge: the longer response wins, equal length ties
        text = messages[-1]["content"]
        a = text.split("### Response A:\n")[1].split("\n\n### Response B:")[0]
        b = text.split("### Response B:\n")[1].split("\n\nWhich")[0]
        return "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie"

    first = ["long answer", "long answer", "same", "short", "long answer"]
    second = ["short", "short", "same", "long answer", "garbled"]
    records = judge_pairs(EXAMPLES, first, second, prefers_longer, concurrency=2, progress=False)
    assert [r["first_is"] for r in records] == ["A", "B", "A", "B", "A"]
    assert [r["winner"] for r in records] == ["first", "first", "tie", "second", "first"]
    s = summarize_pairs(records, "other")
    assert (s["wins"], s["ties"], s["losses"], s["failures"]) == (3, 1, 1, 0)
    assert s["win_rate"] == pytest.approx(3.5 / 5)

    records = judge_pairs(EXAMPLES[:2], first[:2], second[:2], lambda m: "no idea", progress=False)
    assert summarize_pairs(records, "other")["failures"] == 2
