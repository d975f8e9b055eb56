"""Generation: sampling, stop tokens and strings, streaming, batching == one by one, CLI."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
import torch

from llmkit.config import ModelConfig
from llmkit.errors import LLMKitError
from llmkit.generate import (
    DecodeBatch,
    SamplingParams,
    Sequence,
    generate,
    generate_batch,
    load_for_inference,
    prepare_for_decoding,
    sample,
    stream,
)
from llmkit.model import KVCache
from tests.conftest import make_hf_model
from tests.helpers import cli_error, cli_run

@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    d = tiny_model_dir()
    loaded, tok = load_for_inference(str(d))
    return SimpleNamespace(dir=d, model=loaded.model, tok=tok)


class ScriptedModel(torch.nn.Module):
    """Stands in for a Transformer: after a prompt of `prompt_len` tokens it "predicts" `script`
    token by token (logits: the scripted token highest, `runner_up` second), so stop and
    streaming behaviour can be checked on known text."""

    def __init__(self, script, prompt_len, vocab=320, runner_up=5):
        super().__init__()
        self.script, self.prompt_len, self.runner_up = list(script), prompt_len, runner_up
        self.cfg = ModelConfig(vocab_size=vocab, n_layer=1, n_embd=8, n_head=1, block_size=256)
        self.max_seq_len = 256
        self.calls = 0

    def new_cache(self, batch_size, max_len=None, dtype=None):
        return KVCache(self.cfg, batch_size, max_len or self.max_seq_len)

    def forward(self, idx, input_pos, cache=None, last_only=False):
        self.calls += 1
        B, T = idx.shape
        logits = torch.zeros(B, T, self.cfg.vocab_size)
        pos = input_pos if input_pos.dim() == 2 else input_pos[None].expand(B, T)
        for b in range(B):
            for t in range(T):
                step = int(pos[b, t]) - (self.prompt_len - 1)
                if 0 <= step < len(self.script):
                    logits[b, t, self.runner_up] = 5.0
                    logits[b, t, self.script[step]] = 10.0
        return logits[:, -1:] if last_only else logits


def scripted(tok, text, prompt="Hi", extra=()):
    ids = tok.encode(prompt)
    script = tok.encode(text) + list(extra)
    return ScriptedModel(script, len(ids)), ids, script


# --- parameters and sampling --------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=-0.5), "temperature must be a finite number >= 0"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(top_k=-1), "top_k must be a positive integer"),
    (dict(max_new_tokens=-3), "max_new_tokens must be a non-negative integer"),
    (dict(stop=[""]), "stop must be a list of non-empty strings"),
    (dict(seed="1"), "seed must be an integer"),
])
def test_bad_sampling_params_are_clear_errors(kwargs, match):
    with pytest.raises(LLMKitError, match=match):
        SamplingParams(**kwargs)


def test_sample_filters_and_seeds():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    assert torch.equal(sample(logits, temperature=0), logits.argmax(-1))
    assert torch.equal(sample(logits, 1.0, top_k=1), logits.argmax(-1))
    assert torch.equal(sample(logits, 1.0, top_p=1e-6), logits.argmax(-1))  # nucleus of one token
    top3 = logits.topk(3).indices
    for _ in range(20):
        picked = sample(logits, 2.0, top_k=3)
        assert all(p in row for p, row in zip(picked.tolist(), top3.tolist()))
    # top_p keeps the smallest set reaching p: here the two tokens holding 0.5 + 0.3.
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    seen = {int(sample(probs.log(), 1.0, top_p=0.8)[0]) for _ in range(200)}
    assert seen == {0, 1}
    a = sample(logits, 1.0, generator=torch.Generator().manual_seed(7))
    b = sample(logits, 1.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


# --- stop handling and streaming (scripted model: known text) -----------------------------------
def test_stop_string_spanning_tokens_is_cut(tiny):
    text = "Hello world! How are you today?"
    model, ids, script = scripted(tiny.tok, text)
    pieces = [tiny.tok.decode([t]) for t in script]
    assert "d! H" not in pieces  # the stop string spans several tokens
    s = stream(model, tiny.tok, ids, max_new_tokens=50, stop=["d! H"])
    chunks = list(s)
    assert "".join(chunks) == s.completion.text == "Hello worl"
    assert s.completion.finish_reason == "stop"


def test_possible_stop_prefix_is_held_then_released(tiny):
    text = "Hello world! How are you today?"
    model, ids, script = scripted(tiny.tok, text)
    s = stream(model, tiny.tok, ids, max_new_tokens=len(script), stop=["world?", "you?"])
    chunks = list(s)
    assert "".join(chunks) == text and s.completion.finish_reason == "length"
    # "world" could have started "world?": it was emitted only once "!" ruled that out.
    emitted = ""
    for c in chunks:
        emitted += c
        assert not any(emitted.endswith(p) for p in ("w", "wo", "wor", "worl", "world"))


def test_stream_never_splits_multibyte_characters(tiny):
    text = "héllo 🙂 wörld ✓"
    model, ids, script = scripted(tiny.tok, text)
    assert len(script) > len(text)  # multi-byte characters take several byte tokens
    s = stream(model, tiny.tok, ids, max_new_tokens=len(script))
    chunks = list(s)
    assert "".join(chunks) == text
    assert not any("\ufffd" in c for c in chunks)


def test_stop_token_ends_and_min_new_tokens_defers_it(tiny):
    eos = tiny.tok.eos_id
    model, ids, script = scripted(tiny.tok, "Hi", extra=[eos, 7, 7])
    c = generate(model, tiny.tok, ids, max_new_tokens=10)
    assert c.finish_reason == "stop" and c.text == "Hi" and c.token_ids[-1] == eos
    # With min_new_tokens the EOS is forbidden: the runner-up token is taken instead.
    c = generate(model, tiny.tok, ids, max_new_tokens=10, min_new_tokens=len(script))
    assert eos not in c.token_ids and c.token_ids[len(script) - 3] == model.runner_up


def test_max_new_tokens_and_context_end_with_length(tiny):
    c = generate(tiny.model, tiny.tok, "Hello", max_new_tokens=7, stop_ids=set())
    assert len(c.token_ids) == 7 and c.finish_reason == "length"
    n = len(tiny.tok.encode("Hello"))
    c = generate(tiny.model, tiny.tok, "Hello", max_new_tokens=1000, stop_ids=set())
    assert n + len(c.token_ids) == tiny.model.max_seq_len and c.finish_reason == "length"
    with pytest.raises(LLMKitError, match="the context is 128 tokens"):
        generate(tiny.model, tiny.tok, list(range(3, 131)), max_new_tokens=1)


# --- real model: correctness of cached, batched and seeded decoding -----------------------------
def _greedy_no_cache(model, ids, n):
    x = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            x = torch.cat([x, model(x)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return x[0, len(ids):].tolist()


def test_greedy_generation_matches_uncached_argmax(tiny):
    ids = tiny.tok.encode("The quick brown fox")
    c = generate(tiny.model, tiny.tok, ids, max_new_tokens=30, stop_ids=set())
    assert c.token_ids == _greedy_no_cache(tiny.model, ids, 30)


def test_greedy_generation_matches_transformers(tiny):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny.dir).eval()
    ids = tiny.tok.encode("Once upon a time")
    with torch.no_grad():
        ref = hf.generate(torch.tensor([ids]), max_new_tokens=25, min_new_tokens=25, do_sample=False,
                          eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
    assert generate(tiny.model, tiny.tok, ids, max_new_tokens=25, stop_ids=set()).token_ids == ref


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_batched_generation_equals_one_by_one(tiny_model_dir, family):
    d = tiny_model_dir(family)
    loaded, tok = load_for_inference(str(d))
    prompts = ["Hello", "The quick brown fox jumps over the lazy dog.", "A", "Once upon a time there was"]
    params = SamplingParams(max_new_tokens=24)
    alone = [generate(loaded.model, tok, p, params) for p in prompts]
    together = generate_batch(loaded.model, tok, prompts, params)
    assert [c.token_ids for c in together] == [c.token_ids for c in alone]
    assert [c.text for c in together] == [c.text for c in alone]
    # Rows finish independently: a stop token that one row meets early ends only that row.
    stop = {alone[0].token_ids[3]}
    alone = [generate(loaded.model, tok, p, params, stop_ids=stop) for p in prompts]
    together = generate_batch(loaded.model, tok, prompts, params, stop_ids=stop)
    assert [c.token_ids for c in together] == [c.token_ids for c in alone]
    assert len({len(c.token_ids) for c in together}) > 1


def test_rows_joining_and_leaving_match_solo_runs(tiny):
    """Continuous batching: a sequence added mid-way, and rows removed, do not disturb others."""
    params = SamplingParams(max_new_tokens=20)
    prompts = [tiny.tok.encode(p) for p in ("Hello world", "The lazy dog", "Once upon", "A fox")]
    solo = [generate(tiny.model, tiny.tok, p, params, stop_ids=set()).token_ids for p in prompts]
    batch = DecodeBatch(tiny.model, 3, 64)
    seqs = [Sequence(p, params, tiny.tok, set()) for p in prompts]
    batch.add(seqs[:2])
    for _ in range(5):
        batch.step()
    batch.add([seqs[2]])  # joins at another position
    batch.step()
    batch.remove(seqs[0])  # cancelled: the last row moves into its slot
    batch.add([seqs[3]])
    while batch.seqs:
        batch.step()
    assert [s.token_ids for s in seqs[1:]] == solo[1:]
    assert seqs[0].token_ids == solo[0][: len(seqs[0].token_ids)]


def test_seeded_sampling_is_reproducible_alone_and_batched(tiny):
    params = SamplingParams(max_new_tokens=20, temperature=1.0, top_k=50, top_p=0.95, seed=1234)
    a = generate(tiny.model, tiny.tok, "Hello", params, stop_ids=set())
    b = generate(tiny.model, tiny.tok, "Hello", params, stop_ids=set())
    c = generate(tiny.model, tiny.tok, "Hello", params.replace(seed=99), stop_ids=set())
    batched = generate_batch(tiny.model, tiny.tok, ["The lazy dog", "Hello"], params, stop_ids=set())
    assert a.token_ids == b.token_ids == batched[1].token_ids
    assert a.token_ids != c.token_ids


def test_prompt_and_token_logprobs_match_a_full_forward(tiny):
    ids = tiny.tok.encode("The quick brown fox jumps")
    c = generate(tiny.model, tiny.tok, ids, max_new_tokens=3, logprobs=2, prompt_logprobs=2, stop_ids=set())
    full = ids + c.token_ids
    with torch.no_grad():
        ref = torch.log_softmax(tiny.model(torch.tensor([full]))[0].float(), -1)  # (T, vocab)
    assert c.prompt_logprobs[0].logprob is None and len(c.prompt_logprobs) == len(ids)
    entries = c.prompt_logprobs[1:] + c.logprobs
    for t, e in enumerate(entries):
        assert e.token_id == full[t + 1]
        assert e.logprob == pytest.approx(float(ref[t, full[t + 1]]), abs=1e-4)
        assert e.top[0][0] == int(ref[t].argmax()) and len(e.top) == 2
    assert all(e.top[0][0] == e.token_id for e in c.logprobs)  # greedy picks the top token


@pytest.mark.parametrize("special", [True, False], ids=["special-kernel", "F.linear"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_prepare_for_decoding_keeps_results(tiny, dtype, special, monkeypatch):
    """Whichever kernel this CPU measures faster (both forced here), the values are the same."""
    import llmkit.generate.kernels as kernels
    from llmkit.checkpoint import load_model
    from llmkit.generate import MATVEC_MAX_ROWS, MatVecLinear

    monkeypatch.setattr(kernels, "fastest_kernel", lambda layer, working_set=0: special)

    ids = tiny.tok.encode("Hello world, how are you")
    model = load_model(tiny.dir, dtype=dtype).model
    keys = set(model.state_dict())

    def one_by_one():  # token-by-token decoding: the few-row products prepare_for_decoding changes
        cache = model.new_cache(1, len(ids))
        return torch.cat([model(torch.tensor([[t]]), torch.tensor([i]), cache) for i, t in enumerate(ids)], 1)

    long = (ids * 4)[: MATVEC_MAX_ROWS + 8]  # more rows than the decoding path takes
    assert len(long) > MATVEC_MAX_ROWS
    with torch.no_grad():
        before, before_full = one_by_one(), model(torch.tensor([long]))
        prepare_for_decoding(model)
        after, after_full = one_by_one(), model(torch.tensor([long]))
    assert isinstance(model.lm_head, MatVecLinear) and isinstance(model.blocks[0].mlp.down, MatVecLinear)
    assert (model.lm_head.weight is model.embed.weight) == model.cfg.tie_embeddings  # ties kept
    assert set(model.state_dict()) == keys  # same Parameters under the same names
    torch.testing.assert_close(after_full, before_full, rtol=0, atol=0)  # prompts: untouched path
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else dict(rtol=0.02, atol=0.02)
    torch.testing.assert_close(after.float(), before.float(), **tol)  # same values, other kernels
    assert after.argmax(-1).tolist() == before.argmax(-1).tolist()
    assert model.lm_head.special == special


def test_the_decode_kernel_is_chosen_by_measuring_it_once_per_shape():
    import llmkit.generate.kernels as kernels
    from llmkit.generate import MatVecLinear

    layer = MatVecLinear(torch.nn.Linear(64, 96, bias=False))
    key = (96, 64, torch.float32, 1)
    assert kernels._CHOICE[key] == layer.special  # measured when the layer was made
    kernels._CHOICE[key] = not layer.special  # a second layer of that shape reuses the measurement
    assert MatVecLinear(torch.nn.Linear(64, 96, bias=False)).special == kernels._CHOICE[key]
    del kernels._CHOICE[key]


def test_the_decode_kernel_is_timed_against_a_working_set_as_heavy_as_the_model(monkeypatch):
    """Decoding reads each matrix from memory (the rest of the model went through the caches in
    between): the timing passes over distinct copies that weigh what the model does, capped."""
    import llmkit.generate.kernels as kernels
    from llmkit.generate import MatVecLinear

    seen = []

    def fake_pass(fn, weights, x, rounds=3):
        seen.append([w.data_ptr() for w in weights])
        return 1.0 if len(seen) % 2 else 2.0  # the special kernel (timed first) wins

    monkeypatch.setattr(kernels, "_pass_time", fake_pass)
    monkeypatch.setattr(kernels, "_CHOICE", {})
    layer = torch.nn.Linear(64, 96, bias=False)
    nbytes = 64 * 96 * 4
    assert MatVecLinear(layer, working_set=10 * nbytes + 5).special
    assert len(seen) == 4 and all(len(set(p)) == 10 for p in seen)  # 10 distinct copies, both kernels twice
    assert seen[0][0] == layer.weight.data_ptr()
    seen.clear()
    MatVecLinear(torch.nn.Linear(64, 96, bias=False), working_set=10**12)  # a huge model: capped
    assert len(seen[0]) == min(64, kernels.WORKING_SET_MAX_BYTES // nbytes)
    seen.clear()
    MatVecLinear(torch.nn.Linear(64, 96, bias=False), working_set=10 * nbytes + 5)  # same shape, same set
    assert seen == []  # measured once


# --- CLI ----------------------------------------------------------------------------------------
def test_generate_cli_streams_completion_and_timing(tiny, capsys):
    ref = generate(tiny.model, tiny.tok, "Hello world", max_new_tokens=12, stop_ids=tiny.tok.eos_ids)
    code, out, err = cli_run(capsys, ["generate", str(tiny.dir), "--prompt", "Hello world", "--max-new-tokens", "12",
                                      "--temperature", "0"])
    assert code == 0, err
    assert out == ref.text + "\n"
    assert re.search(r"Time for inference: \d+\.\d\d sec total, \d+\.\d\d tokens/sec, \d+ tokens", err)


def test_generate_cli_chat_style_and_stop(tiny, capsys):
    chat = ["generate", str(tiny.dir), "--prompt", "Hi", "--style", "auto", "--system", "Be brief.",
            "--temperature", "0", "--max-new-tokens", "8"]
    code, full, err = cli_run(capsys, chat)
    assert code == 0, err
    # This tiny model's greedy reply has a "," (and no "o"): stopping at either must cut the very
    # same reply just before its first ",".
    assert "," in full, full
    code, out, err = cli_run(capsys, [*chat, "--stop", '["o", ","]'])
    assert code == 0, err
    assert "o" not in out
    cut = min(full.index(s) for s in ("o", ",") if s in full)
    assert out == full[:cut] + "\n"


@pytest.mark.parametrize("prompt,args,match", [
    ("Hi", ["--top-p", "1.5"], r"top_p must be in \(0, 1\]"),
    ("Hi", ["--temperature", "-1"], "temperature must be a finite number >= 0"),
    ("fox " * 200, [], "the prompt is .* tokens; the model's context is 128 tokens"),
    ("Hi", ["--style", "nope"], "unknown prompt style 'nope'"),
], ids=["top_p", "temperature", "too-long", "style"])
def test_generate_cli_errors(tiny, capsys, prompt, args, match):
    err = cli_error(capsys, ["generate", str(tiny.dir), "--prompt", prompt, *args])  # exit 1, one line
    assert re.search(match, err)


def test_generate_cli_missing_tokenizer(tmp_path, capsys):
    d = tmp_path / "no-tok"
    make_hf_model("llama").save_pretrained(d)
    cli_error(capsys, ["generate", str(d), "--prompt", "Hi"], "no tokenizer files in", str(d))  # no traceback
    assert json.loads((d / "config.json").read_text())["model_type"] == "llama"


def test_generate_on_a_classifier_says_to_use_classify_predict(tiny, tmp_path, capsys):
    """A classifier's output layer scores labels: `generate` refuses it in one line, naming
    the command that uses it, instead of decoding label ids as tokens."""
    from llmkit.checkpoint import load_model, save_model
    from llmkit.heads import attach_class_head

    net = attach_class_head(load_model(tiny.dir, dtype=torch.float32).model, 2)
    clf = save_model(tmp_path / "clf", net, tokenizer_dir=tiny.dir, extra={"classifier.json": {"labels": ["ham", "spam"]}})
    assert load_model(clf).classifier is not None  # what the check reads
    err = cli_error(capsys, ["generate", clf, "--prompt", "Hi", "--max_new_tokens", "3"],
                    "llmkit classify predict", "classifier", "ham, spam")
    assert str(clf) in err
    assert capsys.readouterr().out == ""  # nothing was generated
