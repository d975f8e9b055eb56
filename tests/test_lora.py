"""LoRA and quantized bases: the invariants finetuning relies on. (Adapter checkpoints: saved,
loaded, merged by `llmkit merge-lora`: test_checkpoint.py.)"""

from __future__ import annotations

import pytest
import torch

from llmkit.checkpoint import load_model
from llmkit.errors import LLMKitError
from llmkit.lora import (
    Int8Linear,
    LoRAConfig,
    LoRALinear,
    NF4Linear,
    adapters_disabled,
    apply_lora,
    hold_frozen_bases,
    merge_lora,
    weight_bytes,
)
from llmkit.recipes.tuning import setup_method
from tests.conftest import make_hf_model
from tests.helpers import randomize_adapters


@pytest.fixture
def base(tiny_model_dir):
    return tiny_model_dir()  # the session's tiny llama (make_hf_model("llama") + a tokenizer), read-only


IDS = torch.randint(0, 320, (2, 12), generator=torch.Generator().manual_seed(0))


def test_fresh_adapter_is_the_base_and_merged_equals_unmerged(base):
    model = load_model(base).model
    ref = model(IDS)
    n = apply_lora(model, LoRAConfig(r=4, alpha=8, targets=["all"]))
    assert n == sum(p.numel() for n_, p in model.named_parameters() if "lora_" in n_)
    torch.testing.assert_close(model(IDS), ref, rtol=0, atol=0)  # B = 0: exactly the base
    randomize_adapters(model)
    unmerged = model(IDS)
    assert (unmerged - ref).abs().max() > 1e-3
    with adapters_disabled(model):
        torch.testing.assert_close(model(IDS), ref, rtol=0, atol=0)
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    torch.testing.assert_close(model(IDS), unmerged, rtol=1e-5, atol=1e-5)


def test_only_adapters_get_gradients_and_change(base):
    model = load_model(base).model
    apply_lora(model, LoRAConfig(r=4, targets=["q", "v", "down"]))
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(IDS[:, :-1]).flatten(0, 1), IDS[:, 1:].flatten())
        loss.backward()
        for name, p in model.named_parameters():
            assert (p.grad is not None) == ("lora_" in name), name
        opt.step()
        opt.zero_grad()
    for k, v in model.state_dict().items():
        if "lora_" not in k:
            assert torch.equal(v, frozen[k]), k
    assert all(m.lora_b.abs().sum() > 0 for m in model.modules() if isinstance(m, LoRALinear))


@pytest.mark.parametrize("cls, tol", [(Int8Linear, 0.01), (NF4Linear, 0.12)])
def test_quantized_linear_forward_backward(cls, tol):
    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 64)
    q = cls(lin)
    w = q.dequantize(torch.float32)
    assert (w - lin.weight).norm() / lin.weight.norm() < tol  # close to the original weight
    x = torch.randn(3, 128, requires_grad=True)
    y = q(x)
    torch.testing.assert_close(y, torch.nn.functional.linear(x, w, lin.bias))
    y.square().sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    torch.nn.functional.linear(x2, w, lin.bias).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_qlora_saves_memory_and_merges_to_what_it_trained(base, kind):
    model = load_model(base).model
    full = weight_bytes(model)
    line = setup_method(model, "lora", LoRAConfig(r=4, targets=["all"]), quantize=kind)
    assert kind in line and "MiB" in line
    blocks_q = [m for m in model.blocks.modules() if isinstance(m, (Int8Linear, NF4Linear))]
    assert len(blocks_q) == 7 * len(model.blocks)
    assert weight_bytes(model) < full
    randomize_adapters(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the loop's precision path runs
        model(IDS).float().sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)  # the quantized base is frozen
    for n, p in trainable.items():  # and every adapter learns through it: finite, non-zero gradients
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n
    unmerged = model(IDS).detach()
    merge_lora(model)
    torch.testing.assert_close(model(IDS), unmerged, rtol=1e-5, atol=1e-5)


def test_bad_settings_are_clear_errors(tmp_path):
    model = load_model(_tied(tmp_path)).model
    with pytest.raises(LLMKitError, match="unknown LoRA target"):
        apply_lora(model, LoRAConfig(targets=["qq"]))
    with pytest.raises(LLMKitError, match="ties lm_head"):
        apply_lora(model, LoRAConfig(targets=["lm_head"]))
    with pytest.raises(LLMKitError, match="rank"):
        apply_lora(model, LoRAConfig(r=0))
    with pytest.raises(LLMKitError, match="use it with --method lora"):
        setup_method(model, "full", LoRAConfig(), quantize="int8")
    with pytest.raises(LLMKitError, match="--train-last"):
        setup_method(model, "freeze", LoRAConfig(), train_last=9)


