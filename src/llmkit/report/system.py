"""The machine a run ran on: CPU, GPU, library versions and the llmkit commit, as a dict.

`write_system_info(OUT)` is called by the recipe scaffold when a run finishes (OUT/system.json),
so a report card made later, on another machine, describes the machine that trained, not the
one that wrote the card. Everything here is best effort: a missing /proc, no git, no CUDA are
absent fields, never an error (a finished run must not fail on its bookkeeping).
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path
from typing import Optional

SYSTEM_JSON = "system.json"


def cpu_model() -> str:
    """The processor's marketing name: /proc/cpuinfo's "model name" on Linux (platform.processor()
    there is only the architecture, "x86_64"), else what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def git_commit(path: Optional[Path] = None, timeout: float = 2.0) -> Optional[str]:
    """The commit of the git checkout holding `path` (default: this llmkit package), with
    "-dirty" when tracked files differ from it; None when llmkit is not run from a checkout
    (an installed wheel) or git is missing or slow (the timeout: a network file system)."""
    where = str(path or Path(__file__).resolve().parent)
    try:
        head = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=timeout)
        if head.returncode != 0 or not head.stdout.strip():
            return None
        commit = head.stdout.strip()
        # -uno: untracked files (run outputs in the checkout) do not make the code dirty.
        status = subprocess.run(["git", "-C", where, "status", "--porcelain", "-uno"], capture_output=True,
                                text=True, timeout=timeout)
        return commit + ("-dirty" if status.returncode == 0 and status.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def system_info(device: Optional[str] = None) -> dict:
    """{cpu, cores, memory_gib, gpu, gpus, device, python, torch, llmkit, platform, git_commit};
    `device`: the device the run trained on (the GPU fields name CUDA devices only when there
    are any). Imports torch only if it is already imported or importable (no failure without it)."""
    from datetime import datetime, timezone

    from llmkit import __version__
    from llmkit import hardware as hw

    info: dict = {"recorded": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_model(),
                  "cores": hw.cpu_cores(), "memory_gib": round(hw.cpu_memory_gib(), 1)}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            n = torch.cuda.device_count()
            names = [torch.cuda.get_device_name(i) for i in range(n)]
            info["gpu"] = names[0] if len(set(names)) == 1 else ", ".join(names)
            info["gpus"] = n
            info["cuda"] = torch.version.cuda
    except Exception:  # torch missing or a broken driver: the rest still describes the machine
        pass
    if device is not None:
        info["device"] = str(device)
    info["python"] = platform.python_version()
    info["platform"] = platform.platform()
    info["llmkit"] = __version__
    commit = git_commit()
    if commit:
        info["git_commit"] = commit
    return info


def write_system_info(out_dir: str | Path, device: Optional[str] = None) -> Optional[Path]:
    """OUT/system.json, atomically; None (and a warning on stderr) if it cannot be written."""
    from llmkit.fileio import atomic_write_json

    path = Path(out_dir) / SYSTEM_JSON
    try:
        atomic_write_json(path, system_info(device))
    except Exception as e:  # bookkeeping: the run's model is already published
        print(f"warning: {path} not written ({e.__class__.__name__}: {e})", file=sys.stderr)
        return None
    return path
