"""Preference tuning (`llmkit dpo`): reading preference records, the scored tokens, the loss
against an independent formula, log 2 at step 0, preference accuracy rising on a crafted set,
the reference without a second model, exact resume, and bad files -> one-line errors."""

from __future__ import annotations

import csv
import json
import math
import random
import signal
from pathlib import Path

import pytest
import torch

import llmkit.recipes.dpo as dpo
from llmkit.checkpoint import load_model, load_weights
from llmkit.cli import main
from llmkit.data.batches import ShuffledBatches
from llmkit.data.pairs import load_pairs, split_pairs
from llmkit.errors import LLMKitError
from llmkit.prompts import Alpaca, alpaca_prompt
from llmkit.tokenizer import Tokenizer
from llmkit.training.losses import IGNORE_INDEX
from tests.conftest import run_two_ways, sigterm_at_call
from tests.helpers import cli_error

TOPICS = ["fox", "cat", "world", "model", "story", "time", "dog", "mat", "token", "hello"]


def preference_records(n: int, seed: int = 0) -> list[dict]:
    """The preferred answer is always the polite one: a pattern a tiny model picks up fast."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        t = rng.choice(TOPICS)
        rec = {"chosen": f"Thank you, the {t} is good.", "rejected": f"No. The {t} is bad!"}
        if i % 2:
            rec["prompt"] = f"Tell me about the {t}."
        else:
            rec.update(instruction=f"Describe the {t}.", input="" if i % 4 else "briefly")
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
    p = tmp_path_factory.mktemp("dpodata") / "pref.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in preference_records(80)))
    return p


def args(base, data, out, *extra) -> list[str]:
    return ["dpo", str(base), "--data", str(data), "--out", str(out), "--train.tensorboard", "false",
            "--train.warmup_steps", "0", "--train.micro_batch_size", "4", "--val_fraction", "0.2", *extra]


def rows(out: Path) -> dict[int, dict[str, str]]:
    by_step: dict[int, dict[str, str]] = {}
    with open(out / "metrics.csv") as f:
        for r in csv.DictReader(f):
            by_step.setdefault(int(r["step"]), {})[r["metric"]] = r["value"]
    return by_step


# --- records and tokens ---------------------------------------------------------------------------
def test_both_record_forms_are_read(tmp_path):
    p = tmp_path / "p.json"
    p.write_text(json.dumps([
        {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."},
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}],
         "chosen": "Hi.", "rejected": "What?"},
        {"instruction": "Fix it.", "input": "freind", "output": "friend", "chosen": "friend", "rejected": "fiend"},
    ]))
    a, b, c = load_pairs(p)
    assert a.messages == ({"role": "user", "content": "Hi?"},) and a.alpaca is None
    assert [m["role"] for m in b.messages] == ["system", "user"]
    assert c.alpaca == ("Fix it.", "freind") and c.messages[-1]["content"] == "Fix it.\n\nfreind"
    assert (c.chosen, c.rejected) == ("friend", "fiend")
    # The same records wrapped in an object, and as JSON Lines under a .json name.
    wrapped = tmp_path / "w.json"
    wrapped.write_text(json.dumps({"train": json.loads(p.read_text())}))
    lines = tmp_path / "l.json"
    lines.write_text("\n".join(json.dumps(r) for r in json.loads(p.read_text())) + "\n")
    content = lambda f: [(x.messages, x.chosen, x.rejected, x.alpaca) for x in load_pairs(f)]  # noqa: E731
    assert content(wrapped) == content(lines) == content(p)
    assert [x.chosen for x in load_pairs(wrapped)] == ["Hello.", "Hi.", "friend"]


def test_only_answer_tokens_are_scored(tok, tmp_path):
    p = tmp_path / "p.json"
    p.write_text(json.dumps([{"instruction": "Describe the fox.", "input": "", "chosen": "It is good.",
                              "rejected": "Bad fox, very bad."},
                             {"prompt": "Tell me about it.", "chosen": "Sure.", "rejected": "No."}]))
    pairs = load_pairs(p)
    style = Alpaca()
    enc = [dpo.encode_pair(tok, style, pr, 512)[:3] for pr in pairs]
    prompt, chosen, rejected = enc[0]
    assert prompt == tok.encode(alpaca_prompt("Describe the fox.", ""))  # rendered as Alpaca SFT renders it
    end = dpo.answer_end_ids(style, tok)
    assert chosen == tok.encode("It is good.", bos=False) + end == chosen and end == [tok.eos_id]
    batch = dpo.collate_pairs(enc, pad_id=0)
    B = len(enc)
    assert batch["idx"].shape[0] == 2 * B
    for row, (p_, a) in enumerate([(e[0], e[1]) for e in enc] + [(e[0], e[2]) for e in enc]):
        labels = batch["labels"][row]
        scored = labels[labels != IGNORE_INDEX].tolist()
        assert scored == a  # exactly the answer (and its end token), chosen rows first
        first = int((labels != IGNORE_INDEX).nonzero()[0])
        assert first == len(p_) - 1  # predicted from the prompt's last token on
        assert batch["idx"][row, :len(p_) + len(a) - 1].tolist() == (p_ + a)[:-1]


def test_too_long_pairs_cut_answers_first_then_the_prompt_start(tok):
    from llmkit.data.pairs import parse_pair
    from llmkit.prompts import PromptStyle

    pair = parse_pair({"prompt": "word " * 40, "chosen": "yes " * 40, "rejected": "no"}, "x")
    style = PromptStyle.from_name("plain")
    prompt, chosen, rejected, cut = dpo.encode_pair(tok, style, pair, 50)
    assert cut and len(prompt) + len(chosen) <= 50 and len(chosen) >= 25
    full_prompt = style.encode(tok, list(pair.messages), add_generation_prompt=True)
    assert prompt == full_prompt[len(full_prompt) - len(prompt):]  # the prompt's end is kept


def test_dpo_terms_match_the_paper_formula():
    torch.manual_seed(0)
    pc, pr, rc, rr = (torch.randn(5) * 10 for _ in range(4))
    beta = 0.3
    t = dpo.dpo_terms(pc, pr, rc, rr, beta)
    expected = sum(-math.log(1 / (1 + math.exp(-beta * ((a - c) - (b - d)))))
                   for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist())) / 5
    assert float(t["loss"]) == pytest.approx(expected, rel=1e-5)
    margins = beta * ((pc - rc) - (pr - rr))
    assert float(t["pref_acc"]) == pytest.approx(float((margins > 0).float().mean()))
    assert float(t["reward_margin"]) == pytest.approx(float(margins.mean()), rel=1e-5)


def test_shuffled_batches_resume_and_cover_every_example_once_per_epoch():
    b = ShuffledBatches(10, 3, collate=lambda ids: ids, seed=4)
    first = [next(b) for _ in range(10)]  # 30 items = 3 epochs
    flat = [i for batch in first for i in batch]
    assert all(sorted(flat[e * 10:(e + 1) * 10]) == list(range(10)) for e in range(3))
    c = ShuffledBatches(10, 3, collate=lambda ids: ids, seed=4)
    c.load_state_dict({**b.state_dict(), "step": 4})
    assert [next(c) for _ in range(6)] == first[4:]
    with pytest.raises(LLMKitError, match="batch_size=3"):
        ShuffledBatches(10, 2, collate=list, seed=4).load_state_dict(b.state_dict())
    train, val = split_pairs(10, 0.2, seed=0)
    assert len(val) == 2 and sorted(train + val) == list(range(10))


# --- training -------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["lora", "full"])
def test_loss_starts_at_log2_and_preference_accuracy_rises(base, tok, data, tmp_path, method):
    out = tmp_path / method
    lr = "5e-3" if method == "lora" else "5e-4"
    main(args(base, data, out, "--method", method, "--train.lr", lr, "--train.max_steps", "30",
              "--train.eval_every", "15", "--beta", "0.5"))
    r = rows(out)
    # Step 0: policy == reference, every reward 0, so the loss is log 2. Validation: exactly
    # (full finetuning precomputes the reference in evaluate's own batches). Training: exactly
    # with LoRA (reference = same batch, adapters off); full finetuning's precomputed values
    # come from other batches (other padding), equal up to float summation order.
    assert float(r[0]["val_loss"]) == pytest.approx(math.log(2), abs=1e-6)
    assert float(r[0]["val_reward_margin"]) == 0.0 and float(r[0]["val_pref_acc"]) == 0.0
    assert float(r[1]["loss"]) == pytest.approx(math.log(2), abs=1e-6 if method == "lora" else 2e-4)
    end = r[30]
    assert float(end["val_pref_acc"]) >= 0.9, end
    assert float(end["val_reward_margin"]) > 0.5 and float(end["val_loss"]) < 0.5, end
    # The chosen answers became likelier and the rejected ones less likely (held-out pairs).
    assert float(end["val_logp_chosen"]) > float(r[0]["val_logp_chosen"])
    assert float(end["val_logp_rejected"]) < float(r[0]["val_logp_rejected"])
    final = out / "final"
    if method == "lora":
        assert (final / "adapter_config.json").exists() and not (final / "model.safetensors").exists()
    else:
        assert (out / dpo.REFERENCE_FILE).exists() and (final / "model.safetensors").exists()
    # Loads like any model (adapters merged): the trained weights, not the base's.
    loaded = load_model(final)
    assert loaded.kind == ("lora" if method == "lora" else "llmkit")
    ids = torch.tensor([tok.encode("Thank you, the fox is good.")])
    with torch.no_grad():
        logits, base_logits = loaded.model(ids), load_model(base).model(ids)
    assert logits.shape == base_logits.shape == (1, ids.shape[1], 320)
    assert not torch.allclose(logits, base_logits)


def test_lora_reference_is_the_base_with_adapters_off(base, data, tmp_path):
    """The reference log-probs the recipe uses are the base model's, before and after training."""
    from llmkit.lora import LoRAConfig, adapters_disabled, apply_lora

    tok = Tokenizer.from_dir(base)
    pairs = load_pairs(data)[:4]
    from llmkit.prompts import resolve_style

    style = resolve_style(tok, None)
    batch = dpo.collate_pairs([dpo.encode_pair(tok, style, p, 128)[:3] for p in pairs], pad_id=0)
    plain = load_model(base, dtype=torch.float32).model.eval()
    with torch.no_grad():
        expected = dpo.sequence_logps(plain, batch["idx"], batch["labels"])
    net = load_model(base, dtype=torch.float32).model.eval()
    apply_lora(net, LoRAConfig(r=4))
    with torch.no_grad():
        for n, p in net.named_parameters():
            if "lora_" in n:
                p.add_(torch.randn_like(p))  # a trained adapter: the policy now differs
        policy = dpo.sequence_logps(net, batch["idx"], batch["labels"])
        with adapters_disabled(net):
            ref = dpo.sequence_logps(net, batch["idx"], batch["labels"])
    assert not torch.allclose(policy, expected)
    assert torch.allclose(ref, expected, atol=1e-5)
    assert all(p.requires_grad for n, p in net.named_parameters() if "lora_" in n)  # switched back on


