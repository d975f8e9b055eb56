"""Corpus reading shared by `tokenizer train`, `data prepare` and `data curate`.

One reader, so that every command accepts the same sources and reports the same errors:

* text files (`.txt`, `.md`, `.text`, `.rst`): by default a file is one document. Blank-line
  runs are *not* document boundaries by default, because a book or an article split at every
  paragraph would teach the model to emit EOS after each paragraph; `text_unit="paragraph"`
  (documents separated by one or more blank lines) or `"line"` choose otherwise, e.g. for a
  corpus like tinyshakespeare that is one file but many short pieces.
* JSONL (`.jsonl`, `.ndjson`): one JSON object per line, the text in `text_field`.
* JSON (`.json`): an array of such objects (loaded whole: meant for small files, e.g. eval sets).
* Parquet (`.parquet`): the `text_field` column, read in record batches (HF datasets' format).
* CSV (`.csv`, `.tsv`): a header row, the text in the `text_field` column.
* `.gz` and `.zst` (Zstandard, as many web dumps ship) versions of the text, JSON and CSV formats.
* folders: searched recursively for the formats above, in sorted order, hidden files skipped.
  A folder written by `llmkit data curate` contributes only its curated shards (not its report).

Documents are yielded one at a time; nothing here holds more than one file's batch in memory
(except `.json` arrays and, with text_unit="file", a text file, which are read whole).
Whitespace-only documents are skipped. `read_part` reads one byte range of a JSONL or CSV file or
a range of a Parquet file's row groups: the unit of work that `llmkit.data.engine` hands to workers.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Iterator, Literal, Optional

from llmkit.errors import LLMKitError

TEXT_SUFFIXES = (".txt", ".md", ".text", ".rst")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
FORMATS = {**{s: "text" for s in TEXT_SUFFIXES}, **{s: "jsonl" for s in JSONL_SUFFIXES},
           ".json": "json", ".parquet": "parquet", ".csv": "csv", ".tsv": "csv"}
COMPRESSIONS = (".gz", ".zst")
TextUnit = Literal["file", "paragraph", "line"]
CURATE_REPORT = "report.json"  # marks a folder written by `llmkit data curate`


@dataclass(frozen=True)
class Document:
    text: str
    source: str  # the source argument it came from (a file or a folder, as given)
    location: str  # "file", "file:line" (JSONL), "file#row" (Parquet/JSON): for errors and reports


def file_format(path: Path) -> Optional[str]:
    """'text' | 'jsonl' | 'json' | 'parquet' | 'csv' from the suffix (".gz"/".zst" looked through),
    or None."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
        if suffixes and suffixes[-1] == ".parquet":
            return None  # parquet compresses internally; a gzipped parquet file is a mistake
    return FORMATS.get(suffixes[-1]) if suffixes else None


def _curated_files(folder: Path) -> Optional[list[Path]]:
    """The shard list of a `data curate` output folder, or None for an ordinary folder."""
    report = folder / CURATE_REPORT
    if not report.is_file():
        return None
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("tool") != "llmkit data curate":
        return None
    return [folder / f for f in data.get("output", {}).get("files", [])]