def test_freeze_trains_only_the_last_blocks(base):
    model = load_model(base).model
    setup_method(model, "freeze", LoRAConfig(), train_last=1)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.startswith(("blocks.1.", "norm.", "lm_head.")) for n in names)
    assert not any(n.startswith("blocks.0.") for n in names)


def _tied(tmp_path):
    d = tmp_path / "tied"
    make_hf_model("qwen2").save_pretrained(d)
    return d


@pytest.mark.parametrize("autocast", [False, True])
def test_frozen_base_path_gives_the_same_gradients_as_plain_autograd(base, autocast):
    """LoRALinear runs its frozen base through a memory-saving autograd Function: the input and
    adapter gradients must equal those of the plain nn.Linear computation."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    lin.requires_grad_(False)
    layer = LoRALinear(lin, r=4, alpha=8)
    with torch.no_grad():
        layer.lora_b.normal_()
    x = torch.randn(2, 5, 64, requires_grad=True)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)
    with ctx:
        y = layer(x)
    y.float().square().sum().backward()
    got = (y.detach(), x.grad.clone(), layer.lora_a.grad.clone(), layer.lora_b.grad.clone())
    x.grad = layer.lora_a.grad = layer.lora_b.grad = None
    with ctx:  # the same function written with plain autograd
        ref = lin(x) + torch.nn.functional.linear(torch.nn.functional.linear(x, layer.lora_a), layer.lora_b) * layer.scaling
    ref.float().square().sum().backward()
    for a, b in zip(got, (ref.detach(), x.grad, layer.lora_a.grad, layer.lora_b.grad)):
        if autocast:  # bf16 rounding differs with the order of operations: compare as a whole
            assert (a.float() - b.float()).norm() / b.float().norm() < 1e-2
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_frozen_base_held_in_bf16_trains_bit_for_bit_as_the_float32_base(base):
    """The Trainer stores a LoRA model's frozen base in its autocast dtype once
    (hold_frozen_bases) rather than letting autocast cast it in every forward and backward:
    the same rounding, so losses and adapters must stay exactly equal over several steps; the
    held weights take half the memory; float32 (no autocast) forward still runs."""
    runs = []
    for hold in (False, True):
        model = load_model(base).model
        torch.manual_seed(0)  # A's initialisation
        apply_lora(model, LoRAConfig(r=4, alpha=8, targets=["all"]))
        randomize_adapters(model)
        before = weight_bytes(model)
        if hold:
            saved = hold_frozen_bases(model, torch.bfloat16)
            assert saved > 0 and weight_bytes(model) == before - saved
            assert all(m.base.weight.dtype == torch.bfloat16 for m in model.modules() if isinstance(m, LoRALinear))
            assert model.embed.weight.dtype == torch.float32  # only the adapted layers' bases
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        losses = []
        for _ in range(3):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(IDS[:, :-1]).flatten(0, 1).float(), IDS[:, 1:].flatten())
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        with torch.no_grad():
            plain = model(IDS)  # no autocast: the held weights are cast up on use
        assert plain.dtype == torch.float32 and torch.isfinite(plain).all()
        runs.append((losses, {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}))
    assert runs[0][0] == runs[1][0]
    for k, v in runs[0][1].items():
        torch.testing.assert_close(runs[1][1][k], v, rtol=0, atol=0)


@pytest.mark.parametrize("method,quantize", [("lora", None), ("lora", "int8"), ("lora", "nf4"), ("full", None),
                                             ("freeze", None)])
def test_setup_method_counts_against_the_base_models_parameters(base, method, quantize):
    """The percentage's denominator is the base model as loaded, whatever the method does to
    it: a quantized base's frozen weights become buffers and LoRA adds adapters, so a count
    afterwards said 15% for the 7% that finetune's summary.json reports (QLoRA nf4)."""
    import re

    model = load_model(base).model
    n_base = sum(p.numel() for p in model.parameters())
    line = setup_method(model, method, LoRAConfig(), train_last=1, quantize=quantize)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    m = re.search(r"([\d,]+) trainable of ([\d,]+) parameters \((\d+\.\d\d)%\)", line)
    assert m, line
    assert int(m.group(1).replace(",", "")) == n_trainable
    assert int(m.group(2).replace(",", "")) == n_base
    assert m.group(3) == f"{100 * n_trainable / n_base:.2f}"
