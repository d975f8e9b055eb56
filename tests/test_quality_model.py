"""The learned quality filter (`llmkit.data.quality_model`): it learns, deterministically, its
files round-trip without pickle, its AUC is the rank statistic, and `llmkit data quality-train`
works end to end and fails in one line on bad input."""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys

import numpy as np
import pytest

from llmkit.data.quality_model import (CONFIG_FILE, WEIGHTS_FILE, QualityClassifier, featurize, pareto_keep,
                                       roc_auc)
from llmkit.errors import LLMKitError

SUBJECTS = ["the committee", "a young doctor", "the old bridge", "our neighbours", "the river", "the museum",
            "a small company", "the new school", "the government", "my grandmother"]
VERBS = ["announced", "described", "opened", "repaired", "visited", "explained", "built", "closed", "praised"]
OBJECTS = ["the annual report", "a long history", "the main road", "a quiet garden", "the final decision",
           "a public library", "the first results", "a careful plan", "the city council"]
ENDINGS = ["last spring.", "after a long delay.", "in the morning.", "with great care.", "for the first time.",
           "despite the rain.", "to everyone's surprise."]
SPAM = ["buy", "now", "cheap", "click", "free", "win", "offer", "deal", "pills", "casino", "www", "txt", "lol",
        "u", "ur", "2day", "prize", "urgent", "call", "claim"]


def prose(rng: random.Random, sentences: int = 4) -> str:
    return " ".join(f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(OBJECTS)} "
                    f"{rng.choice(ENDINGS)}" for _ in range(sentences))


def spam(rng: random.Random) -> str:
    return " ".join(rng.choice(SPAM) for _ in range(rng.randint(6, 20))).upper() + "!!!"


def shuffled(rng: random.Random, text: str) -> str:
    words = text.split()
    rng.shuffle(words)
    return " ".join(words)


@pytest.fixture(scope="module")
def toy() -> dict:
    rng = random.Random(0)
    return {"ref": [prose(rng) for _ in range(300)], "corpus": [spam(rng) for _ in range(300)]}


def test_learns_a_separable_toy_set(toy):
    model = QualityClassifier.train(toy["ref"][:200], toy["corpus"][:200], dim=2**14, epochs=3)
    p = model.scores(toy["ref"][200:] + toy["corpus"][200:])
    y = np.array([1] * 100 + [0] * 100)
    assert roc_auc(p, y) > 0.999
    assert ((p >= 0.5) == (y == 1)).mean() > 0.98
    assert p.dtype == np.float64 and ((0 <= p) & (p <= 1)).all()
    assert model.score(toy["ref"][250]) == pytest.approx(p[50], abs=1e-6)
    assert model.score("") == pytest.approx(float(1 / (1 + np.exp(-model.bias))))  # no words: the bias alone


def test_bigrams_see_word_order():
    """Shuffled prose has the same words as the prose: unigrams cannot tell them apart, bigrams can."""
    rng = random.Random(1)
    ref = [prose(rng) for _ in range(400)]
    corpus = [shuffled(rng, prose(rng)) for _ in range(400)]
    y = np.array([1] * 100 + [0] * 100)
    held_out = ref[300:] + corpus[300:]
    aucs = {n: roc_auc(QualityClassifier.train(ref[:300], corpus[:300], dim=2**16, ngrams=n, epochs=3).scores(held_out), y)
            for n in (1, 2)}
    assert aucs[1] < 0.7 < 0.97 < aucs[2], aucs


def test_class_balance(toy):
    """Ten times more corpus than reference documents: balanced weights keep the reference's
    scores high (an unweighted fit would lean towards the majority class)."""
    model = QualityClassifier.train(toy["ref"][:20], toy["corpus"][:200], dim=2**14, epochs=3)
    assert (model.scores(toy["ref"][200:]) > 0.5).mean() > 0.95


def test_deterministic_given_seed(toy):
    kw = dict(dim=2**14, epochs=2)
    a = QualityClassifier.train(toy["ref"][:100], toy["corpus"][:100], seed=3, **kw)
    b = QualityClassifier.train(toy["ref"][:100], toy["corpus"][:100], seed=3, **kw)
    c = QualityClassifier.train(toy["ref"][:100], toy["corpus"][:100], seed=4, **kw)
    assert a.weight.tobytes() == b.weight.tobytes() and a.bias == b.bias
    assert a.weight.tobytes() != c.weight.tobytes()


