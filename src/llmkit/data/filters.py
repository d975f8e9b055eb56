"""Document quality heuristics of `llmkit data curate`: `QualityFilter`.

Cheap statistics of the kind of Gopher (Rae et al. 2021, appendix A.1.1 and table A1) and C4
(Raffel et al. 2020, sec. 2.2) that remove boilerplate, lists, tables, spam and
machine-generated repetition. "Words" are whitespace-separated words.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Optional

import numpy as np

from llmkit.data.ngrams import extend_ngrams, ngram_hashes, word_hashes

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
