"""Evaluation results on disk (JSON + Markdown) and side-by-side comparison of runs.

`results.json` holds one run: the model, the settings, and one section per kind of evaluation
(`tasks` from the harness, `perplexity`, `generative`). `metric_rows` flattens any run into
(task, metric) -> value rows, which is all the Markdown tables and `--compare` need, so runs
with different sections still line up row by row.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Optional

from llmkit.errors import LLMKitError, read_json

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
FORMAT = "llmkit-eval"


def metric_rows(result: dict) -> dict[tuple[str, str], tuple[float, Optional[float]]]:
    """{(task, metric): (value, stderr or None)} for every number a run reports."""
    rows: dict[tuple[str, str], tuple[float, Optional[float]]] = {}
    for task, metrics in (result.get("tasks") or {}).items():
        for metric, value in metrics.items():
            name, sep, filt = metric.partition(" (")  # "exact_match (strict-match)": a filtered metric
            if name.endswith("_stderr"):
                continue
            rows[(task, metric)] = (value, metrics.get(f"{name}_stderr{sep}{filt}"))
    ppl = result.get("perplexity")
    if ppl:
        for name, r in list(ppl.get("files", {}).items()) + [("overall", ppl.get("overall"))]:
            if not r:
                continue
            label = f"ppl:{Path(name).name}" if name != "overall" else "ppl:overall"
            for metric in ("perplexity", "bits_per_byte", "tokens"):
                rows[(label, metric)] = (r[metric], None)
    s2s = result.get("seq2seq")
    if s2s:
        label = f"s2s:{Path(s2s.get('data', 'data')).name}"
        for metric, value in s2s["metrics"].items():
            if not metric.endswith("signature"):
                rows[(label, metric)] = (value, None)
    gen = result.get("generative")
    if gen:
        label = f"gen:{Path(gen.get('data', 'data')).name}"
        for metric, value in (gen.get("metrics") or {}).items():
            rows[(label, metric)] = (value, None)
        judge = gen.get("judge")
        if judge:
            rows[(label, "judge_mean")] = (judge["mean"], judge.get("stderr"))
            rows[(label, "judge_failures")] = (judge["failures"], None)
        pair = gen.get("pairwise")
        if pair:
            rows[(label, f"win_rate vs {pair['against']}")] = (pair["win_rate"], None)
            for k in ("wins", "ties", "losses", "failures"):
                rows[(label, k)] = (pair[k], None)
    pw = result.get("pairwise")  # `--pairwise A B`: A's record against B
    if pw:
        label = f"pair:{Path(pw.get('data', 'data')).name}"
        rows[(label, f"win_rate vs {pw['model_b']}")] = (pw["win_rate"], pw.get("stderr"))
        for k in ("ci_low", "ci_high", "lc_win_rate", "wins", "ties", "losses", "failures", "mean_length_a",
                  "mean_length_b"):
            rows[(label, k)] = (pw[k], None)
        if pw.get("consistency"):
            rows[(label, "consistency")] = (pw["consistency"]["rate"], None)
    return rows


def _fmt(value: float, err: Optional[float] = None) -> str:
    if isinstance(value, bool):
        return str(value)
    if value is None:  # NaN saved to results.json becomes null (JSON has no NaN)
        return "n/a"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 100):
        text = f"{int(value):,}"
    elif isinstance(value, float) and math.isnan(value):
        text = "n/a"
    else:
        text = f"{value:.4f}" if abs(value) < 100 else f"{value:.2f}"
    if err is not None and isinstance(err, (int, float)) and not math.isnan(err):
        text += f" ± {err:.4f}"
    return text


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def run_markdown(result: dict) -> str:
    """A run as Markdown: a header line, the metrics table, and the judge's score histogram."""
    parts = [f"# Evaluation of {result.get('model_name') or result.get('model') or 'responses'}", ""]
    settings = result.get("settings") or {}
    if settings:
        shown = {k: " ".join(map(str, v)) if isinstance(v, (list, tuple)) else v for k, v in settings.items()}
        parts += [", ".join(f"{k}: {v}" for k, v in shown.items() if v not in (None, "")), ""]
    rows = [[task, metric, _fmt(v, e)] for (task, metric), (v, e) in metric_rows(result).items()]
    parts.append(markdown_table(["task", "metric", "value"], rows) if rows else "(no metrics)")
    if result.get("seq2seq"):
        from llmkit.evaluate.seq2seq import seq2seq_markdown

        parts += ["", seq2seq_markdown(result["seq2seq"])]
    if result.get("pairwise"):
        from llmkit.evaluate.pairwise import pairwise_markdown

        parts += ["", pairwise_markdown(result["pairwise"])]
    judge = (result.get("generative") or {}).get("judge")
    if judge and judge.get("histogram"):
        parts += ["", "Judge scores by decile:", "", histogram_text(judge["histogram"])]
    return "\n".join(parts) + "\n"


