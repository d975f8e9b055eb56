"""CLI: `models`, `convert`, `download` and their error paths, as a user runs them."""

import json
import os
import subprocess
import sys

import pytest
import torch

from llmkit.checkpoint import load_model, save_model
from llmkit.cli import main
from llmkit.config import ModelConfig
from llmkit.model import Transformer


def run_cli(*args, env=None):
    """Run the real console entry point in a subprocess: exit code, stdout, stderr."""
    e = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    p = subprocess.run([sys.executable, "-m", "llmkit", *args], capture_output=True, text=True, env=e, timeout=300)
    return p.returncode, p.stdout, p.stderr


def test_models_lists_presets_with_counts():
    code, out, _ = run_cli("models")
    assert code == 0
    assert "124,439,808" in out and "1,235,814,400" in out and "494,032,768" in out and "134,515,008" in out
    code, out, _ = run_cli("models", "--family", "qwen")
    assert code == 0 and "qwen3-0.6b" in out and "gpt2" not in out


def test_help_lists_commands():
    code, out, _ = run_cli("--help")
    assert code == 0 and "convert" in out and "from-hf" in out and "models" in out


def test_convert_round_trip_cli(hf_dir, tmp_path):
    src, hf_model = hf_dir("qwen2")
    native, back = tmp_path / "native", tmp_path / "back"
    code, out, err = run_cli("convert", "from-hf", str(src), str(native))
    assert code == 0, err
    assert json.loads((native / "config.json").read_text())["format"] == "llmkit"
    code, out, err = run_cli("convert", "to-hf", str(native), str(back), "--dtype", "bfloat16")
    assert code == 0, err
    from transformers import AutoModelForCausalLM

    theirs = AutoModelForCausalLM.from_pretrained(back)
    assert next(theirs.parameters()).dtype == torch.bfloat16


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

    from llmkit.convert.hf import to_hf

    to_hf(str(tmp_path / "ck"), str(tmp_path / "hf"), max_shard_size_mb=0)
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, model(x))


def _expect_error(capsys, args, *needles):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


def test_error_missing_dir(capsys, tmp_path):
    _expect_error(capsys, ["convert", "to-hf", str(tmp_path / "nope"), str(tmp_path / "o")], "no such model directory")


def test_error_corrupt_weights(capsys, tmp_path):
    torch.manual_seed(0)
    save_model(tmp_path / "ck", Transformer(ModelConfig.from_name("tiny-llama")))
    w = tmp_path / "ck" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    _expect_error(capsys, ["convert", "to-hf", str(tmp_path / "ck"), str(tmp_path / "o")], "model.safetensors", "cannot read")


def test_error_unsupported_architecture(capsys, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 10}))
    _expect_error(capsys, ["convert", "from-hf", str(tmp_path / "m"), str(tmp_path / "o")], "config.json", "bert")


def test_error_shape_mismatch(capsys, tmp_path):
    torch.manual_seed(0)
    save_model(tmp_path / "ck", Transformer(ModelConfig.from_name("tiny-llama")))
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    cfg["n_embd"] = 128
    (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
    _expect_error(capsys, ["convert", "to-hf", str(tmp_path / "ck"), str(tmp_path / "o")], "shape mismatch", "embed.weight")


def test_error_bad_json_and_no_pickles(capsys, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{not json")
    _expect_error(capsys, ["convert", "from-hf", str(tmp_path / "m"), str(tmp_path / "o")], "not valid JSON")
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 10,
        "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 8}))
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    _expect_error(capsys, ["convert", "from-hf", str(tmp_path / "m"), str(tmp_path / "o")], "pickled weights are not loaded")


def test_error_unknown_command(capsys):
    _expect_error(capsys, ["frobnicate"], "unknown command")


def test_download_offline_is_one_clear_line(tmp_path):
    code, out, err = run_cli("download", "HuggingFaceTB/SmolLM2-135M", "--out", str(tmp_path / "d"),
                             env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert code == 1
    assert err.strip().startswith("error: cannot download HuggingFaceTB/SmolLM2-135M") and len(err.strip().splitlines()) == 1


def test_download_uses_hub_with_allow_patterns(monkeypatch, tmp_path):
    """The download path asks the hub for config, safetensors and tokenizer files only."""
    import huggingface_hub

    calls = {}

    def fake_snapshot(repo_id, **kw):
        calls.update(kw, repo_id=repo_id)
        d = tmp_path / "snap"
        d.mkdir(exist_ok=True)
        (d / "config.json").write_text("{}")
        return str(d)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    from llmkit.hub import download

    p = download("org/model", token="tok")
    assert p == tmp_path / "snap" and calls["token"] == "tok"
    assert "*.safetensors" in calls["allow_patterns"] and not any("bin" in a for a in calls["allow_patterns"])


def test_model_arg_accepts_repo_id(monkeypatch, hf_dir):
    """A hub repo id as MODEL goes through the download and then loads like a directory."""
    src, hf_model = hf_dir("llama")
    import llmkit.hub

    monkeypatch.setattr(llmkit.hub, "download", lambda repo_id, **kw: src)
    loaded = load_model("someorg/tiny-llama")
    x = torch.randint(0, 320, (1, 5))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), hf_model(x).logits)


def test_argument_shortcuts_reach_the_functions_as_typed():
    """What users type: several words for a list (also inside an option group), trailing texts
    for a first optional list, and loop settings without their `train.` prefix."""
    import json

    from llmkit.cli import _lists, _model_overrides, _normalize, _train_shortcuts
    from llmkit.recipes.classify import classify_predict
    from llmkit.recipes.dpo import dpo

    def rewrite(fn, argv):
        return _lists(fn, _train_shortcuts(fn, _model_overrides(fn, _normalize(argv))))

    out = rewrite(dpo, ["m", "--data", "d.json", "--lora.targets", "q", "v", "--resume", "auto", "--max-steps", "5"])
    assert out[:2] == ["m", "d.json"]
    opts = dict(zip(out[2::2], out[3::2]))
    assert json.loads(opts["--lora.targets"]) == ["q", "v"]
    assert opts["--train.resume"] == "auto" and opts["--train.max_steps"] == "5"
    out = rewrite(classify_predict, ["clf", "first text", "second text", "--batch-size", "4"])
    assert out[0] == "clf" and json.loads(out[out.index("--texts") + 1]) == ["first text", "second text"]
