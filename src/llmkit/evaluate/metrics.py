"""Metrics: reference-based text metrics for generated responses (exact match, ROUGE-L, corpus
BLEU-4), and classification metrics for the classifier recipe (see `classification_report`).

Implemented here (a few lines each) rather than pulled from `rouge_score`/`sacrebleu`, so that
the definitions are in plain view:

* exact match: equal after lower-casing, dropping punctuation and collapsing whitespace.
* ROUGE-L (Lin 2004, sec. 3.1): F-measure of the longest common subsequence of words,
  P = LCS/len(candidate), R = LCS/len(reference), F = 2PR/(P+R) (beta = 1, as `rouge_score`),
  averaged over examples. Words are lower-cased runs of letters and digits, `rouge_score`'s
  default tokenization minus its Porter stemming.
* BLEU-4 (Papineni et al. 2002): corpus-level, i.e. clipped n-gram matches and candidate n-gram
  counts are summed over the whole corpus before the modified precisions p_1..p_4 are formed;
  BLEU = BP * exp(mean log p_n), BP = exp(1 - r/c) if the candidates' total length c is at most
  the references' r, else 1. No smoothing: any p_n = 0 gives 0 (sacrebleu's default "exp"
  smoothing differs only in that case). Tokens are lower-cased words and single punctuation
  marks. Reported on sacrebleu's 0-100 scale.

Exact match and ROUGE-L are fractions in [0, 1], like the harness's accuracies.

Classification: accuracy, per-class precision / recall / F1 / support, macro F1 and the
confusion matrix, with scikit-learn's definitions, and their text and Markdown tables.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

import numpy as np


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    if not predictions:
        return float("nan")
    return sum(normalize(p) == normalize(r) for p, r in zip(predictions, references)) / len(predictions)


def rouge_tokens(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Longest common subsequence by dynamic programming, one row at a time: O(len(a) * len(b))."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l_f(prediction: str, reference: str) -> float:
    p, r = rouge_tokens(prediction), rouge_tokens(reference)
    lcs = lcs_length(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    if not predictions:
        return float("nan")
    return sum(rouge_l_f(p, r) for p, r in zip(predictions, references)) / len(predictions)


def bleu_tokens(text: str) -> list[str]:
    return re.findall(r"[^\W_]+|[^\w\s]|_", text.lower())


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(predictions: Sequence[str], references: Sequence[str], max_n: int = 4) -> dict:
    """{"bleu": 0-100, "precisions": [p_1..p_n], "brevity_penalty", "length_ratio"}."""
    matches, totals = [0] * max_n, [0] * max_n
    c = r = 0
    for pred, ref in zip(predictions, references):
        pt, rt = bleu_tokens(pred), bleu_tokens(ref)
        c, r = c + len(pt), r + len(rt)
        for n in range(1, max_n + 1):
            pn, rn = _ngrams(pt, n), _ngrams(rt, n)
            matches[n - 1] += sum(min(count, rn[g]) for g, count in pn.items())  # clipped counts
            totals[n - 1] += max(len(pt) - n + 1, 0)
    precisions = [m / t if t else 0.0 for m, t in zip(matches, totals)]
    bp = 1.0 if c > r else (math.exp(1 - r / c) if c else 0.0)
    score = bp * math.exp(sum(math.log(p) for p in precisions) / max_n) if min(precisions) > 0 else 0.0
    return {"bleu": 100 * score, "precisions": precisions, "brevity_penalty": bp,
            "length_ratio": c / r if r else float("nan")}


def text_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    return {"exact_match": exact_match(predictions, references), "rouge_l": rouge_l(predictions, references),
            "bleu": corpus_bleu(predictions, references)["bleu"]}


# --- classification --------------------------------------------------------------------------------
def classification_report(y_true: list[int], y_pred: list[int], labels: list[str]) -> dict:
    """Accuracy, per-class precision / recall / F1 / support, macro F1 and the confusion matrix
    (rows: true class, columns: predicted), as in scikit-learn (0 where undefined)."""
    N = len(labels)
    cm = np.zeros((N, N), dtype=np.int64)
    for t, p in zip(y_true, y_pred):
        cm[t, p] += 1
    per = {}
    for k, name in enumerate(labels):
        tp = int(cm[k, k])
        pred, true = int(cm[:, k].sum()), int(cm[k, :].sum())
        precision = tp / pred if pred else 0.0
        recall = tp / true if true else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per[name] = {"precision": precision, "recall": recall, "f1": f1, "support": true}
    n = int(cm.sum())
    return {"n": n, "accuracy": float(np.trace(cm)) / n if n else 0.0,
            "macro_f1": float(np.mean([v["f1"] for v in per.values()])) if per else 0.0,
            "per_class": per, "labels": list(labels), "confusion_matrix": cm.tolist()}


def format_report(report: dict, title: str) -> str:
    """The report as a plain-text table (per-class rows, then the confusion matrix)."""
    labels = report["labels"]
    w = max(12, *(len(x) for x in labels))
    lines = [f"{title}: accuracy {report['accuracy']:.4f}, macro F1 {report['macro_f1']:.4f} ({report['n']} texts)",
             f"  {'class':<{w}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}"]
    for name in labels:
        r = report["per_class"][name]
        lines.append(f"  {name:<{w}} {r['precision']:>9.4f} {r['recall']:>9.4f} {r['f1']:>9.4f} {r['support']:>8}")
    cw = max(8, *(len(x) for x in labels))
    lines.append("  confusion (rows true, columns predicted):")
    lines.append(f"  {'':<{w}} " + " ".join(f"{x:>{cw}}" for x in labels))
    for name, row in zip(labels, report["confusion_matrix"]):
        lines.append(f"  {name:<{w}} " + " ".join(f"{v:>{cw}}" for v in row))
    return "\n".join(lines)


def markdown_confusion(report: dict, title: str) -> str:
    """The report as Markdown: a `### title` heading, the confusion matrix, then the per-class table."""
    labels = report["labels"]
    esc = [x.replace("|", "\\|") for x in labels]
    lines = [f"### {title}", "",
             f"accuracy {report['accuracy']:.4f}, macro F1 {report['macro_f1']:.4f}, {report['n']} texts", "",
             "| true \\ predicted | " + " | ".join(esc) + " |", "|---|" + "---:|" * len(labels)]
    for name, row in zip(esc, report["confusion_matrix"]):
        lines.append(f"| **{name}** | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", "| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for name, e in zip(labels, esc):
        r = report["per_class"][name]
        lines.append(f"| {e} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | {r['support']} |")
    return "\n".join(lines) + "\n"
