"""`llmkit run CYCLE.yaml` (src/llmkit/cycle/): a tiny real cycle (tokenizer -> prepare ->
pretrain 4 steps -> evaluate perplexity) run end to end, rerun (every stage skipped, no file
touched), changed (that stage and the ones after it rerun), SIGKILLed inside pretraining and
resumed (the same losses and weights as the uninterrupted run); bad cycle files fail in one
line naming the stage before anything runs; every configs/cycle/*.yaml validates."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmkit.cycle import load_cycle, run_cycle
from llmkit.cycle.state import STATE
from llmkit.errors import LLMKitError
from tests.helpers import cli_error, cli_run

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "configs" / "cycle").glob("*.yaml"))
WORDS = "the model reads text and learns which word comes next in a sentence of many words".split()

CYCLE = """out: OUT
stages:
  tokenizer: {files: ["DOCS"], vocab_size: 300}
  prepare: {sources: ["DOCS"], tokenizer: "${tokenizer}", seq_len: 32, val_fraction: 0.1}
  pretrain:
    model: tiny-llama
    data: "${prepare}"
    train: {max_steps: 4, micro_batch_size: 4, lr: 3.0e-3, log_every: 1, save_every: 2, eval_every: 0,
            tensorboard: false}
  evaluate: {model: "${pretrain.model}", perplexity: ["HELD"], batch_size: 4}
"""
STAGES = ["tokenizer", "prepare", "pretrain", "evaluate"]


def _workspace(root: Path) -> Path:
    """Text files, a held-out text and the cycle file (absolute paths) in `root`; returns the file."""
    rng = random.Random(0)
    docs = root / "docs"
    docs.mkdir(parents=True)
    for i in range(30):
        (docs / f"doc{i}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(rng.randint(60, 120))) + ".\n")
    (root / "held.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(300)) + ".\n")
    path = root / "cycle.yaml"
    path.write_text(CYCLE.replace("OUT", str(root / "out")).replace("DOCS", str(docs))
                    .replace("HELD", str(root / "held.txt")))
    return path


def _run(path, **options) -> str:
    """`run_cycle(path, **options)` in this process; what it printed (module fixtures have no capsys)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        run_cycle(str(path), **options)
    return buf.getvalue()


ACTIONS = ("run", "resume", "skip", "always", "not selected", "not reached")


def _plan(printed: str) -> dict[str, tuple[str, str]]:
    """{stage: (action, why)} from the plan table the command prints first:
    `  3 pretrain   pretrain   run   changed: train.max_steps 4 -> 8`."""
    rows = {}
    for line in printed.splitlines():
        parts = line.split()
        if len(parts) < 4 or not parts[0].isdigit() or parts[1] not in STAGES:
            continue
        text = " ".join(parts[2:])
        for action in ACTIONS:
            head, sep, why = text.partition(f" {action} ")
            if sep and head in ("tokenizer train", "data prepare", "pretrain", "evaluate"):
                rows[parts[1]] = (action, why)
                break
    return rows


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def _losses(run: Path) -> dict[int, float]:
    with open(run / "metrics.csv") as f:
        return {int(r["step"]): float(r["value"]) for r in csv.DictReader(f) if r["metric"] == "loss"}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The tiny cycle, run once (report card included), shared read-only."""
    root = tmp_path_factory.mktemp("cycle")
    path = _workspace(root)
    printed = _run(path)
    return path, root / "out", printed


@pytest.fixture(scope="module")
def eight(base, tmp_path_factory):
    """The finished tiny cycle copied to another folder and rerun with pretrain's max_steps 8."""
    path, out, _ = base
    copy = tmp_path_factory.mktemp("eight") / "out"
    shutil.copytree(out, copy)
    before = _mtimes(copy)
    printed = _run(path, out=str(copy), override=["pretrain.train.max_steps=8"], report=False)
    return copy, before, printed


