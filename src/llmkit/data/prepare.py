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

Determinism: documents are read in a fixed order, cut into chunks in a fixed way and the
chunks' ids written in submission order, so the bytes written do not depend on `num_proc`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from llmkit.data import TextUnit, claim_output_dir, expand_sources, iter_documents
from llmkit.errors import LLMKitError

MANIFEST = "manifest.json"
FORMAT = "llmkit-token-shards"
_CHUNK_CHARS = 1 << 22  # ~4 MB of text per task: big enough to amortise IPC, small enough to stream
_CHUNK_DOCS = 4096

_worker_tok = None  # the tokenizer of a worker process (set by _init_worker)


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


def _init_worker(tokenizer_dir: str) -> None:
    global _worker_tok
    # One Rust thread per worker: the processes already use the cores, and tokenizers' thread
    # pool would otherwise oversubscribe them.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from llmkit.tokenizer import Tokenizer

    _worker_tok = Tokenizer.from_dir(tokenizer_dir)


def _worker_encode(texts: list[str], dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _encode_chunk(_worker_tok, texts, dtype)


def input_bytes(files: list[Path]) -> int:
    """Uncompressed size of the input files: a .gz file's size from its trailer (ISIZE, the
    length mod 2**32, as gzip -l reads it), others' from the file system."""
    total = 0
    for f in files:
        size = f.stat().st_size
        if f.suffix.lower() == ".gz" and size >= 18:
            with open(f, "rb") as fh:
                fh.seek(-4, 2)
                size = int.from_bytes(fh.read(4), "little")
        total += size
    return total


def _chunks(docs: Iterator) -> Iterator[list[str]]:
    chunk: list[str] = []
    size = 0
    for doc in docs:
        chunk.append(doc.text)
        size += len(doc.text)
        if size >= _CHUNK_CHARS or len(chunk) >= _CHUNK_DOCS:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _tokenize(chunks: Iterator[list[str]], tokenizer_dir: Path, dtype: np.dtype, num_proc: int
              ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield `_encode_chunk`'s triple per chunk, in chunk order, tokenizing in `num_proc` processes."""
    first = next(chunks, None)
    if first is None:
        return
    second = next(chunks, None)
    all_chunks = itertools.chain([first] if second is None else [first, second], chunks)
    if num_proc <= 1 or second is None:
        # In-process (a one-chunk corpus is not worth starting processes for); the Rust backend
        # still spreads each chunk over its own threads.
        from llmkit.tokenizer import Tokenizer

        tok = Tokenizer.from_dir(tokenizer_dir)
        for chunk in all_chunks:
            yield _encode_chunk(tok, chunk, dtype.name)
        return

    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: tokenizers' thread pool may already exist in this process, and a forked
    # child of a multithreaded parent can deadlock (tokenizers warns about exactly this).
    # ProcessPoolExecutor rather than multiprocessing.Pool: a worker that dies (or whose
    # initializer fails) raises BrokenProcessPool here instead of hanging the run.
    pool = ProcessPoolExecutor(num_proc, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                               initargs=(str(tokenizer_dir),))
    try:
        # A bounded window of tasks in flight, so that reading never runs far ahead of
        # tokenizing: memory stays at ~2 chunks per process whatever the corpus size.
        pending: deque = deque()
        for chunk in all_chunks:
            pending.append(pool.submit(_worker_encode, chunk, dtype.name))
            if len(pending) >= 2 * num_proc:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


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


def _default_num_proc() -> int:
    """One core for this process (reading, writing), the others for tokenizer workers. With two
    cores that means no worker processes: tokenizing in-process over the Rust backend's threads
    measured 25% faster there than two single-threaded workers plus a busy reader."""
    try:
        cores = len(os.sched_getaffinity(0))  # honours container CPU limits
    except AttributeError:  # macOS / Windows
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def prepare(sources: list[str], tokenizer: str, out: str, seq_len: int = 1024, val_fraction: float = 0.01,
            num_proc: Optional[int] = None, text_field: str = "text", text_unit: TextUnit = "file",
            seed: int = 0, shard_tokens: int = 100_000_000, overwrite: bool = False) -> dict:
    """Tokenize a text corpus into token shards for pretraining.

    Args:
        sources: text files (.txt/.md; one document per file, see --text-unit), JSONL/JSON files
            with a text field, Parquet files with a text column, or folders of them (recursive).
        tokenizer: tokenizer folder (tokenizer.json, or GPT-2 vocab + merges); copied to out/tokenizer.
        out: output folder for manifest.json, train_*.bin and val_*.bin.
        seq_len: training context length, recorded in the manifest (the shards are one
            continuous stream; any window length can be read from them).
        val_fraction: fraction of tokens for the validation split, as whole documents.
        num_proc: tokenizer processes (default: CPU cores - 1; 1 tokenizes in this process, where
            the Rust tokenizer still uses several threads). The output does not depend on it.
        text_field: field (JSONL/JSON) or column (Parquet) holding the text.
        text_unit: what one document of a text file is: the whole "file", each "paragraph"
            (separated by blank lines), or each "line".
        seed: seed of the validation document choice.
        shard_tokens: maximum tokens per shard file.
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
    num_proc = _default_num_proc() if num_proc is None else num_proc
    if num_proc < 1:
        raise LLMKitError(f"num_proc must be >= 1, got {num_proc}")
    if isinstance(sources, str):
        sources = [sources]
    tok = Tokenizer.from_dir(tokenizer)
    if tok.eos_id is None and tok.sep_id is None:
        raise LLMKitError(f"tokenizer '{tokenizer}' has no EOS (or [SEP]) token to separate documents "
                          "(set eos_token in its tokenizer_config.json)")
    docs = iter_documents(sources, text_field=text_field, text_unit=text_unit)  # checks every path now

    out_dir = claim_output_dir(out, MANIFEST, "a prepared dataset", overwrite)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # a crash below must not leave a stale manifest
    for old in list(out_dir.glob("train_*.bin")) + list(out_dir.glob("val_*.bin")):
        old.unlink()
    tok_dir = tok.save(out_dir / "tokenizer")
    dtype = token_dtype(tok.vocab_size)

    # Pass 1: tokenize everything into one temporary stream, remembering each document's length.
    tmp = out_dir / ".tokens.tmp"
    lengths: list[np.ndarray] = []
    keys: list[np.ndarray] = []
    n_tokens, n_docs = 0, 0
    read = [0]  # bytes of text handed to the tokenizer so far

    def counted(docs):
        for d in docs:
            read[0] += len(d.text.encode("utf-8"))
            yield d

    # The total is the input's size (uncompressed), so the bar has an ETA; the text is a little
    # smaller than JSON or Parquet files (keys, escapes), so the bar is set full at the end.
    total_mb = input_bytes([p for _, p in expand_sources(sources)]) / 1e6
    try:
        with open(tmp, "wb") as f, progress(total=round(total_mb, 1) or None, desc="tokenizing", unit="MB") as bar:
            for ids, lens, chunk_keys in _tokenize(_chunks(counted(docs)), tok_dir, dtype, num_proc):
                f.write(ids.tobytes())
                lengths.append(lens)
                keys.append(chunk_keys)
                n_tokens += len(ids)
                n_docs += len(lens)
                bar.update(max(0.0, min(read[0] / 1e6, bar.total or float("inf")) - bar.n))
                bar.set_postfix(docs=f"{n_docs:,}", tokens=f"{n_tokens:,}", refresh=False)
            if bar.total:
                bar.update(bar.total - bar.n)
        if n_tokens == 0:
            raise LLMKitError(f"empty corpus: no text in {', '.join(map(str, sources))}")
        lens = np.concatenate(lengths)

        # Pass 2: copy each document's ids to its split. Validation documents are few, so the
        # copy is a handful of long contiguous runs, read through a memmap (no RAM copy).
        is_val = choose_val_docs(lens, val_fraction, seed, keys=np.concatenate(keys))
        stream = np.memmap(tmp, dtype=dtype, mode="r")
        offsets = np.concatenate([[0], np.cumsum(lens)])
        writers = {s: _ShardWriter(out_dir, s, dtype, shard_tokens) for s in ("train", "val")}
        change = np.flatnonzero(np.diff(is_val.astype(np.int8))) + 1
        bounds = np.concatenate([[0], change, [len(lens)]])
        for a, b in zip(bounds[:-1], bounds[1:]):
            writers["val" if is_val[a] else "train"].write(stream[offsets[a]:offsets[b]])
        del stream
    finally:
        tmp.unlink(missing_ok=True)

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
        "tokenizer": {"path": "tokenizer", "source": str(tokenizer),
                      "sha256": _sha256(tok_dir / "tokenizer.json")},
        "sources": [str(s) for s in sources],
        "text_field": text_field,
        "text_unit": text_unit,
        "val_fraction": val_fraction,
        "seed": seed,
        "splits": splits,
    }
    tmp_manifest = out_dir / (MANIFEST + ".tmp")
    tmp_manifest.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp_manifest, out_dir / MANIFEST)  # the manifest appears only once all shards exist

    dt = time.perf_counter() - t0
    tr, va = splits["train"], splits["val"]
    print(f"prepared {tr['docs'] + va['docs']:,} docs, {n_tokens:,} tokens in {dt:.1f}s "
          f"({n_tokens / dt:,.0f} tokens/s): train {tr['tokens']:,} tokens ({tr['docs']:,} docs), "
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