@pytest.mark.parametrize("method", ["lora", "full"])
def test_interrupted_and_resumed_equals_uninterrupted(base, data, tmp_path, monkeypatch, method):
    common = ["--method", method, "--train.lr", "1e-3", "--train.max_steps", "7", "--train.eval_every", "3",
              "--train.save_every", "0"]
    ref = tmp_path / "ref"
    main(args(base, data, ref, *common))
    out = tmp_path / "resumed"
    sigterm_at_call(monkeypatch, dpo, "sequence_logps", at=4)  # during training step 4
    with pytest.raises(SystemExit) as e:
        main(args(base, data, out, *common))
    assert e.value.code == 128 + signal.SIGTERM
    assert (out / "checkpoints" / "step-00000004").is_dir()
    monkeypatch.undo()
    main(args(base, data, out, *common, "--train.resume", "auto"))
    a, b = rows(ref), rows(out)
    assert sorted(a) == sorted(b) == list(range(8))
    strip = lambda d: {k: v for k, v in d.items() if k != "tokens_per_sec"}  # noqa: E731 (wall clock)
    assert all(strip(a[s]) == strip(b[s]) for s in a)
    wa, wb = load_weights(ref / "final"), load_weights(out / "final")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# --- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("content,match", [
    ("", "empty file"),
    ("\n\n", "empty file"),
    ('{"prompt": "a", "chosen": "b"}\n', "line 1: a preference record needs 'chosen' and 'rejected'"),
    ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a" "chosen"}\n', "line 2: invalid JSON"),
    ('{"prompt": 3, "chosen": "b", "rejected": "c"}\n', "'prompt' must be a string or a non-empty list"),
    ('{"prompt": "a", "chosen": "b", "rejected": "  "}\n', "empty rejected answer"),
    ('{"question": "a", "chosen": "b", "rejected": "c"}\n', "no prompt: give 'prompt' or Alpaca's 'instruction'"),
    ('{"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], '
     '"chosen": "b", "rejected": "c"}\n', "must end with a user message"),
])
def test_bad_files_are_one_line_errors(base, tmp_path, capsys, content, match):
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    cli_error(capsys, args(base, p, tmp_path / "o"), str(p), match)


