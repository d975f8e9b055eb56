"""Encoders (BERT, RoBERTa, DistilBERT, ModernBERT) in the one model: logits parity with
transformers in both directions for the bare backbone and every head (masked LM, sequence and
token classification, question answering), with padded batches, on tiny random configs."""

import pytest
import torch

from llmkit.checkpoint import from_hf, load_model, save_hf, to_hf
from llmkit.heads import attach_head, head_spec

V = 120


def tiny_hf_config(family: str, **kw):
    import transformers as T

    common = dict(vocab_size=V, pad_token_id=0)
    if family == "bert":
        c = T.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                         max_position_embeddings=64, type_vocab_size=2, **common)
    elif family == "roberta":
        c = T.RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                            max_position_embeddings=66, type_vocab_size=1, **{**common, "pad_token_id": 1})
    elif family == "distilbert":
        c = T.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=48, max_position_embeddings=64, **common)
    elif family == "modernbert":
        c = T.ModernBertConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=48,
                               max_position_embeddings=64, local_attention=8, global_attn_every_n_layers=3,
                               bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3,
                               reference_compile=False, **common)
    else:
        raise KeyError(family)
    for k, v in kw.items():
        setattr(c, k, v)
    return c


CLASSES = {"base": "AutoModel", "lm": "AutoModelForMaskedLM", "sequence": "AutoModelForSequenceClassification",
           "token": "AutoModelForTokenClassification", "span": "AutoModelForQuestionAnswering"}
FAMILIES = ["bert", "roberta", "distilbert", "modernbert"]


def make_hf(family: str, task: str, seed: int = 0, **kw):
    import transformers as T

    torch.manual_seed(seed)
    cfg = tiny_hf_config(family, num_labels=2 if task == "span" else 3, **kw)
    model = getattr(T, CLASSES[task]).from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():  # every tensor random, norms and biases included: a swapped name shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


def batch(seed: int = 1, B: int = 3, T: int = 20):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 13:] = 0  # right padding on two rows
    mask[2, 6:] = 0
    ids[mask == 0] = 0
    types = torch.zeros(B, T, dtype=torch.long)
    types[:, 8:] = 1
    return ids, mask * 1, types * mask


def hf_out(model, task, ids, mask, types):
    kw = {"token_type_ids": types} if model.config.model_type == "bert" else {}
    out = model(input_ids=ids, attention_mask=mask, **kw)
    if task == "base":
        return out.last_hidden_state
    if task == "span":
        return torch.stack([out.start_logits, out.end_logits], -1)
    return out.logits


def ours_out(model, task, ids, mask, types):
    kw = {"token_type_ids": types} if model.cfg.type_vocab_size > 1 else {}
    if task == "base":
        return model.hidden_states(ids, attention_mask=mask, **kw)
    return model(ids, attention_mask=mask, **kw)


