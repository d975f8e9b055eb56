"""A learned quality filter for `llmkit data curate`: `QualityClassifier` and `llmkit data quality-train`.

GPT-3 (Brown et al. 2020, appendix A) filtered Common Crawl with "a simple logistic regression
classifier" on hashed features, trained to tell a high-quality reference (WebText, books,
Wikipedia) from raw Common Crawl, and kept a document when `np.random.pareto(9) > 1 - score`
(`pareto_keep`); FineWeb-Edu (Penedo et al. 2024) likewise thresholds a classifier's score.
This is that model, as fast as numpy makes it:

* features: lower-cased word 1..`ngrams`-grams (runs of letters and digits,
  `llmkit.data.ngrams.normalized_words`), hashed into `dim` buckets (the "hashing trick",
  Weinberger et al. 2009). Words are hashed with blake2b (stable across processes, unlike
  Python's salted `hash()`), n-grams combined polynomially mod 2^64 (`ngrams.ngram_hashes`),
  salted by their order and finished with MurmurHash3's fmix64 so every bit is mixed before
  `% dim`. A bucket's value is log(1 + count) and each document's vector is L2-normalised, so
  long documents neither dominate training nor saturate the score by length alone.
* model: logistic regression P(reference | x) = sigmoid(w.x + b), trained by mini-batch
  Adagrad (Duchi et al. 2011) on the class-balanced logistic loss (each class weighs half the
  total), touching only the weights of features present in the batch; L2 is applied lazily,
  to the touched weights at each step (as sparse SGD implementations do). The order of
  examples comes from `seed`, and nothing else is random, so training is deterministic.
* files: `model.safetensors` (the weights, float32, and the bias) and `config.json` (feature
  settings, training settings, counts, held-out metrics, score histograms). No pickle anywhere.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np

from llmkit.data import TextUnit, iter_documents
from llmkit.data.ngrams import extend_ngrams, normalized_words, word_hashes
from llmkit.errors import LLMKitError
from llmkit.fileio import atomic_write, atomic_write_json

FORMAT = "llmkit quality classifier"
VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
HISTOGRAM_BINS = 20  # as `data curate` reports classifier scores
MAX_DIM = 2**31 - 1  # bucket indices are stored as int32
# Training defaults: a plateau of held-out AUC on bench/bench_quality_model.py (lr 0.2-1.0,
# l2 0-1e-6, batches of 64-256 all within 0.0002 of each other).
LR, L2, BATCH_SIZE = 0.2, 1e-6, 64

# Per-order salts (the first digits of pi) so that a unigram and a bigram with equal polynomial
# hashes do not share a bucket by construction.
_SALTS = np.array([0x243F6A8885A308D3, 0x13198A2E03707344, 0xA4093822299F31D0, 0x082EFA98EC4E6C89,
                   0x452821E638D01377, 0xBE5466CF34E90C6C, 0xC0AC29B7C97C50DD, 0x3F84D5B5B5470917],
                  dtype=np.uint64)
_M1, _M2 = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)


def _fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser (Appleby): every input bit affects every output bit."""
    x = x ^ (x >> _S33)
    x = x * _M1  # wraps modulo 2^64 by design
    x = x ^ (x >> _S33)
    x = x * _M2
    return x ^ (x >> _S33)


def featurize(text: str, dim: int, ngrams: int) -> tuple[np.ndarray, np.ndarray]:
    """(bucket indices ascending, int32; values, float32) of one document: log(1 + count) of
    its hashed word 1..ngrams-grams, L2-normalised. Both empty for a text without words."""
    words = normalized_words(text)
    if not words:
        return np.empty(0, dtype=np.int32), np.empty(0, dtype=np.float32)
    h = word_hashes(words)
    parts, g = [], h
    with np.errstate(over="ignore"):
        for n in range(1, ngrams + 1):
            if n > 1:
                g = extend_ngrams(g, h, n)
                if len(g) == 0:
                    break
            parts.append(_fmix64(g ^ _SALTS[n - 1]))
        buckets = (np.concatenate(parts) % np.uint64(dim)).astype(np.int32)
    idx, counts = np.unique(buckets, return_counts=True)
    values = np.log1p(counts.astype(np.float32))
    values /= np.sqrt(np.dot(values, values))
    return idx, values


