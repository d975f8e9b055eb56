"""`llmkit data curate`: each quality rule, exact and near dedup, decontamination, mixing, report."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from llmkit.cli import main
from llmkit.data import iter_documents
from llmkit.data.curate import curate
from llmkit.errors import LLMKitError
from tests.helpers import cli_error
from tests.test_data_filters import bad_docs, good, lines_of, pseudo_words, with_stop_words

SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text" / "tinyshakespeare.txt"


def write_jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    path.write_text("".join(json.dumps({field: t}) + "\n" for t in texts), encoding="utf-8")
    return path


def read_out(out: Path) -> list[dict]:
    report = json.loads((out / "report.json").read_text())
    rows = []
    for name in report["output"]["files"]:
        rows += [json.loads(line) for line in (out / name).read_text(encoding="utf-8").splitlines()]
    return rows


# --- quality rules ----------------------------------------------------------------------------------
def test_curate_removes_each_rule_and_report_adds_up(tmp_path):
    bad = bad_docs()
    goods = [good(80, 1000 + i) for i in range(6)]
    a = write_jsonl(tmp_path / "a.jsonl", goods[:3] + list(bad.values())[:6])
    b_dir = tmp_path / "b"
    b_dir.mkdir()
    for i, t in enumerate(goods[3:] + list(bad.values())[6:]):
        (b_dir / f"{i:02d}.txt").write_text(t, encoding="utf-8")
    report = curate([str(a), str(b_dir)], str(tmp_path / "out"))
    for rule in bad:
        assert report["per_rule"][rule]["docs"] == 1, rule
        assert len(report["per_rule"][rule]["examples"]) == 1
    assert report["per_rule"]["exact_duplicate"]["docs"] == report["per_rule"]["near_duplicate"]["docs"] == 0
    kept = read_out(tmp_path / "out")
    assert [r["text"] for r in kept] == goods
    assert [r["source"] for r in kept] == [str(a)] * 3 + [str(b_dir)] * 3
    t = report["totals"]
    assert t["docs_in"] == len(goods) + len(bad) and t["docs_kept"] == len(goods)
    for v in report["per_source"].values():
        assert v["docs_in"] == v["docs_kept"] + sum(r["docs"] for r in v["removed"].values())
        assert v["words_in"] == v["words_kept"] + sum(r["words"] for r in v["removed"].values())
    assert t["docs_removed"] == sum(r["docs"] for r in report["per_rule"].values())
    assert t["words_removed"] == sum(r["words"] for r in report["per_rule"].values())
    assert t["words_in"] == sum(len(x.split()) for x in goods + list(bad.values()))
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "| too_few_words | 1 |" in md and "whitespace-separated" in md
    # `data prepare` (and every reader) sees only the curated shards of the folder, not the report.
    assert [d.text for d in iter_documents([str(tmp_path / "out")])] == goods


# --- de-duplication ---------------------------------------------------------------------------------
def test_exact_duplicates(tmp_path):
    docs = [good(80, i) for i in range(4)]
    variants = [docs[0].upper(), docs[1].replace(" ", "  \n "), docs[2]]
    write_jsonl(tmp_path / "in.jsonl", docs + variants)
    report = curate([str(tmp_path / "in.jsonl")], str(tmp_path / "out"), near_dedup=False, quality=False)
    assert report["per_rule"]["exact_duplicate"]["docs"] == 3
    assert [r["text"] for r in read_out(tmp_path / "out")] == docs


def perturb(text: str, n_changes: int, seed: int) -> str:
    words = text.split(" ")
    rng = random.Random(seed)
    for i in rng.sample(range(len(words)), n_changes):
        words[i] = "zzz" + words[i]
    return " ".join(words)


def test_minhash_near_duplicates(tmp_path):
    originals = [good(400, 200 + i) for i in range(8)]
    near = [perturb(originals[i], 4, seed=i) for i in range(4)]  # Jaccard of 5-shingles 0.90-0.91
    distinct = [good(400, 300 + i) for i in range(8)]
    write_jsonl(tmp_path / "in.jsonl", originals + near + distinct)
    report = curate([str(tmp_path / "in.jsonl")], str(tmp_path / "out"))
    assert report["per_rule"]["near_duplicate"]["docs"] == 4
    assert [r["text"] for r in read_out(tmp_path / "out")] == originals + distinct
    assert report["settings"]["near_dedup"]["bands"] * report["settings"]["near_dedup"]["rows"] <= 128


# --- decontamination ---------------------------------------------------------------------------------
def test_decontamination_13_grams(tmp_path):
    question = pseudo_words(20, 400)
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text(json.dumps({"question": " ".join(question), "answer": "B"}) + "\n"
                         + json.dumps({"question": "too short to matter", "answer": "A"}) + "\n", encoding="utf-8")
    base = [with_stop_words(pseudo_words(80, 500 + i)) for i in range(3)]
    planted13 = base[0][:30] + [w.upper() + "," for w in question[3:16]] + base[0][30:]  # case/punct differ
    planted12 = base[1][:30] + question[3:15] + base[1][30:]
    docs = [lines_of(planted13), lines_of(planted12), lines_of(base[2])]
    write_jsonl(tmp_path / "in.jsonl", docs)
    report = curate([str(tmp_path / "in.jsonl")], str(tmp_path / "out"), decontaminate=[str(eval_file)])
    assert report["per_rule"]["contaminated"]["docs"] == 1
    assert [r["text"] for r in read_out(tmp_path / "out")] == docs[1:]
    d = report["settings"]["decontamination"]
    assert d["ngram"] == 13 and d["eval_docs"] == 2 and d["eval_docs_shorter_than_ngram"] == 1
    report = curate([str(tmp_path / "in.jsonl")], str(tmp_path / "out2"), decontaminate=[str(eval_file)],
                    decontaminate_ngram=12)
    assert report["per_rule"]["contaminated"]["docs"] == 2


# --- mixing -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("weights", [[0.75, 0.25], ["A:3", "B:1"]])
def test_mixing_weights(tmp_path, weights):
    a = write_jsonl(tmp_path / "a.jsonl", [f"alpha {i} " + "word " * 49 for i in range(200)])
    b = write_jsonl(tmp_path / "b.jsonl", [f"beta {i} " + "word " * 49 for i in range(200)])
    weights = [w.replace("A", str(a)).replace("B", str(b)) if isinstance(w, str) else w for w in weights]
    kw = dict(weights=weights, quality=False, near_dedup=False, seed=1)
    report = curate([str(a), str(b)], str(tmp_path / "out"), **kw)
    mix = report["mixing"]
    assert mix[str(a)]["multiplier"] == pytest.approx(1.5) and mix[str(b)]["multiplier"] == pytest.approx(0.5)
    assert abs(mix[str(a)]["share_out"] - 0.75) < 0.04
    rows = read_out(tmp_path / "out")
    n_a = sum(r["source"] == str(a) for r in rows)
    assert 270 <= n_a <= 330 and 70 <= len(rows) - n_a <= 130
    assert all(2 >= c >= 1 for c in _counts(rows, "alpha").values()) and len(_counts(rows, "alpha")) == 200
    assert report["output"]["docs"] == len(rows) and report["output"]["words"] == 51 * len(rows)
    # Interleaved: the first quarter of the output already has about the mixture.
    head = rows[: len(rows) // 4]
    assert abs(sum(r["source"] == str(a) for r in head) / len(head) - 0.75) < 0.05
    again = curate([str(a), str(b)], str(tmp_path / "again"), **kw)
    assert read_out(tmp_path / "again") == rows and again["mixing"] == mix  # deterministic
    total = curate([str(a), str(b)], str(tmp_path / "small"), total_words=5100, **kw)
    assert abs(total["output"]["words"] - 5100) < 600


def _counts(rows: list[dict], prefix: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        if r["text"].startswith(prefix):
            out[r["text"]] = out.get(r["text"], 0) + 1
    return out


# --- CLI and errors -----------------------------------------------------------------------------------
def test_cli_and_errors(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [good(80, i) for i in range(3)] + [good(20, 9)])
    main(["data", "curate", str(src), "--out", str(tmp_path / "out"), "--min-words", "10"])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["totals"]["docs_kept"] == 4  # --min-words 10 keeps the 20-word document
    cli_error(capsys, ["data", "curate", str(src), "--out", str(tmp_path / "out")], "--overwrite")  # exit 1, one line
    main(["data", "curate", str(src), "--out", str(tmp_path / "out"), "--overwrite", "--max-top-ngram-fraction",
          "0.5", "0.5", "0.5"])
    with pytest.raises(LLMKitError, match="no such file"):
        curate([str(tmp_path / "nope.jsonl")], str(tmp_path / "o2"))
    with pytest.raises(LLMKitError, match="no such file"):
        curate([str(src)], str(tmp_path / "o3"), decontaminate=[str(tmp_path / "eval.jsonl")])
    with pytest.raises(LLMKitError, match="empty corpus"):
        curate([str(write_jsonl(tmp_path / "blank.jsonl", ["  ", ""]))], str(tmp_path / "o4"))
    with pytest.raises(LLMKitError, match="no document survived.*report.md"):
        curate([str(src), str(write_jsonl(tmp_path / "short.jsonl", ["tiny doc"]))], str(tmp_path / "o5"),
               weights=[0.5, 0.5])
    report = json.loads((tmp_path / "o5" / "report.json").read_text())  # written all the same
    assert report["per_rule"]["too_few_words"]["docs"] == 2 and report["output"]["docs"] == 0
    assert "Mixing failed" in (tmp_path / "o5" / "report.md").read_text(encoding="utf-8")


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason=f"{SHAKESPEARE} not available")
def test_tinyshakespeare_paragraphs(tmp_path):
    report = curate([str(SHAKESPEARE)], str(tmp_path / "out"), text_unit="paragraph", min_words=20)
    t = report["totals"]
    assert t["docs_in"] > 7000 and 0 < t["docs_kept"] < t["docs_in"]
    assert t["docs_in"] == t["docs_kept"] + sum(r["docs"] for r in report["per_rule"].values())


def test_near_duplicate_rule_matches_the_sequential_index(tmp_path):
    """The batch LSH pass over the signature file gives what the sequential rule gives: a document
    is removed when an earlier document that is kept shares an LSH band with it and their
    signatures agree in >= threshold of their positions (buckets here are smaller than the cap)."""
    import numpy as np

    from llmkit.data.curate import _near_duplicates, _Signatures
    from llmkit.data.dedup import MinHashLSH

    lsh = MinHashLSH(num_perm=64, threshold=0.7)
    rng = np.random.default_rng(3)
    sigs = rng.integers(0, 2**32, size=(400, 64), dtype=np.uint32)
    for j in rng.choice(np.arange(50, 400), size=80, replace=False):  # near copies of earlier ones
        i = int(rng.integers(0, j))
        flip = rng.random(64) < rng.uniform(0.0, 0.5)
        sigs[j] = np.where(flip, sigs[j], sigs[i])
    alive = rng.random(400) > 0.1
    path = tmp_path / "sigs.u32"
    path.write_bytes(sigs.tobytes())
    reader = _Signatures(path, 400, 64)
    reader.BLOCK = 37  # several blocks, ragged
    got = _near_duplicates(reader, alive, lsh)

    def bands_of(v):
        return [tuple(v[b * lsh.rows:(b + 1) * lsh.rows]) for b in range(lsh.bands)]

    want = np.zeros(400, dtype=bool)
    for j in np.flatnonzero(alive):
        for i in np.flatnonzero(alive[:j] & ~want[:j]):
            shares = any(x == y for x, y in zip(bands_of(sigs[i]), bands_of(sigs[j])))
            if shares and (sigs[i] == sigs[j]).mean() >= lsh.threshold:
                want[j] = True
                break
    assert 20 < want.sum() < 80 and (got == want).all()
