"""Masked-LM pretraining (`llmkit pretrain --objective mlm`, recipes/pretrain.py, data/mlm.py):
the loss falls, killed runs resume bit for bit, 2 processes equal 1, next-sentence prediction,
whole-word masking, and the result exports to transformers' BertForMaskedLM."""

import csv
from pathlib import Path

import pytest
import torch

from llmkit.checkpoint import load_model
from tests.helpers import assert_sigterm_resume_equals_uninterrupted, cli_error, run_cli

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "home", "slowly",
         "river", "green", "bird", "sang", "under", "tree", "morning"]


@pytest.fixture(scope="module")
def bert_data(tmp_path_factory):
    """A WordPiece tokenizer and shards from synthetic paragraphs of sentences."""
    import random

    from llmkit.data.prepare import prepare
    from llmkit.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("mlm")
    rng = random.Random(0)
    paras = []
    for _ in range(60):
        sents = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))).capitalize() + "."
                 for _ in range(rng.randint(2, 6))]
        paras.append(" ".join(sents))
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(paras))
    train_tokenizer([str(corpus)], vocab_size=120, out=str(root / "tok"), kind="wordpiece", lowercase=True)
    prepare([str(corpus)], tokenizer=str(root / "tok"), out=str(root / "data"), seq_len=32, val_fraction=0.1,
            text_unit="paragraph")
    return root / "data"


def _common(data, *extra):
    return ["pretrain", "--model", "tiny-bert", "--data", str(data), "--seq-len", "32", "--train.warmup_steps", "2",
            "--train.lr", "3e-3", "--train.log_every", "1", "--train.eval_every", "0", "--train.save_every", "0", *extra]


def _args(data, out, *extra):
    return [*_common(data, "--train.precision", "fp32", "--train.tensorboard", "false",
                     "--train.micro_batch_size", "4"), "--out", str(out), *extra]


def _metric(out, name="loss"):
    with open(Path(out) / "metrics.csv") as f:
        return {int(r["step"]): float(r["value"]) for r in csv.DictReader(f) if r["metric"] == name}


