"""LoRA and quantized frozen weights, by composition on any llmkit model.

`apply_lora(model, LoRAConfig(targets=["q", "v"]))` swaps the named `nn.Linear` layers for
`LoRALinear(base)`, which keeps the base layer untouched and adds a low-rank update
(Hu et al. 2021, "LoRA", eq. 3):

    y = base(x) + (alpha / r) * B(A(dropout(x)))      A: (r, in), B: (out, r), B = 0 at start

so a fresh adapter changes nothing, and `merge_lora` folds B @ A into the base weight, giving
the same function as plain `nn.Linear` layers. QLoRA (Dettmers et al. 2023) is the same
composition with a quantized base (`Int8Linear`, `NF4Linear`): the frozen weights are held in
8 or 4 bits and dequantized on the fly, tile by tile of the layer, in forward and backward.

No subclass of the model is ever written: the model file stays the only model.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from llmkit.errors import LLMKitError

# Linear layers LoRA may target, by their attribute name in model.py.
TARGETS = ("q", "k", "v", "o", "gate", "up", "down", "lm_head")


@dataclass
class LoRAConfig:
    """LoRA adapter settings.

    Args:
        r: rank of the update.
        alpha: scale numerator: the update is multiplied by alpha / r.
        dropout: dropout on the adapter's input.
        targets: which linear layers get an adapter: q, k, v, o (attention), gate, up, down
            (MLP), lm_head; or "all" for every one in the blocks.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["q", "k", "v", "o"])

    def resolved_targets(self) -> list[str]:
        names = [t.strip() for t in self.targets for t in str(t).split(",") if t.strip()]
        if names == ["all"]:
            return ["q", "k", "v", "o", "gate", "up", "down"]
        bad = [t for t in names if t not in TARGETS]
        if bad or not names:
            raise LLMKitError(f"unknown LoRA target(s) {bad or names}: choose from {', '.join(TARGETS)} or 'all'")
        return names

    def validate(self) -> None:
        if self.r < 1:
            raise LLMKitError(f"LoRA rank must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise LLMKitError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        self.resolved_targets()


# --- quantized frozen linear layers (QLoRA's base) ------------------------------------------------


def frozen_weight(layer: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The (out, in) weight of a frozen base layer in `dtype` (dequantized if quantized)."""
    return layer.dequantize(dtype) if isinstance(layer, QuantLinear) else layer.weight.to(dtype)


class _FrozenLinear(torch.autograd.Function):
    """y = x @ W^T for a frozen W (plain, or rebuilt from its quantized form) that saves
    nothing for backward but a reference to the layer: backward gets W again (dequantizing
    again if need be) for the input's gradient, the only one needed. A plain F.linear would
    keep its input and, under autocast, a bf16 copy of W per layer until backward: ~5% more
    training memory than peft in bf16, measured (bench/bench_lora.py). Without autocast the
    plain layer is as lean (it keeps references, no copies), so LoRALinear uses this only
    under autocast."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer = layer
        return F.linear(x, frozen_weight(layer, x.dtype))

    @staticmethod
    def backward(ctx, grad):
        return grad @ frozen_weight(ctx.layer, grad.dtype), None


def frozen_linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a frozen base layer (nn.Linear or QuantLinear) through `_FrozenLinear`."""
    if torch.is_autocast_enabled(x.device.type):  # autocast's dtype, as F.linear would compute in
        x = x.to(torch.get_autocast_dtype(x.device.type))
    y = _FrozenLinear.apply(x, layer)
    return y if layer.bias is None else y + layer.bias.to(y.dtype)


class QuantLinear(nn.Module):
    """A frozen linear layer whose weight is stored quantized (buffers, not parameters).
    Each format (subclass) defines `dequantize(dtype)` -> the (out, in) weight."""

    bits: int

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return frozen_linear(self, x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}"


class Int8Linear(QuantLinear):
    """Weight-only int8 with one absmax scale per output row (LLM.int8()'s vector-wise
    quantization, without the outlier split): w ~= q * scale, q in [-127, 127]."""

    bits = 8

    def __init__(self, linear: nn.Linear):
        super().__init__(linear)
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0  # (out, 1)
        self.register_buffer("qweight", torch.round(w / scale).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        return (self.qweight.to(dtype) * self.scale.to(dtype))


# The 16 NF4 levels: quantiles of N(0, 1) scaled to [-1, 1] (QLoRA, appendix E); exact zero included.
NF4_LEVELS = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
])


class NF4Linear(QuantLinear):
    """4-bit NormalFloat (QLoRA): blocks of 64 weights share an absmax; each weight is the
    index of the nearest NF4 level, two indices packed per byte. Pure PyTorch, so it runs on
    any device; dequantizing is a table lookup."""

    bits = 4
    block = 64

    def __init__(self, linear: nn.Linear):
        super().__init__(linear)
        w = linear.weight.detach().float().reshape(-1)
        if w.numel() % self.block:
            raise LLMKitError(f"NF4 needs a weight size divisible by {self.block}, got {tuple(linear.weight.shape)}")
        blocks = w.view(-1, self.block)  # (n_blocks, 64)
        absmax = blocks.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
        idx = ((blocks / absmax)[..., None] - NF4_LEVELS).abs().argmin(dim=-1).to(torch.uint8).view(-1)
        self.register_buffer("packed", (idx[0::2] << 4) | idx[1::2])  # (numel / 2,) uint8
        self.register_buffer("absmax", absmax)
        self.register_buffer("levels", NF4_LEVELS.clone())

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        idx = torch.stack((self.packed >> 4, self.packed & 0xF), dim=1).view(-1).long()
        w = self.levels[idx].view(-1, self.block) * self.absmax  # (n_blocks, 64)
        return w.view(self.out_features, self.in_features).to(dtype)


QUANTIZERS = {"int8": Int8Linear, "nf4": NF4Linear}


# --- LoRA -------------------------------------------------------------------------------------------


class LoRALinear(nn.Module):
    """base(x) + scaling * B(A(dropout(x))); the base layer (nn.Linear or QuantLinear) is frozen."""

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        w = base.weight if isinstance(base, nn.Linear) else None
        dtype = w.dtype if w is not None else torch.float32
        device = w.device if w is not None else next(base.buffers()).device
        self.lora_a = nn.Parameter(torch.empty(r, self.in_features, device=device, dtype=dtype))
        self.lora_b = nn.Parameter(torch.zeros(self.out_features, r, device=device, dtype=dtype))
        # A as nn.Linear's default init (and peft's), B = 0: training starts from the base model.
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scaling = alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Under autocast, a plain nn.Linear would keep a bf16 copy of its frozen weight until
        # backward; `frozen_linear` keeps nothing (QuantLinear always takes that path).
        # A base held in the autocast dtype (`hold_frozen_bases`) takes that path in every
        # precision: it casts the weight to the input's dtype.
        base = self.base
        casts = torch.is_autocast_enabled(x.device.type) and torch.is_grad_enabled()
        lean = isinstance(base, nn.Linear) and not base.weight.requires_grad and (casts or base.weight.dtype != x.dtype)
        y = frozen_linear(self.base, x) if lean else self.base(x)
        if not self.enabled:
            return y
        a, b = self.lora_a.to(x.dtype), self.lora_b.to(x.dtype)
        return y + F.linear(F.linear(self.dropout(x), a), b) * self.scaling  # (..., r) -> (..., out)

    def merged(self) -> nn.Linear:
        """A plain nn.Linear computing the same function (the quantized base is dequantized)."""
        base = self.base
        w = base.weight.detach() if isinstance(base, nn.Linear) else base.dequantize(torch.float32)
        delta = (self.lora_b.detach().float() @ self.lora_a.detach().float()) * self.scaling  # (out, in)
        out = nn.Linear(self.in_features, self.out_features, bias=base.bias is not None,
                        device=w.device, dtype=w.dtype)
        with torch.no_grad():
            out.weight.copy_((w.float() + delta).to(w.dtype))
            if base.bias is not None:
                out.bias.copy_(base.bias)
        return out

    def extra_repr(self) -> str:
        return f"r={self.lora_a.shape[0]}, scaling={self.scaling:g}"


def hold_frozen_bases(model: nn.Module, dtype: torch.dtype) -> int:
    """Store the frozen float32 weight of every LoRA layer's plain base in `dtype`, the
    training's autocast dtype (bf16 or fp16), once. Autocast would cast it to that dtype in each
    forward and `_FrozenLinear` again in each backward: the same rounding, so the products, the
    losses and the adapters' updates are bit for bit what they were, without the casts
    (bench/bench_lora.py) and with half the memory for those weights. Only for training that
    keeps just the adapters (the base on disk is untouched); other precisions cast the held
    weight back on use. Returns the bytes saved."""
    saved = 0
    for layer in lora_layers(model):
        w = layer.base.weight if type(layer.base) is nn.Linear else None
        if w is None or w.requires_grad or w.dtype != torch.float32:
            continue
        w.data = w.data.to(dtype)  # the same Parameter: state_dict keys unchanged
        saved += w.numel() * (4 - w.element_size())
    return saved


def _linears(model: nn.Module, names: list[str]) -> Iterator[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, module) for every layer whose attribute name is in `names`."""
    for parent in list(model.modules()):
        for attr, child in list(parent.named_children()):
            if attr in names:
                yield parent, attr, child


def apply_lora(model: nn.Module, cfg: LoRAConfig, quantize: Optional[str] = None) -> int:
    """Freeze every weight of `model`, then put a trainable LoRA adapter on each target layer.
    With `quantize` ("int8" or "nf4") the frozen linear layers of the blocks are stored
    quantized first (QLoRA). Returns the number of trainable parameters."""
    cfg.validate()
    targets = cfg.resolved_targets()
    model_cfg = getattr(model, "cfg", None)
    if "lm_head" in targets and getattr(model_cfg, "tie_embeddings", False):
        raise LLMKitError("this model ties lm_head to the embeddings: a LoRA on lm_head would change both; "
                          "leave lm_head out of --lora.targets")
    for p in model.parameters():
        p.requires_grad_(False)
    if quantize is not None:
        quantize_linears(model, quantize)
    found = 0
    for parent, attr, child in _linears(model, targets):
        if isinstance(child, LoRALinear):
            raise LLMKitError("the model already has LoRA adapters")
        if not isinstance(child, (nn.Linear, QuantLinear)):
            continue
        setattr(parent, attr, LoRALinear(child, cfg.r, cfg.alpha, cfg.dropout))
        found += 1
    if not found:
        raise LLMKitError(f"no linear layer named {targets} in the model")
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def quantize_linears(model: nn.Module, kind: str) -> None:
    """Replace the (frozen) nn.Linear layers inside the transformer blocks by quantized ones.
    The embeddings and the output head stay in full precision, as in QLoRA."""
    if kind not in QUANTIZERS:
        raise LLMKitError(f"unknown quantization '{kind}': choose from {', '.join(QUANTIZERS)}")
    blocks = getattr(model, "blocks", model)
    for parent, attr, child in _linears(blocks, ["q", "k", "v", "o", "gate", "up", "down"]):
        if type(child) is nn.Linear:
            if child.weight.requires_grad:
                raise LLMKitError("only frozen layers can be quantized")
            setattr(parent, attr, QUANTIZERS[kind](child))


def lora_layers(model: nn.Module) -> list[LoRALinear]:
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter alone: {"blocks.0.attn.q.lora_a": ..., ...}."""
    return {k: v for k, v in model.state_dict().items() if k.endswith((".lora_a", ".lora_b"))}


def load_lora_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], source: str = "adapter") -> None:
    """Load an adapter checkpoint (every adapter tensor, plus any other trained tensor such as a
    classifier head) into a model that `apply_lora` prepared with the same settings."""
    own = model.state_dict()
    missing = sorted(set(lora_state_dict(model)) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise LLMKitError(f"{source}: adapter does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for k, v in sd.items():
        if v.shape != own[k].shape:
            raise LLMKitError(f"{source}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
    model.load_state_dict(sd, strict=False)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base layer, leaving plain nn.Linear layers (in place)."""
    for parent, attr, child in list(_linears(model, list(TARGETS))):
        if isinstance(child, LoRALinear):
            setattr(parent, attr, child.merged())
    return model


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """Run the base model: every adapter off inside the block (e.g. DPO's reference model,
    with no second copy of the weights in memory)."""
    layers = lora_layers(model)
    previous = [m.enabled for m in layers]
    for m in layers:
        m.enabled = False
    try:
        yield model
    finally:
        for m, e in zip(layers, previous):
            m.enabled = e


def weight_bytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters and buffers (quantized weights at their real size)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue  # tied weights count once
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total
