"""CPU decode kernels: faster products for token-by-token decoding, same values.

`prepare_for_decoding(model)` swaps every plain nn.Linear for a `MatVecLinear` sharing its
Parameters; `load_for_inference` loads a checkpoint for the generate / chat / serve commands
and prepares it so. Which kernel is fastest is measured on this machine, once per weight shape
and dtype when a model is prepared (`fastest_kernel`): the CPU changes between machines and
days, and a kernel that wins on one loses on another (the float32 row-block product: 1.8x
faster than F.linear on an AMD EPYC, 2.3-3.5x slower on an Intel Xeon with AMX).
"""

from __future__ import annotations

import time
from typing import Optional

import torch

_CHOICE: dict = {}  # (out, in, dtype, copies timed) -> whether the special kernel beat F.linear here

# How much memory the timing rotates through, at most: past the last-level cache of the CPUs this
# runs on (32-105 MB on 2024 server parts), less than the models that need it weigh. Decoding
# touches every weight matrix once per token, so by the time a layer's matrix is used again the
# rest of the model has gone through the caches: it comes from DRAM. A kernel timed on a matrix
# still in cache answers another question: on an AMD EPYC, F.linear (MKL sgemm) beat the
# row-block bmm on a hot 512 x 512 matrix (24 vs 36 us) and lost 2x on cold ones (118 vs 61 us:
# 8.9 vs 17 GB/s), t5-small's decode went from 76 to 110 tokens/s once this was timed cold.
# (Evicting the caches with a large read between two timed calls instead gave unstable choices.)
WORKING_SET_MAX_BYTES = 128 * 2**20


def _pass_time(fn, weights, x, rounds: int = 3) -> float:
    """Best time per call of `fn(x, w)` over one pass through `weights`, after a warm-up pass."""
    for w in weights:
        fn(x, w)
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for w in weights:
            fn(x, w)
        best = min(best, (time.perf_counter() - t) / len(weights))
    return best


