"""Preference pairs for DPO, and the resumable shuffled batching that the example-level
recipes (classifier, DPO) share.

A preference record is a prompt with two answers, the one people preferred and the other:

* `{"prompt": ..., "chosen": ..., "rejected": ...}`: the prompt is a user message, or
  a list of `{"role", "content"}` messages (a conversation that the answers continue);
* the Alpaca form `{"instruction": ..., "input": ... (optional), "chosen": ..., "rejected": ...}`
  (e.g. instruction-data-with-preference.json), the instruction and input becoming the user turn.

Files are JSON (an array of records) or JSONL (one record per line). Rendering a prompt with a
prompt style and tokenizing it lives in the DPO recipe; this module only reads and checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from llmkit.errors import LLMKitError


# --- resumable shuffled batches --------------------------------------------------------------------
class ShuffledBatches:
    """Endless shuffled micro-batches over `n` examples, resumable exactly.

    The example stream is epoch 0's permutation, then epoch 1's, ... (each drawn from
    `np.random.default_rng([seed, epoch])`, so any epoch is rebuilt from (seed, epoch) alone).
    Micro-batch `step` of process `rank` takes the stream items
    `[(step * world_size + rank) * batch_size, ... + batch_size)`: every example is seen once per
    epoch, none is dropped, and every batch is full (the last batch of an epoch takes its tail
    from the next epoch). `collate(indices)` turns the chosen example indices into a batch.
    `state_dict()` is the step count plus the settings it is only valid for.
    """

    def __init__(self, n: int, batch_size: int, collate: Callable[[list[int]], Any], seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if n < 1:
            raise LLMKitError("no training examples")
        if batch_size < 1:
            raise LLMKitError(f"batch size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise LLMKitError(f"rank {rank} is outside world_size {world_size}")
        self.n, self.batch_size, self.collate, self.seed = n, batch_size, collate, seed
        self.rank, self.world_size = rank, world_size
        self.step = 0
        self._perms: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 2:  # a batch spans at most two epochs: keep a few, not all
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perms[epoch]

    def indices(self, step: int) -> list[int]:
        first = (step * self.world_size + self.rank) * self.batch_size
        return [int(self.permutation(i // self.n)[i % self.n]) for i in range(first, first + self.batch_size)]

    @property
    def epoch(self) -> float:
        """Epochs consumed so far (all processes together), e.g. 2.5."""
        return self.step * self.world_size * self.batch_size / self.n

    def __iter__(self) -> "ShuffledBatches":
        return self

    def __next__(self):
        batch = self.collate(self.indices(self.step))
        self.step += 1
        return batch

    def state_dict(self) -> dict:
        return {"step": self.step, "n": self.n, "batch_size": self.batch_size, "seed": self.seed,
                "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        for key in ("n", "batch_size", "seed", "world_size"):
            if key in state and state[key] != getattr(self, key):
                raise LLMKitError(f"cannot resume: the checkpoint's data position is for {key}={state[key]}, "
                                  f"this run has {getattr(self, key)} (data or batch settings changed)")
        self.step = int(state["step"])


# --- preference records --------------------------------------------------------------------------
@dataclass(frozen=True)
class PreferencePair:
    """One record: the prompt as messages (ending with a user turn), and the two answers."""

    messages: tuple  # ({"role", "content"}, ...)
    chosen: str
    rejected: str
    where: str  # "file:line" or "file#index", for error messages
    alpaca: Optional[tuple[str, str]] = None  # (instruction, input) for a record in Alpaca form


def _text(record: dict, key: str, where: str, required: bool = True) -> str:
    value = record.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        got = "missing" if value is None else f"a {type(value).__name__}"
        raise LLMKitError(f"{where}: '{key}' must be a string ({got}); record keys: {', '.join(sorted(record))}")
    return value


def parse_pair(record: Any, where: str) -> PreferencePair:
    """A PreferencePair from one record (either form), or a one-line LLMKitError saying why not."""
    if not isinstance(record, dict):
        raise LLMKitError(f"{where}: a preference record must be a JSON object, got {type(record).__name__}")
    if "chosen" not in record or "rejected" not in record:
        raise LLMKitError(f"{where}: a preference record needs 'chosen' and 'rejected' answers "
                          f"(with 'prompt', or Alpaca's 'instruction'/'input'); found keys: {', '.join(sorted(record)) or 'none'}")
    chosen, rejected = _text(record, "chosen", where), _text(record, "rejected", where)
    if not chosen.strip() or not rejected.strip():
        raise LLMKitError(f"{where}: empty {'chosen' if not chosen.strip() else 'rejected'} answer")
    if "prompt" in record:
        prompt = record["prompt"]
        if isinstance(prompt, str):
            if not prompt.strip():
                raise LLMKitError(f"{where}: empty prompt")
            messages = ({"role": "user", "content": prompt},)
        elif isinstance(prompt, list) and prompt:
            from llmkit.prompts import check_messages

            try:
                messages = tuple(check_messages(prompt))
            except LLMKitError as e:
                raise LLMKitError(f"{where}: prompt: {e}") from None
            if messages[-1]["role"] != "user":
                raise LLMKitError(f"{where}: a prompt conversation must end with a user message")
        else:
            raise LLMKitError(f"{where}: 'prompt' must be a string or a non-empty list of messages")
    elif "instruction" in record:
        instruction = _text(record, "instruction", where)
        inp = _text(record, "input", where, required=False)
        if not instruction.strip():
            raise LLMKitError(f"{where}: empty instruction")
        # The user turn for chat styles; the Alpaca style renders the pair itself (with its
        # "### Input:" block) from the `alpaca` field, exactly as Alpaca SFT data is rendered.
        content = instruction + (f"\n\n{inp}" if inp.strip() else "")
        return PreferencePair(({"role": "user", "content": content},), chosen, rejected, where, (instruction, inp))
    else:
        raise LLMKitError(f"{where}: no prompt: give 'prompt' or Alpaca's 'instruction' (and 'input'); "
                          f"found keys: {', '.join(sorted(record))}")
    return PreferencePair(messages, chosen, rejected, where)


def load_pairs(path: str | Path) -> list[PreferencePair]:
    """Every preference record of a JSON or JSONL file, checked (the first bad one is reported)."""
    from llmkit.data import read_records

    pairs = [parse_pair(r, where) for where, r in read_records(path)]
    if not pairs:
        raise LLMKitError(f"{path}: no preference records")
    return pairs


def split_pairs(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, val indices): a seeded random `val_fraction` of the records for validation
    (at least one when the fraction is > 0 and there are two records or more)."""
    if not 0.0 <= val_fraction < 1.0:
        raise LLMKitError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, n - 1)
    order = np.random.default_rng([seed, 1]).permutation(n)
    return sorted(int(i) for i in order[n_val:]), sorted(int(i) for i in order[:n_val])
