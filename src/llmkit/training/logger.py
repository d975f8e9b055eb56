"""Metrics: console (progress bar), CSV, TensorBoard, and a loss-curve PNG at the end."""

from __future__ import annotations

import csv
import io
import math
import sys
from pathlib import Path
from typing import Optional


class MetricsLogger:
    """Writes every logged row to out/metrics.csv (long format: step, tokens, name, value, so
    that metrics logged at different cadences share one file) and TensorBoard, and shows the
    latest values on a progress bar (a terminal) or in periodic lines (a log file; see
    llmkit.progress). Only the main process logs.

    `total` and `unit` are the run's budget (steps, tokens or seconds): the bar's total and ETA.
    `resume_step`: the step a resumed run continues from; rows after it (logged by the
    interrupted run after its last checkpoint) are dropped, so every step appears once. A fresh
    run (0) starts a new file."""

    def __init__(self, out: Path, enabled: bool = True, tensorboard: bool = True, total: Optional[float] = None,
                 unit: str = "step", resume_step: int = 0):
        self.out, self.enabled = Path(out), enabled
        self.rows: list[tuple[int, int, str, float]] = []
        self.tb = None
        self.bar = None
        if not enabled:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "metrics.csv"
        header = ["step", "tokens", "metric", "value"]
        kept = []
        if resume_step > 0 and path.exists():
            with open(path, newline="") as f:
                kept = [r for r in csv.reader(f)][1:]
            kept = [r for r in kept if r and r[0].isdigit() and int(r[0]) <= resume_step]
        from llmkit.checkpoint import atomic_write_text

        buf = io.StringIO()
        csv.writer(buf).writerows([header] + kept)
        atomic_write_text(path, buf.getvalue())
        self._file = open(path, "a", newline="")
        self._csv = csv.writer(self._file)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step: events after the resumed step (from the interrupted run) are dropped.
                self.tb = SummaryWriter(str(self.out / "tb"), purge_step=resume_step or None)
            except Exception as e:  # tensorboard missing or broken: keep training, say so once
                print(f"TensorBoard logging off ({e.__class__.__name__}: {e})", file=sys.stderr)
        from llmkit.progress import progress

        self.bar = progress(total=total, desc="training", unit=unit)

    def log(self, step: int, metrics: dict, tokens: int = 0, done: Optional[float] = None) -> None:
        """Log `metrics` at `step`; `done` is how much of the budget is spent (in the bar's unit;
        default: the step)."""
        if not self.enabled or not metrics:
            return
        for k, v in metrics.items():
            v = float(v)
            self.rows.append((step, tokens, k, v))
            self._csv.writerow([step, tokens, k, f"{v:.6g}"])
            if self.tb is not None:
                self.tb.add_scalar(k, v, step)
        self._file.flush()
        if self.bar is not None:
            done = step if done is None else done
            if self.bar.total:
                done = min(done, self.bar.total)
            if self.bar.n < done:
                self.bar.update(done - self.bar.n)
            shown = {k: _fmt(v) for k, v in metrics.items() if k in ("loss", "lr", "tokens_per_sec", "mfu", "val_loss")}
            if "val_loss" in metrics or any(k.startswith("val_") for k in metrics):
                self.bar.write(f"step {step}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in metrics.items()))
            elif shown:
                self.bar.set_postfix({"step": step, **shown} if self.bar.unit != "step" else shown, refresh=False)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        self._file.close()

    def plot(self, path: Optional[Path] = None) -> Optional[Path]:
        """loss (and val_loss) against step, from the whole metrics.csv (resumed runs included)."""
        path = path or self.out / "loss.png"
        series: dict[str, dict[int, float]] = {}
        with open(self.out / "metrics.csv") as f:
            for row in csv.DictReader(f):
                if row["metric"] in ("loss", "val_loss"):
                    series.setdefault(row["metric"], {})[int(row["step"])] = float(row["value"])
        if not series:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for name, pts in series.items():
            steps = sorted(pts)
            ax.plot(steps, [pts[s] for s in steps], label=name, marker="o" if name == "val_loss" else None,
                    linewidth=1)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def _fmt(v: float) -> str:
    if v == 0 or not math.isfinite(v):
        return str(v)
    return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.4f}"
