"""Metrics: reference-based text metrics for generated responses, summaries and translations,
and classification metrics for the classifier recipe (see `classification_report`).

Two families of text metrics live here, on purpose:

**Library metrics, for reported numbers** (`rouge_scores`, `sacrebleu_scores`): computed *by*
the reference implementations, so that a number in a report means what the same number means
in a paper. This module only checks the arguments, passes them on and averages.

* `rouge_scores`: Google's `rouge_score` package (the implementation behind HF `evaluate`'s
  "rouge" and the T5/PEGASUS papers): ROUGE-1/2 (n-gram overlap) and ROUGE-L (longest common
  subsequence, Lin 2004 sec. 3.1) F1, the mean over examples, x 100. Its tokenizer lower-cases
  and keeps runs of [a-z0-9] only (everything else, accented letters included, is a separator:
  "Mäuse" -> "m", "use"), with Porter stemming of words over 3 letters when `use_stemmer`; it
  is an English metric (pass `tokenizer` for others). **rougeLsum** (summary-level LCS, the
  union LCS over sentence pairs, Lin 2004 sec. 3.2) splits prediction and reference into
  sentences *at newlines and nowhere else*: on one-line texts it equals rougeL. Put one
  sentence per line first (`newline_sentences`, or `sentence_split=True`), as HF's
  `run_summarization.py` does with nltk before scoring. Several references per example: the
  best-scoring one counts, per ROUGE type (`RougeScorer.score_multi`, as `evaluate` does).
* `sacrebleu_scores`: `sacrebleu` (Post 2018, "A Call for Clarity in Reporting BLEU Scores"):
  corpus BLEU with its default 13a tokenizer and exp smoothing, and corpus chrF (Popović 2015,
  character 6-grams, beta 2), both 0-100, plus the signatures that say exactly how they were
  computed (`nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0`): quote them with the
  scores.

**Home-made metrics, for the instruction-following report** (`exact_match`, `rouge_l`,
`corpus_bleu`, `text_metrics`): a few lines each, so that the definitions are in plain view,
kept as they were because `evaluate_responses` reports them (`text_metrics`) and earlier reports
hold these numbers. Where their definitions coincide with the libraries' they give the same
values (tested): `rouge_l` equals rouge_score's rougeL without stemming, / 100, on ASCII text,
and `corpus_bleu` equals sacrebleu's BLEU with `tokenize="none", smooth_method="none"` on text
already split into `bleu_tokens`. They differ elsewhere: `rouge_l` keeps non-ASCII letters as
word characters and never stems; `corpus_bleu` lower-cases and splits every punctuation mark
(13a is case-sensitive and keeps numbers such as "3.5" and "1,000" whole), has no smoothing and takes one
reference per prediction.

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

Sentences (`split_sentences`, the one splitter used by `newline_sentences` and the baselines
`lead_sentence` / `copy_source`): nltk's Punkt model when its data is installed (nltk does not
ship it; `nltk.download("punkt_tab")` fetches it), else a documented rule-based splitter; the
choice can be forced with `method`.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter, defaultdict
from typing import Callable, Optional, Sequence, Union

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



# --- sentences and the trivial baselines ----------------------------------------------------------
SENTENCE_METHODS = ("auto", "punkt", "rules")
# Words that end with a period without ending a sentence (lower-cased, without the period), for
# the rule-based splitter. "etc." is not among them: it ends a sentence as often as not.
_ABBREVIATIONS = frozenset("""
    al approx ca cf ch co corp dept dr e.g eq eqs est fig figs i.e inc jr ltd min mr mrs ms no nos
    p pp prof resp sec sect sr st vol vols vs
