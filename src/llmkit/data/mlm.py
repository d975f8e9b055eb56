"""Masked-LM pretraining batches over prepared token shards (`llmkit pretrain --objective mlm`).

Two samplers, both resumable exactly. The masks are a function of the seed and the batch's
position, never of a global random state or of the process: each process draws the random
numbers of the whole global batch and keeps its own rows, so 2 processes x 4 rows mask exactly
as 1 process x 8 rows does (the windows are split between processes the same way).

    MaskedWindows   RoBERTa's FULL-SENTENCES packing (Liu et al. 2019, sec. 4.2): each row is
                    [CLS] + T-2 contiguous tokens of the stream + [SEP], documents separated by
                    [SEP] inside it; no padding. Masking: data/masking.py (15%, 80/10/10).
    NSPBatches      BERT's original inputs (Devlin et al. 2019, sec. 3.1): [CLS] A [SEP] B [SEP]
                    sentence pairs, half of them with B from another document, token types
                    0/1, right-padded, with the next-sentence label, masked the same way.

Batches are dicts: idx (B, T) masked inputs, labels (B, T) original ids at the selected
positions and -100 elsewhere, and for NSP mask (B, T), types (B, T), nsp_label (B,).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from llmkit.data.masking import mask_tokens, nsp_pairs, special_token_ids, word_start_table
from llmkit.data.shards import TokenShards, WindowSampler
from llmkit.errors import LLMKitError


class Masker:
    """The masking settings of one run, applied with a generator seeded by (seed, key), over the
    global batch (`world_size` processes' rows, this `rank`'s kept)."""

    def __init__(self, tokenizer, seed: int, rank: int = 0, mlm_probability: float = 0.15,
                 whole_word: bool = False, vocab_size: Optional[int] = None, world_size: int = 1):
        if tokenizer.mask_id is None or tokenizer.cls_id is None or tokenizer.sep_id is None:
            raise LLMKitError("masked-LM pretraining needs a tokenizer with [MASK], [CLS] and [SEP] tokens "
                              "(`llmkit tokenizer train --kind wordpiece`)")
        self.cls_id, self.sep_id, self.mask_id = tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
        self.special = special_token_ids(tokenizer)
        self.vocab_size = vocab_size or tokenizer.vocab_size
        self.word_starts = word_start_table(tokenizer) if whole_word else None
        self.seed, self.rank, self.world, self.p = seed, rank, world_size, mlm_probability

    def generator(self, *key: int) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, *key]).generate_state(2, dtype=np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def __call__(self, ids: torch.Tensor, *key: int) -> tuple[torch.Tensor, torch.Tensor]:
        B = ids.shape[0]
        rows = torch.full((B * self.world, ids.shape[1]), self.pad_id, dtype=ids.dtype)  # the global batch
        rows[self.rank * B:(self.rank + 1) * B] = ids
        inputs, labels = mask_tokens(rows, mask_id=self.mask_id, vocab_size=self.vocab_size, special_ids=self.special,
                                     generator=self.generator(*key), mlm_probability=self.p,
                                     word_starts=self.word_starts)
        return inputs[self.rank * B:(self.rank + 1) * B], labels[self.rank * B:(self.rank + 1) * B]

    def wrap(self, x: torch.Tensor) -> torch.Tensor:
        """[CLS] + rows + [SEP]: (B, n) -> (B, n + 2)."""
        B = x.shape[0]
        return torch.cat([torch.full((B, 1), self.cls_id), x, torch.full((B, 1), self.sep_id)], dim=1)


class MaskedWindows:
    """Endless masked rows of `seq_len` tokens over a shuffled WindowSampler (see module doc)."""

    def __init__(self, shards: TokenShards, seq_len: int, batch_size: int, masker: Masker, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if seq_len < 3:
            raise LLMKitError(f"seq_len must be >= 3 for [CLS] text [SEP], got {seq_len}")
        self.sampler = WindowSampler(shards, seq_len - 2, batch_size, seed=seed, rank=rank, world_size=world_size)
        self.masker, self.n = masker, 0

    def __iter__(self) -> "MaskedWindows":
        return self

    def __next__(self) -> dict:
        x, _ = next(self.sampler)  # (B, T - 2): the window's extra label token is unused
        idx, labels = self.masker(self.masker.wrap(x), 0, self.n)
        self.n += 1
        return {"idx": idx, "labels": labels}

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "n": self.n}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.n = int(state["n"])

    def close(self) -> None:
        self.sampler.close()


def masked_val_batches(shards: TokenShards, seq_len: int, batch_size: int, masker: Masker,
                       max_batches: Optional[int] = None):
    """The validation split's windows in order, masked the same way every evaluation."""
    for b, (x, _) in enumerate(shards.val_batches(seq_len - 2, batch_size, max_batches)):
        idx, labels = masker(masker.wrap(x), 1, b)
        yield {"idx": idx, "labels": labels}


# --- next-sentence prediction ---------------------------------------------------------------------
def stream_documents(shards: TokenShards, sentence_end_ids: set[int], max_sentence: int) -> list[list[list[int]]]:
    """The split's documents (split at the separator) as sentences: cut after sentence-final
    punctuation ('.', '!', '?') and at most `max_sentence` tokens long. Reads the whole split:
    NSP pairs are built once, up front, as BERT's create_pretraining_data does."""
    sep = shards.eos_id
    tokens = shards.tokens(0, len(shards))
    docs: list[list[list[int]]] = []
    cuts = np.flatnonzero(tokens == sep) if sep is not None else np.array([], dtype=np.int64)
    start = 0
    for end in list(cuts) + [len(tokens)]:
        doc = tokens[start:end].tolist()
        start = end + 1
        sentences, cur = [], []
        for t in doc:
            cur.append(t)
            if t in sentence_end_ids or len(cur) >= max_sentence:
                sentences.append(cur)
                cur = []
        if cur:
            sentences.append(cur)
        if sentences:
            docs.append(sentences)
    return docs


class NSPBatches:
    """Endless masked sentence-pair batches with next-sentence labels (see module doc)."""

    def __init__(self, shards: TokenShards, tokenizer, seq_len: int, batch_size: int, masker: Masker,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        from llmkit.data.batches import ShuffledBatches

        ends = {i for i in (tokenizer.token_to_id(p) for p in (".", "!", "?")) if i is not None}
        docs = stream_documents(shards, ends, max(seq_len // 4, 8))
        self.pairs = nsp_pairs(docs, cls_id=masker.cls_id, sep_id=masker.sep_id, max_length=seq_len, seed=seed)
        self.masker, self.seq_len = masker, seq_len
        self.inner = ShuffledBatches(len(self.pairs), batch_size, self._collate, seed=seed, rank=rank,
                                     world_size=world_size)

    def _collate(self, indices: list[int]) -> dict:
        rows = [self.pairs[i] for i in indices]
        T = self.seq_len  # a fixed width: the masks' random draws do not depend on the batch's lengths
        ids = torch.full((len(rows), T), self.masker.pad_id, dtype=torch.long)
        types = torch.zeros((len(rows), T), dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, :len(r.ids)] = torch.tensor(r.ids)
            types[b, :len(r.ids)] = torch.tensor(r.type_ids)
            mask[b, :len(r.ids)] = 1
        idx, labels = self.masker(ids, 2, self.inner.step)
        return {"idx": idx, "labels": labels, "mask": mask, "types": types,
                "nsp_label": torch.tensor([r.label for r in rows])}

    def __iter__(self) -> "NSPBatches":
        return self

    def __next__(self) -> dict:
        return next(self.inner)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)