def expand_sources(sources: Iterable[str]) -> list[tuple[str, Path]]:
    """(source argument, file) pairs for every readable file, in a deterministic order."""
    if isinstance(sources, (str, Path)):
        sources = [str(sources)]
    files: list[tuple[str, Path]] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            curated = _curated_files(p)
            if curated is not None:
                found = curated
            else:
                found = sorted(f for f in p.rglob("*") if f.is_file() and file_format(f) is not None
                               and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not found:
                raise LLMKitError(f"folder '{src}' holds no readable files "
                                  f"({', '.join(sorted(FORMATS))}, optionally .gz)")
            files += [(str(src), f) for f in found]
        elif p.is_file():
            if file_format(p) is None:
                raise LLMKitError(f"unknown format of '{src}': expected one of {', '.join(sorted(FORMATS))} "
                                  "(optionally .gz or .zst) or a folder")
            files.append((str(src), p))
        elif p.exists():
            raise LLMKitError(f"'{src}' is not a regular file or folder")
        else:
            raise LLMKitError(f"no such file or folder: '{src}'")
    if not files:
        raise LLMKitError("no sources given")
    return files


def open_binary(path: Path) -> IO[bytes]:
    """The decompressed bytes of `path` (.gz, .zst or plain), as a buffered stream."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".gz":
            return gzip.open(path, "rb")
        if suffix == ".zst":
            import zstandard

            raw = open(path, "rb")
            return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True), 1 << 20)
        return open(path, "rb")
    except OSError as e:
        raise LLMKitError(f"cannot read '{path}': {e.strerror or e}") from None


def _open_text(path: Path, newline: Optional[str] = None) -> IO[str]:
    # newline="" would keep "\r\n"; the default translates it, so Windows files read like Unix ones
    # (CSV passes "" as the csv module asks, and handles "\r\n" itself).
    return io.TextIOWrapper(open_binary(path), encoding="utf-8", newline=newline)


def _field_text(record: object, text_field: Optional[str], where: str) -> str:
    if not isinstance(record, dict):
        raise LLMKitError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if text_field is None:  # every string value (decontamination: question + answer + ...)
        return "\n".join(v for v in record.values() if isinstance(v, str))
    if text_field not in record:
        keys = ", ".join(list(record)[:8])
        raise LLMKitError(f"{where}: no '{text_field}' field (fields: {keys or 'none'}); "
                          f"choose the field with --text-field")
    value = record[text_field]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise LLMKitError(f"{where}: field '{text_field}' is {type(value).__name__}, not a string")
    return value


def _read_file(src: str, path: Path, fmt: str, text_field: Optional[str], text_unit: TextUnit,
               part: Optional[tuple[int, int, int]] = None) -> Iterator[Document]:
    """The documents of one file, or with `part` = (start, end, first line) of the bytes
    [start, end) of an uncompressed JSONL file (lines whose first byte is in the range) or the
    row groups [start, end) of a Parquet file."""
    try:
        if fmt == "text":
            with _open_text(path) as f:
                text = f.read()
            if text_unit == "file":
                pieces = [(str(path), text)]
            elif text_unit == "line":
                pieces = [(f"{path}:{n}", t) for n, t in enumerate(text.split("\n"), 1)]
            else:  # paragraph: split on runs of lines that are empty or whitespace only
                pieces, start, lines, n = [], 1, [], 0
                for n, line in enumerate(text.split("\n"), 1):
                    if line.strip():
                        if not lines:
                            start = n
                        lines.append(line)
                    elif lines:
                        pieces.append((f"{path}:{start}", "\n".join(lines)))
                        lines = []
                if lines:
                    pieces.append((f"{path}:{start}", "\n".join(lines)))
            for loc, t in pieces:
                if t.strip():
                    yield Document(t, src, loc)
        elif fmt == "jsonl":
            for n, line in _jsonl_lines(path, part):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise LLMKitError(f"{path}:{n}: invalid JSON ({e.msg})") from None
                text = _field_text(record, text_field, f"{path}:{n}")
                if text.strip():
                    yield Document(text, src, f"{path}:{n}")
        elif fmt == "json":
            with _open_text(path) as f:
                try:
                    data = json.load(f)
                except json.JSONDecodeError as e:
                    raise LLMKitError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(data, list):
                raise LLMKitError(f"{path}: expected a JSON array of objects (use .jsonl for one object per line)")
            for i, record in enumerate(data):
                text = _field_text(record, text_field, f"{path}#{i}")
                if text.strip():
                    yield Document(text, src, f"{path}#{i}")
        elif fmt == "csv":
            yield from _read_csv(src, path, text_field)
        else:
            yield from _read_parquet(src, path, text_field, part)
    except UnicodeDecodeError as e:
        raise LLMKitError(f"'{path}' is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (OSError, EOFError) as e:  # gzip raises EOFError/BadGzipFile on truncated files
        raise LLMKitError(f"cannot read '{path}': {e}") from None
    except Exception as e:  # zstandard.ZstdError on a corrupt frame
        if type(e).__name__ == "ZstdError":
            raise LLMKitError(f"cannot read '{path}': {e}") from None
        raise


def _jsonl_lines(path: Path, part: Optional[tuple[int, int, int]]) -> Iterator[tuple[int, str]]:
    """(line number, line) of a JSONL file, or of the lines starting in bytes [start, end) of an
    uncompressed one. Lines end at "\\n" only ("\\r\\n" read as "\\n"), whole file or part alike."""
    start, end, n = part if part is not None else (0, float("inf"), 1)
    with open_binary(path) as f:
        if start:
            f.seek(start)
        pos = start
        while pos < end:
            line = f.readline()
            if not line:
                break
            pos += len(line)
            yield n, line.decode("utf-8").replace("\r\n", "\n")
            n += 1


def _read_csv(src: str, path: Path, text_field: Optional[str]) -> Iterator[Document]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # documents are longer than the 128 KiB default
    delimiter = "\t" if ".tsv" in [s.lower() for s in path.suffixes] else ","
    with _open_text(path, newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        try:
            names = reader.fieldnames or []
        except csv.Error as e:
            raise LLMKitError(f"{path}: invalid CSV ({e})") from None
        if text_field is not None and text_field not in names:
            raise LLMKitError(f"{path}: no '{text_field}' column (columns: {', '.join(names[:8]) or 'none'}); "
                              "choose the column with --text-field")
        row = 0
        try:
            for record in reader:
                row += 1
                where = f"{path}:{reader.line_num}"
                if text_field is None:
                    text = "\n".join(v for k, v in record.items() if k is not None and isinstance(v, str))
                else:
                    text = record.get(text_field) or ""
                if text.strip():
                    yield Document(text, src, where)
        except csv.Error as e:
            raise LLMKitError(f"{path}:{reader.line_num}: invalid CSV ({e})") from None


def _read_parquet(src: str, path: Path, text_field: Optional[str],
                  part: Optional[tuple[int, int, int]] = None) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise LLMKitError(f"cannot read Parquet file '{path}': {e}") from None
    names = pf.schema_arrow.names
    if text_field is None:
        columns = [n for n in names if pa.types.is_string(pf.schema_arrow.field(n).type)
                   or pa.types.is_large_string(pf.schema_arrow.field(n).type)]
    elif text_field not in names:
        raise LLMKitError(f"{path}: no '{text_field}' column (columns: {', '.join(names[:8])}); "
                          "choose the column with --text-field")
    else:
        columns = [text_field]
    groups = None if part is None else list(range(part[0], part[1]))
    row = 0 if part is None else part[2]  # the first row of the first group
    for batch in pf.iter_batches(batch_size=1024, columns=columns, row_groups=groups):
        cols = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
        for values in zip(*cols):
            if text_field is not None and values[0] is not None and not isinstance(values[0], str):
                raise LLMKitError(f"{path}#{row}: column '{text_field}' is {type(values[0]).__name__}, not a string")
            text = "\n".join(v for v in values if isinstance(v, str))
            if text.strip():
                yield Document(text, src, f"{path}#{row}")
            row += 1


def iter_documents(sources: Iterable[str], text_field: Optional[str] = "text",
                   text_unit: TextUnit = "file") -> Iterator[Document]:
    """Every non-blank document of `sources`, in order (files sorted within a folder).

    All paths are checked before the first document is yielded, so a typo in the last source
    fails at once rather than after hours of work on the first ones. `text_field=None` joins all
    string fields of a record (used for decontamination against eval sets).
    """
    if text_unit not in ("file", "paragraph", "line"):
        raise LLMKitError(f"text_unit must be 'file', 'paragraph' or 'line', got '{text_unit}'")
    files = expand_sources(sources)  # here, not in the generator: bad paths fail at the call

    def generate() -> Iterator[Document]:
        for src, path in files:
            yield from _read_file(src, path, file_format(path), text_field, text_unit)

    return generate()


def read_records(path: str | Path) -> list[tuple[str, object]]:
    """(where, record) for every record of a small JSON or JSON Lines file of examples, the one
    reader of finetuning, preference and evaluation sets.

    A file whose text starts with `[` is a JSON array; one holding a single JSON object with
    exactly one list inside (`{"data": [...]}`, as some exports wrap them) is that list; anything
    else is read as one JSON object per line (blank lines skipped). `where` names the record for
    error messages: "FILE: record N" in an array, "FILE: line N" in JSON Lines (both 1-based)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise LLMKitError(f"{path}: no such file")
    if p.is_dir():
        raise LLMKitError(f"{path}: is a directory; expected a .json or .jsonl file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LLMKitError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    stripped = text.lstrip("\ufeff \t\r\n")
    if not stripped:
        raise LLMKitError(f"{path}: empty file")
    skipped_lines = text[: len(text) - len(stripped)].count("\n")
    whole = None
    if stripped.startswith("["):
        try:
            whole = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise LLMKitError(f"{path}: invalid JSON at line {e.lineno + skipped_lines}, column {e.colno}: "
                              f"{e.msg}") from None
    elif p.suffix.lower() == ".json" and stripped.startswith("{"):
        try:
            whole = json.loads(stripped)
        except json.JSONDecodeError:
            whole = None  # JSON Lines named .json: read line by line below
        if isinstance(whole, dict):
            lists = [v for v in whole.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise LLMKitError(f"{path}: expected a JSON array of records (or one JSON object per line), "
                                  "got a single object")
            whole = lists[0]
    if whole is not None:
        if not isinstance(whole, list):
            raise LLMKitError(f"{path}: expected a JSON array of records, got {type(whole).__name__}")
        return [(f"{path}: record {i + 1}", r) for i, r in enumerate(whole)]
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((f"{path}: line {n}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise LLMKitError(f"{path}: line {n}: invalid JSON (column {e.colno}: {e.msg}); expected a JSON "
                              "array of records or one JSON object per line") from None
    return out


def read_part(src: str, path: Path, text_field: Optional[str], text_unit: TextUnit,
              part: Optional[tuple[int, int, int]] = None) -> Iterator[Document]:
    """The documents of one file or one part of it (see `_read_file`), in order."""
    return _read_file(src, path, file_format(path), text_field, text_unit, part)


__all__ = ["Document", "TextUnit", "expand_sources", "file_format", "iter_documents", "open_binary", "read_part",
           "read_records"]


def claim_output_dir(out: str | Path, marker: str, what: str, overwrite: bool) -> Path:
    """The output folder of a data command, created: refused if it already holds a finished
    `what` (its `marker` file) unless `overwrite`, or if the path is a file."""
    out_dir = Path(out)
    if (out_dir / marker).exists() and not overwrite:
        raise LLMKitError(f"'{out_dir}' already holds {what}; pass --overwrite to replace it")
    if out_dir.exists() and not out_dir.is_dir():
        raise LLMKitError(f"output path '{out_dir}' exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir
