"""A second, independent measurement of decode at batch 1 (issue 18: "reconcile bench_decode.py
with an independent script"). It shares no code with bench/bench_decode.py and times differently:

* the model is built with `LlamaForCausalLM(config)` (SmolLM2-135M's shape, GPT-2's vocabulary,
  random weights), saved with `save_pretrained`, and loaded by llmkit with `load_for_inference`;
* a 32-token prompt of random ids, 128 new tokens, greedy, in `torch.inference_mode`;
* each library's whole call is timed with a wall clock (prefill included, for both), after one
  full-length warm-up call; tokens/s = 128 / seconds, best of --repeats, libraries alternating.

    python bench/decode_check.py [--threads N] [--repeats 3] [--dtypes float32,bfloat16]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llmkit.generate import generate, load_for_inference
from llmkit.tokenizer import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
GPT2 = os.path.join(HERE, "..", "..", "shared", "data", "gpt2")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=32)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    tok = Tokenizer.from_dir(GPT2)
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, rope_theta=100000.0, tie_word_embeddings=True,
                      max_position_embeddings=2048, bos_token_id=tok.eos_id, eos_token_id=tok.eos_id)
    print(f"load {open('/proc/loadavg').read().split()[:3]}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    ids = torch.randint(0, tok.vocab_size, (1, a.prompt), generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as d:
        torch.manual_seed(0)
        LlamaForCausalLM(cfg).save_pretrained(d)
        tok.save(d)
        for dtype in a.dtypes.split(","):
            hf = LlamaForCausalLM.from_pretrained(d, dtype=getattr(torch, dtype)).eval()
            ours, _ = load_for_inference(d, dtype=dtype)

            def run_hf() -> list[int]:
                with torch.inference_mode():
                    out = hf.generate(ids, do_sample=False, max_new_tokens=a.new, min_new_tokens=a.new,
                                      eos_token_id=None, pad_token_id=0)
                return out[0, a.prompt:].tolist()

            def run_ours() -> list[int]:
                return generate(ours.model, tok, ids[0].tolist(), max_new_tokens=a.new, stop_ids=set()).token_ids

            best = {"transformers": float("inf"), "llmkit": float("inf")}
            toks = {}
            fns = {"transformers": run_hf, "llmkit": run_ours}
            for name in fns:
                fns[name]()  # warm-up, full length
            for r in range(a.repeats):
                for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
                    t = time.perf_counter()
                    toks[name] = fns[name]()
                    best[name] = min(best[name], time.perf_counter() - t)
            same = sum(x == y for x, y in zip(toks["transformers"], toks["llmkit"]))
            rates = {k: a.new / v for k, v in best.items()}
            print(f"{dtype}: transformers {rates['transformers']:.1f} tok/s, llmkit {rates['llmkit']:.1f} tok/s, "
                  f"ratio {rates['llmkit'] / rates['transformers']:.2f}x, same greedy tokens {same}/{a.new}")


if __name__ == "__main__":
    main()
