"""The arena's votes: one SQLite file that the server, the CLI and the LLM judge share.

A vote is one dict, the same everywhere (the web server's votes, the judge's, an export):

    {"id": 7, "time": 1733130000.5, "model_a": "llama", "model_b": "qwen",
     "winner": "a" | "b" | "tie" | "both_bad", "prompt": "...", "reply_a": "...", "reply_b": "...",
     "user": "ann" | None, "battle": "4f1c..." | None, "source": "arena" | "judge" | ...}

plus any extra keys the writer gave (kept in a JSON column, returned at the top level). The id
is the store's; `battle` is the server's battle id and takes one vote (a UNIQUE column, so two
racing requests, or a retry after a restart, cannot both count).

    with VoteStore("out/arena/votes.db") as store:
        vote_id = store.add({...})      # returns once the vote is on disk
        votes = store.votes()           # id order

`load_votes(path)` reads a store (read-only) or a JSONL export for the ratings.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from pathlib import Path
from typing import Optional

from llmkit.errors import LLMKitError
from llmkit.fileio import atomic_write_text

WINNERS = ("a", "b", "tie", "both_bad")
FIELDS = ("id", "time", "model_a", "model_b", "winner", "prompt", "reply_a", "reply_b", "user", "battle", "source")
DB_SUFFIXES = (".db", ".sqlite", ".sqlite3")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
SCHEMA_VERSION = 1
_SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite 3 file (sqlite.org/fileformat.html)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS votes (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: an id is never reused, even after a delete
    time    REAL NOT NULL,
    model_a TEXT NOT NULL,
    model_b TEXT NOT NULL,
    winner  TEXT NOT NULL CHECK (winner IN ({", ".join(repr(w) for w in WINNERS)})),
    prompt  TEXT NOT NULL,
    reply_a TEXT NOT NULL,
    reply_b TEXT NOT NULL,
    user    TEXT,
    battle  TEXT UNIQUE,                        -- NULLs are distinct in SQLite: votes without a battle id
    source  TEXT NOT NULL,
    extra   TEXT NOT NULL DEFAULT '{{}}',
    CHECK (model_a <> model_b)
);
CREATE INDEX IF NOT EXISTS votes_model_a ON votes (model_a);
CREATE INDEX IF NOT EXISTS votes_model_b ON votes (model_b);
"""


class DuplicateVote(LLMKitError):
    """A vote for a battle that already has one."""


# --- one vote: validation -------------------------------------------------------------------------
def _text(vote: dict, key: str, where: str, *, optional: bool = False, nonempty: bool = False) -> Optional[str]:
    value = vote.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        got = "missing" if key not in vote else f"a {type(value).__name__}"
        raise LLMKitError(f"{where}'{key}' must be a string, got {got}")
    if nonempty and not value.strip():
        raise LLMKitError(f"{where}'{key}' must not be empty")
    try:  # a lone surrogate (e.g. from a broken JSON escape) cannot be stored as UTF-8
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise LLMKitError(f"{where}'{key}' is not valid Unicode text") from None
    return value


