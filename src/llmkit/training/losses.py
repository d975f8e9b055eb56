"""Losses the recipes hand to the training loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmkit.cross_entropy import IGNORE_INDEX  # label of tokens that carry no loss (prompt tokens, padding)


def causal_lm_loss(model, batch) -> dict:
    """Next-token cross-entropy. batch = (inputs, labels), both (B, T); labels are the inputs
    shifted by one, IGNORE_INDEX where no loss is wanted. Mean over the counted tokens."""
    x, y = batch[0], batch[1]
    loss = model(x, labels=y)  # the logits' cross-entropy, never holding all of them
    return {"loss": loss, "tokens": target_count(batch)}


def target_count(batch) -> torch.Tensor:
    """How many tokens of an (inputs, labels) batch carry loss: causal_lm_loss's weight. A
    tensor on the batch's device (counting never waits for the device)."""
    return (batch[1] != IGNORE_INDEX).sum()


def mlm_loss(model, batch) -> dict:
    """Masked-LM cross-entropy over the selected tokens only (labels != IGNORE_INDEX), their
    logits alone computed; with `nsp_label` in the batch, plus BERT's next-sentence loss
    (Devlin et al. 2019, appendix A.2: the sum of the two)."""
    labels = batch["labels"]
    selected = labels != IGNORE_INDEX  # (B, T)
    kw = dict(attention_mask=batch.get("mask"), token_type_ids=batch.get("types"), predict=selected,
              labels=labels)
    mask = batch.get("mask")
    out = {"tokens": mask.sum() if mask is not None else labels.numel()}  # tokens read, for throughput
    if "nsp_label" in batch:
        mlm, nsp = model(batch["idx"], nsp=True, **kw)
        nsp_loss = F.cross_entropy(nsp.float(), batch["nsp_label"])
        out.update(nsp_loss=nsp_loss.detach(), nsp_acc=(nsp.argmax(-1) == batch["nsp_label"]).float().mean())
    else:
        mlm, nsp_loss = model(batch["idx"], **kw), 0.0  # cross-entropy at the selected positions
    out["loss"] = mlm + nsp_loss
    if "nsp_label" in batch:
        out["mlm_loss"] = mlm.detach()
    return out


def mlm_targets(batch) -> torch.Tensor:
    """How many tokens of a masked-LM batch carry loss: the Trainer's weight_fn, so micro-batches
    with more masked tokens weigh more, as one big batch would."""
    return labelled_count(batch)


@torch.no_grad()
def mean_mlm_loss(model, batches) -> dict:
    """Validation masked-LM loss (per selected token) and its perplexity over `batches`."""
    total, count = 0.0, 0
    dev = next(model.parameters()).device
    for batch in batches:
        labels = batch["labels"].to(dev)
        selected = labels != IGNORE_INDEX
        logits = model(batch["idx"].to(dev), predict=selected)
        total += float(F.cross_entropy(logits.float(), labels[selected], reduction="sum"))
        count += int(selected.sum())
    if count == 0:
        return {}
    loss = total / count
    return {"val_loss": loss, "val_ppl": float(torch.tensor(loss).exp())}


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


def seq2seq_loss(model, batch) -> dict:
    """An encoder-decoder's cross-entropy on the target tokens (teacher forcing, Sutskever et al.
    2014): the encoder reads `src` (padding masked), the decoder reads `idx` (the target shifted
    right after the decoder-start token) and predicts `labels`. One forward, so DDP sees both
    halves. "tokens" counts what the step read: real source tokens plus target tokens."""
    labels = batch["labels"]
    loss = model(batch["idx"], src=batch["src"], src_mask=batch["src_mask"], labels=labels)
    return {"loss": loss, "tokens": batch["src_mask"].sum() + (labels != IGNORE_INDEX).sum()}


def labelled_count(batch) -> torch.Tensor:
    """How many tokens of a dict batch carry loss (labels != IGNORE_INDEX): the Trainer's
    weight_fn for masked-LM and seq2seq batches, so micro-batches weigh by their targets."""
    return (batch["labels"] != IGNORE_INDEX).sum()


@torch.no_grad()
def mean_seq2seq_loss(model, batches) -> dict:
    """Validation loss per target token, and its perplexity, of an encoder-decoder."""
    total, count = 0.0, 0
    dev = next(model.parameters()).device
    for batch in batches:
        b = {k: v.to(dev) for k, v in batch.items()}
        logits = model(b["idx"], src=b["src"], src_mask=b["src_mask"])
        total += float(F.cross_entropy(logits.flatten(0, 1).float(), b["labels"].flatten(),
                                       ignore_index=IGNORE_INDEX, reduction="sum"))
        count += int((b["labels"] != IGNORE_INDEX).sum())
    if count == 0:
        return {}
    loss = total / count
    return {"val_loss": loss, "val_ppl": float(torch.tensor(loss).exp())}
