"""Losses the recipes hand to the training loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # label of tokens that carry no loss (prompt tokens, padding)


def causal_lm_loss(model, batch) -> dict:
    """Next-token cross-entropy. batch = (inputs, labels), both (B, T); labels are the inputs
    shifted by one, IGNORE_INDEX where no loss is wanted. Mean over the counted tokens."""
    x, y = batch[0], batch[1]
    logits = model(x)  # (B, T, vocab)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX)
    return {"loss": loss, "tokens": target_count(batch)}


def target_count(batch) -> torch.Tensor:
    """How many tokens of an (inputs, labels) batch carry loss: causal_lm_loss's weight. A
    tensor on the batch's device (counting never waits for the device)."""
    return (batch[1] != IGNORE_INDEX).sum()


@torch.no_grad()
def mean_lm_loss(model, batches) -> dict:
    """Token-weighted validation loss and perplexity over `batches` of (inputs, labels)."""
    total, count = 0.0, 0
    for x, y in batches:
        dev = next(model.parameters()).device
        x, y = x.to(dev), y.to(dev)
        logits = model(x)
        total += float(F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX,
                                       reduction="sum"))
        count += int((y != IGNORE_INDEX).sum())
    if count == 0:
        return {}
    loss = total / count
    return {"val_loss": loss, "val_ppl": float(torch.tensor(loss).exp())}
