"""`llmkit report RUN_DIR...`: a report card of one or several runs, as report.md (with its PNG
figures beside it) and one self-contained report.html (figures embedded; opens offline).

    run folders -> collect.py (stage, settings, time, tokens, MFU, curves, evaluation, samples,
                   system) -> plots.py (loss / lr / grad-norm, a line per run)
                -> card.py (blocks -> Markdown and HTML; cost on the plan's hardware)

`write_report` is the library entry (what a pipeline calls when its stages are done); `report`
is the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from llmkit.errors import LLMKitError

REPORT_MD = "report.md"
REPORT_HTML = "report.html"


def write_report(runs: list[str], out: str | Path, hardware: str = "a100-80gb",
                 title: Optional[str] = None) -> dict:
    """Read the run folders, write OUT/report.md, OUT/report.html and OUT/report-*.png
    (atomically, each file). Returns {"markdown", "html", "figures", "runs"} (paths, labels)."""
    from llmkit import hardware as hw
    from llmkit.fileio import atomic_write, atomic_write_text
    from llmkit.report import card, plots
    from llmkit.report.collect import collect
    from llmkit.report.system import system_info

    hard = hw.lookup(hardware)  # an unknown name fails before anything is read
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise LLMKitError(f"{out}: not a folder (--out is where report.md and report.html go)")
    data = collect([str(r) for r in runs])
    title = title or "Report card: " + ", ".join(r.label for r in data)
    figures = plots.figures(data)
    blocks = card.build(data, hard, title, figures, system_info())
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for block in blocks:
        if isinstance(block, card.Figure):
            atomic_write(out / block.file, lambda tmp, png=block.png: Path(tmp).write_bytes(png))
            written.append(out / block.file)
    # The HTML first: report.md is what a person opens, and names the figures it needs.
    atomic_write_text(out / REPORT_HTML, card.render_html(blocks, title))
    atomic_write_text(out / REPORT_MD, card.render_markdown(blocks))
    return {"markdown": out / REPORT_MD, "html": out / REPORT_HTML, "figures": written,
            "runs": [r.label for r in data]}


def report(runs: list[str], out: Optional[str] = None, hardware: str = "a100-80gb",
           title: Optional[str] = None) -> dict:
    """Write a report card of runs: report.md and a self-contained report.html.

    Per run: the stage and its configuration, training time, tokens, throughput and MFU, the
    loss / learning-rate / gradient-norm curves, evaluation tables, sample outputs before and
    after training, the system it ran on, and what the same training costs on the plan's
    hardware. Several runs go side by side (a column each, a line each in the figures).

    Examples:
        llmkit report out/pretrain
        llmkit report out/pretrain out/finetune out/eval --out out/report --hardware h100

    Args:
        runs: run folders: a training run's --out (pretrain, finetune, classify, dpo, ...) or an
            `llmkit evaluate --out` folder; a folder holding runs one level down (quickstart's
            output) stands for them.
        out: folder for report.md, report.html and the report-*.png figures (default: the run
            folder itself for one run, out/report for several).
        hardware: the plan's hardware to cost the same training on, at the run's measured MFU
            (see `llmkit plan --help`: a100-80gb, h100, h200, l4, rtx-4090, cpu, ...).
        title: the report's title (default: the runs' names).
    """
    if not runs:
        raise LLMKitError("give at least one run folder (a training run's --out or `llmkit evaluate --out` folder)")
    target = out if out is not None else (runs[0] if len(runs) == 1 else "out/report")
    result = write_report(runs, target, hardware=hardware, title=title)
    print(f"report of {len(result['runs'])} run(s) ({', '.join(result['runs'])}) written to {result['markdown']} "
          f"and {result['html']}", flush=True)
    return result


__all__ = ["report", "write_report"]
