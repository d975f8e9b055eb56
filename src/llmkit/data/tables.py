"""Labelled text tables (CSV / TSV with a header row, or JSON Lines) and their splits: what the
classifier recipe (`llmkit classify train/predict`) reads.

A table's delimiter comes from its extension (`.tsv`/`.tab`: tab, `.csv`: comma), else is
sniffed from the first lines; a `.jsonl` file is one JSON object per line, its keys the
columns (SNLI's premise / hypothesis / label). Columns are found by name (exact, else a unique case-insensitive
match). Every problem is a one-line `LLMKitError` naming the file (and line).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from llmkit.errors import LLMKitError


@dataclass
class LabeledTexts:
    """The texts of a table, their labels (empty when read without a label column), the second
    text of each pair (sentence-pair tasks such as NLI; None for single texts) and the file."""

    texts: list[str]
    labels: list[str]
    source: str
    pairs: Optional[list[str]] = None


def _dialect(path: Path, sample: str) -> tuple[str, int]:
    """(delimiter, quoting): by extension, else sniffed from the first lines.

    TSV is read without quote handling (the IANA text/tab-separated-values convention: fields
    hold no tabs or newlines, and a `"` is just a character, as in the SMS Spam Collection,
    whose messages may start with one); CSV uses standard RFC 4180 quoting."""
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".tab"):
        return "\t", csv.QUOTE_NONE
    if suffix == ".csv":
        return ",", csv.QUOTE_MINIMAL
    try:
        delim = csv.Sniffer().sniff(sample, delimiters=",\t;|").delimiter
    except csv.Error:
        first = sample.splitlines()[0] if sample else ""
        delim = "\t" if "\t" in first else ","
    return delim, csv.QUOTE_NONE if delim == "\t" else csv.QUOTE_MINIMAL


def _column(header: list[str], name: str, what: str, path: Path) -> int:
    """Index of column `name` (exact match, else a unique case-insensitive one)."""
    if name in header:
        return header.index(name)
    folded = [i for i, h in enumerate(header) if h.strip().lower() == name.strip().lower()]
    if len(folded) == 1:
        return folded[0]
    found = ", ".join(repr(h) for h in header)
    raise LLMKitError(f"{path}: no {what} column '{name}' (columns found: {found}); choose one with --{what}-col")


def _jsonl_table(p: Path, raw: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """A JSON Lines file as a table: the keys of its objects (in first-seen order) are the header,
    values as strings (a number label 1 becomes "1")."""
    import json

    records = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise LLMKitError(f"{p}: line {n}: not JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise LLMKitError(f"{p}: line {n}: expected a JSON object, got {type(rec).__name__}")
        records.append((n, rec))
    header: list[str] = []
    for _, rec in records:
        header += [k for k in rec if k not in header]
    return header, [(n, ["" if rec.get(k) is None else str(rec.get(k)) for k in header]) for n, rec in records]


def read_table(path: str | Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line number, fields), ...]) of a CSV or TSV file with a header row, or of a
    JSON Lines file."""
    p = Path(path)
    if not p.exists():
        raise LLMKitError(f"{p}: no such file")
    if p.is_dir():
        raise LLMKitError(f"{p}: is a directory; give a CSV, TSV or JSONL file")
    try:
        raw = p.read_text(encoding="utf-8-sig")  # -sig: drop the BOM spreadsheet exports add
    except UnicodeDecodeError as e:
        raise LLMKitError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not raw.strip():
        raise LLMKitError(f"{p}: empty file (expected a header row and labelled rows)")
    if p.suffix.lower() in (".jsonl", ".ndjson"):
        return _jsonl_table(p, raw)
    delim, quoting = _dialect(p, raw[:65536])
    csv.field_size_limit(1 << 30)
    reader = csv.reader(io.StringIO(raw, newline=""), delimiter=delim, quoting=quoting)
    try:
        rows = [(reader.line_num, r) for r in reader if any(c.strip() for c in r)]  # skip blank lines
    except csv.Error as e:
        raise LLMKitError(f"{p}: not a valid {'TSV' if delim == chr(9) else 'CSV'} file ({e})") from None
    header = [h.strip() for h in rows[0][1]]
    if len(rows) == 1:
        raise LLMKitError(f"{p}: only a header row ({', '.join(header)}), no data")
    return header, rows[1:]


def read_labeled(path: str | Path, text_col: str = "text", label_col: Optional[str] = "label",
                 pair_col: Optional[str] = None) -> LabeledTexts:
    """Texts (and labels, unless `label_col` is None; and second texts, with `pair_col`) of a
    CSV or TSV file with a header row, or of a JSONL file."""
    p = Path(path)
    header, rows = read_table(p)
    ti = _column(header, text_col, "text", p)
    li = _column(header, label_col, "label", p) if label_col is not None else None
    pi = _column(header, pair_col, "text-pair", p) if pair_col is not None else None
    texts, labels, pairs = [], [], [] if pi is not None else None
    need = max(ti, li if li is not None else -1, pi if pi is not None else -1) + 1
    for n, r in rows:
        if len(r) < need:
            raise LLMKitError(f"{p}: line {n} has {len(r)} field(s), the header {len(header)}")
        text = r[ti]
        if not text.strip():
            raise LLMKitError(f"{p}: line {n}: empty text in column '{header[ti]}'")
        texts.append(text)
        if pi is not None:
            if not r[pi].strip():
                raise LLMKitError(f"{p}: line {n}: empty text in column '{header[pi]}'")
            pairs.append(r[pi])
        if li is not None:
            label = r[li].strip()
            if not label:
                raise LLMKitError(f"{p}: line {n}: empty label in column '{header[li]}'")
            labels.append(label)
    return LabeledTexts(texts, labels, str(p), pairs)


def stratified_split(labels: list[str], fractions: tuple[float, ...], seed: int) -> list[list[int]]:
    """Indices split into len(fractions) + 1 parts (the last takes the rest), class by class so
    that each part keeps the class proportions (a rare class still shows up in val and test)."""
    by_class: dict[str, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    rng = np.random.default_rng([seed, 2])
    for y in sorted(by_class):
        idx = [by_class[y][j] for j in rng.permutation(len(by_class[y]))]
        start = 0
        for k, f in enumerate(fractions):
            take = int(round(len(idx) * f))
            parts[k] += idx[start:start + take]
            start += take
        parts[-1] += idx[start:]
    return [sorted(p) for p in parts]


def balanced(indices: list[int], labels: list[str], seed: int) -> list[int]:
    """Downsample every class to the size of the smallest (a seeded random choice)."""
    by_class: dict[str, list[int]] = {}
    for i in indices:
        by_class.setdefault(labels[i], []).append(i)
    n = min(len(v) for v in by_class.values())
    rng = np.random.default_rng([seed, 3])
    keep = []
    for y in sorted(by_class):
        v = by_class[y]
        keep += [v[j] for j in sorted(rng.choice(len(v), n, replace=False))]
    return sorted(keep)