def assert_real_close(a, b, mask, task):
    """Equal at real tokens (padding's own states are not defined the same way)."""
    if task in ("sequence",):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    else:
        m = mask.bool()
        torch.testing.assert_close(a[m], b[m], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("task", list(CLASSES))
def test_from_hf_parity(family, task, tmp_path):
    theirs = make_hf(family, task)
    theirs.save_pretrained(tmp_path / "hf")
    loaded = load_model(tmp_path / "hf")
    ours = loaded.model
    assert ours.cfg.causal is False
    if task in ("sequence", "token", "span"):
        assert loaded.classifier["head"]["task"] == task
    ids, mask, types = batch()
    with torch.no_grad():
        assert_real_close(ours_out(ours, task, ids, mask, types), hf_out(theirs, task, ids, mask, types), mask, task)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("task", ["base", "lm", "sequence", "token", "span"])
def test_to_hf_parity_through_an_llmkit_checkpoint(family, task, tmp_path):
    """HF -> llmkit checkpoint (from-hf) -> HF (to-hf): the export loads in the task's
    AutoModel class and gives the llmkit model's outputs."""
    import transformers as T

    make_hf(family, task, seed=3).save_pretrained(tmp_path / "hf")
    from_hf(str(tmp_path / "hf"), str(tmp_path / "native"))
    native = load_model(tmp_path / "native")
    assert native.kind == "llmkit"
    to_hf(str(tmp_path / "native"), str(tmp_path / "back"))
    back = getattr(T, CLASSES[task]).from_pretrained(tmp_path / "back", attn_implementation="eager").eval()
    ids, mask, types = batch(seed=4)
    with torch.no_grad():
        assert_real_close(ours_out(native.model, task, ids, mask, types), hf_out(back, task, ids, mask, types),
                          mask, task)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_head_trained_in_llmkit_exports_to_its_hf_class(family, tmp_path):
    """An MLM model gets a fresh task head in llmkit (as `classify` does); the exported folder
    loads in ...ForTokenClassification with the same logits."""
    import transformers as T

    make_hf(family, "lm", seed=5).save_pretrained(tmp_path / "hf")
    model = load_model(tmp_path / "hf").model
    torch.manual_seed(0)
    attach_head(model, head_spec(model.cfg, "token", 5))
    with torch.no_grad():
        for p in model.lm_head.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    save_hf(tmp_path / "out", model, classifier={"labels": list("abcde"), "head": head_spec(model.cfg, "token", 5)})
    back = T.AutoModelForTokenClassification.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    assert back.config.id2label[4] == "e"
    ids, mask, types = batch(seed=6)
    with torch.no_grad():
        assert_real_close(ours_out(model, "token", ids, mask, types), hf_out(back, "token", ids, mask, types),
                          mask, "token")


def test_bert_pretraining_heads_round_trip(tmp_path):
    """BertForPreTraining (bert-base-uncased's class): MLM and next-sentence logits both match."""
    import transformers as T

    torch.manual_seed(0)
    theirs = T.BertForPreTraining(tiny_hf_config("bert")).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    theirs.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf").model
    assert ours.cfg.pooler
    ids, mask, types = batch()
    with torch.no_grad():
        out = theirs(input_ids=ids, attention_mask=mask, token_type_ids=types)
        logits, nsp = ours(ids, attention_mask=mask, token_type_ids=types, nsp=True)
    m = mask.bool()
    torch.testing.assert_close(logits[m], out.prediction_logits[m], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(nsp, out.seq_relationship_logits, atol=1e-4, rtol=1e-4)
    to_hf(str(tmp_path / "hf"), str(tmp_path / "back"))
    back = T.AutoModelForPreTraining.from_pretrained(tmp_path / "back").eval()
    assert type(back).__name__ == "BertForPreTraining"
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids, attention_mask=mask, token_type_ids=types)
                                   .seq_relationship_logits, nsp, atol=1e-4, rtol=1e-4)


def test_modernbert_long_input_crosses_local_windows(tmp_path):
    """64 tokens with an 8-token local window: the symmetric window and the two RoPE bases."""
    theirs = make_hf("modernbert", "lm")
    theirs.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf").model
    assert ours.cfg.global_every == 3 and ours.cfg.rope_local_theta == 10000.0
    ids, mask, types = batch(T=64)
    with torch.no_grad():
        assert_real_close(ours_out(ours, "lm", ids, mask, types), hf_out(theirs, "lm", ids, mask, types), mask, "lm")


def test_padding_does_not_change_an_encoders_real_tokens(tmp_path):
    make_hf("bert", "lm").save_pretrained(tmp_path / "hf")
    model = load_model(tmp_path / "hf").model
    ids, mask, _ = batch()
    with torch.no_grad():
        both = model(ids, attention_mask=mask)
        alone = model(ids[2:, :6])
    torch.testing.assert_close(both[2, :6], alone[0], atol=1e-5, rtol=1e-5)


def test_legacy_gamma_beta_names_load(tmp_path):
    """TF-era BERT checkpoints (bert-base-uncased's own files) name LayerNorm weights gamma/beta."""
    from safetensors.torch import load_file, save_file

    theirs = make_hf("bert", "lm")
    theirs.save_pretrained(tmp_path / "hf")
    f = tmp_path / "hf" / "model.safetensors"
    sd = load_file(f)
    sd = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
          for k, v in sd.items()}
    save_file(sd, f, metadata={"format": "pt"})
    ids, mask, types = batch()
    with torch.no_grad():
        assert_real_close(ours_out(load_model(tmp_path / "hf").model, "lm", ids, mask, types),
                          hf_out(theirs, "lm", ids, mask, types), mask, "lm")