def validate_vote(vote: dict, max_chars: Optional[int] = 200_000, *, where: str = "", keep_id: bool = False) -> dict:
    """The vote in the store's schema, checked: a copy with defaults filled in, or LLMKitError.

    Args:
        vote: a vote dict (see the module docstring). `time` defaults to now, `user` and `battle`
            to None, `source` to "arena"; any other key is an extra, kept as JSON.
        max_chars: most characters of prompt + replies + extras (JSON) in one vote; None: no limit.
        where: a prefix for the error message (e.g. "votes.jsonl:3: ").
        keep_id: keep an `id` key (a record read back from an export) instead of rejecting it.
    """
    if not isinstance(vote, dict):
        raise LLMKitError(f"{where}a vote must be a JSON object, got {type(vote).__name__}")
    out: dict = {}
    if keep_id and vote.get("id") is not None:
        if not isinstance(vote["id"], int) or isinstance(vote["id"], bool):
            raise LLMKitError(f"{where}'id' must be an integer, got {vote['id']!r}")
        out["id"] = vote["id"]
    elif "id" in vote and not keep_id:
        raise LLMKitError(f"{where}a vote's 'id' is assigned by the store; leave it out")
    t = vote.get("time", None)
    if t is None:
        t = time.time()
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise LLMKitError(f"{where}'time' must be a number of unix seconds, got {t!r}")
    out["time"] = float(t)
    out["model_a"] = _text(vote, "model_a", where, nonempty=True)
    out["model_b"] = _text(vote, "model_b", where, nonempty=True)
    if out["model_a"] == out["model_b"]:
        raise LLMKitError(f"{where}model_a and model_b are both '{out['model_a']}': a vote compares two models")
    winner = vote.get("winner")
    if winner not in WINNERS:
        raise LLMKitError(f"{where}'winner' must be one of {', '.join(WINNERS)}, got {winner!r}")
    out["winner"] = winner
    for key in ("prompt", "reply_a", "reply_b"):
        out[key] = _text(vote, key, where)
    out["user"] = _text(vote, "user", where, optional=True)
    out["battle"] = _text(vote, "battle", where, optional=True, nonempty=True)
    out["source"] = _text(vote, "source", where, nonempty=True) if "source" in vote else "arena"
    extra = {k: v for k, v in vote.items() if k not in FIELDS}
    try:
        extra_json = json.dumps(extra, ensure_ascii=False, allow_nan=False)
        extra_json.encode("utf-8")
    except (TypeError, ValueError) as e:  # UnicodeEncodeError is a ValueError
        raise LLMKitError(f"{where}the extra keys ({', '.join(sorted(extra))}) are not plain JSON: {e}") from None
    size = len(out["prompt"]) + len(out["reply_a"]) + len(out["reply_b"]) + (len(extra_json) if extra else 0)
    if max_chars is not None and size > max_chars:
        raise LLMKitError(f"{where}the vote is {size:,} characters (prompt + replies + extras), "
                          f"more than the limit of {max_chars:,}")
    out.update(extra)
    return out


def _validate(vote, max_chars, where="", keep_id=False) -> tuple[dict, str]:
    """validate_vote's record and the JSON text of its extra keys (the `extra` column)."""
    record = validate_vote(vote, max_chars, where=where, keep_id=keep_id)
    extra = {k: v for k, v in record.items() if k not in FIELDS}
    return record, json.dumps(extra, ensure_ascii=False, allow_nan=False)


def _row_to_vote(row: tuple) -> dict:
    *fields, extra = row
    vote = dict(zip(FIELDS, fields))
    vote.update(json.loads(extra))
    return vote


_COLUMNS = ", ".join(FIELDS) + ", extra"


