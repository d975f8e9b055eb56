"""Stable 64-bit hashes of words and word n-grams, shared by the quality filters, MinHash
de-duplication and decontamination of `llmkit data curate`.

Every n-gram statistic works on 64-bit word hashes combined polynomially in numpy, so a
document's n-grams cost a few vector operations instead of millions of Python tuples.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

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
