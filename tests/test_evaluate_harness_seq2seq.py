"""The llmkit lm-evaluation-harness backend on encoder-decoders (T5 v1.1, BART) against the
harness's own `hf` backend with `backend="seq2seq"` (transformers' AutoModelForSeq2SeqLM).

Same tiny random checkpoints and tokenizers on both sides: log-likelihoods agree to 1e-4,
greedy flags exactly, generated text exactly, and nothing depends on the batch size.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("lm_eval")

import lm_eval  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from llmkit.errors import LLMKitError  # noqa: E402
from llmkit.evaluate.harness import LLMKitLM  # noqa: E402
from test_evaluate_helpers import CORPUS, write_mc_task  # noqa: E402
from tests.helpers import build_seq2seq_dir  # noqa: E402

FAMILIES = ["t5v1.1", "bart"]
MAX_LENGTH = 48  # below BART's 64 positions and T5's 512, so long inputs are easy to make


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-seq2seq")
    return {family: build_seq2seq_dir(root / family, family) for family in FAMILIES}


def hf_backend(path, batch_size=3, max_length=MAX_LENGTH):
    """The harness's hf backend in seq2seq mode, on the checkpoint's own weights.

    HFLM calls `model.tie_weights()` after loading. Under transformers 5, T5Config always sets
    tie_word_embeddings=True, so that call replaces a T5 v1.1 (or Flan-T5) checkpoint's own
    lm_head with the input embedding, although from_pretrained keeps the stored head (it warns
    that the weights differ). The reference here is the checkpoint, so its head is put back.
    """
    from lm_eval.models.huggingface import HFLM
    from safetensors.torch import load_file

    hf = HFLM(pretrained=str(path), backend="seq2seq", device="cpu", dtype="float32", batch_size=batch_size,
              max_length=max_length)
    head = load_file(str(path / "model.safetensors")).get("lm_head.weight")
    if head is not None and not torch.equal(hf.model.lm_head.weight, head):
        hf.model.lm_head.weight = torch.nn.Parameter(head)
    return hf


def ours(path, batch_size, **kw):
    kw.setdefault("max_length", MAX_LENGTH)
    return LLMKitLM(str(path), device="cpu", dtype="float32", batch_size=batch_size, **kw)


def _requests(kind, args):
    return [Instance(request_type=kind, doc={}, arguments=a, idx=0, metadata=("t", i, 1)) for i, a in enumerate(args)]


def assert_same_loglikelihoods(ref, got):
    assert len(ref) == len(got)
    for (lp_ref, greedy_ref), (lp, greedy) in zip(ref, got):
        assert lp == pytest.approx(lp_ref, abs=1e-4)
        assert greedy == greedy_ref


LL_ARGS = [
    ("The quick brown fox", " jumps over the lazy dog"),
    ("The quick brown fox", " sleeps"),  # same context: one encoder run for both
    ("The quick brown fox", " runs."),
    ("Question: what is the capital of France? Answer:", " Paris"),
    ("Question: what is the capital of France? Answer: ", "Paris"),  # trailing space moves over
    ("", "The quick brown fox"),  # empty context: the prefix token (T5 </s>, BART <s>) is the source
    ("</s> hi", " there"),  # starts with T5's prefix token: no special tokens added
    ("<s>hello", " world"),  # starts with BART's BOS
    ("a b c", " d e f g h i j k l m n o p"),
]


@pytest.mark.parametrize("family", FAMILIES)
def test_loglikelihood_matches_hf_seq2seq_backend(family, models):
    ref = hf_backend(models[family]).loglikelihood(_requests("loglikelihood", LL_ARGS))
    for batch_size in (1, 4):
        assert_same_loglikelihoods(ref, ours(models[family], batch_size).loglikelihood(
            _requests("loglikelihood", LL_ARGS)))


def _greedy_ids(lm, source, n):
    """The model's greedy continuation of `source` ids: n decoder tokens (EOS allowed)."""
    from llmkit.generate import generate

    return generate(lm.model, lm.tokenizer, source, max_new_tokens=n, stop_ids=set()).token_ids


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_flags_and_token_requests_match_hf(family, models):
    """Token-level requests with continuations that are the model's argmax (is_greedy true),
    and the same with one token changed (false), scored by both backends."""
    lm = ours(models[family], 4)
    hf = hf_backend(models[family])
    requests = []
    for text in ["The quick brown fox", "Question: what is the capital of France?", "a b c"]:
        src = lm.tok_encode(text)
        best = _greedy_ids(lm, src, 4)
        wrong = best[:2] + [(best[2] + 1) % lm.model.cfg.vocab_size] + best[3:]
        requests += [(None, src, best[:1]), (None, src, best), (None, src, wrong)]
    ref = hf._loglikelihood_tokens(requests, disable_tqdm=True)
    assert [g for _, g in ref] == [True, True, False] * 3
    for batch_size in (1, 4):
        lm.batch_size = batch_size
        assert_same_loglikelihoods(ref, lm._loglikelihood_tokens(requests, disable_tqdm=True))
    # The one-token score is log_softmax of the decoder's first logits, as the model computes it.
    src, first = requests[0][1], requests[0][2][0]
    start = torch.tensor([[lm.decoder_start_id]])
    with torch.no_grad():
        logits = lm.model(start, src=torch.tensor([src]))
    assert lm._loglikelihood_tokens(requests[:1])[0][0] == pytest.approx(
        float(torch.log_softmax(logits[0, -1], -1)[first]), abs=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_long_contexts_are_cut_from_the_left_like_hf(family, models):
    long_ctx = " ".join(CORPUS)  # hundreds of tokens: far past max_length
    args = [(long_ctx, " the lazy dog"), (long_ctx, " Paris."), (long_ctx[:200], " a cat sat"), ("Hi", " there")]
    ref = hf_backend(models[family], batch_size=2).loglikelihood(_requests("loglikelihood", args))
    for batch_size in (1, 3):
        got = ours(models[family], batch_size, truncate=True).loglikelihood(_requests("loglikelihood", args))
        assert_same_loglikelihoods(ref, got)
    with pytest.raises(LLMKitError, match="a context of .* tokens does not fit the max_length of 48 tokens"):
        ours(models[family], 2).loglikelihood(_requests("loglikelihood", args[:1]))
    with pytest.raises(LLMKitError, match="a continuation of .* tokens does not fit"):
        ours(models[family], 2, truncate=True).loglikelihood(_requests("loglikelihood", [("Hi", long_ctx)]))


@pytest.mark.parametrize("family", FAMILIES)
def test_loglikelihood_rolling_matches_hf(family, models):
    """The hf backend's seq2seq rolling windows: one-token source, the window as the target."""
    texts = [" ".join(CORPUS[:3]), CORPUS[1], "Hello there, fox."]
    reqs = [(t,) for t in texts]
    ref = hf_backend(models[family], max_length=16).loglikelihood_rolling(_requests("loglikelihood_rolling", reqs))
    for batch_size in (1, 4):
        got = ours(models[family], batch_size, max_length=16).loglikelihood_rolling(
            _requests("loglikelihood_rolling", reqs))
        assert got == pytest.approx(ref, abs=1e-3)  # sums over hundreds of tokens


CONTEXTS = ["The quick brown", "Question: what is the capital of France? Answer:", "A cat sat on the",
            "Numbers: 1 2 3", " ".join(CORPUS)[:50]]


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_until_matches_hf_greedy(family, models):
    """Greedy text equal to transformers' generate through the hf backend, stop strings cut, for
    batch sizes 1 and 4.

    The hf backend gives a seq2seq model `max_length = longest source in the batch +
    max_gen_toks` (transformers counts decoder tokens, the start token included), so with no
    stop in sight it writes more than max_gen_toks tokens; `max_length` in its gen_kwargs pins
    its budget to max_gen_toks. Its sources are left-padded, which moves BART's learned encoder
    positions, so BART's reference runs one request at a time (as llmkit's right padding under a
    mask gives in any batch)."""
    max_new = 8
    no_stop = {"until": [], "max_gen_toks": max_new, "do_sample": False}
    probe = ours(models[family], 4).generate_until(_requests("generate_until", [(c, dict(no_stop)) for c in CONTEXTS]))
    text = next(p for p in probe if len(p.strip()) >= 4)
    stop = text.strip()[2:4]  # occurs in at least one output, within max_gen_toks tokens
    gen = {"until": [stop], "max_gen_toks": max_new, "do_sample": False}
    gen2 = {"until": ["\n\n"], "max_gen_toks": 5, "do_sample": False}  # a second kwargs group
    args = [(c, dict(gen)) for c in CONTEXTS] + [(c, dict(gen2)) for c in CONTEXTS[:2]]
    pinned = [(c, dict(kw, max_length=kw["max_gen_toks"] + 1)) for c, kw in args]
    hf = hf_backend(models[family], batch_size=1 if family == "bart" else 3)
    ref = hf.generate_until(_requests("generate_until", pinned))
    for batch_size in (1, 4):
        got = ours(models[family], batch_size).generate_until(_requests("generate_until", args))
        assert got == ref
    assert any(r for r in ref) and any(stop in p and r != p for p, r in zip(probe, ref))  # the stop string cut
    # The hf backend's own budget: where the stop string ends generation within max_gen_toks, its
    # text is the same.
    default = hf.generate_until(_requests("generate_until", args[:len(CONTEXTS)]))
    for p, r, g in zip(probe, default, got):
        if stop in p:
            assert r == g


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_until_long_sources_and_limits(family, models):
    long_ctx = " ".join(CORPUS)
    gen = {"until": ["\n\n"], "max_gen_toks": 6, "do_sample": False}
    args = [(long_ctx, dict(gen)), ("Hi", dict(gen))]
    hf = hf_backend(models[family], batch_size=1)
    ref = hf.generate_until(_requests("generate_until", [(c, dict(kw, max_length=7)) for c, kw in args]))
    assert ours(models[family], 2, truncate=True).generate_until(_requests("generate_until", args)) == ref
    with pytest.raises(LLMKitError, match="a source of .* tokens does not fit"):
        ours(models[family], 2).generate_until(_requests("generate_until", args[:1]))
    block = LLMKitLM(str(models[family]), batch_size=1).model.cfg.block_size
    with pytest.raises(LLMKitError, match="do not fit the decoder's context"):
        ours(models[family], 1).generate_until(_requests("generate_until", [("Hi", dict(gen, max_gen_toks=block))]))


@pytest.mark.parametrize("family", FAMILIES)
def test_multiple_choice_task_end_to_end_matches_hf(family, models, tmp_path):
    tm = TaskManager(include_path=str(write_mc_task(tmp_path)), include_defaults=False)

    def run(lm):
        return lm_eval.simple_evaluate(model=lm, tasks=["tiny_mc"], num_fewshot=1, task_manager=tm,
                                       log_samples=True, bootstrap_iters=0)

    ref = run(hf_backend(models[family], max_length=64))
    got = run(ours(models[family], 3, max_length=64, truncate=True))
    ref_s, got_s = ref["samples"]["tiny_mc"], got["samples"]["tiny_mc"]
    assert [s["arguments"] for s in ref_s] == [s["arguments"] for s in got_s]
    assert_same_loglikelihoods([r[0] for s in ref_s for r in s["resps"]], [r[0] for s in got_s for r in s["resps"]])
    for metric in ("acc,none", "acc_norm,none"):
        assert got["results"]["tiny_mc"][metric] == ref["results"]["tiny_mc"][metric]
