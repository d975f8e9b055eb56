"""Task heads over a backbone's hidden states, by composition.

A head replaces or sits on the model's output layer; the model stays one `Transformer`, so the
training loop, LoRA, frozen layers and checkpoints work unchanged. Today: the sequence
classification head of a causal model.

    tokens -> embed -> blocks -> norm -> (B, T, d) --[row b, position last[b]]--> head -> (B, N)

The head reads the final hidden state of each text's last token: in a causal model that is the
only position that has seen the whole text (Radford et al. 2018, "Improving Language
Understanding by Generative Pre-training", sec. 3.3; Raschka, "Build a Large Language Model
(From Scratch)", ch. 6).
"""

from __future__ import annotations

import torch
from torch import nn


def attach_class_head(model: nn.Module, n_classes: int) -> nn.Module:
    """Replace the output layer by an `n_classes` head (in place; freshly initialized unless the
    model is on the meta device, i.e. about to be filled from a checkpoint).

    The config is updated to what the model now is: the head is no longer tied to the
    embeddings (so a checkpoint stores it), and a final logit softcap (Gemma 2), meant for
    vocabulary logits, no longer applies."""
    cfg = model.cfg
    device = model.embed.weight.device
    head = nn.Linear(cfg.n_embd, n_classes, device=device, dtype=torch.float32)
    if device.type != "meta":
        nn.init.normal_(head.weight, std=0.02)  # the model's own init (GPT-2), not kaiming
        nn.init.zeros_(head.bias)
    model.lm_head = head
    model.cfg = cfg.replace(tie_embeddings=False, final_softcap=None)
    return model


def class_logits(model: nn.Module, idx: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """(B, N) logits at each row's last real token. Through the model's forward (not
    `hidden_states`) so DDP's gradient hooks and torch.compile see the call; the head on every
    position costs T * d * N, nothing next to the blocks."""
    logits = model(idx)  # (B, T, N)
    return logits[torch.arange(idx.shape[0], device=idx.device), last].float()  # (B, N)
