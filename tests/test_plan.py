"""`llmkit plan`: Hoffmann et al.'s compute-optimal table, TinyLlama's published run, the memory
model against what autograd saves and against the measured peak of real training runs on this
machine, `--run` MFU, the shared hardware table, bad input."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmkit import hardware as hw
from llmkit.config import ModelConfig
from llmkit.errors import LLMKitError
from llmkit.plan import (HOFFMANN_TABLE3, compute_optimal_tokens, derive_shape, plan, resolve_model,
                         serve_memory, train_memory)
from tests.helpers import cli_error, cli_run


def quiet_plan(*args, **kw) -> dict:
    with contextlib.redirect_stdout(io.StringIO()):
        return plan(*args, json=True, **kw)


# --- compute-optimal tokens and FLOPs --------------------------------------------------------------
# Hoffmann et al. 2022, Table 3: (parameters as asked, FLOPs, tokens).
HOFFMANN_ROWS = [("400M", 1.92e19, 8.0e9), ("1B", 1.21e20, 20.2e9), ("10B", 1.23e22, 205.1e9),
                 ("67B", 5.76e23, 1.5e12), ("175B", 3.85e24, 3.7e12)]


@pytest.mark.parametrize("params,flops,tokens", HOFFMANN_ROWS)
def test_hoffmann_table3_rows_within_3_percent(params, flops, tokens):
    p = quiet_plan(params, hardware="h200", gpus=4096, distributed="fsdp", micro_batch_size=1,
                   activation_checkpointing=True)
    c = p["compute"]
    assert p["model"]["source"] == "parameter count"
    assert abs(p["model"]["params"] / p["model"]["asked_params"] - 1) < 0.005  # the derived shape's count
    assert abs(c["compute_optimal_tokens"] / tokens - 1) < 0.03, (params, c["compute_optimal_tokens"], tokens)
    assert abs(c["compute_optimal_flops_6nd"] / flops - 1) < 0.03, (params, c["compute_optimal_flops_6nd"], flops)
    assert c["tokens"] == c["compute_optimal_tokens"] and c["tokens_source"] == "compute-optimal"
    # The loop's count adds attention to 6 x non-embedding parameters: within ~10% of 6ND here.
    assert 0.85 < c["train_flops"] / c["flops_6nd"] < 1.15


def test_compute_optimal_between_and_beyond_the_table():
    ratios = [compute_optimal_tokens(n) / n for n in (1e8, 4e8, 3e9, 3e10, 1e11, 3e11, 3e12, 3e13)]
    assert all(19 < r < 23 for r in ratios), ratios  # ~20 tokens per parameter, growing slowly, as the table
    assert ratios[-1] > ratios[0]
    for n, _, d in HOFFMANN_TABLE3:  # the other four rows too
        assert abs(compute_optimal_tokens(n) / d - 1) < 0.03
    assert abs(20 * 67e9 / 1.5e12 - 1) > 0.1  # why not a flat 20: 11% short at 67B


def test_tinyllama_published_run_order_of_magnitude():
    """TinyLlama 1.1B: 3T tokens on 64 A100-40GB at 55% MFU took about 4 weeks."""
    p = quiet_plan("tinyllama-1.1b", tokens="3T", hardware="a100-40gb", gpus=64, mfu=0.55)
    t, c = p["time"], p["compute"]
    weeks = t["seconds"] / (7 * 86400)
    assert 4 / 3 < weeks < 4 * 3, weeks
    cfg = ModelConfig.from_name("tinyllama-1.1b")
    assert c["train_flops"] == pytest.approx(3e12 * cfg.flops_per_token(2048))
    assert t["seconds"] == pytest.approx(c["train_flops"] / (64 * 312e12 * 0.55))
    assert t["cost_usd"] == pytest.approx(t["device_hours"] * hw.GPUS["a100-40gb"].price)
    assert t["energy_kwh"] == pytest.approx(t["device_hours"] * 400 / 1000 * 1.2)
    assert t["co2_kg"] == pytest.approx(t["energy_kwh"] * 0.480)


# --- the memory model against what autograd keeps ----------------------------------------------------
def saved_bytes(cfg: ModelConfig, method: str, precision: str, ckpt: bool, B: int = 2, T: int = 64) -> int:
    """Bytes autograd holds after a real forward + loss of llmkit's model (saved_tensors_hooks,
    each storage once, parameters excluded): the reference for `forward_saved`."""
    from llmkit.lora import LoRAConfig
    from llmkit.model import Transformer
    from llmkit.recipes.tuning import setup_method
    from llmkit.training.losses import causal_lm_loss

    torch.manual_seed(0)
    model = Transformer(cfg)
    if method != "full":
        setup_method(model, "lora" if method == "qlora" else method, LoRAConfig(), 2,
                     "nf4" if method == "qlora" else None)
    model.gradient_checkpointing = ckpt
    model.train()
    params = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    x = torch.randint(0, cfg.vocab_size, (B, T + 1))
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), amp:
        causal_lm_loss(model, (x[:, :-1], x[:, 1:]))
    return sum(seen.values())


SMALL = dict(n_layer=2, n_embd=128, n_head=4, n_kv_heads=2, intermediate_size=256, vocab_size=512)
SAVED_CASES = [("micro-llama", {}, m, p, ck) for m in ("full", "lora", "qlora", "freeze") for p in ("bf16", "fp32")
               for ck in (False, True)] + [
    ("tiny-gpt2", {}, "full", "bf16", False), ("tiny-gpt2", {}, "lora", "fp32", False),  # LayerNorm, GELU, biases
    ("qwen3-0.6b", dict(SMALL, head_dim=32), "full", "bf16", False),  # q/k norms
    ("gemma-2-2b", dict(SMALL, head_dim=32), "lora", "bf16", False),  # soft-capped attention and logits
]


@pytest.mark.parametrize("preset,over,method,precision,ckpt", SAVED_CASES)
def test_activation_model_matches_what_autograd_saves(preset, over, method, precision, ckpt):
    cfg = ModelConfig.from_name(preset, **over)
    measured = saved_bytes(cfg, method, precision, ckpt)
    est = train_memory(cfg, method="lora" if method == "qlora" else method,
                       quantize="nf4" if method == "qlora" else None, precision=precision, micro_batch_size=2,
                       seq_len=64, activation_checkpointing=ckpt, device="cpu").forward_saved
    assert abs(est / measured - 1) < 0.06, f"estimate {est:,.0f} B, autograd saved {measured:,.0f} B"


# --- the memory model against real training runs ------------------------------------------------------
MEASURE = r'''
import gc, json, re, sys
def status(key):
    with open("/proc/self/status") as f:
        return int(re.search(key + r":\s+(\d+)", f.read()).group(1)) * 1024
spec = json.loads(sys.argv[1])
import torch
from llmkit.config import ModelConfig
from llmkit.lora import LoRAConfig
from llmkit.model import Transformer
from llmkit.recipes.tuning import setup_method
from llmkit.training.loop import Trainer, TrainConfig
from llmkit.training.losses import causal_lm_loss

def train(cfg, run, out, steps, hook=None):
    B, T = spec["micro_batch_size"], spec["seq_len"]
    torch.manual_seed(0)
    model = Transformer(cfg)
    if run["method"] != "full":
        setup_method(model, run["method"], LoRAConfig(), 2, run["quantize"])
    g = torch.Generator().manual_seed(0)
    def batches():
        while True:
            x = torch.randint(0, cfg.vocab_size, (B, T + 1), generator=g)
            yield x[:, :-1], x[:, 1:]
    tc = TrainConfig(max_steps=steps, micro_batch_size=B, precision="bf16", log_every=1, eval_every=0,
                     save_every=0, tensorboard=False, device="cpu", resume="none")
    trainer = Trainer(model, tc, out, batches(), causal_lm_loss, flops_per_token=cfg.flops_per_token(T))
    if hook:
        hook(trainer)
    trainer.fit()

cfg = ModelConfig.from_dict(spec["cfg"])
peaks = []
for i, run in enumerate(spec["runs"]):
    # The same training of a tiny model first: what a process pays once (torch._dynamo, imported
    # by the first optimizer: ~70 MB; kernels; thread pools) is in the baseline, not the increase.
    tiny = cfg.replace(n_layer=1, n_embd=64, n_head=2, n_kv_heads=1, intermediate_size=128)
    train(tiny, run, f"{spec['out']}/warmup{i}", 1)
    gc.collect()
    baseline = status("VmRSS")
    seen = {}
    def hook(trainer):
        save = trainer.save_checkpoint
        def save_checkpoint():
            seen.setdefault("hwm", status("VmHWM"))  # training done, before the final save
            return save()
        trainer.save_checkpoint = save_checkpoint
        with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak; training from here
            f.write("5")
    train(cfg, run, f"{spec['out']}/run{i}", run["steps"], hook)
    peaks.append(seen["hwm"] - baseline)
    gc.collect()
print(json.dumps(peaks))
'''

# ~23M parameters: the increase (0.1-0.4 GiB) is far above the noise of a process's RSS.
RSS_CFG = ModelConfig.from_name("micro-llama", n_layer=6, n_embd=512, n_head=8, n_kv_heads=4, intermediate_size=1536,
                                vocab_size=8192, block_size=256)
RSS_RUNS = [dict(method="full", quantize=None, steps=2),  # step 2: AdamW's state exists
            dict(method="lora", quantize=None, steps=1), dict(method="lora", quantize="nf4", steps=1)]


@pytest.fixture(scope="module")
def measured_runs(tmp_path_factory):
    """Peak RSS increase of real llmkit training (the Trainer, causal_lm_loss, bf16 autocast) in a
    subprocess: full pretraining, LoRA, QLoRA; the full run's directory serves `--run`."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    out = tmp_path_factory.mktemp("rss")
    spec = dict(cfg=RSS_CFG.to_dict(), runs=RSS_RUNS, out=str(out), micro_batch_size=2, seq_len=128)
    # glibc's dynamic mmap threshold (mallopt(3), M_MMAP_THRESHOLD) keeps freed blocks in the heap,
    # so RSS would count memory the program already freed (and one run would see the last one's);
    # fixed at 64 KiB, every tensor is mapped on its own and returned when freed: RSS then tracks
    # live memory, as torch.cuda.max_memory_allocated does on a GPU. LLMKIT_MALLOC=default: the
    # Trainer leaves that setting alone (hardware.tune_cpu_allocator would keep freed memory).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "LLMKIT_MALLOC": "default"}
    r = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(spec)], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1]), out


