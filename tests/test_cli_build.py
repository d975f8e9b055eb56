"""CLI: the entry points, `download` and the command-line rewriting, as a user runs them.
(`models`: test_presets.py; `convert`: test_convert.py; loading errors: test_checkpoint.py.)"""

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import cli_error, run_cli


def test_help_lists_commands():
    """The installed `llmkit` console script ([project.scripts]) where there is one, else
    `python -m llmkit` (which the download test below runs either way)."""
    script = Path(sys.executable).parent / "llmkit"
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "llmkit"]
    p = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    code, out = p.returncode, p.stdout
    assert code == 0 and "convert" in out and "from-hf" in out and "models" in out
    # Every command of the table is listed, with its one-line summary.
    from llmkit.cli import COMMANDS, _summary

    for name, target in COMMANDS.items():
        assert f"  {name} " in out, name
        for sub, t in (target.items() if isinstance(target, dict) else [(name, target)]):
            assert f" {sub} " in out and _summary(t) in out, (name, sub)


def test_error_unknown_command(capsys):
    cli_error(capsys, ["frobnicate"], "unknown command")


def test_download_offline_is_one_clear_line(tmp_path):
    # A real `python -m llmkit` process: huggingface_hub reads HF_HUB_OFFLINE when imported.
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