""".split())
# Sentence-final punctuation, then any closing quotes or brackets, then whitespace.
_SENTENCE_END = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019\u00bb)\]]*\s+")
_DOTTED = re.compile(r"(?:[^\W\d_]\.)+[^\W\d_]")  # U.S, e.g, a.m: single letters and periods
_OPENERS = "\"'\u201c\u2018\u201e\u00ab(["


def punkt_available() -> bool:
    """Whether nltk and its Punkt sentence model are installed (nltk's data is a separate
    download, `nltk.download("punkt_tab")`, so a fresh install has none)."""
    try:
        import nltk
        nltk.data.find("tokenizers/punkt_tab/english/")
    except (ImportError, LookupError):
        return False
    return True


def _rule_sentences(line: str) -> list[str]:
    """One line split at sentence-final punctuation (. ! ? ..., possibly with closing quotes or
    brackets) followed by whitespace and a capital letter, a digit or an opening quote/bracket,
    except after a known abbreviation ("Dr.", "Fig.", "et al."), an initial ("J.") or single
    letters and periods ("U.S.", "e.g.", "a.m."): Punkt's common cases, without its statistics
    (so "in the U.S. The" stays one sentence, and so does "Mr. Smith"). Measured on SciTLDR's
    3,229 abstracts against the data set's own sentence lists: 87% split identically; 90% of
    their boundaries found, 97.6% of those found are theirs (most misses are their splits at
    colons and before "(i)")."""
    out, start = [], 0
    for m in _SENTENCE_END.finditer(line):
        nxt = line[m.end():m.end() + 1]
        if not nxt or not (nxt.isupper() or nxt.isdigit() or nxt in _OPENERS):
            continue
        if m.group().startswith(".") and not m.group().startswith(".."):
            word = line[start:m.start()].rsplit(None, 1)[-1] if line[start:m.start()].strip() else ""
            word = word.lstrip(_OPENERS)
            if word.lower() in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()) or _DOTTED.fullmatch(word):
                continue
        out.append(line[start:m.end()].strip())
        start = m.end()
    out.append(line[start:].strip())
    return [x for x in out if x]


def split_sentences(text: str, method: str = "auto") -> list[str]:
    """The sentences of `text`: every line break ends one, and within a line `method` decides:
    "punkt" (nltk's `sent_tokenize`, what HF's run_summarization.py uses before rougeLsum),
    "rules" (`_rule_sentences`), "auto" (punkt when its data is installed, else rules). Blank
    pieces are dropped; sentences are stripped."""
    if method not in SENTENCE_METHODS:
        raise LLMKitError(f"sentence splitting method must be one of {', '.join(SENTENCE_METHODS)}, got '{method}'")
    use_punkt = method == "punkt" or (method == "auto" and punkt_available())
    if use_punkt:
        if not punkt_available():
            raise LLMKitError("nltk's Punkt sentence model is not installed: run "
                              "python -c \"import nltk; nltk.download('punkt_tab')\" or use method='rules'")
        import nltk
        split = nltk.sent_tokenize
    else:
        split = _rule_sentences
    return [s.strip() for line in text.splitlines() if line.strip() for s in split(line) if s.strip()]


def newline_sentences(text: str, method: str = "auto") -> str:
    """`text` with one sentence per line: the form rouge_score's rougeLsum expects."""
    return "\n".join(split_sentences(text, method))


def lead_sentence(text: str, n: int = 1, method: str = "auto") -> str:
    """The first `n` sentences of a document: the Lead baseline of summarization (Lead-3 on
    CNN/DailyMail, See et al. 2017; Lead-1 for one-sentence summaries such as XSum or SciTLDR)."""
    if n < 1:
        raise LLMKitError(f"the lead baseline needs n >= 1 sentences, got {n}")
    return " ".join(split_sentences(text, method)[:n])


def copy_source(text: str, max_words: Optional[int] = None) -> str:
    """The source itself (its first `max_words` words when given): the copy baseline, the floor
    a translation or summarization model has to beat (names and numbers copied over score)."""
    words = text.split()
    return " ".join(words[:max_words] if max_words is not None else words)


# --- summarization and translation: the reference libraries ---------------------------------------
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
References = Sequence[Union[str, Sequence[str]]]


def _check_references(predictions: Sequence[str], references: References) -> list[list[str]]:
    """The references as one non-empty list of strings per prediction (a string is one reference)."""
    if isinstance(predictions, str) or isinstance(references, str):
        raise LLMKitError("predictions and references must be lists of texts, not one string")
    if len(predictions) != len(references):
        raise LLMKitError(f"{len(predictions)} predictions for {len(references)} references")
    out = []
    for i, (p, r) in enumerate(zip(predictions, references)):
        if not isinstance(p, str):
            raise LLMKitError(f"prediction {i} is {type(p).__name__}, not a string")
        refs = [r] if isinstance(r, str) else list(r) if isinstance(r, (list, tuple)) else None
        if refs is None or not all(isinstance(x, str) for x in refs):
            raise LLMKitError(f"reference {i} must be a string or a list of strings, got {type(r).__name__}")
        if not refs:
            raise LLMKitError(f"prediction {i} has no reference")
        out.append(refs)
    return out


class _Tokenizer:
    """A plain function as the tokenizer object rouge_score expects (one with `.tokenize`)."""

    def __init__(self, fn: Callable[[str], list[str]]):
        self.tokenize = fn


