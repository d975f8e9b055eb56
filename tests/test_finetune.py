"""Instruction finetuning: prompt masking, packing, the three methods (+ QLoRA), exact resume,
adapter-only checkpoints, bad data -> one-line errors. Tiny models and crafted data only."""

from __future__ import annotations

import csv
import json
import random
import re
import signal
from pathlib import Path

import pytest
import torch

import llmkit.recipes.finetune as ft
import llmkit.recipes.scaffold as scaffold
from llmkit.checkpoint import load_model, load_weights
from llmkit.cli import main
from llmkit.data.instruct import (
    InstructBatches,
    encode_all,
    encode_example,
    load_examples,
    pack,
    parse_record,
)
from llmkit.errors import LLMKitError
from llmkit.prompts import Alpaca, alpaca_prompt, resolve_style
from llmkit.tokenizer import Tokenizer
from llmkit.training.losses import IGNORE_INDEX
from tests.conftest import run_two_ways, sigterm_at_call
from tests.helpers import cli_error, cli_run

# A fixed mapping a 2-layer model learns in a few dozen steps: the answer depends on the
# instruction only, so held-out records (same mapping, other phrasings) measure learning.
PAIRS = [("fox", "dog"), ("cat", "mat"), ("world", "hello"), ("model", "token"), ("story", "time"),
         ("quick", "brown"), ("lazy", "jumps"), ("small", "write")]
PHRASES = ["What goes with {}?", "Pair for {}:", "Answer the word for {}", "{} goes with"]


def mapping_records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.choice(PAIRS)
        rec = {"instruction": rng.choice(PHRASES).format(a), "output": f"{b} and {b}"}
        if rng.random() < 0.3:
            rec["input"] = "one word"
        out.append(rec)
    return out


@pytest.fixture(scope="module")
def base(tiny_model_dir) -> Path:
    return tiny_model_dir()  # the session's tiny llama + tokenizer, shared read-only


@pytest.fixture(scope="module")
def tok(base) -> Tokenizer:
    return Tokenizer.from_dir(base)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("ftdata") / "train.json"
    p.write_text(json.dumps(mapping_records(96)))
    return p


def args(base, data, out, *extra) -> list[str]:
    return ["finetune", str(base), str(data), "--out", str(out), "--train.tensorboard", "false",
            "--train.warmup_steps", "0", "--train.micro_batch_size", "8", "--samples", "2", "--sample_tokens", "6",
            *extra]


def losses(out: Path) -> dict[int, str]:
    with open(out / "metrics.csv") as f:
        return {int(r["step"]): r["value"] for r in csv.DictReader(f) if r["metric"] == "loss"}


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


class Spy(scaffold.Trainer):
    """The recipes' Trainer (made by the scaffold), remembered, so a test can look at the trained model in memory."""

    last = None

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        Spy.last = self


# --- rendering and masking ----------------------------------------------------------------------
def test_alpaca_prompt_is_masked_and_answer_ends_with_eos(tok):
    rec = parse_record({"instruction": "Name a pet", "input": "small", "output": "a cat"}, "r")
    enc = encode_example(rec, Alpaca(), tok)
    prompt = alpaca_prompt("Name a pet", "small")
    n = len(tok.encode(prompt))
    assert enc.prompt_len == n and n > 10
    assert enc.labels[:n] == [IGNORE_INDEX] * n
    assert enc.ids[n:] == tok.encode("a cat", bos=False) + [tok.eos_id] == enc.labels[n:]
    assert tok.decode(enc.ids[:n]) == prompt
    unmasked = encode_example(rec, Alpaca(), tok, mask_prompt=False)
    assert unmasked.labels == unmasked.ids == enc.ids


