"""Mixture weights of `llmkit data curate` (`data.mix.parse_weights`): both forms, normalised,
and each bad input a clear error. The mixing itself is tested end to end in test_curate.py."""

from __future__ import annotations

import pytest

from llmkit.data.mix import parse_weights
from llmkit.errors import LLMKitError


def test_parse_weights_errors():
    assert parse_weights([1, 3], ["a", "b"]) == [0.25, 0.75]
    assert parse_weights(["b:1", "C:/x.txt:1"], ["C:/x.txt", "b"]) == [0.5, 0.5]
    for weights, pattern in [([1], "1 weight"), (["a:1", 2], "all as"), (["c:1", "b:1"], "'c' is not"),
                             (["a:1"], "no weight for source"), (["x", 1], "not a number"), ([0, 0], "positive"),
                             ([-1, 2], ">= 0")]:
        with pytest.raises(LLMKitError, match=pattern):
            parse_weights(weights, ["a", "b"])
