"""Task heads over a backbone's hidden states, by composition.

A head replaces the model's output layer (`lm_head`) by a `TaskHead` (model.py); the model stays
one `Transformer`, so the training loop, LoRA, frozen layers and checkpoints work unchanged.

    tokens -> embed -> blocks -> norm -> (B, T, d) --pool--> [dense -> act -> norm] -> (B[, T], N)

Tasks and their pooling:
    sequence  one label per text: an encoder reads its first token ([CLS], Devlin et al. 2019,
              sec. 3), or the mean over real tokens; a causal model reads the last real token,
              the only one that has seen the whole text (Radford et al. 2018, sec. 3.3).
    token     one label per token (named entities): every position, no pooling.
    span      extractive QA: two logits per token, the answer's start and end (BERT sec. 4.2).

The hidden layer before the projection is each family's own, as `transformers` builds it, so a
converted checkpoint computes the same logits: BERT's pooler (dense + tanh) for sequences,
RoBERTa's classifier dense + tanh, DistilBERT's pre-classifier + ReLU, ModernBERT's head (dense
+ GELU + norm) for every task. The spec is data, saved next to the weights (classifier.json,
key "head"), so a checkpoint rebuilds its head without this table.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from llmkit.errors import LLMKitError

TASKS = ("sequence", "token", "span")

# hf_model_type -> task -> (pool, act, norm); encoders not listed use BERT's, decoders "last".
FAMILY_HEADS: dict[str, dict[str, tuple]] = {
    "bert": {"sequence": ("first", "tanh", False), "token": (None, None, False), "span": (None, None, False)},
    "roberta": {"sequence": ("first", "tanh", False), "token": (None, None, False), "span": (None, None, False)},
    "distilbert": {"sequence": ("first", "relu", False), "token": (None, None, False), "span": (None, None, False)},
    "modernbert": {"sequence": ("first", "gelu", True), "token": (None, "gelu", True), "span": (None, "gelu", True)},
}
_DECODER_HEADS = {"sequence": ("last", None, False), "token": (None, None, False), "span": (None, None, False)}


def head_spec(cfg, task: str, n_out: int, pool: Optional[str] = None) -> dict:
    """The head a `task` gets on a model of `cfg`: {"task", "n_out", "pool", "act", "norm"}.
    `pool` overrides the family's pooling for sequence tasks ("first", "mean", "last")."""
    if task not in TASKS:
        raise LLMKitError(f"unknown head task '{task}' (choose from {', '.join(TASKS)})")
    table = _DECODER_HEADS if cfg.causal else FAMILY_HEADS.get(cfg.hf_model_type or "bert", FAMILY_HEADS["bert"])
    default_pool, act, norm = table[task]
    if pool is not None and task != "sequence":
        raise LLMKitError(f"pooling applies to sequence heads only, not '{task}'")
    if pool == "last" and not cfg.causal:
        raise LLMKitError("an encoder has no 'last token' reading: pool with 'first' or 'mean'")
    return {"task": task, "n_out": int(n_out), "pool": pool or default_pool, "act": act, "norm": norm}


def attach_head(model: nn.Module, spec: dict) -> nn.Module:
    """Replace the output layer by the TaskHead `spec` describes (in place).

    On a real device the head is initialised, and its hidden layer starts from the pretrained
    one `transformers` would load into it: BERT's pooler for a sequence head, ModernBERT's MLM
    head transform for any head. On the meta device (about to be filled from a checkpoint) it
    is left empty. The config becomes what the model now is: no tied or biased vocabulary
    layer, no MLM transform, no pooler or next-sentence head, no vocabulary softcap."""
    from llmkit.model import TaskHead

    cfg = model.cfg
    device = model.embed.weight.device
    with torch.device(device):
        head = TaskHead(cfg, spec["n_out"], spec.get("pool"), spec.get("act"), bool(spec.get("norm")))
    head.float()
    if device.type != "meta" and head.transform is not None:
        src = None
        if spec.get("act") == "tanh" and getattr(model, "pooler", None) is not None:
            src = {"dense.weight": model.pooler.weight, "dense.bias": model.pooler.bias}
        elif getattr(model, "lm_transform", None) is not None and spec.get("norm") and spec.get("act") == "gelu":
            src = {k: v for k, v in model.lm_transform.state_dict().items()}
        if src is not None:
            head.transform.load_state_dict({**head.transform.state_dict(), **src})
    model.lm_head = head
    model.lm_transform = None
    model.pooler = model.nsp_head = None
    model.cfg = cfg.replace(tie_embeddings=False, final_softcap=None, lm_head_bias=False, lm_head_transform=False,
                            pooler=False)
    return model


def attach_class_head(model: nn.Module, n_classes: int, pool: Optional[str] = None) -> nn.Module:
    """A sequence-classification head of `n_classes` (see `attach_head`)."""
    return attach_head(model, head_spec(model.cfg, "sequence", n_classes, pool))


def class_logits(model: nn.Module, idx: torch.Tensor, mask: torch.Tensor,
                 token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, N) sequence logits of right-padded rows (`mask` (B, T): 1 at real tokens). Through
    the model's forward (not `hidden_states`) so DDP's gradient hooks and torch.compile see
    the call."""
    return model(idx, attention_mask=mask, token_type_ids=token_type_ids).float()  # (B, N)


def head_of(classifier: Optional[dict], cfg) -> Optional[dict]:
    """The head spec of a checkpoint's classifier.json: its "head" entry, or (files written
    before heads had specs) a sequence head over its labels."""
    if classifier is None:
        return None
    if isinstance(classifier.get("head"), dict):
        return classifier["head"]
    return head_spec(cfg, "sequence", len(classifier["labels"]))
