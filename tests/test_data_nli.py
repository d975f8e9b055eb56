"""NLI pairs: reading (field names, label names or indices, no-gold pairs skipped), entailment
pairs and hard-negative triples for contrastive training."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from llmkit.data.nli import NLIPair, entailment_pairs, nli_triples, read_nli
from llmkit.errors import LLMKitError
from tests.conftest import SHARED_DATA

NLI = SHARED_DATA / "nli"
RECORDS = [
    {"premise": "Two women are embracing .", "hypothesis": "Two women hug .", "label": "entailment"},
    {"premise": "Two women are embracing .", "hypothesis": "The sisters say goodbye .", "label": "neutral"},
    {"premise": "Two women are embracing .", "hypothesis": "The men are fighting .", "label": "contradiction"},
    {"premise": "Two women are embracing .", "hypothesis": "Two people touch .", "label": "entailment"},
    {"premise": "A dog runs .", "hypothesis": "An animal moves .", "label": "entailment"},
    {"premise": "A dog runs .", "hypothesis": "A cat sleeps .", "label": "-"},  # no gold label
    {"premise": "A man sings .", "hypothesis": "A man is silent .", "label": "contradiction"},
]


def write_jsonl(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def test_read_and_build(tmp_path):
    write_jsonl(tmp_path / "nli.jsonl", RECORDS)
    pairs = read_nli(tmp_path / "nli.jsonl")
    assert len(pairs) == 6 and [p.label for p in pairs].count("entailment") == 3
    assert pairs[0] == NLIPair("Two women are embracing .", "Two women hug .", "entailment",
                               f"{tmp_path / 'nli.jsonl'}: line 1")
    assert entailment_pairs(pairs) == [("Two women are embracing .", "Two women hug ."),
                                       ("Two women are embracing .", "Two people touch ."),
                                       ("A dog runs .", "An animal moves .")]
    # One triple per entailment of a premise that has a contradiction; negatives used in turn.
    assert nli_triples(pairs) == [("Two women are embracing .", "Two women hug .", "The men are fighting ."),
                                  ("Two women are embracing .", "Two people touch .", "The men are fighting .")]
    # GLUE / datasets style: other field names, label indices, -1 for no gold label.
    glue = [{"sentence1": r["premise"], "sentence2": r["hypothesis"],
             "gold": {"entailment": 0, "neutral": 1, "contradiction": 2, "-": -1}[r["label"]]} for r in RECORDS]
    write_jsonl(tmp_path / "glue.jsonl", glue)
    again = read_nli(tmp_path / "glue.jsonl", premise_field="sentence1", hypothesis_field="sentence2",
                     label_field="gold")
    assert [(p.premise, p.hypothesis, p.label) for p in again] == [(p.premise, p.hypothesis, p.label) for p in pairs]


def test_read_errors(tmp_path):
    path = tmp_path / "bad.jsonl"
    write_jsonl(path, [RECORDS[0], {**RECORDS[0], "label": "maybe"}])
    with pytest.raises(LLMKitError, match=r"bad.jsonl: line 2: label 'maybe' is none of entailment, neutral"):
        read_nli(path)
    write_jsonl(path, [{"premise": "a", "label": "neutral"}])
    with pytest.raises(LLMKitError, match=r"line 1: 'hypothesis' must be a string \(missing\)"):
        read_nli(path)
    write_jsonl(path, [{"premise": "a", "hypothesis": "b"}])
    with pytest.raises(LLMKitError, match=r"line 1: no 'label' field"):
        read_nli(path)
    write_jsonl(path, [{**RECORDS[0], "label": "-"}])
    with pytest.raises(LLMKitError, match="no labelled pairs"):
        read_nli(path)


@pytest.mark.skipif(not (NLI / "dev.jsonl").exists(), reason=f"SNLI files not in {NLI}")
def test_snli_files():
    dev, test = read_nli(NLI / "dev.jsonl"), read_nli(NLI / "test.jsonl")
    # The counts of data/nli/README.md.
    assert Counter(p.label for p in dev) == {"entailment": 3329, "neutral": 3235, "contradiction": 3278}
    assert Counter(p.label for p in test) == {"entailment": 3368, "neutral": 3219, "contradiction": 3237}
    assert len(entailment_pairs(dev)) == 3329
    triples = nli_triples(dev)
    assert 3000 < len(triples) <= 3329
    by_premise = {}
    for p in dev:
        by_premise.setdefault(p.premise, set()).add((p.hypothesis, p.label))
    for anchor, positive, negative in triples:
        assert (positive, "entailment") in by_premise[anchor] and (negative, "contradiction") in by_premise[anchor]
