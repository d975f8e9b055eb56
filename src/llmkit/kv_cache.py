"""The KV cache: preallocated key/value buffers per layer, indexed by position (DESIGN.md, principle
9), with an encoder-decoder's cross-attention rows. Used by `llmkit.model` and the decode engine."""

from __future__ import annotations

from typing import Optional

import torch

from llmkit.config import ModelConfig


class KVCache:
    """Preallocated key/value buffers, one pair per layer: (B, n_kv_heads, max_len, head_dim).

    Keys of the token at position p live in slot p. `update` writes new keys and returns the
    buffer up to `kv_len` (the longest position in use + 1), so attention never scans slots no
    row has reached. Slots past a row's position may hold stale values from an earlier, longer
    sequence: the causal mask (key position <= query position) never lets a query see them.

    An encoder-decoder's cache also holds each row's cross-attention keys/values, computed once
    from the encoder's states (`write_cross`), and which source positions are real (`src_valid`).
    """

    def __init__(
        self,
        cfg: ModelConfig,
        batch_size: int,
        max_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        src_len: int = 0,
    ):
        shape = (batch_size, cfg.kv_heads, max_len, cfg.head_size)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        cross = (batch_size, cfg.kv_heads, src_len, cfg.head_size)
        n_cross = cfg.n_layer if cfg.is_seq2seq and src_len else 0
        self.ck = [torch.zeros(cross, device=device, dtype=dtype) for _ in range(n_cross)]
        self.cv = [torch.zeros(cross, device=device, dtype=dtype) for _ in range(n_cross)]
        self.src_valid = torch.zeros(batch_size, src_len, dtype=torch.bool, device=device) if n_cross else None
        self.shared = {"src_len": 0}  # longest source written, shared with row views
        self.batch_size, self.max_len, self.kv_len = batch_size, max_len, 0

    def _like(self, f, shared: Optional[dict] = None) -> "KVCache":
        out = KVCache.__new__(KVCache)
        out.k, out.v, out.ck, out.cv = ([f(t) for t in ts] for ts in (self.k, self.v, self.ck, self.cv))
        out.src_valid = f(self.src_valid) if self.src_valid is not None else None
        out.shared = shared if shared is not None else dict(self.shared)
        out.max_len, out.kv_len = self.max_len, 0
        return out

    def rows(self, start: int, stop: int) -> "KVCache":
        """A cache sharing rows start:stop of this one (views: writes land here)."""
        view = self._like(lambda t: t[start:stop], self.shared)
        view.batch_size = stop - start
        return view

    def select(self, rows: list[int]) -> "KVCache":
        """A new cache whose row b is a copy of row rows[b] of this one (e.g. a prompt prefix
        shared by several continuations)."""
        index = torch.tensor(rows, device=self.k[0].device)
        out = self._like(lambda t: t.index_select(0, index))
        out.batch_size = len(rows)
        return out

    def move_row(self, src: int, dst: int, n: int) -> None:
        """Copy row `src` into row `dst`: its first `n` self-attention slots and its source."""
        for buf in self.k + self.v:
            buf[dst, :, :n].copy_(buf[src, :, :n])
        for buf in self.ck + self.cv + ([self.src_valid] if self.src_valid is not None else []):
            buf[dst].copy_(buf[src])

    def write_cross(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store cross-attention keys/values (B, n_kv, S, hd) of the first B rows."""
        B, S = k.shape[0], k.shape[2]
        if S > self.ck[layer].shape[2]:
            raise ValueError(f"the source is {S} tokens; this cache holds {self.ck[layer].shape[2]}")
        self.ck[layer][:B, :, :S] = k
        self.cv[layer][:B, :, :S] = v
        self.shared["src_len"] = max(self.shared["src_len"], S)

    def set_source_mask(self, valid: torch.Tensor) -> None:
        """Which of the source's positions (B, S) are real tokens, for the first B rows."""
        B, S = valid.shape
        self.src_valid[:B, :S] = valid.bool()
        self.src_valid[:B, S:] = False

    def cross_kv(self, layer: int, B: int) -> tuple[torch.Tensor, torch.Tensor]:
        S = self.shared["src_len"]
        return self.ck[layer][:B, :, :S], self.cv[layer][:B, :, :S]

    def update(self, layer: int, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B, n_kv, T, hd) at positions `pos` (B|1, T); return (B, n_kv, kv_len, hd)."""
        kc, vc = self.k[layer], self.v[layer]
        if kc.shape[0] != k.shape[0]:  # a sub-batch: the first rows of the cache
            kc, vc = kc[: k.shape[0]], vc[: k.shape[0]]
        if pos.shape[0] == 1:  # every row at the same positions: one contiguous copy
            kc.index_copy_(2, pos[0], k.to(kc.dtype))
            vc.index_copy_(2, pos[0], v.to(vc.dtype))
        else:
            # Rows at different positions: advanced-index assignment. (`scatter_` gives the same
            # values but on CPU copies the whole buffer for bfloat16: ~40x slower per step.)
            rows = torch.arange(k.shape[0], device=pos.device)[:, None]  # (B, 1) against pos (B, T)
            kc[rows, :, pos] = k.transpose(1, 2).to(kc.dtype)
            vc[rows, :, pos] = v.transpose(1, 2).to(vc.dtype)
        return kc[:, :, : self.kv_len], vc[:, :, : self.kv_len]
