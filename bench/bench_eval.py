"""Evaluation throughput: llmkit's lm-evaluation-harness backend vs the harness's `hf` backend.

Both backends score the same multiple-choice task, built on the fly from tinyshakespeare (the
context is a passage, the four choices are the true next line and three other lines), with the
same random Llama-shaped weights saved as a Hugging Face directory with the GPT-2 tokenizer.
Each backend runs through `lm_eval.simple_evaluate`; the time spent inside `loglikelihood`
(model work, not data loading or the harness's bookkeeping) is what is measured, and the
task accuracies and per-request log-likelihoods are checked to agree.

    python bench/bench_eval.py                       # 0-shot and 3-shot, batch 16
    python bench/bench_eval.py --limit 100 --fewshot 0 5 --dtype bfloat16

Needs `lm_eval` and `transformers`; uses ../shared/data (the GPT-2 tokenizer and
tinyshakespeare) when present and falls back to a corpus generated here.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def build_tokenizer(out: Path) -> None:
    """GPT-2's BPE (50,257 tokens) from the shared files, else a byte-level BPE trained here."""
    from llmkit.tokenizer import Tokenizer

    gpt2 = SHARED / "gpt2"
    if (gpt2 / "encoder.json").exists():
        Tokenizer.from_dir(gpt2).save(out)
        return
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, trainers

    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=8192, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(corpus_lines(), trainer)
    Tokenizer(backend, config={"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}).save(out)


def corpus_lines() -> list[str]:
    text_file = SHARED / "text" / "tinyshakespeare.txt"
    if text_file.exists():
        return [ln for ln in text_file.read_text().splitlines() if len(ln.split()) >= 4]
    rng = random.Random(0)
    words = "the a king queen lord lady good sweet night day love death heart hand eye time man world".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 12))).capitalize() + "." for _ in range(4000)]


def build_model(out: Path, vocab_size: int, layers: int, width: int) -> int:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=width, intermediate_size=width * 8 // 3 // 64 * 64,
                      num_hidden_layers=layers, num_attention_heads=width // 64,
                      num_key_value_heads=max(1, width // 128),
                      max_position_embeddings=1024, tie_word_embeddings=True, bos_token_id=None, eos_token_id=None)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def build_task(out: Path, n: int) -> Path:
    """hellaswag-like: a 4-line passage, then which of 4 lines comes next."""
    lines = corpus_lines()
    rng = random.Random(1)
    docs = []
    for _ in range(n):
        i = rng.randrange(0, len(lines) - 5)
        wrong = rng.sample(range(len(lines)), 3)
        choices = [lines[i + 4]] + [lines[j] for j in wrong]
        order = list(range(4))
        rng.shuffle(order)
        docs.append({"context": "\n".join(lines[i:i + 4]), "choices": [choices[k] for k in order],
                     "label": order.index(0)})
    out.mkdir(parents=True, exist_ok=True)
    (out / "next_line.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (out / "next_line.yaml").write_text(f"""task: bench_next_line
dataset_path: json
dataset_kwargs:
  data_files:
    test: {out / 'next_line.jsonl'}
  cache_dir: {out / 'cache'}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}\\n"
doc_to_target: label
doc_to_choice: "{{{{choices}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    return out


def timed(lm):
    """Wrap lm.loglikelihood to accumulate its wall time and request count."""
    lm.bench_seconds, lm.bench_requests = 0.0, 0
    inner = lm.loglikelihood

    def loglikelihood(requests, *args, **kwargs):
        t = time.perf_counter()
        out = inner(requests, *args, **kwargs)
        lm.bench_seconds += time.perf_counter() - t
        lm.bench_requests += len(requests)
        return out

    lm.loglikelihood = loglikelihood
    return lm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=64, help="questions (4 requests each)")
    p.add_argument("--fewshot", type=int, nargs="+", default=[0, 3])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from llmkit.evaluate.harness import LLMKitLM
    from llmkit.tokenizer import Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = tmp / "model"
        model_dir.mkdir()
        build_tokenizer(model_dir)
        vocab = Tokenizer.from_dir(model_dir).vocab_size
        n_params = build_model(model_dir, vocab, args.layers, args.width)
        tm = TaskManager(include_path=str(build_task(tmp / "task", args.limit)), include_defaults=False)
        print(f"model: random Llama, {args.layers} layers, width {args.width}, vocab {vocab:,}, "
              f"{n_params / 1e6:.1f}M parameters, {args.dtype}; {torch.get_num_threads()} threads; "
              f"task: {args.limit} 4-way questions; batch size {args.batch_size}")
        rows = []
        for shots in args.fewshot:
            results = {}
            for name in ("hf", "llmkit"):
                # float32 log-softmax on both sides (llmkit always does it; hf only when asked).
                lm = (HFLM(pretrained=str(model_dir), device="cpu", dtype=args.dtype, batch_size=args.batch_size,
                           softmax_dtype="float32")
                      if name == "hf" else LLMKitLM(str(model_dir), device="cpu", dtype=args.dtype,
                                                    batch_size=args.batch_size, truncate=True))
                # Warm-up on a few questions (allocator, kernel selection), then the timed run.
                lm_eval.simple_evaluate(model=lm, tasks=["bench_next_line"], num_fewshot=shots, task_manager=tm,
                                        limit=4, bootstrap_iters=0)
                timed(lm)
                r = lm_eval.simple_evaluate(model=lm, tasks=["bench_next_line"], num_fewshot=shots, task_manager=tm,
                                           log_samples=True, bootstrap_iters=0, random_seed=0, fewshot_random_seed=0)
                lls = [resp[0][0] for s in r["samples"]["bench_next_line"] for resp in s["resps"]]
                results[name] = (lm.bench_requests, lm.bench_seconds, r["results"]["bench_next_line"]["acc,none"], lls)
            (n, t_hf, acc_hf, ll_hf), (_, t_ours, acc_ours, ll_ours) = results["hf"], results["llmkit"]
            diff = max(abs(a - b) for a, b in zip(ll_hf, ll_ours))
            rows.append((shots, n, t_hf, t_ours, acc_hf, acc_ours, diff))

    print()
    print("| shots | requests | hf backend req/s | llmkit req/s | speed-up | acc hf / llmkit | max |Δ loglik| |")
    print("|------:|---------:|-----------------:|-------------:|---------:|----------------:|---------------:|")
    for shots, n, t_hf, t_ours, acc_hf, acc_ours, diff in rows:
        print(f"| {shots} | {n} | {n / t_hf:.1f} | {n / t_ours:.1f} | {t_hf / t_ours:.2f}x | "
              f"{acc_hf:.3f} / {acc_ours:.3f} | {diff:.1e} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
