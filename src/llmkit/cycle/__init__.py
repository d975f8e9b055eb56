"""`llmkit run CYCLE.yaml`: the stages of a cycle from one file, each cached under a key.

The file (cycle/spec.py has the format) names the stages in order: curate, tokenizer, prepare,
pretrain, finetune, classify, dpo, evaluate, serve, or any other llmkit command, with the
command's own options. Everything is validated first; then each stage runs in this process,
in order, or is skipped:

    skip      its folder holds a finished run with the same key (cycle/state.py: command,
              settings, the keys of the stages it uses, fingerprints of its input files) made
              from the current outputs of the stages it uses
    run       never run, a setting or input changed, a stage it uses runs now or was rerun
              since, or --force: its folder is emptied and it starts fresh
    resume    a training stage that was interrupted (killed, stopped, failed) with the same key:
              it reruns in the same folder and the training loop continues from its last
              checkpoint (`resume: auto`, the default of every training recipe), which
              reproduces the uninterrupted run exactly on CPU. Other stages restart.

`serve`, the last stage if there is one, is not cached: it runs in the foreground until stopped,
after the report card. OUT/cycle.json records the last run's plan and timings.
"""

from __future__ import annotations

import gc
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from llmkit.cycle.spec import Cycle, Stage, canonical, load_cycle
from llmkit.cycle.state import (STATE, Lock, changes, fingerprint, new_run_id, now, read_state, stage_key,
                                write_state)
from llmkit.errors import LLMKitError

__all__ = ["run_cycle", "load_cycle", "plan_cycle"]


@dataclass
class Step:
    stage: Stage
    action: str            # run, resume, skip, always, not selected, not reached
    why: str
    key: Optional[str]
    settings: dict
    fingerprints: dict
    state: Optional[dict]

    @property
    def runs(self) -> bool:
        return self.action in ("run", "resume", "always")


