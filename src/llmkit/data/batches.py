"""Resumable shuffled micro-batches over a list of examples: the sampler of the example-level
recipes (instruction finetuning, the classifier, DPO).

Each recipe supplies a `collate(indices)` that builds its batch; the order of the examples, the
split between processes and the resume position are the same for all of them.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from llmkit.errors import LLMKitError


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