def test_memory_estimate_within_25_percent_of_measured_peak(measured_runs):
    """One test for the three runs and `--run` (the subprocess is the slow part: once per worker)."""
    peaks, out = measured_runs
    report, bad = [], []
    for run, measured, name in zip(RSS_RUNS, peaks, ("pretrain (full)", "LoRA", "QLoRA nf4")):
        est = train_memory(RSS_CFG, method=run["method"], quantize=run["quantize"], precision="bf16",
                           micro_batch_size=2, seq_len=128, device="cpu").peak
        line = f"{name}: estimated peak {est / 2**20:.1f} MiB, measured peak RSS increase {measured / 2**20:.1f} MiB"
        report.append(line)
        if not (measured > 50 * 2**20 and abs(est / measured - 1) < 0.25):  # far above noise, within 25%
            bad.append(line)
    print("\n".join(report))
    assert not bad, "; ".join(report)

    # --run: the full run's directory, its logged MFU (median of the mfu rows).
    with open(out / "run0" / "metrics.csv", newline="") as f:
        mfus = [float(r["value"]) for r in csv.DictReader(f) if r["metric"] == "mfu"]
    assert len(mfus) == 2
    p = quiet_plan("micro-llama", hardware="a100-80gb", run=str(out / "run0"), tokens="1B")
    t = p["time"]
    assert t["mfu"] == pytest.approx(statistics.median(mfus)) and "measured" in t["mfu_source"]
    assert t["seconds"] == pytest.approx(p["compute"]["train_flops"] / (312e12 * t["mfu"]))


