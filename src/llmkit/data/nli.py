"""Natural language inference pairs (SNLI / MultiNLI style), for pair classification and for
contrastive sentence-embedding training.

Records are JSON Lines (or a JSON array) with a premise, a hypothesis and a label, SNLI's
`{"premise": str, "hypothesis": str, "label": "entailment"|"neutral"|"contradiction"}` by
default; the field names are settings. A label is one of `labels` by name, or its index (GLUE /
Hugging Face `datasets` exports store 0, 1, 2). Pairs without a gold label (SNLI's "-",
`datasets`' -1: the annotators did not agree) are skipped, as every SNLI result does; any other
label is an error naming the record.

Contrastive training (Reimers & Gurevych 2019; Gao et al. 2021, SimCSE sec. 4) uses the
entailment pairs as (anchor, positive), and a contradiction hypothesis of the same premise as
a hard negative: `entailment_pairs`, `nli_triples`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from llmkit.errors import LLMKitError

NLI_LABELS = ("entailment", "neutral", "contradiction")
NO_GOLD = ("-", -1)  # SNLI's marker (and datasets') for a pair without a majority label


@dataclass(frozen=True)
class NLIPair:
    premise: str
    hypothesis: str
    label: str  # one of the reader's labels
    where: str  # "FILE: line N", for error messages


def _text(record: dict, key: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        got = "missing" if key not in record else f"a {type(value).__name__}"
        raise LLMKitError(f"{where}: '{key}' must be a string ({got}); record keys: {', '.join(sorted(record))}")
    return value


def read_nli(path: str | Path, premise_field: str = "premise", hypothesis_field: str = "hypothesis",
             label_field: str = "label", labels: Sequence[str] = NLI_LABELS) -> list[NLIPair]:
    """Every pair of a JSONL / JSON file that has a gold label, in file order."""
    from llmkit.data import read_records

    pairs = []
    for where, record in read_records(path):
        if not isinstance(record, dict):
            raise LLMKitError(f"{where}: expected a JSON object, got {type(record).__name__}")
        if label_field not in record:
            raise LLMKitError(f"{where}: no '{label_field}' field; record keys: {', '.join(sorted(record))}")
        label: Any = record[label_field]
        if label in NO_GOLD:
            continue
        if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(labels):
            label = labels[label]
        if label not in labels:
            raise LLMKitError(f"{where}: label {label!r} is none of {', '.join(labels)} "
                              f"(or their index 0-{len(labels) - 1})")
        pairs.append(NLIPair(_text(record, premise_field, where), _text(record, hypothesis_field, where), label, where))
    if not pairs:
        raise LLMKitError(f"{path}: no labelled pairs")
    return pairs


def entailment_pairs(pairs: Sequence[NLIPair], positive: str = "entailment") -> list[tuple[str, str]]:
    """(anchor, positive) = (premise, hypothesis) of every entailment pair, in order."""
    return [(p.premise, p.hypothesis) for p in pairs if p.label == positive]


def nli_triples(pairs: Sequence[NLIPair], positive: str = "entailment",
                negative: str = "contradiction") -> list[tuple[str, str, str]]:
    """(anchor, positive, hard negative) triples: for each premise (exact text) with at least one
    entailment and one contradiction hypothesis, one triple per entailment hypothesis, whose
    negative is the premise's contradictions in turn (the k-th entailment takes the
    (k mod n)-th of its n contradictions: deterministic, every negative used). In the order in
    which the premises first occur."""
    by_premise: dict[str, tuple[list[str], list[str]]] = {}
    for p in pairs:
        pos, neg = by_premise.setdefault(p.premise, ([], []))
        if p.label == positive:
            pos.append(p.hypothesis)
        elif p.label == negative:
            neg.append(p.hypothesis)
    return [(premise, h, neg[k % len(neg)]) for premise, (pos, neg) in by_premise.items() if neg
            for k, h in enumerate(pos)]