def test_features_are_stable_across_processes():
    """The hash of a word must not depend on PYTHONHASHSEED (Python's hash() does)."""
    text = "The Quick brown fox, the quick BROWN dog."
    idx, val = featurize(text, 2**20, 2)
    # lower-cased words, punctuation dropped: 5 distinct words + 5 distinct bigrams; "the", "quick",
    # "brown", "the quick" and "quick brown" twice. Values log(1 + count), L2-normalised.
    assert len(idx) == 10 and np.all(np.diff(idx) > 0)
    assert np.dot(val, val) == pytest.approx(1.0)
    assert np.isclose(val / val.min(), np.log(3) / np.log(2)).sum() == 5
    code = ("import sys, json; from llmkit.data.quality_model import featurize; "
            f"i, v = featurize({text!r}, 2**20, 2); print(json.dumps(i.tolist()))")
    outs = set()
    for seed in ("1", "2"):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           env={**__import__("os").environ, "PYTHONHASHSEED": seed})
        assert r.returncode == 0, r.stderr
        outs.add(r.stdout.strip())
    assert outs == {json.dumps(idx.tolist())}


def test_save_load_round_trip_without_pickle(toy, tmp_path):
    model = QualityClassifier.train(toy["ref"][:100], toy["corpus"][:100], dim=2**12, ngrams=3, epochs=2)
    folder = model.save(tmp_path / "clf")
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]  # no temp files left
    back = QualityClassifier.load(folder)
    texts = toy["ref"][200:220] + toy["corpus"][200:220]
    assert np.array_equal(back.scores(texts), model.scores(texts))
    assert (back.dim, back.ngrams) == (2**12, 3)
    # safetensors: an 8-byte header length, a JSON header, raw little-endian data. No pickle.
    raw = (folder / WEIGHTS_FILE).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    assert header["weight"] == {"dtype": "F32", "shape": [2**12], "data_offsets": header["weight"]["data_offsets"]}
    assert len(raw) == 8 + n + 4 * (2**12 + 1)
    start, end = header["weight"]["data_offsets"]
    assert np.array_equal(np.frombuffer(raw[8 + n + start:8 + n + end], dtype="<f4"), model.weight)
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["features"]["dim"] == 2**12 and config["train"]["seed"] == 0


def test_load_errors(tmp_path, toy):
    with pytest.raises(LLMKitError, match="not a folder"):
        QualityClassifier.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LLMKitError, match="not a quality classifier folder"):
        QualityClassifier.load(tmp_path / "empty")
    folder = QualityClassifier.train(toy["ref"][:20], toy["corpus"][:20], dim=64, epochs=1).save(tmp_path / "m")
    config = json.loads((folder / CONFIG_FILE).read_text())
    (folder / CONFIG_FILE).write_text(json.dumps({**config, "features": {**config["features"], "dim": 65}}))
    with pytest.raises(LLMKitError, match="expected 'weight'"):
        QualityClassifier.load(folder)
    (folder / WEIGHTS_FILE).write_bytes(b"garbage")
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(LLMKitError, match="cannot read"):
        QualityClassifier.load(folder)


@pytest.mark.parametrize("kwargs, match", [({"dim": 1}, "dim"), ({"ngrams": 0}, "ngrams"), ({"epochs": 0}, "epochs"),
                                           ({"lr": -1.0}, "lr"), ({"l2": float("nan")}, "l2")])
def test_train_settings_validated(kwargs, match):
    with pytest.raises(LLMKitError, match=match):
        QualityClassifier.train(["a b c"], ["d e f"], **kwargs)


def test_train_needs_both_classes():
    with pytest.raises(LLMKitError, match="needs reference and corpus documents"):
        QualityClassifier.train(["some good text"], [], dim=64)


def test_roc_auc_is_the_rank_statistic():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300) + 0.3 * y, 1)  # rounded: many ties
    pos, neg = s[y == 1], s[y == 0]
    brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert roc_auc(s, y) == pytest.approx(brute, abs=1e-12)
    try:
        from sklearn.metrics import roc_auc_score
    except ImportError:
        pass
    else:
        assert roc_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert roc_auc([0.1, 0.9], [0, 1]) == 1.0 and roc_auc([0.5, 0.5], [0, 1]) == 0.5
    assert np.isnan(roc_auc([0.1, 0.2], [1, 1]))


def test_pareto_keep():
    rng = np.random.default_rng(0)
    assert pareto_keep(np.ones(1000), rng).all()  # pareto draws are positive: > 1 - 1 = 0
    low = pareto_keep(np.zeros(100_000), rng).mean()
    assert low == pytest.approx(2.0 ** -9, rel=0.3)  # P(Lomax(9) > 1) = 2^-9


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "llmkit", "data", "quality-train", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_cli_end_to_end(tmp_path, toy):
    (tmp_path / "ref.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in toy["ref"][:150]))
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "a.txt").write_text("\n".join(toy["corpus"][:80]))
    (tmp_path / "web" / "b.txt").write_text("\n".join(toy["corpus"][80:150]))
    args = ["ref.jsonl", "web", "clf", "--text-field", "body", "--text-unit", "line", "--dim", "4096",
            "--epochs", "2", "--val-fraction", "0.2"]
    r = _cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("quality-train: 150 reference + 150 corpus docs (60 held out)")
    assert "held-out accuracy 1.000, AUC 1.000" in lines[0]
    config = json.loads((tmp_path / "clf" / CONFIG_FILE).read_text())
    assert config["metrics"]["held_out"]["docs"] == 60 and config["metrics"]["held_out"]["auc"] == 1.0
    assert config["data"]["held_out_docs"] == 60 and config["features"] == {**config["features"], "dim": 4096}
    hist = config["score_histogram"]
    assert sum(hist["reference"]) == sum(hist["corpus"]) == 30 and len(hist["reference"]) == 20
    model = QualityClassifier.load(tmp_path / "clf")
    assert model.score(toy["ref"][200]) > 0.5 > model.score(toy["corpus"][200])

    again = _cli(*args, cwd=tmp_path)  # refuses to replace it...
    assert again.returncode != 0 and "already holds a quality classifier" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1 and "Traceback" not in again.stderr
    assert _cli(*args, "--overwrite", cwd=tmp_path).returncode == 0  # ...unless asked