# --- the store ------------------------------------------------------------------------------------
class VoteStore:
    """Votes in an SQLite file, safe to share between the server's threads (one connection, one
    lock) and with other processes (SQLite's own file locks; a writer waits up to `timeout`).

    Args:
        path: the SQLite file; created with its folders when missing.
        max_chars: most characters of prompt + replies + extras in one vote.
        timeout: seconds to wait for another process's write lock before failing.
    """

    def __init__(self, path: str | Path, max_chars: int = 200_000, timeout: float = 30.0):
        self.path = Path(path)
        if max_chars < 1:
            raise LLMKitError(f"max_chars must be at least 1, got {max_chars}")
        self.max_chars = max_chars
        if self.path.is_dir():
            raise LLMKitError(f"{self.path}: is a folder, not a vote store file")
        _check_sqlite_header(self.path, missing_ok=True)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LLMKitError(f"cannot create the folder of {self.path}: {e.strerror or e}") from None
        self._lock = threading.Lock()
        try:
            # isolation_level=None: no implicit transactions; `add` opens its own with BEGIN IMMEDIATE.
            self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise LLMKitError(f"{self.path}: cannot open the vote store ({e})") from None
        try:
            self._setup()
        except BaseException:
            self._conn.close()
            raise

    def _setup(self) -> None:
        c = self._conn
        try:
            # WAL: readers (the leaderboard) never block the writer and a commit is one append to
            # the log. synchronous=FULL: in WAL mode the default NORMAL does not fsync the log at
            # each commit, so a committed transaction "might roll back following a power loss or
            # system crash" (sqlite.org/pragma.html#pragma_synchronous); FULL fsyncs it before
            # COMMIT returns, so a vote acknowledged to a user survives a SIGKILL *and* a power cut.
            mode = c.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise LLMKitError(f"{self.path}: SQLite cannot use a write-ahead log here (journal mode {mode})")
            c.execute("PRAGMA synchronous=FULL")
            version = c.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if version not in (0, SCHEMA_VERSION) or (tables - {"votes", "sqlite_sequence"}):
                raise LLMKitError(f"{self.path}: an SQLite file, but not an llmkit vote store "
                                  f"(tables: {', '.join(sorted(tables)) or 'none'}, version {version})")
            if "votes" in tables:
                _check_columns(c, self.path)
            # IF NOT EXISTS: idempotent, so two processes opening a new file at once both succeed.
            c.executescript(_SCHEMA + f"PRAGMA user_version={SCHEMA_VERSION};")
        except sqlite3.DatabaseError as e:
            raise LLMKitError(f"{self.path}: not a usable SQLite vote store ({e})") from None

    # context manager, close
    def __enter__(self) -> "VoteStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (the last close also folds the write-ahead log into the file)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LLMKitError(f"{self.path}: the vote store is closed")
        return self._conn

    # writing
    def add(self, vote: dict) -> int:
        """Store one vote; returns its id once the transaction is committed (on disk).

        Args:
            vote: a vote in the module docstring's schema, without `id`.

        Raises DuplicateVote when its `battle` id already has a vote, LLMKitError when it is invalid.
        """
        return self._insert([_validate(vote, self.max_chars)])[0]

    def _insert(self, records: list[tuple[dict, str]], where: Optional[list[str]] = None) -> list[int]:
        """All `records` (`_validate`'s pairs) in one transaction: all or none."""
        ids = []
        with self._lock:
            c = self._connection()
            # IMMEDIATE takes the write lock now, so a busy database waits `timeout` here rather
            # than failing halfway through.
            c.execute("BEGIN IMMEDIATE")
            try:
                for n, (r, extra) in enumerate(records):
                    try:
                        cur = c.execute(
                            "INSERT INTO votes (time, model_a, model_b, winner, prompt, reply_a, reply_b, user, "
                            "battle, source, extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (r["time"], r["model_a"], r["model_b"], r["winner"], r["prompt"], r["reply_a"],
                             r["reply_b"], r["user"], r["battle"], r["source"], extra))
                    except sqlite3.IntegrityError as e:
                        prefix = where[n] if where else ""
                        if "battle" in str(e):  # "UNIQUE constraint failed: votes.battle"
                            raise DuplicateVote(f"{prefix}battle {r['battle']} already has a vote") from None
                        raise LLMKitError(f"{prefix}the vote breaks a store constraint ({e})") from None
                    ids.append(cur.lastrowid)
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        return ids

    # reading
    def votes(self, model: Optional[str] = None, since_id: Optional[int] = None) -> list[dict]:
        """The votes in id order.

        Args:
            model: only the votes in which this model took part (either side).
            since_id: only the votes with an id above this one (a poller's last seen id).
        """
        sql, args, cond = f"SELECT {_COLUMNS} FROM votes", [], []
        if model is not None:
            cond.append("(model_a = ? OR model_b = ?)")
            args += [model, model]
        if since_id is not None:
            cond.append("id > ?")
            args.append(int(since_id))
        if cond:
            sql += " WHERE " + " AND ".join(cond)
        with self._lock:
            rows = self._connection().execute(sql + " ORDER BY id", args).fetchall()
        return [_row_to_vote(r) for r in rows]

    def count(self) -> int:
        """How many votes the store holds."""
        with self._lock:
            return self._connection().execute("SELECT COUNT(*) FROM votes").fetchone()[0]

    def models(self) -> list[str]:
        """The models that appear in any vote, sorted by name."""
        with self._lock:
            rows = self._connection().execute(
                "SELECT model_a FROM votes UNION SELECT model_b FROM votes").fetchall()
        return sorted(r[0] for r in rows)

    # files
    def export_jsonl(self, path: str | Path) -> int:
        """Write every vote to a JSONL file (one per line, id order, written atomically).

        Args:
            path: the file to write.

        Returns the number of votes written.
        """
        votes = self.votes()
        atomic_write_text(path, "".join(json.dumps(v, ensure_ascii=False) + "\n" for v in votes))
        return len(votes)

    def import_jsonl(self, path: str | Path) -> int:
        """Add the votes of a JSONL file (an export, the LLM judge's votes) in one transaction:
        all of them, or none when a line is bad. Ids in the file are dropped (the store assigns
        new ones, in file order); a battle id already in the store is a DuplicateVote.

        Args:
            path: a file of one vote record (JSON object) per line; blank lines are skipped.

        Returns the number of votes added.
        """
        records, where = [], []
        for n, vote in _read_jsonl(path):
            vote = dict(vote) if isinstance(vote, dict) else vote
            if isinstance(vote, dict):
                vote.pop("id", None)
            records.append(_validate(vote, self.max_chars, where=f"{path}:{n}: "))
            where.append(f"{path}:{n}: ")
        return len(self._insert(records, where)) if records else 0