def test_tiny_cycle_runs_end_to_end(base):
    path, out, printed = base
    plan = _plan(printed)
    assert plan == {s: ("run", "not run yet") for s in STAGES}, printed
    for i, (stage, command) in enumerate(zip(STAGES, ["tokenizer train", "data prepare", "pretrain", "evaluate"]), 1):
        assert f"[{i}/4] {stage} ({command}): start (not run yet)" in printed
        assert f"[{i}/4] {stage}: finished in " in printed
        state = json.loads((out / stage / STATE).read_text())
        assert state["status"] == "done" and state["seconds"] > 0 and len(state["key"]) == 20
    assert "cycle done in" in printed and "4 ran, 0 skipped" in printed
    for f in ("tokenizer/tokenizer.json", "prepare/manifest.json", "pretrain/final/model.safetensors", "cycle.json"):
        assert (out / f).is_file(), f
    assert sorted(_losses(out / "pretrain")) == [1, 2, 3, 4]
    # The references were followed: prepare read the tokenizer stage's folder, evaluate the model.
    assert (out / "prepare" / "tokenizer" / "tokenizer.json").read_text() == (out / "tokenizer" / "tokenizer.json").read_text()
    results = json.loads((out / "evaluate" / "results.json").read_text())
    assert results["model"] == str(out / "pretrain" / "final")
    assert 1 < results["perplexity"]["overall"]["perplexity"] < 400  # vocabulary 300: trained, a little
    pretrain_state = json.loads((out / "pretrain" / STATE).read_text())
    assert pretrain_state["settings"]["data"] == "${prepare}" and pretrain_state["settings"]["train"]["max_steps"] == 4
    # The report card of the training and evaluation stages, written at the end.
    import llmkit.report

    if hasattr(llmkit.report, "report"):
        assert (out / "report" / "report.md").is_file()
        card = (out / "report" / "report.md").read_text()
        assert "- pretrain:" in card and "- evaluate:" in card and "- tokenizer:" not in card


def test_rerun_skips_every_stage_and_touches_nothing(base, capsys):
    path, out, _ = base
    before = _mtimes(out)
    code, printed, err = cli_run(capsys, ["run", path])
    assert code == 0, err
    plan = _plan(printed)
    assert {s: a for s, (a, _) in plan.items()} == {s: "skip" for s in STAGES}, printed
    assert all(why.startswith("done, unchanged; took ") for _, why in plan.values())
    assert "0 ran, 4 skipped" in printed and "start" not in printed
    assert _mtimes(out) == before


def test_a_changed_setting_reruns_that_stage_and_the_ones_after(eight):
    copy, before, printed = eight
    plan = _plan(printed)
    assert plan["tokenizer"][0] == plan["prepare"][0] == "skip", printed  # a copied folder keeps its cache
    assert plan["pretrain"] == ("run", "changed: train.max_steps 4 -> 8")
    assert plan["evaluate"] == ("run", "changed upstream: pretrain")
    after = _mtimes(copy)
    for f, t in before.items():
        if f.startswith(("tokenizer/", "prepare/")):
            assert after[f] == t, f
    assert sorted(_losses(copy / "pretrain")) == list(range(1, 9))
    assert json.loads((copy / "evaluate" / "results.json").read_text())["model"] == str(copy / "pretrain" / "final")