@pytest.mark.parametrize("style_name", ["auto", "chatml", "alpaca", "llama3"])
def test_multi_turn_messages_train_on_every_assistant_turn_only(tok, style_name):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Who are you?"},
            {"role": "assistant", "content": "A small fox."}]
    ex = parse_record({"messages": msgs}, "r")
    style = resolve_style(tok, style_name)
    enc = encode_example(ex, style, tok)
    assert len(enc.ids) == len(enc.labels)
    # The trained spans, in order: each assistant reply and what ends it (its end-of-turn
    # marker, or EOS for a style without one); everything else is masked.
    spans, i = [], 0
    while i < len(enc.labels):
        if enc.labels[i] == IGNORE_INDEX:
            i += 1
            continue
        j = i
        while j < len(enc.labels) and enc.labels[j] != IGNORE_INDEX:
            j += 1
        assert enc.labels[i:j] == enc.ids[i:j]
        spans.append((i, j))
        i = j
    assert len(spans) == 2
    end = {"auto": "<|im_end|>", "chatml": "<|im_end|>", "alpaca": "<|im_end|>", "llama3": "<|eot_id|>"}[style_name]
    for (a, b), k, reply in zip(spans, (2, 4), ("Hello!", "A small fox.")):
        # The masked text before a reply is exactly the style's prompt for it (alpaca: plus the
        # EOS that ended each earlier reply, since the style has no end-of-turn marker).
        prefix = [t for t in enc.ids[:a] if style_name != "alpaca" or t != tok.eos_id]
        assert tok.decode(prefix, skip_special=False) == style.render(msgs[:k], add_generation_prompt=True)
        assert tok.decode(enc.ids[a:b], skip_special=False) == reply + end  # (tok's EOS is <|im_end|>)
    assert enc.prompt_len == spans[1][0]


def test_truncation_is_counted(tok):
    recs = [parse_record({"instruction": "word " * 40, "output": "fox"}, "r1"),
            parse_record({"instruction": "short", "output": "fox " * 40}, "r2")]
    limit = encode_example(recs[1], Alpaca(), tok).prompt_len + 10  # r2's prompt fits, its answer does not
    assert encode_example(recs[0], Alpaca(), tok).prompt_len > limit
    _, st = encode_all(recs, Alpaca(), tok, max_len=limit, truncation="drop")
    assert (st.examples, st.dropped, st.truncated) == (0, 2, 0)
    enc, st = encode_all(recs, Alpaca(), tok, max_len=limit, truncation="truncate")
    # r1's prompt alone is longer than the limit: nothing left to train on, dropped.
    assert (st.examples, st.dropped, st.truncated) == (1, 1, 1)
    assert len(enc[0]) == limit and enc[0].truncated and enc[0].n_trained == 10


def test_packing_fills_rows_and_keeps_masks(tok):
    recs = [parse_record(r, "r") for r in mapping_records(20)]
    enc, _ = encode_all(recs, Alpaca(), tok, max_len=1000)
    T = 32
    packed = pack(enc, T, seed=3)
    stream_ids = torch.tensor(packed.ids)
    stream_labels = torch.tensor(packed.labels)
    assert len(stream_ids) == sum(len(e) for e in enc)
    # The stream is the examples, each with its own mask, in some order.
    assert stream_labels.ne(IGNORE_INDEX).sum() == sum(sum(1 for y in e.labels if y != IGNORE_INDEX) for e in enc)
    assert any(stream_labels[:len(enc[0])].eq(IGNORE_INDEX))  # prompts stay masked in the stream
    x, y = packed.rows(list(range(len(packed))), pad_id=0)
    assert x.shape == (len(packed), T)
    n_full = (len(stream_ids) - 1) // T
    flat_x, flat_y = x[:n_full].flatten(), y[:n_full].flatten()
    assert torch.equal(flat_x, stream_ids[: n_full * T])  # full rows, no padding
    assert torch.equal(flat_y, stream_labels[1: n_full * T + 1])  # targets shifted by one, masks kept
    rest = len(stream_ids) - 1 - n_full * T  # the last row: the stream's tail, then padding with no loss
    assert len(packed) == n_full + 1 and 0 < rest < T
    assert torch.equal(x[n_full, :rest], stream_ids[n_full * T:-1])
    assert torch.equal(y[n_full, :rest], stream_labels[n_full * T + 1:])
    assert bool((y[n_full, rest:] == IGNORE_INDEX).all())
    batches = InstructBatches(enc, 4, pad_id=0, seed=3, packing=True, seq_len=T)
    bx, by = next(batches)
    assert bx.shape == by.shape == (4, T)