@pytest.mark.parametrize("case, match", [("empty", "no documents in the corpus sources"),
                                         ("missing", "no such file or folder: 'nope.jsonl'"),
                                         ("field", "no 'body' field")])
def test_cli_bad_input(tmp_path, case, match):
    (tmp_path / "ref.jsonl").write_text(json.dumps({"text": "Good text here."}) + "\n")
    (tmp_path / "empty.jsonl").write_text("\n")
    corpus = {"empty": "empty.jsonl", "missing": "nope.jsonl", "field": "ref.jsonl"}[case]
    extra = ["--text-field", "body"] if case == "field" else []
    r = _cli("ref.jsonl", corpus, "clf", *extra, cwd=tmp_path)
    assert r.returncode != 0
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and match in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "clf").exists()  # nothing written


def test_quality_train_in_process(tmp_path, toy, capsys):
    """No held-out split (val_fraction=0): metrics and histograms are the training set's;
    max_docs reads only the first documents of each side."""
    from llmkit.data.quality_model import quality_train

    (tmp_path / "ref.txt").write_text("\n".join(toy["ref"]))
    (tmp_path / "corpus.txt").write_text("\n".join(toy["corpus"]))
    config = quality_train([str(tmp_path / "ref.txt")], [str(tmp_path / "corpus.txt")], str(tmp_path / "out"),
                           text_unit="line", val_fraction=0.0, dim=1024, epochs=1, max_docs=40)
    assert config == json.loads((tmp_path / "out" / CONFIG_FILE).read_text())
    assert config["data"]["reference_docs"] == config["data"]["corpus_docs"] == 40
    assert config["metrics"]["held_out"] == {} and config["metrics"]["train"]["docs"] == 80
    assert config["score_histogram"]["split"] == "train"
    assert "training-set accuracy" in capsys.readouterr().out
    with pytest.raises(LLMKitError, match="val_fraction"):
        quality_train([str(tmp_path / "ref.txt")], [str(tmp_path / "corpus.txt")], str(tmp_path / "o2"),
                      val_fraction=1.0)


def test_curate_filters_by_the_classifier_and_reports_what_it_kept_and_removed(tmp_path, toy):
    """`data curate --quality-model`: documents scored below the threshold are removed; report.json
    and report.md show the score histogram and examples of both sides, and the PII section counts
    per type with its examples redacted (the report is shared; the corpus stays where it is)."""
    from llmkit.data.curate import curate

    QualityClassifier.train(toy["ref"][:200], toy["corpus"][:200], dim=2**14, epochs=3).save(tmp_path / "clf")
    rng = random.Random(7)
    docs = [prose(rng, 12) for _ in range(10)] + [spam(rng) * 4 for _ in range(5)]
    docs[3] += " Write to jane.doe@example.org for the minutes."
    rng.shuffle(docs)
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs), encoding="utf-8")
    report = curate([str(path)], str(tmp_path / "out"), quality=False, near_dedup=False, decontaminate=None,
                    quality_model=str(tmp_path / "clf"), pii="report", examples=2)
    assert report["per_rule"]["quality_classifier"]["docs"] == 5
    kept = [json.loads(line)["text"] for line in (tmp_path / "out" / report["output"]["files"][0]).open()]
    assert kept == [t for t in docs if not t.endswith("!!!")]
    f = report["filters"]["quality_classifier"]
    assert sum(f["score_histogram"]) == 15 and f["threshold"] == 0.5
    assert len(f["kept_examples"]) == 2 and all(ex["score"] >= 0.5 for ex in f["kept_examples"])
    assert all(ex["score"] < 0.5 for ex in report["per_rule"]["quality_classifier"]["examples"])
    assert report["filters"]["pii"]["matches"]["email"] == 1
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "## Quality classifier" in md and "5 scored below 0.5 and were removed, 10 kept" in md
    assert f["kept_examples"][0]["text"][:40] in md and "!!!" in md.split("Removed:")[1]
    assert "## Personal information" in md and "| email | 1 |" in md and "<EMAIL>" in md
    assert "jane.doe@example.org" not in md + (tmp_path / "out" / "report.json").read_text()