def test_a_killed_run_resumes_inside_the_stage_to_the_uninterrupted_result(base, eight, tmp_path, capsys):
    """SIGKILL (no handler runs) during pretraining step 7, after the step-6 checkpoint: the
    rerun skips what is done, resumes pretraining from step 6 and ends where the uninterrupted
    run ended, loss for loss and weight for weight."""
    from llmkit.checkpoint import load_weights

    path, out, _ = base
    ref = eight[0]
    killed = tmp_path / "out"
    shutil.copytree(out, killed)
    argv = ["run", str(path), "--out", str(killed), "--override", "pretrain.train.max_steps=8", "--report", "false"]
    script = f"""
import os, signal
import llmkit.recipes.pretrain as p
orig, calls = p.causal_lm_loss, [0]
def loss(m, b):
    calls[0] += 1
    if calls[0] == 7:
        os.kill(os.getpid(), signal.SIGKILL)
    return orig(m, b)
p.causal_lm_loss = loss
from llmkit.cli import main
main({argv!r})
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert json.loads((killed / "pretrain" / STATE).read_text())["status"] == "running"
    assert not (killed / "pretrain" / "final").exists()

    code, printed, err = cli_run(capsys, argv + ["--dry-run"])
    assert code == 0, err
    assert _plan(printed)["pretrain"] == ("resume", "interrupted: resumes from its last checkpoint")
    code, printed, err = cli_run(capsys, argv)
    assert code == 0, err
    plan = _plan(printed)
    assert plan["tokenizer"][0] == plan["prepare"][0] == "skip"
    assert "[3/4] pretrain (pretrain): resume" in printed and "at step 6" in printed
    assert _losses(killed / "pretrain") == _losses(ref / "pretrain")
    a, b = load_weights(ref / "pretrain" / "final"), load_weights(killed / "pretrain" / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ppl = [json.loads((d / "evaluate" / "results.json").read_text())["perplexity"]["overall"]["perplexity"]
           for d in (ref, killed)]
    assert ppl[0] == ppl[1]


def test_force_only_until_and_dry_run(base, tmp_path, capsys):
    path, out, _ = base
    before = _mtimes(out)
    code, printed, err = cli_run(capsys, ["run", path, "--force", "prepare", "--dry-run"])
    assert code == 0, err
    plan = _plan(printed)
    assert plan["tokenizer"][0] == "skip" and plan["prepare"] == ("run", "forced (--force)")
    assert plan["pretrain"] == ("run", "uses prepare, which runs now")
    assert plan["evaluate"] == ("run", "uses pretrain, which runs now")
    code, printed, err = cli_run(capsys, ["run", path, "--until", "prepare", "--override",
                                          "pretrain.train.max_steps=5", "--dry-run"])
    assert code == 0, err
    assert _plan(printed)["pretrain"] == ("not reached", "changed: train.max_steps 4 -> 5")
    assert _plan(printed)["evaluate"][0] == "not reached"
    code, printed, err = cli_run(capsys, ["run", path, "--only", "evaluate", "--force", "evaluate", "--dry-run"])
    assert code == 0, err
    assert [a for a, _ in _plan(printed).values()] == ["skip", "skip", "skip", "run"]
    cli_error(capsys, ["run", path, "--only", "evaluate", "--override", "pretrain.train.max_steps=5"],
              "--only evaluate", "stage 'pretrain'", "max_steps 4 -> 5")
    assert _mtimes(out) == before  # a dry run writes nothing

    # A forced stage really reruns, and so does what uses it (its outputs are new), once.
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    code, printed, err = cli_run(capsys, ["run", path, "--out", copy, "--force", "pretrain", "--report", "false"])
    assert code == 0, err
    assert [a for a, _ in _plan(printed).values()] == ["skip", "skip", "run", "run"]
    code, printed, err = cli_run(capsys, ["run", path, "--out", copy, "--report", "false"])
    assert code == 0 and "0 ran, 4 skipped" in printed, printed


BAD = {
    "unknown option": ("  pretrain: {model: tiny-llama, data: x, max_stpes: 4}\n",
                       ["stage 'pretrain' (pretrain)", "max_stpes", "did you mean --max_steps"]),
    "wrong type": ("  prepare: {sources: [a], tokenizer: t, seq_len: [1, 2]}\n", ["stage 'prepare' (data prepare)", "seq_len"]),
    "bad training setting": ("  pretrain: {data: x, max_steps: -5}\n", ["stage 'pretrain'", "max_steps must be > 0"]),
    "bad preset field": ("  pretrain: {data: x, model.n_head: 7}\n", ["stage 'pretrain'", "n_head"]),
    "unknown reference": ("  evaluate: {model: '${pretrian.model}', perplexity: [a]}\n",
                          ["stage 'evaluate'", "${pretrian.model}", "no stage 'pretrian'"]),
    "forward reference": ("  prepare: {sources: [a], tokenizer: '${tokenizer}'}\n  tokenizer: {files: [a]}\n",
                          ["stage 'prepare'", "comes after it"]),
    "self reference": ("  tokenizer: {files: ['${tokenizer}']}\n", ["stage 'tokenizer'", "itself"]),
    "no model to refer to": ("  tokenizer: {files: [a]}\n  prepare: {sources: [a], tokenizer: '${tokenizer.model}'}\n",
                             ["stage 'prepare'", "writes no model", "${tokenizer} is its folder"]),
    "bad attribute": ("  tokenizer: {files: [a]}\n  prepare: {sources: [a], tokenizer: '${tokenizer.final}'}\n",
                      ["stage 'prepare'", "${tokenizer.model}"]),
    "unknown stage name": ("  warmup: {max_steps: 3}\n", ["stage 'warmup'", "command: pretrain"]),
    "unknown command": ("  x: {command: pretrian}\n", ["stage 'x'", "unknown command 'pretrian'", "did you mean 'pretrain'"]),
    "group command": ("  x: {command: data}\n", ["stage 'x'", "data prepare, data curate"]),
    "interactive command": ("  x: {command: chat}\n", ["stage 'x'", "cannot be a stage"]),
    "serve not last": ("  serve: {model: m}\n  tokenizer: {files: [a]}\n", ["stage 'serve'", "last stage"]),
    "options not a mapping": ("  pretrain: [1, 2]\n", ["stage 'pretrain'", "mapping"]),
    "shared folder": ("  tokenizer: {files: [a]}\n  tokenizer-2: {command: tokenizer train, files: [a], out: OUT/tokenizer/x}\n",
                      ["stage 'tokenizer-2'", "overlaps stage 'tokenizer'"]),
    "out for serve": ("  serve: {model: m, out: x}\n", ["stage 'serve'", "takes no out"]),
    "reserved name": ("  report: {command: report, runs: [a]}\n", ["stage name 'report'", "report card"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_cycle_fails_in_one_line_naming_the_stage(case, tmp_path, capsys):
    stages, needles = BAD[case]
    out = tmp_path / "out"
    path = tmp_path / "bad.yaml"
    path.write_text(f"out: {out}\nstages:\n" + stages.replace("OUT", str(out)))
    cli_error(capsys, ["run", path], str(path), *needles)
    assert not out.exists()  # nothing ran


def test_bad_files_and_options_fail_in_one_line(base, tmp_path, capsys):
    path, out, _ = base
    bad = tmp_path / "bad.yaml"
    cli_error(capsys, ["run", tmp_path / "missing.yaml"], "missing.yaml", "no such file")
    bad.write_text("out: x\nstages: {a: [\n")
    cli_error(capsys, ["run", bad], "not valid YAML")
    bad.write_text("out: x\nstage: {}\n")
    cli_error(capsys, ["run", bad], "unknown key 'stage'", "did you mean 'stages'")
    bad.write_text("out: x\nstages: [tokenizer]\n")
    cli_error(capsys, ["run", bad], "`stages:` must be a mapping")
    cli_error(capsys, ["run", path, "--force", "pretrian"], "--force pretrian", "did you mean 'pretrain'")
    cli_error(capsys, ["run", path, "--override", "pretrain.max_steps"], "STAGE.KEY=VALUE")
    cli_error(capsys, ["run", path, "--override", "pretrian.max_steps=3"], "no stage 'pretrian'")
    # A literal path into a stage's folder hides the order from the cycle.
    text = path.read_text().replace('"${tokenizer}"', f'"{out / "tokenizer"}"')
    bad.write_text(text)
    cli_error(capsys, ["run", bad, "--dry-run"], "stage 'prepare'", "inside stage 'tokenizer''s folder",
              "${tokenizer}")
    # A folder that llmkit run did not write is not replaced.
    foreign = tmp_path / "foreign"
    (foreign / "tokenizer").mkdir(parents=True)
    (foreign / "tokenizer" / "mine.txt").write_text("keep me")
    cli_error(capsys, ["run", path, "--out", foreign], "stage 'tokenizer'", "did not write")
    assert (foreign / "tokenizer" / "mine.txt").read_text() == "keep me"
    # One run at a time per cycle folder.
    from llmkit.cycle.state import Lock

    with Lock(out):
        cli_error(capsys, ["run", path], "another `llmkit run` is running this cycle")
    # A stage that fails while running says which one, and what a rerun does.
    failing = tmp_path / "fail.yaml"
    failing.write_text(f"out: {tmp_path / 'f'}\nstages:\n  tokenizer: {{files: ['{tmp_path / 'nothing'}']}}\n")
    cli_error(capsys, ["run", failing], "stage 'tokenizer' (tokenizer train) failed after", "runs it again")
    assert json.loads((tmp_path / "f" / "tokenizer" / STATE).read_text())["status"] == "running"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_cycles_validate(path, tmp_path, monkeypatch, capsys):
    """Every stage of every example cycle passes its command's parser (as `llmkit run --dry-run`
    checks it), from the repository root as the README runs them, and nothing is written."""
    import yaml

    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    code, printed, err = cli_run(capsys, ["run", path.relative_to(ROOT), "--out", out, "--dry-run"])
    assert code == 0, err
    stages = list(yaml.safe_load(path.read_text())["stages"])
    assert f"{len(stages)} stages in {out}" in printed
    cycle = load_cycle(path.relative_to(ROOT), out=str(out))
    assert [s.name for s in cycle.stages] == stages
    assert not out.exists()


def test_the_default_cycle_is_the_whole_built_in_cycle(monkeypatch):
    monkeypatch.chdir(ROOT)
    cycle = load_cycle("configs/cycle/default.yaml")
    assert [s.command for s in cycle.stages] == ["corpus", "tokenizer train", "data prepare", "pretrain", "evaluate",
                                                 "finetune", "evaluate", "dpo", "evaluate"]
    by = {s.name: s for s in cycle.stages}
    assert by["pretrain"].kwargs["model"] == "micro-llama"  # quickstart's model
    assert by["finetune"].kwargs["model"] == str(by["pretrain"].model)
    assert by["dpo"].kwargs["model"] == str(by["finetune"].model)
    assert by["evaluate"].kwargs["model"] == [str(by["dpo"].model)]  # evaluate takes a list of models
    assert sorted(by["dpo"].deps) == ["corpus", "finetune"] and not any(s.inputs for s in cycle.stages)  # offline
    assert all(s.out == Path("out/cycle") / s.name for s in cycle.stages)


def test_serve_is_the_uncached_last_stage(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(ROOT)
    code, printed, err = cli_run(capsys, ["run", "configs/cycle/smollm2-135m-sft-dpo.yaml", "--out", tmp_path / "o",
                                          "--dry-run"])
    assert code == 0, err
    last = printed.strip().splitlines()[-1].split()
    assert last[:4] == ["5", "serve", "serve", "always"] and "not cached" in printed
    cycle = load_cycle("configs/cycle/smollm2-135m-sft-dpo.yaml", out=str(tmp_path / "o"))
    serve = cycle.stages[-1]
    assert serve.out is None and serve.kwargs["model"] == str(cycle.stage("dpo").model)
    # The stage's model wins over its config file's (on the command line the config's would).
    assert cycle.stage("dpo").kwargs["model"] == str(tmp_path / "o" / "merge")
    assert cycle.stage("finetune").kwargs["train"].max_steps == 300  # the config says 600


def test_builtin_corpus_is_quickstarts_corpus_with_held_out_modules(tmp_path):
    from llmkit.cycle.builtin import builtin_corpus
    from llmkit.recipes.quickstart import stdlib_docstrings

    summary = builtin_corpus(str(tmp_path / "b"), max_examples=500, max_pairs=100, max_heldout=50)
    b = tmp_path / "b"
    train = [json.loads(x)["text"] for x in (b / "corpus.jsonl").read_text().splitlines()]
    held = [json.loads(x)["text"] for x in (b / "heldout.jsonl").read_text().splitlines()]
    assert len(train) == summary["documents"] and len(held) == summary["heldout_documents"] >= 10
    # Interleaved back (every 20th document held out), the documents are quickstart's corpus.
    merged, t, h = [], iter(train), iter(held)
    for i in range(len(train) + len(held)):
        merged.append(next(h) if i % 20 == 19 else next(t))
    stdlib_docstrings(tmp_path / "q.jsonl", max_bytes=200_000)
    quick = [json.loads(x)["text"] for x in (tmp_path / "q.jsonl").read_text().splitlines()]
    assert merged[:len(quick)] == quick
    instruct = json.loads((b / "instruct.json").read_text())
    heldout = json.loads((b / "heldout-instruct.json").read_text())
    pairs = json.loads((b / "preference.json").read_text())
    assert len(instruct) == 500 and len(pairs) == 100 and len(heldout) == 50
    assert all(set(r) == {"instruction", "input", "output"} and r["output"] for r in instruct + heldout)
    # No object is asked about in training and in evaluation: held-out modules are held out.
    name = lambda r: r["instruction"].split("`")[1]  # noqa: E731
    assert not {name(r) for r in instruct} & {name(r) for r in heldout}
    assert {r["instruction"].split("`")[0] for r in instruct} == {"What does ", "Summarize this documentation of "}
    for r in instruct:
        if r["input"]:  # summarize: the answer is the given text's first paragraph
            assert r["input"].startswith(r["output"][:-1])
    # Pairs from the summarize task: the given text's first sentence against another object's.
    assert all({"instruction", "input", "chosen", "rejected"} == set(p) for p in pairs)
    assert all(p["input"].startswith(p["chosen"]) and not p["input"].startswith(p["rejected"]) for p in pairs)
    with pytest.raises(LLMKitError, match="heldout_every"):
        builtin_corpus(str(tmp_path / "c"), heldout_every=1)
