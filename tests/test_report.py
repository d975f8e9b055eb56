"""`llmkit report RUN...` (src/llmkit/report/): report cards of real tiny runs, checked against the
files the runs wrote (metrics.csv, summary.json, trainer_state.json, results.json) read here
independently, plus escaping of hostile model output, the page in a real browser (Debian's
headless chromium, tests/browser.py) and one-line errors for bad input."""

from __future__ import annotations

import csv
import json
import re
import shutil
import statistics
from pathlib import Path

import pytest

from llmkit.cli import main
from tests.browser import browser, page, page_errors  # noqa: F401  (fixtures)
from tests.helpers import cli_error, cli_run, make_token_shards

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "home", "slowly"]
HOSTILE = "<script>alert('x')</script>"
A100_FP32 = 19.5e12  # NVIDIA A100 data sheet, dense FP32 (the runs below train in fp32)
A100_PRICE = 1.79  # hardware.py's assumed $/hour for a100-80gb


def _pretrain(data: Path, out: Path, *extra: str) -> None:
    main(["pretrain", "--data", str(data), "--out", str(out), "--model", "tiny-llama", "--train.precision", "fp32",
          "--train.micro_batch_size", "4", "--train.warmup_steps", "2", "--train.log_every", "2",
          "--train.eval_every", "6", "--train.tensorboard", "false", "--eval_batches", "2", *extra])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Four real run folders under one parent: two pretraining runs (different lr and length), a
    LoRA finetune of the first whose data holds a hostile prompt, and a perplexity evaluation."""
    root = tmp_path_factory.mktemp("report")
    data = make_token_shards(root / "corpus", WORDS, n_docs=30, max_words=160)
    r = root / "runs"
    _pretrain(data, r / "base", "--train.max_steps", "12", "--train.lr", "3e-3")
    _pretrain(data, r / "hot", "--train.max_steps", "8", "--train.lr", "1e-2")
    records = [{"instruction": f"{HOSTILE} say {w}" + (" twice" if i % 2 else ""), "output": f"{w} {w}"}
               for i, w in enumerate(WORDS * 2)]  # every prompt hostile: the sampled ones too
    (root / "ft.json").write_text(json.dumps(records))
    main(["finetune", str(r / "base" / "final"), str(root / "ft.json"), "--out", str(r / "ft"), "--method", "lora",
          "--train.max_steps", "2", "--train.micro_batch_size", "4", "--train.eval_every", "0",
          "--train.log_every", "1", "--train.tensorboard", "false", "--samples", "2", "--sample_tokens", "3",
          "--eval_batches", "1", "--val_fraction", "0.25"])
    (root / "held.txt").write_text(" ".join(WORDS * 20))
    main(["evaluate", str(r / "base" / "final"), "--perplexity", str(root / "held.txt"), "--out", str(r / "ev")])
    return r


def metrics(run: Path) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    with open(run / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["metric"], {})[int(row["step"])] = float(row["value"])
    return out


def trainer_state(run: Path) -> dict:
    latest = (run / "checkpoints" / "latest").read_text().strip()
    return json.loads((run / "checkpoints" / latest / "trainer_state.json").read_text())


def table_rows(md: str, heading: str) -> list[list[str]]:
    """The cells of the first Markdown table after `heading`, the header row first."""
    part = md.split(heading + "\n", 1)[1].lstrip("\n")
    while not part.startswith("|"):  # a paragraph before the table
        part = part.split("\n\n", 1)[1]
    rows = []
    for line in part.split("\n\n", 1)[0].splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]  # not at an escaped \|
        if not all(c and set(c) <= {"-"} for c in cells):  # not the |---| line
            rows.append(cells)
    return rows


def table(md: str, heading: str) -> dict[str, list[str]]:
    """That table as {first cell: the other cells} (the header row under its first cell, "")."""
    return {r[0]: r[1:] for r in table_rows(md, heading)}


UNITS = {"µs": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}


def seconds(text: str) -> float:
    value, unit = text.split()
    return float(value) * UNITS[unit]


def number(text: str) -> float:
    return float(text.replace(",", "").replace("\\$", "").replace("$", "").rstrip("%"))


def test_report_of_a_run_has_the_numbers_it_logged(runs, capsys):
    base = runs / "base"
    code, out, err = cli_run(capsys, ["report", base])  # no --out: into the run's own folder
    assert code == 0, err
    for name in ("report.md", "report.html", "report-loss.png", "report-lr.png", "report-grad_norm.png"):
        assert (base / name).is_file(), name
        if name.endswith(".png"):
            assert (base / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (base / "report.md").read_text()
    assert "![Loss](report-loss.png)" in md and f"written to {base / 'report.md'}" in out

    m = metrics(base)
    summary = json.loads((base / "summary.json").read_text())
    state = trainer_state(base)
    s = table(md, "## Summary")
    assert s[""] == ["base"] and s["stage"] == ["pretrain"] and s["method"] == ["full"]
    assert number(s["steps"][0]) == summary["step"] == 12
    assert number(s["tokens"][0]) == summary["tokens"] == state["tokens"]
    assert number(s["sequence length"][0]) == 32  # the shards' seq_len
    assert number(s["final train loss"][0]) == pytest.approx(m["loss"][max(m["loss"])], abs=1e-4)
    assert number(s["best train loss"][0]) == pytest.approx(min(m["loss"].values()), abs=1e-4)
    assert number(s["final val loss"][0]) == pytest.approx(m["val_loss"][12], abs=1e-4)
    assert number(s["first val loss"][0]) == pytest.approx(m["val_loss"][0], abs=1e-4)
    assert number(s["tokens/s"][0]) == round(summary["tokens"] / state["elapsed"])
    assert seconds(s["training time"][0]) == pytest.approx(state["elapsed"], rel=5e-3)
    mfu = statistics.median(m["mfu"].values())
    value, rows = re.fullmatch(r"([\d.]+)% \((\d+) rows\)", s["MFU (median)"][0]).groups()
    assert float(value) / 100 == pytest.approx(mfu, abs=5e-5) and int(rows) == len(m["mfu"])

    # The same training on an A100: the loop's FLOPs count at the run's MFU, in fp32 as it ran.
    from llmkit.config import ModelConfig

    cfg = ModelConfig.from_file(base / "final" / "config.json")
    flops = summary["tokens"] * (6 * cfg.n_params_estimate(exclude_embeddings=True)
                                 + 12 * cfg.n_layer * cfg.n_head * cfg.head_size * 32)
    t = flops / (A100_FP32 * mfu)
    c = table(md, "## Cost of the same training on a100-80gb")
    assert c["precision"] == ["fp32"] and c["peak per device"] == ["19.5 TFLOP/s"]
    assert number(c["training FLOPs"][0]) == pytest.approx(flops, rel=5e-3)
    assert seconds(c["time"][0]) == pytest.approx(t, rel=1e-2)
    assert number(c["cost"][0].split(" at ")[0]) == pytest.approx(t / 3600 * A100_PRICE, rel=5e-2)
    assert s["time on a100-80gb"] == c["time"]

    train = table(md, "### Training loop")
    assert train["lr"] == ["0.003"] and train["max_steps"] == ["12"] and train["precision"] == ["fp32"]
    model = table(md, "### Model")
    assert model["name"] == ["tiny-llama"] and number(model["vocab_size"][0]) == cfg.vocab_size
    system = table(md, "## System")  # written by the run when it finished
    recorded = json.loads((base / "system.json").read_text())
    assert system["source"] == ["recorded by the run"] and system["torch"] == [recorded["torch"]]
    assert system["device"] == ["cpu"]


def test_several_runs_side_by_side(runs, capsys, tmp_path):
    out = tmp_path / "card"
    code, _, err = cli_run(capsys, ["report", runs, "--out", out, "--hardware", "h100"])  # the parent: its runs
    assert code == 0, err
    md = (out / "report.md").read_text()
    s = table(md, "## Summary")
    assert s[""] == ["base", "hot", "ft", "ev"]  # in the order they finished
    assert s["stage"] == ["pretrain", "pretrain", "finetune", "evaluate"]
    assert s["method"] == ["full", "full", "lora", "-"]
    assert s["steps"] == ["12", "8", "2", "-"] and "time on h100" in s and "time on a100-80gb" not in s
    ft = json.loads((runs / "ft" / "summary.json").read_text())
    assert number(s["val_loss_before"][2]) == pytest.approx(ft["val_loss_before"], abs=1e-4)
    train = table(md, "### Training loop")
    assert train["lr \\*"][:2] == ["0.003", "0.01"] and "micro_batch_size" in train  # differing rows marked (\*)
    cost = table(md, "## Cost of the same training on h100")
    assert cost[""] == ["base", "hot", "ft"]
    assert cost["MFU"][2] == "40.00% (assumed: the plan's default; lora runs log none)"
    assert cost["peak per device"][0] == "67.0 TFLOP/s"  # fp32 on an H100 SXM
    ev = json.loads((runs / "ev" / "results.json").read_text())
    e = {(r[0], r[1]): r[2] for r in table_rows(md, "## Evaluation")[1:]}
    assert number(e[("ppl:overall", "perplexity")]) == pytest.approx(ev["perplexity"]["overall"]["perplexity"],
                                                                     abs=1e-4)
    assert e[("ppl:overall", "tokens")] == f"{ev['perplexity']['overall']['tokens']:,}"
    samples = table(md, "### ft")
    assert samples["prompt"] == ["before (step 0)", "after (step 2)", "reference"]
    # One line per run in each figure: the loss figure has two series per training run.
    from PIL import Image

    assert Image.open(out / "report-loss.png").size == (750, 360)


def test_hostile_outputs_are_escaped(runs, tmp_path, capsys):
    """A prompt from the data (ft) and model outputs with markup, control and bidi characters:
    shown as text in both files, never as markup, links or reordered text."""
    from llmkit.recipes.quickstart import _write_samples

    run = tmp_path / "qs"
    shutil.copytree(runs / "base", run)
    (run / "system.json").unlink()  # an older run: the report says whose machine it shows
    evil = f"{HOSTILE}<img src=x onerror=alert(2)> [click](javascript:alert(3)) | cell \x1b[31mred\u202egnp.exe"
    _write_samples(run / "samples.jsonl", [{"prompt": "Return the", "response": "noise"}],
                   [{"prompt": "Return the", "response": evil}], 12)
    out = tmp_path / "card"
    code, _, err = cli_run(capsys, ["report", run, runs / "ft", "--out", out])
    assert code == 0, err
    md, page_html = (out / "report.md").read_text(), (out / "report.html").read_text()
    for text in (md, page_html):
        assert "<script" not in text.lower() and "<img src=x" not in text.lower() and "\u202e" not in text
        assert "\x1b" not in text and "&lt;script&gt;alert(" in text and "\\u202egnp.exe" in text
    assert "\\[click\\](javascript:alert(3)) \\| cell \\\\x1b\\[31mred" in md  # no link, no new table cell
    assert "[click](javascript:alert(3)) | cell \\x1b[31mred" in page_html
    assert page_html.count("<img ") == 3 and "<img" not in md  # the figures only (md links the PNGs)
    s = table(md, "### qs")
    assert s["prompt"] == ["before (step 0)", "after (step 12)"] and s["Return the"][0] == "noise"
    assert table(md, "## System")["source"][0] == "this machine, at report time (the run recorded none)"
    assert "Content-Security-Policy" in page_html and "default-src 'none'" in page_html


def test_report_renders_in_a_browser(runs, tmp_path, capsys, page, page_errors):  # noqa: F811
    out = tmp_path / "card"
    code, _, err = cli_run(capsys, ["report", runs / "base", runs / "hot", runs / "ft", runs / "ev", "--out", out])
    assert code == 0, err
    page.goto((out / "report.html").resolve().as_uri())
    page.wait_for_load_state("load")
    images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
    assert len(images) == 3 and all(done and w > 0 and h > 0 for done, w, h in images), images
    assert page.evaluate("document.querySelectorAll('script').length") == 0
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # wide tables scroll
    samples = page.locator("table.text").first.inner_text()
    assert f"{HOSTILE} say" in samples  # the prompt as text, not a script
    assert page.locator("h2", has_text="Cost of the same training on a100-80gb").count() == 1
    assert page_errors == []


def test_bad_input_is_one_clear_line(runs, tmp_path, capsys):
    cli_error(capsys, ["report", tmp_path / "nope"], "nope: no such folder")
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("hello")
    cli_error(capsys, ["report", empty], "not an llmkit run folder")
    cli_error(capsys, ["report", empty / "notes.txt"], "not a folder")
    cli_error(capsys, ["report", runs / "base", "--hardware", "a1000"], "unknown hardware 'a1000'")
    cli_error(capsys, ["report", runs / "base", "--out", empty / "notes.txt"], "not a folder")
    broken = tmp_path / "broken"
    shutil.copytree(runs / "hot", broken)
    (broken / "metrics.csv").write_text("when,what\n1,2\n")
    cli_error(capsys, ["report", broken], "metrics.csv: not an llmkit metrics file")
    (broken / "metrics.csv").write_text("step,tokens,metric,value\n1,128,loss,oops\n")
    cli_error(capsys, ["report", broken], "metrics.csv, line 2")
    (broken / "metrics.csv").unlink()
    (broken / "summary.json").write_text("{not json")
    cli_error(capsys, ["report", broken], "summary.json: not valid JSON")
