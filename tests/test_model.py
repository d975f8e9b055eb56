"""Model invariants: KV-cache decoding, batched positions, config validation (presets and their
parameter counts: test_presets.py)."""

import pytest
import torch

from llmkit.config import ModelConfig
from llmkit.errors import LLMKitError
from llmkit.model import Transformer

CONFIGS = {
    "llama": ModelConfig.from_name("tiny-llama"),
    "gpt2": ModelConfig.from_name("tiny-gpt2"),
    "gemma2-like": ModelConfig.from_name(
        "tiny-llama", mlp="geglu", norm_unit_offset=True, post_block_norms=True, embed_scale=True,
        attn_softcap=50.0, final_softcap=30.0, sliding_window=6, sliding_window_every=2, qk_norm=True,
    ),
}


def _greedy_uncached(model, prompt, n):
    ids = prompt.clone()
    for _ in range(n):
        nxt = model(ids)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids[:, prompt.shape[1]:]


def _greedy_cached(model, prompt, n):
    cache = model.new_cache(prompt.shape[0], max_len=prompt.shape[1] + n)
    T = prompt.shape[1]
    logits = model(prompt, torch.arange(T), cache, last_only=True)
    out = []
    for i in range(n):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out.append(nxt)
        logits = model(nxt, torch.tensor([T + i]), cache)
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cached_decoding_equals_uncached(name):
    torch.manual_seed(0)
    model = Transformer(CONFIGS[name]).eval()
    prompt = torch.randint(0, 512, (2, 7))
    with torch.no_grad():
        a = _greedy_uncached(model, prompt, 20)
        b = _greedy_cached(model, prompt, 20)
    assert torch.equal(a, b)


def test_rows_at_different_positions_match_single_rows():
    """Right-padded rows decode at their own positions and give their solo logits."""
    torch.manual_seed(0)
    model = Transformer(CONFIGS["gemma2-like"]).eval()
    p1, p2 = torch.randint(0, 512, (1, 9)), torch.randint(0, 512, (1, 4))
    with torch.no_grad():
        solo1 = model(p1)[:, -1]
        solo2 = model(p2)[:, -1]
        cache = model.new_cache(2, 32)
        batch = torch.zeros(2, 9, dtype=torch.long)
        batch[0], batch[1, :4] = p1[0], p2[0]
        logits = model(batch, torch.arange(9).expand(2, 9), cache)
    torch.testing.assert_close(logits[0, 8], solo1[0])
    torch.testing.assert_close(logits[1, 3], solo2[0])
    # Next step: row 0 at position 9, row 1 at position 4 (its padding slots are overwritten).
    nxt = torch.tensor([[5], [7]])
    with torch.no_grad():
        step = model(nxt, torch.tensor([[9], [4]]), cache)[:, -1]
        ref1 = model(torch.cat([p1, nxt[:1]], 1))[:, -1]
        ref2 = model(torch.cat([p2, nxt[1:]], 1))[:, -1]
    torch.testing.assert_close(step[0], ref1[0])
    torch.testing.assert_close(step[1], ref2[0])


def test_config_validation():
    with pytest.raises(LLMKitError, match="multiple of n_kv_heads"):
        ModelConfig.from_name("tiny-llama", n_kv_heads=3)
    with pytest.raises(LLMKitError, match="unknown model preset"):
        ModelConfig.from_name("llama-9")
    with pytest.raises(LLMKitError, match="unknown model config keys: wat"):
        ModelConfig.from_dict({"wat": 1})
    with pytest.raises(LLMKitError, match="mlp must be one of"):
        ModelConfig(mlp="tanh")
    cfg = ModelConfig.from_name("llama-3.2-1b", n_layer=2)
    assert cfg.n_layer == 2 and cfg.rope_scaling.factor == 32.0
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_training_forward_backward_with_window():
    torch.manual_seed(0)
    model = Transformer(CONFIGS["gemma2-like"])
    x = torch.randint(0, 512, (2, 16))
    loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    # Every parameter takes part: a finite, non-zero gradient (a mis-wired norm, window or
    # softcap would leave one at zero or make it NaN).
    for n, p in model.named_parameters():
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n
