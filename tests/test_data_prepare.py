"""`llmkit data prepare` and the shard readers: round trips, determinism, sources, splits, resume."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import llmkit.data.prepare as prepare_mod
from llmkit.cli import main
from llmkit.data import iter_documents
from llmkit.data.prepare import choose_val_docs, prepare, text_key
from llmkit.data.shards import TokenShards, WindowSampler
from llmkit.errors import LLMKitError
from llmkit.tokenizer import Tokenizer, train_tokenizer

SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text" / "tinyshakespeare.txt"
WORDS = ["the", "of", "and", "to", "in", "river", "stone", "light", "city", "winter", "song", "road",
         "naïve", "café", "日本", "über", "quiet", "bright", "north", "garden"]


def make_doc(rng: random.Random, n_min: int = 5, n_max: int = 60) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(n_min, n_max))]
    return " ".join(words).capitalize() + "." + rng.choice(["", " 😀", "\nSecond line."])


def docs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [make_doc(rng) for _ in range(n)]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tok")
    (d / "train.txt").write_text("\n".join(docs(300, seed=99)), encoding="utf-8")
    train_tokenizer([str(d / "train.txt")], vocab_size=320, out=str(d / "tok"))
    return d / "tok"


@pytest.fixture
def text_folder(tmp_path) -> tuple[Path, list[str]]:
    """A folder of .txt/.md files (nested), plus files the reader must skip."""
    texts = docs(40, seed=1)
    root = tmp_path / "corpus"
    for i, t in enumerate(texts):
        sub = root / ("a" if i < 20 else "b/c")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"doc{i:03d}.{'md' if i % 3 else 'txt'}").write_text(t, encoding="utf-8")
    (root / ".hidden.txt").write_text("hidden", encoding="utf-8")
    (root / "notes.xlsx").write_text("a,b\n", encoding="utf-8")
    # Sorted path order is the reading order.
    order = sorted((p for p in root.rglob("*") if p.suffix in (".txt", ".md") and not p.name.startswith(".")))
    return root, [p.read_text(encoding="utf-8") for p in order]


def stream(out: Path, split: str) -> np.ndarray:
    s = TokenShards(out, split)
    return s.tokens(0, len(s))


def expected_stream(tok: Tokenizer, texts: list[str]) -> list[int]:
    return [i for t in texts for i in tok.encode(t, eos=True)]


# --- round trip, splits, determinism -------------------------------------------------------------
def test_round_trip_without_val(tok_dir, text_folder, tmp_path):
    root, texts = text_folder
    manifest = prepare([str(root)], str(tok_dir), str(tmp_path / "out"), seq_len=16, val_fraction=0.0, workers=1)
    tok = Tokenizer.from_dir(tmp_path / "out" / "tokenizer")
    ids = stream(tmp_path / "out", "train")
    assert ids.tolist() == expected_stream(tok, texts)
    eos = tok.decode([tok.eos_id], skip_special=False)
    assert tok.decode(ids, skip_special=False) == "".join(t + eos for t in texts)
    assert manifest["dtype"] == "uint16" and manifest["eos_id"] == tok.eos_id == 0
    assert manifest["splits"]["train"]["docs"] == 40 and manifest["splits"]["val"]["tokens"] == 0
    assert manifest["tokenizer"]["path"] == "tokenizer" and len(manifest["tokenizer"]["sha256"]) == 64
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk == manifest and (tmp_path / "out" / "train_000000.bin").stat().st_size == 2 * len(ids)


def test_val_split_whole_documents(tok_dir, text_folder, tmp_path):
    root, texts = text_folder
    m = prepare([str(root)], str(tok_dir), str(tmp_path / "out"), val_fraction=0.1, workers=1, shard_tokens=97)
    tok = Tokenizer.from_dir(tok_dir)
    encoded = [tok.encode(t, eos=True) for t in texts]
    keys = np.array([text_key(t) for t in texts], dtype=np.uint64)
    is_val = choose_val_docs(np.array([len(e) for e in encoded]), 0.1, seed=0, keys=keys)
    assert 0 < is_val.sum() < len(texts)
    train = [i for e, v in zip(encoded, is_val) if not v for i in e]
    val = [i for e, v in zip(encoded, is_val) if v for i in e]
    assert stream(tmp_path / "out", "train").tolist() == train
    assert stream(tmp_path / "out", "val").tolist() == val
    assert m["splits"]["val"]["docs"] == int(is_val.sum()) and m["splits"]["val"]["tokens"] == len(val)
    assert abs(len(val) / (len(val) + len(train)) - 0.1) < 0.05
    assert len(m["splits"]["train"]["shards"]) > 1  # shards of 97 tokens, read back as one stream


def test_choose_val_docs():
    lengths = np.full(1000, 10)
    mask = choose_val_docs(lengths, 0.05, seed=1)
    assert mask.sum() == 50
    assert not np.array_equal(mask, choose_val_docs(lengths, 0.05, seed=2))  # the seed matters
    assert np.array_equal(mask, choose_val_docs(lengths, 0.05, seed=1))  # and nothing else does
    assert choose_val_docs(np.array([5, 5, 5]), 0.001).sum() == 1  # at least one document
    assert choose_val_docs(np.array([5, 5]), 0.99).sum() == 1  # never all of them
    assert choose_val_docs(np.array([100]), 0.5).sum() == 0  # one document: no split
    assert choose_val_docs(lengths, 0.0).sum() == 0
    # Copies of a document (equal keys) are never split between train and val.
    keys = np.repeat(np.arange(100, dtype=np.uint64), 10)  # 100 documents, 10 copies each
    for seed in range(20):
        mask = choose_val_docs(lengths, 0.05, seed=seed, keys=keys).reshape(100, 10)
        assert mask.sum() == 50 and (mask.all(axis=1) | ~mask.any(axis=1)).all()
    assert choose_val_docs(np.ones(4), 0.5, keys=np.zeros(4, dtype=np.uint64)).sum() == 0  # all copies


def _same_outputs(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir() if p.is_file())
    assert names == sorted(p.name for p in b.iterdir() if p.is_file())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_deterministic_across_workers_and_tasks(tok_dir, tmp_path, monkeypatch):
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs(60, seed=5)), encoding="utf-8")
    monkeypatch.setattr(prepare_mod, "_CHUNK_DOCS", 7)  # several chunks per task in this process
    # One task, then ~9 tasks (parts of the JSONL file) in this process and in a pool of 2.
    m1 = prepare([str(src)], str(tok_dir), str(tmp_path / "p1"), val_fraction=0.1, workers=1)
    prepare([str(src)], str(tok_dir), str(tmp_path / "p2"), val_fraction=0.1, workers=1, task_mb=0.0003)
    prepare([str(src)], str(tok_dir), str(tmp_path / "p3"), val_fraction=0.1, workers=2, task_mb=0.0003)
    assert m1["splits"]["val"]["docs"] > 0
    _same_outputs(tmp_path / "p1", tmp_path / "p2")
    _same_outputs(tmp_path / "p1", tmp_path / "p3")
    assert not (tmp_path / "p3" / ".llmkit-work").exists()


def test_ray_executor_same_shards(tok_dir, tmp_path):
    ray = pytest.importorskip("ray")
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs(60, seed=6)), encoding="utf-8")
    prepare([str(src)], str(tok_dir), str(tmp_path / "local"), val_fraction=0.1, workers=1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        prepare([str(src)], str(tok_dir), str(tmp_path / "ray"), val_fraction=0.1, executor="ray", workers=2,
                task_mb=0.001)
    finally:
        ray.shutdown()
    _same_outputs(tmp_path / "local", tmp_path / "ray")


def test_resume_after_kill_reruns_only_unfinished_tasks(tok_dir, tmp_path):
    """A run SIGKILLed in its third task, started again: the first two tasks are not run again,
    and the shards are the bytes of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys

    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs(60, seed=7)), encoding="utf-8")
    args = dict(val_fraction=0.1, workers=1, task_mb=0.0005)
    prepare([str(src)], str(tok_dir), str(tmp_path / "whole"), **args)
    script = tmp_path / "killed.py"
    script.write_text(f"""
import os, signal
import llmkit.data.prepare as p
run = p._TokenizeTask.__call__
def call(self, rank):
    if rank == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return run(self, rank)
p._TokenizeTask.__call__ = call
p.prepare([{str(src)!r}], {str(tok_dir)!r}, {str(tmp_path / "out")!r}, **{args!r})
""", encoding="utf-8")
    log = tmp_path / "killed.log"
    with open(log, "wb") as f:  # a file, not a pipe: datatrove's Manager process outlives the kill
        proc = subprocess.Popen([sys.executable, str(script)], stdout=f, stderr=f, start_new_session=True)
        try:
            rc = proc.wait(timeout=120)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # that Manager, orphaned
            except ProcessLookupError:
                pass
    assert rc == -signal.SIGKILL, log.read_text()[-2000:]
    work = tmp_path / "out" / ".llmkit-work"
    assert sorted(p.name for p in (work / "tokenize" / "completions").iterdir()) == ["00000", "00001"]
    calls = []
    run = prepare_mod._TokenizeTask.__call__
    try:
        prepare_mod._TokenizeTask.__call__ = lambda self, rank: calls.append(rank) or run(self, rank)
        prepare([str(src)], str(tok_dir), str(tmp_path / "out"), **args)
    finally:
        prepare_mod._TokenizeTask.__call__ = run
    assert calls and min(calls) == 2
    _same_outputs(tmp_path / "whole", tmp_path / "out")
    assert not work.exists()


