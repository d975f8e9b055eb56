"""Sentence embeddings (recipes/embed.py): `encode_texts` against a plain transformers
mean-pooling loop, padding and batching that change nothing, the retrieval metrics and the
InfoNCE loss by hand, `llmkit embed train` learning a synthetic task (loss down, retrieval up
over its baseline), the methods, exact resume, `embed encode`, and bad input -> one line."""

from __future__ import annotations

import csv
import json
import math
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import llmkit.recipes.embed as em
from llmkit.checkpoint import load_model, load_weights
from llmkit.cli import main
from tests.conftest import run_two_ways, sigterm_at_call
from tests.helpers import ENCODER_TEXT, build_wordpiece, cli_error, cli_run

# --- a synthetic pair task: a premise and its entailed hypothesis share two cue words ---------------
FILLER = "the a of and to in is was for on with as at by from it that this be are".split()
CUES = ("apple river stone cloud tiger piano castle rocket garden winter candle forest silver ocean desert "
        "violin engine island mirror thunder").split()


def synthetic_nli(n: int, seed: int) -> list[dict]:
    """SNLI-shaped records, three per premise: entailment (the premise's two cue words), neutral
    (one of them), contradiction (two others), each among random filler words."""
    rng = random.Random(seed)

    def sentence(cues):
        words = [rng.choice(FILLER) for _ in range(5)]
        for c in cues:
            words.insert(rng.randint(0, len(words)), c)
        return " ".join(words)

    rows = []
    for _ in range(n):
        cues = rng.sample(CUES, 2)
        other = rng.sample([w for w in CUES if w not in cues], 2)
        premise = sentence(cues)
        rows += [{"premise": premise, "hypothesis": sentence(cues), "label": "entailment"},
                 {"premise": premise, "hypothesis": sentence(cues[:1] + other[:1]), "label": "neutral"},
                 {"premise": premise, "hypothesis": sentence(other), "label": "contradiction"}]
    return rows


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def base(tiny_model_dir) -> Path:
    return tiny_model_dir()  # the session's tiny llama + tokenizer, shared read-only


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("embdata")
    return write_jsonl(d / "train.jsonl", synthetic_nli(240, 0)), write_jsonl(d / "val.jsonl", synthetic_nli(50, 1))


def make_bert_dir(root: Path, seed: int = 0, mlm: bool = False) -> Path:
    """A tiny random BERT (transformers' BertModel, no head; with `mlm` BertForMaskedLM) with a
    WordPiece tokenizer, saved by transformers: what `AutoModel` / `AutoTokenizer` and
    `load_model` all read."""
    import transformers as T

    d = Path(root) / ("bert-mlm" if mlm else "bert")
    if (d / "config.json").exists():
        return d
    tok = T.AutoTokenizer.from_pretrained(build_wordpiece(Path(root) / "wordpiece"))
    torch.manual_seed(seed)
    cfg = T.BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=48, max_position_embeddings=64, type_vocab_size=2, pad_token_id=0)
    model = (T.BertForMaskedLM(cfg) if mlm else T.BertModel(cfg, add_pooling_layer=True)).eval()
    with torch.no_grad():  # every tensor random: a mis-mapped norm or bias cannot hide
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return make_bert_dir(tmp_path_factory.mktemp("embbert"))


