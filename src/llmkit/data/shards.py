"""Reading prepared token shards: random training windows and ordered validation windows.

A split (see `data/prepare.py`) is one token stream stored in several memmapped files. Training
batches are windows of it, as in nanoGPT: `x = tokens[s : s+T]`, `y = tokens[s+1 : s+T+1]`.
Unlike nanoGPT's independent random offsets, `WindowSampler` walks every non-overlapping window
of the stream once per epoch in a seeded shuffled order, so an epoch means one pass over the data
and the position in it is two integers (`epoch`, `step`) that a checkpoint can save and restore
exactly:

    stream  |--- w0 ---|--- w1 ---|--- w2 ---| ... |--- wK ---|+1      (offset o in [0, slack])
    epoch e: permutation_e(w0..wK) -> batches of B windows (x world_size ranks), remainder dropped
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from llmkit.errors import LLMKitError, read_json

MANIFEST = "manifest.json"


def load_manifest(path: str | Path) -> dict:
    """The manifest of a prepared folder (or of the manifest file itself)."""
    p = Path(path)
    mf = p if p.is_file() else p / MANIFEST
    if not mf.is_file():
        raise LLMKitError(f"'{p}' is not a prepared dataset (no {MANIFEST}; run `llmkit data prepare`)")
    manifest = read_json(mf)
    if not isinstance(manifest, dict) or "splits" not in manifest or "dtype" not in manifest:
        raise LLMKitError(f"{mf} is not an llmkit token-shard manifest")
    return manifest


class TokenShards:
    """One split of a prepared dataset as a single indexable token stream (memmapped, read-only)."""

    def __init__(self, path: str | Path, split: str = "train"):
        self.manifest = load_manifest(path)
        root = Path(path)
        self.root = root.parent if root.is_file() else root
        self.split = split
        splits = self.manifest["splits"]
        if split not in splits:
            raise LLMKitError(f"'{self.root}' has no '{split}' split (has: {', '.join(splits)})")
        self.dtype = np.dtype(self.manifest["dtype"])
        self.vocab_size: int = self.manifest["vocab_size"]
        self.eos_id: Optional[int] = self.manifest.get("eos_id")
        self._maps: list[np.memmap] = []
        sizes = []
        for shard in splits[split]["shards"]:
            f = self.root / shard["file"]
            expected = shard["tokens"] * self.dtype.itemsize
            if not f.is_file():
                raise LLMKitError(f"missing shard {f} (listed in {self.root / MANIFEST})")
            if f.stat().st_size != expected:
                raise LLMKitError(f"shard {f} has {f.stat().st_size} bytes, the manifest says {expected}: "
                                  "truncated or overwritten; prepare the dataset again")
            if shard["tokens"]:
                self._maps.append(np.memmap(f, dtype=self.dtype, mode="r"))
                sizes.append(shard["tokens"])
        # starts[i] = stream index of shard i's first token; starts[-1] = total length
        self._starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / self.manifest.get("tokenizer", {}).get("path", "tokenizer")

    def __len__(self) -> int:
        return int(self._starts[-1])

    def tokens(self, start: int, stop: int) -> np.ndarray:
        """tokens[start:stop] of the stream as int64, across shard boundaries."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"token range [{start}, {stop}) outside the {self.split} split of {len(self)} tokens")
        out = np.empty(stop - start, dtype=np.int64)
        i = int(np.searchsorted(self._starts, start, side="right")) - 1
        pos = start
        while pos < stop:
            lo = pos - int(self._starts[i])
            n = min(stop - pos, len(self._maps[i]) - lo)
            out[pos - start:pos - start + n] = self._maps[i][lo:lo + n]
            pos += n
            i += 1
        return out

    def window(self, i: int, seq_len: int) -> np.ndarray:
        """The seq_len + 1 tokens starting at stream index i: inputs [:-1], labels [1:]."""
        return self.tokens(i, i + seq_len + 1)

    def num_windows(self, seq_len: int) -> int:
        """Non-overlapping windows of seq_len (+1 label token) that fit in the split."""
        return max(0, (len(self) - 1) // seq_len)

    def val_batches(self, seq_len: int, batch_size: int, max_batches: Optional[int] = None,
                    rank: int = 0, world_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Non-overlapping windows 0, T, 2T, ... in order, as (x, y) LongTensor batches.

        Deterministic, so every evaluation sees the same tokens. The last batch may be smaller.
        With several ranks, batch b goes to rank b % world_size (`max_batches` counts globally).
        """
        n = self.num_windows(seq_len)
        starts = np.arange(n, dtype=np.int64) * seq_len
        n_batches = -(-n // batch_size)
        if max_batches is not None:
            n_batches = min(n_batches, max_batches)
        for b in range(rank, n_batches, world_size):
            yield _batch(self, starts[b * batch_size:(b + 1) * batch_size], seq_len)


def _batch(shards: TokenShards, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    buf = np.stack([shards.window(int(s), seq_len) for s in starts])  # (B, T+1)
    x = torch.from_numpy(np.ascontiguousarray(buf[:, :-1]))  # (B, T)
    y = torch.from_numpy(np.ascontiguousarray(buf[:, 1:]))  # (B, T)
    return x, y


class WindowSampler:
    """Shuffled training batches over a token split, resumable exactly.

    Epoch e uses a window offset and a permutation drawn from `np.random.default_rng([seed, e])`,
    so any epoch can be rebuilt from (seed, e) alone; `state_dict()` is (epoch, step) plus the
    settings it is only valid for. Iterating is endless (epoch after epoch).

    With `prefetch > 0` a background thread builds the next batches while the loop computes.
    It walks the same (epoch, step) sequence, so the batches are identical with or without it,
    and the state reported is that of the batches handed out, not of those prefetched.
    """

    def __init__(self, shards: TokenShards, seq_len: int, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, prefetch: int = 2, shift_windows: bool = True,
                 pin_memory: bool = False):
        if seq_len < 1 or batch_size < 1:
            raise LLMKitError(f"seq_len and batch_size must be >= 1, got {seq_len} and {batch_size}")
        if not 0 <= rank < world_size:
            raise LLMKitError(f"rank {rank} is outside world_size {world_size}")
        self.shards, self.seq_len, self.batch_size, self.seed = shards, seq_len, batch_size, seed
        self.rank, self.world_size, self.prefetch, self.shift_windows = rank, world_size, prefetch, shift_windows
        # Page-locked batches let `.to("cuda", non_blocking=True)` overlap the copy with compute.
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.n_windows = shards.num_windows(seq_len)
        per_step = batch_size * world_size
        self.batches_per_epoch = self.n_windows // per_step  # the remainder is dropped each epoch
        if self.batches_per_epoch == 0:
            raise LLMKitError(f"the {shards.split} split has {len(shards):,} tokens: too few for one batch of "
                              f"{per_step} windows of {seq_len}+1 tokens; use a smaller batch or seq_len")
        self.epoch = 0
        self.step = 0  # batches of this epoch already handed out (per rank)
        self._epoch_cache: tuple[int, np.ndarray] = (-1, np.empty(0, dtype=np.int64))
        self._thread: Optional[threading.Thread] = None
        self._queue: Optional[queue.Queue] = None
        self._stop = threading.Event()

    # --- the deterministic schedule ---------------------------------------------------------------
    def epoch_starts(self, epoch: int) -> np.ndarray:
        """Window start positions of `epoch` in the order they are used."""
        if self._epoch_cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            # Shift the window grid by a random amount of the slack at the end of the stream, so
            # that later epochs do not always cut the text at the same token.
            slack = len(self.shards) - 1 - self.n_windows * self.seq_len
            offset = int(rng.integers(0, slack + 1)) if self.shift_windows and slack > 0 else 0
            starts = offset + np.arange(self.n_windows, dtype=np.int64) * self.seq_len
            self._epoch_cache = (epoch, starts[rng.permutation(self.n_windows)])
        return self._epoch_cache[1]

    def _make(self, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        starts = self.epoch_starts(epoch)
        first = (step * self.world_size + self.rank) * self.batch_size
        x, y = _batch(self.shards, starts[first:first + self.batch_size], self.seq_len)
        return (x.pin_memory(), y.pin_memory()) if self.pin_memory else (x, y)

    def _schedule(self, epoch: int, step: int) -> Iterator[tuple[int, int, tuple[torch.Tensor, torch.Tensor]]]:
        """(epoch, step) of each batch and the batch, from the given position on, forever."""
        while True:
            if step >= self.batches_per_epoch:
                epoch, step = epoch + 1, 0
            yield epoch, step, self._make(epoch, step)
            step += 1

    # --- iteration ----------------------------------------------------------------------------
    def __iter__(self) -> "WindowSampler":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prefetch <= 0:
            epoch, step, batch = next(self._schedule(self.epoch, self.step))
        else:
            if self._thread is None:
                self._start()
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._thread = None
                raise item
            epoch, step, batch = item
        self.epoch, self.step = epoch, step + 1
        if self.step >= self.batches_per_epoch:
            self.epoch, self.step = epoch + 1, 0
        return batch

    def _start(self) -> None:
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self.prefetch)
        stop, q, sched = self._stop, self._queue, self._schedule(self.epoch, self.step)

        def work() -> None:
            try:
                for item in sched:
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            except BaseException as e:  # surfaced in the consumer by __next__
                q.put(e)

        # The thread spends its time in memmap reads and numpy/torch copies, which release the
        # GIL, so it overlaps with the training step instead of competing with it.
        self._thread = threading.Thread(target=work, name="llmkit-prefetch", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the prefetch thread (the next batch restarts it from the current state)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._queue = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # --- resumable state ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed, "seq_len": self.seq_len,
                "batch_size": self.batch_size, "world_size": self.world_size, "n_tokens": len(self.shards)}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly after the last batch handed out when `state` was taken."""
        for key in ("seed", "seq_len", "batch_size", "world_size", "n_tokens"):
            mine = len(self.shards) if key == "n_tokens" else getattr(self, key)
            if key in state and state[key] != mine:
                raise LLMKitError(f"cannot resume the data order: the checkpoint's {key} is {state[key]}, "
                                  f"this run's is {mine}")
        self.close()  # prefetched batches belong to the old position
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
