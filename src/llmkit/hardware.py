"""Accelerators: dense matmul peaks, memory, board power and an assumed rental price. Data, plus
the one measurement of this machine's CPU peak.

The training loop reads the peaks for MFU (`training.loop.device_peak_flops`), `llmkit plan` for
time, memory, energy and cost: one table in one place. This module imports no torch at import
time (the CPU measurement imports it when it runs).

Peaks are *dense* tensor-core rates (NVIDIA's data sheets print the 2:4-sparse figure next to
them, twice as high; no dense training kernel reaches it):
  A100: A100 Tensor Core GPU data sheet (SXM4): FP32 19.5, BF16 312 TFLOP/s; 400 W; 40/80 GB.
  H100 SXM5: H100 data sheet: FP32 67, BF16 989, FP8 1,979 TFLOP/s; 700 W; 80 GB.
  H100 PCIe: same data sheet: FP32 51, BF16 756, FP8 1,513 TFLOP/s; 350 W; 80 GB.
  H200 SXM: H200 data sheet: the H100 SXM's compute, 141 GB HBM3e; up to 700 W.
  L4: L4 data sheet: FP32 30.3, BF16 121, FP8 242.5 TFLOP/s; 72 W; 24 GB.
  L40S: L40S data sheet: FP32 91.6, BF16 362, FP8 733 TFLOP/s; 350 W; 48 GB.
  A10: A10 data sheet: FP32 31.2, BF16 125 TFLOP/s; 150 W; 24 GB.
  RTX 4090 / 3090: Ada (appendix A) and Ampere GA102 whitepapers, BF16 with FP32 accumulate
    (what PyTorch runs): 4090 FP32 82.6, BF16 165.2, FP8 330.3 TFLOP/s, 450 W; 3090 FP32 35.6,
    BF16 71 TFLOP/s, 350 W; both 24 GB.
  V100 SXM2 / T4: no bf16 tensor cores; their FP16 tensor rate (125 / 65 TFLOP/s) is the
    half-precision peak; FP32 15.7 / 8.1; 300 W / 70 W; 32 / 16 GB.
Memory is the marketed capacity, counted in GiB (HBM and GDDR come in power-of-two stacks;
the driver keeps a few hundred MiB of it).

Prices are *assumptions*: typical on-demand rates of GPU clouds in 2025, US dollars per
GPU-hour; they vary by provider, region and commitment by 2-3x. `llmkit plan --price` overrides.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Optional

from llmkit.errors import LLMKitError

TERA = 1e12
PRICES_AS_OF = "2025"


@dataclass(frozen=True)
class Hardware:
    """One accelerator type. Peaks in FLOP/s (dense); `half` is bf16 (fp16 where there is no bf16)."""

    name: str
    fp32: float
    half: float
    fp8: Optional[float]
    memory_gib: float
    watts: float  # board power (TDP)
    price: float  # assumed $ per device-hour
    match: tuple[str, ...] = ()  # substrings of torch.cuda.get_device_name() that identify it
    bf16: bool = True  # False: the half-precision peak is fp16's (V100, T4)

    def peak(self, precision: str) -> float:
        """Dense matmul peak for `precision` (fp32, bf16, fp16, fp8)."""
        if precision == "fp32":
            return self.fp32
        if precision == "fp8":
            if self.fp8 is None:
                raise LLMKitError(f"{self.name} has no fp8 tensor cores (Hopper and Ada have): use --precision bf16")
            return self.fp8
        if precision == "bf16" and not self.bf16:
            raise LLMKitError(f"{self.name} has no bf16 tensor cores: use --precision fp16 or fp32")
        return self.half


GPUS: dict[str, Hardware] = {h.name: h for h in (
    Hardware("a100-40gb", 19.5 * TERA, 312 * TERA, None, 40, 400, 1.29, ("A100-SXM4-40GB", "A100-PCIE-40GB", "A100 40GB")),
    Hardware("a100-80gb", 19.5 * TERA, 312 * TERA, None, 80, 400, 1.79, ("A100",)),
    Hardware("h100", 67 * TERA, 989 * TERA, 1979 * TERA, 80, 700, 2.99, ("H100",)),
    Hardware("h100-pcie", 51 * TERA, 756 * TERA, 1513 * TERA, 80, 350, 2.49, ("H100 PCIe",)),
    Hardware("h200", 67 * TERA, 989 * TERA, 1979 * TERA, 141, 700, 3.79, ("H200",)),
    Hardware("l4", 30.3 * TERA, 121 * TERA, 242.5 * TERA, 24, 72, 0.80, ("L4",)),
    Hardware("l40s", 91.6 * TERA, 362 * TERA, 733 * TERA, 48, 350, 1.29, ("L40S",)),
    Hardware("a10", 31.2 * TERA, 125 * TERA, None, 24, 150, 0.75, ("A10",)),
    Hardware("rtx-4090", 82.6 * TERA, 165.2 * TERA, 330.3 * TERA, 24, 450, 0.69, ("RTX 4090",)),
    Hardware("rtx-3090", 35.6 * TERA, 71 * TERA, None, 24, 350, 0.30, ("RTX 3090",)),
    Hardware("v100", 15.7 * TERA, 125 * TERA, None, 32, 300, 0.55, ("V100",), bf16=False),
    Hardware("t4", 8.1 * TERA, 65 * TERA, None, 16, 70, 0.35, ("T4",), bf16=False),
)}
ALIASES = {"a100": "a100-80gb", "h100-sxm": "h100", "h200-sxm": "h200", "4090": "rtx-4090", "rtx4090": "rtx-4090",
           "3090": "rtx-3090", "rtx3090": "rtx-3090"}

# The CPU as a device: its peak is measured (it changes with the processor: DESIGN.md, "known
# pitfalls"), its memory read from /proc/meminfo. Power and price per core are assumptions:
# a server CPU's TDP per core (AMD EPYC 9654: 360 W / 96 cores = 3.75 W) and a general-purpose
# cloud vCPU (~$0.04 per vCPU-hour on demand, 2025; a vCPU is half a core, so $0.08 a core).
CPU_WATTS_PER_CORE = 3.75
CPU_PRICE_PER_CORE = 0.08


def names() -> list[str]:
    return [*GPUS, "cpu"]


def lookup(name: str) -> Hardware:
    """The table entry for a hardware name (case and '_' / ' ' are ignored), or 'cpu' measured."""
    key = str(name).strip().lower().replace("_", "-").replace(" ", "-")
    key = ALIASES.get(key, key)
    if key == "cpu":
        return cpu_hardware()
    if key not in GPUS:
        import difflib

        close = difflib.get_close_matches(key, names(), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise LLMKitError(f"unknown hardware '{name}'{hint}; choose from {', '.join(names())}")
    return GPUS[key]


def for_device_name(device_name: str) -> Optional[Hardware]:
    """The entry whose longest `match` string occurs in a CUDA device name ("NVIDIA A100-SXM4-80GB"):
    the longest wins, so an A100 is not taken for an A10 nor an L40S for an L4."""
    best, best_len = None, 0
    for h in GPUS.values():
        for m in h.match:
            if m in device_name and len(m) > best_len:
                best, best_len = h, len(m)
    return best


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_memory_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024 / 2**30
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


_CPU_PEAKS: dict = {}


def measure_cpu_peak(dtype=None) -> float:
    """This machine's dense matmul rate in FLOP/s: the best of three 1024^3 products in `dtype`
    (a torch dtype; None = float32) on the threads torch uses. Measured once per process, dtype
    and thread count: the processor behind this machine changes from day to day, a constant
    would lie."""
    import torch

    dt = dtype or torch.float32
    key = (dt, torch.get_num_threads())
    if key not in _CPU_PEAKS:
        n = 1024
        a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
        a @ b  # warm up (thread pool, kernel choice)
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
        _CPU_PEAKS[key] = 2 * n**3 / best
    return _CPU_PEAKS[key]


_ALLOCATOR_TUNED: list = []


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the process for the next training step (glibc only; once).

    glibc's malloc gives every block above its mmap threshold (at most 32 MB, adjusted as blocks
    are freed) its own mapping, and returns freed memory at the top of the heap to the kernel.
    A training step allocates and frees the same large activations, logits and gradients again
    and again, so each step pays page faults and zeroing for memory it just returned: a 16 MB
    tensor allocated and filled took 0.89 ms against 0.13 ms reused, and a whole l4 training
    step (bench/bench_train.py) 722 -> 530 ms in float32 with the thresholds raised. This raises
    both (mmap above 1 GiB, no trimming); the process keeps its peak heap, which is the step's
    working set anyway. What jemalloc or tcmalloc under LD_PRELOAD do, without the preload.
    LLMKIT_MALLOC=default leaves glibc as it is."""
    if _ALLOCATOR_TUNED or os.environ.get("LLMKIT_MALLOC", "") == "default":
        return bool(_ALLOCATOR_TUNED and _ALLOCATOR_TUNED[0])
    ok = False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # glibc, not musl: mallopt's options are glibc's
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        ok = bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        pass
    _ALLOCATOR_TUNED.append(ok)
    return ok


