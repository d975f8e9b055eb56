"""`llmkit data prepare`: text corpus -> token shards for pretraining.

Layout of the output folder (read by `llmkit.data.shards.TokenShards`):

    out/manifest.json        dtype, vocab_size, eos_id, splits -> shard files and token counts
    out/train_000000.bin     raw token ids (numpy memmap, uint16 when the vocabulary fits)
    out/val_000000.bin
    out/tokenizer/           the tokenizer that produced the ids

Every document becomes `[BOS] tokens EOS` (BOS only for tokenizers that prepend it, e.g. Llama),
concatenated into one stream per split, as in GPT-2/nanoGPT's OpenWebText preparation: the
model learns that EOS ends a document, and training windows may span document boundaries.

Validation documents are chosen after tokenization, from all document lengths: documents are
ranked by a seeded hash of their text and taken in that order until they hold the closest to
`val_fraction` of the tokens (at least one document, never all). Whole documents, so no text is
split between train and val; a hash of the text, so copies of a document (duplicates in the
corpus, or a source up-sampled by `data curate`) all land in the same split.

The work runs as tasks on datatrove's local or Ray executor (`data.engine`): one per file, or
per ~`task_mb` part of a large JSONL or Parquet file. Each task tokenizes its documents into a
file of ids with their lengths and content keys; the validation split is then chosen over all
documents, and the ids are copied, in reading order, into the shards with buffered reads (the
memory does not grow with the corpus, only 16 bytes per document for lengths and keys). So
the bytes written do not depend on the executor or the number of workers, and an interrupted
run started again tokenizes only the tasks that had not finished.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from llmkit.data import TextUnit, claim_output_dir
from llmkit.data.engine import (TASK_MB, Executor, Task, TaskProgress, check_executor, default_workers, fingerprint,
                                plan_tasks, run_tasks, save_npy, uncompressed_size, work_dir)
from llmkit.errors import LLMKitError
from llmkit.fileio import atomic_write_text

MANIFEST = "manifest.json"
FORMAT = "llmkit-token-shards"
_CHUNK_CHARS = 1 << 20  # ~1 MB of text per encode_batch call: amortised (4 MB was no faster), and
# bounded memory: the Rust encodings and the id lists of 4 MB held ~60 MB more at the peak
_CHUNK_DOCS = 4096

_task_tok: dict[str, object] = {}  # tokenizer folder -> Tokenizer, one per process


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (GPT-2's 50,257 does), else uint32: halves disk and I/O."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def text_key(text: str) -> int:
    """64-bit content hash of a document: identical documents get identical keys."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def _encode_chunk(tok, texts: list[str], dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(concatenated ids, ids per document, content key per document) of a chunk."""
    if tok.eos_id is not None:
        ids = tok.encode_batch(texts, eos=True)  # bos=None: the tokenizer's own convention
    else:  # BERT: the bare pieces, documents separated by [SEP] (the MLM batches add [CLS]/[SEP])
        ids = [t + [tok.sep_id] for t in tok.encode_batch(texts, bos=False)]
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum()))
    keys = np.fromiter(map(text_key, texts), dtype=np.uint64, count=len(texts))
    return flat, lengths, keys


def input_bytes(files: list[Path]) -> int:
    """Uncompressed size of the input files (a .gz file's from its trailer)."""
    return sum(uncompressed_size(Path(f)) for f in files)


def _chunks(docs: Iterator, progress: Optional[TaskProgress] = None) -> Iterator[list[str]]:
    chunk: list[str] = []
    size = 0
    for doc in docs:
        chunk.append(doc.text)
        size += len(doc.text)
        if progress is not None:
            progress.add(len(doc.text.encode("utf-8", "surrogatepass")))
        if size >= _CHUNK_CHARS or len(chunk) >= _CHUNK_DOCS:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


