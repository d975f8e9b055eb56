"""Training throughput on CPU: llmkit's Trainer vs transformers' LlamaForCausalLM and LitGPT's GPT in plain loops.

    python bench/bench_train.py [--shape micro|small|l4] [--batch 8] [--seq-len 256] [--steps 8]
                                [--warmup 2] [--rounds 3] [--precision fp32 bf16] [--threads N] [--compile]
                                [--plain-compile] [--anchor-malloc default|tuned]

--plain-compile adds plain loops with the forward and the loss compiled as one function:
transformers' model, LitGPT's, and llmkit's model without its Trainer (what the compiled Trainer
must match: any gap is the Trainer's own overhead).

All train the same Llama-style model from the same weights (llmkit's random init, exported to
transformers with llmkit's production converter, `state_dict_to_hf`; LitGPT's GPT reads
transformers' state dict with LitGPT's own converter, `copy_weights_hf_llama`), on the same random
token batches, with the same optimizer: torch AdamW, fused, identical lr/betas/eps, weight decay
on matrices only, gradient clipping at 1.0. Per step: forward, cross-entropy, backward, clip,
AdamW step, zero_grad; under bf16 all run in `torch.autocast("cpu", bfloat16)` with fp32 master
weights. The first losses must agree to 1e-4 before anything is timed.

llmkit side: the real `Trainer.fit()` from training/loop.py (lr schedule, clipping, loss
sync, metric bookkeeping included). A step is timed from one `next(batches)` to the next, so
evaluation, checkpoint writing and logger setup at the ends of `fit` are not counted.
transformers side: a plain PyTorch loop over `LlamaForCausalLM` with its default attention
(SDPA) and an fp32 cross-entropy over its logits; LitGPT side: the same loop over `litgpt.GPT`
with `litgpt.utils.chunked_cross_entropy`, as LitGPT's pretrain script computes its loss. LitGPT
rows appear when litgpt is installed: `pip install lightning jsonargparse` then
`pip install litgpt --no-deps` (which leaves torch as it is).

Every round of every system runs in a fresh process (same seeded weights and batches): nothing
one system leaves in the process (allocator state, compiled code) reaches another. llmkit's
Trainer raises glibc's malloc thresholds (`hardware.tune_cpu_allocator`); the anchors run with
glibc's defaults, as a user's script would, unless `--anchor-malloc tuned` gives them the same.
Each round runs `warmup + steps` steps of one system, then the next (order alternating per
round); warmup steps are excluded. Tokens/s is the median over measured steps of all rounds
(this machine is shared: load only ever slows a step down, so the best round is also shown).
MFU = flops_per_token (config.py, PaLM 6N + attention) * tokens/s / device peak
(`device_peak_flops`: a measured 1024^3 matmul in that dtype).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Before anything imports tqdm (it reads TQDM_* once): the Trainer's progress bar would
# interleave with the table.
os.environ.setdefault("TQDM_DISABLE", "1")

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from llmkit.config import ModelConfig
from llmkit.model import Transformer
from llmkit.training.loop import TrainConfig, Trainer, device_peak_flops, setup_runtime
from llmkit.training.losses import causal_lm_loss
from llmkit.training.optim import param_groups

SHAPES = {
    # The quickstart / laptop preset: 6 layers, width 256, 8/4 heads, vocab 4096, tied (5.8M).
    "micro": dict(),
    # A ~29M Llama shape: 8 layers, width 512, 8/4 heads, SwiGLU 1536, vocab 8192, tied.
    "small": dict(name="small-llama", vocab_size=8192, n_layer=8, n_embd=512, n_head=8, n_kv_heads=4,
                  intermediate_size=1536, block_size=1024),
    # Issue 18's shape: 4 layers, width 256, 8/4 heads, SwiGLU 688, vocab 8192, tied (5.0M).
    "l4": dict(name="l4-llama", vocab_size=8192, n_layer=4, n_embd=256, n_head=8, n_kv_heads=4,
               intermediate_size=688, block_size=1024),
}
LR, BETAS, EPS, WD, CLIP = 3e-4, (0.9, 0.95), 1e-8, 0.1, 1.0


def build(shape: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmkit.convert.hf import config_to_hf, state_dict_to_hf

    cfg = ModelConfig.from_dict({**ModelConfig.from_name("micro-llama").to_dict(), **SHAPES[shape]})
    torch.manual_seed(0)
    ours = Transformer(cfg)
    hf_cfg = {k: v for k, v in config_to_hf(cfg, "llama").items() if k not in ("architectures", "model_type")}
    theirs = LlamaForCausalLM(LlamaConfig(**hf_cfg))
    missing, unexpected = theirs.load_state_dict(state_dict_to_hf(ours.state_dict(), cfg, "llama"), strict=False)
    # The tied head is not saved: it is the embedding again, nothing else may be missing.
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    assert theirs.lm_head.weight.data_ptr() == theirs.model.embed_tokens.weight.data_ptr() or not cfg.tie_embeddings
    return cfg, ours, theirs


class TimedBatches:
    """Cycles through fixed (inputs, labels) batches and stamps the time of every `next`: the
    interval between two stamps is one whole optimizer step of the loop that consumes them."""

    def __init__(self, batches):
        self.batches, self.i, self.stamps = batches, 0, []

    def __iter__(self):
        return self

    def __next__(self):
        self.stamps.append(time.perf_counter())
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b


def llmkit_round(model, batches, n_steps: int, precision: str, out: Path,
                 compile: bool = False) -> tuple[list[float], list[float]]:
    # One step more than measured: a step's time is read at the next step's `next(batches)`, and
    # the last step has no next one.
    cfg = TrainConfig(compile=compile, max_steps=n_steps + 1, micro_batch_size=batches[0][0].shape[0], lr=LR, warmup_steps=0,
                      min_lr_ratio=1.0, weight_decay=WD, beta1=BETAS[0], beta2=BETAS[1], grad_clip=CLIP,
                      precision=precision, eval_every=0, log_every=10**9, save_every=0, resume="none",
                      tensorboard=False, device="cpu")
    it = TimedBatches(batches)
    trainer = Trainer(model, cfg, out, it, causal_lm_loss, runtime=setup_runtime(cfg))
    trainer.fit()
    losses = [h["loss"] for h in trainer.history][:n_steps]
    return [b - a for a, b in zip(it.stamps, it.stamps[1:])], losses


def build_litgpt(cfg, theirs):
    """LitGPT's GPT with the same weights: its own converter (`copy_weights_hf_llama`, which fuses
    q/k/v) reads transformers' state dict; the head is tied to the embedding as in the others.
    None when litgpt is not installed (`pip install lightning jsonargparse` then
    `pip install litgpt --no-deps`, which keeps torch as it is)."""
    try:
        from litgpt.config import Config
        from litgpt.model import GPT
        from litgpt.scripts.convert_hf_checkpoint import copy_weights_hf_llama
    except ImportError:
        return None
    lc = Config(name=cfg.name, block_size=cfg.block_size, vocab_size=cfg.vocab_size, padded_vocab_size=cfg.vocab_size,
                n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, n_query_groups=cfg.kv_heads,
                rotary_percentage=1.0, parallel_residual=False, bias=False, norm_class_name="RMSNorm",
                norm_eps=cfg.norm_eps, mlp_class_name="LLaMAMLP", intermediate_size=cfg.intermediate_size,
                rope_base=int(cfg.rope_theta))
    lit = GPT(lc)
    sd: dict = {}
    copy_weights_hf_llama(lc, {}, sd, dict(theirs.state_dict()))
    missing, unexpected = lit.load_state_dict(sd, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    if cfg.tie_embeddings:
        lit.lm_head.weight = lit.transformer.wte.weight
    return lit


def plain_round(model, batches, n_steps: int, precision: str, kind: str,
                compile: bool = False) -> tuple[list[float], list[float]]:
    """A plain PyTorch loop over `model` (kind "transformers": LlamaForCausalLM; "litgpt": LitGPT's
    GPT with the chunked cross-entropy its pretrain script uses; "llmkit": llmkit's Transformer
    without its Trainer); with `compile`, the forward and the loss compiled as one function (what
    torch.compile's docs suggest for a training step, and what llmkit's Trainer compiles)."""
    # The same optimizer as llmkit's make_optimizer: AdamW, fused, decay on matrices only.
    opt = torch.optim.AdamW(param_groups(model, WD), lr=LR, betas=BETAS, eps=EPS, fused=True)
    model.train()
    amp = precision == "bf16"
    if kind == "litgpt":
        from litgpt.utils import chunked_cross_entropy

    def forward_loss(x, y):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            if kind == "litgpt":
                return chunked_cross_entropy(model(x), y)
            logits = model(input_ids=x).logits if kind == "transformers" else model(x)
            return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())

    fn = torch.compile(forward_loss) if compile else forward_loss
    stamps, losses = [], []
    for i in range(n_steps):
        stamps.append(time.perf_counter())
        x, y = batches[i % len(batches)]
        loss = fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    stamps.append(time.perf_counter())
    return [b - a for a, b in zip(stamps, stamps[1:])], losses


def run_worker(args, who: str, precision: str, n_steps: int) -> tuple[list[float], list[float]]:
    """One round of one system in a fresh process (the same seeded weights and batches every
    time): the allocator state, compiled code and thread pools of one system never reach the
    next, and llmkit's Trainer changing glibc's malloc thresholds (hardware.tune_cpu_allocator)
    does not speed up the anchors run after it."""
    cmd = [sys.executable, __file__, "--worker", who, "--worker-precision", precision, "--worker-steps",
           str(n_steps), "--shape", args.shape, "--batch", str(args.batch), "--seq-len", str(args.seq_len)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = dict(os.environ)
    if args.anchor_malloc == "tuned":
        env["BENCH_TRAIN_TUNE_MALLOC"] = "1"
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"worker {who} {precision} failed:\n{out.stderr[-3000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return res["times"], res["losses"]


def worker(args) -> None:
    """--worker: build the models, run `--worker-steps` steps of one system, print JSON."""
    if os.environ.get("BENCH_TRAIN_TUNE_MALLOC"):
        from llmkit.hardware import tune_cpu_allocator
        tune_cpu_allocator()
    cfg, ours, theirs = build(args.shape)
    B, T = args.batch, args.seq_len
    g = torch.Generator().manual_seed(1)
    data = [torch.randint(0, cfg.vocab_size, (B, T + 1), generator=g) for _ in range(4)]
    batches = [(d[:, :-1].contiguous(), d[:, 1:].contiguous()) for d in data]
    who, precision, n = args.worker, args.worker_precision, args.worker_steps
    if who in ("llmkit", "llmkit+compile"):
        with tempfile.TemporaryDirectory() as tmp:
            dt, losses = llmkit_round(ours, batches, n, precision, Path(tmp) / "run", compile=who.endswith("compile"))
    else:
        kind = who.split("+")[0].replace("-loop", "")
        model = {"transformers": theirs, "llmkit": ours}.get(kind) or build_litgpt(cfg, theirs)
        dt, losses = plain_round(model, batches, n, precision, kind, compile=who.endswith("compile"))
    print(json.dumps({"times": dt, "losses": losses}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-precision", help=argparse.SUPPRESS)
    ap.add_argument("--worker-steps", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--anchor-malloc", choices=["default", "tuned"], default="default",
                    help="tuned: the anchors' processes get the same glibc malloc thresholds as llmkit's Trainer sets")
    ap.add_argument("--shape", choices=list(SHAPES), default="micro")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8, help="measured steps per round")
    ap.add_argument("--warmup", type=int, default=2, help="unmeasured steps at the start of each round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--compile", action="store_true",
                    help="also run llmkit with --train.compile true (torch.compile; compiling happens in warmup)")
    ap.add_argument("--plain-compile", action="store_true",
                    help="also run transformers and llmkit's model in a plain loop with forward + loss compiled")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        return worker(args)

    cfg, ours, theirs = build(args.shape)
    lit = build_litgpt(cfg, theirs)
    if lit is None:
        print("litgpt is not installed: LitGPT rows left out (pip install lightning jsonargparse; "
              "pip install litgpt --no-deps)")
    B, T = args.batch, args.seq_len
    g = torch.Generator().manual_seed(1)
    data = [torch.randint(0, cfg.vocab_size, (B, T + 1), generator=g) for _ in range(4)]
    batches = [(d[:, :-1].contiguous(), d[:, 1:].contiguous()) for d in data]
    n_params = sum(p.numel() for p in ours.parameters())
    fpt = cfg.flops_per_token(T)
    print(f"shape {args.shape}: {n_params / 1e6:.1f}M parameters, {cfg.n_layer} layers, width {cfg.n_embd}, "
          f"heads {cfg.n_head}/{cfg.kv_heads}, vocab {cfg.vocab_size}; batch {B} x {T} tokens; "
          f"{fpt / 1e6:.1f} MFLOP/token; torch {torch.__version__}, {torch.get_num_threads()} threads")

    # Same weights, same batch: the first losses must agree (fp32) before any timing means much.
    with torch.no_grad():
        a = F.cross_entropy(ours(batches[0][0]).flatten(0, 1), batches[0][1].flatten())
        b = F.cross_entropy(theirs(input_ids=batches[0][0]).logits.flatten(0, 1), batches[0][1].flatten())
        c = F.cross_entropy(lit(batches[0][0]).flatten(0, 1), batches[0][1].flatten()) if lit is not None else b
    print(f"initial loss: llmkit {a.item():.6f}, transformers {b.item():.6f}, litgpt {c.item():.6f}")
    assert abs(a.item() - b.item()) < 1e-4 and abs(a.item() - c.item()) < 1e-4, "the models do not hold the same weights"

    n = args.warmup + args.steps
    rows = []
    for precision in args.precision:
        peak = device_peak_flops(torch.device("cpu"), torch.bfloat16 if precision == "bf16" else None)
        lits = ["litgpt"] if lit is not None else []
        names = (["llmkit", "transformers"] + lits + (["llmkit+compile"] if args.compile else [])
                 + (["transformers+compile"] + [w + "+compile" for w in lits] + ["llmkit-loop+compile"]
                    if args.plain_compile else []))
        times: dict[str, list[float]] = {w: [] for w in names}
        best: dict[str, float] = {w: float("inf") for w in names}
        for r in range(args.rounds):
            order = names if r % 2 == 0 else names[::-1]
            for who in order:
                dt, losses = run_worker(args, who, precision, n)
                kept = dt[args.warmup:]
                times[who] += kept
                best[who] = min(best[who], statistics.median(kept))
                print(f"  {precision} round {r} {who:<20} median step {statistics.median(kept) * 1e3:7.1f} ms  "
                      f"loss {losses[0]:.3f} -> {losses[-1]:.3f}", flush=True)
        tps = {w: B * T / statistics.median(v) for w, v in times.items()}
        tps_best = {w: B * T / v for w, v in best.items()}
        rows.append((precision, tps, tps_best, peak))

    print()
    print("| precision | transformers tok/s (median / best round) | llmkit tok/s (median / best round) "
          "| MFU transformers | MFU llmkit | ratio (median) |")
    print("|---|---|---|---|---|---|")
    for precision, tps, tps_best, peak in rows:
        mfu = {w: fpt * v / peak for w, v in tps.items()}
        print(f"| {precision} | {tps['transformers']:,.0f} / {tps_best['transformers']:,.0f} "
              f"| {tps['llmkit']:,.0f} / {tps_best['llmkit']:,.0f} | {mfu['transformers']:.1%} "
              f"| {mfu['llmkit']:.1%} | **{tps['llmkit'] / tps['transformers']:.2f}x** |")
    if args.compile:
        print("\n| precision | llmkit --train.compile tok/s (median / best round) | MFU | ratio to transformers (eager) |")
        print("|---|---|---|---|")
        for precision, tps, tps_best, peak in rows:
            c = "llmkit+compile"
            print(f"| {precision} | {tps[c]:,.0f} / {tps_best[c]:,.0f} | {fpt * tps[c] / peak:.1%} "
                  f"| **{tps[c] / tps['transformers']:.2f}x** |")
    if args.plain_compile:
        print("\n| precision | stack | tok/s (median / best round) | MFU | ratio to transformers+compile |")
        print("|---|---|---|---|---|")
        for precision, tps, tps_best, peak in rows:
            ref = tps["transformers+compile"]
            for w in [w for w in tps if w.endswith("compile")]:
                print(f"| {precision} | {w} | {tps[w]:,.0f} / {tps_best[w]:,.0f} | {fpt * tps[w] / peak:.1%} "
                      f"| **{tps[w] / ref:.2f}x** |")
    print("\n| precision | system | tok/s (median / best round) | MFU |")
    print("|---|---|---|---|")
    for precision, tps, tps_best, peak in rows:
        for w in tps:
            print(f"| {precision} | {w} | {tps[w]:,.0f} / {tps_best[w]:,.0f} | {fpt * tps[w] / peak:.1%} |")
    print("\n| precision | mode | llmkit Trainer tok/s | best anchor | its tok/s | ratio |")
    print("|---|---|---|---|---|---|")
    for precision, tps, tps_best, peak in rows:
        for mode, ours_, anchors in (("eager", "llmkit", ["transformers", "litgpt"]),
                                     ("compiled", "llmkit+compile", ["transformers+compile", "litgpt+compile"])):
            anchors = [a for a in anchors if a in tps]
            if ours_ not in tps or not anchors:
                continue
            top = max(anchors, key=tps.get)
            print(f"| {precision} | {mode} | {tps[ours_]:,.0f} | {top} | {tps[top]:,.0f} "
                  f"| **{tps[ours_] / tps[top]:.2f}x** |")
    for precision, _, _, peak in rows:
        print(f"peak ({precision} matmul, measured): {peak / 1e9:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
