"""Text classification (`llmkit classify train/predict`): reading labelled tables, splits,
metrics, a separable set learned, the three methods, exact resume, predictions that reproduce
the training run's test metrics, and bad input -> one-line errors. Tiny models, crafted data."""

from __future__ import annotations

import csv
import json
import random
import signal
from pathlib import Path

import pytest
import torch

import llmkit.recipes.classify as cl
from llmkit.checkpoint import load_model, load_weights
from llmkit.cli import main
from llmkit.training.loop import TrainConfig
from tests.conftest import run_two_ways, sigterm_at_call
from tests.test_data_tables import write_table
from tests.helpers import cli_error, cli_run

# Two classes told apart by which words occur (anywhere in the text), over shared filler words.
FILLER = ["the", "model", "reads", "a", "short", "story", "about", "time", "and", "text"]
CUES = {"sport": ["goal", "match", "team"], "food": ["bread", "soup", "cake"]}


def separable(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "sport" if i % 2 else "food"
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 7))]
        for _ in range(2):
            words.insert(rng.randint(0, len(words)), rng.choice(CUES[label]))
        rows.append((label, " ".join(words)))
    return rows


@pytest.fixture(scope="module")
def base(tiny_model_dir) -> Path:
    return tiny_model_dir()  # the session's tiny llama + tokenizer, shared read-only


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_table(tmp_path_factory.mktemp("clsdata") / "train.tsv", separable(160))


def args(base, data, out, *extra) -> list[str]:
    return ["classify", "train", str(base), "--data", str(data), "--out", str(out), "--train.tensorboard", "false",
            "--train.warmup_steps", "0", "--train.micro_batch_size", "8", "--train.lr", "2e-3", *extra]


def metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def losses(out: Path) -> dict[int, str]:
    with open(out / "metrics.csv") as f:
        return {int(r["step"]): r["value"] for r in csv.DictReader(f) if r["metric"] == "loss"}


# --- training -------------------------------------------------------------------------------------
def test_full_classifier_learns_a_separable_set_and_predict_reproduces_its_test_metrics(base, data, tmp_path, capsys):
    out = tmp_path / "full"
    # float32: the run's test report and the reloaded classifier compute the very same numbers.
    main(args(base, data, out, "--train.max_steps", "60", "--train.eval_every", "30", "--train.precision", "fp32"))
    m = metrics(out)
    assert m["labels"] == ["food", "sport"] and m["examples"] == {"train": 112, "val": 16, "test": 32}
    assert m["val"]["accuracy"] >= 0.9 and m["test"]["accuracy"] >= 0.9, (m["val"]["accuracy"], m["test"]["accuracy"])
    assert sum(map(sum, m["test"]["confusion_matrix"])) == 32
    md = (out / "confusion_matrix.md").read_text()
    assert "| true \\ predicted | food | sport |" in md and "### test" in md
    final = out / "final"
    meta = json.loads((final / "classifier.json").read_text())
    assert meta["labels"] == ["food", "sport"] and meta["method"] == "full"
    assert (final / "model.safetensors").exists() and (final / "tokenizer.json").exists()

    # The saved classifier, loaded by `classify predict`, labels the whole file as the trained
    # model did its test split: on the held-out part it must agree with metrics.json.
    net, tok, meta = cl.load_classifier(out)
    texts = cl.read_labeled(data)
    probs = cl.predict_proba(net, [t[:meta["max_seq_len"]] for t in tok.encode_batch(texts.texts)], 2, meta["pad_id"])
    val, test, _ = cl.stratified_split(texts.labels, (0.1, 0.2), seed=TrainConfig().seed)  # the run's split
    acc = sum(meta["labels"][int(probs[i].argmax())] == texts.labels[i] for i in test) / len(test)
    assert acc == pytest.approx(m["test"]["accuracy"])

    # CLI prediction: positional texts printed; a file written with the input's columns kept.
    pred = tmp_path / "pred.csv"
    code, stdout, err = cli_run(capsys, ["classify", "predict", out, "--file", data, "--out", pred])
    assert code == 0, err[-2000:]
    rows = list(csv.DictReader(open(pred)))
    assert list(rows[0]) == ["label", "text", "prediction", "probability"] and len(rows) == 160
    assert [row["prediction"] for row in rows] == [meta["labels"][int(k)] for k in probs.argmax(-1)]
    assert "accuracy" in stdout  # scored against the file's label column ...
    file_acc = sum(row["prediction"] == row["label"] for row in rows) / len(rows)
    assert f"accuracy {file_acc:.4f}" in stdout, stdout  # ... with the predictions it wrote
    code, stdout, err = cli_run(capsys, ["classify", "predict", final, "goal team the match", "bread and soup"])
    assert code == 0, err[-2000:]
    lines = stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["sport", "food"]