class _TokenizeTask:
    """Task `rank`: its documents' ids to tokens/RANK.bin, their lengths and content keys to
    tokens/RANK.lens.npy and tokens/RANK.keys.npy (each written under a temporary name)."""

    def __init__(self, tasks: list[Task], work: Path, tokenizer_dir: Path, dtype: str, text_field: str,
                 text_unit: str, tokenizer_threads: bool):
        self.tasks, self.work, self.tokenizer_dir, self.dtype = tasks, work, str(tokenizer_dir), dtype
        self.text_field, self.text_unit, self.tokenizer_threads = text_field, text_unit, tokenizer_threads

    def _tokenizer(self):
        if self.tokenizer_dir not in _task_tok:
            if not self.tokenizer_threads:
                # One Rust thread per worker: the worker processes already use the cores, and
                # tokenizers' thread pool would otherwise oversubscribe them.
                os.environ["TOKENIZERS_PARALLELISM"] = "false"
            from llmkit.tokenizer import Tokenizer

            _task_tok[self.tokenizer_dir] = Tokenizer.from_dir(self.tokenizer_dir)
        return _task_tok[self.tokenizer_dir]

    def __call__(self, rank: int) -> None:
        from llmkit.data import read_part

        task, tok = self.tasks[rank], self._tokenizer()
        folder = self.work / "tokens"
        folder.mkdir(exist_ok=True)
        progress = TaskProgress(self.work / "tokenize" / "progress", rank)
        lengths, keys = [np.zeros(0, np.int64)], [np.zeros(0, np.uint64)]
        path = folder / f"{rank:05d}.bin"
        with open(path.with_suffix(".tmp"), "wb") as f:
            docs = read_part(task.source, Path(task.path), self.text_field, self.text_unit, task.part)
            for chunk in _chunks(docs, progress):
                ids, lens, chunk_keys = _encode_chunk(tok, chunk, self.dtype)
                f.write(ids.tobytes())
                lengths.append(lens)
                keys.append(chunk_keys)
        save_npy(folder / f"{rank:05d}.lens.npy", np.concatenate(lengths))
        save_npy(folder / f"{rank:05d}.keys.npy", np.concatenate(keys))
        os.replace(path.with_suffix(".tmp"), path)
        progress.flush()


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A fixed 64-bit mixer (SplitMix64, Steele et al. 2014): seeded ranks that are the same on
    every machine and Python version (unlike hash())."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def choose_val_docs(lengths: np.ndarray, val_fraction: float, seed: int = 0,
                    keys: Optional[np.ndarray] = None) -> np.ndarray:
    """Boolean mask of validation documents holding ~val_fraction of the tokens.

    Documents are ranked by a seeded hash of `keys` (default: their index; `prepare` passes a
    hash of each document's text) and taken in that order. With text keys, copies of one
    document rank together and the cut never falls between them, so a duplicated document
    (a web corpus, or a source up-sampled by `data curate`) is never in both splits.
    """
    n = len(lengths)
    mask = np.zeros(n, dtype=bool)
    if val_fraction <= 0 or n < 2:
        return mask
    keys = np.arange(n, dtype=np.uint64) if keys is None else np.asarray(keys, dtype=np.uint64)
    ranked = _splitmix64(keys ^ _splitmix64(np.array([seed], dtype=np.uint64))[0])
    order = np.argsort(ranked, kind="stable")
    ranked = ranked[order]
    cum = np.cumsum(lengths[order])
    target = val_fraction * float(cum[-1])
    k = int(np.searchsorted(cum, target))  # cum[k] is the first prefix >= target
    # Take k or k+1 documents, whichever lands closer to the target, at least one.
    if k > 0 and abs(cum[k - 1] - target) <= abs(cum[min(k, n - 1)] - target):
        k -= 1
    k = max(k + 1, 1)
    # Cut between different keys only: move the cut past the copies of the last document taken,
    # or before them if that would leave no training document.
    k_end = int(np.searchsorted(ranked, ranked[k - 1], side="right"))
    k = k_end if k_end < n else int(np.searchsorted(ranked, ranked[k - 1], side="left"))
    mask[order[:k]] = True
    return mask