# --- memory details -----------------------------------------------------------------------------------
def test_rule_of_thumb_and_llmkit_layout():
    p = quiet_plan("llama-2-7b", micro_batch_size=1, seq_len=512)
    mem = p["memory"]
    assert mem["bytes_per_param"] == pytest.approx(16.0, rel=1e-6)  # fp32 4 + grads 4 + AdamW 8
    assert "16 bytes per parameter" in mem["rule_of_thumb"] and "Rajbhandari" in mem["rule_of_thumb"]
    pd = mem["per_device"]
    n = p["model"]["params"]
    assert 0 <= pd["weights"] - 4 * n < 2**20  # (+ the RoPE tables)
    assert pd["gradients"] == 4 * n and pd["optimizer"] == 8 * n
    assert not mem["fits"]  # 7B x 16 B = 112 GB > 80 GB
    fsdp = next(o for o in mem["to_fit"] if o["change"].startswith("FSDP"))
    k = int(fsdp["change"].split()[2])
    kw = dict(precision="bf16", micro_batch_size=1, seq_len=512, distributed="fsdp")
    cfg = ModelConfig.from_name("llama-2-7b")
    usable = 80 * 2**30 * 0.9
    assert train_memory(cfg, devices=k, shards=k, **kw).peak <= usable < \
        train_memory(cfg, devices=k // 2, shards=k // 2, **kw).peak  # the smallest power of two
    q = quiet_plan("llama-2-7b", method="qlora", micro_batch_size=1, seq_len=512)
    assert q["memory"]["fits"] and q["memory"]["bytes_per_param"] < 1.0  # nf4 blocks, fp32 embeddings


def test_quantized_weights_as_lora_stores_them():
    """The plan's QLoRA/int8 weight bytes equal lora.weight_bytes of a real quantized model."""
    from llmkit.lora import LoRAConfig, weight_bytes
    from llmkit.model import Transformer
    from llmkit.recipes.tuning import setup_method

    cfg = ModelConfig.from_name("micro-llama")
    for kind in ("nf4", "int8"):
        model = Transformer(cfg)
        setup_method(model, "lora", LoRAConfig(), 2, kind)
        est = train_memory(cfg, method="lora", quantize=kind, micro_batch_size=1, seq_len=16).weights
        assert est == weight_bytes(model), kind


def test_kv_cache_as_llmkit_allocates_it():
    from llmkit.kv_cache import KVCache

    cfg = ModelConfig.from_name("micro-llama")
    cache = KVCache(cfg, 3, 100, dtype=torch.bfloat16)
    real = sum(t.numel() * t.element_size() for t in cache.k + cache.v)
    assert serve_memory(cfg, "bf16", 3, 100)["kv_cache"] == real
    # Llama 2 7B: 0.5 MiB per token in 16-bit (2 x 32 layers x 4096 x 2 bytes).
    s = serve_memory(ModelConfig.from_name("llama-2-7b"), "bf16", 1, 4096)
    assert s["kv_cache"] == 4096 * 2**19


def test_derived_shape_is_llama_like():
    cfg = derive_shape(7e9)
    assert cfg.mlp == "swiglu" and cfg.norm == "rms" and cfg.pos == "rope" and cfg.head_size == 128
    assert 100 < cfg.n_embd / cfg.n_layer < 160
    from llmkit.model import count_params

    assert abs(count_params(cfg) / 7e9 - 1) < 0.005
    spec = resolve_model("1.1e9")
    assert spec.asked == 1.1e9 and "Llama-like" in spec.note


def test_model_from_yaml_json_and_directory(tmp_path):
    cfg = ModelConfig.from_name("micro-llama", n_layer=3)
    (tmp_path / "m.json").write_text(json.dumps(cfg.to_dict()))
    import yaml

    (tmp_path / "m.yaml").write_text(yaml.safe_dump({k: v for k, v in cfg.to_dict().items() if k != "format"}))
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "config.json").write_text(json.dumps(cfg.to_dict()))
    for spec in ("m.json", "m.yaml", "dir"):
        r = resolve_model(str(tmp_path / spec))
        assert r.cfg.n_layer == 3 and r.cfg.n_embd == cfg.n_embd, spec


