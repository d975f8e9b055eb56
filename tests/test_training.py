"""The training loop: schedule, decay groups, exact resume, signals, distributed parity."""

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmkit.checkpoint import load_weights
from llmkit.config import ModelConfig
from llmkit.model import Transformer
from llmkit.training.optim import lr_at, param_groups
from tests.helpers import make_token_shards, run_cli


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A tiny tokenizer and prepared shards from synthetic text (no shared data needed)."""
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "home", "slowly"]
    return make_token_shards(tmp_path_factory.mktemp("corpus"), words, n_docs=40, max_words=200)


def _pretrain_args(data, out, *extra):
    return ["pretrain", "--data", str(data), "--out", str(out), "--model", "tiny-llama",
            "--train.precision", "fp32", "--train.micro_batch_size", "4", "--train.warmup_steps", "2",
            "--train.lr", "3e-3", "--train.log_every", "1", "--train.tensorboard", "false", *extra]


def _losses(out):
    with open(Path(out) / "metrics.csv") as f:
        return {int(r["step"]): float(r["value"]) for r in csv.DictReader(f) if r["metric"] == "loss"}


def test_lr_schedule_values():
    assert lr_at(0, 1.0, 10, 100) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(10, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(55, 1.0, 10, 100) == pytest.approx(0.55)  # halfway down the cosine: (1 + 0.1) / 2
    assert lr_at(100, 1.0, 10, 100) == pytest.approx(0.1)
    assert lr_at(500, 1.0, 10, 100) == pytest.approx(0.1)


def test_no_weight_decay_on_norms_and_biases():
    model = Transformer(ModelConfig.from_name("tiny-gpt2"))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.dim() == 2 for p in decay["params"])
    assert {names[id(p)] for p in no_decay["params"]} == {n for n, p in model.named_parameters() if p.dim() == 1}
    assert any(n.endswith("attn_norm.weight") for n in (names[id(p)] for p in no_decay["params"]))


def test_pretrain_loss_decreases_and_writes_files(prepared, tmp_path):
    from llmkit.cli import main

    out = tmp_path / "run"
    main(_pretrain_args(prepared, out, "--train.max_steps", "30", "--train.eval_every", "15"))
    losses = _losses(out)
    assert sum(losses[s] for s in range(26, 31)) / 5 < sum(losses[s] for s in range(1, 6)) / 5 - 0.5
    for f in ("metrics.csv", "loss.png", "summary.json", "final/model.safetensors", "final/config.json",
              "final/tokenizer.json", "checkpoints/latest"):
        assert (out / f).exists(), f
    metrics = {r["metric"] for r in csv.DictReader(open(out / "metrics.csv"))}
    assert {"loss", "lr", "grad_norm", "tokens_per_sec", "mfu", "val_loss", "val_ppl"} <= metrics
    from llmkit.checkpoint import load_model

    vocab = json.loads((prepared / "manifest.json").read_text())["vocab_size"]
    assert load_model(out / "final").config.vocab_size == vocab != 512  # the preset took the tokenizer's size


def test_resume_equals_uninterrupted(prepared, tmp_path):
    """Kill at step 5 (SIGTERM), resume with --resume auto: the loss curve is bit-identical."""
    base = ["--train.max_steps", "10", "--train.eval_every", "0", "--train.save_every", "0"]
    ref = tmp_path / "ref"
    code, _, err = run_cli(*_pretrain_args(prepared, ref, *base))  # a process, as the two below
    assert code == 0, err[-2000:]
    out = tmp_path / "resumed"
    # Stop after step 5 by a real SIGTERM sent from inside the loss function.
    code = f"""
import os, signal, sys
import llmkit.recipes.pretrain as p
from llmkit.training import losses
orig = p.causal_lm_loss
calls = [0]
def loss(m, b):
    calls[0] += 1
    if calls[0] == 5:
        os.kill(os.getpid(), signal.SIGTERM)
    return orig(m, b)
