"""The report card: one list of blocks (headings, paragraphs, tables, figures) built from the runs,
rendered twice, as Markdown and as one self-contained HTML file, so the two always hold the
same numbers.

Every string that comes from a run folder (model outputs above all: untrusted) is escaped by
the renderer, never by the builder: Markdown gets backslash escapes and HTML entities (a
Markdown viewer renders raw HTML and links), HTML gets `html.escape`. The HTML page loads
nothing: the figures are data: URIs, the style is inline and allowed by its hash in a strict
Content-Security-Policy (no script may run at all, whatever a sample contains).
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional, Union

from llmkit.report.collect import RunData


# --- blocks ---------------------------------------------------------------------------------------
@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Text:
    text: str
    small: bool = False


@dataclass
class Items:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[Optional[str]]]
    long_text: bool = False  # cells of free text (samples): wrapped, line breaks kept


@dataclass
class Figure:
    file: str  # the PNG beside report.md
    title: str
    png: bytes


Block = Union[Heading, Text, Items, Table, Figure]


# --- numbers --------------------------------------------------------------------------------------
def fnum(x) -> Optional[str]:
    """1,536 / 5.4114 / 0.0003 / 2.1e-07: integers with separators, 4 decimals in the usual
    range, 3 significant digits beyond it."""
    if x is None:
        return None
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        if x.is_integer() and abs(x) >= 1000:
            return f"{int(x):,}"
        if abs(x) >= 1000:
            return f"{x:,.1f}"
        if x == 0:
            return "0"
        if abs(x) >= 0.01:
            return f"{x:.4f}"
        return f"{x:.3g}"
    return str(x)


def fduration(s: Optional[float]) -> Optional[str]:
    if s is None:
        return None
    if s < 1e-3:
        return f"{s * 1e6:.3g} µs"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    if s < 120:
        return f"{s:.3g} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:,.1f} days"


def fmoney(x: float) -> str:
    if x >= 0.01:
        return f"${x:,.2f}"
    return "$0" if x == 0 else f"${x:.2g}"


def fpercent(x: Optional[float]) -> Optional[str]:
    if x is None:
        return None
    return f"{100 * x:.2f}%" if x >= 0.001 else f"{100 * x:.3g}%"


def fvalue(v) -> Optional[str]:
    """A setting as shown: numbers as fnum, lists joined, None as absent."""
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    if isinstance(v, float) and math.isfinite(v):
        return f"{v:.6g}"  # a setting as it was given: 0.1, 3e-05, not a measurement's 4 decimals
    return fnum(v)


# --- the cost of the same training on the plan's hardware ------------------------------------------
def cost_precision(run: RunData, hard) -> str:
    """The precision the run's matmuls ran in, as the plan names it: fp32 if it trained in fp32,
    else bf16 (what `auto` picks on a GPU), fp16 on hardware without bf16 tensor cores."""
    p = (run.precision or "auto").lower()
    if p in ("fp32", "fp16"):
        return p
    return "bf16" if hard.bf16 else "fp16"


def training_cost(run: RunData, hard) -> Optional[dict]:
    """What the run's training FLOPs take on `hard` (a hardware.Hardware) with as many devices
    as the run had, at the run's measured MFU (else the plan's assumption): the arithmetic of
    `llmkit plan` (time = FLOPs / (devices x peak x MFU); cost = device-hours x price; energy =
    device-hours x board power x PUE)."""
    from llmkit import plan

    flops = run.flops
    if not flops:
        return None
    precision = cost_precision(run, hard)
    peak = hard.peak(precision)
    if run.mfu:
        mfu, source = run.mfu, f"measured: median of {run.mfu_rows} logged rows"
    else:
        # The loop logs MFU for full training only: with frozen weights its 6N count would lie.
        why = f"{run.method} runs log none" if run.method not in (None, "full") else "the run logged none"
        mfu, source = plan.DEFAULT_MFU, f"assumed: the plan's default; {why}"
    devices = max(1, run.world)
    seconds = flops / (devices * peak * mfu)
    device_hours = seconds / 3600 * devices
    return {"hardware": hard.name, "devices": devices, "precision": precision, "peak": peak, "mfu": mfu,
            "mfu_source": source, "seconds": seconds, "device_hours": device_hours, "price": hard.price,
            "cost_usd": device_hours * hard.price, "watts": hard.watts,
            "energy_kwh": device_hours * hard.watts / 1000 * plan.DEFAULT_PUE}


# --- the card -------------------------------------------------------------------------------------
def _table(labels: list[str], rows: list[tuple[str, list[Optional[str]]]],
           mark_differences: bool = False) -> Optional[Table]:
    """A side-by-side table (a column per run), without the rows no run has a value for. With
    `mark_differences`, a row whose values differ between runs gets a trailing " *"."""
    kept = []
    for name, values in rows:
        if all(v is None for v in values):
            continue
        present = [v for v in values if v is not None]
        if mark_differences and len(labels) > 1 and len(present) > 1 and len(set(present)) > 1:
            name += " *"
        kept.append([name] + values)
    if not kept:
        return None
    return Table([""] + labels, kept)


def _union(dicts: list[dict]) -> list[str]:
    return list(dict.fromkeys(k for d in dicts for k in d))


def _overview(runs: list[RunData], costs: list[Optional[dict]], hard) -> Optional[Table]:
    labels = [r.label for r in runs]

    def row(name: str, fn) -> tuple[str, list[Optional[str]]]:
        return name, [fn(r, c) for r, c in zip(runs, costs)]

    def model_name(r, c):
        if not r.model:
            return None
        return str(r.model.get("name")) + (f" ({r.model['kind']})" if r.model.get("kind") else "")

    rows = [
        row("stage", lambda r, c: r.stage),
        row("method", lambda r, c: r.method),
        row("model", model_name),
        row("parameters", lambda r, c: fnum(r.model.get("parameters"))),
        row("steps", lambda r, c: fnum(r.steps)),
        row("tokens", lambda r, c: fnum(r.tokens)),
        row("sequence length", lambda r, c: fnum(r.seq_len)),
        row("devices", lambda r, c: fnum(r.world) if r.training else None),
        row("training time", lambda r, c: fduration(r.seconds) if r.training else None),
        row("evaluation time", lambda r, c: None if r.training else fduration(r.seconds)),
        row("tokens/s", lambda r, c: fnum(round(r.tokens_per_sec)) if r.training and r.tokens_per_sec else None),
        row("MFU (median)", lambda r, c: fpercent(r.mfu) + f" ({r.mfu_rows} rows)" if r.mfu else None),
        row("final train loss", lambda r, c: fnum(r.last("loss"))),
        row("best train loss", lambda r, c: fnum(r.best("loss"))),
        row("first val loss", lambda r, c: fnum(r.series["val_loss"][min(r.series["val_loss"])])
            if len(r.series.get("val_loss") or {}) > 1 else None),
        row("final val loss", lambda r, c: fnum(r.last("val_loss"))),
        row("best val loss", lambda r, c: fnum(r.best("val_loss"))),
    ]
    shown = {"val_loss"}
    for key in _union([r.metrics for r in runs]):
        if key not in shown:
            rows.append(row(key, lambda r, c, k=key: fnum(r.metrics.get(k))))
    rows += [
        row("training FLOPs", lambda r, c: f"{r.flops:.3g}" if r.flops else None),
        row(f"time on {hard.name}", lambda r, c: fduration(c["seconds"]) if c else None),
        row(f"cost on {hard.name}", lambda r, c: fmoney(c["cost_usd"]) if c else None),
    ]
    return _table(labels, rows)


def _cost_section(runs: list[RunData], costs: list[Optional[dict]], hard) -> list[Block]:
    from llmkit import hardware as hw
    from llmkit import plan

    blocks: list[Block] = [Heading(f"Cost of the same training on {hard.name}")]
    have = [(r, c) for r, c in zip(runs, costs) if c is not None]
    if not have:
        blocks.append(Text("No training run here has the numbers to count its FLOPs (tokens and the architecture)."))
        return blocks
    blocks.append(Text(
        f"{hard.name}: dense peak {hard.fp32 / 1e12:.1f} TFLOP/s fp32, {hard.half / 1e12:.0f} TFLOP/s "
        f"{'bf16' if hard.bf16 else 'fp16'}; {hard.memory_gib:g} GiB; {hard.watts:.0f} W; "
        f"${hard.price:.2f} per device-hour (an assumed on-demand rate, {hw.PRICES_AS_OF}). Time = training FLOPs "
        f"/ (devices x peak x MFU), as llmkit plan computes it; energy counts the board power and a PUE of "
        f"{plan.DEFAULT_PUE:g}. An MFU measured on another device carries over only roughly (a small model keeps a "
        f"large GPU far less busy than a CPU): llmkit plan MODEL --run RUN --hardware {hard.name} plans a real run."))
    labels = [r.label for r, _ in have]

    def row(name, fn):
        return name, [fn(r, c) for r, c in have]

    rows = [
        row("training FLOPs", lambda r, c: f"{r.flops:.3g}"),
        row("FLOPs per token", lambda r, c: f"{r.flops_per_token:.3g}"
            + (f" (seq_len {r.seq_len})" if r.seq_len else "")),
        row("achieved on its own device", lambda r, c: f"{r.flops / r.seconds / 1e9:.3g} GFLOP/s"
            if r.seconds else None),
        row("precision", lambda r, c: c["precision"]),
        row("peak per device", lambda r, c: f"{c['peak'] / 1e12:.1f} TFLOP/s"),
        row("MFU", lambda r, c: f"{fpercent(c['mfu'])} ({c['mfu_source']})"),
        row("devices", lambda r, c: fnum(c["devices"])),
        row("time", lambda r, c: fduration(c["seconds"])),
        row("device-hours", lambda r, c: f"{c['device_hours']:.3g}"),
        row("cost", lambda r, c: f"{fmoney(c['cost_usd'])} at ${c['price']:.2f}/device-hour"),
        row("energy", lambda r, c: f"{c['energy_kwh']:.3g} kWh"),
    ]
    blocks.append(_table(labels, rows))
    return blocks


def _evaluation_section(runs: list[RunData]) -> list[Block]:
    from llmkit.evaluate.report import metric_rows

    evaluated = [r for r in runs if r.evaluation]
    if not evaluated:
        return []
    per_run = [metric_rows(r.evaluation) for r in evaluated]
    keys = list(dict.fromkeys(k for rows in per_run for k in rows))
    blocks: list[Block] = [Heading("Evaluation")]
    if not keys:
        blocks.append(Text("The results files hold no metrics."))
        return blocks

    def cell(rows, key):
        if key not in rows:
            return None
        value, err = rows[key]
        text = fnum(value) if value is not None else "n/a"
        if isinstance(err, (int, float)) and not isinstance(err, bool) and math.isfinite(err):
            text += f" ± {fnum(float(err))}"
        return text

    body = [[task, metric] + [cell(rows, (task, metric)) for rows in per_run] for task, metric in keys]
    blocks.append(Table(["task", "metric"] + [r.label for r in evaluated], body))
    return blocks


def _config_section(runs: list[RunData]) -> list[Block]:
    labels = [r.label for r in runs]
    blocks: list[Block] = [Heading("Configuration")]
    several = len(runs) > 1
    for title, dicts in (("Model", [r.model for r in runs]), ("Training loop", [r.train for r in runs]),
                         ("Recipe settings", [r.settings for r in runs])):
        rows = [(k, [fvalue(d.get(k)) for d in dicts]) for k in _union(dicts)]
        table = _table(labels, rows, mark_differences=several)
        if table is not None:
            blocks += [Heading(title, 3), table]
    if several and any(row[0].endswith(" *") for b in blocks if isinstance(b, Table) for row in b.rows):
        blocks.append(Text("* differs between the runs", small=True))
    return blocks if len(blocks) > 1 else []


def _samples_section(runs: list[RunData]) -> list[Block]:
    blocks: list[Block] = []
    for r in runs:
        if not r.samples:
            continue
        first, last = r.sample_steps
        if r.training:
            columns = [("prompt", "prompt"), ("before", f"before (step {first})"),
                       ("after", f"after (step {last})" if first is not None else f"output (step {last})"),
                       ("reference", "reference")]
        else:
            columns = [("prompt", "prompt"), ("after", "output"), ("reference", "reference")]
        columns = [(k, title) for k, title in columns if any(s.get(k) is not None for s in r.samples)]
        blocks += [Heading(r.label, 3),
                   Table([t for _, t in columns], [[s.get(k) for k, _ in columns] for s in r.samples], long_text=True)]
    return [Heading("Sample outputs")] + blocks if blocks else []


SYSTEM_FIELDS = (("cpu", "CPU"), ("cores", "cores"), ("memory_gib", "memory (GiB)"), ("gpu", "GPU"),
                 ("gpus", "GPUs"), ("cuda", "CUDA"), ("device", "device"), ("torch", "torch"),
                 ("python", "Python"), ("platform", "platform"), ("llmkit", "llmkit"),
                 ("git_commit", "git commit"), ("recorded", "recorded"))


def _system_section(runs: list[RunData], here: dict) -> list[Block]:
    systems = [r.system or here for r in runs]
    rows = [("source", ["recorded by the run" if r.system else "this machine, at report time (the run recorded none)"
                        for r in runs])]
    rows += [(title, [fvalue(s.get(key)) for s in systems]) for key, title in SYSTEM_FIELDS]
    return [Heading("System"), _table([r.label for r in runs], rows)]


def build(runs: list[RunData], hard, title: str, figures: list[tuple[str, str, bytes]], here: dict) -> list[Block]:
    """The card's blocks. `figures`: [(file stem, title, PNG)]; `here`: this machine's system_info
    (shown for runs that recorded none)."""
    from llmkit import __version__

    costs = [training_cost(r, hard) if r.training else None for r in runs]
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    blocks: list[Block] = [Heading(title, 1), Text(f"Made by llmkit {__version__} on {now}.", small=True),
                           Items([f"{r.label}: {r.stage}, {r.path}" for r in runs])]
    overview = _overview(runs, costs, hard)
    if overview is not None:
        blocks += [Heading("Summary"), overview]
    if figures:
        blocks.append(Heading("Curves"))
        blocks += [Figure(f"report-{stem}.png", t, png) for stem, t, png in figures]
    blocks += _evaluation_section(runs)
    if any(r.training for r in runs):
        blocks += _cost_section(runs, costs, hard)
    blocks += _samples_section(runs)
    blocks += _config_section(runs)
    blocks += _system_section(runs, here)
    notes = [f"{r.label}: {n}" for r in runs for n in r.notes]
    if notes:
        blocks += [Heading("Notes"), Items(notes)]
    return blocks


# --- text from the runs ---------------------------------------------------------------------------
# Control characters (a model's output may hold any: DEL, escape sequences) and the invisible
# format characters that reorder or hide text (bidi overrides, Trojan Source, Boucher and
# Anderson 2021; zero-width spaces) are shown as escapes, in both renderings: a report shows
# what the model wrote, not what those characters would make of it.
_INVISIBLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


def visible(text: str) -> str:
    t = str(text).replace("\r\n", "\n")
    return _INVISIBLE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                          else f"\\u{ord(m.group()):04x}", t)


# --- Markdown -------------------------------------------------------------------------------------
_MD_SPECIAL = re.compile(r"([\\`*\[\]|#$~])")
# An underscore starts emphasis only at a word's edge (CommonMark), so max_steps stays readable.
_MD_EDGE_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def md_escape(text: str) -> str:
    """Plain text that a Markdown renderer shows as it is: HTML as entities (a viewer would
    render it), Markdown's markup characters backslash-escaped (no links, no emphasis, no
    breaking out of a table cell), line breaks as <br> (a table row is one line)."""
    t = html.escape(visible(text), quote=False)
    t = _MD_SPECIAL.sub(r"\\\1", t)
    t = _MD_EDGE_UNDERSCORE.sub(r"\\_", t)
    return t.replace("\n", "<br>")


def render_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append("#" * b.level + " " + md_escape(b.text))
        elif isinstance(b, Text):
            out.append(("_" + md_escape(b.text) + "_") if b.small else md_escape(b.text))
        elif isinstance(b, Items):
            out.append("\n".join("- " + md_escape(i) for i in b.items))
        elif isinstance(b, Table):
            cell = lambda v: "-" if v is None else md_escape(v)  # noqa: E731
            lines = ["| " + " | ".join(cell(h) for h in b.header) + " |", "|" + "---|" * len(b.header)]
            lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in b.rows]
            out.append("\n".join(lines))
        elif isinstance(b, Figure):
            out.append(f"![{md_escape(b.title)}]({b.file})")
        out.append("")
    return "\n".join(out)


# --- HTML -----------------------------------------------------------------------------------------
CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2330; background: #fff; margin: 0; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 1.6em; margin: 0 0 4px; }
h2 { font-size: 1.25em; margin: 32px 0 10px; border-bottom: 1px solid #d8dce4; padding-bottom: 4px; }
h3 { font-size: 1.05em; margin: 20px 0 8px; }
p.small { color: #5a6272; font-size: 0.9em; margin-top: 0; }
div.scroll { overflow-x: auto; margin: 6px 0 14px; }
table { border-collapse: collapse; font-size: 0.92em; }
th, td { border: 1px solid #d8dce4; padding: 4px 10px; text-align: left; vertical-align: top; }
thead th { background: #f2f4f8; }
tbody td:first-child { color: #3b4252; font-weight: 600; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.text td { white-space: pre-wrap; overflow-wrap: anywhere; max-width: 420px; font-weight: normal; color: inherit; }
figure { margin: 10px 0 18px; }
figure img { max-width: 100%; height: auto; border: 1px solid #e4e7ee; }
figcaption { color: #5a6272; font-size: 0.9em; }
""".strip()

