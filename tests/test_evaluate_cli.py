"""`llmkit evaluate` end to end: results files, --compare, the example task config, bad input."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from llmkit.errors import LLMKitError  # noqa: E402
from llmkit.evaluate import evaluate  # noqa: E402
from test_evaluate_helpers import CORPUS, make_model_dir, write_mc_task  # noqa: E402
from tests.helpers import cli_error, cli_run  # noqa: E402

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


def test_tasks_and_perplexity_to_results_files_then_compare(setup, tmp_path, capsys):
    from llmkit.tokenizer import Tokenizer

    outs = []
    text = setup["text"].read_text()
    for name in ("m1", "m2"):
        out = tmp_path / name
        code, stdout, _ = cli_run(capsys, ["evaluate", str(setup[name]), "--tasks", "tiny_mc", "--include-path",
                                           str(setup["tasks"]), "--num-fewshot", "1", "--perplexity", str(setup["text"]),
                                           "--stride", "48", "--batch-size", "3", "--out", str(out)])
        assert code == 0
        result = json.loads((out / "results.json").read_text())
        assert result["format"] == "llmkit-eval" and result["model_name"] == setup[name].name
        assert set(result["tasks"]["tiny_mc"]) >= {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}
        assert 0 <= result["tasks"]["tiny_mc"]["acc"] <= 1
        for metric in ("acc", "acc_norm"):  # a share of the task's 7 questions
            assert result["tasks"]["tiny_mc"][metric] * 7 == pytest.approx(round(result["tasks"]["tiny_mc"][metric] * 7))
        assert result["harness"]["n-shot"] == {"tiny_mc": 1}
        ppl = result["perplexity"]["overall"]
        assert ppl["tokens"] > 128 and ppl["perplexity"] > 1 and result["perplexity"]["stride"] == 48
        # Every token after the first is scored once; perplexity and bits per byte follow from the NLL.
        assert ppl["tokens"] == len(Tokenizer.from_dir(setup[name]).encode(text)) - 1
        assert ppl["bytes"] == len(text.encode("utf-8"))
        assert ppl["perplexity"] == pytest.approx(math.exp(ppl["nll"] / ppl["tokens"]))
        assert ppl["bits_per_byte"] == pytest.approx(ppl["nll"] / math.log(2) / ppl["bytes"])
        md = (out / "results.md").read_text()
        assert "| tiny_mc" in md and "| ppl:text.txt" in md and "perplexity" in md
        assert "| tiny_mc" in stdout  # the table is printed too
        outs.append(out)
    code, stdout, _ = cli_run(capsys, ["evaluate", "--compare", str(outs[0]), str(outs[1] / "results.json")])
    assert code == 0
    header = stdout.splitlines()[0]
    assert [c.strip() for c in header.strip("|").split("|")][2:] == ["m1", "m2"]  # the runs' folders
    acc_row = next(line for line in stdout.splitlines() if line.startswith("| tiny_mc") and "| acc " in line)
    assert acc_row.count("|") == 5  # task, metric, two runs


def test_example_task_config_runs(setup, tmp_path, monkeypatch):
    """configs/eval/cloze_mini.yaml (data path relative to the repository root) works as documented."""
    import datasets

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    result = evaluate(str(setup["m1"]), tasks=["cloze_mini"], include_path=["configs/eval"], num_fewshot=2, limit=8,
                      out=str(tmp_path / "ev"))
    assert result["harness"]["n-samples"]["cloze_mini"]["effective"] == 8
    assert 0 <= result["tasks"]["cloze_mini"]["acc_norm"] <= 1
    acc_norm = result["tasks"]["cloze_mini"]["acc_norm"]
    assert acc_norm * 8 == pytest.approx(round(acc_norm * 8))  # a share of the 8 documents scored


def test_results_are_written_without_out(setup, tmp_path, monkeypatch, capsys):
    """No --out: results go to out/eval/MODELNAME-TIMESTAMP, as the README promises for every run."""
    monkeypatch.chdir(tmp_path)
    code, stdout, _ = cli_run(capsys, ["evaluate", str(setup["m1"]), "--perplexity", str(setup["text"])])
    assert code == 0
    (folder,) = (tmp_path / "out" / "eval").iterdir()
    assert folder.name.startswith(setup["m1"].name + "-")
    result = json.loads((folder / "results.json").read_text())
    assert result["perplexity"]["overall"]["tokens"] > 128 and (folder / "results.md").exists()
    assert f"results written to {Path('out') / 'eval' / folder.name / 'results.json'}" in stdout


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
    if case == "short_context":  # found once the harness has built the requests: its progress bars precede
        code, _, err = cli_run(capsys, args)
        assert code == 1 and "Traceback" not in err, err
    else:  # refused before any work: exit code 1, and stderr is this one `error: ...` line
        err = cli_error(capsys, args, message)
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], err
    # The same error reaches Python callers as LLMKitError.
    if case == "nothing":
        with pytest.raises(LLMKitError, match=message):
            evaluate(m)


def test_several_models_in_one_call(setup, tmp_path, capsys):
    code, stdout, _ = cli_run(capsys, ["evaluate", str(setup["m1"]), str(setup["m2"]), "--perplexity", str(setup["text"]),
                                       "--out", str(tmp_path)])
    assert code == 0
    tokens = []
    for name in ("m1", "m2"):
        tokens.append(json.loads((tmp_path / setup[name].name / "results.json").read_text())["perplexity"]["overall"]["tokens"])
        assert tokens[-1]
    assert tokens[0] == tokens[1] > 128  # one tokenizer, one text: each model scored the same tokens
    table = stdout[stdout.rindex("| task"):]
    assert setup["m1"].name in table.splitlines()[0] and setup["m2"].name in table.splitlines()[0]


def test_compare_labels_columns_by_run(tmp_path, capsys):
    """Two runs of the same model (say, two finetuning settings) get a column each, named by run."""
    from llmkit.evaluate.report import write_results

    for run, acc in (("lora-r8", 0.5), ("lora-r16", 0.75)):
        write_results(tmp_path / run, {"format": "llmkit-eval", "model_name": "final", "model": "x/final",
                                       "tasks": {"tiny_mc": {"acc": acc}}})
    code, stdout, _ = cli_run(capsys, ["evaluate", "--compare", str(tmp_path / "lora-r8"), str(tmp_path / "lora-r16")])
    assert code == 0
    header = stdout.splitlines()[0]
    assert [c.strip() for c in header.strip("|").split("|")] == ["task", "metric", "lora-r8", "lora-r16"]
    row = next(x for x in stdout.splitlines() if x.startswith("| tiny_mc"))
    assert "0.5" in row and "0.75" in row


def test_compare_shows_a_nan_saved_as_null(tmp_path, capsys):
    """JSON has no NaN: a judge mean with nothing scored is saved as null and shown as n/a."""
    from llmkit.evaluate.report import write_results

    for run, mean in (("a", None), ("b", 61.5)):
        write_results(tmp_path / run, {"format": "llmkit-eval", "model_name": run, "model": run,
                                       "generative": {"data": "d.json", "examples": 2, "metrics": {},
                                                      "judge": {"mean": mean, "stderr": None, "failures": 2 if mean is None else 0}}})
    code, stdout, _ = cli_run(capsys, ["evaluate", "--compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert code == 0
    assert "n/a" in stdout and "61.5" in stdout, stdout


def test_a_hub_task_offline_fails_fast_in_one_line(setup, capsys, monkeypatch):
    """A harness task whose data lives on the hub, with the hub unreachable: one line within
    seconds (the hub is not retried for a minute)."""
    import time

    from llmkit import hub

    calls = []
    monkeypatch.setattr(hub, "reachable", lambda timeout=3.0: calls.append(timeout) or False)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(setup["root"] / "empty-cache"))
    t0 = time.monotonic()
    err = cli_error(capsys, ["evaluate", str(setup["m1"]), "--tasks", "arc_easy", "--limit", "2"],
                    "cannot load the data of task(s) arc_easy", "not reachable")
    assert calls and time.monotonic() - t0 < 60, err


def test_hub_reachable_is_false_offline_without_connecting(monkeypatch):
    import socket

    from llmkit import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("no connection attempt offline"))
    assert hub.reachable() is False
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    monkeypatch.setattr(socket, "create_connection", _refuse)
    assert hub.reachable(timeout=1) is False


def _refuse(address, timeout=None):
    assert address == ("127.0.0.1", 9) and timeout == 1
    raise ConnectionRefusedError("refused")
