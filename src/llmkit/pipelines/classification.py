"""Sequence classification pipelines: text-classification (alias sentiment-analysis) and
zero-shot-classification (an NLI model asked whether each candidate label is entailed).

    text-classification   "a great film" -> [{"label": "POSITIVE", "score": 0.98}]
    zero-shot             "a great film", candidate_labels=["cinema", "sport"]
                          -> {"sequence", "labels" (best first), "scores"}

Both as transformers' TextClassificationPipeline and ZeroShotClassificationPipeline, on the
model's sequence head (the logits of `model(ids)`, (B, N)).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from llmkit.errors import LLMKitError
from llmkit.pipelines.base import Pipeline

FUNCTIONS = ("default", "softmax", "sigmoid", "none")
_LEGACY = "legacy"  # top_k not given: one {"label", "score"} per text, transformers' old shape


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class TextClassificationPipeline(Pipeline):
    """Inputs: a text, a pair {"text": ..., "text_pair": ...}, or a list of them. Without
    `top_k`, each text gives its best label as [{"label", "score"}] (a list of texts: one dict
    each); with `top_k` (an int, or None for all labels), its labels best first."""

    task = "text-classification"
    OPTIONS = {"top_k": _LEGACY, "function_to_apply": None, "truncation": False}

    def check(self) -> None:
        self.need_head("sequence", "a sequence-classification head")

    def _items(self, inputs, opts):
        def ok(x):
            return isinstance(x, str) or (isinstance(x, dict) and isinstance(x.get("text"), str)
                                          and isinstance(x.get("text_pair", ""), str))

        if ok(inputs):
            return [inputs], True
        if isinstance(inputs, (list, tuple)) and all(ok(x) for x in inputs):
            return list(inputs), False
        raise LLMKitError("text-classification takes a text, a {\"text\", \"text_pair\"} pair, or a list of them")

    def problem_type(self) -> Optional[str]:
        """transformers' `config.problem_type` (regression, single_ or multi_label_classification)."""
        c = self.loaded.classifier or {}
        if c.get("problem_type"):
            return c["problem_type"]
        if self.loaded.kind == "hf":
            from llmkit.errors import read_json

            cfg = read_json(self.loaded.path / "config.json")
            return cfg.get("problem_type") if isinstance(cfg, dict) else None
        return None

    def _function(self, name: Optional[str]) -> str:
        name = "default" if name is None else str(name).lower()
        if name not in FUNCTIONS:
            raise LLMKitError(f"function_to_apply must be one of {', '.join(FUNCTIONS)}, got {name!r}")
        if name != "default":
            return name
        problem = self.problem_type()
        if problem == "regression":
            return "none"
        if problem == "multi_label_classification" or len(self.labels) == 1:
            return "sigmoid"
        return "softmax"

    def _run(self, items: list, opts: dict) -> list:
        top_k = opts["top_k"]
        if top_k is not None and top_k != _LEGACY and (not isinstance(top_k, int) or isinstance(top_k, bool)
                                                        or top_k < 1):
            raise LLMKitError(f"text-classification: top_k must be a positive integer or None, got {top_k!r}")
        fn = self._function(opts["function_to_apply"])
        cut = self.max_length if opts["truncation"] else None
        encs = [self.encode(x["text"], x.get("text_pair"), truncate=cut) if isinstance(x, dict)
                else self.encode(x, truncate=cut) for x in items]
        labels = self.labels
        results = []
        for logits in self.forward(encs):
            out = logits.numpy()
            scores = 1.0 / (1.0 + np.exp(-out)) if fn == "sigmoid" else _softmax(out) if fn == "softmax" else out
            if top_k == _LEGACY:
                results.append({"label": labels[int(scores.argmax())], "score": float(scores.max())})
                continue
            ranked = sorted(({"label": labels[i], "score": float(s)} for i, s in enumerate(scores)),
                            key=lambda d: d["score"], reverse=True)
            results.append(ranked if top_k is None else ranked[:top_k])
        return results

    def _shape(self, results: list, single: bool, opts: dict, inputs):
        if single:  # a text without top_k: [best]; a pair: best
            return [results[0]] if opts["top_k"] == _LEGACY and isinstance(inputs, str) else results[0]
        return results


class ZeroShotClassificationPipeline(Pipeline):
    """Inputs: a text or a list of texts, with `candidate_labels` (a list, or one string of
    comma-separated labels). Each (text, hypothesis_template.format(label)) pair goes through
    the NLI model; without `multi_label`, a softmax over the labels' entailment logits (scores
    sum to 1), with it (or with one label), entailment against contradiction per label."""

    task = "zero-shot-classification"
    OPTIONS = {"candidate_labels": None, "hypothesis_template": "This example is {}.", "multi_label": False}

    def check(self) -> None:
        self.need_head("sequence", "a sequence-classification head trained on NLI")
        if self.entailment_id < 0:
            raise LLMKitError(f"zero-shot-classification needs an NLI model whose labels include 'entailment'; "
                              f"{self.name} has labels {', '.join(map(str, self.labels))}")

    @property
    def entailment_id(self) -> int:
        """The first label starting with "entail" (any case), as transformers looks it up; -1 if none."""
        return next((i for i, lab in enumerate(self.labels) if str(lab).lower().startswith("entail")), -1)

    @staticmethod
    def _labels(labels) -> list[str]:
        if isinstance(labels, str):
            labels = [lab.strip() for lab in labels.split(",") if lab.strip()]
        if not labels or not all(isinstance(lab, str) for lab in labels):
            raise LLMKitError("zero-shot-classification needs candidate_labels (a list of labels, or a "
                              "comma-separated string)")
        return list(labels)

    def _run(self, items: list, opts: dict) -> list:
        labels = self._labels(opts["candidate_labels"])
        template = opts["hypothesis_template"]
        if not isinstance(template, str) or template.format(labels[0]) == template:
            raise LLMKitError(f"hypothesis_template {template!r} has no {{}} for the label")
        pairs = [(text, template.format(label)) for text in items for label in labels]
        encs = [self.encode(t, h, truncate=self.max_length, strategy="only_first") for t, h in pairs]
        logits = np.stack([y.numpy() for y in self.forward(encs)]).reshape(len(items), len(labels), -1)
        entail = self.entailment_id
        if opts["multi_label"] or len(labels) == 1:
            contradiction = -1 if entail == 0 else 0
            scores = _softmax(logits[..., [contradiction, entail]])[..., 1]
        else:
            scores = _softmax(logits[..., entail])
        results = []
        for text, s in zip(items, scores):
            order = list(reversed(s.argsort()))
            results.append({"sequence": text, "labels": [labels[i] for i in order],
                            "scores": [float(s[i]) for i in order]})
        return results
