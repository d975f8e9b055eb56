"""fill-mask: the likeliest tokens at each [MASK] of a text, from a masked language model.

    "Paris is the [MASK] of France." -> [{"score", "token", "token_str", "sequence"}, ...]

As transformers' FillMaskPipeline: a softmax over the vocabulary at the mask, the `top_k`
best (default 5), or only among `targets`. With several masks, one list per mask (each
scored alone, the other masks left in the sequence, special tokens kept in it).
"""

from __future__ import annotations

import torch

from llmkit.errors import LLMKitError
from llmkit.pipelines.base import Pipeline


class FillMaskPipeline(Pipeline):
    task = "fill-mask"
    OPTIONS = {"top_k": 5, "targets": None, "truncation": False}

    def check(self) -> None:
        if self.head is not None or self.model.cfg.causal:
            self.need_head("mlm", "a masked language model (an encoder with its MLM head)")
        if self.loaded.kind == "hf":  # a bare backbone (BertModel, ...) loads, but has no trained MLM head
            from llmkit.errors import read_json

            arch = ((read_json(self.loaded.path / "config.json") or {}).get("architectures") or [""])[0]
            if arch.endswith("Model"):
                raise LLMKitError(f"fill-mask needs a masked language model; {self.name} is a bare {arch} "
                                  f"(no MLM head)")
        if self.tokenizer.mask_id is None:
            raise LLMKitError(f"fill-mask: the tokenizer of {self.name} has no mask token")

    def _target_ids(self, targets) -> list[int]:
        """Each target's id, or the first id of its tokens when it is not one token (transformers'
        `get_target_ids`); duplicates once."""
        if isinstance(targets, str):
            targets = [targets]
        vocab = self.tokenizer.backend.get_vocab(with_added_tokens=True)
        ids = []
        for t in targets:
            tid = vocab.get(t)
            if tid is None:
                pieces = self.tokenizer.backend.encode(t, add_special_tokens=False).ids
                if not pieces:
                    continue
                tid = pieces[0]
            ids.append(int(tid))
        if not ids:
            raise LLMKitError("fill-mask: none of the targets is a token or encodes to one")
        return sorted(set(ids))

    def _run(self, items: list, opts: dict) -> list:
        top_k = opts["top_k"]
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise LLMKitError(f"fill-mask: top_k must be a positive integer, got {top_k!r}")
        targets = self._target_ids(opts["targets"]) if opts["targets"] is not None else None
        mask_id, pad_id = self.tokenizer.mask_id, self.tokenizer.pad_id
        mask_token = self.tokenizer.special_tokens.get("mask_token", "[MASK]")
        encs = [self.encode(t, truncate=self.max_length if opts["truncation"] else None) for t in items]
        for e in encs:
            if mask_id not in e.ids:
                raise LLMKitError(f"fill-mask: no mask token ({mask_token}) in the input")
        results = []
        for e, logits in zip(encs, self.forward(encs)):
            ids = torch.tensor(e.ids)
            where = torch.nonzero(ids == mask_id).squeeze(-1)
            probs = logits[where].softmax(-1)  # (masks, vocab)
            if targets is not None:
                probs = probs[..., targets]
            values, best = probs.topk(min(top_k, probs.shape[-1]))
            single = len(where) == 1
            rows = []
            for i, (vals, preds) in enumerate(zip(values.tolist(), best.tolist())):
                row = []
                for v, p in zip(vals, preds):
                    if targets is not None:
                        p = targets[p]
                    tokens = list(e.ids)
                    tokens[int(where[i])] = p
                    tokens = [t for t in tokens if t != pad_id]
                    row.append({"score": v, "token": p, "token_str": self.decode([p]),
                                "sequence": self.decode(tokens, skip_special=single)})
                rows.append(row)
            results.append(rows[0] if single else rows)
        return results

    def _shape(self, results: list, single: bool, opts: dict, inputs):
        # transformers returns a one-text list's result unwrapped, as for a text
        return results[0] if single or len(results) == 1 else results
