"""Optimizer and learning-rate schedule."""

from __future__ import annotations

import math

import torch


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only (linear and embedding weights), never on norms or biases:
    decaying a norm's gain towards 0 or a bias towards 0 only hurts (GPT-3 / nanoGPT practice)."""
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def make_optimizer(model, lr: float, weight_decay: float, betas=(0.9, 0.95), eps: float = 1e-8):
    groups = param_groups(model, weight_decay)
    if not any(g["params"] for g in groups):
        from llmkit.errors import LLMKitError

        raise LLMKitError("no trainable parameters")
    # The fused kernel updates all parameters in one pass (CPU and CUDA since torch 2.4);
    # DTensor parameters (FSDP2) take the foreach path.
    dtensor = any(type(p).__name__ == "DTensor" for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=not dtensor, foreach=dtensor or None)


def lr_at(step: int, peak: float, warmup: int, total: int, min_ratio: float = 0.1) -> float:
    """Linear warmup to `peak` over `warmup` steps, then cosine decay to `min_ratio * peak` at
    `total` (and flat after). `step` counts optimizer steps from 0."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if total <= warmup:
        return peak
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
