"""Tasks and executors of the data commands (`llmkit data curate`, `llmkit data prepare`).

A command's work is cut into **tasks** that depend on the input only, never on how many workers
run them: one per file, or one per ~`task_mb` part of a large uncompressed JSONL file (cut at
line starts) or Parquet file (whole row groups). Each task writes its results to files of its
own, atomically; a step that needs every document (de-duplication, the validation split) then
reads those results in task order. So the output is the same bytes whatever runs the tasks.

The tasks run on **datatrove's executors** (Penedo et al. 2024, the FineWeb pipeline), not on a
scheduler of ours:

* `local` (the default): `LocalPipelineExecutor`, `workers` processes on this machine, no
  service to start. One worker runs the tasks in this process.
* `ray`: `RayPipelineExecutor` on a Ray cluster: the one `RAY_ADDRESS` names, one already
  `ray.init()`-ed in this process, or else a local one started for the run. The work folder
  must then be on a file system every node sees (the output folder, by default).

Both record a completion marker per finished task in the work folder (`OUT/.llmkit-work`), so
an interrupted run started again with the same settings runs only the tasks that had not
finished. Each task reports its progress to a small file that this process sums into one bar
(documents/s and MB/s).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Literal, Optional

from llmkit.data import COMPRESSIONS, expand_sources, file_format
from llmkit.errors import LLMKitError

Executor = Literal["local", "ray"]
EXECUTORS = ("local", "ray")
WORK_DIR = ".llmkit-work"
# MB of a large file per task: small enough that 2-16 workers share a 100 MB file evenly, large
# enough that a task's start-up (a tokenizer or a model loaded once per process) is noise.
TASK_MB = 16.0


@dataclass(frozen=True)
class Task:
    """One unit of work: a whole file, or `part` = (start, end, first line or row) of one."""

    index: int
    source: str  # the source argument the file came from
    path: str
    part: Optional[tuple[int, int, int]]
    size: int  # bytes of input (uncompressed when known), for the progress bar


def _line_parts(path: Path, task_bytes: int) -> list[tuple[int, int, int]]:
    """Byte ranges of at most about `task_bytes`, of equal size (so workers finish together),
    starting at line starts, with their first line numbers."""
    size = path.stat().st_size
    n = -(-size // task_bytes)
    cuts = [0]
    with open(path, "rb") as f:
        for target in (round(k * size / n) for k in range(1, n)):
            if target <= cuts[-1]:
                continue
            f.seek(target - 1)
            f.readline()  # to the end of the line holding byte target - 1
            pos = f.tell()
            if pos >= size:
                break
            if pos > cuts[-1]:
                cuts.append(pos)
        cuts.append(size)
        parts, line = [], 1
        for a, b in zip(cuts[:-1], cuts[1:]):
            parts.append((a, b, line))
            f.seek(a)
            left = b - a
            while left > 0:  # count the lines of the range to number the next one
                block = f.read(min(left, 1 << 22))
                line += block.count(b"\n")
                left -= len(block)
    return parts


def _parquet_parts(path: Path, task_bytes: int) -> list[tuple[int, int, int]]:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise LLMKitError(f"cannot read Parquet file '{path}': {e}") from None
    total = sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
    target = total / max(1, -(-total // task_bytes))  # equal parts of at most about task_bytes
    parts, start, row, first_row, size = [], 0, 0, 0, 0
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        size += rg.total_byte_size
        row += rg.num_rows
        if size >= target or g == meta.num_row_groups - 1:
            parts.append((start, g + 1, first_row))
            start, first_row, size = g + 1, row, 0
    return parts or [(0, 0, 0)]


def uncompressed_size(path: Path) -> int:
    """A file's size; a .gz file's from its trailer (ISIZE, the length mod 2**32, as gzip -l
    reads it)."""
    size = path.stat().st_size
    if path.suffix.lower() == ".gz" and size >= 18:
        with open(path, "rb") as fh:
            fh.seek(-4, 2)
            size = int.from_bytes(fh.read(4), "little")
    return size


def plan_tasks(sources: list[str], task_mb: float = TASK_MB) -> list[Task]:
    """The tasks of `sources` in reading order (see the module docstring)."""
    if task_mb <= 0:
        raise LLMKitError(f"task_mb must be > 0, got {task_mb}")
    task_bytes = max(1, int(task_mb * 1e6))
    tasks: list[Task] = []
    for src, path in expand_sources(sources):
        fmt = file_format(path)
        size = path.stat().st_size
        compressed = path.suffix.lower() in COMPRESSIONS
        parts: list[Optional[tuple[int, int, int]]] = [None]
        if fmt == "jsonl" and not compressed and size > task_bytes:
            parts = list(_line_parts(path, task_bytes))
        elif fmt == "parquet" and size > task_bytes:
            parts = list(_parquet_parts(path, task_bytes))
        size = uncompressed_size(path)
        for part in parts:
            if part is None:
                share = size
            elif fmt == "jsonl":
                share = part[1] - part[0]
            else:  # row groups: an equal share of the file
                share = size // len(parts)
            tasks.append(Task(len(tasks), src, str(path), part, share))
    return tasks


def fingerprint(tasks: list[Task], settings: dict) -> str:
    """A digest of the inputs (paths, sizes, modification times) and the settings of a run."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for t in tasks:
        st = os.stat(t.path)
        h.update(json.dumps([asdict(t), st.st_size, st.st_mtime_ns]).encode())
    return h.hexdigest()


