"""`llmkit finetune` with an encoder-decoder (T5 v1.1, BART): (source, target) pairs, loss on the
target, full / LoRA / freeze / QLoRA, exact resume after SIGTERM, 2 DDP processes == 1."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import pytest
import torch

import llmkit.recipes.scaffold as scaffold
import llmkit.recipes.seq2seq as s2s_recipe
from llmkit.checkpoint import load_model, load_weights
from llmkit.cli import main
from tests.conftest import run_two_ways, sigterm_at_call
from tests.helpers import build_seq2seq_dir, cli_error
from tests.test_finetune import Spy, args, losses, summary  # the instruction tests' helpers

WORDS = "fox dog cat bird horse cow sheep goat duck hen owl bee".split()


def pairs(n: int, seed: int = 0) -> list[dict]:
    """A learnable mapping: the target is the source's words reversed."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        w = rng.sample(WORDS, 3)
        out.append({"text": " ".join(w), "summary": " ".join(reversed(w))})
    return out


@pytest.fixture(scope="module")
def t5(tmp_path_factory) -> Path:
    return build_seq2seq_dir(tmp_path_factory.mktemp("t5"), "t5v1.1", noise=0.05)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("s2sdata") / "train.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in pairs(64)) + "\n")
    return p


def test_full_finetuning_learns_the_pairs(t5, data, tmp_path):
    out = tmp_path / "full"
    main(args(t5, data, out, "--method", "full", "--train.lr", "3e-3", "--train.max_steps", "40",
              "--train.eval_every", "0", "--prefix", "reverse: "))
    s = summary(out)
    assert s["kind"] == "encoder-decoder" and s["prefix"] == "reverse: "
    assert s["val_loss_after"] < s["val_loss_before"] - 1.0, s
    assert s["train_pairs"]["examples"] + s["val_pairs"]["examples"] == 64
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {r["step"] for r in rows} == {0, 40} and all(r["source"].startswith("reverse: ") for r in rows)
    final = load_model(out / "final")
    assert final.model.cfg.is_seq2seq


def test_loss_is_on_the_target_only(t5, tmp_path):
    """The source's tokens never reach the loss: the same targets with other sources that the
    decoder cannot see through a zeroed cross-attention give the same loss."""
    from llmkit.data.seq2seq import Seq2SeqExamples, collate_seq2seq
    from llmkit.tokenizer import Tokenizer
    from llmkit.training.losses import labelled_count, seq2seq_loss

    tok = Tokenizer.from_dir(t5)
    model = load_model(t5, dtype=torch.float32).model
    ex = Seq2SeqExamples([("fox dog cat", "cat dog fox"), ("owl bee", "bee owl")], tok)
    batch = collate_seq2seq(ex, 0, 0)
    out = seq2seq_loss(model, batch)
    n_target = sum(len(e.tgt) for e in ex)
    assert int(labelled_count(batch)) == n_target
    assert int(out["tokens"]) == n_target + sum(len(e.src) for e in ex)
    # Mean cross-entropy over exactly the target tokens:
    logits = model(batch["idx"], src=batch["src"], src_mask=batch["src_mask"])
    lp = torch.log_softmax(logits.float(), -1)
    picked = [-lp[b, t, batch["labels"][b, t]] for b in range(2) for t in range(batch["labels"].shape[1])
              if batch["labels"][b, t] != -100]
    torch.testing.assert_close(out["loss"], torch.stack(picked).mean())


def test_lora_and_freeze_train_what_they_should(t5, data, tmp_path, monkeypatch):
    monkeypatch.setattr(scaffold, "Trainer", Spy)
    main(args(t5, data, tmp_path / "lora", "--method", "lora", "--lora.r", "4", "--train.lr", "5e-3",
              "--train.max_steps", "6", "--train.eval_every", "3"))
    final = tmp_path / "lora" / "final"
    assert (final / "adapter.safetensors").exists() and not (final / "model.safetensors").exists()
    keys = load_weights(final).keys()
    assert any(k.startswith("encoder.blocks.") for k in keys) and any(".cross_attn." in k for k in keys)
    s = summary(tmp_path / "lora")
    assert s["val_loss_after"] < s["val_loss_before"]
    assert load_model(final).model.cfg.is_seq2seq  # the adapter loads onto its base

    main(args(t5, data, tmp_path / "freeze", "--method", "freeze", "--train_last", "1", "--train.max_steps", "2",
              "--train.eval_every", "0", "--samples", "0", "--train.lr", "1e-3"))
    ref = load_model(t5, dtype=torch.float32).model.state_dict()
    trained = Spy.last.raw_model.state_dict()
    for k, v in trained.items():  # the last decoder block, the final norm and the head
        moved = k.startswith("blocks.1.") or k in ("norm.weight", "lm_head.weight")
        assert torch.equal(v, ref[k]) != moved, k


