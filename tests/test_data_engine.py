"""`llmkit data curate` on datatrove's executors (`llmkit.data.engine`): the task plan covers the
input exactly, the output is the same bytes whatever runs the tasks (one worker, a local pool,
Ray), a run killed by SIGKILL resumes from its completion markers, every input format gives the
same curation, scripts without a main guard and code on stdin do not hang the pool, and the CLI
checks its settings."""

from __future__ import annotations

import csv
import gzip
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmkit.data import iter_documents, read_part
from llmkit.data.curate import curate
from llmkit.data.engine import WORK_DIR, plan_tasks
from tests.helpers import cli_error

# --- a small corpus of real-looking English ---------------------------------------------------------
WORDS = (
    "the of and to in is that for it with as was on be by this are from at have not which or but an they his "
    "her all were there been has their one more when will would who so what about out up into than other some "
    "time could them only then its also two these may first any new like our over such people years way many "
    "most after very well work city river market school family history music garden window morning evening "
    "village country water mountain forest letter report council student teacher doctor company government "
    "children number question answer season weather summer winter building library station street kitchen "
    "travel journey picture story paper money office problem system program result change public local little "
    "great small large early late young important different following possible national social political "
    "economic general special simple private strong recent quickly slowly together always never often usually "
    "later almost below above across around before during without between against through under while because "
    "although however").split()

GERMAN = (
    "Gestern Abend haben wir im kleinen Kino am Marktplatz den alten Film Back to the Future gesehen. "
    "Die Geschichte ist immer noch spannend, und die Musik gefällt mir sehr. Danach sind wir durch die "
    "Altstadt spaziert, haben ein Eis gegessen und lange über die Schauspieler gesprochen. Meine Schwester "
    "meinte, dass der zweite Teil noch besser sei, aber ich finde den ersten Teil am schönsten. Nächste "
    "Woche wollen wir zusammen ins Museum gehen, wenn das Wetter schlecht bleibt. Am Sonntag fahren wir "
    "mit dem Zug zu unseren Großeltern aufs Land, wo es frische Luft und viel Ruhe gibt.")
FRENCH = (
    "Hier soir, nous avons regardé le vieux film Back to the Future dans le petit cinéma près de la gare. "
    "L'histoire reste passionnante et la musique est toujours aussi agréable. Ensuite nous avons marché "
    "dans la vieille ville, mangé une glace et parlé longuement des acteurs. Ma sœur pense que le deuxième "
    "film est meilleur, mais je préfère nettement le premier. La semaine prochaine, nous irons au musée si "
    "le temps reste mauvais. Dimanche, nous prendrons le train pour rendre visite à nos grands-parents à "
    "la campagne, où l'air est frais et calme.")
EMAILS = ("jane.doe@example.com", "bob.smith@mail.example.org", "anna@example.com", "peter@example.org")


def english(rng: random.Random, n_words: int) -> str:
    """Sentences of 7-14 words drawn from common English words (py3langid: English, p > 0.99)."""
    words = [rng.choice(WORDS) for _ in range(n_words)]
    sentences, i = [], 0
    while i < len(words):
        k = rng.randint(7, 14)
        s = " ".join(words[i:i + k])
        sentences.append(s[0].upper() + s[1:] + ".")
        i += k
    return " ".join(sentences)


def corpus_docs(n: int = 240, seed: int = 7) -> list[str]:
    """`n` documents with exact and near duplicates (across files and tasks), PII, a short one,
    a German and a French one; the quality rules remove some of the random ones too."""
    rng = random.Random(seed)
    docs = [english(rng, rng.randint(60, 120)) for _ in range(n)]
    docs[5] += f" Contact me at {EMAILS[0]} for the details and the dates."
    docs[130] = f"Write to {EMAILS[1]} and call the office on +1 415 555 0134 today. " + docs[130]
    base = english(rng, 90)
    docs[40] = base + f" Write to {EMAILS[2]} today."  # redaction makes these two exact duplicates
    docs[220] = base + f" Write to {EMAILS[3]} today."
    docs[60] = docs[10].upper()  # exact duplicate (case-folded) of an earlier document, other task
    docs[170] = docs[20]  # exact duplicate in another file
    words = docs[30].split(" ")
    words[len(words) // 2] = "zebra"
    docs[190] = " ".join(words)  # near duplicate, in the Parquet file
    docs[100] = "Too short to keep."
    docs[150] = GERMAN
    docs[160] = FRENCH
    return docs


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    return path


def write_parquet(path: Path, texts: list, row_group_size: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), path, row_group_size=row_group_size)
    return path