def fastest_kernel(layer: "MatVecLinear", working_set: int = 0) -> bool:
    """Whether `layer`'s special one-row kernel is faster than F.linear on this CPU, timed as
    decoding uses it: one row against copies of the matrix that together weigh what the model
    does (`working_set` bytes, at most WORKING_SET_MAX_BYTES), each used once per pass, so a
    matrix comes from wherever decoding will find it (memory, or a cache when the whole model
    fits in one). Both kernels alternately, best pass of 3 each, twice; once per (shape, dtype,
    working set) and process (~0.1 s per shape of a large model; copies freed after)."""
    w = layer.weight
    nbytes = w.numel() * w.element_size()
    copies = max(1, min(64, min(int(working_set), WORKING_SET_MAX_BYTES) // max(nbytes, 1)))
    key = (layer.out_features, layer.in_features, w.dtype, copies)
    if key not in _CHOICE:
        with torch.inference_mode():
            weights = [w] + [w.clone() for _ in range(copies - 1)]
            x = torch.randn(1, 1, layer.in_features, dtype=w.dtype)
            special = lambda v, m: layer._special(v, m)  # noqa: E731
            plain = lambda v, m: torch.nn.functional.linear(v, m, layer.bias)  # noqa: E731
            a, b = _pass_time(special, weights, x), _pass_time(plain, weights, x)
            a, b = min(a, _pass_time(special, weights, x)), min(b, _pass_time(plain, weights, x))  # load drifts
            del weights
        _CHOICE[key] = a < b
    return _CHOICE[key]

# Rows up to which float32 products take MatVecLinear's batched-kernel path (a serving batch
# decodes one token per row): measured faster than F.linear for 1 to 16 rows, e.g. the
# 50257 x 576 output matrix with 4 rows in 2.9 ms instead of 12.7.
MATVEC_MAX_ROWS = 16


class MatVecLinear(torch.nn.Linear):
    """An nn.Linear, sharing the original's Parameters, whose products with one row (decoding
    at batch 1) or a few rows (float32: up to MATVEC_MAX_ROWS, a serving batch) take the
    fastest CPU kernel measured for them; other inputs use `F.linear` as before. Same values: only which kernel sums the products changes.

    Measured on a 2-core AVX-512 CPU over the 211 matrices of a SmolLM2-135M-shaped model
    (bench/bench_decode.py, BENCHMARKS.md "Decode speed"):
    * float32: `F.linear(x, W)` with M = 1 goes to MKL's sgemm and streams the weights at
      ~20 GB/s; `torch.bmm` of W viewed as `blocks` row blocks (blocks, n/blocks, k) against x
      as a column goes to MKL's batched gemm, which reads them at ~36 GB/s (a plain `sum`
      reads ~38 GB/s): ~1.8x faster products (the 50257 x 576 output matrix: 7.2 -> 3.5 ms).
    * bfloat16: oneDNN (PyTorch's default for bf16 matmuls on CPU) is slow for one row (a
      ~20 us floor per call); with oneDNN switched off for the call, PyTorch's own bf16
      matrix-vector kernel (float32 accumulation) is ~1.6x faster over the model.
    """

    def __init__(self, linear: torch.nn.Linear, working_set: int = 0):
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight  # the same Parameter: ties and state_dict keys unchanged
        self.bias = linear.bias
        # Row blocks for bmm (the batched kernel needs >= 2 equal blocks): the smallest divisor
        # of out_features; 0 (plain F.linear) when it has none below 64 (a prime, e.g.).
        n = self.out_features
        self.blocks = next((b for b in range(2, 65) if n % b == 0), 0)
        w = self.weight
        usable = w.device.type == "cpu" and w.is_contiguous() and (
            w.dtype == torch.bfloat16 or (w.dtype == torch.float32 and self.blocks))
        self.special = usable and fastest_kernel(self, working_set)  # measured here, not assumed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        rows = x.numel() // self.in_features
        if not self.special or rows > MATVEC_MAX_ROWS or w.device.type != "cpu" or not w.is_contiguous() \
                or (w.dtype == torch.bfloat16 and rows > 1):  # oneDNN is the fastest bf16 kernel for several rows
            return torch.nn.functional.linear(x, w, self.bias)
        return self._special(x)

    def _special(self, x: torch.Tensor, w: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The row-block bmm (float32) or PyTorch's own matrix-vector kernel (bfloat16), of x
        and this layer's weight (or `w`, a copy of it, when timed)."""
        w = self.weight if w is None else w
        rows = x.numel() // self.in_features
        if w.dtype == torch.bfloat16:
            mkldnn = torch._C._get_mkldnn_enabled()
            torch._C._set_mkldnn_enabled(False)
            try:
                return torch.nn.functional.linear(x, w, self.bias)
            finally:
                torch._C._set_mkldnn_enabled(mkldnn)
        if w.dtype != torch.float32 or not self.blocks:
            return torch.nn.functional.linear(x, w, self.bias)
        b, k = self.blocks, self.in_features
        # x as a (k, rows) matrix with strides (1, k): MKL takes the slow path if the unit
        # dimension's stride is 1 (650 vs 60 us for a 1536 x 576 matrix and one row).
        col = x.reshape(rows, k).t().expand(b, k, rows)  # (blocks, k, rows)
        y = torch.bmm(w.view(b, -1, k), col)  # (blocks, n/blocks, rows)
        y = y.permute(2, 0, 1).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


def prepare_for_decoding(model) -> None:
    """Make `model` faster for token-by-token decoding; values and results are unchanged.

    Every plain nn.Linear (also one inside a LoRA wrapper; quantized layers are left alone)
    becomes a `MatVecLinear` holding the same Parameters, so decoding products use the fastest
    CPU kernel (see there); state_dict keys and tied weights are unchanged.
    """
    import torch.nn as nn

    model.eval().requires_grad_(False)
    plain = [(parent, name, child) for parent in list(model.modules())
             for name, child in parent.named_children() if type(child) is nn.Linear]
    weights = {id(c.weight): c.weight for _, _, c in plain}
    working_set = sum(w.numel() * w.element_size() for w in weights.values())  # what one token reads
    for parent, name, child in plain:
        setattr(parent, name, MatVecLinear(child, working_set))


def load_for_inference(model: str, device: str = "cpu", dtype: Optional[str] = None):
    """(Loaded, Tokenizer) for the generate / chat / serve commands: the one loader
    (checkpoint.load_model, which also checks the tokenizer against the embeddings), then the
    model made ready to decode."""
    from llmkit.checkpoint import load_model

    loaded = load_model(model, device=device, dtype=dtype)
    tokenizer = loaded.tokenizer
    prepare_for_decoding(loaded.model)
    return loaded, tokenizer
