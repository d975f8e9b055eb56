"""Server throughput: total generated tokens/s with 1, 4 and 16 concurrent clients.

    python bench/bench_serve.py [--shape smollm2-135m] [--dtype bfloat16] [--new-tokens 64]

Starts `llmkit serve` (a separate process, as deployed; --max-batch-size 16) on a random-weight
model of a real shape (see bench_decode.py), then runs C client threads, each sending
`--requests` completion requests one after another (greedy, `min_tokens` = `max_tokens`, so
every request generates exactly `--new-tokens` tokens; prompts of ~32-64 tokens that differ
per request). Throughput = all generated tokens / wall time. With continuous batching the
16-client figure should be several times the 1-client one: a decode step of 16 rows costs little
more than a step of one while reading the weights dominates.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode import GPT2_DIR, ROOT, SHAPES, build  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited with code {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    sys.exit("the server did not start in time")


def run_clients(url: str, n_clients: int, n_requests: int, prompts: list[list[int]], new_tokens: int):
    """(generated tokens, wall seconds, per-request latencies)."""
    tokens, latencies, errors = [0] * n_clients, [], []
    lock = threading.Lock()
    barrier = threading.Barrier(n_clients)

    def client(c: int) -> None:
        with httpx.Client(timeout=600) as http:
            barrier.wait()
            for r in range(n_requests):
                prompt = prompts[(c * n_requests + r) % len(prompts)]
                t = time.perf_counter()
                resp = http.post(url + "/v1/completions", json={
                    "model": "bench", "prompt": prompt, "max_tokens": new_tokens, "min_tokens": new_tokens,
                    "temperature": 0})
                if resp.status_code != 200:
                    errors.append(resp.text)
                    return
                with lock:
                    latencies.append(time.perf_counter() - t)
                tokens[c] += resp.json()["usage"]["completion_tokens"]

    threads = [threading.Thread(target=client, args=(c,)) for c in range(n_clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        sys.exit(f"request failed: {errors[0]}")
    return sum(tokens), wall, latencies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=2, help="requests per client, sent one after another")
    ap.add_argument("--clients", default="1,4,16")
    args = ap.parse_args()
    if not (GPT2_DIR / "encoder.json").exists():
        sys.exit(f"skipped: {GPT2_DIR} (the shared GPT-2 tokenizer files) is missing")

    from llmkit.tokenizer import Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        build(args.shape, Path(tmp))
        tok = Tokenizer.from_dir(tmp)
        text_file = ROOT.parent / "shared" / "data" / "text" / "the-verdict.txt"
        text = text_file.read_text() if text_file.exists() else "The quick brown fox jumps over the lazy dog. " * 200
        ids = tok.encode(text)
        prompts = [ids[i * 37: i * 37 + 32 + (i % 5) * 8] for i in range(64)]  # 32-64 tokens, all different

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "llmkit", "serve", tmp, "--port", str(port), "--max-batch-size", "16",
               "--dtype", args.dtype, "--max-seq-len", "512", "--model-name", "bench"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
        try:
            wait_ready(url, proc)
            run_clients(url, 2, 1, prompts, 8)  # warm-up
            rows = []
            for n in (int(c) for c in args.clients.split(",")):
                tokens, wall, lat = run_clients(url, n, args.requests, prompts, args.new_tokens)
                rows.append((n, tokens, wall, tokens / wall, sum(lat) / len(lat)))
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    print(f"shape {args.shape}, {args.dtype}, {args.new_tokens} new tokens per request, {args.requests} requests "
          f"per client, server --max-batch-size 16")
    print()
    print("| clients | requests | tokens | wall s | total tok/s | mean latency s | vs 1 client |")
    print("|---|---|---|---|---|---|---|")
    base = rows[0][3]
    for n, tokens, wall, rate, lat in rows:
        print(f"| {n} | {n * args.requests} | {tokens} | {wall:.1f} | {rate:.1f} | {lat:.2f} "
              f"| **{rate / base:.2f}x** |")


if __name__ == "__main__":
    main()