def _fmt(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def _names(cycle: Cycle, given: Optional[list[str]], option: str) -> list[str]:
    names = [s.name for s in cycle.stages]
    for n in given or []:
        if n not in names:
            from llmkit.cycle.spec import _close

            raise LLMKitError(f"{option} {n}: {cycle.path} has no stage '{n}'{_close(n, names)}; stages: {', '.join(names)}")
    return list(given or [])


def _why_changed(state: dict, settings: dict, fingerprints: dict, dep_keys: dict) -> str:
    """What differs from the finished run: settings, input files, a stage it uses, llmkit."""
    diff = changes(state.get("settings") or {}, settings)
    if diff:
        return "changed: " + "; ".join(diff[:3]) + (f" (+{len(diff) - 3} more)" if len(diff) > 3 else "")
    old_inputs = state.get("fingerprints") or {}
    moved = [p for p in sorted(set(old_inputs) | set(fingerprints)) if old_inputs.get(p) != fingerprints.get(p)]
    if moved:
        return "input changed: " + ", ".join(moved[:3])
    old_deps = state.get("dep_keys") or {}
    deps = [d for d in dep_keys if old_deps.get(d) != dep_keys[d]]
    if deps:
        return "changed upstream: " + ", ".join(deps)
    return "its key changed (command or llmkit version)"


def plan_cycle(cycle: Cycle, force: Optional[list[str]] = None, only: Optional[list[str]] = None,
               until: Optional[str] = None) -> list[Step]:
    """What each stage would do now, and why; raises (before anything runs) where a stage
    selected by --only needs a stage that is not done, or a folder to replace is not the cycle's."""
    force = _names(cycle, force, "--force")
    only = _names(cycle, only, "--only")
    until_names = _names(cycle, [until] if until else None, "--until")
    steps: list[Step] = []
    keys: dict[str, Optional[str]] = {}
    run_ids: dict[str, Optional[str]] = {}  # the run of each stage its dependents would use
    will_run: set[str] = set()
    reached_until = False
    for stage in cycle.stages:
        settings = canonical(stage, cycle)
        fingerprints = {p: fingerprint(p) for p in stage.inputs}
        dep_keys = {d: keys[d] for d in stage.deps}
        key = None if stage.out is None else stage_key(stage.command, settings, dep_keys, fingerprints)
        keys[stage.name] = key
        state = read_state(stage.out)
        selected = (not only or stage.name in only) and not reached_until
        if until_names and stage.name == until_names[0]:
            reached_until = True

        # Why it must run (None: it need not).
        resume = False
        if stage.out is None:
            need = "serves until stopped (not cached)" if stage.serves else "writes no folder: runs every time"
        elif stage.name in force:
            need = "forced (--force)"
        elif state is None:
            need = "not run yet"
        elif state["key"] != key:
            need = _why_changed(state, settings, fingerprints, dep_keys)
        elif any(d in will_run for d in stage.deps):
            need = "uses " + ", ".join(d for d in stage.deps if d in will_run) + ", which runs now"
        elif any((state.get("inputs") or {}).get(d) != run_ids.get(d) for d in stage.deps):
            need = ", ".join(d for d in stage.deps if (state.get("inputs") or {}).get(d) != run_ids.get(d)) \
                + " ran again since"
        elif state["status"] != "done":
            resume = stage.resumes
            need = ("interrupted: resumes from its last checkpoint" if resume
                    else "interrupted: restarts" + (" (resume is off)" if stage.trains else ""))
        elif stage.model is not None and not stage.model.exists():
            need = f"its model {stage.model} is missing"
        else:
            need = None

        if need is None:
            action, why = "skip", f"done, unchanged; took {_fmt(float(state.get('seconds') or 0))}"
        elif not selected:
            action, why = ("not reached" if reached_until and stage.name not in until_names else "not selected"), need
        else:
            action, why = ("always" if stage.out is None else "resume" if resume else "run"), need
            will_run.add(stage.name)
        if need is not None and not selected and only:
            # A stage --only selects would read this one's missing or stale outputs.
            users = [later.name for later in cycle.stages if stage.name in later.deps and later.name in only]
            if users:
                raise LLMKitError(f"--only {users[0]}: it uses stage '{stage.name}', which needs to run ({need}): "
                                  "run it first, or add it to --only")
        if action in ("run", "resume") and state is None and stage.out.exists() and any(stage.out.iterdir()):
            raise LLMKitError(f"{cycle.path}: {stage.label}: its folder {stage.out} holds files that `llmkit run` did "
                              f"not write (no {STATE}): remove it or give the stage another out")
        run_ids[stage.name] = None if stage.name in will_run else (state or {}).get("run_id")
        steps.append(Step(stage, action, why, key, settings, fingerprints, state))
    return steps


def _print_plan(cycle: Cycle, steps: list[Step]) -> None:
    width = max(len(s.stage.name) for s in steps)
    cwidth = max(len(s.stage.command) for s in steps)
    print(f"cycle {cycle.path}: {len(steps)} stages in {cycle.out}", flush=True)
    for i, s in enumerate(steps, 1):
        print(f"  {i:>2} {s.stage.name:<{width}}  {s.stage.command:<{cwidth}}  {s.action:<12} {s.why}", flush=True)


def _run_step(cycle: Cycle, steps: list[Step], i: int, run_ids: dict) -> float:
    step = steps[i]
    stage, n = step.stage, len(steps)
    tag = f"[{i + 1}/{n}] {stage.name}"
    print(f"{tag} ({stage.command}): {'resume' if step.action == 'resume' else 'start'} ({step.why})", flush=True)
    t0 = time.monotonic()
    if stage.out is not None:
        if step.action == "run" and stage.out.exists():
            shutil.rmtree(stage.out)  # a fresh start: no checkpoint or partial output of another key
        stage.out.mkdir(parents=True, exist_ok=True)
        record = {"key": step.key, "status": "running", "command": stage.command, "settings": step.settings,
                  "fingerprints": step.fingerprints,
                  "dep_keys": {d: s.key for d in stage.deps for s in steps if s.stage.name == d},
                  "inputs": {d: run_ids.get(d) for d in stage.deps}, "started": now()}
        write_state(stage.out, record)
    try:
        stage.fn(**stage.kwargs)
    except LLMKitError as e:
        again = "resumes it" if stage.resumes else "runs it again"
        raise LLMKitError(f"{stage.label} failed after {_fmt(time.monotonic() - t0)}: {e} "
                          f"(fix it and rerun: `llmkit run {cycle.path}` {again})") from None
    except (SystemExit, KeyboardInterrupt):
        # The training loop saves a checkpoint on SIGINT/SIGTERM and exits 128 + signal.
        later = "resumes it from its checkpoint" if stage.resumes else "restarts it"
        print(f"{tag}: stopped after {_fmt(time.monotonic() - t0)}; `llmkit run {cycle.path}` {later}", flush=True)
        raise
    seconds = time.monotonic() - t0
    if stage.out is not None:
        record.update(status="done", run_id=new_run_id(), finished=now(), seconds=round(seconds, 2))
        write_state(stage.out, record)
        run_ids[stage.name] = record["run_id"]
    print(f"{tag}: finished in {_fmt(seconds)}", flush=True)
    gc.collect()  # the stage's model and data, before the next stage loads its own
    return seconds


def _write_report(cycle: Cycle) -> Optional[str]:
    """The report card of the cycle's stage folders, by llmkit.report (imported only now: the
    cycle runs without it, and says so)."""
    import inspect

    try:
        from llmkit import report as report_module
    except ImportError as e:
        print(f"report: skipped (llmkit.report cannot be imported: {e})", flush=True)
        return None
    fn = getattr(report_module, "report", None)
    if fn is None:
        print("report: skipped (llmkit.report has no report function)", flush=True)
        return None
    # The runs a card describes: training stages and evaluations (a tokenizer or token shards
    # have no curves or scores), the finished ones.
    runs = [str(s.out) for s in cycle.stages if s.out is not None and (s.trains or s.words == ["evaluate"])
            and (read_state(s.out) or {}).get("status") == "done"]
    if not runs:
        return None
    params = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in (("out", str(cycle.out / "report")), ("title", f"cycle {cycle.path.stem}"))
              if k in params}
    try:
        written = fn(runs, **kwargs)
    except LLMKitError as e:  # the stages are done and cached: say so, do not fail the cycle for it
        print(f"report: not written ({e})", flush=True)
        return None
    if isinstance(written, dict):
        written = written.get("markdown") or written.get("html") or kwargs.get("out")
    return str(written or kwargs.get("out", ""))