def hf_mean_pool(d: Path, texts: list[str]) -> torch.Tensor:
    """The reference: transformers' AutoModel, attention-mask mean over the last hidden state,
    L2-normalised (the sentence-transformers recipe, written out)."""
    import transformers as T

    tok = T.AutoTokenizer.from_pretrained(d)
    model = T.AutoModel.from_pretrained(d, attn_implementation="eager").eval()
    batch = tok(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    m = batch["attention_mask"][..., None].float()
    return F.normalize((h * m).sum(1) / m.sum(1), dim=-1)


def losses(out: Path) -> dict[int, str]:
    with open(out / "metrics.csv") as f:
        return {int(r["step"]): r["value"] for r in csv.DictReader(f) if r["metric"] == "loss"}


def args(base, train, out, *extra, val=None) -> list[str]:
    return ["embed", "train", str(base), "--data", str(train), "--out", str(out), "--train.tensorboard", "false",
            "--train.warmup_steps", "2", "--train.micro_batch_size", "16", "--train.lr", "3e-3",
            "--train.precision", "fp32", *(["--val_data", str(val)] if val else []), *extra]


# --- encoding -------------------------------------------------------------------------------------
TEXTS = [ENCODER_TEXT[0], "Who won the game?", ENCODER_TEXT[3], "Paris", ENCODER_TEXT[2] + " " + ENCODER_TEXT[5]]


def test_encode_texts_equals_transformers_mean_pooling_on_bert(bert):
    loaded = load_model(bert)
    assert loaded.model.cfg.causal is False
    ref = hf_mean_pool(bert, TEXTS)
    for bs in (1, 2, 32):  # batching and the padding it brings change nothing
        ours = em.encode_texts(loaded.model, loaded.tokenizer, TEXTS, batch_size=bs)
        assert ours.shape == (len(TEXTS), 32) and ours.dtype == torch.float32
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(len(TEXTS)))


def test_truncation_keeps_the_closing_sep_as_transformers_does(bert):
    import transformers as T

    loaded = load_model(bert)
    tok = T.AutoTokenizer.from_pretrained(bert)
    long = " ".join(ENCODER_TEXT)
    ids = em.tokenize(loaded.tokenizer, [long], 16)[0]
    assert ids == tok(long, truncation=True, max_length=16)["input_ids"]
    ours = em.encode_texts(loaded.model, loaded.tokenizer, [long], max_len=16)
    model = T.AutoModel.from_pretrained(bert).eval()
    with torch.no_grad():
        ref = F.normalize(model(input_ids=torch.tensor([ids])).last_hidden_state.mean(1), dim=-1)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_causal_model_right_padding_equals_one_text_at_a_time(base):
    loaded = load_model(base)
    net, tok = loaded.model, loaded.tokenizer
    assert net.cfg.causal
    texts = TEXTS[:4]  # within the 128-token context (the last one is cut)
    batched = em.encode_texts(net, tok, texts, batch_size=8)
    for i, t in enumerate(texts):
        with torch.no_grad():
            ids = torch.tensor([tok.encode(t)])
            alone = F.normalize(net.hidden_states(ids).mean(1), dim=-1)  # no padding at all
        torch.testing.assert_close(batched[i:i + 1], alone, atol=1e-5, rtol=1e-5)


# --- metrics and loss by hand ---------------------------------------------------------------------
def test_retrieval_metrics_by_hand():
    q = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=-1)
    d = F.normalize(torch.tensor([[1.0, 0.1], [0.1, 1.0], [-1.0, 0.0], [1.0, 0.9]]), dim=-1)
    # query 0's positive is doc 3 (second nearest), query 1's doc 1 (nearest), query 2's docs 2 or 0
    # (0 ranks second after 3).
    m = em.retrieval_metrics(q, d, [[3], [1], [2, 0]], ks=(1, 2))
    assert m == {"top1": pytest.approx(1 / 3), "top2": pytest.approx(1.0), "mrr": pytest.approx((1 / 2 + 1 + 1 / 2) / 3)}


def test_retrieval_set_from_nli_pairs():
    from llmkit.data.nli import NLIPair

    pairs = [NLIPair("p1", "h1", "entailment", ""), NLIPair("p1", "h2", "contradiction", ""),
             NLIPair("p2", "h3", "neutral", ""), NLIPair("p2", "h1", "entailment", ""),
             NLIPair("p3", "h4", "neutral", "")]  # p3 has no positive: no query
    rs = em.retrieval_set(pairs)
    assert rs.queries == ["p1", "p2"] and rs.docs == ["h1", "h2", "h3", "h4"] and rs.relevant == [[0], [0]]


