"""Checkpoint I/O (src/llmkit/checkpoint.py): atomic writes, weights saved and loaded (also in
shards), what a MODEL argument may be (a directory or a hub repo id), loading errors as one
clear CLI line, and LoRA adapter checkpoints."""

import json
from pathlib import Path

import pytest
import torch

from llmkit.checkpoint import atomic_write, atomic_write_json, atomic_write_text, load_model, load_weights, save_adapter, save_model
from llmkit.config import ModelConfig
from llmkit.lora import LoRAConfig, apply_lora, lora_state_dict
from llmkit.model import Transformer
from tests.helpers import cli_error, cli_run, randomize_adapters

IDS = torch.randint(0, 320, (2, 12), generator=torch.Generator().manual_seed(0))


# --- atomic writes ------------------------------------------------------------------------------------
def test_atomic_write_replaces_the_file_or_leaves_the_old_one(tmp_path):
    p = tmp_path / "new" / "state.json"
    atomic_write_json(p, {"step": 1})  # creates the directory
    assert json.loads(p.read_text()) == {"step": 1}

    def crash_halfway(tmp):
        Path(tmp).write_text('{"step": 2, "opt')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(p, crash_halfway)
    assert json.loads(p.read_text()) == {"step": 1}  # the previous file, whole
    assert [f.name for f in p.parent.iterdir()] == ["state.json"]  # and no temp file left behind
    atomic_write_text(p, "done\n")
    assert p.read_text() == "done\n" and [f.name for f in p.parent.iterdir()] == ["state.json"]


# --- weights --------------------------------------------------------------------------------------------
def test_sharded_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny-llama"))
    save_model(tmp_path / "ck", model, max_shard_bytes=100_000)
    shards = sorted(p.name for p in (tmp_path / "ck").glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "ck" / "model.safetensors.index.json").exists()
    loaded = load_model(tmp_path / "ck").model
    x = torch.randint(0, 512, (1, 8))
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    # Sharded HF export loads in transformers.
    from transformers import AutoModelForCausalLM

    from llmkit.checkpoint import to_hf

    to_hf(str(tmp_path / "ck"), str(tmp_path / "hf"), max_shard_size_mb=0)
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, model(x))


def test_model_arg_accepts_repo_id(monkeypatch, hf_dir):
    """A hub repo id as MODEL goes through the download and then loads like a directory."""
    src, hf_model = hf_dir("llama")
    import llmkit.hub

    asked = []
    monkeypatch.setattr(llmkit.hub, "download", lambda repo_id, **kw: asked.append(repo_id) or src)
    loaded = load_model("someorg/tiny-llama")
    assert asked == ["someorg/tiny-llama"]  # downloaded once, by that name
    x = torch.randint(0, 320, (1, 5))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), hf_model(x).logits)


# --- loading errors: one clear line from the CLI ---------------------------------------------------------
def test_error_missing_dir(capsys, tmp_path):
    cli_error(capsys, ["convert", "to-hf", str(tmp_path / "nope"), str(tmp_path / "o")], "no such model directory")


def test_error_corrupt_weights(capsys, tmp_path):
    torch.manual_seed(0)
    save_model(tmp_path / "ck", Transformer(ModelConfig.from_name("tiny-llama")))
    w = tmp_path / "ck" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    cli_error(capsys, ["convert", "to-hf", str(tmp_path / "ck"), str(tmp_path / "o")], "model.safetensors", "cannot read")