def run_cycle(cycle: str, out: Optional[str] = None, dry_run: bool = False, force: Optional[list[str]] = None,
              only: Optional[list[str]] = None, until: Optional[str] = None, override: Optional[list[str]] = None,
              report: bool = True) -> dict:
    """Run a whole cycle from one file: each stage skipped when done and unchanged, resumed when interrupted.

    Examples:
        llmkit run configs/cycle/default.yaml
        llmkit run configs/cycle/default.yaml --dry-run
        llmkit run CYCLE.yaml --override pretrain.max_steps=800 --until pretrain
        llmkit run CYCLE.yaml --force evaluate

    Args:
        cycle: the cycle file: `out:` and `stages:` (name: {command options}), in run order;
            `${stage}` is a stage's folder and `${stage.model}` its model (see configs/cycle/).
        out: the cycle's folder instead of the file's `out`.
        dry_run: print what each stage would do and why, run nothing.
        force: stages to run again from scratch even if done (the stages after them that use
            them run again too).
        only: run only these stages (the stages they use must be done and unchanged).
        until: stop after this stage.
        override: STAGE.KEY=VALUE settings that replace the file's (VALUE read as YAML), e.g.
            pretrain.max_steps=100 or finetune.model=out/quickstart/run/final.
        report: write the report card (llmkit.report) of the stages' folders at the end.
    """
    t_start = time.monotonic()
    spec = load_cycle(cycle, out, override)
    steps = plan_cycle(spec, force, only, until)
    _print_plan(spec, steps)
    summary = {"cycle": str(spec.path), "out": str(spec.out),
               "stages": {s.stage.name: {"command": s.stage.command, "action": s.action, "why": s.why, "key": s.key,
                                         "out": str(s.stage.out) if s.stage.out else None,
                                         "model": str(s.stage.model) if s.stage.model else None}
                          for s in steps}}
    if dry_run:
        return summary
    ran = skipped = 0
    with Lock(spec.out):
        run_ids = {s.stage.name: (s.state or {}).get("run_id") for s in steps}
        for i, step in enumerate(steps):
            entry = summary["stages"][step.stage.name]
            if step.stage.serves:
                break  # after the report: it does not return
            if step.action == "skip":
                print(f"[{i + 1}/{len(steps)}] {step.stage.name}: skip ({step.why})", flush=True)
                entry["seconds"] = (step.state or {}).get("seconds")
                skipped += 1
            elif step.runs:
                entry["seconds"] = round(_run_step(spec, steps, i, run_ids), 2)
                ran += 1
            else:
                print(f"[{i + 1}/{len(steps)}] {step.stage.name}: {step.action} ({step.why})", flush=True)
        total = time.monotonic() - t_start
        summary.update(seconds=round(total, 2), finished=now())
        record = spec.out / "cycle.json"
        if ran or not record.exists():
            from llmkit.fileio import atomic_write_text

            atomic_write_text(record, json.dumps(summary, indent=2) + "\n")
            if report:
                summary["report"] = _write_report(spec)
        print(f"cycle done in {_fmt(total)}: {ran} ran, {skipped} skipped; {record}", flush=True)
    serve = next((i for i, s in enumerate(steps) if s.stage.serves and s.runs), None)
    if serve is not None:
        _run_step(spec, steps, serve, {})
    return summary