def work_dir(out_dir: Path, key: str) -> tuple[Path, bool]:
    """OUT/.llmkit-work for a run whose inputs and settings digest to `key`: reused (resumed) if
    an interrupted run with the same key left it, else emptied. Returns (folder, resumed)."""
    work = out_dir / WORK_DIR
    marker = work / "key"
    if work.exists():
        if marker.is_file() and marker.read_text(encoding="utf-8").strip() == key:
            return work, True
        shutil.rmtree(work)
    work.mkdir(parents=True)
    marker.write_text(key + "\n", encoding="utf-8")
    return work, False


# --- a task's files ---------------------------------------------------------------------------------
# A task's results live in the work folder and are renamed into place when complete; a task cut
# off before its completion marker is simply run again, so no fsync is needed here.
def save_npy(path: Path, array) -> None:
    import numpy as np

    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def dump_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


# --- progress reported by tasks -------------------------------------------------------------------
class TaskProgress:
    """What one task has done (input bytes, documents), written to a small file at most every
    `interval` seconds and at the end, for the driver's bar."""

    def __init__(self, folder: Path, rank: int, interval: float = 0.5):
        self.path = folder / f"{rank:05d}"
        self.bytes = self.docs = 0
        self.interval = interval
        self._last = 0.0
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, nbytes: int, docs: int = 1) -> None:
        self.bytes += nbytes
        self.docs += docs
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self.flush()

    def flush(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(f"{self.bytes} {self.docs}", encoding="utf-8")
        os.replace(tmp, self.path)


def _read_progress(folder: Path) -> tuple[int, int]:
    total_bytes = total_docs = 0
    if folder.is_dir():
        for f in folder.iterdir():
            if f.suffix == ".tmp":
                continue
            try:
                b, d = f.read_text(encoding="utf-8").split()
                total_bytes += int(b)
                total_docs += int(d)
            except (OSError, ValueError):
                pass
    return total_bytes, total_docs


# --- running the tasks -----------------------------------------------------------------------------
class _Step:
    """A datatrove pipeline step (a callable of (data, rank, world_size)) running task `rank`."""

    def __init__(self, name: str, fn: Callable[[int], None]):
        self.name, self.fn = name, fn

    def __call__(self, data, rank: int, world_size: int):
        self.fn(rank)
        return None

    def __repr__(self) -> str:
        return f"llmkit {self.name}"


def _executor(kind: str, step: _Step, tasks: int, workers: int, logs: Path):
    if kind == "ray":
        from datatrove.executor.ray import RayPipelineExecutor

        return RayPipelineExecutor(pipeline=[step], tasks=tasks, workers=workers, logging_dir=str(logs),
                                   cpus_per_task=1, mem_per_cpu_gb=1)
    from datatrove.executor import LocalPipelineExecutor

    return LocalPipelineExecutor(pipeline=[step], tasks=tasks, workers=workers, logging_dir=str(logs))


# --- the local pool's host process -------------------------------------------------------------------
# datatrove's LocalPipelineExecutor starts its pool with "forkserver", whose workers import the
# parent's __main__ again: a script without an `if __name__ == "__main__":` guard (or code fed
# on stdin) would make the pool restart crashing workers forever. So the pool runs in a host
# process whose __main__ is this module (`python -m llmkit.data.engine`): it reads the executor
# from its stdin (a pipe from this process, never a file), runs it with its output going to
# the work folder's log (the bar is the progress here), and exits 2 after writing the one-line
# message of an LLMKitError to `error.txt`. It stops its process group if this process dies.
def _host_main() -> int:
    import pickle

    ex = pickle.load(sys.stdin.buffer)  # noqa: S301 - from the parent's pipe only
    parent = os.getppid()

    def orphaned() -> None:  # the driver was killed: stop the pool too (a rerun resumes)
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os.killpg(0, signal.SIGKILL)

    threading.Thread(target=orphaned, daemon=True).start()
    try:
        ex.run()
    except Exception as e:  # noqa: BLE001 - a task's exception, re-raised by the pool
        err = _llmkit_error(e)
        if err is None:
            raise
        Path(ex.logging_dir.path, "error.txt").write_text(str(err), encoding="utf-8")
        return 2
    return 0


def _run_hosted(ex, logs: Path) -> None:
    import pickle
    import subprocess

    logs.mkdir(parents=True, exist_ok=True)
    (logs / "error.txt").unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p and os.path.isdir(p)))
    with open(logs / "executor.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "llmkit.data.engine"], stdin=subprocess.PIPE,
                                stdout=log, stderr=log, env=env, start_new_session=True)
        try:
            proc.stdin.write(pickle.dumps(ex))
            proc.stdin.close()
            rc = proc.wait()
        except BaseException:  # Ctrl-C or an error here: stop the pool, then re-raise
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    if rc == 2 and (logs / "error.txt").is_file():
        raise LLMKitError((logs / "error.txt").read_text(encoding="utf-8"))
    if rc != 0:
        tail = (logs / "executor.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()
        raise LLMKitError(f"the local executor failed (exit {rc}): {tail[-1] if tail else 'no output'}; "
                          f"see {logs / 'executor.log'}")


def _ensure_ray() -> None:
    try:
        import ray
    except ImportError:
        raise LLMKitError("--executor ray needs Ray: pip install 'llmkit[ray]' (or pip install ray)") from None
    if not ray.is_initialized():
        # RAY_ADDRESS names an existing cluster; without it Ray starts a local one for this run.
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, log_to_driver=False,
                 include_dashboard=False, configure_logging=False)