def test_error_shape_mismatch(capsys, tmp_path):
    torch.manual_seed(0)
    save_model(tmp_path / "ck", Transformer(ModelConfig.from_name("tiny-llama")))
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    cfg["n_embd"] = 128
    (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
    cli_error(capsys, ["convert", "to-hf", str(tmp_path / "ck"), str(tmp_path / "o")], "shape mismatch", "embed.weight")


def test_error_bad_json_and_no_pickles(capsys, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{not json")
    cli_error(capsys, ["convert", "from-hf", str(tmp_path / "m"), str(tmp_path / "o")], "not valid JSON")
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 10,
        "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 8}))
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    cli_error(capsys, ["convert", "from-hf", str(tmp_path / "m"), str(tmp_path / "o")], "pickled weights are not loaded")


# --- LoRA adapter checkpoints -------------------------------------------------------------------------
def test_adapter_checkpoint_loads_as_a_model_and_merges_via_cli(tiny_model_dir, tmp_path, capsys):
    base = tiny_model_dir()  # the session's tiny llama (read-only)
    model = load_model(base).model
    apply_lora(model, LoRAConfig(r=4, alpha=16, targets=["q", "k", "v", "o", "lm_head"]))
    randomize_adapters(model)
    expected = model(IDS).detach()
    meta = {"base_model": str(base), "quantize": None,
            "lora": {"r": 4, "alpha": 16.0, "dropout": 0.0, "targets": ["q", "k", "v", "o", "lm_head"]}}
    ad = save_adapter(tmp_path / "adapter", lora_state_dict(model), meta)
    assert set(load_weights(ad)) == set(lora_state_dict(model))  # the adapter alone
    loaded = load_model(ad)
    assert loaded.kind == "lora"
    torch.testing.assert_close(loaded.model(IDS), expected, rtol=1e-5, atol=1e-5)
    # merge-lora, then export to HF: transformers computes the same logits.
    code, _, err = cli_run(capsys, ["merge-lora", str(ad), "--out", str(tmp_path / "merged")])
    assert code == 0, err
    code, _, err = cli_run(capsys, ["convert", "to-hf", str(tmp_path / "merged"), str(tmp_path / "hf")])
    assert code == 0, err
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    torch.testing.assert_close(hf(IDS).logits, expected, rtol=1e-4, atol=1e-4)
    cli_error(capsys, ["merge-lora", str(base), "--out", str(tmp_path / "x")], "not a LoRA checkpoint")


# --- a training run's files ---------------------------------------------------------------------------
def test_atomic_files_respect_the_umask(tmp_path):
    import os

    from llmkit.checkpoint import save_tensors

    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        save_tensors({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640  # not mkstemp's 0o600
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o640
    os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "b.json", {"p": Path("/x")})  # paths are written as strings
    finally:
        os.umask(old)
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o644
    assert json.loads((tmp_path / "b.json").read_text()) == {"p": "/x"}


def test_publish_final_swaps_directories_and_final_never_goes_missing(tmp_path, monkeypatch):
    """publish_final's promise: the path OUT/final always names a whole model directory; the
    old one is removed only once the new one is in its place (never delete, then rename)."""
    import os
    import shutil
    import threading

    import llmkit.checkpoint as ck

    ckpts = []
    for i in range(2):
        c = tmp_path / f"ckpt{i}"
        c.mkdir()
        for name in ("a.bin", "b.bin", "config.json"):
            (c / name).write_text(str(i))
        (c / "optimizer.pt").write_text("opt")
        (c / "trainer_state.json").write_text("{}")
        ckpts.append(c)
    final = tmp_path / "final"
    ck.publish_final(ckpts[0], final)
    assert sorted(p.name for p in final.iterdir()) == ["a.bin", "b.bin", "config.json"]  # no optimizer

    removed = []  # (what is deleted, what final/ holds at that moment)
    real_rmtree = shutil.rmtree

    def spy(path, *a, **k):
        if Path(path).exists() and Path(path).name != final.name + ".tmp":
            removed.append(((Path(path) / "a.bin").read_text() if (Path(path) / "a.bin").exists() else None,
                            sorted(os.listdir(final)), (final / "a.bin").read_text()))
        return real_rmtree(path, *a, **k)

    monkeypatch.setattr(ck.shutil, "rmtree", spy)
    ck.publish_final(ckpts[1], final)
    assert removed == [("0", ["a.bin", "b.bin", "config.json"], "1")]  # old deleted after new in place
    monkeypatch.setattr(ck.shutil, "rmtree", real_rmtree)

    gone, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            if not os.path.isdir(final):
                gone.append(1)

    t = threading.Thread(target=reader)
    t.start()
    for k in range(40):
        ck.publish_final(ckpts[k % 2], final)
    stop.set()
    t.join()
    assert gone == []
    assert (final / "a.bin").read_text() == "1"  # the last one published
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt0", "ckpt1", "final"]  # no temp or old dirs left


def test_training_checkpoints_rotate_and_resume_point(tmp_path):
    from llmkit.checkpoint import (
        find_latest, load_training_checkpoint, resume_point, save_training_checkpoint, step_dir,
    )
    from llmkit.errors import LLMKitError

    out = tmp_path / "run"
    assert find_latest(out) is None and resume_point(out, "auto") is None and resume_point(out, "none") is None
    for step in (1, 2, 3):
        path = save_training_checkpoint(out, step, {"w": torch.full((2,), float(step))}, None,
                                        {"state": {}, "param_groups": []}, {"cpu": torch.get_rng_state()},
                                        {"step": step, "tokens": 10 * step, "elapsed": 1.5}, keep_last=2)
        assert path == step_dir(out, step)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-00000002", "step-00000003"]
    assert (out / "checkpoints" / "latest").read_text() == "step-00000003\n"
    assert resume_point(out, "auto") == find_latest(out) == step_dir(out, 3)
    ckpt = load_training_checkpoint(step_dir(out, 3))
    assert ckpt.state == {"step": 3, "tokens": 30, "elapsed": 1.5} and torch.equal(ckpt.model["w"], torch.full((2,), 3.0))
    assert torch.equal(ckpt.rng["cpu"], torch.get_rng_state())
    # `latest` pointing at a removed directory: the newest complete one is used instead.
    (out / "checkpoints" / "latest").write_text("step-00000009\n")
    assert find_latest(out) == step_dir(out, 3)
    with pytest.raises(LLMKitError, match="not a training checkpoint"):
        resume_point(out, str(tmp_path))
    (step_dir(out, 3) / "optimizer.pt").write_bytes(b"not a torch file")
    with pytest.raises(LLMKitError, match="cannot read the optimizer state"):
        load_training_checkpoint(step_dir(out, 3))


def test_reference_logps_round_trip_and_fingerprint(tmp_path):
    from llmkit.checkpoint import REFERENCE_LOGPS, load_reference_logps, save_reference_logps

    ref = torch.randn(5, 2)
    save_reference_logps(tmp_path, ref, "abc")
    assert torch.equal(load_reference_logps(tmp_path, "abc"), ref)
    assert load_reference_logps(tmp_path, "other data") is None
    (tmp_path / REFERENCE_LOGPS).write_bytes(b"\x00" * 10)
    assert load_reference_logps(tmp_path, "abc") is None  # unreadable: recomputed, never fatal
    assert load_reference_logps(tmp_path / "nowhere", "abc") is None


def test_the_loop_syncs_with_the_device_once_per_step(monkeypatch, tmp_path):
    """'One device sync per step': with gradient accumulation, token weighting and a metric,
    the loop and the loss read values back from tensors once per optimizer step."""
    import inspect

    from llmkit.training.loop import TrainConfig, Trainer
    from llmkit.training.losses import causal_lm_loss, target_count

    calls = []
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        orig = getattr(torch.Tensor, name)

        def counted(self, *a, _orig=orig, _name=name, **k):
            caller = inspect.currentframe().f_back.f_code.co_filename
            if "llmkit" in caller and "tests" not in caller:
                calls.append((_name, caller))
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny-llama", vocab_size=64, n_layer=1))
    g = torch.Generator().manual_seed(0)

    def batches():
        while True:
            x = torch.randint(0, 64, (2, 9), generator=g)
            y = x[:, 1:].clone()
            y[0, :3] = -100  # prompt tokens: weights differ between micro-batches
            yield x[:, :-1], y

    def loss_fn(m, b):
        out = causal_lm_loss(m, b)
        return {**out, "acc": out["loss"].detach() * 0}

    cfg = TrainConfig(max_steps=3, grad_accum=3, micro_batch_size=2, eval_every=0, save_every=0, log_every=1,
                      precision="fp32", tensorboard=False, warmup_steps=1)
    trainer = Trainer(model, cfg, tmp_path / "run", batches(), loss_fn, weight_fn=target_count)
    calls.clear()
    monkeypatch.setattr(trainer, "save_checkpoint", lambda: None)  # files are not the point here
    trainer.fit()
    assert len(calls) == 3, calls  # one per step: the stats vector's tolist()
    assert {c[0] for c in calls} == {"tolist"}


# --- damaged checkpoints, stale files, folders that must not run code ----------------------------------
def _three_checkpoints(out):
    from llmkit.checkpoint import save_training_checkpoint

    for step in (1, 2, 3):
        save_training_checkpoint(out, step, {"w": torch.full((2,), float(step))}, None, {"state": {}, "param_groups": []},
                                 {"cpu": torch.get_rng_state()}, {"step": step, "tokens": step, "elapsed": 0.5},
                                 keep_last=3)


@pytest.mark.parametrize("damage", ["truncated optimizer", "garbled optimizer", "state not json",
                                    "state lacks a key", "weights missing", "weights truncated"])
def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, damage):
    from llmkit.checkpoint import load_resume_checkpoint, step_dir

    out = tmp_path / "run"
    _three_checkpoints(out)
    d = step_dir(out, 3)
    if damage == "truncated optimizer":
        data = (d / "optimizer.pt").read_bytes()
        (d / "optimizer.pt").write_bytes(data[: len(data) // 2])
    elif damage == "garbled optimizer":
        (d / "optimizer.pt").write_bytes(b"\x80\x02garbage" * 10)
    elif damage == "state not json":
        (d / "trainer_state.json").write_text("{not json")
    elif damage == "state lacks a key":
        (d / "trainer_state.json").write_text(json.dumps({"step": 3, "elapsed": 1.0}))
    elif damage == "weights missing":
        (d / "model.safetensors").unlink()
    else:
        data = (d / "model.safetensors").read_bytes()
        (d / "model.safetensors").write_bytes(data[:40])
    warnings = []
    path, ckpt = load_resume_checkpoint(out, "auto", warnings.append)
    assert path == step_dir(out, 2) and ckpt.state["step"] == 2
    assert len(warnings) == 1 and "step-00000003" in warnings[0] and "\n" not in warnings[0]
    assert ("tokens" in warnings[0]) if damage == "state lacks a key" else True
    # Every checkpoint damaged: a clear error, not a fresh start over the old run.
    for s in (1, 2):
        (step_dir(out, s) / "trainer_state.json").write_text("[]")
    from llmkit.errors import LLMKitError

    with pytest.raises(LLMKitError, match=r"no intact checkpoint .*\(3 damaged"):
        load_resume_checkpoint(out, "auto")
    assert load_resume_checkpoint(out, "none") is None
    assert load_resume_checkpoint(tmp_path / "fresh", "auto") is None


def test_stale_temporary_files_are_removed(tmp_path):
    from llmkit.checkpoint import clean_stale_files, step_dir

    out = tmp_path / "run"
    _three_checkpoints(out)
    (out / "checkpoints" / "step-00000004.tmp").mkdir()
    (out / ".final.tmp").mkdir()
    (out / ".summary.json.abc.tmp").write_text("half")
    (step_dir(out, 3) / ".optimizer.pt.x1.tmp").write_text("half")
    (out / "keep.txt").write_text("mine")
    removed = clean_stale_files(out)
    assert len(removed) == 4
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "keep.txt"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "latest", "step-00000001", "step-00000002", "step-00000003"]


def test_an_index_naming_files_outside_the_folder_is_refused(tmp_path, capsys):
    from llmkit.errors import LLMKitError

    secret = tmp_path / "secret.safetensors"
    from llmkit.checkpoint import save_tensors

    save_tensors({"x": torch.zeros(1)}, secret)
    d = tmp_path / "m"
    d.mkdir()
    for target in ("../secret.safetensors", str(secret)):
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": target}}))
        with pytest.raises(LLMKitError, match="shard names must be files of"):
            load_weights(d)


def test_hf_config_missing_a_field_is_one_line_naming_it(tmp_path, capsys):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "vocab_size": 100}))
    cli_error(capsys, ["convert", "from-hf", str(d), str(tmp_path / "o")], "config.json", "num_attention_heads")


def test_a_tokenizer_folder_never_runs_its_own_code(tmp_path, monkeypatch):
    """An `auto_map` + .py file in a SentencePiece-only folder: transformers is asked with
    trust_remote_code=False, explicitly (so it never prompts), and the file never runs."""
    import transformers

    from llmkit.errors import LLMKitError
    from llmkit.tokenizer import Tokenizer

    d = tmp_path / "tok"
    d.mkdir()
    marker = tmp_path / "ran"
    (d / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\nclass EvilTokenizer: pass\n")
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", None]}, "tokenizer_class": "LlamaTokenizer"}))
    (d / "tokenizer.model").write_bytes(b"not a real model")
    with pytest.raises(LLMKitError, match="cannot convert"):
        Tokenizer.from_dir(d)  # the real transformers: refuses the file, runs nothing
    assert not marker.exists()
    asked = []
    real = transformers.AutoTokenizer.from_pretrained

    def spy(*a, **k):
        asked.append(k)
        return real(*a, **k)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", spy)
    with pytest.raises(LLMKitError):
        Tokenizer.from_dir(d)
    assert asked and all(k.get("trust_remote_code") is False for k in asked)
    assert not marker.exists()