def test_qlora_runs(t5, data, tmp_path):
    main(args(t5, data, tmp_path / "q", "--method", "lora", "--quantize", "int8", "--train.max_steps", "3",
              "--train.eval_every", "0", "--samples", "1"))
    s = summary(tmp_path / "q")
    assert s["quantize"] == "int8" and s["weight_bytes_after"] < s["weight_bytes_before"]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_interrupted_and_resumed_equals_uninterrupted(t5, data, tmp_path, monkeypatch, method):
    common = ["--method", method, "--train.lr", "2e-3", "--train.max_steps", "6", "--train.eval_every", "3",
              "--train.save_every", "0", "--samples", "1"]
    ref = tmp_path / "ref"
    main(args(t5, data, ref, *common))
    out = tmp_path / "resumed"
    sigterm_at_call(monkeypatch, s2s_recipe, "seq2seq_loss", at=4)
    with pytest.raises(SystemExit) as e:
        main(args(t5, data, out, *common))
    assert e.value.code == 128 + signal.SIGTERM
    monkeypatch.undo()
    main(args(t5, data, out, *common, "--train.resume", "auto"))
    a, b = losses(ref), losses(out)
    assert sorted(a) == list(range(1, 7)) and a == b
    wa, wb = load_weights(ref / "final"), load_weights(out / "final")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_alpaca_records_and_named_fields(t5, tmp_path):
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "Reverse", "input": " ".join(w), "output": " ".join(w[::-1])}
                                  for w in (random.Random(i).sample(WORDS, 3) for i in range(16))]))
    main(args(t5, alpaca, tmp_path / "a", "--method", "full", "--train.max_steps", "2", "--train.eval_every", "0"))
    rows = [json.loads(line) for line in (tmp_path / "a" / "samples.jsonl").read_text().splitlines()]
    assert rows and all(r["source"].startswith("Reverse\n\n") for r in rows)
    named = tmp_path / "named.jsonl"
    named.write_text("\n".join(json.dumps({"a": r["text"], "b": r["summary"]}) for r in pairs(16)))
    main(args(t5, named, tmp_path / "n", "--source_field", "a", "--target_field", "b", "--train.max_steps", "1",
              "--train.eval_every", "0", "--samples", "0"))
    assert summary(tmp_path / "n")["steps"] == 1


def test_bad_settings_are_one_line_errors(t5, data, tmp_path, capsys):
    cli_error(capsys, args(t5, data, tmp_path / "x", "--source_field", "nope"), "nope")
    cli_error(capsys, args(t5, data, tmp_path / "x", "--packing", "true"), "decoder-only")
    cli_error(capsys, args(t5, data, tmp_path / "x", "--max_target_len", "1"), "max_target_len")


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(t5, data, tmp_path):
    run_two_ways(["finetune", t5, data, "--method", "full", "--train.lr", "1e-3", "--train.max_steps", "4",
                  "--train.eval_every", "2", "--train.save_every", "0", "--train.warmup_steps", "0", "--samples", "0"],
                 tmp_path / "one", tmp_path / "two", micro_batch=8)
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(1, 5))
    for s in a:
        assert float(b[s]) == pytest.approx(float(a[s]), rel=1e-5), (s, a[s], b[s])


def test_bart_finetunes(tmp_path, data):
    bart = build_seq2seq_dir(tmp_path / "m", "bart", noise=0.05)
    main(args(bart, data, tmp_path / "b", "--method", "full", "--train.lr", "2e-3", "--train.max_steps", "10",
              "--train.eval_every", "0"))
    s = summary(tmp_path / "b")
    assert s["val_loss_after"] < s["val_loss_before"]
