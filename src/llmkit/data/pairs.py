"""Preference pairs for DPO: reading and checking preference records, and the train/val split.

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
from typing import Any, Optional

import numpy as np

from llmkit.errors import LLMKitError


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
