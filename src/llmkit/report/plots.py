"""The report's curves: loss (train and validation), learning rate and gradient norm against the
optimizer step, one line per run (one colour per run in every figure), as PNG bytes.

matplotlib's Agg backend: no display, the same pixels on every machine; each figure is closed
after saving (pyplot keeps figures alive otherwise, and a report of many runs would pile up).
"""

from __future__ import annotations

import io
from typing import Optional

from llmkit.report.collect import RunData

# (file stem, title, y label, [(metric, style)]): val_loss as markers joined by a dashed line,
# evaluated every eval_every steps (and at step 0), where the training loss has a point per step.
FIGURES = (
    ("loss", "Loss", "loss", [("loss", "-"), ("val_loss", "--o")]),
    ("lr", "Learning rate", "learning rate", [("lr", "-")]),
    ("grad_norm", "Gradient norm (before clipping)", "global L2 norm", [("grad_norm", "-")]),
)


def has_curves(runs: list[RunData]) -> bool:
    return any(m in r.series for r in runs for *_, spec in FIGURES for m, _ in spec)


def figure_png(runs: list[RunData], metrics: list[tuple[str, str]], title: str, ylabel: str) -> Optional[bytes]:
    """One figure, a line per (run, metric) that has points; None when no run logged any."""
    lines = [(i, r, m, style) for i, r in enumerate(runs) for m, style in metrics if r.series.get(m)]
    if not lines:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    try:
        for i, r, m, style in lines:
            pts = r.series[m]
            steps = sorted(pts)
            label = r.label if len(metrics) == 1 else f"{r.label} {m}"
            marker = "o" if "o" in style else None
            ax.plot(steps, [pts[s] for s in steps], linestyle="--" if "--" in style else "-", marker=marker,
                    markersize=3 if marker else None, linewidth=1.2, color=colours[i % len(colours)], label=label)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        # No metadata: the same curves give the same bytes (no creation date in the file).
        fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    finally:
        plt.close(fig)
    return buf.getvalue()


def figures(runs: list[RunData]) -> list[tuple[str, str, bytes]]:
    """[(file stem, title, PNG bytes)] of the figures some run has data for."""
    out = []
    for stem, title, ylabel, metrics in FIGURES:
        png = figure_png(runs, metrics, title, ylabel)
        if png is not None:
            out.append((stem, title, png))
    return out
