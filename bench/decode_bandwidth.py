"""What one decoded token can cost at best: every weight matrix read once, from memory.

    python bench/decode_bandwidth.py [--threads N]

For the SmolLM2-135M shape (30 layers: q, o 576 x 576; k, v 192 x 576; gate, up 1536 x 576;
down 576 x 1536; the 50257 x 576 output matrix, GPT-2 vocabulary as bench_decode.py), in
float32: each matrix's time to be read by `torch.sum` (the fastest plain read torch has) and by
llmkit's one-row product kernels (`F.linear`, and the row-block `bmm` of generate/kernels.py),
*cold*: the matrix is one of many copies weighing 256 MiB together, read in turn, as decoding
reads each matrix once with the rest of the model in between. The per-token sum of the `sum`
column is the memory-read bound of a token; the streaming rate of one 512 MiB tensor, which
bench_decode.py prints, is higher, because small matrices never reach full streaming speed.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

LAYERS = 30
MATRICES = [("q", 576, 576), ("k", 192, 576), ("v", 192, 576), ("o", 576, 576), ("gate", 1536, 576),
            ("up", 1536, 576), ("down", 576, 1536)]
HEAD = ("output", 50257, 576)


def cold_us(n: int, k: int, dtype, fn) -> float:
    copies = max(1, (256 << 20) // (n * k * dtype.itemsize))
    ws = [torch.randn(n, k).to(dtype) for _ in range(copies)]
    for w in ws[:4]:
        fn(w)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for w in ws:
            fn(w)
        best = min(best, (time.perf_counter() - t) / copies)
    return best * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, cold reads")
    print("| matrix | shape | MB | sum us (GB/s) | F.linear us | row-block bmm us |")
    print("|---|---|---|---|---|---|")
    totals = {"sum": 0.0, "F.linear": 0.0, "bmm": 0.0}
    for name, n, k in MATRICES + [HEAD]:
        x = torch.randn(1, k)
        blocks = next((b for b in range(2, 65) if n % b == 0), 1)  # row blocks, as many as divide n
        col = x.view(1, k, 1).as_strided((blocks, k, 1), (0, 1, k))
        t = {"sum": cold_us(n, k, torch.float32, lambda w: w.sum()),
             "F.linear": cold_us(n, k, torch.float32, lambda w: F.linear(x, w)),
             "bmm": cold_us(n, k, torch.float32, lambda w: torch.bmm(w.view(blocks, n // blocks, k), col))}
        reps = 1 if name == "output" else LAYERS
        for key in totals:
            totals[key] += reps * t[key]
        mb = n * k * 4 / 1e6
        print(f"| {name} | {n} x {k} | {mb:.2f} | {t['sum']:.1f} ({mb * 1e3 / t['sum']:.1f}) "
              f"| {t['F.linear']:.1f} | {t['bmm']:.1f} |")
    print()
    for key, us in totals.items():
        print(f"per token, {key}: {us / 1e3:.1f} ms -> at most {1e6 / us:.1f} tok/s")


if __name__ == "__main__":
    main()
