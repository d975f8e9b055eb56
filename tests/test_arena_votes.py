"""The arena's vote store: schema, validation, one vote per battle, durability under SIGKILL,
threads, export / import, and reading a store or an export without writing."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from llmkit.arena.votes import DuplicateVote, VoteStore, load_votes
from llmkit.errors import LLMKitError


def vote(i: int = 0, **kw) -> dict:
    v = {"time": 1_700_000_000.0 + i, "model_a": f"m{i % 3}", "model_b": f"m{(i + 1) % 3}",
         "winner": ("a", "b", "tie", "both_bad")[i % 4], "prompt": f"prompt {i}", "reply_a": f"A says {i}",
         "reply_b": f"B says {i} ünïcödé", "user": f"u{i % 2}", "battle": f"battle-{i}", "source": "arena"}
    v.update(kw)
    return v


def test_votes_come_back_as_written_with_ids_extras_and_filters(tmp_path):
    with VoteStore(tmp_path / "deep" / "er" / "votes.db") as store:  # folders are created
        ids = [store.add(vote(i, settings={"temperature": 0.7}, system="be brief")) for i in range(6)]
        assert ids == [1, 2, 3, 4, 5, 6]
        got = store.votes()
        assert [v["id"] for v in got] == ids
        for i, v in enumerate(got):
            assert v == {"id": i + 1, **vote(i), "settings": {"temperature": 0.7}, "system": "be brief"}
        assert store.count() == 6 and store.models() == ["m0", "m1", "m2"]
        assert [v["id"] for v in store.votes(since_id=4)] == [5, 6]
        # m0 plays in votes 0 (m0-m1), 2 (m2-m0), 3 (m0-m1), 5 (m2-m0)
        assert [v["id"] for v in store.votes(model="m0")] == [1, 3, 4, 6]
        assert [v["id"] for v in store.votes(model="m0", since_id=3)] == [4, 6]
        # defaults: time now, no user, no battle, source arena
        vid = store.add({"model_a": "x", "model_b": "y", "winner": "a", "prompt": "", "reply_a": "", "reply_b": ""})
        (v,) = store.votes(since_id=6)
        assert v["id"] == vid and v["user"] is None and v["battle"] is None and v["source"] == "arena"
        assert abs(v["time"] - time.time()) < 60


def test_pragmas_make_a_commit_durable(tmp_path):
    path = tmp_path / "votes.db"
    with VoteStore(path) as store:
        conn = store._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    conn = sqlite3.connect(path)
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"votes_model_a", "votes_model_b"} <= indexes
    conn.close()


@pytest.mark.parametrize("change, message", [
    ({"winner": "left"}, "'winner' must be one of a, b, tie, both_bad"),
    ({"model_a": ""}, "'model_a' must not be empty"),
    ({"model_b": 3}, "'model_b' must be a string, got a int"),
    ({"model_b": "m0"}, "model_a and model_b are both 'm0'"),
    ({"prompt": None}, "'prompt' must be a string"),
    ({"reply_a": ["x"]}, "'reply_a' must be a string, got a list"),
    ({"user": 5}, "'user' must be a string"),
    ({"battle": ""}, "'battle' must not be empty"),
    ({"source": ""}, "'source' must not be empty"),
    ({"time": "yesterday"}, "'time' must be a number"),
    ({"time": float("nan")}, "'time' must be a number"),
    ({"id": 9}, "'id' is assigned by the store"),
    ({"reply_b": "x" * 1000}, "more than the limit of 1,000"),
    ({"notes": "y" * 1000}, "more than the limit of 1,000"),  # extras count too
    ({"notes": {1, 2}}, "not plain JSON"),
    ({"prompt": "\ud800"}, "'prompt' is not valid Unicode text"),
])
def test_invalid_votes_are_one_line_errors_and_store_nothing(tmp_path, change, message):
    with VoteStore(tmp_path / "votes.db", max_chars=1000) as store:
        with pytest.raises(LLMKitError) as e:
            store.add(vote(0, **change))
        assert message in str(e.value) and "\n" not in str(e.value)
        assert store.count() == 0
    missing = vote(0)
    del missing["winner"]
    with VoteStore(tmp_path / "votes.db") as store, pytest.raises(LLMKitError, match="'winner' must be one of"):
        store.add(missing)
    with VoteStore(tmp_path / "votes.db") as store, pytest.raises(LLMKitError, match="must be a JSON object"):
        store.add(["not", "a", "dict"])


def test_a_battle_takes_one_vote_even_across_reopening(tmp_path):
    path = tmp_path / "votes.db"
    with VoteStore(path) as store:
        store.add(vote(0, battle="b1"))
        with pytest.raises(DuplicateVote, match="battle b1 already has a vote"):
            store.add(vote(1, battle="b1", winner="b"))
        store.add(vote(2, battle=None))  # votes without a battle id are not duplicates of each other
        store.add(vote(3, battle=None))
    with VoteStore(path) as store:
        with pytest.raises(DuplicateVote):
            store.add(vote(4, battle="b1"))
        assert [(v["battle"], v["winner"]) for v in store.votes()] == [("b1", "a"), (None, "tie"), (None, "both_bad")]


def test_racing_votes_for_one_battle_count_once(tmp_path):
    """The UNIQUE constraint, not a read-then-write, decides: of 8 threads voting for the same
    battle at the same moment, one wins and 7 get DuplicateVote."""
    with VoteStore(tmp_path / "votes.db") as store:
        barrier = threading.Barrier(8)
        results = []

        def race(i):
            barrier.wait()
            try:
                results.append(store.add(vote(i, battle="contested")))
            except DuplicateVote:
                results.append("dup")

        threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results, key=str) == [1] + ["dup"] * 7
        assert store.count() == 1


def test_concurrent_adds_from_threads_and_a_second_process_store(tmp_path):
    path = tmp_path / "votes.db"
    with VoteStore(path) as store, VoteStore(path) as other:  # two connections, as two processes would
        ids: list[int] = []
        lock = threading.Lock()

        def worker(w):
            s = store if w % 2 else other
            for n in range(20):
                vid = s.add(vote(w * 100 + n))
                with lock:
                    ids.append(vid)
            s.votes()  # reads interleave with the writes

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(ids) == len(set(ids)) == 80
        assert store.count() == other.count() == 80
        assert sorted(v["battle"] for v in store.votes()) == sorted(f"battle-{w * 100 + n}" for w in range(4)
                                                                    for n in range(20))


CHILD = """
import sys
from llmkit.arena.votes import VoteStore
store = VoteStore(sys.argv[1])
i = 0
while True:
    vid = store.add({"time": 1.0 + i, "model_a": "m%d" % (i % 3), "model_b": "m%d" % ((i + 1) % 3),
                     "winner": "ab"[i % 2], "prompt": "p%d" % i, "reply_a": "x" * (i % 50), "reply_b": "y%d" % i,
                     "battle": "k%d" % i, "source": "child", "n": i})
    print(vid, i, flush=True)
    i += 1
