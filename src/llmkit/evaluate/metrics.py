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

Named entities (`entity_scores`): precision, recall and F1 over whole entities, overall (micro)
and per type, with conlleval's chunking as seqeval implements it by default (its non-strict
mode): an I- tag after O or after another type starts an entity, a change of type ends one,
B- always starts one; IOBES' E-/S- are understood too. An entity counts only if its type, first
and last token all match. Sentences are chunked separately.

Extractive QA (`squad_scores`): exact match and F1 as the official SQuAD v1.1 evaluation script
defines them (`evaluate-v1.1.py`): answers normalised by lower-casing, removing punctuation
(`string.punctuation`), the articles a/an/the and extra whitespace; F1 over the bags of
normalised words; each prediction takes its best score over the gold answers; both averaged
and reported on the script's 0-100 scale. (Note its normalisation differs from `normalize`
above, which keeps articles and splits on punctuation.)
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter, defaultdict
from typing import Sequence

import numpy as np

from llmkit.errors import LLMKitError


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


# --- named entities ----------------------------------------------------------------------------------
def _chunk_ends(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Whether an entity ends between the previous token and this one (conlleval's endOfChunk)."""
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag not in ("O", ".") and prev_type != type_


def _chunk_starts(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Whether an entity starts at this token (conlleval's startOfChunk)."""
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag not in ("O", ".") and prev_type != type_


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first token, last token) of each entity of one tag sequence, as seqeval's
    `get_entities` (default, prefix mode): the tag is a tag's first character (B, I, E, S, O),
    its type what follows the first "-" ("_" if nothing does)."""
    out = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, chunk in enumerate([*tags, "O"]):  # a final O closes the last entity
        tag, type_ = chunk[:1], chunk[1:].split("-", maxsplit=1)[-1] or "_"
        if _chunk_ends(prev_tag, tag, prev_type, type_):
            out.append((prev_type, begin, i - 1))
        if _chunk_starts(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return out


def _prf(correct: int, predicted: int, true: int) -> tuple[float, float, float]:
    precision = correct / predicted if predicted else 0.0
    recall = correct / true if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def entity_scores(true_tag_seqs: Sequence[Sequence[str]], pred_tag_seqs: Sequence[Sequence[str]]) -> dict:
    """Entity-level scores of predicted tag sequences against the gold ones (one sequence per
    sentence, same lengths), as seqeval's default metrics / `classification_report`:

    {"precision", "recall", "f1" (micro, over all entities), "macro_f1" (mean over types),
    "accuracy" (token-level tag accuracy), "n_true", "n_pred", "n_correct",
    "per_type": {type: {"precision", "recall", "f1", "support"}}} (0 where undefined), the
    types sorted, every type that occurs in either the gold or the predictions.
    """
    if len(true_tag_seqs) != len(pred_tag_seqs):
        raise LLMKitError(f"{len(true_tag_seqs)} gold sequences but {len(pred_tag_seqs)} predicted")
    flat_true: list[str] = []
    flat_pred: list[str] = []
    tokens = right = 0
    for n, (t, p) in enumerate(zip(true_tag_seqs, pred_tag_seqs)):
        if len(t) != len(p):
            raise LLMKitError(f"sequence {n}: {len(t)} gold tags but {len(p)} predicted")
        # One stream with an O after each sentence, as seqeval chunks a list of sentences: for
        # BIO / IOBES tags the same as chunking each alone, and seqeval's answer for any others.
        flat_true += [*t, "O"]
        flat_pred += [*p, "O"]
        tokens += len(t)
        right += sum(a == b for a, b in zip(t, p))
    true_set: dict[str, set] = defaultdict(set)
    pred_set: dict[str, set] = defaultdict(set)
    for kind, first, last in entities(flat_true):
        true_set[kind].add((first, last))
    for kind, first, last in entities(flat_pred):
        pred_set[kind].add((first, last))
    per_type = {}
    for kind in sorted(set(true_set) | set(pred_set)):
        precision, recall, f1 = _prf(len(true_set[kind] & pred_set[kind]), len(pred_set[kind]), len(true_set[kind]))
        per_type[kind] = {"precision": precision, "recall": recall, "f1": f1, "support": len(true_set[kind])}
    n_true = sum(len(v) for v in true_set.values())
    n_pred = sum(len(v) for v in pred_set.values())
    n_correct = sum(len(true_set[k] & pred_set[k]) for k in per_type)
    precision, recall, f1 = _prf(n_correct, n_pred, n_true)
    return {"precision": precision, "recall": recall, "f1": f1,
            "macro_f1": float(np.mean([v["f1"] for v in per_type.values()])) if per_type else 0.0,
            "accuracy": right / tokens if tokens else 0.0, "n_true": n_true, "n_pred": n_pred,
            "n_correct": n_correct, "per_type": per_type}


# --- extractive QA (SQuAD v1.1) ------------------------------------------------------------------------
_PUNCTUATION = frozenset(string.punctuation)


def squad_normalize(text: str) -> str:
    """The official SQuAD v1.1 `normalize_answer`: lower-case, drop punctuation, drop the
    articles a/an/the, collapse whitespace (in that order)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_f1(prediction: str, gold: str) -> float:
    """Token F1 of two answers after `squad_normalize` (0 if they share no word)."""
    p, g = squad_normalize(prediction).split(), squad_normalize(gold).split()
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """{"exact_match", "f1"} on the official 0-100 scale: each prediction against its list of gold
    answers (the best of them counts), averaged over the questions."""
    if len(predictions) != len(references):
        raise LLMKitError(f"{len(predictions)} predictions for {len(references)} questions")
    if not predictions:
        return {"exact_match": float("nan"), "f1": float("nan")}
    em = f1 = 0.0
    for pred, golds in zip(predictions, references):
        if isinstance(golds, str):
            golds = [golds]
        if not golds:
            raise LLMKitError("a question with no gold answer cannot be scored (SQuAD v1.1 has none)")
        em += max(float(squad_normalize(pred) == squad_normalize(g)) for g in golds)
        f1 += max(squad_f1(pred, g) for g in golds)
    return {"exact_match": 100.0 * em / len(predictions), "f1": 100.0 * f1 / len(predictions)}