def test_lora_classifier_saves_adapter_and_head_only(base, data, tmp_path):
    out = tmp_path / "lora"
    main(args(base, data, out, "--method", "lora", "--lora.r", "4", "--lora.targets", "q", "v",
              "--train.max_steps", "40", "--train.eval_every", "0", "--train.lr", "5e-3"))
    final = out / "final"
    sd = load_weights(final)
    assert (final / "adapter_config.json").exists() and not (final / "model.safetensors").exists()
    assert set(sd) == {k for k in sd if "lora_" in k} | {"lm_head.weight", "lm_head.bias"}
    assert sd["lm_head.weight"].shape == (2, 64)
    assert {k.split(".")[-2] for k in sd if "lora_" in k} == {"q", "v"}
    assert metrics(out)["test"]["accuracy"] >= 0.8  # chance: 0.5
    net, _, meta = cl.load_classifier(final)  # base + adapter + head, merged
    assert meta["method"] == "lora" and net.lm_head.weight.shape == (2, 64)


def test_freeze_trains_only_the_head_and_last_block(base, data, tmp_path):
    out = tmp_path / "freeze"
    main(args(base, data, out, "--method", "freeze", "--train_last", "1", "--train.max_steps", "5",
              "--train.eval_every", "0", "--test_fraction", "0"))
    before = load_model(base, dtype=torch.float32).model.state_dict()
    after = load_weights(out / "final")
    assert after["lm_head.weight"].shape == (2, 64)  # the vocabulary head is gone
    for k, v in before.items():
        if k.startswith("blocks.0.") or k.startswith("embed."):
            assert torch.equal(after[k], v), k  # bitwise unchanged
    assert not torch.equal(after["blocks.1.attn.q.weight"], before["blocks.1.attn.q.weight"])
    assert "test" not in metrics(out)


@pytest.mark.parametrize("method,extra", [
    ("full", []),
    ("lora", ["--lora.dropout", "0.1"]),  # dropout: the RNG state must resume too
])
def test_interrupted_and_resumed_equals_uninterrupted(base, data, tmp_path, monkeypatch, method, extra):
    common = ["--method", method, *extra, "--train.max_steps", "7", "--train.eval_every", "3",
              "--train.save_every", "0"]
    ref = tmp_path / "ref"
    main(args(base, data, ref, *common))
    out = tmp_path / "resumed"
    sigterm_at_call(monkeypatch, cl, "class_logits", at=4)  # during training step 4
    with pytest.raises(SystemExit) as e:
        main(args(base, data, out, *common))
    assert e.value.code == 128 + signal.SIGTERM
    assert (out / "checkpoints" / "step-00000004").is_dir()
    monkeypatch.undo()
    main(args(base, data, out, *common, "--resume", "auto"))  # the short form the loop prints
    a, b = losses(ref), losses(out)
    assert sorted(a) == sorted(b) == list(range(1, 8)) and a == b
    wa, wb = load_weights(ref / "final"), load_weights(out / "final")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert metrics(ref)["test"] == metrics(out)["test"]


# --- errors ---------------------------------------------------------------------------------------
def test_cli_errors_exit_1(base, data, tmp_path, capsys):
    # In-process: exit code 1 and one `error: ...` line on stderr, no traceback (see cli_error).
    cli_error(capsys, args(base, data, tmp_path / "o", "--label_col", "category"),
              "no label column 'category' (columns found: 'label', 'text')")
    one_class = write_table(tmp_path / "one.tsv", [("a", f"text {i}") for i in range(10)])
    cli_error(capsys, args(base, one_class, tmp_path / "o"), "only one class ('a')")
    val = write_table(tmp_path / "val.tsv", [("food", "soup"), ("drink", "tea")])
    cli_error(capsys, args(base, data, tmp_path / "o", "--val_data", val),
              "val labels ['drink'] do not occur in the training data")
    cli_error(capsys, args(base, tmp_path / "missing.tsv", tmp_path / "o"), "no such file")
    cli_error(capsys, ["classify", "predict", base, "hello"], "not a classifier (no classifier.json)")
    cli_error(capsys, ["classify", "predict", tmp_path / "nothing", "hello"], "no such classifier directory")


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(base, data, tmp_path):
    run_two_ways(["classify", "train", base, "--data", data, "--train.max_steps", "6", "--train.eval_every", "3",
                  "--train.save_every", "0", "--train.warmup_steps", "0", "--train.lr", "2e-3"],
                 tmp_path / "one", tmp_path / "two")
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for s in a:
        assert float(b[s]) == pytest.approx(float(a[s]), rel=1e-5), (s, a[s], b[s])
    assert metrics(tmp_path / "two")["test"]["confusion_matrix"] == metrics(tmp_path / "one")["test"]["confusion_matrix"]
    # The DDP run's classifier loads in one process and labels texts as the one-process one does.
    (net1, tok, meta1), (net2, _, meta2) = cl.load_classifier(tmp_path / "one"), cl.load_classifier(tmp_path / "two")
    assert meta2["labels"] == meta1["labels"] == ["food", "sport"]
    ids = tok.encode_batch(["goal team the match", "bread and soup", "the model reads a short story"])
    torch.testing.assert_close(cl.predict_proba(net2, ids, 2, meta2["pad_id"]), cl.predict_proba(net1, ids, 2, meta1["pad_id"]),
                               rtol=1e-4, atol=1e-5)
