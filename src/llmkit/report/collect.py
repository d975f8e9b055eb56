"""Reading one run folder of any stage into a `RunData`: what a report card shows about it.

What a folder holds tells its stage (nothing else records it):

    results.json (format llmkit-eval)          evaluate      `llmkit evaluate --out DIR`
    summary.json and/or metrics.csv            a training run (recipes/scaffold.py), then by
      final/classifier.json  "llmkit-classifier"   classify
                             "llmkit-tagger"       ner
                             "llmkit-qa"           qa
      final/embedding.json                     embed
      reference_logps.safetensors, or DPO's reward_margin rows in metrics.csv      dpo
      summary.json with prompt_style           finetune (instructions)
      summary.json of an encoder-decoder with a prefix                             finetune (seq2seq)
      otherwise                                pretrain (from scratch or continued)

and the rest comes from the files every training run writes: metrics.csv (long format:
step, tokens, metric, value; training/logger.py), the newest checkpoint's trainer_state.json
(the loop's settings, the training seconds, the world size, the data position with its
sequence length), final/config.json (the architecture), samples.jsonl (finetuning, quickstart:
{step, prompt|source, response|output, reference}) and system.json (the machine, written when
the run finished; report/system.py).

Nothing here loads weights: parameter counts come from the config (meta device).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from llmkit.errors import LLMKitError, read_json

METRICS_CSV = "metrics.csv"
SAMPLES_JSONL = "samples.jsonl"
MAX_SAMPLES = 5  # prompts shown per run: enough to see what the loss means, short enough to read
MAX_SAMPLE_CHARS = 1200

# Summary fields that are not settings (the counters and paths the report shows elsewhere).
_NOT_SETTINGS = {"step", "steps", "tokens", "checkpoint", "final", "loss", "train_loss"}


@dataclass
class RunData:
    """What a report card shows about one run folder."""

    path: Path
    stage: str
    label: str = ""
    method: Optional[str] = None  # full, lora, freeze (training runs)
    model: dict = field(default_factory=dict)  # name, kind, parameters, layers, width, ...
    train: dict = field(default_factory=dict)  # the loop's settings (TrainConfig fields)
    settings: dict = field(default_factory=dict)  # the recipe's own settings (summary.json; evaluate's)
    steps: Optional[int] = None
    tokens: Optional[int] = None
    seconds: Optional[float] = None  # training time: the loop's step time, evaluation excluded
    world: int = 1  # processes (devices) the run trained on
    seq_len: Optional[int] = None
    series: dict[str, dict[int, float]] = field(default_factory=dict)  # metric -> {step: value}
    mfu: Optional[float] = None  # median of the logged rows (what `llmkit plan --run` uses)
    mfu_rows: int = 0
    metrics: dict[str, float] = field(default_factory=dict)  # the run's final numbers (val_*, test_*)
    evaluation: Optional[dict] = None  # a results.json
    samples: list[dict] = field(default_factory=list)  # {prompt, before, after, reference}
    sample_steps: tuple[Optional[int], Optional[int]] = (None, None)
    system: Optional[dict] = None
    flops_per_token: Optional[float] = None
    precision: Optional[str] = None
    notes: list[str] = field(default_factory=list)

    @property
    def training(self) -> bool:
        return self.stage != "evaluate"

    @property
    def tokens_per_sec(self) -> Optional[float]:
        if self.tokens and self.seconds:
            return self.tokens / self.seconds
        return None

    @property
    def flops(self) -> Optional[float]:
        """Training FLOPs as the loop counts them for MFU: tokens trained x FLOPs per token."""
        if self.tokens and self.flops_per_token:
            return self.tokens * self.flops_per_token
        return None

    def last(self, metric: str) -> Optional[float]:
        pts = self.series.get(metric)
        return pts[max(pts)] if pts else None

    def best(self, metric: str) -> Optional[float]:
        pts = [v for v in (self.series.get(metric) or {}).values() if math.isfinite(v)]
        return min(pts) if pts else None


# --- which folders --------------------------------------------------------------------------------
def is_run_dir(path: Path) -> bool:
    from llmkit.checkpoint import SUMMARY
    from llmkit.evaluate.report import RESULTS_JSON

    return any((path / f).is_file() for f in (SUMMARY, METRICS_CSV, RESULTS_JSON))


def _finished_at(run: Path) -> tuple[float, str]:
    """When a run ended: its summary.json or results.json (written last), else metrics.csv."""
    from llmkit.checkpoint import SUMMARY
    from llmkit.evaluate.report import RESULTS_JSON

    for name in (SUMMARY, RESULTS_JSON, METRICS_CSV):
        if (run / name).is_file():
            return (run / name).stat().st_mtime, run.name
    return 0.0, run.name


def resolve_runs(paths: list[str]) -> list[Path]:
    """The run folders the arguments name, in order. A folder that is no run but holds runs one
    level down (quickstart's OUT with OUT/run; a cycle's OUT with a folder per stage; `llmkit
    evaluate --out DIR` of several models) stands for those runs, in the order they finished
    (the stages' order); its other folders (a tokenizer, prepared data) are passed over."""
    if not paths:
        raise LLMKitError("give at least one run folder (a training run's --out or `llmkit evaluate --out` folder)")
    found: list[Path] = []
    for text in paths:
        p = Path(text).expanduser()
        if not p.exists():
            raise LLMKitError(f"{text}: no such folder")
        if not p.is_dir():
            raise LLMKitError(f"{text}: not a folder (give a run's output folder, e.g. out/pretrain)")
        if is_run_dir(p):
            found.append(p)
            continue
        inner = sorted((d for d in p.iterdir() if d.is_dir() and is_run_dir(d)), key=_finished_at)
        if not inner:
            raise LLMKitError(f"{text}: not an llmkit run folder (no summary.json, metrics.csv or results.json "
                              "in it or in its subfolders)")
        found += inner
    seen: set = set()
    unique = []
    for p in found:  # the same folder twice (a glob and its parent) is one column
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def labels_for(paths: list[Path]) -> list[str]:
    """Column names: each folder's name; where two are equal, more of their paths (a/run, b/run)."""
    labels = [p.name or str(p) for p in paths]
    for depth in (2, 3):
        dup = {lab for lab in labels if labels.count(lab) > 1}
        if not dup:
            break
        labels = ["/".join(p.resolve().parts[-depth:]) if lab in dup else lab for p, lab in zip(paths, labels)]
    return [lab if labels.count(lab) == 1 else f"{lab} ({i + 1})" for i, lab in enumerate(labels)]


# --- reading --------------------------------------------------------------------------------------
def read_metrics(path: Path) -> dict[str, dict[int, float]]:
    """metrics.csv as {metric: {step: value}} (a resumed run logs each step once: logger.py)."""
    series: dict[str, dict[int, float]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"step", "metric", "value"} <= set(reader.fieldnames):
                raise LLMKitError(f"{path}: not an llmkit metrics file (expected the columns step, tokens, metric, "
                                  f"value; got {', '.join(reader.fieldnames or []) or 'nothing'})")
            for n, row in enumerate(reader, start=2):
                try:
                    series.setdefault(row["metric"], {})[int(row["step"])] = float(row["value"])
                except (TypeError, ValueError):
                    raise LLMKitError(f"{path}, line {n}: not a step and a number ({row})") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise LLMKitError(f"{path}: unreadable ({e.__class__.__name__}: {e})") from None
    return series


def _read_object(path: Path) -> dict:
    data = read_json(path)
    if not isinstance(data, dict):
        raise LLMKitError(f"{path}: expected a JSON object")
    return data


def _scalar(v) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _model_fields(cfg, params: Optional[int] = None) -> dict:
    """The architecture as the report shows it (the fields that decide cost and quality)."""
    from llmkit.model import count_params

    d = {"name": cfg.name, "kind": cfg.kind, "parameters": params if params is not None else count_params(cfg),
         "layers": f"{cfg.n_encoder_layer}+{cfg.n_layer}" if cfg.is_seq2seq else cfg.n_layer,
         "d_model": cfg.n_embd, "heads": cfg.n_head, "kv_heads": cfg.kv_heads, "head_dim": cfg.head_size,
         "ffn": cfg.ffn_size, "mlp": cfg.mlp, "norm": cfg.norm, "vocab_size": cfg.vocab_size,
         "context": cfg.block_size, "tie_embeddings": cfg.tie_embeddings}
    return d


def _final_config(run: Path, notes: list[str]):
    """(ModelConfig or None, adapter config or None) of the run's final/ model."""
    from llmkit.checkpoint import read_adapter_config, read_config

    final = run / "final"
    if not final.is_dir():
        notes.append("no final/ model (the run did not finish, or it was moved): the architecture is unknown")
        return None, None
    adapter = None
    try:
        adapter = read_adapter_config(final)
    except LLMKitError as e:
        notes.append(str(e))
    if adapter is not None:
        base = Path(str(adapter["base_model"])).expanduser()
        # A hub id is not downloaded for a report: a local base only.
        for d in (base, base / "final"):
            if (d / "config.json").is_file():
                try:
                    return read_config(d)[0], adapter
                except LLMKitError as e:
                    notes.append(str(e))
                    return None, adapter
        notes.append(f"LoRA adapter over {adapter['base_model']} (not a local folder): the architecture is unknown")
        return None, adapter
    try:
        return read_config(final)[0], None
    except LLMKitError as e:
        notes.append(str(e))
        return None, None


def _stage(run: Path, summary: dict, series: dict) -> str:
    from llmkit.checkpoint import CLASSIFIER, REFERENCE_LOGPS

    final = run / "final"
    meta = None
    if (final / CLASSIFIER).is_file():
        try:
            meta = read_json(final / CLASSIFIER)
        except LLMKitError:
            meta = None
    kind = (meta or {}).get("format") if isinstance(meta, dict) else None
    if kind == "llmkit-tagger":
        return "ner"
    if kind == "llmkit-qa":
        return "qa"
    if kind == "llmkit-classifier" or meta is not None:
        return "classify"
    if (final / "embedding.json").is_file() or "retrieval" in summary:
        return "embed"
    if (run / REFERENCE_LOGPS).is_file() or "reward_margin" in series:
        return "dpo"
    if "prompt_style" in summary:
        return "finetune"
    if summary.get("kind") == "encoder-decoder" and "prefix" in summary:
        return "finetune (seq2seq)"
    return "pretrain"


def _samples(run: Path, notes: list[str]) -> tuple[list[dict], tuple]:
    """{prompt, before, after, reference} per prompt of samples.jsonl: the output at the first
    step it was sampled and at the last (finetune samples at every evaluation)."""
    path = run / SAMPLES_JSONL
    if not path.is_file():
        return [], (None, None)
    by_prompt: dict[str, dict[int, dict]] = {}
    bad = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            step = int(rec.get("step", 0))
            prompt = rec.get("prompt", rec.get("source"))
            output = rec.get("response", rec.get("output"))
            if not isinstance(prompt, str) or not isinstance(output, str):
                raise ValueError
        except (ValueError, TypeError, AttributeError):
            bad += 1  # a line cut by a crash mid-append: the others still tell the story
            continue
        by_prompt.setdefault(prompt, {})[step] = {"output": output, "reference": rec.get("reference")}
    if bad:
        notes.append(f"{path}: {bad} unreadable line(s) skipped")
    steps = sorted({s for d in by_prompt.values() for s in d})
    if not steps:
        return [], (None, None)
    first, last = steps[0], steps[-1]
    rows = []
    for prompt, at in list(by_prompt.items())[:MAX_SAMPLES]:
        before = at.get(first) if first != last else None
        after = at.get(last)
        ref = next((r["reference"] for r in at.values() if isinstance(r.get("reference"), str)), None)
        rows.append({"prompt": _cut(prompt), "before": _cut(before["output"]) if before else None,
                     "after": _cut(after["output"]) if after else None, "reference": _cut(ref) if ref else None})
    return rows, (first if first != last else None, last)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_SAMPLE_CHARS else text[:MAX_SAMPLE_CHARS] + " [...]"


def _seq_len(state: dict, summary: dict, steps, tokens, train: dict, world: int) -> Optional[int]:
    """The training sequence length: the data position's (pretraining windows), the recipe's
    max_seq_len, or tokens per step / sequences per step when that divides exactly."""
    data = state.get("data") if isinstance(state.get("data"), dict) else {}
    for v in (data.get("seq_len"), summary.get("max_seq_len"), summary.get("max_source_len")):
        if _number(v) and v > 0:
            return int(v)
    try:
        seqs = int(train["micro_batch_size"]) * int(train["grad_accum"]) * world * int(steps)
        if seqs and tokens and tokens % seqs == 0:
            return tokens // seqs
    except (KeyError, TypeError, ValueError):
        pass
    return None


def collect_training(run: Path) -> RunData:
    from llmkit.checkpoint import SUMMARY, TRAINER_STATE, find_latest

    notes: list[str] = []
    summary = _read_object(run / SUMMARY) if (run / SUMMARY).is_file() else {}
    if not summary:
        notes.append("no summary.json: the run did not finish (numbers up to its last logged step)")
    series = read_metrics(run / METRICS_CSV) if (run / METRICS_CSV).is_file() else {}
    state: dict = {}
    latest = find_latest(run)
    if latest is not None:
        try:
            state = _read_object(latest / TRAINER_STATE)
        except LLMKitError as e:
            notes.append(str(e))
    else:
        notes.append("no checkpoint with a trainer state: the loop settings and training time are unknown")
    cfg, adapter = _final_config(run, notes)
    stage = _stage(run, summary, series)
    train = state.get("config") if isinstance(state.get("config"), dict) else {}
    world = int(state.get("world") or 1)
    steps = summary.get("step", summary.get("steps", state.get("step")))
    if steps is None and series:
        steps = max(max(pts) for pts in series.values())
    tokens = summary.get("tokens", state.get("tokens"))
    seconds = state.get("elapsed")
    if seconds is None and _number(summary.get("step_time_s")) and steps:
        seconds = summary["step_time_s"] * steps
    method = summary.get("method") or ("lora" if adapter is not None else None)
    if method is None and stage == "pretrain":
        method = "full"

    data = RunData(path=run, stage=stage, method=method, train=dict(train), world=world,
                   steps=int(steps) if _number(steps) else None, tokens=int(tokens) if _number(tokens) else None,
                   seconds=float(seconds) if _number(seconds) else None, series=series, notes=notes,
                   precision=train.get("precision"))
    # The recipe's own settings and final numbers, from summary.json (one level of nesting:
    # finetune's train_examples.kept, ...).
    for key, value in summary.items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, v in items:
            name = f"{key}.{sub}" if sub is not None else key
            if not _scalar(v) or key in _NOT_SETTINGS:
                continue
            if sub is None and _number(v) and key.startswith(("val_", "test_")):
                data.metrics[name] = float(v)
            else:
                data.settings[name] = v
    if adapter is not None:
        lora = adapter.get("lora") or {}
        data.settings.setdefault("base_model", adapter.get("base_model"))
        for k in ("r", "alpha", "targets"):
            if k in lora:
                data.settings[f"lora.{k}"] = ", ".join(map(str, lora[k])) if isinstance(lora[k], list) else lora[k]
    if cfg is not None:
        params = summary.get("params") if _number(summary.get("params")) else None
        data.model = _model_fields(cfg, params)
        data.seq_len = _seq_len(state, summary, data.steps, data.tokens, train, world)
        T = data.seq_len or cfg.block_size
        if data.seq_len is None:
            notes.append(f"sequence length not recorded: FLOPs counted at the model's context ({T})")
        fpt = cfg.flops_per_token(T)
        if method not in (None, "full"):
            # Frozen weights get no weight gradient: 2 of their 6 FLOPs per token fall away
            # (plan.py counts LoRA and frozen layers the same way).
            trainable = summary.get("trainable_params")
            if _number(trainable):
                frozen = max(0, cfg.n_params_estimate(exclude_embeddings=True) - int(trainable))
                fpt -= 2 * frozen
            else:
                notes.append(f"{method}: the trainable parameter count is not recorded; FLOPs counted as full training")
        data.flops_per_token = fpt
        if summary.get("mask_prompt") or stage == "finetune (seq2seq)":
            notes.append("FLOPs count the target tokens the loss trains on, as the loop's MFU does; the prompts' "
                         "(sources') forward and backward passes come on top")
    if "mfu" in series:
        from llmkit.plan import run_mfu

        try:  # the same median `llmkit plan --run` takes, so the two agree
            data.mfu, data.mfu_rows = run_mfu(str(run))
        except LLMKitError:
            pass
    data.samples, data.sample_steps = _samples(run, notes)
    from llmkit.evaluate.report import RESULTS_JSON

    if (run / RESULTS_JSON).is_file():
        data.evaluation = _evaluation(run)
    data.system = _system(run, notes)
    return data


def _evaluation(run: Path) -> dict:
    from llmkit.evaluate.report import load_result

    return load_result(run)


def _system(run: Path, notes: list[str]) -> Optional[dict]:
    from llmkit.report.system import SYSTEM_JSON

    path = run / SYSTEM_JSON
    if not path.is_file():
        return None
    try:
        return _read_object(path)
    except LLMKitError as e:
        notes.append(str(e))
        return None


def collect_evaluation(run: Path) -> RunData:
    """An `llmkit evaluate --out` folder: its results.json and the first responses."""
    from llmkit.evaluate.generative import RESPONSES_FILE

    notes: list[str] = []
    result = _evaluation(run)
    info = result.get("model_info") if isinstance(result.get("model_info"), dict) else {}
    model = {"name": result.get("model") or result.get("model_name")}
    for key, shown in (("kind", "format"), ("parameters", "parameters"), ("context", "context"),
                       ("dtype", "dtype"), ("device", "device")):
        if info.get(key) is not None:  # model_info's kind is the checkpoint's format (llmkit, hf)
            model[shown] = info[key]
    seconds = result.get("seconds") if isinstance(result.get("seconds"), dict) else {}
    settings = {k: (" ".join(map(str, v)) if isinstance(v, (list, tuple)) else v)
                for k, v in (result.get("settings") or {}).items()}
    if result.get("date"):
        settings = {"date": result["date"], **settings}
    ppl = (result.get("perplexity") or {}).get("overall") or {}
    data = RunData(path=run, stage="evaluate", model=model, settings=settings, evaluation=result, notes=notes,
                   seconds=float(sum(v for v in seconds.values() if _number(v))) if seconds else None,
                   tokens=int(ppl["tokens"]) if _number(ppl.get("tokens")) else None)
    path = run / RESPONSES_FILE
    if path.is_file():
        rows, bad = [], 0
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if len(rows) >= MAX_SAMPLES:
                break
            try:
                rec = json.loads(line)
                if "response" in rec:  # generative: output is the reference, response the model's
                    prompt = rec["instruction"] + (f"\n\n{rec['input']}" if rec.get("input") else "")
                    out, ref = rec["response"], rec.get("output")
                else:  # seq2seq: source -> output, with references
                    prompt, out = rec["source"], rec["output"]
                    refs = rec.get("references") or [rec.get("reference")]
                    ref = refs[0] if refs else None
                rows.append({"prompt": _cut(str(prompt)), "before": None, "after": _cut(str(out)),
                             "reference": _cut(str(ref)) if ref is not None else None})
            except (ValueError, TypeError, KeyError, AttributeError):
                bad += 1
        if bad:
            notes.append(f"{path}: {bad} unreadable line(s) skipped")
        data.samples = rows
    data.system = _system(run, notes)
    return data


def collect_run(path: str | Path) -> RunData:
    """The RunData of one run folder (see resolve_runs for which folders are runs)."""
    from llmkit.checkpoint import SUMMARY

    run = Path(path)
    if not run.is_dir():
        raise LLMKitError(f"{path}: no such folder")
    if (run / SUMMARY).is_file() or (run / METRICS_CSV).is_file():
        return collect_training(run)
    if is_run_dir(run):
        return collect_evaluation(run)
    raise LLMKitError(f"{path}: not an llmkit run folder (no summary.json, metrics.csv or results.json)")


def collect(paths: list[str]) -> list[RunData]:
    """Every run the arguments name, labelled for the report's columns."""
    dirs = resolve_runs(paths)
    runs = [collect_run(d) for d in dirs]
    for r, label in zip(runs, labels_for(dirs)):
        r.label = label
    return runs