_FP32_ATTENTION: dict = {}


def cpu_attention_in_float32(head_dim: int) -> bool:
    """Whether, on this CPU, bf16 attention is faster done in float32: SDPA forward + backward
    on float32 copies of bf16 q/k/v (casts included) against SDPA in bf16, at a training-sized
    call (4 x 8 query / 4 key heads x 256 tokens, causal). PyTorch's bf16 CPU flash-attention
    kernel ran 1.4-2.1x slower than its float32 one at head sizes 32 and 16 on a 2-core AVX-512
    EPYC, about even at 64 and 128; a CPU whose bf16 kernel is faster keeps it (not yet measured
    on an AMX Xeon). Timed once per process, head size and thread count, alternately, best of 3
    each (0.2-0.4 s); float32 must win by 10%, so noise keeps the default."""
    import torch
    import torch.nn.functional as F

    key = (head_dim, torch.get_num_threads())
    if key not in _FP32_ATTENTION:
        def run(dt) -> float:
            g = torch.Generator().manual_seed(0)
            q, k, v = (torch.randn(4, h, 256, head_dim, generator=g, device="cpu").to(torch.bfloat16).requires_grad_()
                       for h in (8, 4, 4))
            t = time.perf_counter()
            y = F.scaled_dot_product_attention(q.to(dt), k.to(dt), v.to(dt), is_causal=True, enable_gqa=True)
            y.to(torch.bfloat16).sum().backward()
            return time.perf_counter() - t

        with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", enabled=False):
            run(torch.float32), run(torch.bfloat16)  # warm up
            a = b = float("inf")
            for _ in range(3):
                a, b = min(a, run(torch.float32)), min(b, run(torch.bfloat16))
        _FP32_ATTENTION[key] = a * 1.1 < b
    return _FP32_ATTENTION[key]


def cpu_hardware() -> Hardware:
    """This CPU as a Hardware entry: fp32 and bf16 peaks measured, no fp8."""
    import torch

    fp32 = measure_cpu_peak(torch.float32)
    try:
        bf16_ok = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        bf16_ok = False
    half = measure_cpu_peak(torch.bfloat16) if bf16_ok else fp32
    cores = cpu_cores()
    return Hardware("cpu", fp32, half, None, round(cpu_memory_gib(), 1), CPU_WATTS_PER_CORE * cores,
                    CPU_PRICE_PER_CORE * cores)
