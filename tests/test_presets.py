"""Named architecture presets (src/llmkit/presets): the parameter counts the model cards
publish, every preset builds, and `llmkit models` lists them with their exact sizes."""

import pytest
import torch

from llmkit.config import ModelConfig
from llmkit.model import Transformer, count_params
from tests.helpers import cli_run


@pytest.mark.parametrize("name,expected", [
    ("gpt2", 124_439_808), ("llama-3.2-1b", 1_235_814_400), ("qwen2.5-0.5b", 494_032_768),
    ("smollm2-135m", 134_515_008), ("llama-3.1-8b", 8_030_261_248), ("mistral-7b-v0.3", 7_248_023_552),
    ("qwen3-0.6b", 596_049_920), ("gemma-2-2b", 2_614_341_888), ("phi-3-mini-4k", 3_821_079_552),
])
def test_preset_parameter_counts(name, expected):
    cfg = ModelConfig.from_name(name)
    assert count_params(cfg) == expected
    assert cfg.n_params_estimate() + _norm_and_bias_params(cfg) == expected


@pytest.mark.parametrize("name", ["bert-base-uncased", "bert-large-uncased", "distilbert-base-uncased", "roberta-base",
                                  "roberta-large", "modernbert-base", "modernbert-large", "micro-bert"])
def test_encoder_presets_count_what_transformers_counts(name):
    """The same config exported to transformers builds a ...ForMaskedLM of exactly our size
    (bert-base-uncased 109,514,298; ModernBERT-base 149,655,232, its card's "149M")."""
    import transformers

    from llmkit.convert.hf import config_to_hf

    cfg = ModelConfig.from_name(name)
    hf = transformers.AutoConfig.for_model(**config_to_hf(cfg))
    with torch.device("meta"):
        theirs = transformers.AutoModelForMaskedLM.from_config(hf)
    assert type(theirs).__name__ == {"bert": "BertForMaskedLM", "roberta": "RobertaForMaskedLM",
                                     "distilbert": "DistilBertForMaskedLM",
                                     "modernbert": "ModernBertForMaskedLM"}[cfg.hf_model_type]
    assert count_params(cfg) == theirs.num_parameters()
    assert {"bert-base-uncased": 109_514_298, "modernbert-base": 149_655_232}.get(name, count_params(cfg)) \
        == count_params(cfg)


@pytest.mark.parametrize("name,expected", [
    ("t5-small", 60_506_624), ("t5-base", 222_903_552), ("flan-t5-small", 76_961_152),
    ("flan-t5-base", 247_577_856), ("flan-t5-large", 783_150_080), ("bart-base", 139_420_416),
    ("bart-large", 406_291_456), ("micro-t5", None),
])
def test_seq2seq_presets_count_what_transformers_counts(name, expected):
    """Exported to transformers, each preset builds a ...ForConditionalGeneration of exactly our
    size, which is the count the model cards publish (t5-small's "60M": 60,506,624)."""
    import transformers

    from llmkit.convert.hf import config_to_hf

    cfg = ModelConfig.from_name(name)
    hf = transformers.AutoConfig.for_model(**config_to_hf(cfg))
    with torch.device("meta"):
        theirs = transformers.AutoModelForSeq2SeqLM.from_config(hf)
    if not cfg.tie_embeddings:  # transformers 5 ties T5's head in a fresh model; v1.1's is its own matrix
        assert theirs.lm_head.weight is theirs.shared.weight
        extra = cfg.vocab_size * cfg.n_embd
    else:
        extra = 0
    assert count_params(cfg) == theirs.num_parameters() + extra == (expected or count_params(cfg))


def _norm_and_bias_params(cfg):
    with torch.device("meta"):
        m = Transformer(cfg)
    pos = [s.pos_embed for s in (m, m.encoder) if s is not None and s.pos_embed is not None]
    return sum(p.numel() for n, p in m.named_parameters() if p.dim() == 1) + sum(
        e.weight.numel() for e in pos)  # learned positions: not matrices


def test_every_preset_builds_on_meta():
    from llmkit.presets import PRESETS

    for name in PRESETS:
        cfg = ModelConfig.from_name(name)
        assert count_params(cfg) > 0
        # The count is the built model's, and the config's own estimate (matrices) plus the
        # vectors (norms, biases) and learned positions accounts for every parameter.
        with torch.device("meta"):
            built = sum(p.numel() for p in Transformer(cfg).parameters())
        assert count_params(cfg) == built == cfg.n_params_estimate() + _norm_and_bias_params(cfg), name


def test_models_lists_presets_with_counts(capsys):
    from llmkit.presets import PRESETS

    code, out, err = cli_run(capsys, ["models"])
    assert code == 0, err
    assert "124,439,808" in out and "1,235,814,400" in out and "494,032,768" in out and "134,515,008" in out
    # One row per preset, each with its exact count.
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert list(rows) == list(PRESETS)
    for name, line in rows.items():
        assert f" {count_params(ModelConfig.from_name(name)):,} " in line, line
    assert rows["t5-small"].split()[2:4] == ["encoder-decoder", "6+6"]
    assert rows["bert-base-uncased"].split()[2] == "encoder" and rows["gpt2"].split()[2] == "decoder"
    code, out, err = cli_run(capsys, ["models", "--family", "qwen"])
    assert code == 0 and "qwen3-0.6b" in out and "gpt2" not in out
    assert [line.split()[0] for line in out.splitlines()[1:]] == [n for n in PRESETS if "qwen" in n]