def test_mlm_pretraining_learns_and_exports_to_transformers(bert_data, tmp_path):
    import transformers

    out = tmp_path / "run"
    code, stdout, err = run_cli(*_args(bert_data, out, "--train.max_steps", "40", "--train.eval_every", "40"))
    assert code == 0, err[-2000:]
    assert "objective: masked-LM" in stdout and "llmkit pipeline fill-mask" in stdout
    losses = _metric(out)
    first, last = sum(losses[s] for s in range(1, 6)) / 5, sum(losses[s] for s in range(36, 41)) / 5
    assert last < first - 1.0, (first, last)
    assert "val_loss" in (out / "metrics.csv").read_text()
    loaded = load_model(out / "final")
    assert loaded.config.causal is False and loaded.config.hf_model_type == "bert"
    code, _, err = run_cli("convert", "to-hf", str(out / "final"), str(tmp_path / "hf"))
    assert code == 0, err
    theirs = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    assert type(theirs).__name__ == "BertForMaskedLM"
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    enc = tok(["the cat sat on the [MASK].", "a dog ran"], padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = loaded.model(enc["input_ids"], attention_mask=enc["attention_mask"],
                            token_type_ids=enc["token_type_ids"])
        ref = theirs(**enc).logits
    m = enc["attention_mask"].bool()
    torch.testing.assert_close(ours[m], ref[m], atol=1e-4, rtol=1e-4)


def test_mlm_resume_after_sigterm_equals_uninterrupted(bert_data, tmp_path):
    assert_sigterm_resume_equals_uninterrupted(lambda d: _args(bert_data, d, "--train.max_steps", "8"),
                                               tmp_path / "ref", tmp_path / "resumed", "mlm_loss", steps=8)


@pytest.mark.parametrize("mode,extra", [("ddp", []), ("ddp", ["--nsp", "true"]), ("fsdp", [])],
                         ids=["mlm", "mlm+nsp", "mlm-fsdp"])
def test_two_processes_mask_and_train_as_one(bert_data, tmp_path, mode, extra):
    """2 gloo DDP (or FSDP2) processes x 2 rows == 1 process x 4 rows: the same masks, the same losses."""
    from tests.conftest import run_two_ways

    run_two_ways(_common(bert_data, "--train.max_steps", "4", *extra), tmp_path / "one", tmp_path / "two", mode=mode)
    a, b = _metric(tmp_path / "one"), _metric(tmp_path / "two")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    # The masked-LM loss is one mean over every masked token of the global batch: equal at every
    # step. With NSP the total adds a mean over pairs, which the loop weighs per micro-batch by
    # its masked tokens (as BERT's own TPU code averages per-core means), so the two runs share
    # the first step's inputs, masks and weights (close losses) and then their updates differ.
    for s in (a if not extra else [1]):
        assert b[s] == pytest.approx(a[s], rel=1e-4 if not extra else 1e-3, abs=1e-5), (s, a[s], b[s])


def test_next_sentence_prediction_trains_and_exports_as_bert_for_pretraining(bert_data, tmp_path):
    import transformers

    out = tmp_path / "nsp"
    code, stdout, err = run_cli(*_args(bert_data, out, "--train.max_steps", "6", "--nsp", "true",
                                       "--whole-word", "true"))
    assert code == 0, err[-2000:]
    assert "masked-LM + next-sentence" in stdout
    assert set(_metric(out, "nsp_loss")) == set(range(1, 7)) and _metric(out, "nsp_acc")
    model = load_model(out / "final").model
    assert model.cfg.pooler and model.nsp_head is not None
    code, _, err = run_cli("convert", "to-hf", str(out / "final"), str(tmp_path / "hf"))
    assert code == 0, err
    theirs = transformers.AutoModelForPreTraining.from_pretrained(tmp_path / "hf").eval()
    assert type(theirs).__name__ == "BertForPreTraining"
    ids = torch.randint(5, model.cfg.vocab_size, (2, 12))
    with torch.no_grad():
        _, nsp = model(ids, nsp=True)
        torch.testing.assert_close(theirs(ids).seq_relationship_logits, nsp, atol=1e-4, rtol=1e-4)


def test_masked_batches_follow_the_recipe(bert_data):
    """15% of the ordinary tokens are targets; [CLS]/[SEP] never are; 80% of targets are [MASK]."""
    from llmkit.data.mlm import Masker, MaskedWindows
    from llmkit.data.shards import TokenShards
    from llmkit.tokenizer import Tokenizer

    shards = TokenShards(bert_data, "train")
    tok = Tokenizer.from_dir(shards.tokenizer_dir)
    batches = MaskedWindows(shards, 32, 16, Masker(tok, seed=0), seed=0)
    sel = masked = total = 0
    for _ in range(40):
        b = next(batches)
        assert b["idx"].shape == (16, 32) and (b["idx"][:, 0] == tok.cls_id).all() and (b["idx"][:, -1] == tok.sep_id).all()
        targets = b["labels"] != -100
        assert not targets[:, 0].any() and not targets[:, -1].any()
        ordinary = ~torch.isin(b["labels"].where(targets, b["idx"]), torch.tensor([tok.cls_id, tok.sep_id]))
        sel, total = sel + int(targets.sum()), total + int(ordinary.sum())
        masked += int((b["idx"][targets] == tok.mask_id).sum())
    assert 0.13 < sel / total < 0.17 and 0.75 < masked / sel < 0.85
    again = MaskedWindows(shards, 32, 16, Masker(tok, seed=0), seed=0)
    first = next(again)
    assert torch.equal(first["idx"], next(MaskedWindows(shards, 32, 16, Masker(tok, seed=0), seed=0))["idx"])


def test_objective_errors_are_one_line(bert_data, tmp_path, capsys):
    cli_error(capsys, _args(bert_data, tmp_path / "a", "--objective", "mlm", "--model", "tiny-llama"),
              "a decoder", "needs an encoder", "micro-bert")
    cli_error(capsys, _args(bert_data, tmp_path / "b", "--objective", "clm"), "encoder", "--objective mlm")
    cli_error(capsys, _args(bert_data, tmp_path / "c", "--objective", "span"), "an encoder-decoder", "micro-t5")
    cli_error(capsys, _args(bert_data, tmp_path / "d", "--objective", "wat"), "unknown objective")