def build_corpus(root: Path) -> list[str]:
    docs = corpus_docs()
    root.mkdir(parents=True, exist_ok=True)
    return [str(write_jsonl(root / "a.jsonl", docs[:100])), str(write_jsonl(root / "b.jsonl", docs[100:180])),
            str(write_parquet(root / "c.parquet", docs[180:], row_group_size=10))]


TASK_MB = 0.03  # a.jsonl, b.jsonl: 2 parts each; c.parquet: row groups 0-4 and 5 (6 tasks)
SETTINGS = dict(task_mb=TASK_MB, pii="redact", languages=["en"])


def out_files(out: Path) -> dict[str, bytes]:
    """Every file of an output folder (nothing else may be left there, e.g. the work folder)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def shards(out: Path) -> dict[str, bytes]:
    return {k: v for k, v in out_files(out).items() if k.startswith("curated_")}


def report_of(out: Path, *drop: str) -> dict:
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    for key in ("seconds", "run", *drop):
        report.pop(key)
    return report


def kept_texts(out: Path) -> list[str]:
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    rows = []
    for name in report["output"]["files"]:
        rows += [json.loads(line)["text"] for line in (out / name).read_text(encoding="utf-8").splitlines()]
    return rows


def assert_same_curation(a: Path, b: Path) -> None:
    fa, fb = out_files(a), out_files(b)
    assert sorted(fa) == sorted(fb)
    assert WORK_DIR not in " ".join(fa) and WORK_DIR not in " ".join(fb)
    for name in fa:
        if name == "report.json":
            assert report_of(a) == report_of(b)
        else:
            assert fa[name] == fb[name], name
    assert report_of(a)["output"]["files"] == sorted(shards(a))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[str]:
    return build_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def baseline(corpus, tmp_path_factory) -> Path:
    """The corpus curated with SETTINGS by one worker, in this process."""
    out = tmp_path_factory.mktemp("baseline") / "out"
    curate(corpus, str(out), workers=1, **SETTINGS)
    return out


@pytest.fixture(scope="module")
def ray_cluster():
    import ray  # a test dependency (the ray extra): its absence is a failure, not a skip

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


# --- 1. the task plan ---------------------------------------------------------------------------------
def test_jsonl_parts_cover_the_file_at_line_starts(tmp_path):
    rng = random.Random(3)
    texts = [english(rng, rng.randint(3, 40)) + " ünïcödé €" * (i % 3) for i in range(60)]
    texts[17] = english(rng, 600)  # one line longer than several parts
    lines = [json.dumps({"text": t}, ensure_ascii=False) for t in texts]
    lines.insert(9, "")  # a blank line: skipped, but counted in the line numbers
    lines.insert(30, "   ")
    path = tmp_path / "in.jsonl"
    data = ("\n".join(lines)).encode("utf-8")  # no newline after the last line
    path.write_bytes(data)

    tasks = plan_tasks([str(path)], task_mb=0.001)
    assert len(tasks) >= 8
    assert [t.index for t in tasks] == list(range(len(tasks)))
    parts = [t.part for t in tasks]
    assert parts[0][0] == 0 and parts[-1][1] == len(data)
    for (a, b, first), (c, _, _) in zip(parts, parts[1:]):
        assert b == c  # contiguous
    for t, (a, b, first) in zip(tasks, parts):
        assert a < b
        assert a == 0 or data[a - 1:a] == b"\n"  # at a line start
        assert first == data[:a].count(b"\n") + 1
        assert t.size == b - a and t.path == str(path) and t.source == str(path)
    longest = max(len(line.encode("utf-8")) + 1 for line in lines)
    assert len(parts) <= -(-len(data) // 1000) and all(b - a <= 1000 + longest for a, b, _ in parts)

    whole = list(read_part(str(path), path, "text", "file"))
    pieces = [d for t in tasks for d in read_part(t.source, Path(t.path), "text", "file", t.part)]
    assert [(d.text, d.location) for d in pieces] == [(d.text, d.location) for d in whole]
    assert [d.text for d in whole] == texts
    assert [d.location for d in whole][:10] == [f"{path}:{n}" for n in (*range(1, 10), 11)]
    assert [(d.text, d.location) for d in iter_documents([str(path)])] == [(d.text, d.location) for d in whole]
    # Each part holds the lines that start in it.
    for t in tasks:
        a, b, first = t.part
        n_lines = data[a:b].count(b"\n") + (b == len(data))
        got = list(read_part(t.source, path, "text", "file", t.part))
        assert all(first <= int(d.location.rsplit(":", 1)[1]) < first + n_lines for d in got)
    # A larger task_mb: fewer parts, the same documents.
    assert len(plan_tasks([str(path)], task_mb=0.004)) < len(tasks)
    assert plan_tasks([str(path)], task_mb=1.0)[0].part is None  # a small file is one task


def test_jsonl_parts_are_equal(tmp_path):
    # Equal parts, so that workers finish together: 2.2 parts' worth of bytes is 3 parts of about
    # 0.73 each, not 1 + 1 + 0.2; none is larger than task_mb by more than a line.
    rng = random.Random(5)
    lines = [json.dumps({"text": english(rng, rng.randint(3, 12))}) for _ in range(400)]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    size, longest = path.stat().st_size, max(len(line) + 1 for line in lines)
    task_bytes = size / 2.2
    sizes = [t.size for t in plan_tasks([str(path)], task_mb=task_bytes / 1e6)]
    assert len(sizes) == 3 and sum(sizes) == size
    assert max(sizes) - min(sizes) <= 2 * longest and max(sizes) <= task_bytes + longest


def test_parquet_parts_are_row_group_ranges(tmp_path):
    import pyarrow.parquet as pq

    rng = random.Random(4)
    texts = [english(rng, rng.randint(5, 30)) for _ in range(53)]
    texts[7], texts[22] = None, "  "  # skipped, but counted in the row numbers
    path = write_parquet(tmp_path / "in.parquet", texts, row_group_size=5)
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups == 11
    group_rows = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    group_bytes = [meta.row_group(g).total_byte_size for g in range(meta.num_row_groups)]

    for task_mb, per_part in [(1e-6, 1), (2.5 * max(group_bytes) / 1e6, None)]:
        tasks = plan_tasks([str(path)], task_mb=task_mb)
        parts = [t.part for t in tasks]
        assert parts[0][0] == 0 and parts[-1][1] == meta.num_row_groups
        for (a, b, _), (c, _, _) in zip(parts, parts[1:]):
            assert a < b == c
        for a, b, first in parts:
            assert first == sum(group_rows[:a])
            if per_part:
                assert b - a == per_part
        if per_part is None:
            assert 1 < len(parts) < meta.num_row_groups
        whole = list(read_part(str(path), path, "text", "file"))
        pieces = [d for t in tasks for d in read_part(t.source, Path(t.path), "text", "file", t.part)]
        assert [(d.text, d.location) for d in pieces] == [(d.text, d.location) for d in whole]
        assert [d.text for d in whole] == [t for t in texts if t and t.strip()]
        assert [d.location for d in whole][6:8] == [f"{path}#6", f"{path}#8"]


# --- 2. determinism: one worker, a local pool, Ray ---------------------------------------------------
def test_same_bytes_with_one_worker_a_pool_and_ray(corpus, baseline, tmp_path, ray_cluster):
    tasks = plan_tasks(corpus, TASK_MB)
    assert len(tasks) >= 4 and {t.path for t in tasks} == set(corpus)
    report = json.loads((baseline / "report.json").read_text(encoding="utf-8"))
    assert report["run"] == {"executor": "local", "workers": 1, "tasks": len(tasks), "resumed": False,
                             "tasks_run": {"filter": len(tasks), "write": len(tasks)}}
    rules = {r: v["docs"] for r, v in report["per_rule"].items()}
    assert rules["exact_duplicate"] >= 3 and rules["near_duplicate"] >= 1 and rules["language"] == 2  # German, French
    assert rules["too_few_words"] == 1
    assert report["filters"]["pii"]["matches"]["email"] == 4 and report["filters"]["pii"]["docs_with_pii"] == 4
    texts = kept_texts(baseline)
    assert len(texts) == report["output"]["docs"] > 100 and len(set(texts)) == len(texts)
    joined = "\n".join(texts)
    assert not any(e in joined for e in EMAILS) and "<EMAIL>" in joined
    assert sum("Write to <EMAIL> today." in t for t in texts) == 1  # redacted before dedup
    assert GERMAN not in texts and FRENCH not in texts

    pool = tmp_path / "pool"
    r = curate(corpus, str(pool), workers=2, **SETTINGS)
    assert r["run"] == {"executor": "local", "workers": 2, "tasks": len(tasks), "resumed": False,
                        "tasks_run": {"filter": len(tasks), "write": len(tasks)}}
    assert_same_curation(baseline, pool)

    on_ray = tmp_path / "ray"
    r = curate(corpus, str(on_ray), executor="ray", workers=2, **SETTINGS)
    assert r["run"]["executor"] == "ray" and r["run"]["tasks_run"] == {"filter": len(tasks), "write": len(tasks)}
    assert_same_curation(baseline, on_ray)

    # Other task cuts (one task per file): the same documents in the same order, the same report
    # apart from the shard names ("earlier" duplicates are in reading order, not per task).
    whole = tmp_path / "whole"
    r = curate(corpus, str(whole), workers=1, **{**SETTINGS, "task_mb": 64.0})
    assert r["run"]["tasks"] == 3
    assert kept_texts(whole) == texts
    assert report_of(whole, "output") == report_of(baseline, "output")
    assert (whole / "report.md").read_text(encoding="utf-8").split("Output:")[0] == \
        (baseline / "report.md").read_text(encoding="utf-8").split("Output:")[0]


# --- 3. resume after SIGKILL ----------------------------------------------------------------------------
KILL_SCRIPT = """
import os, signal, sys
import llmkit.data.curate as c