def test_contrastive_loss_is_in_batch_cross_entropy_and_masks_false_negatives():
    g = torch.Generator().manual_seed(0)
    a, p, n = (F.normalize(torch.randn(k, 8, generator=g), dim=-1) for k in (4, 4, 2))
    keys = torch.arange(4)
    loss, acc = em.contrastive_loss(a, p, n[:0], keys, keys + 10, torch.zeros(0, dtype=torch.long), 0.05)
    torch.testing.assert_close(loss, F.cross_entropy(a @ p.T / 0.05, torch.arange(4)))
    assert acc == ((a @ p.T).argmax(-1) == torch.arange(4)).float().mean()
    # Hard negatives are extra columns for every anchor.
    loss, _ = em.contrastive_loss(a, p, n, keys, keys + 10, torch.tensor([20, 21]), 0.05)
    torch.testing.assert_close(loss, F.cross_entropy(torch.cat([a @ p.T, a @ n.T], 1) / 0.05, torch.arange(4)))
    # Rows 0 and 1 share their positive's text: neither is the other's negative.
    p_key = torch.tensor([10, 10, 12, 13])
    loss, _ = em.contrastive_loss(a, p, n[:0], keys, p_key, torch.zeros(0, dtype=torch.long), 0.05)
    logits = a @ p.T / 0.05
    logits[0, 1] = logits[1, 0] = -math.inf
    torch.testing.assert_close(loss, F.cross_entropy(logits, torch.arange(4)))
    # Symmetric: the mean of both directions.
    loss, _ = em.contrastive_loss(a, p, n[:0], keys, keys + 10, torch.zeros(0, dtype=torch.long), 0.05, symmetric=True)
    want = (F.cross_entropy(a @ p.T / 0.05, torch.arange(4)) + F.cross_entropy(p @ a.T / 0.05, torch.arange(4))) / 2
    torch.testing.assert_close(loss, want)


def test_training_examples_take_hard_negatives_where_the_premise_has_one():
    from llmkit.data.nli import NLIPair

    pairs = [NLIPair("p1", "e1", "entailment", ""), NLIPair("p1", "c1", "contradiction", ""),
             NLIPair("p2", "e2", "entailment", ""), NLIPair("p2", "n2", "neutral", "")]
    assert em.training_examples(pairs, True) == [("p1", "e1", "c1"), ("p2", "e2", None)]
    assert em.training_examples(pairs, False) == [("p1", "e1", None), ("p2", "e2", None)]


# --- training -------------------------------------------------------------------------------------
def test_training_lowers_the_loss_and_beats_the_baseline_retrieval(base, data, tmp_path, capsys):
    train, val = data
    out = tmp_path / "full"
    code, stdout, err = cli_run(capsys, args(base, train, out, "--train.max_steps", "40", "--train.eval_every", "20",
                                             "--train.save_every", "0", "--train.lr", "1e-2", val=val))
    assert code == 0, err[-3000:]
    s = json.loads((out / "summary.json").read_text())
    r = s["retrieval"]
    assert r["queries"] == 50 and r["candidates"] == 150 and r["source"] == str(val)
    base_m, trained = r["baseline"], r["trained"]
    assert set(base_m) == set(trained) == {"top1", "top5", "mrr"}
    # Measured: MRR 0.09 -> 0.24, top-5 0.08 -> 0.34 (chance: MRR ~0.04 over 150 candidates).
    assert trained["mrr"] > base_m["mrr"] + 0.08 and trained["top5"] > base_m["top5"] + 0.1, r
    assert s["val_mrr"] == trained["mrr"] and s["step"] == 40
    assert s["examples"] == {"train": 240, "with_hard_negative": 240}
    curve = losses(out)
    first, last = np.mean([float(curve[i]) for i in range(1, 6)]), np.mean([float(curve[i]) for i in range(36, 41)])
    assert last < 0.7 * first, (first, last)
    assert "retrieval before training: top-1" in stdout and "->" in stdout
    # The step-0 evaluation in metrics.csv is the baseline (measured once, not twice differently).
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert float(next(x["value"] for x in rows if x["metric"] == "val_mrr" and x["step"] == "0")) == \
        pytest.approx(base_m["mrr"])

    # OUT/final is a plain model directory (its output layer kept) plus embedding.json; encoding
    # it reproduces the run's final retrieval numbers.
    final = out / "final"
    meta = json.loads((final / em.EMBEDDING).read_text())
    assert meta["pooling"] == "mean" and meta["method"] == "full" and meta["max_seq_len"] == 128
    loaded = load_model(final)
    assert loaded.model.lm_head.weight.shape == (320, 64)
    rs = em.retrieval_set(em.read_pairs(val))
    q = em.encode_texts(loaded.model, loaded.tokenizer, rs.queries)
    d = em.encode_texts(loaded.model, loaded.tokenizer, rs.docs)
    assert em.retrieval_metrics(q, d, rs.relevant)["mrr"] == pytest.approx(trained["mrr"], abs=1e-6)
    # The head's own weights did not train (an embedding never reads them).
    before = load_model(base, dtype=torch.float32).model.lm_head.weight
    assert torch.equal(loaded.model.lm_head.weight, before)

    # `embed encode` writes what encode_texts computes, as .npy, row i = line i.
    lines = tmp_path / "texts.txt"
    lines.write_text("\n".join(rs.queries[:5]) + "\n")
    npy = tmp_path / "emb.npy"
    code, stdout, err = cli_run(capsys, ["embed", "encode", final, "--file", lines, "--out", npy])
    assert code == 0, err[-2000:]
    arr = np.load(npy)
    assert arr.dtype == np.float32 and arr.shape == (5, 64)
    np.testing.assert_allclose(arr, q[:5].numpy(), atol=1e-6)
    code, stdout, err = cli_run(capsys, ["embed", "encode", final, "apple river", "apple river the", "thunder"])
    assert code == 0 and len(stdout.strip().splitlines()) == 3 and " 1.000" in stdout


