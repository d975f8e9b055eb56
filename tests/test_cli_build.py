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
    # ...read from the sources: `llmkit --help` imports none of the commands (no torch).
    probe = "import sys; from llmkit.cli import main; main(['--help']); assert 'torch' not in sys.modules, 'torch'"
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.startswith("usage: llmkit"), p.stderr[-2000:]


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


def test_version(capsys):
    from llmkit import __version__
    from tests.helpers import cli_run

    code, out, err = cli_run(capsys, ["--version"])
    assert code == 0 and out == f"llmkit {__version__}\n" and err == ""


def test_unknown_option_suggests_the_closest(capsys):
    """argparse's `unrecognized arguments` plus the option meant: the command's own options,
    its `--train.*` group and the loop settings without their prefix."""
    err = cli_error(capsys, ["pretrain", "--model", "tiny-llama", "--data", "X", "--max_stpes", "5"],
                    "unrecognized arguments: --max_stpes 5")
    assert err == "error: llmkit pretrain: unrecognized arguments: --max_stpes 5 (did you mean --max_steps?)"
    cli_error(capsys, ["pretrain", "--data", "X", "--train.max-stpes", "5"], "(did you mean --train.max_steps?)")
    cli_error(capsys, ["finetune", "M", "D", "--quantise", "nf4"], "(did you mean --quantize?)")
    cli_error(capsys, ["pretrain", "--data", "X", "--lrr", "3", "--foo", "1"], "(did you mean --lr for --lrr?)")
    err = cli_error(capsys, ["pretrain", "--data", "X", "--zzzzzz", "3"], "unrecognized arguments: --zzzzzz 3")
    assert "did you mean" not in err  # nothing close: no guess


def test_unknown_command_suggests_the_closest(capsys):
    cli_error(capsys, ["pretrian"], "unknown command 'pretrian' (did you mean 'pretrain'?)", "choose from:")
    cli_error(capsys, ["data", "prepar"], "(did you mean 'prepare'?)")
    assert "did you mean" not in cli_error(capsys, ["frobnicate"], "unknown command")


def test_output_into_a_closed_pipe_is_quiet():
    """`llmkit models | head -1`: no BrokenPipeError traceback when the reader stops early
    (`true` reads nothing and exits at once, so the writes always meet a closed pipe)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for reader in ("head -1", "true"):
        for command in ("models", "--help"):
            p = subprocess.run(["bash", "-c", f'"{sys.executable}" -m llmkit {command} | {reader}'],
                               capture_output=True, text=True, timeout=300, env=env)
            assert p.stderr == "", (command, reader, p.stderr[-2000:])
            assert p.returncode == 0
            if reader == "head -1":
                assert len(p.stdout.splitlines()) == 1
