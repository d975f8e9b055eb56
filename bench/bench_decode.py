"""Decode speed at batch 1: llmkit `generate` vs transformers `generate`, same weights, one run.

    python bench/bench_decode.py [--shape smollm2-135m|small] [--new-tokens 128] [--repeats 5]

A random-weight Llama of a real shape (SmolLM2-135M: 30 layers, width 576, 9 query / 3 KV
heads, tied embeddings; the vocabulary is GPT-2's, whose tokenizer is in ../shared/data/gpt2)
is built with transformers, saved as safetensors, and loaded by llmkit from that folder, so
both run the same weights. Both decode greedily from the same prompt for the same number of
tokens (transformers: `min_new_tokens` forces the length; llmkit: no stop tokens).

Decode tokens/s excludes the prefill and the first token: transformers (t(N) - t(1)) / (N - 1)
from two `generate` calls; llmkit the same from its own timestamps. Runs alternate between the
two libraries and the best of `repeats` is kept for each (this machine's other load only ever
slows a run down). llmkit's decode includes detokenizing every token; transformers' does not.

How each is called (both in `torch.inference_mode`, same dtype, same thread count):
* transformers: `LlamaForCausalLM(config).eval().to(dtype)`, its default `generate`
  (default attention implementation and cache, i.e. SDPA and a DynamicCache) with
  `do_sample=False, max_new_tokens=N, min_new_tokens=N, eos_token_id=None, pad_token_id=0`.
* llmkit: `load_for_inference(folder, dtype)` (which runs `prepare_for_decoding`) and
  `generate(model, tok, ids, max_new_tokens=N, stop_ids=set())` (greedy by default).
`--threads` sets `torch.set_num_threads` for both (default: torch's, one per core).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
GPT2_DIR = ROOT.parent / "shared" / "data" / "gpt2"
SHAPES = {
    # SmolLM2-135M (HuggingFaceTB/SmolLM2-135M config.json), GPT-2 vocabulary.
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, rope_theta=100000.0, tie_word_embeddings=True),
    # A small model where per-step overhead, not memory bandwidth, dominates.
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=8,
                  num_key_value_heads=4, rope_theta=10000.0, tie_word_embeddings=True),
}


def build(shape: str, out: Path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmkit.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(GPT2_DIR)
    cfg = LlamaConfig(vocab_size=tok.vocab_size, max_position_embeddings=2048, bos_token_id=tok.eos_id,
                      eos_token_id=tok.eos_id, **SHAPES[shape])
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(out)
    tok.save(out)
    return model


def hf_decode(model, ids: torch.Tensor, n: int) -> tuple[float, list[int]]:
    kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.inference_mode():
        t = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
        t1 = time.perf_counter() - t
        t = time.perf_counter()
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
        tn = time.perf_counter() - t
    return (n - 1) / (tn - t1), out[0, ids.shape[1]:].tolist()


def llmkit_decode(model, tok, ids: list[int], n: int) -> tuple[float, list[int]]:
    from llmkit.generate import generate

    c = generate(model, tok, ids, max_new_tokens=n, stop_ids=set())
    return (n - 1) / (c.total_time - c.time_to_first_token), c.token_ids


def read_bandwidth(threads: int) -> float:
    """Bytes/s this machine streams from memory into the cores: the best of 5 `torch.sum` passes
    over 512 MiB of float32 (far past any cache) on the threads decoding uses. Decoding one token
    reads every weight once, so weight bytes / this is the fastest a token can be made."""
    x = torch.ones(128 * 2**20, dtype=torch.float32)
    x.sum()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads for both libraries (default: torch's, one per core)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not (GPT2_DIR / "encoder.json").exists():
        sys.exit(f"skipped: {GPT2_DIR} (the shared GPT-2 tokenizer files) is missing")

    from llmkit.generate import load_for_inference

    text = (ROOT.parent / "shared" / "data" / "text" / "the-verdict.txt")
    with tempfile.TemporaryDirectory() as tmp:
        hf_model = build(args.shape, Path(tmp))
        n_params = sum(p.numel() for p in hf_model.parameters())
        print(f"shape {args.shape}: {n_params / 1e6:.1f}M parameters, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads; prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens, "
              f"best of {args.repeats}")
        rows = []
        for dtype_name in args.dtypes.split(","):
            dtype = getattr(torch, dtype_name)
            hf = hf_model.to(dtype)
            loaded, tok = load_for_inference(tmp, dtype=dtype_name)
            source = text.read_text() if text.exists() else "The quick brown fox jumps over the lazy dog. " * 40
            ids = tok.encode(source)[: args.prompt_tokens]
            hf_decode(hf, torch.tensor([ids]), 4)  # warm-up: first calls pay one-off costs
            llmkit_decode(loaded.model, tok, ids, 4)
            theirs, ours = [], []
            for _ in range(args.repeats):
                rate, hf_tokens = hf_decode(hf, torch.tensor([ids]), args.new_tokens)
                theirs.append(rate)
                rate, our_tokens = llmkit_decode(loaded.model, tok, ids, args.new_tokens)
                ours.append(rate)
            same = sum(a == b for a, b in zip(hf_tokens, our_tokens))
            rows.append((dtype_name, max(theirs), statistics.median(theirs), max(ours), statistics.median(ours),
                         f"{same}/{args.new_tokens}"))
            hf_model = hf.float()

    bw = read_bandwidth(torch.get_num_threads())
    print()
    print(f"memory read bandwidth (torch.sum over 512 MiB, {torch.get_num_threads()} threads): {bw / 1e9:.1f} GB/s")
    print("| dtype | transformers tok/s (best / median) | llmkit tok/s (best / median) | ratio (best) "
          "| same greedy tokens | weights MB a token | bound tok/s | llmkit % of bound | transformers % |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, tb, tm, ob, om, same in rows:
        nbytes = n_params * getattr(torch, name).itemsize  # every weight read once a token (tied head: once)
        bound = bw / nbytes
        print(f"| {name} | {tb:.1f} / {tm:.1f} | {ob:.1f} / {om:.1f} | **{ob / tb:.2f}x** | {same} "
              f"| {nbytes / 1e6:.0f} | {bound:.1f} | {ob / bound:.0%} | {tb / bound:.0%} |")


if __name__ == "__main__":
    main()
