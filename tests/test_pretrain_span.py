"""`llmkit pretrain --objective span|denoise` (encoder-decoders) on prepared shards: the loss
falls, the result exports to transformers' AutoModelForSeq2SeqLM with the same logits, killed
runs resume bit for bit, 2 DDP / FSDP2 processes train as 1, bf16 autocast runs."""

import csv
import random
from pathlib import Path

import pytest
import torch

from llmkit.checkpoint import load_model
from tests.helpers import assert_sigterm_resume_equals_uninterrupted, cli_error, run_cli

WORDS = ("the a river mountain city old young light dark runs sleeps sings under over near green blue "
         "stone water bread music tall quiet").split()


@pytest.fixture(scope="module")
def t5_data(tmp_path_factory):
    """A unigram (T5) tokenizer with sentinels, and shards of synthetic sentences."""
    from llmkit.data.prepare import prepare
    from llmkit.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("span")
    rng = random.Random(0)
    docs = [" ".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))).capitalize() + "."
                     for _ in range(rng.randint(2, 6))) for _ in range(80)]
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(docs))
    train_tokenizer([str(corpus)], vocab_size=120, out=str(root / "tok"), kind="unigram", extra_ids=16)
    prepare([str(corpus)], tokenizer=str(root / "tok"), out=str(root / "data"), seq_len=64, val_fraction=0.1,
            text_unit="paragraph")
    return root / "data"


def _common(data, *extra):
    return ["pretrain", "--model", "tiny-t5", "--data", str(data), "--seq-len", "32", "--train.warmup_steps", "2",
            "--train.lr", "3e-3", "--train.log_every", "1", "--train.eval_every", "0", "--train.save_every", "0", *extra]


def _args(data, out, *extra):
    return [*_common(data, "--train.precision", "fp32", "--train.tensorboard", "false",
                     "--train.micro_batch_size", "4"), "--out", str(out), *extra]


def _metric(out, name="loss"):
    with open(Path(out) / "metrics.csv") as f:
        return {int(r["step"]): float(r["value"]) for r in csv.DictReader(f) if r["metric"] == name}


@pytest.mark.parametrize("objective", ["span", "denoise"])
def test_pretraining_lowers_the_loss_and_exports_to_transformers(t5_data, tmp_path, objective):
    import transformers

    out = tmp_path / "run"
    code, stdout, err = run_cli(*_args(t5_data, out, "--objective", objective, "--train.max_steps", "40",
                                       "--train.eval_every", "40"))
    assert code == 0, err[-2000:]
    assert {"span": "span corruption", "denoise": "text infilling"}[objective] in stdout
    losses = _metric(out)
    first, last = sum(losses[s] for s in range(1, 6)) / 5, sum(losses[s] for s in range(36, 41)) / 5
    assert last < first - 0.5, (first, last)
    assert "val_loss" in (out / "metrics.csv").read_text()
    loaded = load_model(out / "final")
    assert loaded.config.is_seq2seq
    code, _, err = run_cli("convert", "to-hf", str(out / "final"), str(tmp_path / "hf"))
    assert code == 0, err
    theirs = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "hf").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    enc = tok(["The river <extra_id_0> under the city.", "A tall stone"], padding=True, return_tensors="pt")
    dec = torch.tensor([[0, 5, 6, 7], [0, 8, 9, 10]])
    with torch.no_grad():
        ours = loaded.model(dec, src=enc["input_ids"], src_mask=enc["attention_mask"])
        ref = theirs(**enc, decoder_input_ids=dec).logits
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_span_resume_after_sigterm_equals_uninterrupted(t5_data, tmp_path):
    assert_sigterm_resume_equals_uninterrupted(lambda d: _args(t5_data, d, "--train.max_steps", "8"),
                                               tmp_path / "ref", tmp_path / "resumed", "seq2seq_loss", steps=8)


@pytest.mark.slow
@pytest.mark.parametrize("mode,objective", [("ddp", "span"), ("fsdp", "span"), ("ddp", "denoise")])
def test_two_processes_train_as_one(t5_data, tmp_path, mode, objective):
    from tests.conftest import run_two_ways

    run_two_ways(_common(t5_data, "--train.max_steps", "4", "--objective", objective), tmp_path / "one",
                 tmp_path / "two", mode=mode)
    a, b = _metric(tmp_path / "one"), _metric(tmp_path / "two")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for s in a:
        assert b[s] == pytest.approx(a[s], rel=1e-4, abs=1e-5), (s, a[s], b[s])


def test_bf16_autocast_runs(t5_data, tmp_path):
    code, _, err = run_cli(*_common(t5_data, "--train.precision", "bf16", "--train.tensorboard", "false",
                                    "--train.micro_batch_size", "4", "--train.max_steps", "3"),
                           "--out", str(tmp_path / "bf16"))
    assert code == 0, err[-2000:]
    assert all(v == v for v in _metric(tmp_path / "bf16").values())  # no NaN


def test_span_errors_are_one_line(t5_data, tmp_path, capsys):
    cli_error(capsys, _args(t5_data, tmp_path / "a", "--objective", "clm"), "encoder-decoder", "span or denoise")
    cli_error(capsys, _args(t5_data, tmp_path / "b", "--noise_density", "1.5"), "noise_density")
