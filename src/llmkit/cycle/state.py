"""What a cycle remembers between runs: each stage's cache key and status, in its own folder.

OUT/<stage>/.llmkit-stage.json (written atomically):
    {"key", "status": "running" | "done", "command", "settings", "inputs": {stage: run_id},
     "run_id", "started", "finished", "seconds"}

The key hashes what decides the stage's outputs: its command, its settings as the command's
parser built them (defaults included), the keys of the stages it refers to, the fingerprints
of the files and folders it names that no stage wrote, and llmkit's version. `inputs` records
the run of each referenced stage the outputs were made from: a stage rerun by --force (same
key, new outputs) makes the stages after it rerun too.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Optional

from llmkit.errors import LLMKitError

STATE = ".llmkit-stage.json"
# Files at most this large are fingerprinted by their content (so an edit undone, or a file
# rewritten with the same bytes, keeps the cache); larger ones by size and modification time,
# as make and ninja do: hashing a multi-GB corpus on every `llmkit run` would cost more than
# the stage it might skip.
CONTENT_LIMIT = 8 << 20
KEY_VERSION = 1  # bump when what goes into a key changes


def read_state(folder: Optional[Path]) -> Optional[dict]:
    """The stage's saved state, or None (never run, or a file that is not ours)."""
    if folder is None:
        return None
    try:
        state = json.loads((folder / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and "key" in state and "status" in state else None


def write_state(folder: Path, state: dict) -> None:
    from llmkit.fileio import atomic_write_text

    atomic_write_text(folder / STATE, json.dumps(state, indent=2, sort_keys=True) + "\n")


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _file_print(path: Path) -> str:
    st = path.stat()
    if st.st_size > CONTENT_LIMIT:
        return f"size {st.st_size} mtime {st.st_mtime_ns}"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256 " + h.hexdigest()


def fingerprint(path: str) -> str:
    """A file's or folder's fingerprint (a folder's: every file under it, by relative path)."""
    p = Path(path).expanduser()
    try:
        if p.is_file():
            return _file_print(p)
        if p.is_dir():
            h = hashlib.sha256()
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for name in sorted(files):
                    f = Path(root) / name
                    if name == STATE:
                        continue
                    h.update(f"{f.relative_to(p).as_posix()}\0{_file_print(f)}\n".encode())
            return "tree " + h.hexdigest()
    except OSError as e:
        raise LLMKitError(f"{path}: cannot read ({e.strerror or e})") from None
    return "missing"


def stage_key(command: str, settings: dict, dep_keys: dict, inputs: dict) -> str:
    from llmkit import __version__

    blob = json.dumps({"v": KEY_VERSION, "llmkit": __version__, "command": command, "settings": settings,
                       "deps": dep_keys, "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """`key old -> new` for each setting that differs (nested groups as dotted keys)."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<unset>"), new.get(k, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += changes(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k} {_short(a)} -> {_short(b)}")
    return out


def _short(v) -> str:
    text = v if isinstance(v, str) else json.dumps(v)
    return text if len(text) <= 40 else text[:37] + "..."


class Lock:
    """One `llmkit run` at a time per cycle folder: two would write the same stage folders. An
    flock, so a killed run leaves no stale lock behind."""

    def __init__(self, folder: Path):
        self.path = folder / ".llmkit-run.lock"
        self.fd: Optional[int] = None

    def __enter__(self) -> "Lock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise LLMKitError(f"{self.path.parent}: another `llmkit run` is running this cycle") from None
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the flock
            self.fd = None