def test_jsonl_parquet_and_text_units(tok_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = docs(12, seed=7)
    jl = tmp_path / "a.jsonl"
    jl.write_text("".join(json.dumps({"id": i, "body": t}) + "\n" + ("\n" if i == 3 else "")
                          for i, t in enumerate(texts[:6])), encoding="utf-8")
    pqf = tmp_path / "b.parquet"
    pq.write_table(pa.table({"body": texts[6:], "n": list(range(6))}), pqf, row_group_size=4)
    txt = tmp_path / "c.txt"
    txt.write_text("First paragraph\nstill first.\n\n  \n\nSecond one.\n\nThird.\n", encoding="utf-8")
    m = prepare([str(jl), str(pqf), str(txt)], str(tok_dir), str(tmp_path / "out"), val_fraction=0,
                text_field="body", text_unit="paragraph", workers=1)
    tok = Tokenizer.from_dir(tok_dir)
    paragraphs = ["First paragraph\nstill first.", "Second one.", "Third."]
    assert stream(tmp_path / "out", "train").tolist() == expected_stream(tok, texts + paragraphs)
    assert m["splits"]["train"]["docs"] == 15
    lines = [d.text for d in iter_documents([str(txt)], text_unit="line")]
    assert lines == ["First paragraph", "still first.", "Second one.", "Third."]  # blank lines skipped


# --- reading shards, sampling, resuming ----------------------------------------------------------
@pytest.fixture
def prepared(tok_dir, tmp_path) -> Path:
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs(200, seed=11)), encoding="utf-8")
    prepare([str(src)], str(tok_dir), str(tmp_path / "out"), val_fraction=0.1, workers=1, shard_tokens=501)
    return tmp_path / "out"