def test_held_out_premises_are_not_trained_on(base, data, tmp_path, capsys):
    train, _ = data
    out = tmp_path / "split"
    code, _, err = cli_run(capsys, args(base, train, out, "--train.max_steps", "1", "--train.eval_every", "0",
                                        "--val_fraction", "0.25", "--eval_size", "30"))
    assert code == 0, err[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["examples"]["train"] == 180 and s["retrieval"]["queries"] == 30  # 60 of 240 held out, 30 scored
    pairs = em.read_pairs(train)
    held_train, held = em.split_by_anchor(pairs, 0.25, 42)
    assert not {p.premise for p in held} & {p.premise for p in held_train}


@pytest.mark.parametrize("method,extra", [("lora", ["--lora.r", "4"]), ("freeze", ["--train_last", "1"])])
def test_lora_and_freeze(base, data, tmp_path, capsys, method, extra):
    train, val = data
    out = tmp_path / method
    code, _, err = cli_run(capsys, args(base, train, out, "--method", method, *extra, "--train.max_steps", "3",
                                        "--train.eval_every", "0", "--symmetric", "true", val=val))
    assert code == 0, err[-3000:]
    final = out / "final"
    sd = load_weights(final)
    before = load_model(base, dtype=torch.float32).model.state_dict()
    if method == "lora":
        assert (final / "adapter_config.json").exists() and sd and all("lora_" in k for k in sd)
    else:
        for k, v in before.items():  # only the last block and the final norm changed
            same = torch.equal(sd[k], v)
            assert same == (not (k.startswith("blocks.1.") or k.startswith("norm."))), k
    net = load_model(final).model  # loads as any model (LoRA merged)
    assert net.cfg.n_embd == 64


def test_encoder_trains_and_the_checkpoint_matches_transformers(tmp_path, capsys):
    """A BERT trains with the attention mask on its padding; the llmkit checkpoint, exported to
    Hugging Face, gives the same embeddings in the plain transformers loop. (A masked-LM BERT: a
    bare BertModel's checkpoint does not export yet, see convert/hf.py.)"""
    bert = make_bert_dir(tmp_path, mlm=True)
    rows = [{"anchor": a, "positive": b} for a, b in zip(ENCODER_TEXT[:6], ENCODER_TEXT[1:7])]
    train = write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "bert-run"
    code, _, err = cli_run(capsys, args(bert, train, out, "--train.max_steps", "3", "--train.eval_every", "0",
                                        "--val_fraction", "0", "--train.micro_batch_size", "4"))
    assert code == 0, err[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert "retrieval" not in s and s["step"] == 3
    code, _, err = cli_run(capsys, ["convert", "to-hf", out / "final", "--out", tmp_path / "hf"])
    assert code == 0, err[-2000:]
    loaded = load_model(out / "final")
    ours = em.encode_texts(loaded.model, loaded.tokenizer, TEXTS)
    torch.testing.assert_close(ours, hf_mean_pool(tmp_path / "hf", TEXTS), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours, hf_mean_pool(bert, TEXTS), atol=1e-3)  # it did train


def test_interrupted_and_resumed_equals_uninterrupted(base, data, tmp_path, monkeypatch):
    train, val = data
    common = ["--train.max_steps", "7", "--train.eval_every", "3", "--train.save_every", "0"]
    ref = tmp_path / "ref"
    main(args(base, train, ref, *common, val=val))
    out = tmp_path / "resumed"
    sigterm_at_call(monkeypatch, em, "contrastive_loss", at=4)  # during training step 4
    with pytest.raises(SystemExit) as e:
        main(args(base, train, out, *common, val=val))
    assert e.value.code == 128 + signal.SIGTERM
    assert (out / "checkpoints" / "step-00000004").is_dir()
    monkeypatch.undo()
    main(args(base, train, out, *common, "--resume", "auto", val=val))
    a, b = losses(ref), losses(out)
    assert sorted(a) == sorted(b) == list(range(1, 8)) and a == b
    wa, wb = load_weights(ref / "final"), load_weights(out / "final")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = (json.loads((d / "summary.json").read_text())["retrieval"] for d in (ref, out))
    assert sa == sb  # the baseline too: measured on the model as loaded, before the resume


# --- errors ---------------------------------------------------------------------------------------
def test_cli_errors_exit_1(base, data, tmp_path, capsys):
    train, _ = data
    o = tmp_path / "o"
    cli_error(capsys, args(base, tmp_path / "missing.jsonl", o), "missing.jsonl: no such file")
    bad_label = write_jsonl(tmp_path / "bad.jsonl", [{"premise": "a", "hypothesis": "b", "label": "maybe"}])
    cli_error(capsys, args(base, bad_label, o), "bad.jsonl: line 1: label 'maybe' is none of entailment")
    no_pos = write_jsonl(tmp_path / "nopos.jsonl", [{"premise": "a", "hypothesis": "b", "label": "neutral"}])
    cli_error(capsys, args(base, no_pos, o), "no 'entailment' pairs to train on (labels found: neutral)")
    no_field = write_jsonl(tmp_path / "nofield.jsonl", [{"anchor": "a", "positive": "b"}, {"anchor": "c"}])
    cli_error(capsys, args(base, no_field, o), "nofield.jsonl: line 2: 'positive' must be a string (missing)")
    not_json = tmp_path / "garbage.jsonl"
    not_json.write_text('{"premise": "a", \n')
    cli_error(capsys, args(base, not_json, o), "garbage.jsonl")
    cli_error(capsys, args("tiny-llama", train, o), "tiny-llama: names an architecture to build")
    cli_error(capsys, args(base, train, o, "--temperature", "0"), "temperature must be > 0")
    cli_error(capsys, args(base, train, o, "--method", "lora", "--lora.targets", "lm_head"),
              "leave lm_head out of --lora.targets")
    cli_error(capsys, ["embed", "encode", base, "hello", "--out", tmp_path / "e.txt"], "written as .npy")
    blank = tmp_path / "blank.txt"
    blank.write_text("one\n\nthree\n")
    cli_error(capsys, ["embed", "encode", base, "--file", blank], "blank.txt: line 2 is empty")
    cli_error(capsys, ["embed", "encode", base], "give texts to encode, or --file")
    assert not o.exists()  # nothing was written by a refused run


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(base, data, tmp_path):
    """Candidates are gathered from both processes: 2 x 4 rows train as one process's 8."""
    train, val = data
    run_two_ways(["embed", "train", base, "--data", train, "--val_data", val, "--train.max_steps", "4",
                  "--train.eval_every", "2", "--train.save_every", "0", "--train.warmup_steps", "0",
                  "--train.lr", "3e-3"], tmp_path / "one", tmp_path / "two", micro_batch=8)
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(1, 5))
    for s in a:
        assert float(b[s]) == pytest.approx(float(a[s]), rel=1e-4), (s, a[s], b[s])
    ra, rb = (json.loads((tmp_path / d / "summary.json").read_text())["retrieval"] for d in ("one", "two"))
    assert rb["trained"]["mrr"] == pytest.approx(ra["trained"]["mrr"], abs=1e-4)