# --- training -----------------------------------------------------------------------------------
def test_instruction_finetuning_lowers_validation_loss(base, data, tmp_path):
    out = tmp_path / "full"
    main(args(base, data, out, "--method", "full", "--train.lr", "3e-3", "--train.max_steps", "30",
              "--train.eval_every", "0"))
    s = summary(out)
    assert s["val_loss_after"] < s["val_loss_before"] - 1.0, s
    assert s["train_examples"]["examples"] + s["val_examples"]["examples"] == 96
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {r["step"] for r in rows} == {0, 30} and all(r["reference"].endswith(r["reference"].split()[0]) for r in rows)
    assert (out / "final" / "model.safetensors").exists()


def test_lora_writes_only_the_adapter_and_keeps_the_base(base, data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(scaffold, "Trainer", Spy)
    out = tmp_path / "lora"
    main(args(base, data, out, "--method", "lora", "--lora.r", "4", "--train.lr", "5e-3", "--train.max_steps", "8",
              "--train.eval_every", "4"))
    final = out / "final"
    names = {p.name for p in final.iterdir()}
    assert {"adapter.safetensors", "adapter_config.json", "tokenizer.json"} <= names
    assert "model.safetensors" not in names
    assert (final / "adapter.safetensors").stat().st_size * 5 < (base / "model.safetensors").stat().st_size
    assert all("lora_" in k for k in load_weights(final))
    # Frozen base weights bitwise unchanged in the trained model (an adapted layer's base held in
    # the autocast dtype under bf16: exactly the rounding autocast applies to it); the adapters moved.
    ref = load_model(base, dtype=torch.float32).model.state_dict()
    trained = Spy.last.raw_model.state_dict()
    held = Spy.last.amp_dtype is not None
    for k, v in trained.items():
        if "lora_" in k:
            continue
        key = k.replace(".base.", ".")
        assert v.dtype == (Spy.last.amp_dtype if held and ".base.weight" in k else torch.float32), k
        assert torch.equal(v, ref[key].to(v.dtype)), k
    assert any(trained[k].abs().sum() > 0 for k in trained if "lora_b" in k)
    s = summary(out)
    assert s["trainable_params"] < s["params"] / 5 and s["val_loss_after"] < s["val_loss_before"]
    loaded = load_model(final)
    assert loaded.kind == "lora"
    code, out, err = cli_run(capsys, ["generate", final, "--prompt", "What goes with fox?", "--max_new_tokens", "5",
                                      "--temperature", "0", "--style", "auto"])
    assert code == 0, err[-2000:]
    assert "tokens/sec" in err
    n = int(re.search(r"tokens/sec, (\d+) tokens", err).group(1))
    assert 1 <= n <= 5 and out.endswith("\n")  # the adapter checkpoint generated (at most 5 tokens)


def test_freeze_trains_only_the_last_blocks(base, data, tmp_path, monkeypatch):
    monkeypatch.setattr(scaffold, "Trainer", Spy)
    out = tmp_path / "freeze"
    main(args(base, data, out, "--method", "freeze", "--train_last", "1", "--train.max_steps", "3",
              "--train.eval_every", "0", "--samples", "0"))
    assert summary(out)["lr"] == ft.FULL_LR  # the full/freeze default rate, not LoRA's
    ref = load_model(base, dtype=torch.float32).model.state_dict()
    trained = Spy.last.raw_model.state_dict()
    for k, v in trained.items():
        if k.startswith("blocks.1.") or k in ("norm.weight", "lm_head.weight"):
            assert not torch.equal(v, ref[k]), k
        else:
            assert torch.equal(v, ref[k]), k
    assert load_model(out / "final").kind in ("llmkit", "hf")


@pytest.mark.parametrize("method,extra", [
    ("full", ["--train.lr", "1e-3"]),
    ("lora", ["--lora.dropout", "0.1", "--train.lr", "3e-3"]),  # dropout: the RNG state must resume too
    ("freeze", ["--train_last", "1", "--train.lr", "1e-3"]),
])
def test_interrupted_and_resumed_equals_uninterrupted(base, data, tmp_path, monkeypatch, method, extra):
    common = ["--method", method, *extra, "--train.max_steps", "7", "--train.eval_every", "3",
              "--train.save_every", "0", "--samples", "1"]
    ref = tmp_path / "ref"
    main(args(base, data, ref, *common))
    out = tmp_path / "resumed"
    sigterm_at_call(monkeypatch, ft, "causal_lm_loss", at=4)  # during training step 4
    with pytest.raises(SystemExit) as e:
        main(args(base, data, out, *common))
    assert e.value.code == 128 + signal.SIGTERM
    assert (out / "checkpoints" / "step-00000004").is_dir()
    monkeypatch.undo()
    main(args(base, data, out, *common, "--train.resume", "auto"))
    a, b = losses(ref), losses(out)
    assert sorted(a) == sorted(b) == list(range(1, 8))
    assert a == b
    wa, wb = load_weights(ref / "final"), load_weights(out / "final")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert summary(out)["val_loss_before"] == summary(ref)["val_loss_before"]


def test_qlora_int8_runs_and_reports_memory_saved(base, data, tmp_path):
    out = tmp_path / "qlora"
    main(args(base, data, out, "--method", "lora", "--quantize", "int8", "--train.max_steps", "3",
              "--train.eval_every", "0", "--samples", "0", "--packing", "true", "--max_seq_len", "48"))
    s = summary(out)
    assert s["quantize"] == "int8"
    # The blocks' linear weights go from 4 bytes to 1 (+ a scale per row); the LoRA adapters
    # (fp32) are added. Embeddings and norms stay as they are.
    net = load_model(base, dtype=torch.float32).model
    linear = sum(m.weight.numel() * 4 for b in net.blocks for m in b.modules() if isinstance(m, torch.nn.Linear))
    assert s["weight_bytes_saved"] >= 0.7 * linear - 4 * s["trainable_params"] > 0
    assert s["weight_bytes_after"] == s["weight_bytes_before"] - s["weight_bytes_saved"]
    assert json.loads((out / "final" / "adapter_config.json").read_text())["quantize"] == "int8"
    assert load_model(out / "final").kind == "lora"


# --- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("content,match", [
    ('[{"instruction": "a"}]', "record 1: missing field 'output'"),
    ("", "empty file"),
    ('{"instruction": "a", "output": "b"}\n{"instruction": "a" "output": "b"}\n', "line 2: invalid JSON"),
    ('[{"instruction": "a", "output": "b"},\n {"instruction": 1, "output": "b"}]', "record 2: field 'instruction' must be a string"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "line 1: the last message must be the assistant's"),
    ('{"messages": [{"role": "bot", "content": "hi"}]}', "unknown role 'bot'"),
    ('{"text": "hello"}', "line 1: missing fields"),
    ('[{"instruction": "a", "output": "b"},\n {"instruction": "a", "output": "b"', "invalid JSON at line 2"),
])
def test_bad_data_is_a_one_line_error(base, tmp_path, capsys, content, match):
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    cli_error(capsys, args(base, p, tmp_path / "o"), str(p), match)