def rouge_scores(predictions: Sequence[str], references: References, types: Sequence[str] = ROUGE_TYPES,
                 use_stemmer: bool = True, sentence_split: bool = False, sentence_method: str = "auto",
                 tokenizer: Optional[Callable[[str], list[str]]] = None, confidence: Optional[float] = None,
                 n_samples: int = 1000, seed: int = 0) -> dict[str, float]:
    """Mean ROUGE F1 x 100 per type ({"rouge1": 41.2, ...}), computed by `rouge_score`.

    `references[i]` is the reference of `predictions[i]` or a list of them (best one counts).
    `sentence_split` first puts every text one sentence per line (`newline_sentences`), which
    only rougeLsum sees (the other types' tokenizer treats a newline as a space). `tokenizer`
    replaces rouge_score's English-only one (a function text -> tokens).

    `confidence` (e.g. 0.95) adds f"{type}_low" / f"{type}_high": the percentile bootstrap over
    examples of rouge_score's `BootstrapAggregator` (`n_samples` resamples of the mean), seeded
    here so a report is reproducible. The point value is the plain mean, not the bootstrap
    median `evaluate` reports with `use_aggregator=True` (they differ in the last digits).
    Empty input: NaN for every type.
    """
    refs = _check_references(predictions, references)
    types = list(types)
    for t in types:
        if not re.fullmatch(r"rouge[1-9]|rougeL|rougeLsum", t):
            raise LLMKitError(f"unknown ROUGE type '{t}'; expected rouge1..rouge9, rougeL or rougeLsum")
    if not types:
        raise LLMKitError("no ROUGE types asked for")
    if confidence is not None and not 0.0 < confidence < 1.0:
        raise LLMKitError(f"confidence must be in (0, 1), got {confidence}")
    if not predictions:
        return {t: float("nan") for t in types}
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise LLMKitError("ROUGE needs the rouge_score package: pip install rouge_score") from None
    scorer = rouge_scorer.RougeScorer(types, use_stemmer=use_stemmer,
                                      tokenizer=_Tokenizer(tokenizer) if tokenizer is not None else None)
    preds = list(predictions)
    if sentence_split:
        preds = [newline_sentences(p, sentence_method) for p in preds]
        refs = [[newline_sentences(r, sentence_method) for r in rs] for rs in refs]
    per = np.array([[s[t].fmeasure for t in types] for s in
                    (scorer.score_multi(r, p) for p, r in zip(preds, refs))], dtype=np.float64)  # (N, types)
    out = {t: 100.0 * float(v) for t, v in zip(types, per.mean(axis=0))}
    if confidence is not None:
        rng = np.random.default_rng(seed)
        means = np.stack([per[rng.integers(0, len(per), len(per))].mean(axis=0) for _ in range(n_samples)])
        tail = 100 * (1 - confidence) / 2
        low, high = np.percentile(means, [tail, 100 - tail], axis=0)
        for t, lo, hi in zip(types, low, high):
            out[f"{t}_low"], out[f"{t}_high"] = 100.0 * float(lo), 100.0 * float(hi)
    return out


def sacrebleu_scores(predictions: Sequence[str], references: References, tokenize: str = "13a",
                     lowercase: bool = False) -> dict:
    """Corpus BLEU and chrF (0-100) computed by `sacrebleu`, with their signatures:

    {"bleu", "chrf", "signature" (BLEU's, e.g. "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|
    version:2.6.0"), "chrf_signature", "precisions" (p_1..p_4, 0-100), "brevity_penalty",
    "length_ratio"}. `references[i]` is the reference of `predictions[i]` or a list of them
    (any number per prediction: sacrebleu's streams are padded with None, its way of taking a
    variable count, and the signature then says nrefs:var). Empty input: NaN scores, no signatures.
    """
    refs = _check_references(predictions, references)
    try:
        from sacrebleu.metrics import BLEU, CHRF
    except ImportError:
        raise LLMKitError("BLEU and chrF need the sacrebleu package: pip install sacrebleu") from None
    try:
        bleu, chrf = BLEU(tokenize=tokenize, lowercase=lowercase), CHRF(lowercase=lowercase)
    except Exception as e:  # sacrebleu raises a bare RuntimeError/KeyError for an unknown tokenizer
        raise LLMKitError(f"sacrebleu refused tokenize='{tokenize}': {e}") from None
    if not predictions:
        return {"bleu": float("nan"), "chrf": float("nan"), "signature": None,  # sacrebleu has none before scoring
                "chrf_signature": None, "precisions": [], "brevity_penalty": float("nan"),
                "length_ratio": float("nan")}
    n = max(len(r) for r in refs)
    # sacrebleu takes reference *streams*: stream k holds every prediction's k-th reference.
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(n)]
    b = bleu.corpus_score(list(predictions), streams)
    c = chrf.corpus_score(list(predictions), streams)
    return {"bleu": float(b.score), "chrf": float(c.score), "signature": str(bleu.get_signature()),
            "chrf_signature": str(chrf.get_signature()), "precisions": [float(p) for p in b.precisions],
            "brevity_penalty": float(b.bp), "length_ratio": float(b.ratio)}

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
