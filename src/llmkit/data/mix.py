"""Mixing of sources for `llmkit data curate`: the kept documents of each source re-sampled to
a mixture, as in the GPT-3 (table 2.2) and Llama (table 1) data tables.

Source i gets weight_i of the output words, which may mean several epochs of a small
high-quality source and a sample of a large one. The sampling is deterministic (seeded hashes),
and the sources are interleaved so that any prefix of the output already has the mixture.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

from llmkit.errors import LLMKitError


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


def _source_stream(paths: list[Path], index: int, multiplier: float, seed: int) -> Iterator[tuple[dict, int]]:
    """(record, words) of one source's staged files re-sampled `multiplier` times: floor(m) full
    passes, then each document once more with probability frac(m) (GPT-3's "epochs elapsed")."""
    full, frac = int(math.floor(multiplier)), multiplier - math.floor(multiplier)
    for epoch in range(full + (frac > 0)):
        i = 0
        for path in paths:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if epoch < full or _unit_hash(seed, index, epoch, i) < frac:
                        record = json.loads(line)
                        yield record, record.pop("_words")
                    i += 1


def mix_sources(staged: dict[str, list[Path]], sources: list[str], kept: dict[str, int], mix: list[float],
                total_words: Optional[int], seed: int, write: Callable[[str, str, int], None]) -> dict:
    """Re-sample the staged documents of every source (JSONL files of {"text", "source",
    "_words"}, in order) to its weight in `mix` (normalised, in source order) of `total_words`
    (default: all `kept` words), and hand them to `write(text, source, words)` interleaved.
    Returns the report's per-source mixing table."""
    total = total_words if total_words is not None else sum(kept.values())
    if total <= 0:
        raise LLMKitError("nothing to mix: curation removed every document")
    targets = {s: w * total for s, w in zip(sources, mix)}
    for s in sources:
        if targets[s] > 0 and kept[s] == 0:
            raise LLMKitError(f"source '{s}' has weight {mix[sources.index(s)]:.3g} but no document survived curation")
    multipliers = {s: (targets[s] / kept[s] if kept[s] else 0.0) for s in sources}
    streams = {s: _source_stream(staged.get(s, []), i, multipliers[s], seed)
               for i, s in enumerate(sources) if multipliers[s] > 0}
    # Interleave: always take the next document from the source furthest behind its target share,
    # so any prefix of the output already has about the requested mixture.
    docs_out = {s: 0 for s in sources}
    words_out = {s: 0 for s in sources}
    heap = [(0.0, i, s) for i, s in enumerate(sources) if s in streams]
    heapq.heapify(heap)
    while heap:
        _, i, s = heapq.heappop(heap)
        item = next(streams[s], None)
        if item is None:
            continue
        record, words = item
        write(record["text"], s, words)
        docs_out[s] += 1
        words_out[s] += words
        heapq.heappush(heap, (words_out[s] / targets[s], i, s))
    out_words = sum(words_out.values()) or 1
    return {s: {"weight": w, "words_kept": kept[s], "multiplier": multipliers[s],
                "docs_out": docs_out[s], "words_out": words_out[s],
                "share_out": words_out[s] / out_words} for s, w in zip(sources, mix)}
