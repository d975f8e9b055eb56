"""The recipe scaffold (src/llmkit/recipes/scaffold.py): what every training recipe starts from
(the MODEL argument, its tokenizer, pad id, vocabulary checks) and how it ends (OUT/final,
summary.json, the next commands)."""

import json

import pytest
import torch

from llmkit.errors import LLMKitError
from llmkit.recipes.scaffold import Run, base_reference, is_new_model, model_config
from llmkit.training.loop import TrainConfig
from tests.helpers import build_model_dir, build_tokenizer

TRAIN = TrainConfig(max_steps=2, micro_batch_size=2, eval_every=0, save_every=0, log_every=1, precision="fp32",
                    tensorboard=False, warmup_steps=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_model_dir(tmp_path_factory.mktemp("scaffold") / "m", chat_template=None)


def test_model_argument_kinds(model_dir, tmp_path):
    assert is_new_model("micro-llama") and is_new_model("MICRO-LLAMA") and is_new_model("cfg.json")
    assert not is_new_model(str(model_dir)) and not is_new_model("HuggingFaceTB/SmolLM2-135M")
    cfg = model_config("micro-llama", {"n_layer": 2}, vocab_size=300)
    assert (cfg.n_layer, cfg.vocab_size, cfg.n_embd) == (2, 300, 256)
    assert model_config("micro-llama", {"vocab_size": 64}, vocab_size=300).vocab_size == 64  # an override wins
    with pytest.raises(LLMKitError, match="unknown model config keys: n_layers"):
        model_config("micro-llama", {"n_layers": 2})
    assert base_reference(str(model_dir)) == str(model_dir.resolve())
    assert base_reference("org/name") == "org/name"  # a hub id stays as given


def test_an_existing_model_loads_in_float32_with_its_tokenizer(model_dir, tmp_path):
    run = Run(str(model_dir), tmp_path / "out", TRAIN)
    assert run.tokenizer_dir == model_dir and run.model is None  # nothing big loaded yet
    net = run.load()
    assert net.training and all(p.dtype == torch.float32 for p in net.parameters())
    assert run.rt.world == 1 and run.pad_id == run.tokenizer.pad_id == 0
    with pytest.raises(LLMKitError, match="overrides apply to presets"):
        Run(str(model_dir), tmp_path / "o2", TRAIN).load(overrides={"n_layer": 1})


def test_start_errors(model_dir, tmp_path):
    # A LoRA adapter is refused before anything loads.
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"format": "llmkit-lora", "base_model": str(model_dir), "lora": {"r": 2}}))
    with pytest.raises(LLMKitError, match="a LoRA adapter; merge it first"):
        Run(str(adapter), tmp_path / "o", TRAIN)
    # Data whose token ids exceed the model's embeddings.
    with pytest.raises(LLMKitError, match="go up to vocab size 5000 but the model has 320"):
        Run(str(model_dir), tmp_path / "o", TRAIN).load(vocab_size=5000)
    # A tokenizer larger than the model's vocabulary.
    big = tmp_path / "big"
    build_model_dir(big, chat_template=None)
    build_tokenizer(big, vocab_size=400)  # (the tiny corpus gives BPE a little fewer than asked)
    with pytest.raises(LLMKitError, match=r"the tokenizer has 3\d\d tokens but the model only 320 embeddings"):
        Run(str(big), tmp_path / "o", TRAIN).load()
    with pytest.raises(LLMKitError, match="no such model directory"):
        Run(str(tmp_path / "missing"), tmp_path / "o", TRAIN)


def test_fit_and_finish_publish_final_summary_and_next_steps(model_dir, tmp_path, capsys):
    from llmkit.checkpoint import load_model
    from llmkit.training.losses import causal_lm_loss

    out = tmp_path / "run"
    run = Run(str(model_dir), out, TRAIN)
    net = run.load()
    g = torch.Generator().manual_seed(0)

    def batches():
        while True:
            x = torch.randint(0, 320, (2, 9), generator=g)
            yield x[:, :-1], x[:, 1:]

    result = run.fit(TRAIN, batches(), causal_lm_loss, extra_files={"note.json": {"a": 1}, "t.jinja": "{{ x }}"})
    done = run.finish(result, {"steps": result["step"]}, done="2 steps", next_steps=["llmkit chat {final}"])
    final = out / "final"
    assert done["final"] == str(final) and done["summary"] == {"final": str(final), "steps": 2}
    assert json.loads((out / "summary.json").read_text()) == {"final": str(final), "steps": 2}
    names = {p.name for p in final.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "note.json", "t.jinja"} <= names
    assert not names & {"optimizer.pt", "trainer_state.json"}
    printed = capsys.readouterr().out
    assert f"done: 2 steps; model in {final}" in printed and f"next steps:\n  llmkit chat {final}" in printed
    reloaded = load_model(final, dtype=torch.float32).model
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), net.state_dict().values()))