def test_windows_across_shards(prepared):
    s = TokenShards(prepared, "train")
    full = s.tokens(0, len(s))
    assert len(s.manifest["splits"]["train"]["shards"]) > 2
    for start in (0, 495, 500, 501, len(s) - 33):
        assert np.array_equal(s.window(start, 32), full[start:start + 33])
    with pytest.raises(IndexError):
        s.window(len(s) - 10, 32)


def collect(sampler: WindowSampler, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [next(sampler) for _ in range(n)]


@pytest.mark.parametrize("prefetch", [0, 3])
def test_sampler_epoch_and_resume(prepared, prefetch):
    shards = TokenShards(prepared, "train")
    T, B = 16, 4
    a = WindowSampler(shards, T, B, seed=3, prefetch=prefetch)
    bpe = a.batches_per_epoch
    assert bpe == shards.num_windows(T) // B >= 3
    batches = collect(a, bpe + 2)  # crosses an epoch boundary
    x, y = batches[0]
    assert x.dtype == torch.long and x.shape == (B, T) and torch.equal(x[:, 1:], y[:, :-1])
    # One epoch = each window once: x rows start at distinct multiples of T (after the offset).
    full = torch.from_numpy(shards.tokens(0, len(shards)))
    starts = a.epoch_starts(0)[:bpe * B]
    assert len(set(starts.tolist())) == bpe * B and len(set((starts % T).tolist())) == 1
    assert torch.equal(batches[1][0][2], full[starts[B + 2]:starts[B + 2] + T])
    assert a.state_dict()["epoch"] == 1 and a.state_dict()["step"] == 2

    # Resume from a mid-epoch state: the same batches follow.
    b = WindowSampler(shards, T, B, seed=3, prefetch=prefetch)
    collect(b, 2)
    state = json.loads(json.dumps(b.state_dict()))  # survives a checkpoint round trip
    assert state["epoch"] == 0 and state["step"] == 2
    c = WindowSampler(shards, T, B, seed=3, prefetch=3 - prefetch)  # prefetch does not matter
    c.load_state_dict(state)
    for (x1, y1), (x2, y2) in zip(batches[2:], collect(c, bpe)):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    b.load_state_dict(state)  # reloading a running sampler drops what it had prefetched
    assert torch.equal(next(b)[0], batches[2][0])
    for s in (a, b, c):
        s.close()

    d = WindowSampler(shards, T, B, seed=4, prefetch=prefetch)
    assert not torch.equal(next(d)[0], batches[0][0])  # another seed, another order
    d.close()
    with pytest.raises(LLMKitError, match="seed"):
        WindowSampler(shards, T, B, seed=4).load_state_dict(state)


def test_sampler_ranks_partition_batches(prepared):
    shards = TokenShards(prepared, "train")
    single = WindowSampler(shards, 8, 2, seed=0, prefetch=0)
    r0 = WindowSampler(shards, 8, 1, seed=0, rank=0, world_size=2, prefetch=0)
    r1 = WindowSampler(shards, 8, 1, seed=0, rank=1, world_size=2, prefetch=0)
    for _ in range(5):
        x, _ = next(single)
        assert torch.equal(torch.cat([next(r0)[0], next(r1)[0]]), x)


def test_val_batches_in_order(prepared):
    val = TokenShards(prepared, "val")
    T = 8
    full = torch.from_numpy(val.tokens(0, len(val)))
    batches = list(val.val_batches(T, batch_size=3))
    n = val.num_windows(T)
    assert sum(len(x) for x, _ in batches) == n > 3
    xs = torch.cat([x for x, _ in batches])
    ys = torch.cat([y for _, y in batches])
    for i in range(n):
        assert torch.equal(xs[i], full[i * T:(i + 1) * T]) and torch.equal(ys[i], full[i * T + 1:(i + 1) * T + 1])
    assert len(list(val.val_batches(T, 3, max_batches=1))) == 1
    assert [torch.equal(a[0], b[0]) for a, b in zip(batches, val.val_batches(T, 3))] == [True] * len(batches)


def test_sampler_too_small(prepared):
    with pytest.raises(LLMKitError, match="too few"):
        WindowSampler(TokenShards(prepared, "val"), 4096, 8)


def test_truncated_shard_is_reported(prepared):
    shard = prepared / "train_000000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(LLMKitError, match="train_000000.bin.*truncated"):
        TokenShards(prepared)


# --- errors ------------------------------------------------------------------------------------------
def test_bad_inputs(tok_dir, tmp_path):
    out = str(tmp_path / "out")
    good = tmp_path / "good.txt"
    good.write_text("some text", encoding="utf-8")
    cases = []
    cases.append(([str(tmp_path / "missing.txt")], str(tok_dir), "no such file.*missing.txt"))
    (tmp_path / "data.xlsx").write_text("a,b", encoding="utf-8")
    cases.append(([str(tmp_path / "data.xlsx")], str(tok_dir), "unknown format.*data.xlsx"))
    cases.append(([str(good)], str(tmp_path / "no_tok"), "tokenizer directory .*no_tok.* does not exist"))
    (tmp_path / "empty_tok").mkdir()
    cases.append(([str(good)], str(tmp_path / "empty_tok"), "no tokenizer files"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"content": "no text here"}\n', encoding="utf-8")
    cases.append(([str(bad)], str(tok_dir), r"bad.jsonl:2: no 'text' field \(fields: content\)"))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"text": \n', encoding="utf-8")
    cases.append(([str(broken)], str(tok_dir), "broken.jsonl:2: invalid JSON"))
    blank = tmp_path / "blank.txt"
    blank.write_text("  \n\n \t\n", encoding="utf-8")
    cases.append(([str(blank)], str(tok_dir), "empty corpus"))
    (tmp_path / "empty_dir").mkdir()
    cases.append(([str(tmp_path / "empty_dir")], str(tok_dir), "holds no readable files"))
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    cases.append(([str(binary)], str(tok_dir), "not UTF-8"))
    for sources, tok, pattern in cases:
        with pytest.raises(LLMKitError, match=pattern):
            prepare(sources, tok, out, workers=1)
    prepare([str(good)], str(tok_dir), out, workers=1)
    with pytest.raises(LLMKitError, match="--overwrite"):
        prepare([str(good)], str(tok_dir), out, workers=1)
    prepare([str(good)], str(tok_dir), out, workers=1, overwrite=True)


def test_cli(tok_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "x"}\n', encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        main(["data", "prepare", str(bad), "--tokenizer", str(tok_dir), "--out", str(tmp_path / "o")])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: {bad}:1: no 'text' field (fields: title); choose the field with --text-field"

    a, b = tmp_path / "a.txt", tmp_path / "b.md"
    a.write_text("one document", encoding="utf-8")
    b.write_text("another document", encoding="utf-8")
    main(["data", "prepare", str(a), str(b), "--tokenizer", str(tok_dir), "--out", str(tmp_path / "o"),
          "--val-fraction", "0.5", "--workers", "1", "--seq-len", "4"])
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["splits"]["train"]["docs"] == m["splits"]["val"]["docs"] == 1 and m["seq_len"] == 4
    assert m["sources"] == [str(a), str(b)]


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason=f"{SHAKESPEARE} not available")
def test_tinyshakespeare_paragraphs(tok_dir, tmp_path):
    m = prepare([str(SHAKESPEARE)], str(tok_dir), str(tmp_path / "out"), text_unit="paragraph", workers=1)
    assert m["splits"]["train"]["docs"] > 7000 and m["splits"]["val"]["docs"] > 10
    total = m["splits"]["train"]["tokens"] + m["splits"]["val"]["tokens"]
    assert abs(m["splits"]["val"]["tokens"] / total - 0.01) < 0.002


def test_preparation_shows_progress_against_the_input_size(tok_dir, tmp_path, capsys, monkeypatch):
    """In a log file: periodic lines with the input's size as the total (gzip's uncompressed)."""
    import gzip

    from llmkit.data.prepare import input_bytes

    monkeypatch.setenv("LLMKIT_PROGRESS_INTERVAL", "0")
    plain, packed = tmp_path / "a.txt", tmp_path / "b.txt.gz"
    text = "\n\n".join(docs(300, seed=3))
    plain.write_text(text)
    with gzip.open(packed, "wt") as f:
        f.write(text)
    assert input_bytes([plain, packed]) == 2 * len(text.encode())
    prepare([str(plain), str(packed)], tokenizer=str(tok_dir), out=str(tmp_path / "o"), seq_len=16,
            text_unit="paragraph", workers=1)
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("tokenizing:")]
    total = f"{round(2 * len(text.encode()) / 1e6, 1)}"
    assert lines and all(f"/{total} MB (" in x and "ETA" in x for x in lines), lines
    assert "(100%)" in lines[-1] and "docs=600" in lines[-1]