def test_cli_errors_exit_1(base, data, tmp_path, capsys):
    for argv, match in ((args(base, data, tmp_path / "o", "--beta", "0"), "beta must be a positive number"),
                        (args(base, tmp_path / "missing.json", tmp_path / "o"), "no such file"),
                        (args(base, data, tmp_path / "o", "--method", "sideways"), "sideways")):
        cli_error(capsys, argv, match)  # in-process: exit code 1, one `error: ...` line, no traceback


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_two_process_ddp_matches_one_process(base, data, tmp_path, method):
    """Under DDP the LoRA reference (adapters switched off on the wrapped model) and the
    precomputed reference of full finetuning give the one-process numbers."""
    run_two_ways(["dpo", base, "--data", data, "--method", method, "--train.lr", "1e-3", "--train.max_steps", "6",
                  "--train.eval_every", "3", "--train.save_every", "0", "--train.warmup_steps", "0"],
                 tmp_path / "one", tmp_path / "two")
    a, b = rows(tmp_path / "one"), rows(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(7))
    for s in a:
        for k in ("loss", "reward_margin", "val_loss", "val_reward_margin"):
            if k in a[s]:
                assert float(b[s][k]) == pytest.approx(float(a[s][k]), rel=1e-4, abs=1e-6), (s, k, a[s][k], b[s][k])
    # The DDP run's final checkpoint loads in one process and holds the one-process weights.
    assert load_model(tmp_path / "two" / "final").kind == load_model(tmp_path / "one" / "final").kind
    wa, wb = load_weights(tmp_path / "one" / "final"), load_weights(tmp_path / "two" / "final")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-3, atol=1e-4, msg=k)


def test_a_corrupt_saved_reference_is_recomputed_not_fatal(base, data, tmp_path):
    common = ["--method", "full", "--train.max_steps", "1", "--train.eval_every", "0", "--train.lr", "1e-4"]
    out = tmp_path / "run"
    main(args(base, data, out, *common))
    good = load_weights_file(out / dpo.REFERENCE_FILE)
    (out / dpo.REFERENCE_FILE).write_bytes(b"not a safetensors file")
    main(args(base, data, out, *common, "--train.max_steps", "2", "--train.resume", "auto"))
    again = load_weights_file(out / dpo.REFERENCE_FILE)
    assert torch.equal(again, good), (again - good).abs().max()  # recomputed from the base, identically


def load_weights_file(path: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(path)["reference_logps"].clone()  # load_file maps the file: copy before it changes