# A number, with a unit at most ("2.27 s", "1,536", "$0.42"): right-aligned; anything longer reads left.
_NUMERIC = re.compile(r"^[-+$]?[\d,]*\.?\d+(e[-+]?\d+)?%?( [A-Za-zµ/]+)?$")


def _csp() -> str:
    digest = base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()
    # No script at all; images only from data: URIs; the one inline style by its hash.
    return (f"default-src 'none'; img-src data:; style-src 'sha256-{digest}'; base-uri 'none'; "
            "form-action 'none'")


def render_html(blocks: list[Block], title: str) -> str:
    e = lambda s: html.escape(visible(s), quote=True)  # noqa: E731
    body: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, Text):
            cls = ' class="small"' if b.small else ""
            body.append(f"<p{cls}>{e(b.text)}</p>")
        elif isinstance(b, Items):
            body.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{e(h)}</th>" for h in b.header)
            rows = []
            for row in b.rows:
                cells = []
                for i, v in enumerate(row):
                    text = "-" if v is None else v
                    num = not b.long_text and i > 0 and _NUMERIC.match(text) is not None
                    cells.append(f"<td class=\"num\">{e(text)}</td>" if num else f"<td>{e(text)}</td>")
                rows.append("<tr>" + "".join(cells) + "</tr>")
            cls = ' class="text"' if b.long_text else ""
            # In a scrolling box: many runs side by side widen the table, not the page.
            body.append(f"<div class=\"scroll\"><table{cls}><thead><tr>{head}</tr></thead>"
                        f"<tbody>{''.join(rows)}</tbody></table></div>")
        elif isinstance(b, Figure):
            data = base64.b64encode(b.png).decode()
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{e(b.title)}">'
                        f"<figcaption>{e(b.title)} ({e(b.file)})</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_csp()}\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{e(title)}</title>\n<link rel=\"icon\" href=\"data:,\">\n<style>{CSS}</style>\n</head>\n"
            "<body>\n<main>\n" + "\n".join(body) + "\n</main>\n</body>\n</html>\n")