class _Rows:
    """Documents' sparse feature rows (CSR), appended one at a time."""

    def __init__(self) -> None:
        self._idx: list[np.ndarray] = []
        self._val: list[np.ndarray] = []

    def append(self, idx: np.ndarray, val: np.ndarray) -> None:
        self._idx.append(idx)
        self._val.append(val)

    def __len__(self) -> int:
        return len(self._idx)

    def csr(self, rows: Optional[np.ndarray] = None) -> "_CSR":
        take = range(len(self._idx)) if rows is None else rows
        idx = [self._idx[i] for i in take]
        val = [self._val[i] for i in take]
        indptr = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum([len(i) for i in idx], out=indptr[1:])
        cat = (lambda a, dt: np.concatenate(a) if a else np.empty(0, dtype=dt))
        return _CSR(indptr, cat(idx, np.int32), cat(val, np.float32))


class _CSR:
    def __init__(self, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray):
        self.indptr, self.indices, self.values = indptr, indices, values

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row number within `rows`, feature index, value) of every entry of those rows."""
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        lengths = ends - starts
        total = int(lengths.sum())
        row_of = np.repeat(np.arange(len(rows)), lengths)
        # position of each entry: its row's start + its offset within the row
        offsets = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        pos = starts[row_of] + offsets
        return row_of, self.indices[pos], self.values[pos]

    def margins(self, w: np.ndarray, b: float) -> np.ndarray:
        rows = np.arange(len(self))
        row_of, idx, val = self.gather(rows)
        return np.bincount(row_of, weights=w[idx] * val, minlength=len(self)) + b


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow warnings for large |z|


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the rank statistic (Mann-Whitney U / (n_pos * n_neg); tied
    scores get their average rank, i.e. count one half); nan unless both classes are present."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    _, inverse, counts = np.unique(scores[order], return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # 0-based rank of each distinct value's first occurrence
    ranks = np.empty(len(scores))
    ranks[order] = (first + (counts + 1) / 2.0)[inverse]  # 1-based average ranks
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def pareto_keep(scores: np.ndarray, rng: np.random.Generator, alpha: float = 9.0) -> np.ndarray:
    """GPT-3's sampling rule (Brown et al. 2020, appendix A): keep a document when
    `rng.pareto(alpha) > 1 - score`, so that low-scoring documents are still kept now and then
    (alpha = 9 "to take mostly documents the classifier scored highly, but still include some
    documents that were out of distribution")."""
    scores = np.asarray(scores, dtype=np.float64)
    return rng.pareto(alpha, size=scores.shape) > 1.0 - scores


def _check_settings(dim: int, ngrams: int, epochs: int, lr: float, l2: float, batch_size: int) -> None:
    if not isinstance(dim, int) or not 2 <= dim <= MAX_DIM:
        raise LLMKitError(f"dim must be an integer in [2, 2^31 - 1], got {dim!r}")
    if not isinstance(ngrams, int) or not 1 <= ngrams <= len(_SALTS):
        raise LLMKitError(f"ngrams must be an integer in [1, {len(_SALTS)}], got {ngrams!r}")
    if not isinstance(epochs, int) or epochs < 1:
        raise LLMKitError(f"epochs must be a positive integer, got {epochs!r}")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise LLMKitError(f"lr must be a positive number, got {lr!r}")
    if not (isinstance(l2, (int, float)) and l2 >= 0 and math.isfinite(l2)):
        raise LLMKitError(f"l2 must be a non-negative number, got {l2!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise LLMKitError(f"batch_size must be a positive integer, got {batch_size!r}")


class QualityClassifier:
    """P(reference-like | text) by a logistic regression on hashed word n-grams (see the module
    docstring). Build with `train` or `load`; `score` one text or `scores` many."""

    def __init__(self, weight: np.ndarray, bias: float, ngrams: int, config: Optional[dict] = None):
        weight = np.ascontiguousarray(weight, dtype=np.float32)
        if weight.ndim != 1:
            raise LLMKitError(f"quality classifier weights must be a vector, got shape {weight.shape}")
        # The bias is kept at float32, as saved, so a loaded model scores exactly as the trained one.
        self.weight, self.bias, self.ngrams = weight, float(np.float32(bias)), int(ngrams)
        self.dim = len(weight)
        self.config = dict(config or {})

    # --- training ------------------------------------------------------------------------------
    @classmethod
    def train(cls, reference: Iterable[str], corpus: Iterable[str], *, dim: int = 2**20, ngrams: int = 2,
              epochs: int = 5, lr: float = LR, l2: float = L2, batch_size: int = BATCH_SIZE,
              seed: int = 0) -> "QualityClassifier":
        """Fit reference texts (label 1) against corpus texts (label 0)."""
        _check_settings(dim, ngrams, epochs, lr, l2, batch_size)
        rows, labels = _Rows(), []
        for label, texts in ((1, reference), (0, corpus)):
            for text in texts:
                rows.append(*featurize(text, dim, ngrams))
                labels.append(label)
        return cls._fit(rows.csr(), np.array(labels, dtype=np.int8), dim=dim, ngrams=ngrams, epochs=epochs,
                        lr=lr, l2=l2, batch_size=batch_size, seed=seed)

    @classmethod
    def _fit(cls, X: _CSR, y: np.ndarray, *, dim: int, ngrams: int, epochs: int, lr: float, l2: float,
             batch_size: int, seed: int, bar=None) -> "QualityClassifier":
        n_pos = int(y.sum())
        n_neg = len(y) - n_pos
        if n_pos == 0 or n_neg == 0:
            raise LLMKitError(f"a quality classifier needs reference and corpus documents to train on, "
                              f"got {n_pos} reference and {n_neg} corpus")
        # Balanced classes: each class carries half the total weight, whatever their sizes.
        class_weight = np.array([len(y) / (2.0 * n_neg), len(y) / (2.0 * n_pos)])
        sample_weight = class_weight[y]
        yf = y.astype(np.float64)
        w = np.zeros(dim, dtype=np.float32)
        g2 = np.zeros(dim, dtype=np.float32)  # Adagrad's sum of squared gradients, per weight
        b, g2b, eps = 0.0, 0.0, 1e-8
        rng = np.random.default_rng(seed)
        for _ in range(epochs):
            order = rng.permutation(len(y))
            for start in range(0, len(y), batch_size):
                rows = order[start:start + batch_size]
                row_of, idx, val = X.gather(rows)
                z = np.bincount(row_of, weights=w[idx] * val, minlength=len(rows)) + b
                # d(weighted mean log loss)/dz = weight * (p - y) / batch
                dz = sample_weight[rows] * (_sigmoid(z) - yf[rows]) / len(rows)
                touched, inverse = np.unique(idx, return_inverse=True)
                grad = np.bincount(inverse, weights=dz[row_of] * val, minlength=len(touched))
                grad += l2 * w[touched]
                g2[touched] += (grad * grad).astype(np.float32)
                w[touched] -= (lr * grad / (np.sqrt(g2[touched]) + eps)).astype(np.float32)
                gb = float(dz.sum())
                g2b += gb * gb
                b -= lr * gb / (math.sqrt(g2b) + eps)
                if bar is not None:
                    bar.update(1)
        config = {"train": {"epochs": epochs, "lr": lr, "l2": l2, "batch_size": batch_size, "seed": seed,
                            "reference_docs": n_pos, "corpus_docs": n_neg}}
        return cls(w, b, ngrams, config)

    # --- scoring -------------------------------------------------------------------------------
    def score(self, text: str) -> float:
        """P(reference-like) of one text, in [0, 1]."""
        idx, val = featurize(text, self.dim, self.ngrams)
        return float(_sigmoid(np.float64(np.dot(self.weight[idx], val)) + self.bias))

    def scores(self, texts: list[str]) -> np.ndarray:
        """P(reference-like) of each text (float64 array)."""
        rows = _Rows()
        for text in texts:
            rows.append(*featurize(text, self.dim, self.ngrams))
        return self._scores(rows.csr())

    def _scores(self, X: _CSR) -> np.ndarray:
        return _sigmoid(X.margins(self.weight, self.bias))

    # --- files ---------------------------------------------------------------------------------
    def to_config(self) -> dict:
        """What config.json holds: the format, the feature settings, and `config` (training
        settings, counts, metrics...)."""
        return {"format": FORMAT, "version": VERSION,
                "features": {"dim": self.dim, "ngrams": self.ngrams,
                             "words": "lower-cased runs of letters and digits (llmkit.data.ngrams.normalized_words)",
                             "hash": "blake2b-64 per word, polynomial n-grams mod 2^64, order salt, fmix64, mod dim",
                             "values": "log(1 + count), L2-normalised per document"},
                **{k: v for k, v in self.config.items() if k not in ("format", "version", "features")}}

    def save(self, folder: str | Path) -> Path:
        """Write FOLDER/model.safetensors and FOLDER/config.json (each atomically, the config
        last: a folder with a config is complete). Returns the folder."""
        from safetensors.numpy import save as st_save

        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise LLMKitError(f"'{folder}' exists and is not a folder")
        blob = st_save({"weight": self.weight, "bias": np.array([self.bias], dtype=np.float32)},
                       metadata={"format": FORMAT, "version": str(VERSION)})
        atomic_write(folder / WEIGHTS_FILE, lambda tmp: Path(tmp).write_bytes(blob))
        atomic_write_json(folder / CONFIG_FILE, self.to_config())
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "QualityClassifier":
        """The classifier `save` (or `llmkit data quality-train`) wrote to `folder`."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        from llmkit.errors import read_json

        folder = Path(folder)
        if not folder.is_dir():
            raise LLMKitError(f"no quality classifier at '{folder}': not a folder")
        if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
            raise LLMKitError(f"'{folder}' is not a quality classifier folder (expected {WEIGHTS_FILE} and "
                              f"{CONFIG_FILE}, as `llmkit data quality-train` writes)")
        config = read_json(folder / CONFIG_FILE)
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise LLMKitError(f"{folder / CONFIG_FILE}: not a {FORMAT} config")
        if config.get("version") != VERSION:
            raise LLMKitError(f"{folder / CONFIG_FILE}: version {config.get('version')!r}, this llmkit reads {VERSION}")
        try:
            tensors = load_file(str(folder / WEIGHTS_FILE))
        except (SafetensorError, OSError, ValueError) as e:
            raise LLMKitError(f"cannot read {folder / WEIGHTS_FILE}: {e}") from None
        feats = config.get("features", {})
        weight, bias = tensors.get("weight"), tensors.get("bias")
        if weight is None or bias is None or weight.shape != (feats.get("dim"),) or bias.shape != (1,):
            raise LLMKitError(f"{folder / WEIGHTS_FILE}: expected 'weight' ({feats.get('dim')},) and 'bias' (1,)")
        return cls(weight, float(bias[0]), feats.get("ngrams", 2), config)


# --- llmkit data quality-train -----------------------------------------------------------------
def _read(sources: list[str], text_field: str, text_unit: TextUnit, max_docs: Optional[int]) -> Iterator[str]:
    docs = iter_documents(sources, text_field=text_field, text_unit=text_unit)  # checks paths now

    def texts() -> Iterator[str]:
        for i, doc in enumerate(docs):
            if max_docs is not None and i >= max_docs:
                break
            yield doc.text
    return texts()


def _metrics(p: np.ndarray, y: np.ndarray) -> dict:
    if len(y) == 0:
        return {}
    pred = p >= 0.5
    yb = y.astype(bool)
    recall_ref = float(pred[yb].mean()) if yb.any() else float("nan")
    recall_corpus = float((~pred[~yb]).mean()) if (~yb).any() else float("nan")
    eps = 1e-12
    loss = -np.mean(np.where(yb, np.log(p + eps), np.log(1 - p + eps)))
    return {"docs": int(len(y)), "reference_docs": int(yb.sum()), "corpus_docs": int((~yb).sum()),
            "accuracy": round(float((pred == yb).mean()), 6),
            "balanced_accuracy": round((recall_ref + recall_corpus) / 2, 6),
            "auc": round(roc_auc(p, y), 6), "log_loss": round(float(loss), 6)}


def _histogram(p: np.ndarray) -> list[int]:
    return np.histogram(p, bins=HISTOGRAM_BINS, range=(0.0, 1.0))[0].tolist()


def quality_train(reference: list[str], corpus: list[str], out: str, text_field: str = "text",
                  text_unit: TextUnit = "file", val_fraction: float = 0.1, dim: int = 2**20, ngrams: int = 2,
                  epochs: int = 5, seed: int = 0, max_docs: Optional[int] = None, overwrite: bool = False) -> dict:
    """Train a quality classifier: reference text (good) against the corpus to be filtered.

    As GPT-3's Common Crawl filter (Brown et al. 2020, appendix A): a logistic regression on
    hashed word n-grams, here class-balanced and trained by Adagrad. Documents are held out at
    random (by `seed`) from each side for the held-out accuracy and ROC AUC. Writes
    OUT/model.safetensors and OUT/config.json (settings, counts, metrics, score histograms);
    `llmkit data curate --quality_model OUT` then removes documents scoring below its threshold.
    Every document's features are held in memory (about 8 bytes per distinct n-gram of each):
    `max_docs` bounds that for a large corpus.

    Args:
        reference: files or folders of high-quality text (label 1: e.g. Wikipedia, books, curated prose).
        corpus: files or folders of the text to be filtered (label 0: e.g. raw web text).
        out: output folder for the classifier.
        text_field: the JSONL/JSON/Parquet/CSV field holding the text.
        text_unit: what a document is in plain-text files: "file", "paragraph" or "line".
        val_fraction: fraction of each side's documents held out for the reported metrics (0: none).
        dim: number of hash buckets (weights) of the n-gram features.
        ngrams: longest word n-gram used as a feature (1 = words only; 2 adds word pairs).
        epochs: passes over the training documents.
        seed: seed of the held-out split and of the order of training examples.
        max_docs: read at most this many documents from each side (the first ones).
        overwrite: replace a classifier already in OUT.

    Returns:
        The config written to OUT/config.json.
    """
    from llmkit.progress import progress

    if not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
        raise LLMKitError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if max_docs is not None and (not isinstance(max_docs, int) or max_docs < 1):
        raise LLMKitError(f"max_docs must be a positive integer, got {max_docs!r}")
    lr, l2, batch_size = LR, L2, BATCH_SIZE
    _check_settings(dim, ngrams, epochs, lr, l2, batch_size)
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise LLMKitError(f"output path '{out_dir}' exists and is not a folder")
    if (out_dir / CONFIG_FILE).exists() and not overwrite:
        raise LLMKitError(f"'{out_dir}' already holds a quality classifier; pass --overwrite to replace it")
    # Both sides' paths are checked before either is read.
    sides = {"reference": _read(reference, text_field, text_unit, max_docs),
             "corpus": _read(corpus, text_field, text_unit, max_docs)}

    t0 = time.perf_counter()
    rows, labels, chars = _Rows(), [], 0
    for label, (name, texts) in zip((1, 0), sides.items()):
        n0 = len(rows)
        with progress(total=max_docs, desc=f"reading {name}", unit="docs") as bar:
            for text in texts:
                rows.append(*featurize(text, dim, ngrams))
                labels.append(label)
                chars += len(text)
                bar.update(1)
        if len(rows) == n0:
            src = reference if label else corpus
            raise LLMKitError(f"no documents in the {name} sources ({', '.join(map(str, src))}): "
                              f"check --text_field ('{text_field}') and --text_unit ('{text_unit}')")
    read_s = time.perf_counter() - t0
    y = np.array(labels, dtype=np.int8)

    # Held-out documents: an exact, seeded fraction of each side (at least one when asked for).
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(y), dtype=bool)
    for label in (1, 0):
        members = np.flatnonzero(y == label)
        k = int(round(len(members) * val_fraction))
        if val_fraction > 0 and len(members) >= 2:
            k = min(max(k, 1), len(members) - 1)
        else:
            k = 0
        is_val[rng.choice(members, size=k, replace=False)] = True
    train_rows, val_rows = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    X_train, X_val = rows.csr(train_rows), rows.csr(val_rows)
    y_train, y_val = y[train_rows], y[val_rows]

    t1 = time.perf_counter()
    steps = epochs * -(-len(train_rows) // batch_size)
    with progress(total=steps, desc="training", unit="steps") as bar:
        model = QualityClassifier._fit(X_train, y_train, dim=dim, ngrams=ngrams, epochs=epochs, lr=lr, l2=l2,
                                       batch_size=batch_size, seed=seed, bar=bar)
    train_s = time.perf_counter() - t1
    p_train, p_val = model._scores(X_train), model._scores(X_val)
    metrics = {"train": _metrics(p_train, y_train), "held_out": _metrics(p_val, y_val)}
    shown_p, shown_y = (p_val, y_val) if len(y_val) else (p_train, y_train)
    model.config.update({
        "tool": "llmkit data quality-train",
        "data": {"reference": [str(s) for s in reference], "corpus": [str(s) for s in corpus],
                 "text_field": text_field, "text_unit": text_unit, "max_docs": max_docs,
                 "reference_docs": int(y.sum()), "corpus_docs": int(len(y) - y.sum()), "chars": chars,
                 "val_fraction": val_fraction, "held_out_docs": int(len(val_rows))},
        "metrics": metrics,
        "score_histogram": {"bins": HISTOGRAM_BINS, "range": [0.0, 1.0],
                            "split": "held_out" if len(y_val) else "train",
                            "reference": _histogram(shown_p[shown_y == 1]),
                            "corpus": _histogram(shown_p[shown_y == 0])},
        "seconds": {"read_and_featurize": round(read_s, 3), "train": round(train_s, 3)},
    })
    model.save(out_dir)
    m = metrics["held_out"] or metrics["train"]
    where = "held-out" if metrics["held_out"] else "training-set"
    print(f"quality-train: {int(y.sum()):,} reference + {int(len(y) - y.sum()):,} corpus docs "
          f"({len(val_rows):,} held out), {epochs} epochs in {train_s:.1f}s: {where} accuracy {m['accuracy']:.3f}, "
          f"AUC {m['auc']:.3f} -> {out_dir / WEIGHTS_FILE}")
    return model.to_config()
