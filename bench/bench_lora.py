"""LoRA finetuning step time and peak memory: llmkit vs Hugging Face `peft`, same weights, one run.

    python bench/bench_lora.py [--shape smollm2-135m|small] [--batch 4] [--seq-len 256] [--steps 6]
                               [--dtype fp32|bf16] [--rounds 2] [--quantize int8|nf4] [--threads N]
                               [--hold-base on|off|both] [--compile off|on|both]

A random-weight Llama of a real shape is saved by transformers; each measurement runs in a
fresh process (so peak memory is that system's alone): transformers `LlamaForCausalLM` +
`peft.get_peft_model(LoraConfig(...))`, or llmkit's `Transformer` loaded from the same folder +
`apply_lora`. Same rank, alpha, targets (q, k, v, o, gate, up, down), batch, tokens, labels and
optimizer (torch AdamW, fused, over the adapter parameters only); bf16 means autocast for both.
The loop is the same plain PyTorch loop for both: forward -> loss -> backward -> step. The
llmkit process raises glibc's malloc thresholds first, as llmkit's Trainer does on a CPU
(`hardware.tune_cpu_allocator`); peft's keeps glibc's defaults unless `--anchor-malloc tuned`.
In bf16 llmkit's frozen base is held in bf16 as its Trainer holds it (`lora.hold_frozen_bases`:
the same values as autocast's per-step cast; `--hold-base off` measures without it, `both` runs
both in each round).

Reported: median seconds per optimizer step (after 2 warm-up steps) and the process's peak
resident memory during training (VmHWM, reset after loading) minus its resident memory
after loading the model, i.e. what
training adds on top of the weights (activations, adapter gradients, optimizer state). Runs
alternate between the two systems, `rounds` times; the best round of each is kept (other load
on a shared machine only ever slows a run down).

With `--quantize int8|nf4`, llmkit also runs QLoRA-style (frozen base held quantized) and the
table gains its weight memory; peft's QLoRA needs bitsandbytes on a GPU, so it has no CPU row.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

SHAPES = {
    # SmolLM2-135M (HuggingFaceTB/SmolLM2-135M config.json).
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, rope_theta=100000.0,
                         tie_word_embeddings=True),
    "small": dict(vocab_size=8192, hidden_size=256, intermediate_size=768, num_hidden_layers=6,
                  num_attention_heads=8, num_key_value_heads=4, rope_theta=10000.0, tie_word_embeddings=True),
}
TARGETS_LLMKIT = ["q", "k", "v", "o", "gate", "up", "down"]
TARGETS_PEFT = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def rss_mib() -> float:
    """Current resident set size of this process (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def reset_peak() -> None:
    """Restart the peak-RSS counter (VmHWM), so loading the model does not count (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args) -> dict:
    """One system's measurement, in this (fresh) process."""
    import torch

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.system == "peft":
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
        model = get_peft_model(model, LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=0.0,
                                                 target_modules=TARGETS_PEFT))

        def loss_fn(x, y):
            return model(input_ids=x, labels=y).loss  # transformers' own shifted, upcast CE
    else:
        from llmkit.checkpoint import load_model
        from llmkit.lora import LoRAConfig, apply_lora
        from llmkit.training.losses import causal_lm_loss

        model = load_model(args.model_dir, dtype=torch.float32).model
        apply_lora(model, LoRAConfig(r=args.r, alpha=args.alpha, targets=TARGETS_LLMKIT),
                   quantize=args.quantize)
        if args.dtype == "bf16" and args.hold_base == "on":
            from llmkit.lora import hold_frozen_bases
            hold_frozen_bases(model, torch.bfloat16)  # what llmkit's Trainer does under autocast

        def loss_fn(x, y):
            return causal_lm_loss(model, (x, y))["loss"]
    if args.compile == "on":  # the forward and the loss in one graph, as llmkit's Trainer compiles them
        loss_fn = torch.compile(loss_fn)
    if args.system != "peft" or args.anchor_malloc == "tuned":
        from llmkit.hardware import tune_cpu_allocator
        tune_cpu_allocator()  # what llmkit's Trainer does when it starts on a CPU (setup_runtime)
    model.train()
    weights_mib = sum(t.numel() * t.element_size() for t in
                      {t.data_ptr(): t for t in list(model.parameters()) + list(model.buffers())}.values()) / 2**20
    import gc

    gc.collect()
    base_rss = rss_mib()
    reset_peak()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    g = torch.Generator().manual_seed(1)
    vocab = SHAPES[args.shape]["vocab_size"]
    data = torch.randint(0, vocab, (args.steps + 2, args.batch, args.seq_len + 1), generator=g)
    times, losses = [], []
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    for i in range(args.steps + 2):
        seq = data[i]
        if args.system == "peft":  # transformers shifts the labels itself
            x, y = seq[:, :-1], seq[:, :-1]
        else:
            x, y = seq[:, :-1], seq[:, 1:]
        t = time.perf_counter()
        with amp:
            loss = loss_fn(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t
        losses.append(float(loss))
        if i >= 2:
            times.append(dt)
    times.sort()
    cast = args.system == "llmkit" and args.dtype == "bf16" and args.hold_base == "off"
    return {"system": args.system + (f"+{args.quantize}" if args.quantize else "") + (" (base cast)" if cast else "")
            + (" compiled" if args.compile == "on" else ""),
            "step_s": times[len(times) // 2], "added_mib": peak_mib() - base_rss, "peak_mib": peak_mib(),
            "weights_mib": weights_mib, "trainable": sum(p.numel() for p in params), "first_loss": losses[0]}


def run(system: str, args, model_dir: str, quantize=None, hold: str = "on", comp: str = "off") -> dict:
    cmd = [sys.executable, __file__, "--worker", system, "--model-dir", model_dir, "--shape", args.shape,
           "--anchor-malloc", args.anchor_malloc, "--hold-base", hold, "--threads", str(args.threads),
           "--batch", str(args.batch), "--seq-len", str(args.seq_len), "--steps", str(args.steps),
           "--dtype", args.dtype, "--r", str(args.r), "--alpha", str(args.alpha), "--compile", comp]
    if quantize:
        cmd += ["--quantize", quantize]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{system} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="smollm2-135m", choices=sorted(SHAPES))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--quantize", choices=["int8", "nf4"])
    ap.add_argument("--anchor-malloc", choices=["default", "tuned"], default="default",
                    help="tuned: peft's process gets the same glibc malloc thresholds as llmkit's")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads in every worker (0: torch's default)")
    ap.add_argument("--hold-base", choices=["on", "off", "both"], default="on",
                    help="bf16: llmkit's frozen base held in bf16, as its Trainer does (off: cast by autocast "
                         "each step; both: each round runs both)")
    ap.add_argument("--compile", choices=["off", "on", "both"], default="off",
                    help="torch.compile each system's forward + loss (both: each round runs each system both ways; "
                         "compiled rows compare with compiled peft)")
    ap.add_argument("--worker", choices=["llmkit", "peft"], help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.system = args.worker
        print(json.dumps(worker(args)))
        return

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        cfg = LlamaConfig(max_position_embeddings=2048, **SHAPES[args.shape])
        LlamaForCausalLM(cfg).save_pretrained(tmp)
        best: dict[str, dict] = {}
        for rnd in range(args.rounds):
            holds = ["on", "off"] if args.hold_base == "both" else [args.hold_base]
            comps = ["off", "on"] if args.compile == "both" else [args.compile]
            systems = [(s, None, holds[0], c) for c in comps for s in ("peft", "llmkit")] + [
                ("llmkit", None, h, c) for c in comps for h in holds[1:]] + (
                [("llmkit", args.quantize, holds[0], comps[0])] if args.quantize else [])
            if rnd % 2:
                systems.reverse()
            for system, q, hold, comp in systems:
                r = run(system, args, tmp, q, hold, comp)
                print(f"round {rnd + 1}: {r['system']:<12} {r['step_s']:.3f} s/step, +{r['added_mib']:.0f} MiB "
                      f"(peak {r['peak_mib']:.0f} MiB), first loss {r['first_loss']:.4f}", flush=True)
                key = r["system"]
                if key not in best or r["step_s"] < best[key]["step_s"]:
                    best[key] = {**r, "added_mib": min(r["added_mib"], best.get(key, r)["added_mib"])}
    ref = best["peft" if "peft" in best else "peft compiled"]
    tokens = args.batch * args.seq_len
    threads = args.threads or torch.get_num_threads()
    print(f"\n{args.shape}, batch {args.batch} x {args.seq_len} tokens, {args.dtype}, {threads} threads, LoRA r={args.r} on "
          f"{', '.join(TARGETS_LLMKIT)}; best of {args.rounds} rounds, median of {args.steps} steps\n")
    print("| system | trainable params | s/step | tokens/s | speed vs peft | weights MiB | training adds MiB | memory vs peft |")
    print("|---|---|---|---|---|---|---|---|")
    for key, r in best.items():
        ref = best.get("peft compiled" if key.endswith(" compiled") else "peft", ref)  # like against like
        print(f"| {key} | {r['trainable']:,} | {r['step_s']:.3f} | {tokens / r['step_s']:.0f} | "
              f"**{ref['step_s'] / r['step_s']:.2f}x** | {r['weights_mib']:.0f} | {r['added_mib']:.0f} | "
              f"{r['added_mib'] / ref['added_mib']:.2f}x |")


if __name__ == "__main__":
    main()