class _ShardWriter:
    """Appends ids to `{split}_000000.bin`, `{split}_000001.bin`, ... of at most `shard_tokens`."""

    def __init__(self, out: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.out, self.split, self.dtype, self.shard_tokens = out, split, dtype, shard_tokens
        self.shards: list[dict] = []
        self._f = None
        self._n = 0

    def write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self._f is None or self._n == self.shard_tokens:
                self._roll()
            room = self.shard_tokens - self._n
            piece, ids = ids[:room], ids[room:]
            self._f.write(np.ascontiguousarray(piece, dtype=self.dtype).tobytes())
            self._n += len(piece)
            self.shards[-1]["tokens"] = self._n

    def _roll(self) -> None:
        self._close_file()
        name = f"{self.split}_{len(self.shards):06d}.bin"
        self._f = open(self.out / name, "wb")
        self._n = 0
        self.shards.append({"file": name, "tokens": 0})

    def _close_file(self) -> None:
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None

    def close(self) -> list[dict]:
        self._close_file()
        return self.shards


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _default_workers() -> int:
    """One core for this process (reading, writing), the others for tokenizer workers. With two
    cores that means one worker, in this process: tokenizing there over the Rust backend's
    threads measured 25% faster than two single-threaded workers plus a busy reader."""
    return max(1, default_workers() - 1)


def _copy_tokens(f, start: int, end: int, dtype: np.dtype, write, block: int = 1 << 22) -> None:
    """Hand ids [start, end) of the open file `f` to `write`, `block` ids at a time (buffered
    reads: bounded memory, unlike a memmap whose pages stay resident)."""
    f.seek(start * dtype.itemsize)
    while start < end:
        n = min(block, end - start)
        write(np.fromfile(f, dtype=dtype, count=n))
        start += n


def prepare(sources: list[str], tokenizer: str, out: str, seq_len: int = 1024, val_fraction: float = 0.01,
            text_field: str = "text", text_unit: TextUnit = "file", seed: int = 0,
            shard_tokens: int = 100_000_000, executor: Executor = "local", workers: Optional[int] = None,
            task_mb: float = TASK_MB, overwrite: bool = False) -> dict:
    """Tokenize a text corpus into token shards for pretraining.

    The work runs as tasks (a file, or a ~task_mb part of a large JSONL or Parquet file) on
    datatrove's local or Ray executor; the shards do not depend on which, or on the number of
    workers, and a run interrupted is resumed by running it again.

    Args:
        sources: text files (.txt/.md; one document per file, see --text-unit), JSONL/JSON files
            with a text field, CSV or Parquet files with a text column (.gz/.zst compressed too),
            or folders of them (recursive).
        tokenizer: tokenizer folder (tokenizer.json, or GPT-2 vocab + merges); copied to out/tokenizer.
        out: output folder for manifest.json, train_*.bin and val_*.bin.
        seq_len: training context length, recorded in the manifest (the shards are one
            continuous stream; any window length can be read from them).
        val_fraction: fraction of tokens for the validation split, as whole documents.
        text_field: field (JSONL/JSON) or column (CSV/Parquet) holding the text.
        text_unit: what one document of a text file is: the whole "file", each "paragraph"
            (separated by blank lines), or each "line".
        seed: seed of the validation document choice.
        shard_tokens: maximum tokens per shard file.
        executor: "local" (processes on this machine) or "ray" (the Ray cluster RAY_ADDRESS names,
            or a local one).
        workers: tasks run at once (default: CPU cores - 1; 1 tokenizes in this process, where
            the Rust tokenizer uses several threads).
        task_mb: size of a task's part of a large JSONL or Parquet file, in MB.
        overwrite: replace an existing prepared dataset in `out`.
    """
    from llmkit.progress import progress
    from llmkit.tokenizer import Tokenizer

    t0 = time.perf_counter()
    if not 0 <= val_fraction < 1:
        raise LLMKitError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if seq_len < 1:
        raise LLMKitError(f"seq_len must be >= 1, got {seq_len}")
    if shard_tokens < 1:
        raise LLMKitError(f"shard_tokens must be >= 1, got {shard_tokens}")
    workers = check_executor(executor, _default_workers() if workers is None else workers)
    if isinstance(sources, str):
        sources = [sources]
    sources = [str(s) for s in sources]
    tok = Tokenizer.from_dir(tokenizer)
    if tok.eos_id is None and tok.sep_id is None:
        raise LLMKitError(f"tokenizer '{tokenizer}' has no EOS (or [SEP]) token to separate documents "
                          "(set eos_token in its tokenizer_config.json)")
    tasks = plan_tasks(sources, task_mb)  # checks every path now

    out_dir = claim_output_dir(out, MANIFEST, "a prepared dataset", overwrite)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # a crash below must not leave a stale manifest
    for old in list(out_dir.glob("train_*.bin")) + list(out_dir.glob("val_*.bin")):
        old.unlink()
    tok_dir = tok.save(out_dir / "tokenizer")
    dtype = token_dtype(tok.vocab_size)
    settings = {"tokenizer": _sha256(tok_dir / "tokenizer.json"), "dtype": dtype.name, "text_field": text_field,
                "text_unit": text_unit, "task_mb": task_mb}
    work, resumed = work_dir(out_dir, fingerprint(tasks, settings))

    # Stage 1, per task: ids, lengths and content keys of its documents.
    threads = executor == "local" and workers == 1  # in this process: the Rust backend's threads
    ran = run_tasks("tokenize", _TokenizeTask(tasks, work, tok_dir, dtype.name, text_field, text_unit, threads),
                    tasks, work, executor=executor, workers=workers, desc="tokenizing")
    folder = work / "tokens"
    lens_per_task = [np.load(folder / f"{t.index:05d}.lens.npy") for t in tasks]
    lens = np.concatenate(lens_per_task)
    n_tokens = int(lens.sum())
    if n_tokens == 0:
        shutil.rmtree(work)
        raise LLMKitError(f"empty corpus: no text in {', '.join(sources)}")

    # Stage 2, here: the split over all documents, then each task's ids copied to their split in
    # reading order. Validation documents are few, so the copy is a handful of long runs.
    keys = np.concatenate([np.load(folder / f"{t.index:05d}.keys.npy") for t in tasks])
    is_val = choose_val_docs(lens, val_fraction, seed, keys=keys)
    del keys
    writers = {s: _ShardWriter(out_dir, s, dtype, shard_tokens) for s in ("train", "val")}
    first_doc = 0
    with progress(total=n_tokens, desc="writing shards", unit="tok") as bar:
        for t, task_lens in zip(tasks, lens_per_task):
            n = len(task_lens)
            val = is_val[first_doc:first_doc + n]
            first_doc += n
            if not n:
                continue
            offsets = np.concatenate([[0], np.cumsum(task_lens)])
            bounds = np.concatenate([[0], np.flatnonzero(np.diff(val.astype(np.int8))) + 1, [n]])
            with open(folder / f"{t.index:05d}.bin", "rb") as f:
                for a, b in zip(bounds[:-1], bounds[1:]):
                    w = writers["val" if val[a] else "train"]
                    _copy_tokens(f, int(offsets[a]), int(offsets[b]), dtype, w.write)
                    bar.update(int(offsets[b] - offsets[a]))
    del lens_per_task

    splits = {}
    for name, w in writers.items():
        shards = w.close()
        mask = is_val if name == "val" else ~is_val
        splits[name] = {"shards": shards, "tokens": int(lens[mask].sum()), "docs": int(mask.sum())}
    manifest = {
        "format": FORMAT,
        "version": 1,
        "dtype": dtype.name,
        "vocab_size": tok.vocab_size,
        "eos_id": tok.eos_id if tok.eos_id is not None else tok.sep_id,  # the document separator
        "bos_id": tok.bos_id,
        "add_bos": tok.add_bos,  # whether each document starts with bos_id
        "seq_len": seq_len,
        "tokenizer": {"path": "tokenizer", "source": str(tokenizer), "sha256": settings["tokenizer"]},
        "sources": sources,
        "text_field": text_field,
        "text_unit": text_unit,
        "val_fraction": val_fraction,
        "seed": seed,
        "splits": splits,
    }
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")  # once all shards exist
    shutil.rmtree(work)

    dt = time.perf_counter() - t0
    tr, va = splits["train"], splits["val"]
    resumed_note = f", resumed: {len(tasks) - ran} of {len(tasks)} tasks done before" if resumed else ""
    print(f"prepared {tr['docs'] + va['docs']:,} docs, {n_tokens:,} tokens in {dt:.1f}s "
          f"({n_tokens / dt:,.0f} tokens/s{resumed_note}): train {tr['tokens']:,} tokens ({tr['docs']:,} docs), "
          f"val {va['tokens']:,} tokens ({va['docs']:,} docs) -> {out_dir}")
    if val_fraction > 0 and va["docs"] == 0 and tr["docs"] == 1:
        _warn("the corpus is a single document, so there is no validation split; split text files "
              "into documents with --text-unit paragraph (or line), or add files")
    elif val_fraction > 0 and va["docs"] == 0:
        _warn("every document is a copy of the same text, so there is no validation split")
    elif val_fraction > 0 and va["tokens"] < seq_len + 1:
        _warn(f"the validation split has {va['tokens']} tokens, fewer than seq_len + 1 = {seq_len + 1}: "
              "it cannot hold one full window")
    return manifest