p.causal_lm_loss = loss
from llmkit.cli import main
main({_pretrain_args(prepared, out, *base)!r})
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 128 + signal.SIGTERM, r.stderr[-2000:]
    assert (out / "checkpoints" / "step-00000005" / "model.safetensors").exists()
    from llmkit.checkpoint import load_model

    # The signal checkpoint is a loadable model, of the run's architecture.
    assert load_model(out / "checkpoints" / "step-00000005").config == load_model(ref / "final").config
    code, _, err = run_cli(*_pretrain_args(prepared, out, *base, "--train.resume", "auto"))
    assert code == 0, err[-2000:]
    a, b = _losses(ref), _losses(out)
    assert sorted(a) == sorted(b) == list(range(1, 11))
    assert all(a[s] == b[s] for s in a), [(s, a[s], b[s]) for s in a if a[s] != b[s]]
    wa, wb = load_weights(ref / "final"), load_weights(out / "final")  # and the same final model, bit for bit
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_checkpoint_write_is_atomic(prepared, tmp_path, monkeypatch):
    """A crash while writing a checkpoint leaves the previous `latest` intact and loadable."""
    from llmkit.cli import main
    import llmkit.checkpoint as ck

    out = tmp_path / "run"
    main(_pretrain_args(prepared, out, "--train.max_steps", "4", "--train.save_every", "2", "--train.eval_every", "0"))
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000004"
    before = {k: v.clone() for k, v in load_weights(out / "checkpoints" / "step-00000004").items()}
    real = ck.save_weights

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_weights", crash)
    with pytest.raises(OSError):
        main(_pretrain_args(prepared, out, "--train.max_steps", "6", "--train.save_every", "0",
                            "--train.eval_every", "0"))
    monkeypatch.setattr(ck, "save_weights", real)
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000004"
    from llmkit.checkpoint import load_model

    load_model(out / "checkpoints" / "step-00000004")
    after = load_weights(out / "checkpoints" / "step-00000004")  # the very weights it held before the crash
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def _torchrun(n, args, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           "-m", "llmkit", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_process_matches_one_process(prepared, tmp_path, mode):
    """2 gloo processes x micro-batch 2 == 1 process x micro-batch 4, step by step."""
    steps = ["--train.max_steps", "6", "--train.eval_every", "0", "--train.save_every", "0"]
    single = tmp_path / "single"
    code, _, err = run_cli(*_pretrain_args(prepared, single, *steps), env={"OMP_NUM_THREADS": "1"})
    assert code == 0, err[-2000:]
    multi = tmp_path / mode
    args = _pretrain_args(prepared, multi, *steps, "--train.distributed", mode)
    args[args.index("--train.micro_batch_size") + 1] = "2"
    r = _torchrun(2, args)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _losses(single), _losses(multi)
    assert sorted(a) == sorted(b)
    for s in a:
        assert b[s] == pytest.approx(a[s], rel=1e-4, abs=1e-5), (s, a[s], b[s])
    from llmkit.checkpoint import load_model

    m1, m2 = load_model(single / "final").model, load_model(multi / "final").model
    for (n, p1), p2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        torch.testing.assert_close(p1, p2, rtol=1e-3, atol=1e-4, msg=n)


# --- settings are checked before anything is read, loaded or written -----------------------------
BAD_SETTINGS = [
    (["--max_steps", "-5"], "max_steps must be > 0"),
    (["--max_steps", "0"], "max_steps must be > 0"),
    (["--max_tokens", "-1"], "max_tokens must be > 0"),
    (["--max_time", "0"], "max_time must be > 0"),
    (["--min_lr_ratio", "-5"], "min_lr_ratio must be between 0 and 1"),
    (["--min_lr_ratio", "1.5"], "min_lr_ratio must be between 0 and 1"),
    (["--weight_decay", "-0.1"], "weight_decay must be >= 0"),
    (["--warmup_steps", "-1"], "warmup_steps must be >= 0"),
    (["--save_every", "-1"], "save_every must be >= 0"),
    (["--eval_every", "-1"], "eval_every must be >= 0"),
    (["--log_every", "0"], "log_every must be >= 1"),
    (["--keep_last", "-1"], "keep_last must be >= 0"),
    (["--grad_clip", "-1"], "grad_clip must be >= 0"),
    (["--beta1", "1"], "beta1 must be in [0, 1)"),
    (["--beta2", "-0.1"], "beta2 must be in [0, 1)"),
    (["--peak_flops", "0"], "peak_flops must be > 0"),
    (["--train.lr", "-1"], "lr must be a positive number"),
    (["--micro_batch_size", "0"], "micro_batch_size must be >= 1"),
]


@pytest.mark.parametrize("extra,match", BAD_SETTINGS, ids=[" ".join(e) for e, _ in BAD_SETTINGS])
def test_bad_loop_setting_is_one_line_before_anything_is_loaded(tmp_path, capsys, monkeypatch, extra, match):
    """`--max_steps -5` used to exit 0 and publish an untrained model; `--min_lr_ratio -5`
    trained with a negative rate. Now: one line, exit 1, before the data is read (here it does
    not even exist) or the model is built, and nothing is written."""
    import llmkit.recipes.scaffold as scaffold
    from tests.helpers import cli_error

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(scaffold.Run, "load", no_load)
    out = tmp_path / "out"
    cli_error(capsys, ["pretrain", "--model", "tiny-llama", "--data", tmp_path / "X", "--out", out, *extra], match)
    assert not out.exists()


@pytest.mark.parametrize("command", [["finetune", "M", "D.json"], ["dpo", "M", "--data", "D.json"],
                                     ["classify", "train", "M", "D.tsv"]])
def test_every_training_command_checks_its_loop_settings_first(tmp_path, capsys, command):
    """The same check for every recipe, before its model or data is looked at (neither exists)."""
    from tests.helpers import cli_error

    out = tmp_path / "out"
    cli_error(capsys, [*command, "--out", out, "--min_lr_ratio", "-5"], "min_lr_ratio must be between 0 and 1")
    cli_error(capsys, [*command, "--out", out, "--max_steps", "-5"], "max_steps must be > 0")
    assert not out.exists()


def test_validate_checks_ranges_and_leaves_unset_values_to_the_recipe():
    from llmkit.errors import LLMKitError
    from llmkit.training.loop import TrainConfig

    TrainConfig(max_steps=1).validate()
    TrainConfig(max_steps=1, warmup_steps=0, eval_every=0, save_every=0, keep_last=0, grad_clip=0,
                weight_decay=0, min_lr_ratio=0, beta1=0).validate()  # 0 means off / only at the end
    TrainConfig(max_steps=1, min_lr_ratio=1.0, peak_flops=1e12).validate()
    # A recipe may pick lr (finetune: by method) and the budget (finetune: --epochs) itself:
    # the early check lets them be unset, the Trainer's complete check does not.
    early = TrainConfig(lr=None)
    early.validate(complete=False)
    with pytest.raises(LLMKitError, match="set a training budget"):
        early.validate()
    with pytest.raises(LLMKitError, match="lr must be a positive number"):
        TrainConfig(lr=None, max_steps=5).validate()
    for bad in (dict(max_steps=-5), dict(max_time=float("nan")), dict(min_lr_ratio=float("nan")),
                dict(beta2=1.0), dict(log_every=0), dict(peak_flops=-1.0), dict(max_tokens=0)):
        with pytest.raises(LLMKitError):
            TrainConfig(**{"max_steps": 1, **bad}).validate(complete=False)


# --- the default warmup scales with the run -------------------------------------------------------
def test_auto_warmup_is_five_percent_of_the_run_capped_at_100_and_explicit_values_are_kept():
    from llmkit.training.loop import TrainConfig

    auto = TrainConfig()
    assert auto.warmup_steps is None  # auto
    assert [auto.warmup_for(n) for n in (1, 20, 30, 1000, 2000, 100_000)] == [1, 1, 2, 50, 100, 100]
    assert auto.warmup_for(None) == 100  # length not known yet (a token or time budget)
    for explicit in (0, 7, 100, 500):
        assert [TrainConfig(warmup_steps=explicit).warmup_for(n) for n in (None, 20, 10_000)] == [explicit] * 3
    # A 20-step run reaches its peak rate after its first step (a fixed 100 kept it at <= 20%).
    lrs = [lr_at(s, 1.0, auto.warmup_for(20), 20) for s in range(20)]
    assert lrs[0] == pytest.approx(1.0) and lrs[-1] < 0.2


def test_short_run_with_the_default_warmup_reaches_the_peak_rate(prepared, tmp_path):
    """`--max_steps 20` without --warmup_steps: the logged rate reaches --lr (it stayed below
    a fifth of it with a fixed 100-step warmup) and the loss goes down."""
    from llmkit.cli import main

    out = tmp_path / "short"
    main(["pretrain", "--data", str(prepared), "--out", str(out), "--model", "tiny-llama", "--train.precision", "fp32",
          "--train.micro_batch_size", "4", "--train.lr", "3e-3", "--train.log_every", "1", "--train.tensorboard",
          "false", "--max_steps", "20", "--eval_every", "0", "--save_every", "0"])
    with open(out / "metrics.csv") as f:
        lrs = {int(r["step"]): float(r["value"]) for r in csv.DictReader(f) if r["metric"] == "lr"}
    assert max(lrs.values()) == pytest.approx(3e-3) and lrs[1] == pytest.approx(3e-3)
    losses = _losses(out)
    assert sum(losses[s] for s in range(16, 21)) < sum(losses[s] for s in range(1, 6)) - 0.5


def test_compile_traces_the_loss_with_the_model_and_trains_like_eager(tmp_path, monkeypatch):
    """--train.compile in one process: the graph holds the model and the loss after it (the
    output layer's cross-entropy over the vocabulary, left eager when only the model compiled);
    the run trains as the eager one does. A recording backend stands in for inductor."""
    from llmkit.training.loop import TrainConfig, Trainer
    from llmkit.training.losses import causal_lm_loss

    def run(compile_: bool, name: str) -> list[float]:
        torch.manual_seed(0)
        model = Transformer(ModelConfig.from_name("tiny-llama"))
        g = torch.Generator().manual_seed(1)
        data = torch.randint(0, model.cfg.vocab_size, (12, 4, 17), generator=g)
        batches = iter([(d[:, :-1], d[:, 1:]) for d in data])
        cfg = TrainConfig(max_steps=4, precision="fp32", compile=compile_, eval_every=0, save_every=0,
                          log_every=1, tensorboard=False, warmup_steps=1, lr=1e-3)
        trainer = Trainer(model, cfg, tmp_path / name, batches, causal_lm_loss)
        trainer.fit()
        return [h["loss"] for h in trainer.history]

    graphs = []

    def record(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn=None, **kw: real(fn, backend=record))
    compiled = run(True, "compiled")
    monkeypatch.setattr(torch, "compile", real)
    eager = run(False, "eager")
    # the loss is cross_entropy.py's fused output layer + cross-entropy, an autograd Function
    assert graphs and any("autograd_function_apply" in g and "embedding" in g for g in graphs), graphs[:1]
    assert compiled == pytest.approx(eager, rel=1e-5, abs=1e-6)
