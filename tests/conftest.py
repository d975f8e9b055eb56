"""Shared fixtures: tiny random Hugging Face models built locally (no network)."""

from __future__ import annotations

import os
from pathlib import Path

# No test reaches the Hugging Face hub: set before huggingface_hub / datasets are imported (they
# read it once), and what `llmkit.hub.reachable` answers at once without a connection attempt.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The suite runs on pytest-xdist workers, one per core (pyproject addopts): each worker's torch,
# and the CLI subprocesses it starts, get one thread, so two workers do not fight over two cores
# (oversubscribed OpenMP threads spin; a 2-thread test beside another ran several times slower).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# One tiny config per supported family: 2 layers, width 64, vocab 320, GQA where the family has
# it, every family-specific switch turned on (biases, QK-norm, softcaps, windows, RoPE scaling).
TINY_HF = {
    "llama": dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  rope_theta=500000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    "mistral": dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=128,
                    sliding_window=8, bos_token_id=1, eos_token_id=2),
    "qwen2": dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  tie_word_embeddings=True, bos_token_id=1, eos_token_id=2),
    "qwen3": dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=128,
                  tie_word_embeddings=True, bos_token_id=1, eos_token_id=2),
    "phi3": dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                 original_max_position_embeddings=128, sliding_window=16, pad_token_id=0,
                 bos_token_id=1, eos_token_id=2),
    "gemma": dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=1, head_dim=24, max_position_embeddings=128,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0),
    "gemma2": dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
                   query_pre_attn_scalar=24, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                   sliding_window=8, bos_token_id=1, eos_token_id=2, pad_token_id=0),
    "gpt2": dict(vocab_size=320, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                 bos_token_id=1, eos_token_id=2),
}


def make_hf_model(model_type: str, seed: int = 0):
    """A tiny random transformers model of `model_type` (eager attention, fp32, eval mode)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(model_type, **TINY_HF[model_type])
    cfg._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    # Random init leaves norms at 1 (or 0 for Gemma): perturb every parameter so that a
    # mis-mapped norm or bias cannot hide behind its initial value.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _snapshot(d: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Factory: `tiny_model_dir(family="llama", chat_template=CHATML_TEMPLATE, seed=0, context=None)`
    is a directory made by tests.helpers.build_model_dir (tiny random HF model + tokenizer), built
    once per session for each set of arguments and shared by every test that asks for it.
    Shared means read-only: a test that changes a model copies it first (checked at the end)."""
    from tests.helpers import CHATML_TEMPLATE, build_model_dir

    built: dict[tuple, tuple[Path, dict]] = {}

    def _get(family: str = "llama", chat_template: str | None = CHATML_TEMPLATE, seed: int = 0,
             context: int | None = None) -> Path:
        key = (family, chat_template, seed, context)
        if key not in built:
            d = build_model_dir(tmp_path_factory.mktemp(f"tiny-{family}") / family, family, chat_template, seed, context)
            built[key] = (d, _snapshot(d))
        return built[key][0]

    yield _get
    for d, snap in built.values():
        assert _snapshot(d) == snap, f"a test wrote into the shared tiny model {d}: copy it first"


@pytest.fixture
def hf_dir(tmp_path):
    """Factory: save a tiny HF model of a family to a directory, return (dir, model)."""

    def _make(model_type: str, seed: int = 0) -> tuple[Path, object]:
        model = make_hf_model(model_type, seed)
        d = tmp_path / f"hf-{model_type}"
        model.save_pretrained(d)
        return d, model

    return _make


def sigterm_at_call(monkeypatch, module, name: str, at: int) -> None:
    """Replace `module.name` by a wrapper that sends this process a real SIGTERM during its
    `at`-th call with gradients enabled (a training step, not an evaluation), so a recipe's
    signal handling (checkpoint after this step, exit 143) runs exactly as under `kill`."""
    import os
    import signal

    real, calls = getattr(module, name), [0]

    def wrapper(*args, **kwargs):
        if torch.is_grad_enabled():
            calls[0] += 1
            if calls[0] == at:
                os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


def run_two_ways(argv: list[str], out_single, out_ddp, micro_batch: int = 4, mode: str = "ddp") -> None:
    """Run `llmkit ARGV` once in one process with micro-batch `micro_batch`, and once under
    `torchrun` as 2 gloo DDP processes with half that micro-batch each (the same global batch),
    in float32, one thread each; both must succeed."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    common = [*map(str, argv), "--train.precision", "fp32", "--train.tensorboard", "false"]
    runs = (([sys.executable, "-m", "llmkit"], out_single, micro_batch, []),
            ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "llmkit"],
             out_ddp, micro_batch // 2, ["--train.distributed", mode]))
    for prefix, out, mb, extra in runs:
        r = subprocess.run([*prefix, *common, "--out", str(out), "--train.micro_batch_size", str(mb), *extra],
                           capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