def _llmkit_error(e: BaseException) -> Optional[LLMKitError]:
    """The LLMKitError behind an executor's exception (Ray wraps a task's in RayTaskError)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, LLMKitError):
            return e
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__
    return None


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))  # honours container CPU limits
    except AttributeError:  # macOS / Windows
        return os.cpu_count() or 1


def check_executor(executor: str, workers: Optional[int]) -> int:
    if executor not in EXECUTORS:
        raise LLMKitError(f"executor must be one of {', '.join(EXECUTORS)}, got '{executor}'")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise LLMKitError(f"workers must be >= 1, got {workers}")
    return workers


def run_tasks(name: str, fn: Callable[[int], None], tasks: list[Task], work: Path, *, executor: str,
              workers: int, desc: str, show_bytes: bool = True) -> int:
    """Run `fn(task.index)` for every task not finished by an earlier run; returns how many ran.

    `fn` must be picklable (it is sent to worker processes or Ray actors) and write its results
    atomically; it reports progress through `TaskProgress(work / name / "progress", rank)`.
    """
    from llmkit.progress import progress

    n = len(tasks)
    logs = work / name
    done_dir = logs / "completions"
    done_before = sum(1 for t in range(n) if (done_dir / f"{t:05d}").exists())
    todo = n - done_before
    if todo == 0:
        return 0
    if executor == "ray":
        _ensure_ray()
    workers = workers if executor == "ray" else min(workers, todo)

    total_mb = sum(t.size for t in tasks) / 1e6
    stop = threading.Event()
    prog_dir = logs / "progress"

    def watch(bar) -> None:
        t0, start_bytes, start_docs = time.monotonic(), *_read_progress(prog_dir)
        while True:
            b, d = _read_progress(prog_dir)
            dt = max(time.monotonic() - t0, 1e-9)
            if show_bytes:
                bar.update(max(0.0, min(b / 1e6, total_mb) - bar.n))
            bar.set_postfix(docs=f"{d:,}", docs_s=f"{(d - start_docs) / dt:,.0f}",
                            MB_s=f"{(b - start_bytes) / 1e6 / dt:.1f}", refresh=False)
            if stop.is_set():
                return
            stop.wait(0.5)

    from loguru import logger

    with progress(total=round(total_mb, 1) if show_bytes else None, desc=desc, unit="MB") as bar:
        watcher = threading.Thread(target=watch, args=(bar,), daemon=True)
        watcher.start()
        logger.disable("datatrove")  # the bar is the progress; task logs: work/NAME/logs
        try:
            ex = _executor(executor, _Step(name, fn), n, workers, logs)
            if executor == "ray":
                ex.run()
            elif workers > 1:
                _run_hosted(ex, logs)
            else:  # one at a time here: LocalPipelineExecutor.run would start a Manager process for
                # nothing, and a Manager outlives a driver killed with SIGKILL
                for rank in range(n):
                    if not ex.is_rank_completed(rank):
                        ex._run_for_rank(rank)
        except Exception as e:  # noqa: BLE001 - the executor re-raises what a task raised
            err = _llmkit_error(e)
            if err is not None:
                raise LLMKitError(str(err)) from None
            raise
        finally:
            logger.enable("datatrove")
            stop.set()
            watcher.join()
        missing = [t for t in range(n) if not (done_dir / f"{t:05d}").exists()]
        if missing:
            raise LLMKitError(f"{len(missing)} of {n} {name} task(s) did not finish (first: task {missing[0]}, "
                              f"{tasks[missing[0]].path}); see {logs / 'logs'}; run the command again to resume")
        if show_bytes and bar.total:
            bar.update(bar.total - bar.n)
    return todo


if __name__ == "__main__":
    sys.exit(_host_main())
