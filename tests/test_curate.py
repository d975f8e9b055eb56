"""`llmkit data curate`: each quality rule, exact and near dedup, decontamination, mixing, report."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from llmkit.cli import main
from llmkit.data import iter_documents
from llmkit.data.curate import MinHashLSH, QualityFilter, curate, lsh_bands, normalized_words, parse_weights
from llmkit.errors import LLMKitError

CONS, VOW = "bdfgklmnprstvz", "aeiou"
SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text" / "tinyshakespeare.txt"


def pseudo_words(n: int, seed: int, syllables: tuple[int, int] = (2, 3)) -> list[str]:
    """n distinct pronounceable letter-only words: text without accidental repetition."""
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        w = "".join(rng.choice(CONS) + rng.choice(VOW) for _ in range(rng.randint(*syllables)))
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def with_stop_words(words: list[str]) -> list[str]:
    words = list(words)
    words[3], words[17] = "the", "and"
    return words


def lines_of(words: list[str], per_line: int = 8) -> str:
    return "\n".join(" ".join(words[i:i + per_line]).capitalize() + "." for i in range(0, len(words), per_line))


def good(n: int = 80, seed: int = 0) -> str:
    return lines_of(with_stop_words(pseudo_words(n, seed)))


def bad_docs() -> dict[str, str]:
    """For each rule, a document that fails that rule and no other (default thresholds)."""
    cases = {"too_few_words": good(30, 100)}
    cases["mean_word_length"] = lines_of(with_stop_words(pseudo_words(80, 1, (6, 7))))
    w = with_stop_words(pseudo_words(80, 2))
    for i in list(range(0, 80, 8)) + [5]:
        w[i] = "#" + w[i]
    cases["symbol_word_ratio"] = lines_of(w)
    cases["bullet_lines"] = "\n".join("• " + line for line in good(80, 3).split("\n"))
    lines = good(80, 4).split("\n")
    for i in (1, 3, 5, 7):
        lines[i] = lines[i][:-1] + "…"
    cases["ellipsis_lines"] = "\n".join(lines)
    w = with_stop_words(pseudo_words(80, 5))
    for i in range(1, 80, 3):
        w[i] = "&"
    cases["alpha_words"] = lines_of(w + pseudo_words(10, 55))
    w = with_stop_words(pseudo_words(80, 6))
    rng = random.Random(0)
    for i in range(0, 80, 4):
        w[i] = "ab" + "".join(rng.choice("0123456789") for _ in range(8))
    cases["digit_fraction"] = lines_of(w)
    cases["stop_words"] = lines_of(pseudo_words(80, 7))
    out = []
    for i, line in enumerate(good(80, 8).split("\n")):
        out += [line, "Share this."] if i < 8 else [line]
    cases["duplicate_lines"] = "\n".join(out)
    long = "Pneumonoultramicroscopicsilicovolcanoconiosis"  # one long word: no repeated n-grams
    out = []
    for i, line in enumerate(good(64, 9).split("\n")):
        out += [line, long] if i < 4 else [line]
    cases["duplicate_line_chars"] = "\n".join(out)
    w = with_stop_words(pseudo_words(80, 10))
    pair = pseudo_words(2, 11, (5, 5))
    for i in range(5, 80, 10):
        w[i:i + 2] = pair
    cases["top_ngram"] = lines_of(w)
    w = with_stop_words(pseudo_words(80, 12))
    phrase = pseudo_words(8, 13)
    cases["duplicate_ngram"] = lines_of(w[:10] + phrase + w[10:40] + phrase + w[40:70] + phrase + w[70:], 9)
    return cases


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
def test_good_document_passes():
    for seed in range(5):
        assert QualityFilter().check(good(80, seed), first_only=False) == []


@pytest.mark.parametrize("rule", list(bad_docs()))
def test_each_rule_alone(rule):
    assert QualityFilter().check(bad_docs()[rule], first_only=False) == [rule]


def test_thresholds_are_parameters():
    doc = good(80, 0)
    assert QualityFilter(max_words=60).check(doc, first_only=False) == ["too_many_words"]
    bad = bad_docs()
    # Disabling a rule (None) keeps the document that only that rule removed.
    assert QualityFilter(max_digit_fraction=None).check(bad["digit_fraction"]) == []
    assert QualityFilter(min_stop_words=0).check(bad["stop_words"]) == []
    assert QualityFilter(max_duplicate_ngram_fraction=(0.5,) * 6).check(bad["duplicate_ngram"]) == []
    assert QualityFilter().check(bad["duplicate_lines"], first_only=True) == ["duplicate_lines"]
    assert QualityFilter().check("") == ["too_few_words"]


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


def test_minhash_estimates_jaccard():
    lsh = MinHashLSH(num_perm=256, threshold=0.5, shingle_size=1)
    a = pseudo_words(400, 1)
    b = a[:300] + pseudo_words(100, 2)  # Jaccard 300 / 500 = 0.6
    sa, sb = lsh.signature(a), lsh.signature(b)
    assert abs(np.mean(sa == sb) - 0.6) < 0.1
    lsh.insert(sa)
    assert lsh.query(sb) == 0
    assert lsh.query(lsh.signature(pseudo_words(400, 3))) is None
    b, r = lsh_bands(0.8, 128)
    assert b * r <= 128 and 0.7 < (1 / b) ** (1 / r) < 0.9  # the S-curve's midpoint near 0.8
    assert 1 - (1 - 0.9 ** r) ** b > 0.99  # a 0.9-similar pair is almost surely a candidate


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


def test_normalized_words():
    assert normalized_words("Hello, WORLD! It's 2024.") == ["hello", "world", "it", "s", "2024"]


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


def test_parse_weights_errors():
    assert parse_weights([1, 3], ["a", "b"]) == [0.25, 0.75]
    assert parse_weights(["b:1", "C:/x.txt:1"], ["C:/x.txt", "b"]) == [0.5, 0.5]
    for weights, pattern in [([1], "1 weight"), (["a:1", 2], "all as"), (["c:1", "b:1"], "'c' is not"),
                             (["a:1"], "no weight for source"), (["x", 1], "not a number"), ([0, 0], "positive"),
                             ([-1, 2], ">= 0")]:
        with pytest.raises(LLMKitError, match=pattern):
            parse_weights(weights, ["a", "b"])


# --- CLI and errors -----------------------------------------------------------------------------------
def test_cli_and_errors(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [good(80, i) for i in range(3)] + [good(20, 9)])
    main(["data", "curate", str(src), "--out", str(tmp_path / "out"), "--min-words", "10"])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["totals"]["docs_kept"] == 4  # --min-words 10 keeps the 20-word document
    with pytest.raises(SystemExit) as e:
        main(["data", "curate", str(src), "--out", str(tmp_path / "out")])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err
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
