"""Progress of long work, for people: a bar with a total and an ETA on a terminal, periodic
lines when the output is a log file (a tqdm bar there is a stream of carriage returns that a
log viewer shows as one endless line, or nothing at all with tqdm's `disable=None`).

    with progress(total=len(chunks), desc="reference log-probs", unit="batch") as bar:
        for chunk in chunks:
            ...
            bar.update(1)

`LLMKIT_PROGRESS_INTERVAL` (seconds, default 30) sets how often the log lines come.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Optional, TextIO


def short_text(text: str, n: int = 80) -> str:
    """`text` on one line, cut to `n` characters with "..." (sample outputs in training logs)."""
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _fmt_time(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class LineProgress:
    """tqdm's interface (update, set_postfix, write, close, n, total), printed as a line every
    `interval` seconds and once at the end: `desc: 40/100 steps (40%), 00:12 elapsed, ETA 00:18`."""

    def __init__(self, total: Optional[float], desc: str, unit: str, file: TextIO, interval: float):
        self.total, self.desc, self.unit, self.file, self.interval = total, desc, unit, file, interval
        self.n: float = 0
        self.postfix = ""
        self.t0 = self._last = time.monotonic()
        self._printed_n: Optional[float] = None

    def update(self, k: float = 1) -> None:
        self.n += k
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._line()

    def set_postfix(self, values: Optional[dict] = None, refresh: bool = False, **kw) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in {**(values or {}), **kw}.items())

    def write(self, text: str) -> None:
        print(text, file=self.file, flush=True)

    def _line(self) -> None:
        elapsed = time.monotonic() - self.t0
        n = int(self.n) if float(self.n).is_integer() else round(self.n, 1)
        if self.total:
            frac = min(self.n / self.total, 1.0)
            total = int(self.total) if float(self.total).is_integer() else self.total
            eta = elapsed * (1 - frac) / frac if frac > 0 else float("nan")
            line = (f"{self.desc}: {n}/{total} {self.unit} ({100 * frac:.0f}%), {_fmt_time(elapsed)} elapsed, "
                    f"ETA {_fmt_time(eta) if eta == eta else '?'}")
        else:
            line = f"{self.desc}: {n} {self.unit}, {_fmt_time(elapsed)} elapsed"
        if self.postfix:
            line += f", {self.postfix}"
        print(line, file=self.file, flush=True)
        self._printed_n = self.n

    def close(self) -> None:
        if self._printed_n != self.n:
            self._line()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:  # after an error, the error is the last line
            self.close()


class _Silent(LineProgress):
    """Progress that shows nothing (e.g. on every process but the first under torchrun)."""

    def _line(self) -> None:
        pass

    def write(self, text: str) -> None:
        pass


def progress(total: Optional[float] = None, desc: str = "", unit: str = "it", file: Optional[TextIO] = None,
             interval: Optional[float] = None, leave: bool = True, enabled: bool = True):
    """A tqdm bar on a terminal, a `LineProgress` otherwise (see the module docstring); with
    `enabled=False`, one that shows nothing."""
    file = file or sys.stderr
    if not enabled:
        return _Silent(total, desc, unit, file, float("inf"))
    if getattr(file, "isatty", lambda: False)():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=file, dynamic_ncols=True, leave=leave)
    if interval is None:
        interval = float(os.environ.get("LLMKIT_PROGRESS_INTERVAL", "30"))
    return LineProgress(total, desc, unit, file, interval)