"""


def test_every_acknowledged_vote_survives_sigkill(tmp_path):
    """A child adds votes as fast as it can and prints each id once add() returned; SIGKILL
    lands mid-stream (most likely inside a transaction). Every printed id is in the reopened
    store, intact, and the file passes SQLite's integrity check."""
    path = tmp_path / "votes.db"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True)
    acked = []
    try:
        for line in proc.stdout:
            acked.append(tuple(map(int, line.split())))
            if len(acked) >= 40:
                break
        os.kill(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    acked += [tuple(map(int, line.split())) for line in rest.splitlines(keepends=True) if line.endswith("\n")]
    assert len(acked) >= 40
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with VoteStore(path) as store:
        stored = {v["id"]: v for v in store.votes()}
        assert len(stored) >= len(acked)
        for vid, i in acked:
            v = stored[vid]
            assert (v["battle"], v["n"], v["prompt"], v["reply_a"], v["reply_b"], v["winner"], v["source"]) == (
                f"k{i}", i, f"p{i}", "x" * (i % 50), f"y{i}", "ab"[i % 2], "child")
        store.add(vote(0, battle="after-the-crash"))  # and the store takes new votes


def test_export_import_round_trip(tmp_path):
    with VoteStore(tmp_path / "a.db") as a:
        for i in range(5):
            a.add(vote(i, meta={"k": [1, 2]}))
        assert a.export_jsonl(tmp_path / "out" / "votes.jsonl") == 5
        original = a.votes()
    lines = (tmp_path / "out" / "votes.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x) for x in lines] == original  # one per line, id order
    assert load_votes(tmp_path / "out" / "votes.jsonl") == original
    with VoteStore(tmp_path / "b.db") as b:
        b.add(vote(99, battle="already-here"))
        assert b.import_jsonl(tmp_path / "out" / "votes.jsonl") == 5
        got = b.votes()[1:]
        assert [v["id"] for v in got] == [2, 3, 4, 5, 6]  # the store's own ids, in file order
        assert [{**v, "id": 0} for v in got] == [{**v, "id": 0} for v in original]
        # importing the same file again: the battles are taken; all or nothing
        with pytest.raises(DuplicateVote, match=r"votes.jsonl:1: battle battle-0 already has a vote"):
            b.import_jsonl(tmp_path / "out" / "votes.jsonl")
        assert b.count() == 6


@pytest.mark.parametrize("lines, message", [
    (['{"model_a": "x"', ""], ":1: not valid JSON"),
    (["", json.dumps(vote(0)), "[1, 2]"], ":3: a vote must be a JSON object"),
    ([json.dumps(vote(0)), json.dumps(vote(1, winner="draw"))], ":2: 'winner' must be one of"),
    ([json.dumps(vote(0)), json.dumps(vote(1, battle="battle-0"))], ":2: battle battle-0 already has a vote"),
])
def test_import_names_the_bad_line_and_adds_nothing(tmp_path, lines, message):
    src = tmp_path / "judge.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with VoteStore(tmp_path / "votes.db") as store:
        with pytest.raises(LLMKitError) as e:
            store.import_jsonl(src)
        assert f"judge.jsonl{message}" in str(e.value)
        assert store.count() == 0
    with pytest.raises(LLMKitError, match="no such file"), VoteStore(tmp_path / "votes.db") as store:
        store.import_jsonl(tmp_path / "missing.jsonl")


def test_load_votes_reads_a_live_store_without_writing(tmp_path):
    path = tmp_path / "votes.db"
    with VoteStore(path) as store:
        store.add(vote(0))
        store.add(vote(1, extra_key=1))
        # while the server holds it open (WAL): the reader sees the committed votes
        assert [v["battle"] for v in load_votes(path)] == ["battle-0", "battle-1"]
        assert load_votes(path)[1]["extra_key"] == 1
    data = path.read_bytes()
    assert len(load_votes(str(path))) == 2
    # mode=ro: the store is not written (SQLite may leave an empty -wal / -shm beside a WAL file:
    # a reader needs the shared-memory index, sqlite.org/wal.html#readonly)
    assert path.read_bytes() == data
    wal = path.with_name("votes.db-wal")
    assert not wal.exists() or wal.stat().st_size == 0


def test_load_votes_errors_are_one_line(tmp_path):
    (tmp_path / "text.db").write_text("not a database at all, just text\n")
    (tmp_path / "empty.db").write_bytes(b"")
    other = sqlite3.connect(tmp_path / "other.sqlite")
    other.execute("CREATE TABLE t (x)")
    other.commit()
    other.close()
    (tmp_path / "votes.csv").write_text("a,b\n")
    (tmp_path / "bad.jsonl").write_text(json.dumps(vote(0)) + "\n" + json.dumps(vote(1, model_b="m1")) + "\n")
    cases = {"missing.db": "no such file", "missing.jsonl": "no such file", "text.db": "not an SQLite database",
             "empty.db": "an empty file", "other.sqlite": "without a votes table", "votes.csv": "expected a vote store",
             "bad.jsonl": "bad.jsonl:2: model_a and model_b are both 'm1'", ".": "is a folder"}
    for name, message in cases.items():
        with pytest.raises(LLMKitError) as e:
            load_votes(tmp_path / name)
        assert message in str(e.value) and "\n" not in str(e.value), (name, str(e.value))
    assert not (tmp_path / "missing.db").exists()  # reading never creates a store
    # The store refuses what is not one, and leaves the file alone.
    with pytest.raises(LLMKitError, match="not an SQLite database"):
        VoteStore(tmp_path / "text.db")
    assert (tmp_path / "text.db").read_text() == "not a database at all, just text\n"
    with pytest.raises(LLMKitError, match="not an llmkit vote store"):
        VoteStore(tmp_path / "other.sqlite")
    store = VoteStore(tmp_path / "v.db")
    store.close()
    with pytest.raises(LLMKitError, match="closed"):
        store.add(vote(0))