def test_cli_errors_exit_1(base, data, tmp_path, capsys):
    for extra, match in ((["--prompt_style", "nosuch"], "unknown prompt style 'nosuch'"),
                         (["--data", str(tmp_path / "missing.json")], "no such file")):
        argv = args(base, data, tmp_path / "o", *extra)
        if extra[0] == "--data":
            argv = [a for a in argv if a != str(data)]
        cli_error(capsys, argv, match)  # in-process: exit code 1, one `error: ...` line, no traceback


def test_load_examples_reads_jsonl_chat_with_system_field(tmp_path):
    p = tmp_path / "chat.jsonl"
    p.write_text(json.dumps({"system": "Be kind.", "messages": [{"role": "user", "content": "Hi"},
                                                               {"role": "assistant", "content": "Hello"}]}) + "\n\n")
    (ex,) = load_examples(p)
    assert [m["role"] for m in ex.messages] == ["system", "user", "assistant"] and ex.reference == "Hello"
    with pytest.raises(LLMKitError, match="record 1: empty 'instruction'"):
        parse_record({"instruction": " ", "output": "x"}, "record 1")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_two_process_ddp_matches_one_process(base, data, tmp_path, method):
    run_two_ways(["finetune", base, data, "--method", method, "--train.lr", "1e-3", "--train.max_steps", "6",
                  "--train.eval_every", "3", "--train.save_every", "0", "--train.warmup_steps", "0", "--samples", "1",
                  "--sample_tokens", "4"], tmp_path / "one", tmp_path / "two", micro_batch=8)
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for s in a:
        assert float(b[s]) == pytest.approx(float(a[s]), rel=1e-5), (s, a[s], b[s])
    assert summary(tmp_path / "two")["val_loss_after"] == pytest.approx(summary(tmp_path / "one")["val_loss_after"], rel=1e-5)
    # The DDP run's final checkpoint loads in one process and holds the one-process weights.
    assert load_model(tmp_path / "two" / "final").kind == load_model(tmp_path / "one" / "final").kind
    wa, wb = load_weights(tmp_path / "one" / "final"), load_weights(tmp_path / "two" / "final")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-3, atol=1e-4, msg=k)


