"""`llmkit classify` with an encoder (recipes/classify.py + heads.py): a BERT-style model learns a
sentence-pair task from JSONL through its [CLS] pooler or mean pooling, predictions from the
saved classifier equal the run's test metrics, and the result exports to transformers'
...ForSequenceClassification with the same probabilities."""

import json

import pytest
import torch

from llmkit.checkpoint import load_model
from tests.helpers import build_encoder_dir, cli_error, cli_run

WORDS = "game piano paris london sister songs title night".split()  # whole tokens of the tiny vocabulary


def _pairs(path, n=120):
    """Label: whether the second text's word is one of the first four; the first text holds a
    word of the same set, so only a model that tells the two segments apart can solve it."""
    import random

    rng = random.Random(0)
    with open(path, "w") as f:
        for i in range(n):
            a, b = rng.choice(WORDS), WORDS[rng.randrange(4) + 4 * (i % 2)]
            f.write(json.dumps({"premise": f"the {a} was there", "hypothesis": f"a {b}",
                                "label": "entailment" if i % 2 == 0 else "contradiction"}) + "\n")
    return path


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return build_encoder_dir(tmp_path_factory.mktemp("enc"), "bert", noise=0.0)


@pytest.mark.parametrize("pool", ["first", "mean"])
def test_an_encoder_learns_a_pair_task_and_exports_to_transformers(encoder, tmp_path, capsys, pool):
    import transformers

    data = _pairs(tmp_path / "nli.jsonl")
    out = tmp_path / "clf"
    code, stdout, err = cli_run(capsys, [
        "classify", "train", str(encoder), "--data", str(data), "--text-col", "premise", "--text-pair-col",
        "hypothesis", "--pool", pool, "--out", str(out), "--train.max_steps", "150", "--train.lr", "3e-3",
        "--train.micro_batch_size", "8", "--train.eval_every", "0", "--train.save_every", "0",
        "--train.precision", "fp32", "--train.tensorboard", "false", "--train.warmup_steps", "5"])
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.9, metrics["test"]
    loaded = load_model(out / "final")
    head = loaded.classifier["head"]
    assert head["task"] == "sequence" and head["pool"] == pool and (head["act"] == "tanh")
    # Predict from the file: the same accuracy over the same rows.
    code, stdout, _ = cli_run(capsys, ["classify", "predict", str(out), "--file", str(data)])
    assert code == 0 and "accuracy" in stdout
    if pool == "mean":  # BERT's transformers class has no mean pooling: refused, one line
        cli_error(capsys, ["convert", "to-hf", str(out / "final"), str(tmp_path / "hf")], "cannot be expressed")
        return
    code, _, err = cli_run(capsys, ["convert", "to-hf", str(out / "final"), str(tmp_path / "hf")])
    assert code == 0, err
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert theirs.config.id2label == {0: "contradiction", 1: "entailment"}
    enc = tok(["the night was there", "the game was there"], ["a game", "a night"],
              padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = loaded.model(enc["input_ids"], attention_mask=enc["attention_mask"],
                            token_type_ids=enc["token_type_ids"])
        torch.testing.assert_close(theirs(**enc).logits, ours, atol=1e-4, rtol=1e-4)
    assert ours.argmax(-1).tolist() == [1, 0]


def test_last_token_pooling_is_refused_for_an_encoder(encoder, tmp_path, capsys):
    data = _pairs(tmp_path / "nli.jsonl", n=20)
    cli_error(capsys, ["classify", "train", str(encoder), "--data", str(data), "--text-col", "premise",
                       "--pool", "last", "--out", str(tmp_path / "x"), "--train.max_steps", "1"], "--pool last")


@pytest.mark.parametrize("method", ["lora", "freeze"])
def test_lora_and_freeze_train_an_encoder_head(encoder, tmp_path, capsys, method):
    """The finetuning methods work on an encoder as on a decoder: LoRA checkpoints hold the
    adapters and the head, and load merged with the unmerged model's outputs."""
    data = _pairs(tmp_path / "nli.jsonl", n=40)
    out = tmp_path / method
    extra = ["--lora.r", "4", "--lora.targets", "[q,v,up,down]"] if method == "lora" else ["--train-last", "1"]
    code, stdout, err = cli_run(capsys, [
        "classify", "train", str(encoder), "--data", str(data), "--text-col", "premise", "--text-pair-col",
        "hypothesis", "--method", method, *extra, "--out", str(out), "--train.max_steps", "4",
        "--train.micro_batch_size", "4", "--train.eval_every", "0", "--train.save_every", "0",
        "--train.precision", "fp32", "--train.tensorboard", "false", "--train.lr", "1e-2"])
    assert code == 0, err
    assert f"method {method}" in stdout
    merged = load_model(out / "final").model
    ids = torch.randint(5, merged.cfg.vocab_size, (2, 9))
    with torch.no_grad():
        a = merged(ids)
        if method == "lora":
            assert (out / "final" / "adapter_config.json").exists()
            b = load_model(out / "final", merge=False).model(ids)
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    base = load_model(encoder).model
    changed = {n for n, p in merged.state_dict().items() if n in base.state_dict()
               and not torch.equal(p, base.state_dict()[n])}
    assert changed and all(n.startswith(("blocks.", "lm_head")) for n in changed), sorted(changed)[:5]
