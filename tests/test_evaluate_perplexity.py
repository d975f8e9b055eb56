"""Sliding-window perplexity against an independent computation with `transformers`."""

from __future__ import annotations

import json
import math

import pytest
import torch

from llmkit.errors import LLMKitError
from llmkit.checkpoint import load_model
from llmkit.evaluate.perplexity import perplexity, sliding_windows
from test_evaluate_helpers import CORPUS, make_model_dir


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppl-models")
    return {"llama": make_model_dir(root, "llama", bos=True), "gpt2": make_model_dir(root, "gpt2", bos=False)}


def hf_guide_nll(hf_model, ids: list[int], max_length: int, stride: int) -> tuple[float, int]:
    """The loop of the Hugging Face guide "Perplexity of fixed-length models", verbatim in
    spirit: windows start every `stride` tokens, labels before the new tokens are -100."""
    ids_t = torch.tensor([ids])
    n, prev_end, nll, count = len(ids), 0, 0.0, 0
    for begin in range(0, n, stride):
        end = min(begin + max_length, n)
        trg_len = end - prev_end
        input_ids = ids_t[:, begin:end]
        labels = input_ids.clone()
        labels[:, :-trg_len] = -100
        with torch.no_grad():
            logits = hf_model(input_ids).logits[0, :-1].float()
        targets = labels[0, 1:]
        keep = targets != -100
        nll -= float(torch.log_softmax(logits[keep], -1).gather(-1, targets[keep][:, None]).sum())
        count += int(keep.sum())
        prev_end = end
        if end == n:
            break
    return nll, count


def test_windows_score_every_token_once():
    for n, L, s in [(10, 4, 2), (10, 4, 4), (100, 16, 5), (3, 4, 2), (17, 17, 17)]:
        scored = [t for b, e, k in sliding_windows(n, L, s) for t in range(e - k, e)]
        assert scored == list(range(1, n))
        assert all(e - b <= L and b < e - k for b, e, k in sliding_windows(n, L, s))
    assert sliding_windows(10, 4, 2) == [(0, 4, 3), (2, 6, 2), (4, 8, 2), (6, 10, 2)]
    assert sliding_windows(1, 4, 2) == []


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_perplexity_equals_transformers(family, model_dirs, tmp_path):
    from transformers import AutoModelForCausalLM

    d = model_dirs[family]
    long_doc = " ".join(CORPUS[:6])  # well over the 32-token window
    short_doc = "A cat sat on the mat."  # shorter than the window
    (tmp_path / "long.txt").write_text(long_doc)
    (tmp_path / "short.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in (short_doc, CORPUS[3])))
    loaded = load_model(d, dtype="float32")
    model, tok = loaded.model, loaded.tokenizer
    res = perplexity(model, tok, [str(tmp_path / "long.txt"), str(tmp_path / "short.jsonl")], max_length=32,
                     stride=12, batch_size=3, progress=False)

    hf = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    prefix = tok.bos_id
    totals = {}
    for name, texts in (("long.txt", [long_doc]), ("short.jsonl", [short_doc, CORPUS[3]])):
        parts = [hf_guide_nll(hf, [prefix] + tok.encode(t, bos=False), 32, 12) for t in texts]
        nll, count = sum(p[0] for p in parts), sum(p[1] for p in parts)
        got = res["files"][str(tmp_path / name)]
        assert got["tokens"] == count
        assert got["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-4)
        assert got["bits_per_byte"] == pytest.approx(nll / math.log(2) / sum(len(t.encode()) for t in texts), rel=1e-4)
        totals[name] = (nll, count)
    nll = sum(v[0] for v in totals.values())
    count = sum(v[1] for v in totals.values())
    assert res["overall"]["tokens"] == count and res["overall"]["documents"] == 3
    assert res["overall"]["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-4)  # token-weighted


def test_disjoint_windows_equal_the_harness_rolling_loglikelihood(model_dirs, tmp_path):
    """Windows of L + 1 tokens (the model reads L of them: the last token is only a target)
    advancing by L are the harness's loglikelihood_rolling windows of length L. GPT-2 style
    tokenizer: no BOS of its own, so both put the same prefix token first."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from llmkit.evaluate.harness import LLMKitLM

    loaded = load_model(model_dirs["gpt2"], dtype="float32")
    model, tok = loaded.model, loaded.tokenizer
    # 120 text tokens: the harness gives its last window a full context, the guide's loop gives
    # it what the stride leaves; with a whole number of windows the two coincide.
    ids = tok.encode(" ".join(CORPUS[:5]), bos=False)[:120]
    text = tok.decode(ids)
    assert tok.encode(text, bos=False) == ids
    (tmp_path / "doc.txt").write_text(text)
    res = perplexity(model, tok, [str(tmp_path / "doc.txt")], max_length=41, stride=40, progress=False)
    lm = LLMKitLM(model, tok, max_length=40)
    (ll,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)
    assert res["overall"]["nll"] == pytest.approx(-ll, rel=1e-5)


def test_perplexity_errors(model_dirs, tmp_path):
    loaded = load_model(model_dirs["llama"], dtype="float32")
    model, tok = loaded.model, loaded.tokenizer
    (tmp_path / "a.txt").write_text("some text here")
    with pytest.raises(LLMKitError, match="missing.txt"):
        perplexity(model, tok, [str(tmp_path / "missing.txt")])
    with pytest.raises(LLMKitError, match="stride"):
        perplexity(model, tok, [str(tmp_path / "a.txt")], max_length=16, stride=32)
    with pytest.raises(LLMKitError, match="max_length"):
        perplexity(model, tok, [str(tmp_path / "a.txt")], max_length=4096)