def test_grad_accumulation_weighs_answer_tokens_like_one_big_batch(base, data, tmp_path):
    """Answers differ in length: 2 micro-batches of 4 accumulated must equal one batch of 8
    (the loss is the mean over all answer tokens of the step, not a mean of two means)."""
    common = ["--method", "full", "--train.lr", "1e-3", "--train.max_steps", "4", "--train.eval_every", "0",
              "--samples", "0", "--train.precision", "fp32"]
    main(args(base, data, tmp_path / "big", *common))
    accum = args(base, data, tmp_path / "accum", *common, "--train.grad_accum", "2")
    accum[accum.index("--train.micro_batch_size") + 1] = "4"
    main(accum)
    a, b = losses(tmp_path / "big"), losses(tmp_path / "accum")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for s in a:
        assert float(b[s]) == pytest.approx(float(a[s]), rel=1e-5), (s, a[s], b[s])
    wa, wb = load_weights(tmp_path / "big" / "final"), load_weights(tmp_path / "accum" / "final")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5, msg=k)


def test_learning_rate_default_follows_the_method_and_an_explicit_one_is_kept(base, data, tmp_path):
    quick = ["--train.max_steps", "1", "--train.eval_every", "0", "--samples", "0"]
    main(args(base, data, tmp_path / "lora", "--method", "lora", *quick))
    assert summary(tmp_path / "lora")["lr"] == ft.LORA_LR
    # LoRA's default rate given explicitly to full finetuning is what the user asked for.
    main(args(base, data, tmp_path / "full", "--method", "full", "--train.lr", str(ft.LORA_LR), *quick))
    assert summary(tmp_path / "full")["lr"] == ft.LORA_LR


def test_max_seq_len_zero_is_an_error_not_the_models_context(base, data, tmp_path, capsys):
    out = tmp_path / "o"
    cli_error(capsys, args(base, data, out, "--max_seq_len", "0", "--train.max_steps", "1"),
              "max_seq_len must be between 1 and the model's context", "got 0")
    assert not out.exists()


def test_qlora_trainable_percent_is_the_same_on_the_console_and_in_the_summary(base, data, tmp_path, capsys):
    """One denominator, the base model's parameters before quantization: the console line used
    to count after it (the frozen nf4 weights are buffers then), 30.7% for summary.json's 8.1%."""
    out = tmp_path / "nf4"
    code, stdout, err = cli_run(capsys, args(base, data, out, "--method", "lora", "--quantize", "nf4",
                                             "--train.max_steps", "1", "--train.eval_every", "0", "--samples", "0"))
    assert code == 0, err[-2000:]
    m = re.search(r"method lora: ([\d,]+) trainable of ([\d,]+) parameters \((\d+\.\d\d)%\)", stdout)
    assert m, stdout
    s = summary(out)
    assert int(m.group(1).replace(",", "")) == s["trainable_params"]
    assert int(m.group(2).replace(",", "")) == s["params"]
    assert float(m.group(3)) == round(s["trainable_percent"], 2)
    assert s["params"] == sum(p.numel() for p in load_model(base).model.parameters())  # the base's count