# --- reading without a store ----------------------------------------------------------------------
def _check_sqlite_header(path: Path, missing_ok: bool) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        if missing_ok:
            return
        raise LLMKitError(f"{path}: no such file") from None
    except OSError as e:
        raise LLMKitError(f"{path}: cannot read ({e.strerror or e})") from None
    if head and head != _SQLITE_MAGIC:  # an empty file is a new database to SQLite
        raise LLMKitError(f"{path}: not an SQLite database")


def _check_columns(conn: sqlite3.Connection, path: Path) -> None:
    have = {r[1] for r in conn.execute("PRAGMA table_info(votes)")}
    missing = [c for c in (*FIELDS, "extra") if c not in have]
    if missing:
        raise LLMKitError(f"{path}: its votes table lacks {', '.join(missing)}: not an llmkit vote store")


def _read_jsonl(path: str | Path):
    """(line number, parsed JSON) for each non-blank line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LLMKitError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise LLMKitError(f"{path}: not UTF-8 text ({e})") from None
    except OSError as e:
        raise LLMKitError(f"{path}: cannot read ({e.strerror or e})") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise LLMKitError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None


def load_votes(path: str | Path) -> list[dict]:
    """The votes of a vote store (`.db`, `.sqlite`: opened read-only, so a running arena may
    keep writing it) or of a JSONL file of vote records (an export, the judge's votes), in order.

    Args:
        path: the file.
    """
    path = Path(path)
    if path.is_dir():
        raise LLMKitError(f"{path}: is a folder, not a votes file")
    if not path.exists():
        raise LLMKitError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return [validate_vote(v, None, where=f"{path}:{n}: ", keep_id=True) for n, v in _read_jsonl(path)]
    if suffix not in DB_SUFFIXES:
        raise LLMKitError(f"{path}: expected a vote store ({', '.join(DB_SUFFIXES)}) or a JSONL file "
                          f"({', '.join(JSONL_SUFFIXES)})")
    _check_sqlite_header(path, missing_ok=False)
    if path.stat().st_size == 0:
        raise LLMKitError(f"{path}: an empty file, not a vote store")
    try:
        # mode=ro: reading never creates or changes the file (sqlite.org/uri.html).
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise LLMKitError(f"{path}: cannot open read-only ({e})") from None
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "votes" not in tables:
            raise LLMKitError(f"{path}: an SQLite file without a votes table: not an llmkit vote store")
        _check_columns(conn, path)
        rows = conn.execute(f"SELECT {_COLUMNS} FROM votes ORDER BY id").fetchall()
    except sqlite3.DatabaseError as e:
        raise LLMKitError(f"{path}: cannot read the votes ({e})") from None
    finally:
        conn.close()
    return [_row_to_vote(r) for r in rows]