# --- the shared hardware table ------------------------------------------------------------------------
def test_loop_reads_the_hardware_table(monkeypatch):
    from llmkit.training.loop import device_peak_flops

    cuda = torch.device("cuda", 0)
    for name, bf16, fp32 in (("NVIDIA A100-SXM4-80GB", 312e12, 19.5e12), ("NVIDIA A10", 125e12, 31.2e12),
                             ("NVIDIA L40S", 362e12, 91.6e12), ("NVIDIA L4", 121e12, 30.3e12),
                             ("NVIDIA H100 80GB HBM3", 989e12, 67e12), ("NVIDIA GeForce RTX 4090", 165.2e12, 82.6e12)):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None, n=name: n)
        assert device_peak_flops(cuda, torch.bfloat16) == pytest.approx(bf16), name
        assert device_peak_flops(cuda, None) == pytest.approx(fp32), name
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Some Other GPU")
    assert device_peak_flops(cuda, torch.bfloat16) is None
    assert hw.lookup("A100_80GB").name == "a100-80gb" and hw.lookup("4090").name == "rtx-4090"
    with pytest.raises(LLMKitError, match="fp8"):
        hw.lookup("a100-80gb").peak("fp8")


def test_cpu_is_measured():
    cpu = hw.lookup("cpu")
    assert cpu.name == "cpu" and cpu.half > 1e9 and cpu.fp32 > 1e9 and cpu.memory_gib > 0.5
    p = quiet_plan("micro-llama", hardware="cpu", tokens="10M", precision="fp32")
    assert p["time"]["peak_flops"] == cpu.fp32


