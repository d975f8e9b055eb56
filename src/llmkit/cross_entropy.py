"""Cross-entropy over the vocabulary without holding the logits.

`linear_cross_entropy(h, weight, bias, labels)` is `F.cross_entropy(F.linear(h, weight, bias).float(),
labels, ignore_index=-100)` (the mean over counted rows) computed a block of rows at a time: each
block's logits are made, turned into their loss and their gradient (softmax - one-hot) in float32,
and multiplied back into the gradients of h, weight and bias before the next block is made. The
(rows x vocabulary) logits, their float32 copy, their log-softmax and its gradient — several times
the memory of the whole model for a 50k vocabulary at a thousand tokens — never exist at once,
and each block's elementwise work runs while the block is still in the cache. The gradients are
computed in the forward (the loss is a scalar: backward only scales them), as Liger-Kernel and
Apple's Cut Cross-Entropy do on GPUs.

Under autocast the products run in the autocast dtype, as `F.linear` would, and the softmax in
float32; the weight's gradient is summed over blocks in float32.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100

# Logit elements per block: 4 Mi float32 = 16 MiB, about a core's share of a server's last-level
# cache, and big enough that each block's products stay efficient (256 rows at a 16k vocabulary).
BLOCK_ELEMENTS = 1 << 22


def block_rows(vocab: int, rows: int) -> int:
    """Rows per block for a vocabulary: BLOCK_ELEMENTS logits, at least 64 rows, at most all."""
    return max(1, min(rows, max(64, BLOCK_ELEMENTS // max(vocab, 1))))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, labels, dtype):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        hc, wc = h.to(dtype), weight.to(dtype)
        bc = bias.to(dtype) if bias is not None else None
        valid = labels != IGNORE_INDEX
        count = valid.sum()
        scale = 1.0 / count.to(torch.float32)  # a tensor: no wait for the device
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(hc) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=h.device) if need_b else None
        step = block_rows(weight.shape[0], h.shape[0])
        for i in range(0, h.shape[0], step):
            x, y, ok = hc[i:i + step], labels[i:i + step], valid[i:i + step]
            z = F.linear(x, wc, bc).float()  # (r, vocab)
            lse = torch.logsumexp(z, dim=-1)  # (r,)
            target = y.clamp(min=0)
            picked = z.gather(1, target[:, None]).squeeze(1)
            total += torch.where(ok, lse - picked, 0.0).sum()
            if not (need_h or need_w or need_b):
                continue
            # d loss / d z = (softmax - one-hot) / count on counted rows, 0 elsewhere
            g = z.sub_(lse[:, None]).exp_()
            g[torch.arange(g.shape[0], device=g.device), target] -= 1.0
            g.mul_((ok.to(torch.float32) * scale)[:, None])
            if need_b:
                grad_b += g.sum(0)
            g = g.to(dtype)
            if need_h:
                torch.mm(g, wc, out=grad_h[i:i + step])
            if need_w and dtype == torch.float32:
                grad_w.addmm_(g.t(), x)
            elif need_w:  # each block's product in the autocast dtype, their sum in float32
                grad_w += torch.mm(g.t(), x)
        ctx.save_for_backward(*(t for t in (grad_h, grad_w, grad_b) if t is not None))
        ctx.which = (grad_h is not None, grad_w is not None, grad_b is not None)
        ctx.dtypes = (h.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return total * scale

    @staticmethod
    def backward(ctx, grad_out):
        saved = iter(ctx.saved_tensors)
        out = []
        for has, dt in zip(ctx.which, ctx.dtypes):
            out.append((next(saved) * grad_out).to(dt) if has else None)
        return out[0], out[1], out[2], None, None


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                         labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token (or masked-token) cross-entropy of the logits F.linear(h, weight, bias)
    against labels, IGNORE_INDEX rows not counted; h (N, d) or (B, T, d), labels of h's leading
    shape. NaN when no row counts, as F.cross_entropy."""
    h2, y = h.reshape(-1, h.shape[-1]), labels.reshape(-1)
    if torch.is_autocast_enabled(h.device.type):
        dtype = torch.get_autocast_dtype(h.device.type)
    else:
        dtype = torch.promote_types(h.dtype, weight.dtype)
    with torch.autocast(h.device.type, enabled=False):
        return _LinearCrossEntropy.apply(h2, weight, bias, y, dtype)
