"""The quality heuristics of `llmkit data curate` (`data.filters.QualityFilter`): a good document
passes, each rule alone removes its crafted document, thresholds are parameters. The document
makers here are shared with the curation and dedup tests."""

from __future__ import annotations

import random

import pytest

from llmkit.data.filters import QualityFilter

CONS, VOW = "bdfgklmnprstvz", "aeiou"


def pseudo_words(n: int, seed: int, syllables: tuple[int, int] = (2, 3)) -> list[str]:
    """n distinct pronounceable letter-only words: text without accidental repetition."""
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        w = "".join(rng.choice(CONS) + rng.choice(VOW) for _ in range(rng.randint(*syllables)))
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def with_stop_words(words: list[str]) -> list[str]:
    words = list(words)
    words[3], words[17] = "the", "and"
    return words


def lines_of(words: list[str], per_line: int = 8) -> str:
    return "\n".join(" ".join(words[i:i + per_line]).capitalize() + "." for i in range(0, len(words), per_line))


def good(n: int = 80, seed: int = 0) -> str:
    return lines_of(with_stop_words(pseudo_words(n, seed)))


def bad_docs() -> dict[str, str]:
    """For each rule, a document that fails that rule and no other (default thresholds)."""
    cases = {"too_few_words": good(30, 100)}
    cases["mean_word_length"] = lines_of(with_stop_words(pseudo_words(80, 1, (6, 7))))
    w = with_stop_words(pseudo_words(80, 2))
    for i in list(range(0, 80, 8)) + [5]:
        w[i] = "#" + w[i]
    cases["symbol_word_ratio"] = lines_of(w)
    cases["bullet_lines"] = "\n".join("• " + line for line in good(80, 3).split("\n"))
    lines = good(80, 4).split("\n")
    for i in (1, 3, 5, 7):
        lines[i] = lines[i][:-1] + "…"
    cases["ellipsis_lines"] = "\n".join(lines)
    w = with_stop_words(pseudo_words(80, 5))
    for i in range(1, 80, 3):
        w[i] = "&"
    cases["alpha_words"] = lines_of(w + pseudo_words(10, 55))
    w = with_stop_words(pseudo_words(80, 6))
    rng = random.Random(0)
    for i in range(0, 80, 4):
        w[i] = "ab" + "".join(rng.choice("0123456789") for _ in range(8))
    cases["digit_fraction"] = lines_of(w)
    cases["stop_words"] = lines_of(pseudo_words(80, 7))
    out = []
    for i, line in enumerate(good(80, 8).split("\n")):
        out += [line, "Share this."] if i < 8 else [line]
    cases["duplicate_lines"] = "\n".join(out)
    long = "Pneumonoultramicroscopicsilicovolcanoconiosis"  # one long word: no repeated n-grams
    out = []
    for i, line in enumerate(good(64, 9).split("\n")):
        out += [line, long] if i < 4 else [line]
    cases["duplicate_line_chars"] = "\n".join(out)
    w = with_stop_words(pseudo_words(80, 10))
    pair = pseudo_words(2, 11, (5, 5))
    for i in range(5, 80, 10):
        w[i:i + 2] = pair
    cases["top_ngram"] = lines_of(w)
    w = with_stop_words(pseudo_words(80, 12))
    phrase = pseudo_words(8, 13)
    cases["duplicate_ngram"] = lines_of(w[:10] + phrase + w[10:40] + phrase + w[40:70] + phrase + w[70:], 9)
    return cases


# --- quality rules ----------------------------------------------------------------------------------
def test_good_document_passes():
    for seed in range(5):
        assert QualityFilter().check(good(80, seed), first_only=False) == []


@pytest.mark.parametrize("rule", list(bad_docs()))
def test_each_rule_alone(rule):
    assert QualityFilter().check(bad_docs()[rule], first_only=False) == [rule]


def test_thresholds_are_parameters():
    doc = good(80, 0)
    assert QualityFilter(max_words=60).check(doc, first_only=False) == ["too_many_words"]
    bad = bad_docs()
    # Disabling a rule (None) keeps the document that only that rule removed.
    assert QualityFilter(max_digit_fraction=None).check(bad["digit_fraction"]) == []
    assert QualityFilter(min_stop_words=0).check(bad["stop_words"]) == []
    assert QualityFilter(max_duplicate_ngram_fraction=(0.5,) * 6).check(bad["duplicate_ngram"]) == []
    assert QualityFilter().check(bad["duplicate_lines"], first_only=True) == ["duplicate_lines"]
    assert QualityFilter().check("") == ["too_few_words"]
