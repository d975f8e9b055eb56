"""cross_entropy.py's blockwise output layer + cross-entropy against F.linear + F.cross_entropy:
the loss and every gradient, in float32 (to rounding) and under bf16 autocast (to bf16's), over
several blocks, with ignored rows, frozen weights, no grad; and every family's
forward(labels=) against its own logits' cross-entropy."""

import pytest
import torch
import torch.nn.functional as F

import llmkit.cross_entropy as ce
from llmkit.config import ModelConfig
from llmkit.model import Transformer


def _reference(h, w, b, y):
    return F.cross_entropy(F.linear(h, w, b).float(), y, ignore_index=-100)


def _loss_and_grads(fn, h, w, b, y, autocast=False):
    for t in (h, w, b):
        if t is not None:
            t.grad = None
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        loss = fn(h, w, b, y)
    (3.0 * loss).backward()  # a scale on the way back, as a loss weight or a gradient-accumulation factor gives
    return [loss.detach()] + [t.grad for t in (h, w, b) if t is not None and t.requires_grad]


def _inputs(n=300, d=32, v=1000, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g).requires_grad_()
    w = (torch.randn(v, d, generator=g) * 0.2).requires_grad_()
    b = torch.randn(v, generator=g).requires_grad_() if bias else None
    y = torch.randint(0, v, (n,), generator=g)
    y[::5] = -100
    return h, w, b, y


@pytest.mark.parametrize("bias", [True, False])
def test_float32_matches_f_cross_entropy_over_several_blocks(monkeypatch, bias):
    monkeypatch.setattr(ce, "BLOCK_ELEMENTS", 64 * 1000)  # 64 rows a block: 5 blocks, the last partial
    assert ce.block_rows(1000, 300) == 64
    h, w, b, y = _inputs(bias=bias)
    ref = _loss_and_grads(_reference, h, w, b, y)
    got = _loss_and_grads(ce.linear_cross_entropy, h, w, b, y)
    assert len(got) == len(ref) == (4 if bias else 3)
    for r, g in zip(ref, got):
        assert g.dtype == r.dtype
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_matches_to_bf16_rounding(monkeypatch):
    monkeypatch.setattr(ce, "BLOCK_ELEMENTS", 64 * 1000)
    h, w, b, y = _inputs()
    ref = _loss_and_grads(_reference, h, w, b, y, autocast=True)
    got = _loss_and_grads(ce.linear_cross_entropy, h, w, b, y, autocast=True)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-4, atol=1e-4)  # same bf16 logits, float32 softmax
    for r, g in zip(ref[1:], got[1:]):  # gradients: float32 params, like autocast's
        assert g.dtype == torch.float32
        assert float((g - r).abs().max()) <= 0.01 * float(r.abs().max())


def test_frozen_weight_gets_no_gradient_and_no_grad_only_the_loss():
    h, w, b, y = _inputs(bias=False)
    w.requires_grad_(False)
    ref = _loss_and_grads(_reference, h, w, None, y)
    got = _loss_and_grads(ce.linear_cross_entropy, h, w, None, y)
    assert w.grad is None and len(got) == 2
    torch.testing.assert_close(got[1], ref[1], rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        loss = ce.linear_cross_entropy(h, w, None, y)
    assert not loss.requires_grad and float(loss) == pytest.approx(float(ref[0]), rel=1e-6)


def test_all_rows_ignored_is_nan_as_f_cross_entropy():
    h, w, b, y = _inputs(n=8)
    y[:] = -100
    assert torch.isnan(_reference(h, w, b, y)) and torch.isnan(ce.linear_cross_entropy(h, w, b, y))


def _family_batch(name):
    cfg = ModelConfig.from_name(name)
    torch.manual_seed(0)
    model = Transformer(cfg).train()
    for m in model.modules():  # dropout off: the two forwards must see the same network
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, cfg.vocab_size, (2, 12), generator=g)
    labels = torch.randint(0, cfg.vocab_size, (2, 12), generator=g)
    labels[0, :3] = -100
    return model, idx, labels


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-t5", "tiny-bert", "gemma-2-2b"])
def test_forward_labels_equals_cross_entropy_of_the_logits(name):
    kw = {}
    if name == "gemma-2-2b":  # softcapped logits: forward(labels=) takes the unfused path
        model, idx, labels = None, None, None
        cfg = ModelConfig.from_name(name, n_layer=1, n_embd=64, n_head=2, n_kv_heads=1, head_dim=32,
                                    intermediate_size=128, vocab_size=300)
        assert cfg.final_softcap is not None
        torch.manual_seed(0)
        model = Transformer(cfg).train()
        idx = torch.randint(0, 300, (2, 12))
        labels = torch.randint(0, 300, (2, 12))
    else:
        model, idx, labels = _family_batch(name)
    if name == "tiny-t5":
        kw = dict(src=torch.randint(0, 512, (2, 9)), src_mask=torch.ones(2, 9, dtype=torch.bool))
    grads = []
    for fused in (False, True):
        model.zero_grad()
        if fused:
            loss = model(idx, labels=labels, **kw)
        else:
            logits = model(idx, **kw)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (l0, g0), (l1, g1) = grads
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-6)
    assert len(g0) == len(g1) > 0
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_masked_lm_labels_at_the_predicted_positions():
    model, idx, labels = _family_batch("tiny-bert")
    selected = labels != -100
    model.zero_grad()
    ref = F.cross_entropy(model(idx, predict=selected).float(), labels[selected])
    ref.backward()
    ref_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    got = model(idx, predict=selected, labels=labels)
    got.backward()
    torch.testing.assert_close(got.detach(), ref.detach(), rtol=1e-5, atol=1e-6)
    for a, b in zip(ref_grads, [p.grad for p in model.parameters() if p.grad is not None]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_a_lora_wrapped_head_takes_the_unfused_path_and_still_trains_its_adapter():
    from llmkit.lora import LoRAConfig, apply_lora
    model, idx, labels = _family_batch("tiny-llama")
    apply_lora(model, LoRAConfig(r=4, alpha=8, targets=["lm_head"]))
    loss = model(idx, labels=labels)
    loss.backward()
    head_adapters = [p for n, p in model.named_parameters() if "lm_head" in n and p.requires_grad]
    assert head_adapters and all(p.grad is not None for p in head_adapters)
