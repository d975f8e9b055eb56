"""The llmkit lm-evaluation-harness backend against the harness's own `hf` backend.

Same tiny random weights and tokenizer on both sides; per-request log-likelihoods must agree to
1e-4 and greedy flags exactly, and so must the task metrics computed from them.
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
from test_evaluate_helpers import CORPUS, make_model_dir, write_mc_task  # noqa: E402

FAMILIES = {"llama": True, "gpt2": False}  # family -> tokenizer prepends BOS


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-models")
    return {family: make_model_dir(root, family, bos=bos) for family, bos in FAMILIES.items()}


def hf_backend(path, batch_size=4):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(path), device="cpu", dtype="float32", batch_size=batch_size)


def _requests(kind, args):
    return [Instance(request_type=kind, doc={}, arguments=a, idx=0, metadata=("t", i, 1)) for i, a in enumerate(args)]


def assert_same_loglikelihoods(ref, ours):
    assert len(ref) == len(ours)
    for (lp_ref, greedy_ref), (lp, greedy) in zip(ref, ours):
        assert lp == pytest.approx(lp_ref, abs=1e-4)
        assert greedy == greedy_ref


@pytest.mark.parametrize("family", list(FAMILIES))
def test_multiple_choice_task_matches_hf_backend(family, models, tmp_path):
    tasks = write_mc_task(tmp_path)
    tm = TaskManager(include_path=str(tasks), include_defaults=False)

    def run(lm):
        return lm_eval.simple_evaluate(model=lm, tasks=["tiny_mc"], num_fewshot=2, task_manager=tm,
                                       log_samples=True, bootstrap_iters=0)

    ref = run(hf_backend(models[family]))
    # batch_size 3 splits the 4 choices of a question across batches: the shared-prefix path
    # must give the same numbers whether a group is whole or split.
    ours = run(LLMKitLM(str(models[family]), batch_size=3))
    ref_s, our_s = ref["samples"]["tiny_mc"], ours["samples"]["tiny_mc"]
    assert [s["arguments"] for s in ref_s] == [s["arguments"] for s in our_s]
    assert_same_loglikelihoods([r[0] for s in ref_s for r in s["resps"]], [r[0] for s in our_s for r in s["resps"]])
    for metric in ("acc,none", "acc_norm,none"):
        assert ours["results"]["tiny_mc"][metric] == ref["results"]["tiny_mc"][metric]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_truncation_and_batching_match_hf_backend(family, models):
    """Contexts longer than the model (128 tokens) are cut from the left exactly as the hf
    backend cuts them; an empty context becomes the prefix token; batch size changes nothing."""
    long_ctx = " ".join(CORPUS)  # several hundred tokens
    args = [(long_ctx, " the lazy dog"), (long_ctx, " Paris."), (long_ctx[:300], " a cat sat on the mat and looked"),
            ("Question: what is the capital of France? Answer:", " Paris"),
            ("Question: what is the capital of France? Answer: ", "Paris"),  # trailing space moves over
            ("", "The quick brown fox"), (long_ctx[:40], " jumps" * 60)]
    ref = hf_backend(models[family], batch_size=3).loglikelihood(_requests("loglikelihood", args))
    for batch_size in (1, 5):
        ours = LLMKitLM(str(models[family]), batch_size=batch_size, truncate=True)
        assert_same_loglikelihoods(ref, ours.loglikelihood(_requests("loglikelihood", args)))
    with pytest.raises(LLMKitError, match="does not fit the model's context of 128 tokens"):
        LLMKitLM(str(models[family])).loglikelihood(_requests("loglikelihood", args[:1]))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_loglikelihood_rolling_matches_hf_backend(family, models):
    texts = [" ".join(CORPUS), CORPUS[1], "Hello there, fox."]  # several 128-token windows, and one
    ref = hf_backend(models[family]).loglikelihood_rolling(_requests("loglikelihood_rolling", [(t,) for t in texts]))
    ours = LLMKitLM(str(models[family]), batch_size=2).loglikelihood_rolling(
        _requests("loglikelihood_rolling", [(t,) for t in texts]))
    assert ours == pytest.approx(ref, abs=1e-3)  # sums over hundreds of tokens


def test_greedy_flag_is_true_when_the_continuation_is_the_argmax(models):
    lm = LLMKitLM(str(models["llama"]))
    ctx = lm.tok_encode("The quick brown fox")
    with torch.no_grad():
        logits = lm.model(torch.tensor([ctx]))
    best = int(logits[0, -1].argmax())
    (lp, greedy), = lm._loglikelihood_tokens([(None, ctx, [best])], disable_tqdm=True)
    assert greedy and lp == pytest.approx(float(torch.log_softmax(logits[0, -1], -1)[best]), abs=1e-5)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_generate_until_matches_hf_backend_greedy(family, models):
    """Same greedy text as transformers' generate through the hf backend: left-truncated
    prompts, `until` strings cut, EOS respected, batches of mixed prompt lengths."""
    gen = {"until": ["\n\n", " fox"], "max_gen_toks": 24, "do_sample": False}
    contexts = ["The quick brown", "Question: what is the capital of France? Answer:", "A cat sat on the",
                " ".join(CORPUS)[:600], "Numbers: 1 2 3"]
    args = [(c, dict(gen)) for c in contexts] + [("Colours: red, green,", {"until": ["."], "max_gen_toks": 8})]
    ref = hf_backend(models[family], batch_size=3).generate_until(_requests("generate_until", args))
    ours = LLMKitLM(str(models[family]), batch_size=2, truncate=True).generate_until(_requests("generate_until", args))
    assert ours == ref
    assert any(r for r in ref)  # the comparison is not between empty strings only
    with pytest.raises(LLMKitError, match="does not fit"):
        LLMKitLM(str(models[family])).generate_until(_requests("generate_until", args[3:4]))


def test_chat_template_prompts_match_hf_backend(models, tmp_path):
    """--apply-chat-template: the harness's multi-turn few-shot chat, a system instruction, a
    template that writes BOS itself (so none is added twice)."""
    import json
    import shutil

    chat = tmp_path / "chat-model"
    shutil.copytree(models["llama"], chat)
    cfg = json.loads((chat / "tokenizer_config.json").read_text())
    cfg["chat_template"] = ("{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>\n"
                            "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    (chat / "tokenizer_config.json").write_text(json.dumps(cfg))
    tm = TaskManager(include_path=str(write_mc_task(tmp_path)), include_defaults=False)

    def run(lm):
        return lm_eval.simple_evaluate(model=lm, tasks=["tiny_mc"], num_fewshot=1, task_manager=tm, log_samples=True,
                                       bootstrap_iters=0, apply_chat_template=True, fewshot_as_multiturn=True,
                                       system_instruction="Be brief.")["samples"]["tiny_mc"]

    ref, ours = run(hf_backend(chat)), run(LLMKitLM(str(chat), batch_size=4, truncate=True))
    assert ref[0]["arguments"][0][0].startswith("<s><system>Be brief.</s>\n<user>Question:")
    assert [s["arguments"] for s in ours] == [s["arguments"] for s in ref]
    assert_same_loglikelihoods([r[0] for s in ref for r in s["resps"]], [r[0] for s in ours for r in s["resps"]])
