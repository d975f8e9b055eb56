"""`llmkit data curate`: filter, de-duplicate, decontaminate and mix a pretraining corpus.

A streaming pipeline: documents are read one at a time and each is kept or removed by the first
rule it fails, in this order:

1. `exact_duplicate`: the same text (lower-cased, whitespace collapsed) was seen before.
2. Quality heuristics of Gopher (Rae et al. 2021, appendix A.1.1 and table A1) and C4 (Raffel
   et al. 2020, sec. 2.2) kind, see `QualityFilter`: cheap statistics that remove boilerplate,
   lists, tables, spam and machine-generated repetition.
3. `contaminated`: shares an n-gram (13 words, as GPT-3's appendix C) with an evaluation set.
4. `near_duplicate`: MinHash LSH (Broder 1997; Leskovec et al., "Mining of Massive Datasets",
   ch. 3) finds an earlier kept document whose estimated Jaccard similarity of word shingles is
   at least the threshold.

Only signatures are indexed (exact-dup digests, MinHash signatures and LSH band keys, eval
n-gram hashes), never the documents. "Words" in every count are whitespace-separated words.

With `weights`, the kept documents of each source are then re-sampled to a mixture, as in the
GPT-3 (table 2.2) and Llama (table 1) data tables: source i gets weight_i of the output words,
which may mean several epochs of a small high-quality source and a sample of a large one.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import os
import re
import string
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Iterator, Optional, Union

import numpy as np

from llmkit.data import CURATE_REPORT, TextUnit, iter_documents
from llmkit.errors import LLMKitError

# --- hashing of words and n-grams ---------------------------------------------------------------
# Every n-gram statistic works on 64-bit word hashes combined polynomially in numpy, so a
# document's n-grams cost a few vector operations instead of millions of Python tuples.
_WORD_HASH: dict[str, int] = {}
_WORD_HASH_MAX = 1 << 21  # bound the cache; word frequencies are Zipfian so it stays effective
_POLY = np.uint64(0x100000001B3)  # FNV-1a 64-bit prime: odd, so multiplication mod 2^64 mixes
_WORD_RE = re.compile(r"\w+")


def word_hashes(words: list[str]) -> np.ndarray:
    """A stable 64-bit hash per word (blake2b; Python's hash() changes between runs)."""
    cache = _WORD_HASH
    if len(cache) > _WORD_HASH_MAX:
        cache.clear()
    out = np.empty(len(words), dtype=np.uint64)
    for i, w in enumerate(words):
        h = cache.get(w)
        if h is None:
            h = int.from_bytes(hashlib.blake2b(w.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
            cache[w] = h
        out[i] = h
    return out


def ngram_hashes(h: np.ndarray, n: int) -> np.ndarray:
    """Hash of each n-gram h[i:i+n] (empty when there are fewer than n words)."""
    m = len(h) - n + 1
    if m <= 0:
        return np.empty(0, dtype=np.uint64)
    g = h[:m].copy()
    for j in range(1, n):  # wraps modulo 2^64 by design
        g = g * _POLY + h[j:j + m]
    return g


def extend_ngrams(g: np.ndarray, h: np.ndarray, n: int) -> np.ndarray:
    """The n-gram hashes from the (n-1)-gram hashes `g` (as ngram_hashes(h, n), one step)."""
    m = len(h) - n + 1
    if m <= 0:
        return np.empty(0, dtype=np.uint64)
    return g[:m] * _POLY + h[n - 1:]


def normalized_words(text: str) -> list[str]:
    """Lower-cased runs of letters/digits: punctuation and spacing do not hide a duplicate."""
    return _WORD_RE.findall(text.lower())


# --- quality heuristics ---------------------------------------------------------------------------
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})  # Gopher's list
BULLETS = ("•", "●", "○", "◦", "▪", "‣", "·", "-", "*", "–", "—")
ELLIPSES = ("...", "…")
_ALPHA_RE = re.compile(r"[^\W\d_]")  # a letter in any script
_PUNCT = string.punctuation + "“”‘’«»…–—"


@dataclass(frozen=True)
class QualityFilter:
    """Gopher/C4-style document heuristics; a threshold of None disables its rule.

    Defaults are Gopher's (Rae et al. 2021, A.1.1 and table A1) except `max_digit_fraction`
    (ours: tables of numbers, logs and listings). Ratios are over whitespace-separated words,
    non-empty lines, and characters of words; stop words and n-gram repetition compare words
    lower-cased with surrounding punctuation removed.
    """

    min_words: Optional[int] = 50
    max_words: Optional[int] = 100_000
    min_mean_word_length: Optional[float] = 3.0
    max_mean_word_length: Optional[float] = 10.0
    max_symbol_word_ratio: Optional[float] = 0.1  # "#" or "..." per word
    max_bullet_line_fraction: Optional[float] = 0.9
    max_ellipsis_line_fraction: Optional[float] = 0.3
    min_alpha_word_fraction: Optional[float] = 0.8  # words with at least one letter
    max_digit_fraction: Optional[float] = 0.2
    min_stop_words: Optional[int] = 2  # distinct words of STOP_WORDS present
    max_duplicate_line_fraction: Optional[float] = 0.3
    max_duplicate_line_char_fraction: Optional[float] = 0.2
    max_top_ngram_fraction: Optional[tuple[float, ...]] = (0.20, 0.18, 0.16)  # n = 2, 3, 4
    max_duplicate_ngram_fraction: Optional[tuple[float, ...]] = (0.15, 0.14, 0.13, 0.12, 0.11, 0.10)  # n = 5..10

    RULES = ("too_few_words", "too_many_words", "mean_word_length", "symbol_word_ratio", "bullet_lines",
             "ellipsis_lines", "alpha_words", "digit_fraction", "stop_words", "duplicate_lines",
             "duplicate_line_chars", "top_ngram", "duplicate_ngram")

    def check(self, text: str, first_only: bool = True) -> list[str]:
        """Names of the rules `text` fails, in RULES order (only the first with `first_only`)."""
        failed: list[str] = []

        def fail(rule: str) -> bool:
            failed.append(rule)
            return first_only

        words = text.split()
        n = len(words)
        if self.min_words is not None and n < self.min_words and fail("too_few_words"):
            return failed
        if self.max_words is not None and n > self.max_words and fail("too_many_words"):
            return failed
        if n == 0:  # nothing below is defined for an empty document
            return failed
        lengths = np.fromiter(map(len, words), dtype=np.int64, count=n)
        chars = int(lengths.sum())
        mean_len = chars / n
        if ((self.min_mean_word_length is not None and mean_len < self.min_mean_word_length)
                or (self.max_mean_word_length is not None and mean_len > self.max_mean_word_length)) \
                and fail("mean_word_length"):
            return failed
        if self.max_symbol_word_ratio is not None:
            symbols = max(text.count("#"), text.count("...") + text.count("…"))
            if symbols / n > self.max_symbol_word_ratio and fail("symbol_word_ratio"):
                return failed
        lines = [line.strip() for line in text.split("\n")]
        lines = [line for line in lines if line]
        if self.max_bullet_line_fraction is not None:
            bullets = sum(line.startswith(BULLETS) for line in lines)
            if bullets / len(lines) > self.max_bullet_line_fraction and fail("bullet_lines"):
                return failed
        if self.max_ellipsis_line_fraction is not None:
            ellipsis = sum(line.endswith(ELLIPSES) for line in lines)
            if ellipsis / len(lines) > self.max_ellipsis_line_fraction and fail("ellipsis_lines"):
                return failed
        if self.min_alpha_word_fraction is not None:
            alpha = sum(1 for w in words if _ALPHA_RE.search(w))
            if alpha / n < self.min_alpha_word_fraction and fail("alpha_words"):
                return failed
        if self.max_digit_fraction is not None:
            digits = sum(map(text.count, "0123456789"))
            if digits / chars > self.max_digit_fraction and fail("digit_fraction"):
                return failed
        # Word identity for stop words and repetition: case and surrounding punctuation ignored,
        # so "Thou." and "thou" are one word (an n-gram repeated at a line end still counts).
        plain = [p for p in (w.strip(_PUNCT).lower() for w in words) if p]
        if self.min_stop_words is not None:
            present = STOP_WORDS.intersection(plain)
            if len(present) < self.min_stop_words and fail("stop_words"):
                return failed
        if self.max_duplicate_line_fraction is not None or self.max_duplicate_line_char_fraction is not None:
            counts = Counter(lines)
            dup_lines = sum(c - 1 for c in counts.values())
            dup_chars = sum((c - 1) * len(line) for line, c in counts.items())
            if self.max_duplicate_line_fraction is not None \
                    and dup_lines / len(lines) > self.max_duplicate_line_fraction and fail("duplicate_lines"):
                return failed
            if self.max_duplicate_line_char_fraction is not None \
                    and dup_chars / sum(map(len, lines)) > self.max_duplicate_line_char_fraction \
                    and fail("duplicate_line_chars"):
                return failed
        if (self.max_top_ngram_fraction or self.max_duplicate_ngram_fraction) and plain:
            h = word_hashes(plain)
            plain_lengths = np.fromiter(map(len, plain), dtype=np.int64, count=len(plain))
            plain_chars = int(plain_lengths.sum())
            if self.max_top_ngram_fraction and self._top_ngram(h, plain_lengths, plain_chars) and fail("top_ngram"):
                return failed
            if self.max_duplicate_ngram_fraction and self._duplicate_ngram(h, plain_lengths, plain_chars) \
                    and fail("duplicate_ngram"):
                return failed
        return failed

    def _top_ngram(self, h: np.ndarray, lengths: np.ndarray, chars: int) -> bool:
        """Gopher: the characters covered by the most frequent n-gram (n = 2, 3, 4) exceed a fraction."""
        g = h
        for n, limit in enumerate(self.max_top_ngram_fraction, start=2):
            g = extend_ngrams(g, h, n)
            if len(g) == 0:
                return False
            _, first, counts = np.unique(g, return_index=True, return_counts=True)
            top = int(np.argmax(counts))
            if counts[top] == 1:
                return False  # no n-gram repeats, so no longer one does
            ngram_chars = int(lengths[first[top]:first[top] + n].sum())
            if counts[top] * ngram_chars / chars > limit:
                return True
        return False

    def _duplicate_ngram(self, h: np.ndarray, lengths: np.ndarray, chars: int) -> bool:
        """Gopher: the characters inside n-grams that occur more than once (overlaps counted
        once) exceed a fraction, for n = 5..10."""
        limits = list(self.max_duplicate_ngram_fraction)
        g = ngram_hashes(h, 4)
        for k, limit in enumerate(limits):
            n = 5 + k
            g = extend_ngrams(g, h, n)
            if len(g) == 0:
                return False
            _, inverse, counts = np.unique(g, return_inverse=True, return_counts=True)
            starts = np.flatnonzero(counts[inverse] > 1)
            if len(starts) == 0:
                return False  # no n-gram repeats, so no longer one does
            # Mark words covered by any repeated n-gram: +1 at its start, -1 after its end.
            delta = np.zeros(len(h) + 1, dtype=np.int64)
            np.add.at(delta, starts, 1)
            np.add.at(delta, starts + n, -1)
            covered = np.cumsum(delta[:-1]) > 0
            fraction = int(lengths[covered].sum()) / chars
            if fraction > limit:
                return True
            # A repeated (n+1)-gram is made of repeated n-grams: coverage only shrinks with n.
            if fraction <= min(limits[k + 1:], default=math.inf):
                return False
        return False


# --- MinHash LSH ----------------------------------------------------------------------------------
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # renamed in numpy 2.0


def lsh_bands(threshold: float, num_perm: int, fp_weight: float = 0.1) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimising the weighted false-positive plus
    false-negative probability mass around `threshold`.

    A pair with Jaccard s shares at least one band with probability 1 - (1 - s^r)^b, an S-curve
    whose midpoint is about (1/b)^(1/r) (Leskovec et al., sec. 3.4.2). Candidates are verified
    against the full signature, so a false positive costs one comparison while a false negative
    is a duplicate kept: false negatives weigh (1 - fp_weight) / fp_weight = 9x more. For 0.8
    and 128 permutations that gives 14 bands of 9 rows: a 0.9-similar pair is found with
    probability 0.999 (equal weights: 9 x 14, and 0.90).
    """
    s = np.linspace(0.0, 1.0, 2001)
    below, above = s <= threshold, s > threshold
    best = (math.inf, 1, num_perm)
    for b in range(1, num_perm + 1):
        r = num_perm // b
        p = 1.0 - (1.0 - s ** r) ** b
        cost = fp_weight * _trapezoid(p[below], s[below]) + (1 - fp_weight) * _trapezoid(1.0 - p[above], s[above])
        if cost < best[0]:
            best = (cost, b, r)
    return best[1], best[2]


class MinHashLSH:
    """Near-duplicate index over word-shingle sets.

    Signature: for each of `num_perm` hash functions h_i(x) = (a_i x + b_i mod 2^64) >> 32
    (multiply-shift, Dietzfelbinger et al. 1997), the minimum over the document's shingles.
    Two signatures agree in one position with probability = Jaccard similarity of the sets.
    LSH: signatures are cut into `bands` bands of `rows`; documents sharing any band are
    candidates, confirmed when the fraction of equal signature positions reaches `threshold`.
    """

    def __init__(self, num_perm: int = 128, threshold: float = 0.8, bands: Optional[int] = None,
                 shingle_size: int = 5, seed: int = 1):
        if num_perm < 2:
            raise LLMKitError(f"num_perm must be >= 2, got {num_perm}")
        if not 0 < threshold <= 1:
            raise LLMKitError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
        if bands is not None and not 1 <= bands <= num_perm:
            raise LLMKitError(f"bands must be in [1, num_perm={num_perm}], got {bands}")
        self.num_perm, self.threshold, self.shingle_size = num_perm, threshold, shingle_size
        self.bands, self.rows = (bands, num_perm // bands) if bands else lsh_bands(threshold, num_perm)
        rng = np.random.default_rng(seed)
        self._a = (rng.integers(0, 2**63, size=(num_perm, 1), dtype=np.uint64) << np.uint64(1)) | np.uint64(1)
        self._b = rng.integers(0, 2**63, size=(num_perm, 1), dtype=np.uint64)
        self._tables: list[dict[bytes, list[int]]] = [{} for _ in range(self.bands)]
        self._sigs = np.empty((1024, num_perm), dtype=np.uint32)
        self.size = 0

    def signature(self, words: list[str]) -> np.ndarray:
        h = word_hashes(words)
        shingles = ngram_hashes(h, min(self.shingle_size, len(h))) if len(h) else np.zeros(1, dtype=np.uint64)
        sig = np.full(self.num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)
        for i in range(0, len(shingles), 4096):  # bounds the (num_perm, chunk) temporary
            x = shingles[None, i:i + 4096]
            hashed = ((self._a * x + self._b) >> np.uint64(32)).astype(np.uint32)  # (num_perm, chunk)
            np.minimum(sig, hashed.min(axis=1), out=sig)
        return sig

    def _keys(self, sig: np.ndarray) -> list[bytes]:
        r = self.rows
        return [sig[i * r:(i + 1) * r].tobytes() for i in range(self.bands)]

    def query(self, sig: np.ndarray) -> Optional[int]:
        """Index of an indexed document similar to `sig` (estimated Jaccard >= threshold), or None."""
        seen: set[int] = set()
        for table, key in zip(self._tables, self._keys(sig)):
            for j in table.get(key, ()):
                if j not in seen:
                    seen.add(j)
                    if np.mean(self._sigs[j] == sig) >= self.threshold:
                        return j
        return None

    def insert(self, sig: np.ndarray) -> int:
        if self.size == len(self._sigs):
            self._sigs = np.concatenate([self._sigs, np.empty_like(self._sigs)])
        self._sigs[self.size] = sig
        for table, key in zip(self._tables, self._keys(sig)):
            table.setdefault(key, []).append(self.size)
        self.size += 1
        return self.size - 1


# --- decontamination ------------------------------------------------------------------------------
class Decontaminator:
    """Flags documents sharing any n-gram of normalised words with evaluation texts (GPT-3, app. C)."""

    def __init__(self, files: list[str], n: int = 13):
        if n < 1:
            raise LLMKitError(f"decontamination n-gram size must be >= 1, got {n}")
        self.n = n
        self.eval_docs = self.short_docs = 0
        grams = []
        # text_field=None: all string fields of a record (question, choices, answer...).
        for doc in iter_documents(files, text_field=None, text_unit="file"):
            self.eval_docs += 1
            words = normalized_words(doc.text)
            if len(words) < n:
                self.short_docs += 1  # cannot contain an n-gram; reported, not silently ignored
                continue
            grams.append(np.unique(ngram_hashes(word_hashes(words), n)))
        self.ngrams = np.unique(np.concatenate(grams)) if grams else np.empty(0, dtype=np.uint64)

    def contaminated(self, words: list[str]) -> bool:
        if len(self.ngrams) == 0 or len(words) < self.n:
            return False
        g = ngram_hashes(word_hashes(words), self.n)
        pos = np.minimum(np.searchsorted(self.ngrams, g), len(self.ngrams) - 1)
        return bool(np.any(self.ngrams[pos] == g))


# --- mixing ---------------------------------------------------------------------------------------
def parse_weights(weights: list[Union[float, str]], sources: list[str]) -> list[float]:
    """`[0.7, 0.3]` (in source order) or `["web:0.7", "books:0.3"]`, normalised to sum 1."""
    named = [w for w in weights if isinstance(w, str) and ":" in w]
    values: list[float]
    if named:
        if len(named) != len(weights):
            raise LLMKitError("weights: give all as SOURCE:WEIGHT or all as numbers in source order")
        table = {}
        for w in named:
            src, _, value = w.rpartition(":")  # rpartition: a source path may itself hold ':'
            if src not in sources:
                raise LLMKitError(f"weights: '{src}' is not one of the sources ({', '.join(sources)})")
            table[src] = _weight_value(value, w)
        missing = [s for s in sources if s not in table]
        if missing:
            raise LLMKitError(f"weights: no weight for source(s) {', '.join(missing)}")
        values = [table[s] for s in sources]
    else:
        if len(weights) != len(sources):
            raise LLMKitError(f"weights: got {len(weights)} weight(s) for {len(sources)} source(s)")
        values = [_weight_value(w, str(w)) for w in weights]
    total = sum(values)
    if total <= 0:
        raise LLMKitError("weights: at least one weight must be positive")
    return [v / total for v in values]


def _weight_value(value: Union[float, str], shown: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise LLMKitError(f"weights: '{shown}' is not a number") from None
    if not math.isfinite(v) or v < 0:
        raise LLMKitError(f"weights: '{shown}' must be a finite number >= 0")
    return v


def _unit_hash(*parts: object) -> float:
    """A deterministic uniform number in [0, 1) from the parts (seeded sampling decisions)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def _source_stream(path: Path, index: int, multiplier: float, seed: int) -> Iterator[tuple[dict, int]]:
    """(record, words) of one source re-sampled `multiplier` times: floor(m) full passes, then
    each document once more with probability frac(m) (GPT-3's "epochs elapsed")."""
    full, frac = int(math.floor(multiplier)), multiplier - math.floor(multiplier)
    for epoch in range(full + (frac > 0)):
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if epoch < full or _unit_hash(seed, index, epoch, i) < frac:
                    record = json.loads(line)
                    yield record, record.pop("_words")


# --- output ---------------------------------------------------------------------------------------
class _JsonlShards:
    """curated_00000.jsonl, curated_00001.jsonl, ... of at most `shard_docs` documents each."""

    def __init__(self, out: Path, shard_docs: int):
        self.out, self.shard_docs = out, shard_docs
        self.files: list[str] = []
        self.docs = self.words = 0
        self._f: Optional[IO[str]] = None
        self._n = 0

    def write(self, text: str, source: str, words: int) -> None:
        if self._f is None or self._n == self.shard_docs:
            self.close()
            name = f"curated_{len(self.files):05d}.jsonl"
            self._f = open(self.out / name, "w", encoding="utf-8")
            self.files.append(name)
            self._n = 0
        self._f.write(json.dumps({"text": text, "source": source}, ensure_ascii=False) + "\n")
        self._n += 1
        self.docs += 1
        self.words += words

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


@dataclass
class _Tally:
    docs: int = 0
    words: int = 0

    def add(self, words: int) -> None:
        self.docs += 1
        self.words += words


@dataclass
class _SourceStats:
    docs_in: _Tally = field(default_factory=_Tally)
    kept: _Tally = field(default_factory=_Tally)
    removed: dict[str, _Tally] = field(default_factory=dict)


def curate(sources: list[str], out: str, weights: Optional[list[Union[float, str]]] = None,
           decontaminate: Optional[list[str]] = None, text_field: str = "text", text_unit: TextUnit = "file",
           seed: int = 0, total_words: Optional[int] = None,
           quality: bool = True, min_words: Optional[int] = 50, max_words: Optional[int] = 100_000,
           min_mean_word_length: Optional[float] = 3.0, max_mean_word_length: Optional[float] = 10.0,
           max_symbol_word_ratio: Optional[float] = 0.1, max_bullet_line_fraction: Optional[float] = 0.9,
           max_ellipsis_line_fraction: Optional[float] = 0.3, min_alpha_word_fraction: Optional[float] = 0.8,
           max_digit_fraction: Optional[float] = 0.2, min_stop_words: Optional[int] = 2,
           max_duplicate_line_fraction: Optional[float] = 0.3,
           max_duplicate_line_char_fraction: Optional[float] = 0.2,
           max_top_ngram_fraction: Optional[tuple[float, ...]] = (0.20, 0.18, 0.16),
           max_duplicate_ngram_fraction: Optional[tuple[float, ...]] = (0.15, 0.14, 0.13, 0.12, 0.11, 0.10),
           dedup: bool = True, near_dedup: bool = True, near_dup_threshold: float = 0.8, num_perm: int = 128,
           bands: Optional[int] = None, shingle_size: int = 5, decontaminate_ngram: int = 13,
           shard_docs: int = 100_000, examples: int = 2, overwrite: bool = False) -> dict:
    """Filter, de-duplicate, decontaminate and mix text sources into curated JSONL shards.

    Writes out/curated_*.jsonl ({"text", "source"} per line; `llmkit data prepare OUT` reads
    them) and out/report.json + out/report.md (documents and whitespace-separated words in,
    kept and removed per rule and per source, with example removals). A rule's threshold set to
    null disables it.

    Args:
        sources: text files, JSONL/JSON/Parquet files or folders (as for `llmkit data prepare`).
        out: output folder.
        weights: mixture weights, one number per source in order or SOURCE:WEIGHT entries;
            normalised to sum 1. Sources are then up- or down-sampled deterministically to these
            shares of the output words. Default: every kept document once.
        decontaminate: evaluation files (any supported format; all string fields of a record are
            used) whose n-grams must not appear in the output.
        text_field: field (JSONL/JSON) or column (Parquet) holding the text.
        text_unit: document unit of text files: "file", "paragraph" (blank-line separated) or "line".
        seed: seed of the mixture sampling.
        total_words: with weights, the size of the mixture in words (default: all kept words).
        quality: apply the quality heuristics below (false: only dedup/decontamination/mixing).
        min_words: fewest words in a document.
        max_words: most words in a document.
        min_mean_word_length: smallest mean word length (characters).
        max_mean_word_length: largest mean word length (characters).
        max_symbol_word_ratio: most "#" (or "..." / "…") per word.
        max_bullet_line_fraction: most lines starting with a bullet.
        max_ellipsis_line_fraction: most lines ending with an ellipsis.
        min_alpha_word_fraction: fewest words containing a letter.
        max_digit_fraction: most digits per character of words.
        min_stop_words: fewest distinct English stop words of (the, be, to, of, and, that, have, with).
        max_duplicate_line_fraction: most lines that repeat an earlier line.
        max_duplicate_line_char_fraction: most characters in repeated lines.
        max_top_ngram_fraction: for n = 2, 3, 4: most characters covered by the most frequent n-gram.
        max_duplicate_ngram_fraction: for n = 5..10: most characters inside repeated n-grams.
        dedup: remove exact duplicates (text compared lower-cased with whitespace collapsed).
        near_dedup: remove near duplicates with MinHash LSH.
        near_dup_threshold: Jaccard similarity of word shingles from which documents are near duplicates.
        num_perm: MinHash signature length.
        bands: LSH bands (rows = num_perm // bands); default: the best for the threshold.
        shingle_size: words per shingle for MinHash.
        decontaminate_ngram: n-gram length (words) for decontamination (GPT-3: 13).
        shard_docs: documents per output JSONL file.
        examples: example removed documents kept per rule in the report.
        overwrite: replace an existing curation in `out`.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    if isinstance(sources, str):
        sources = [sources]
    sources = [str(s) for s in sources]
    if len(set(sources)) != len(sources):
        raise LLMKitError("a source is listed twice")
    if shard_docs < 1:
        raise LLMKitError(f"shard_docs must be >= 1, got {shard_docs}")
    mix = parse_weights(weights, sources) if weights else None
    quality_filter = QualityFilter(
        min_words=min_words, max_words=max_words, min_mean_word_length=min_mean_word_length,
        max_mean_word_length=max_mean_word_length, max_symbol_word_ratio=max_symbol_word_ratio,
        max_bullet_line_fraction=max_bullet_line_fraction, max_ellipsis_line_fraction=max_ellipsis_line_fraction,
        min_alpha_word_fraction=min_alpha_word_fraction, max_digit_fraction=max_digit_fraction,
        min_stop_words=min_stop_words, max_duplicate_line_fraction=max_duplicate_line_fraction,
        max_duplicate_line_char_fraction=max_duplicate_line_char_fraction,
        max_top_ngram_fraction=tuple(max_top_ngram_fraction) if max_top_ngram_fraction else None,
        max_duplicate_ngram_fraction=tuple(max_duplicate_ngram_fraction) if max_duplicate_ngram_fraction else None,
    ) if quality else None
    lsh = MinHashLSH(num_perm, near_dup_threshold, bands, shingle_size) if near_dedup else None
    docs = iter_documents(sources, text_field=text_field, text_unit=text_unit)  # checks every path now
    out_dir = Path(out)
    if (out_dir / CURATE_REPORT).exists() and not overwrite:
        raise LLMKitError(f"'{out_dir}' already holds a curated corpus; pass --overwrite to replace it")
    if out_dir.exists() and not out_dir.is_dir():
        raise LLMKitError(f"output path '{out_dir}' exists and is not a folder")
    decon = Decontaminator(decontaminate, decontaminate_ngram) if decontaminate else None
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in [out_dir / CURATE_REPORT, out_dir / "report.md", *out_dir.glob("curated_*.jsonl")]:
        old.unlink(missing_ok=True)

    rules = ["exact_duplicate", *(QualityFilter.RULES if quality_filter else ()),
             *(["contaminated"] if decon else []), *(["near_duplicate"] if lsh else [])]
    stats = {s: _SourceStats(removed={r: _Tally() for r in rules}) for s in sources}
    removed_examples: dict[str, list[dict]] = {r: [] for r in rules}
    seen: set[bytes] = set()
    writer = _JsonlShards(out_dir, shard_docs)
    tmp_files: dict[str, IO[str]] = {}
    tmp_dir = out_dir / ".curate_tmp"
    if mix:
        tmp_dir.mkdir(exist_ok=True)
        tmp_files = {s: open(tmp_dir / f"source_{i}.jsonl", "w", encoding="utf-8") for i, s in enumerate(sources)}

    try:
        with tqdm(docs, desc="curating", unit=" docs", disable=None) as bar:
            for doc in bar:
                text = doc.text
                n_words = len(text.split())
                st = stats[doc.source]
                st.docs_in.add(n_words)
                rule: Optional[str] = None
                if dedup:
                    digest = hashlib.blake2b(" ".join(text.lower().split()).encode("utf-8", "surrogatepass"),
                                             digest_size=16).digest()
                    if digest in seen:
                        rule = "exact_duplicate"
                    else:
                        seen.add(digest)
                if rule is None and quality_filter is not None:
                    failed = quality_filter.check(text)
                    rule = failed[0] if failed else None
                norm = normalized_words(text) if (rule is None and (decon or lsh)) else []
                if rule is None and decon is not None and decon.contaminated(norm):
                    rule = "contaminated"
                if rule is None and lsh is not None:
                    sig = lsh.signature(norm)
                    if lsh.query(sig) is not None:
                        rule = "near_duplicate"
                    else:
                        lsh.insert(sig)
                if rule is not None:
                    st.removed[rule].add(n_words)
                    if len(removed_examples[rule]) < examples:
                        removed_examples[rule].append({"location": doc.location,
                                                       "text": text[:300] + ("…" if len(text) > 300 else "")})
                    continue
                st.kept.add(n_words)
                if mix:
                    tmp_files[doc.source].write(json.dumps({"text": text, "source": doc.source, "_words": n_words},
                                                           ensure_ascii=False) + "\n")
                else:
                    writer.write(text, doc.source, n_words)
        for f in tmp_files.values():
            f.close()

        total_in = sum(s.docs_in.docs for s in stats.values())
        if total_in == 0:
            raise LLMKitError(f"empty corpus: no text in {', '.join(sources)}")
        mixing, mix_error = None, None
        if mix:
            try:
                mixing = _mix(tmp_dir, sources, stats, mix, total_words, seed, writer)
            except LLMKitError as e:  # still write the report: it shows what removed the documents
                mix_error = e
    finally:
        writer.close()
        for f in tmp_files.values():
            f.close()
        if tmp_dir.exists():
            for f in tmp_dir.iterdir():
                f.unlink()
            tmp_dir.rmdir()

    report = _report(sources, stats, rules, removed_examples, writer, mixing, mix_error, decon, lsh,
                     quality_filter, seed=seed, text_field=text_field, text_unit=text_unit, dedup=dedup,
                     seconds=time.perf_counter() - t0)
    (out_dir / "report.md").write_text(_markdown(report), encoding="utf-8")
    tmp_report = out_dir / (CURATE_REPORT + ".tmp")
    tmp_report.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp_report, out_dir / CURATE_REPORT)  # last: marks the folder as a finished curation
    if mix_error is not None:
        raise LLMKitError(f"{mix_error} (see {out_dir / 'report.md'})")

    t = report["totals"]
    print(f"curated {t['docs_in']:,} docs ({t['words_in']:,} words): kept {t['docs_kept']:,} docs "
          f"({t['words_kept']:,} words), wrote {writer.docs:,} docs ({writer.words:,} words) to "
          f"{len(writer.files)} file(s) in {report['seconds']:.1f}s -> {out_dir}")
    if writer.docs == 0:
        print("warning: every document was removed; see report.md", file=sys.stderr)
    return report


def _mix(tmp_dir: Path, sources: list[str], stats: dict[str, _SourceStats], mix: list[float],
         total_words: Optional[int], seed: int, writer: _JsonlShards) -> dict:
    kept = {s: stats[s].kept.words for s in sources}
    total = total_words if total_words is not None else sum(kept.values())
    if total <= 0:
        raise LLMKitError("nothing to mix: curation removed every document")
    targets = {s: w * total for s, w in zip(sources, mix)}
    for s in sources:
        if targets[s] > 0 and kept[s] == 0:
            raise LLMKitError(f"source '{s}' has weight {mix[sources.index(s)]:.3g} but no document survived curation")
    multipliers = {s: (targets[s] / kept[s] if kept[s] else 0.0) for s in sources}
    streams = {s: _source_stream(tmp_dir / f"source_{i}.jsonl", i, multipliers[s], seed)
               for i, s in enumerate(sources) if multipliers[s] > 0}
    # Interleave: always take the next document from the source furthest behind its target share,
    # so any prefix of the output already has about the requested mixture.
    written = {s: _Tally() for s in sources}
    heap = [(0.0, i, s) for i, s in enumerate(sources) if s in streams]
    heapq.heapify(heap)
    while heap:
        _, i, s = heapq.heappop(heap)
        item = next(streams[s], None)
        if item is None:
            continue
        record, words = item
        writer.write(record["text"], s, words)
        written[s].add(words)
        heapq.heappush(heap, (written[s].words / targets[s], i, s))
    out_words = sum(t.words for t in written.values()) or 1
    return {s: {"weight": w, "words_kept": kept[s], "multiplier": multipliers[s],
                "docs_out": written[s].docs, "words_out": written[s].words,
                "share_out": written[s].words / out_words} for s, w in zip(sources, mix)}


def _report(sources, stats, rules, removed_examples, writer, mixing, mix_error, decon, lsh, quality_filter,
            **settings) -> dict:
    def tally(t: _Tally) -> dict:
        return {"docs": t.docs, "words": t.words}

    per_source = {}
    for s in sources:
        st = stats[s]
        per_source[s] = {"docs_in": st.docs_in.docs, "words_in": st.docs_in.words, "docs_kept": st.kept.docs,
                         "words_kept": st.kept.words, "removed": {r: tally(t) for r, t in st.removed.items() if t.docs}}
    per_rule = {}
    for r in rules:
        docs = sum(stats[s].removed[r].docs for s in sources)
        words = sum(stats[s].removed[r].words for s in sources)
        per_rule[r] = {"docs": docs, "words": words, "examples": removed_examples[r]}
    totals = {k: sum(v[k] for v in per_source.values()) for k in ("docs_in", "words_in", "docs_kept", "words_kept")}
    totals["docs_removed"] = totals["docs_in"] - totals["docs_kept"]
    totals["words_removed"] = totals["words_in"] - totals["words_kept"]
    seconds = settings.pop("seconds")
    settings["quality"] = asdict(quality_filter) if quality_filter else None
    if lsh is not None:
        settings["near_dedup"] = {"threshold": lsh.threshold, "num_perm": lsh.num_perm, "bands": lsh.bands,
                                  "rows": lsh.rows, "shingle_size": lsh.shingle_size}
    if decon is not None:
        settings["decontamination"] = {"ngram": decon.n, "eval_docs": decon.eval_docs,
                                       "eval_docs_shorter_than_ngram": decon.short_docs,
                                       "eval_ngrams": int(len(decon.ngrams))}
    return {
        "tool": "llmkit data curate",
        "version": 1,
        "unit": "words = whitespace-separated words",
        "sources": sources,
        "totals": totals,
        "per_source": per_source,
        "per_rule": per_rule,
        "mixing": mixing,
        "mixing_error": str(mix_error) if mix_error else None,
        "output": {"files": writer.files, "docs": writer.docs, "words": writer.words},
        "settings": settings,
        "seconds": round(seconds, 3),
    }


def _markdown(report: dict) -> str:
    t = report["totals"]
    def pct(a: int, b: int) -> str:
        return f"{100 * a / b:.1f}%" if b else "-"

    lines = ["# Curation report", "",
             f"Words are whitespace-separated words. {t['docs_in']:,} documents in, {t['docs_kept']:,} kept "
             f"({pct(t['docs_kept'], t['docs_in'])}); {t['words_in']:,} words in, {t['words_kept']:,} kept "
             f"({pct(t['words_kept'], t['words_in'])}).", "",
             "## Per source", "", "| source | docs in | docs kept | words in | words kept |",
             "|---|---:|---:|---:|---:|"]
    for s, v in report["per_source"].items():
        lines.append(f"| `{s}` | {v['docs_in']:,} | {v['docs_kept']:,} | {v['words_in']:,} | {v['words_kept']:,} |")
    lines += ["", "## Removed per rule (first rule failed)", "", "| rule | docs | words | % of docs in |",
              "|---|---:|---:|---:|"]
    for r, v in report["per_rule"].items():
        lines.append(f"| {r} | {v['docs']:,} | {v['words']:,} | {pct(v['docs'], t['docs_in'])} |")
    if report["mixing_error"]:
        lines += ["", f"**Mixing failed:** {report['mixing_error']}. No output was written."]
    if report["mixing"]:
        lines += ["", "## Mixture", "",
                  "| source | weight | words kept | multiplier | docs out | words out | share out |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for s, v in report["mixing"].items():
            lines.append(f"| `{s}` | {v['weight']:.3f} | {v['words_kept']:,} | {v['multiplier']:.3f} | "
                         f"{v['docs_out']:,} | {v['words_out']:,} | {v['share_out']:.3f} |")
    o = report["output"]
    files = ", ".join(o["files"]) or "no files"
    lines += ["", f"Output: {o['docs']:,} documents, {o['words']:,} words in {files}.", ""]
    examples = [(r, v["examples"]) for r, v in report["per_rule"].items() if v["examples"]]
    if examples:
        lines += ["## Examples of removed documents", ""]
        for r, exs in examples:
            lines.append(f"### {r}")
            for ex in exs:
                snippet = ex["text"].replace("\n", " ⏎ ").replace("|", "\\|")
                lines.append(f"- `{ex['location']}`: {snippet}")
            lines.append("")
    return "\n".join(lines)
