"""The finetuning methods every tuning recipe (finetune, classify, dpo) offers: which weights
train (`full`, `lora` / QLoRA, `freeze` = the last N blocks). How checkpoints of them are saved
is the scaffold's (recipes/scaffold.py: `Run.fit(lora=...)`); merging an adapter into its base
is `llmkit merge-lora` (checkpoint.py).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch

from llmkit.errors import LLMKitError
from llmkit.lora import LoRAConfig

if TYPE_CHECKING:
    from llmkit.training.loop import TrainConfig

METHODS = ("full", "lora", "freeze")


@dataclass
class Tuning:
    """What `tune` did to a model and the loop settings it chose."""

    line: str  # setup_method's one-line summary
    params: int  # the base model's parameters (before LoRA / quantization)
    trainable: int
    bytes_before: int
    bytes_after: int
    steps_per_epoch: int  # optimizer steps per pass over the training data
    train: "TrainConfig"  # the given settings, lr and max_steps filled in


def tune(model: torch.nn.Module, method: str, lora: LoRAConfig, train_last: int, quantize: Optional[str], train,
         micro_batches_per_epoch: int, epochs: Optional[float], lr_default: float) -> Tuning:
    """`setup_method`, then the loop settings a finetuning recipe derives from it: the method's
    usual learning rate when none was given, and `epochs` (default 1) passes over the data when
    no budget (max_steps, max_tokens, max_time) was."""
    from llmkit.lora import weight_bytes

    before = weight_bytes(model)
    params = sum(p.numel() for p in model.parameters())  # a quantized base holds buffers, not parameters
    line = setup_method(model, method, lora, train_last, quantize)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    changes: dict = {}
    if train.lr is None:
        changes["lr"] = lr_default
    steps = math.ceil(micro_batches_per_epoch / train.grad_accum)
    if not (train.max_steps or train.max_tokens or train.max_time):
        changes["max_steps"] = max(1, math.ceil((epochs or 1.0) * steps))
    tc = dataclasses.replace(train, **changes) if changes else train
    return Tuning(line, params, trainable, before, weight_bytes(model), steps, tc)


def check_method(method: str, quantize: Optional[str] = None) -> None:
    """The method settings' own errors, raised before any data or model is loaded."""
    from llmkit.lora import QUANTIZERS

    if method not in METHODS:
        raise LLMKitError(f"unknown method '{method}': choose from {', '.join(METHODS)}")
    if quantize not in (None, "none"):
        if method != "lora":
            raise LLMKitError("--quantize holds frozen base weights in low precision: use it with --method lora")
        if quantize not in QUANTIZERS:
            raise LLMKitError(f"unknown quantization '{quantize}': choose from {', '.join(QUANTIZERS)}")


def setup_method(model: torch.nn.Module, method: str, lora: LoRAConfig, train_last: int = 2,
                 quantize: Optional[str] = None) -> str:
    """Set requires_grad for `method` (and wrap layers for LoRA); returns a one-line summary.

    full: every weight. freeze: only the last `train_last` blocks, the final norm and the
    output head ("fine-tune only the last layers"). lora: only the adapters (base frozen,
    stored quantized with `quantize` = int8 | nf4: QLoRA).
    """
    from llmkit.lora import apply_lora, weight_bytes

    check_method(method, quantize)
    before = weight_bytes(model)
    # The denominator is the base model's parameter count, taken before the method changes the
    # model: a quantized base holds its frozen weights as buffers, not parameters, and LoRA adds
    # its adapters, so a count afterwards would change with the method (QLoRA nf4 read 30%
    # here for the 8% that finetune's summary.json reports against the base).
    total = sum(p.numel() for p in model.parameters())
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif method == "freeze":
        n = len(model.blocks)
        if not 1 <= train_last <= n:
            raise LLMKitError(f"--train-last must be between 1 and the model's {n} blocks, got {train_last}")
        for p in model.parameters():
            p.requires_grad_(False)
        # lm_head may be tied to the embeddings, in which case those train too (one tensor).
        for m in list(model.blocks[n - train_last:]) + [model.norm, model.lm_head]:
            for p in m.parameters():
                p.requires_grad_(True)
    else:
        apply_lora(model, lora, quantize=None if quantize == "none" else quantize)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    line = f"method {method}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / max(total, 1):.2f}%)"
    if method == "lora" and quantize not in (None, "none"):
        after = weight_bytes(model)
        line += f"; base weights {quantize}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB"
    return line
