"""Beam search: token ids and scores equal transformers' generate(num_beams=...), one beam is
greedy decoding, batched equals one by one, scores equal an uncached forward, clear errors."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from llmkit.errors import LLMKitError
from llmkit.generate import BeamResult, beam_search, beam_search_batch, generate, load_for_inference

PROMPTS = ["Hello", "The quick brown fox jumps", "Once upon a time there", "A"]
MAX_NEW = 12


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tiny(request, tiny_model_dir):
    """Our model and transformers' from one tiny random checkpoint, and a stop token that the
    beams actually meet: the token transformers' own beams generate most often."""
    from transformers import AutoModelForCausalLM

    d = tiny_model_dir(request.param)
    loaded, tok = load_for_inference(str(d))
    hf = AutoModelForCausalLM.from_pretrained(d).eval()
    prompts = [tok.encode(p) for p in PROMPTS]
    seen = Counter()
    with torch.no_grad():
        for p in prompts:
            out = hf.generate(torch.tensor([p]), num_beams=4, num_return_sequences=4, do_sample=False,
                              max_new_tokens=MAX_NEW, eos_token_id=None, pad_token_id=0)
            seen.update(out[:, len(p):].flatten().tolist())
    return SimpleNamespace(family=request.param, model=loaded.model, tok=tok, hf=hf, prompts=prompts,
                           eos=seen.most_common(1)[0][0])


def hf_beams(hf, prompt, stops, **kw):
    """transformers' (generated ids, sequences_scores) per returned sequence."""
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), do_sample=False, eos_token_id=sorted(stops), pad_token_id=0,
                          return_dict_in_generate=True, output_scores=True, **kw)
    generated = out.sequences[:, len(prompt):].tolist()
    if kw.get("num_beams", 1) == 1:  # greedy: cut after the first stop token
        ids = generated[0]
        end = next((i + 1 for i, t in enumerate(ids) if t in stops), len(ids))
        return [ids[:end]], None
    lengths = (out.beam_indices != -1).sum(1).tolist()  # the padding after a short hypothesis is not its
    return [g[:n] for g, n in zip(generated, lengths)], out.sequences_scores.tolist()


def assert_same(ours: list[BeamResult], ref_ids, ref_scores, what):
    assert [r.token_ids for r in ours] == ref_ids, what
    if ref_scores is not None:
        assert [r.score for r in ours] == pytest.approx(ref_scores, abs=1e-4), what


def test_matches_transformers_beam_search(tiny):
    """Every combination of beams, length penalty and early stopping, all prompts searched
    together (rows = prompts x beams), each against transformers alone; 1 and 2 returned
    sequences (the search is the same: transformers is asked for 2 once, ours for both)."""
    stops, seen, by_stopping = {tiny.eos}, Counter(), {}
    for nb, lp, es in itertools.product([2, 4], [1.0, 0.6, 2.0], [False, True, "never"]):
        kw = dict(num_beams=nb, length_penalty=lp, early_stopping=es, max_new_tokens=MAX_NEW)
        ours = {nrs: beam_search_batch(tiny.model, tiny.tok, tiny.prompts, stop_ids=stops, num_return_sequences=nrs,
                                       **kw) for nrs in (1, 2)}
        for i, p in enumerate(tiny.prompts):
            ref_ids, ref_scores = hf_beams(tiny.hf, p, stops, num_return_sequences=2, **kw)
            for nrs, res in ours.items():
                assert_same(res[i], ref_ids[:nrs], ref_scores[:nrs], what=(kw, nrs, PROMPTS[i]))
            seen.update(r.finish_reason for r in ours[2][i])
            by_stopping.setdefault((nb, lp, i), set()).add(tuple(tuple(r.token_ids) for r in ours[2][i]))
    # The grid is not degenerate: hypotheses end both ways, and early_stopping changes results.
    assert seen["stop"] and seen["length"], seen
    assert any(len(v) > 1 for v in by_stopping.values())


@pytest.mark.parametrize("num_beams", [1, 3])
def test_processors_and_several_stop_ids_match_transformers(tiny, num_beams):
    """no_repeat_ngram_size (over prompt + generated, as transformers) and min_new_tokens,
    with two stop tokens (K = 3 x beams candidates a step)."""
    stops = {tiny.eos, tiny.eos + 1}
    for ngram, min_new in [(0, 5), (1, 0), (2, 5), (3, 0)]:
        kw = dict(num_beams=num_beams, no_repeat_ngram_size=ngram, min_new_tokens=min_new, max_new_tokens=MAX_NEW,
                  num_return_sequences=min(2, num_beams))
        if num_beams > 1:
            kw["length_penalty"] = 0.8
        ours = beam_search_batch(tiny.model, tiny.tok, tiny.prompts, stop_ids=stops, **kw)
        for p, res in zip(tiny.prompts, ours):
            assert_same(res, *hf_beams(tiny.hf, p, stops, **kw), what=kw)
            assert all(len(r.token_ids) > min_new or r.finish_reason == "length" for r in res)


def test_one_beam_is_greedy_generation(tiny):
    stops = {tiny.eos}
    for p in tiny.prompts:
        c = generate(tiny.model, tiny.tok, p, max_new_tokens=MAX_NEW, stop_ids=stops, logprobs=0)
        [r] = beam_search(tiny.model, tiny.tok, p, num_beams=1, max_new_tokens=MAX_NEW, stop_ids=stops,
                          length_penalty=0.5)
        assert (r.token_ids, r.text, r.finish_reason) == (c.token_ids, c.text, c.finish_reason)
        logprob = sum(t.logprob for t in c.logprobs)
        assert r.logprob == pytest.approx(logprob, abs=1e-4)
        assert r.score == pytest.approx(logprob / len(c.token_ids) ** 0.5, abs=1e-4)


