"""Hugging Face <-> llmkit conversion (src/llmkit/convert): logit parity with transformers for
every supported family in both directions, and the `llmkit convert` round trip."""

import json

import pytest
import torch

from llmkit.checkpoint import load_model
from llmkit.checkpoint import from_hf, to_hf
from llmkit.convert.hf import ARCHITECTURES
from tests.conftest import TINY_HF
from tests.helpers import cli_error, cli_run

FAMILIES = sorted(TINY_HF)


def _ids(vocab=320, B=2, T=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B, T), generator=g)


# --- parity with transformers -----------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_from_hf_logits_match(family, hf_dir, tmp_path):
    src, hf_model = hf_dir(family)
    ids = _ids()
    with torch.no_grad():
        expected = hf_model(ids).logits
    # Transparent loading of the HF directory ...
    ours = load_model(src).model
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), expected)
    # ... and an explicit conversion to an llmkit checkpoint give the same logits.
    out = tmp_path / "native"
    from_hf(str(src), str(out))
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
    loaded = load_model(out)
    assert loaded.kind == "llmkit"
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids), expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_to_hf_loads_in_transformers(family, hf_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    src, _ = hf_dir(family)
    native = tmp_path / "native"
    from_hf(str(src), str(native))
    out = tmp_path / "exported"
    to_hf(str(native), str(out))
    ours = load_model(native).model
    theirs = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    assert type(theirs).__name__ == ARCHITECTURES[family]
    ids = _ids(seed=2)
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours(ids))


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_long_sequence_past_window(family, hf_dir):
    """Sequences longer than the sliding window and than RoPE's original length still match."""
    src, hf_model = hf_dir(family)
    ids = _ids(T=100, B=1, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(load_model(src).model(ids), hf_model(ids).logits)


# --- the command line ---------------------------------------------------------------------------------
def test_convert_round_trip_cli(hf_dir, tmp_path, capsys):
    src, hf_model = hf_dir("qwen2")
    native, back = tmp_path / "native", tmp_path / "back"
    code, out, err = cli_run(capsys, ["convert", "from-hf", str(src), str(native)])
    assert code == 0, err
    assert json.loads((native / "config.json").read_text())["format"] == "llmkit"
    code, out, err = cli_run(capsys, ["convert", "to-hf", str(native), str(back), "--dtype", "bfloat16"])
    assert code == 0, err
    from transformers import AutoModelForCausalLM

    theirs = AutoModelForCausalLM.from_pretrained(back)
    assert next(theirs.parameters()).dtype == torch.bfloat16
    # HF -> llmkit -> HF gives back every tensor of the original, rounded to bfloat16.
    ref, got = hf_model.state_dict(), theirs.state_dict()
    assert got.keys() == ref.keys()
    for k in ref:
        assert got[k].dtype == torch.bfloat16 and torch.equal(got[k], ref[k].to(torch.bfloat16)), k


def test_error_unsupported_architecture(capsys, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 10}))
    cli_error(capsys, ["convert", "from-hf", str(tmp_path / "m"), str(tmp_path / "o")], "config.json", "bert")