# --- the CLI ------------------------------------------------------------------------------------------
def test_cli_end_to_end(capsys):
    code, out, err = cli_run(capsys, ["plan", "llama-2-7b", "--method", "qlora", "--gpus", "2", "--json"])
    assert code == 0, err
    p = json.loads(out)
    assert p["model"]["quantize"] == "nf4" and p["memory"]["distributed"] == "ddp" and p["time"]["devices"] == 2
    assert p["compute"]["tokens"] == pytest.approx(compute_optimal_tokens(p["model"]["params"]))
    code, out, err = cli_run(capsys, ["plan", "400M", "--tokens", "8B", "--hardware", "rtx-4090",
                                      "--activation-checkpointing", "--micro-batch-size", "2"])
    assert code == 0, err
    for section in ("model\n", "compute\n", "time, cost, energy\n", "memory per device", "serving (", "assumptions\n"):
        assert section in out
    assert "16 bytes per parameter" in out and "Llama-like" in out and "activation checkpointing" in out


@pytest.mark.parametrize("argv,needle", [
    (["plan", "7B", "--hardware", "a200"], "unknown hardware 'a200'"),
    (["plan", "7B", "--gpus", "-2"], "gpus must be"),
    (["plan", "7X"], "parameter count like 7B"),
    (["plan", "7B", "--tokens=-3T"], "tokens must be positive"),
    (["plan", "7B", "--tokens", "lots"], "not a number like"),
    (["plan", "7B", "--mfu", "40"], "mfu must be in (0, 1]"),
    (["plan", "7B", "--precision", "fp8"], "no fp8"),
    (["plan", "7B", "--quantize", "nf4"], "use it with --method lora"),
    (["plan", "7B", "--micro-batch-size", "0"], "micro_batch_size must be"),
    (["plan", "micro-llama", "--seq-len", "4096"], "longer than the model's context"),
    (["plan", "7B", "--gpus", "2", "--distributed", "fsdp", "--shards", "4"], "cannot exceed"),
])
def test_bad_input_is_one_line(capsys, argv, needle):
    cli_error(capsys, argv, needle)


def test_run_without_mfu_rows_is_one_line(capsys, tmp_path):
    cli_error(capsys, ["plan", "7B", "--run", str(tmp_path)], "no metrics.csv")
    (tmp_path / "metrics.csv").write_text("step,tokens,metric,value\n1,10,loss,3.2\n")
    cli_error(capsys, ["plan", "7B", "--run", str(tmp_path)], "no mfu rows")