def test_batched_equals_one_by_one(tiny):
    """Prompts of different lengths, at their own positions, leaving the batch at different steps."""
    kw = dict(max_new_tokens=MAX_NEW, num_return_sequences=3, stop_ids={tiny.eos}, length_penalty=1.5)
    for nb in (1, 3):
        together = beam_search_batch(tiny.model, tiny.tok, PROMPTS, nb, **{**kw, "num_return_sequences": min(3, nb)})
        alone = [beam_search(tiny.model, tiny.tok, p, nb, **{**kw, "num_return_sequences": min(3, nb)})
                 for p in PROMPTS]
        assert [[(r.token_ids, r.text, r.finish_reason) for r in res] for res in together] == \
            [[(r.token_ids, r.text, r.finish_reason) for r in res] for res in alone]
        for a, b in zip(together, alone):
            assert [r.score for r in a] == pytest.approx([r.score for r in b], abs=1e-5)


def test_results_are_consistent_with_an_uncached_forward(tiny):
    """Each hypothesis' log-prob is what a plain forward over prompt + hypothesis gives (the cache
    rows followed their beams), its score that / length ** penalty, best first, text decoded."""
    lp = 1.3
    for p in tiny.prompts:
        res = beam_search(tiny.model, tiny.tok, p, 4, max_new_tokens=MAX_NEW, num_return_sequences=4,
                          length_penalty=lp, stop_ids={tiny.eos})
        assert len(res) == 4
        assert [r.score for r in res] == sorted((r.score for r in res), reverse=True)
        for r in res:
            with torch.no_grad():
                full = torch.tensor([p + r.token_ids])
                logprobs = torch.log_softmax(tiny.model(full)[0].float(), dim=-1)  # (T, vocab)
            expected = sum(float(logprobs[len(p) - 1 + i, t]) for i, t in enumerate(r.token_ids))
            assert r.logprob == pytest.approx(expected, abs=1e-4)
            assert r.score == pytest.approx(r.logprob / len(r.token_ids) ** lp, abs=1e-5)
            stopped = r.token_ids[-1] == tiny.eos
            assert r.finish_reason == ("stop" if stopped else "length")
            assert tiny.eos not in r.token_ids[:-1]
            assert len(r.token_ids) == MAX_NEW or stopped
            assert r.text == tiny.tok.decode(r.token_ids[:-1] if stopped else r.token_ids)
            assert r.prompt_ids == p


def test_text_prompt_and_context_end(tiny):
    """A text prompt is encoded; the context (128 tokens) ends hypotheses like max_new_tokens."""
    [r] = beam_search(tiny.model, tiny.tok, "Hello", 2, max_new_tokens=4, stop_ids=set())
    assert r.prompt_ids == tiny.tok.encode("Hello") and len(r.token_ids) == 4 and r.finish_reason == "length"
    long = (tiny.prompts[1] * 40)[:120]
    res = beam_search(tiny.model, tiny.tok, long, 3, max_new_tokens=50, num_return_sequences=3, stop_ids=set())
    assert [len(r.token_ids) for r in res] == [8, 8, 8]
    assert {r.finish_reason for r in res} == {"length"}


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_beams=0), "num_beams must be a positive integer"),
    (dict(num_beams=2.0), "num_beams must be a positive integer"),
    (dict(num_beams=True), "num_beams must be a positive integer"),
    (dict(num_beams=2, num_return_sequences=3), r"num_return_sequences must be between 1 and num_beams \(2\)"),
    (dict(num_return_sequences=0), "num_return_sequences must be between 1"),
    (dict(max_new_tokens=0), "max_new_tokens must be a positive integer"),
    (dict(length_penalty=float("nan")), "length_penalty must be a finite number"),
    (dict(length_penalty="1"), "length_penalty must be a finite number"),
    (dict(early_stopping="sometimes"), "early_stopping must be true, false or 'never'"),
    (dict(early_stopping=1), "early_stopping must be true, false or 'never'"),
    (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size must be a non-negative integer"),
    (dict(min_new_tokens=-2), "min_new_tokens must be a non-negative integer"),
])
def test_bad_arguments_are_one_line_errors(tiny, kwargs, match):
    with pytest.raises(LLMKitError, match=match) as e:
        beam_search(tiny.model, tiny.tok, "Hello", **kwargs)
    assert "\n" not in str(e.value)


def test_bad_prompts_are_one_line_errors(tiny):
    with pytest.raises(LLMKitError, match="the prompt is empty"):
        beam_search(tiny.model, tiny.tok, [], 2)
    with pytest.raises(LLMKitError, match="the prompt is 128 tokens; the context is 128 tokens"):
        beam_search(tiny.model, tiny.tok, [5] * 128, 2)
    with pytest.raises(LLMKitError, match="outside the vocabulary"):
        beam_search(tiny.model, tiny.tok, [5, 100000], 2)
    assert beam_search_batch(tiny.model, tiny.tok, [], 2) == []
    assert not math.isnan(beam_search(tiny.model, tiny.tok, [5], 2, max_new_tokens=2)[0].score)
