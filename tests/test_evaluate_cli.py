"""`llmkit evaluate` end to end: results files, --compare, the example task config, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from llmkit.cli import main  # noqa: E402
from llmkit.errors import LLMKitError  # noqa: E402
from llmkit.evaluate import evaluate  # noqa: E402
from test_evaluate_helpers import CORPUS, make_model_dir, write_mc_task  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-cli")
    tasks = write_mc_task(root)
    text = root / "text.txt"
    text.write_text(" ".join(CORPUS))
    return {"root": root, "tasks": tasks, "text": text,
            "m1": make_model_dir(root, "llama", bos=True, seed=0),
            "m2": make_model_dir(root, "llama", bos=True, seed=1)}


def run_cli(args, capsys):
    """(exit code, stdout, stderr) of `llmkit ARGS`."""
    code = 0
    try:
        main(args)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_tasks_and_perplexity_to_results_files_then_compare(setup, tmp_path, capsys):
    outs = []
    for name in ("m1", "m2"):
        out = tmp_path / name
        code, stdout, _ = run_cli(["evaluate", str(setup[name]), "--tasks", "tiny_mc", "--include-path",
                                   str(setup["tasks"]), "--num-fewshot", "1", "--perplexity", str(setup["text"]),
                                   "--stride", "48", "--batch-size", "3", "--out", str(out)], capsys)
        assert code == 0
        result = json.loads((out / "results.json").read_text())
        assert result["format"] == "llmkit-eval" and result["model_name"] == setup[name].name
        assert set(result["tasks"]["tiny_mc"]) >= {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}
        assert 0 <= result["tasks"]["tiny_mc"]["acc"] <= 1
        assert result["harness"]["n-shot"] == {"tiny_mc": 1}
        ppl = result["perplexity"]["overall"]
        assert ppl["tokens"] > 128 and ppl["perplexity"] > 1 and result["perplexity"]["stride"] == 48
        md = (out / "results.md").read_text()
        assert "| tiny_mc" in md and "| ppl:text.txt" in md and "perplexity" in md
        assert "| tiny_mc" in stdout  # the table is printed too
        outs.append(out)
    code, stdout, _ = run_cli(["evaluate", "--compare", str(outs[0]), str(outs[1] / "results.json")], capsys)
    assert code == 0
    header = stdout.splitlines()[0]
    assert setup["m1"].name in header and setup["m2"].name in header
    acc_row = next(line for line in stdout.splitlines() if line.startswith("| tiny_mc") and "| acc " in line)
    assert acc_row.count("|") == 5  # task, metric, two runs


def test_example_task_config_runs(setup, tmp_path, monkeypatch):
    """configs/eval/cloze_mini.yaml (data path relative to the repository root) works as documented."""
    import datasets

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    result = evaluate(str(setup["m1"]), tasks=["cloze_mini"], include_path=["configs/eval"], num_fewshot=2, limit=8)
    assert result["harness"]["n-samples"]["cloze_mini"]["effective"] == 8
    assert 0 <= result["tasks"]["cloze_mini"]["acc_norm"] <= 1


@pytest.mark.parametrize("case,message", [
    ("unknown_task", "unknown task no_such_task"),
    ("missing_data", "task data not found"),
    ("short_context", "does not fit the model's context of 40 tokens"),
    ("nothing", "nothing to evaluate"),
    ("no_model", "MODEL is required"),
    ("bad_compare", "no such results file"),
    ("missing_ppl_file", "nope.txt"),
])
def test_bad_input_is_one_clear_line(case, message, setup, tmp_path, capsys):
    m, tasks = str(setup["m1"]), str(setup["tasks"])
    if case == "unknown_task":
        args = ["evaluate", m, "--tasks", "no_such_task", "--include-path", tasks]
    elif case == "missing_data":
        bad = write_mc_task(tmp_path, name="lost_data", data_file=tmp_path / "missing.jsonl")
        args = ["evaluate", m, "--tasks", "lost_data", "--include-path", str(bad)]
    elif case == "short_context":  # a model with a 40-token context: 3-shot prompts do not fit
        short = tmp_path / "short"
        shutil.copytree(setup["m1"], short)
        cfg = json.loads((short / "config.json").read_text())
        cfg["max_position_embeddings"] = 40
        (short / "config.json").write_text(json.dumps(cfg))
        args = ["evaluate", str(short), "--tasks", "tiny_mc", "--include-path", tasks, "--num-fewshot", "3"]
    elif case == "nothing":
        args = ["evaluate", m]
    elif case == "no_model":
        args = ["evaluate", "--tasks", "tiny_mc"]
    elif case == "bad_compare":
        args = ["evaluate", "--compare", str(tmp_path / "nowhere")]
    else:
        args = ["evaluate", m, "--perplexity", str(tmp_path / "nope.txt")]
    code, _, err = run_cli(args, capsys)
    assert code == 1
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], err
    # The same error reaches Python callers as LLMKitError.
    if case == "nothing":
        with pytest.raises(LLMKitError, match=message):
            evaluate(m)


def test_several_models_in_one_call(setup, tmp_path, capsys):
    code, stdout, _ = run_cli(["evaluate", str(setup["m1"]), str(setup["m2"]), "--perplexity", str(setup["text"]),
                               "--out", str(tmp_path)], capsys)
    assert code == 0
    for name in ("m1", "m2"):
        assert json.loads((tmp_path / setup[name].name / "results.json").read_text())["perplexity"]["overall"]["tokens"]
    table = stdout[stdout.rindex("| task"):]
    assert setup["m1"].name in table.splitlines()[0] and setup["m2"].name in table.splitlines()[0]