original = c._FilterTask.__call__

def call(self, rank):
    if rank == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, rank)

c._FilterTask.__call__ = call
c.curate({sources!r}, {out!r}, workers=1, **{settings!r})
print("not killed")
"""


def run_killed(tmp_path: Path, sources: list[str], out: Path) -> None:
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT.format(sources=sources, out=str(out), settings=SETTINGS), encoding="utf-8")
    with open(tmp_path / "kill.out", "w") as so, open(tmp_path / "kill.err", "w") as se:
        proc = subprocess.Popen([sys.executable, str(script)], stdout=so, stderr=se, start_new_session=True)
        try:
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    time.sleep(0.5)
    try:  # the killed run left no process behind (one worker starts no pool or manager process)
        os.killpg(proc.pid, signal.SIGKILL)
        left = True
    except ProcessLookupError:
        left = False
    assert not left, "a process of the killed run outlived it"
    stdout, stderr = (tmp_path / "kill.out").read_text(), (tmp_path / "kill.err").read_text()
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, stdout, stderr[-3000:])
    assert "not killed" not in stdout


def test_resume_after_sigkill(corpus, baseline, tmp_path, monkeypatch):
    import llmkit.data.curate as c

    n = len(plan_tasks(corpus, TASK_MB))
    out = tmp_path / "out"
    run_killed(tmp_path, corpus, out)
    work = out / WORK_DIR
    done = sorted(p.name for p in (work / "filter" / "completions").iterdir())
    assert done == ["00000", "00001"]
    assert (work / "filter" / "00000.json").is_file() and (work / "filter" / "00001.json").is_file()
    assert not (work / "filter" / "00002.json").exists() and not (out / "report.json").exists()
    other = tmp_path / "other"
    shutil.copytree(out, other)  # the same interrupted run, to be rerun with other settings
    (other / "curated_00099_00000.jsonl").write_text('{"text": "stale"}\n', encoding="utf-8")

    ran: list[int] = []
    original = c._FilterTask.__call__

    def record(self, rank):
        ran.append(rank)
        return original(self, rank)

    monkeypatch.setattr(c._FilterTask, "__call__", record)  # workers=1 runs the tasks in this process
    report = curate(corpus, str(out), workers=1, **SETTINGS)
    assert report["run"]["resumed"] is True and report["run"]["tasks"] == n
    assert report["run"]["tasks_run"] == {"filter": n - 2, "write": n}
    assert sorted(ran) == list(range(2, n))  # filter tasks 0 and 1 were not run again
    assert report["totals"]["docs_in"] == 240  # their tallies still count
    assert_same_curation(baseline, out)

    # Other settings: the work folder is not reused, the stale shard is removed.
    ran.clear()
    report = curate(corpus, str(other), workers=1, **{**SETTINGS, "min_words": 80})
    assert report["run"]["resumed"] is False and report["run"]["tasks_run"] == {"filter": n, "write": n}
    assert sorted(ran) == list(range(n))
    fresh = tmp_path / "fresh"
    curate(corpus, str(fresh), workers=1, **{**SETTINGS, "min_words": 80})
    assert_same_curation(fresh, other)
    assert report["per_rule"]["too_few_words"]["docs"] > 1
    assert all(len(t.split()) >= 80 for t in kept_texts(other))


# --- 4. input formats --------------------------------------------------------------------------------
def format_docs() -> list[str]:
    rng = random.Random(11)
    docs = []
    for i in range(24):
        paragraphs = [english(rng, rng.randint(25, 45)) for _ in range(2)]
        docs.append(f'{paragraphs[0]} She said, "well, that is the plan", and left.\n'
                    f"{paragraphs[1]} Café, naïve, 'quoted', a \"double\" one; the end.")
    docs[6] = docs[2]  # an exact duplicate
    docs[9] = 'Too short, "really".\nYes.'
    docs[13] = "\n\n" + docs[13] + "\n"  # leading and trailing newlines inside the field
    return docs


def write_formats(root: Path, docs: list[str]) -> dict[str, tuple[str, dict]]:
    import zstandard

    root.mkdir()
    jsonl = "".join(json.dumps({"text": t, "id": i}, ensure_ascii=False) + "\n" for i, t in enumerate(docs))
    (root / "d.jsonl").write_text(jsonl, encoding="utf-8")
    with gzip.open(root / "d.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(jsonl)
    (root / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(jsonl.encode("utf-8")))
    (root / "d.json").write_text(json.dumps([{"text": t} for t in docs], ensure_ascii=False), encoding="utf-8")
    with open(root / "d.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "note"])
        for i, t in enumerate(docs):
            w.writerow([i, t, 'a, "note"\nwith a newline'])
    write_parquet(root / "d.parquet", docs, row_group_size=3)
    (root / "txt").mkdir()
    for i, t in enumerate(docs):
        (root / "txt" / f"{i:03d}.txt").write_text(t, encoding="utf-8")
    split = dict(task_mb=0.002)  # the uncompressed JSONL file and the Parquet file in several tasks
    return {"jsonl": ("d.jsonl", split), "jsonl.gz": ("d.jsonl.gz", {}), "jsonl.zst": ("d.jsonl.zst", {}),
            "json": ("d.json", {}), "csv": ("d.csv", {}), "parquet": ("d.parquet", split),
            "txt": ("txt", dict(text_unit="file"))}


def test_every_input_format_curates_the_same(tmp_path):
    docs = format_docs()
    formats = write_formats(tmp_path / "in", docs)
    results = {}
    for name, (src, kw) in formats.items():
        out = tmp_path / f"out_{name.replace('.', '_')}"
        report = curate([str(tmp_path / "in" / src)], str(out), workers=1, min_words=40, **kw)
        results[name] = (kept_texts(out), report)
    assert plan_tasks([str(tmp_path / "in" / "d.jsonl")], 0.002)[1].part is not None
    assert len(plan_tasks([str(tmp_path / "in" / "d.parquet")], 0.002)) > 1
    assert len(plan_tasks([str(tmp_path / "in" / "txt")], 0.002)) == len(docs)
    expected = [t for i, t in enumerate(docs) if i not in (6, 9)]
    for name, (texts, report) in results.items():
        assert texts == expected, name
        assert report["totals"]["docs_in"] == len(docs), name
        assert report["per_rule"]["exact_duplicate"]["docs"] == 1 and report["per_rule"]["too_few_words"]["docs"] == 1


# --- 5. no hang without a main guard or with code on stdin ----------------------------------------------
NO_GUARD = """
from llmkit.data.curate import curate
curate({sources!r}, {out!r}, workers=2, task_mb={task_mb!r})
"""


def test_no_main_guard_and_stdin_do_not_hang(tmp_path):
    rng = random.Random(5)
    docs = [english(rng, rng.randint(60, 100)) for _ in range(60)]
    docs[30] = docs[3]
    sources = [str(write_jsonl(tmp_path / "a.jsonl", docs[:30])), str(write_jsonl(tmp_path / "b.jsonl", docs[30:]))]
    task_mb = 0.008
    assert len(plan_tasks(sources, task_mb)) >= 4
    ref = tmp_path / "ref"
    curate(sources, str(ref), workers=1, task_mb=task_mb)

    script = tmp_path / "no_guard.py"
    script.write_text(NO_GUARD.format(sources=sources, out=str(tmp_path / "script"), task_mb=task_mb),
                      encoding="utf-8")
    code = NO_GUARD.format(sources=sources, out=str(tmp_path / "stdin"), task_mb=task_mb)
    procs = {
        "script": subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, cwd=tmp_path, start_new_session=True),
        "stdin": subprocess.Popen([sys.executable, "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, cwd=tmp_path, start_new_session=True),
    }
    results = {}
    try:
        results["stdin"] = procs["stdin"].communicate(code, timeout=120)
        results["script"] = procs["script"].communicate(timeout=120)
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    for name, p in procs.items():
        assert p.returncode == 0, (name, results[name][1][-3000:])
        report = json.loads((tmp_path / name / "report.json").read_text(encoding="utf-8"))
        assert report["run"]["workers"] == 2 and report["run"]["tasks"] >= 4
        assert_same_curation(ref, tmp_path / name)


# --- 6. the CLI -----------------------------------------------------------------------------------------
def llmkit_command() -> list[str]:
    script = Path(sys.executable).with_name("llmkit")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "llmkit"]


def test_cli_curate_languages_workers_pii(tmp_path):
    rng = random.Random(9)
    docs = [english(rng, rng.randint(60, 100)) for _ in range(20)]
    docs[4] += f" Mail {EMAILS[0]} now."
    src = tmp_path / "src"
    src.mkdir()
    write_jsonl(src / "a.jsonl", docs[:10] + [GERMAN])
    write_jsonl(src / "b.jsonl", docs[10:] + [FRENCH])
    out = tmp_path / "out"
    p = subprocess.run([*llmkit_command(), "data", "curate", str(src), "--out", str(out), "--languages", "en,de",
                        "--workers", "2", "--pii", "report"], capture_output=True, text=True, timeout=180,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    assert "curated 22 docs" in p.stdout
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["run"] == {"executor": "local", "workers": 2, "tasks": 2, "tasks_run": {"filter": 2, "write": 2},
                             "resumed": False}
    assert report["filters"]["language"]["keep"] == ["en", "de"]
    assert report["per_rule"]["language"]["docs"] == 1
    assert report["per_rule"]["language"]["examples"][0]["language"] == "fr"
    assert report["filters"]["pii"]["mode"] == "report" and report["filters"]["pii"]["matches"]["email"] == 1
    texts = kept_texts(out)
    assert GERMAN in texts and FRENCH not in texts
    assert any(EMAILS[0] in t for t in texts)  # report only: not redacted
    assert not (out / WORK_DIR).exists()



def cli_corpus(tmp_path: Path) -> Path:
    rng = random.Random(9)
    src = tmp_path / "src"
    src.mkdir()
    write_jsonl(src / "a.jsonl", [english(rng, 70) for _ in range(3)])
    return src


@pytest.mark.parametrize("args, needles", [
    (["--executor", "slurm"], ["executor", "slurm"]),  # the one line must say what is wrong
    (["--workers", "0"], ["workers", ">= 1"]),
    (["--pii", "bogus"], ["pii", "bogus"]),
    (["--task_mb", "0"], ["task_mb", "> 0"]),
], ids=["executor", "workers", "pii", "task_mb"])
def test_cli_bad_settings_one_line_error(tmp_path, capsys, args, needles):
    src = cli_corpus(tmp_path)
    bad = tmp_path / "bad"
    cli_error(capsys, ["data", "curate", str(src), "--out", str(bad), *args], *needles)
    assert not (bad / "report.json").exists() and not (bad / WORK_DIR).exists()


def test_cli_bad_setting_exit_code_of_the_console_script(tmp_path):
    src = cli_corpus(tmp_path)
    p = subprocess.run([*llmkit_command(), "data", "curate", str(src), "--out", str(tmp_path / "bad"),
                        "--task-mb", "0"], capture_output=True, text=True, timeout=120)
    err = p.stderr.strip()
    assert p.returncode == 1 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert "task_mb" in err and not (tmp_path / "bad").exists()
