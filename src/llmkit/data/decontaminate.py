"""Decontamination of `llmkit data curate`: `Decontaminator` flags documents that share an
n-gram of normalised words (13 words, as GPT-3's appendix C) with evaluation texts.

Only the evaluation sets' n-gram hashes are held (one sorted array), never their texts.
"""

from __future__ import annotations

import numpy as np

from llmkit.data import iter_documents
from llmkit.data.ngrams import ngram_hashes, normalized_words, word_hashes
from llmkit.errors import LLMKitError


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
