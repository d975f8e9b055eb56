"""Duplicate detection of `llmkit data curate`: the exact-duplicate key and MinHash LSH.

Exact duplicates are the same text lower-cased with whitespace collapsed (a 16-byte digest is
kept per document, never the text). Near duplicates: MinHash LSH (Broder 1997; Leskovec et al.,
"Mining of Massive Datasets", ch. 3) finds an earlier indexed document whose estimated Jaccard
similarity of word shingles is at least a threshold; only signatures and band keys are indexed.
"""

from __future__ import annotations

import hashlib
import math
from typing import Optional

import numpy as np

from llmkit.data.ngrams import ngram_hashes, word_hashes
from llmkit.errors import LLMKitError


def exact_key(text: str) -> bytes:
    """A 16-byte digest of `text` lower-cased with whitespace collapsed: equal keys, same text."""
    return hashlib.blake2b(" ".join(text.lower().split()).encode("utf-8", "surrogatepass"), digest_size=16).digest()


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