def histogram_text(histogram: dict[str, int], width: int = 40) -> str:
    top = max(histogram.values()) if histogram else 0
    lines = []
    for label, count in histogram.items():
        bar = "#" * (round(width * count / top) if top else 0)
        lines.append(f"    {label:>6} | {bar} {count}")
    return "\n".join(lines)


def write_results(out: str | Path, result: dict) -> tuple[Path, Path]:
    """Write results.json and results.md into `out` (created); returns both paths."""
    from llmkit.checkpoint import atomic_write_json, atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"format": FORMAT, **result}
    atomic_write_json(out / RESULTS_JSON, _jsonable(result))
    atomic_write_text(out / RESULTS_MD, run_markdown(result))
    return out / RESULTS_JSON, out / RESULTS_MD


def _jsonable(obj):
    """NaN/inf are not JSON: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def load_result(path: str | Path) -> dict:
    """A results.json (or a folder holding one), or an lm-evaluation-harness results JSON."""
    p = Path(path)
    if p.is_dir():
        p = p / RESULTS_JSON
    if not p.is_file():
        raise LLMKitError(f"{path}: no such results file (expected {RESULTS_JSON} or a folder holding one)")
    data = read_json(p)
    if not isinstance(data, dict):
        raise LLMKitError(f"{p}: expected a JSON object")
    if data.get("format") != FORMAT:
        if "results" in data and isinstance(data["results"], dict):  # written by `lm_eval --output_path`
            from llmkit.evaluate.harness import task_metrics

            name = (data.get("config") or {}).get("model_args") or p.parent.name
            return {"model_name": str(name), "tasks": task_metrics(data), "_path": str(p)}
        raise LLMKitError(f"{p}: not an llmkit evaluation results file")
    data["_path"] = str(p)
    return data


def compare_table(results: Iterable[dict]) -> str:
    """Markdown table: one row per (task, metric) seen in any run, one column per run, labelled
    by the run: its results folder (e.g. eval/lora-r16) when read from disk, else its model."""
    runs = list(results)
    labels = []
    for i, r in enumerate(runs):
        folder = Path(r["_path"]).parent.name if r.get("_path") else ""
        labels.append(folder or r.get("model_name") or f"run{i + 1}")
    for i, label in enumerate(labels):  # disambiguate equal labels with their file paths
        if labels.count(label) > 1:
            labels[i] = f"{label} ({runs[i].get('_path', i + 1)})"
    per_run = [metric_rows(r) for r in runs]
    keys = list(dict.fromkeys(k for rows in per_run for k in rows))
    body = [[task, metric] + [_fmt(*rows[(task, metric)]) if (task, metric) in rows else "-" for rows in per_run]
            for task, metric in keys]
    if not body:
        raise LLMKitError("the results files hold no metrics to compare")
    return markdown_table(["task", "metric"] + labels, body)
