"""Word normalisation of the n-gram hashing (`data.ngrams`)."""

from __future__ import annotations

from llmkit.data.ngrams import normalized_words


def test_normalized_words():
    assert normalized_words("Hello, WORLD! It's 2024.") == ["hello", "world", "it", "s", "2024"]
