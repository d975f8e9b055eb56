"""Hugging Face <-> llmkit: configs and weights.

Weight names are data: one table per family of (HF name, llmkit name(s), transform). A
transform is how one HF tensor becomes llmkit tensors and back:

    copy        same tensor
    t           transposed (GPT-2's Conv1D stores weights as (in, out))
    qkv / qkv_t one fused [q; k; v] tensor split in three (Phi-3 qkv_proj; GPT-2 c_attn, transposed)
    gate_up     one fused [gate; up] tensor split in two (Phi-3 gate_up_proj, ModernBERT Wi)
    alias       a second name HF keeps for a tied tensor (BERT's decoder bias): read once, written twice
    tied        a name HF ties to another and saves once (T5's encoder.embed_tokens): read and dropped
    row         a (1, n) buffer stored as an (n,) one (BART's final_logits_bias)
    gated/plain a copy that applies only to a gated / an ungated MLP (T5's wi_0 + wi_1 vs wi)

Encoder-decoders (T5, BART) name the encoder's blocks `encoder.blocks.{}` on the llmkit side;
those rows expand over `n_encoder_layer`, the decoder's over `n_layer`.

The backbone's table is shared by every task; each task has its head's rows (`Family.heads`):
"lm" (the causal or masked LM head, BERT's pretraining heads), "sequence", "token" and "span"
(question answering), each with the transformers class that holds it (`Family.tasks`).

Configs are data too: `FAMILIES` holds, per HF `model_type`, its weight table, its transformers
class, its tie default and the functions that read and write the fields only that family has
(Qwen2's q/k/v biases, Gemma's GeGLU and norm offset, ...). Nothing here touches a file:
dicts in, dicts out; `checkpoint.py` reads and writes the directories.

Export is checked by a round trip: the HF config we write is read back with `config_from_hf`
and must give the same architecture, so a model that a given HF class cannot express (say,
QK-norm in a Llama) is refused with the fields that differ instead of exported wrong.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from llmkit.config import ModelConfig, RopeScaling
from llmkit.errors import LLMKitError

# --- weight name tables -------------------------------------------------------------------------
_L = "model.layers.{}."
_B = "blocks.{}."
_LLAMA_MAP = [
    ("model.embed_tokens.weight", ("embed.weight",), "copy"),
    ("model.norm.weight", ("norm.weight",), "copy"),
    ("lm_head.weight", ("lm_head.weight",), "copy"),
    (_L + "input_layernorm.weight", (_B + "attn_norm.weight",), "copy"),
    (_L + "self_attn.q_proj.weight", (_B + "attn.q.weight",), "copy"),
    (_L + "self_attn.k_proj.weight", (_B + "attn.k.weight",), "copy"),
    (_L + "self_attn.v_proj.weight", (_B + "attn.v.weight",), "copy"),
    (_L + "self_attn.o_proj.weight", (_B + "attn.o.weight",), "copy"),
    (_L + "self_attn.q_proj.bias", (_B + "attn.q.bias",), "copy"),
    (_L + "self_attn.k_proj.bias", (_B + "attn.k.bias",), "copy"),
    (_L + "self_attn.v_proj.bias", (_B + "attn.v.bias",), "copy"),
    (_L + "self_attn.o_proj.bias", (_B + "attn.o.bias",), "copy"),
    (_L + "self_attn.q_norm.weight", (_B + "attn.q_norm.weight",), "copy"),
    (_L + "self_attn.k_norm.weight", (_B + "attn.k_norm.weight",), "copy"),
    (_L + "post_attention_layernorm.weight", (_B + "mlp_norm.weight",), "copy"),
    (_L + "mlp.gate_proj.weight", (_B + "mlp.gate.weight",), "copy"),
    (_L + "mlp.up_proj.weight", (_B + "mlp.up.weight",), "copy"),
    (_L + "mlp.down_proj.weight", (_B + "mlp.down.weight",), "copy"),
    (_L + "mlp.gate_proj.bias", (_B + "mlp.gate.bias",), "copy"),
    (_L + "mlp.up_proj.bias", (_B + "mlp.up.bias",), "copy"),
    (_L + "mlp.down_proj.bias", (_B + "mlp.down.bias",), "copy"),
]
# Gemma 2 has four norms per block; HF's `post_attention_layernorm` is the sandwich norm there.
_GEMMA2_MAP = [e for e in _LLAMA_MAP if "post_attention_layernorm" not in e[0]] + [
    (_L + "post_attention_layernorm.weight", (_B + "post_attn_norm.weight",), "copy"),
    (_L + "pre_feedforward_layernorm.weight", (_B + "mlp_norm.weight",), "copy"),
    (_L + "post_feedforward_layernorm.weight", (_B + "post_mlp_norm.weight",), "copy"),
]
_PHI3_MAP = [e for e in _LLAMA_MAP if not any(s in e[0] for s in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"))] + [
    (_L + "self_attn.qkv_proj.weight", (_B + "attn.q.weight", _B + "attn.k.weight", _B + "attn.v.weight"), "qkv"),
    (_L + "mlp.gate_up_proj.weight", (_B + "mlp.gate.weight", _B + "mlp.up.weight"), "gate_up"),
]
_G = "transformer.h.{}."
_GPT2_MAP = [
    ("transformer.wte.weight", ("embed.weight",), "copy"),
    ("transformer.wpe.weight", ("pos_embed.weight",), "copy"),
    ("transformer.ln_f.weight", ("norm.weight",), "copy"),
    ("transformer.ln_f.bias", ("norm.bias",), "copy"),
    ("lm_head.weight", ("lm_head.weight",), "copy"),
    (_G + "ln_1.weight", (_B + "attn_norm.weight",), "copy"),
    (_G + "ln_1.bias", (_B + "attn_norm.bias",), "copy"),
    (_G + "attn.c_attn.weight", (_B + "attn.q.weight", _B + "attn.k.weight", _B + "attn.v.weight"), "qkv_t"),
    (_G + "attn.c_attn.bias", (_B + "attn.q.bias", _B + "attn.k.bias", _B + "attn.v.bias"), "qkv"),
    (_G + "attn.c_proj.weight", (_B + "attn.o.weight",), "t"),
    (_G + "attn.c_proj.bias", (_B + "attn.o.bias",), "copy"),
    (_G + "ln_2.weight", (_B + "mlp_norm.weight",), "copy"),
    (_G + "ln_2.bias", (_B + "mlp_norm.bias",), "copy"),
    (_G + "mlp.c_fc.weight", (_B + "mlp.up.weight",), "t"),
    (_G + "mlp.c_fc.bias", (_B + "mlp.up.bias",), "copy"),
    (_G + "mlp.c_proj.weight", (_B + "mlp.down.weight",), "t"),
    (_G + "mlp.c_proj.bias", (_B + "mlp.down.bias",), "copy"),
]

# --- encoders: BERT, RoBERTa (BERT's names under roberta.), DistilBERT, ModernBERT ---------------
def _bert_map(p: str) -> list:
    L = p + "encoder.layer.{}."
    return [
        (p + "embeddings.word_embeddings.weight", ("embed.weight",), "copy"),
        (p + "embeddings.position_embeddings.weight", ("pos_embed.weight",), "copy"),
        (p + "embeddings.token_type_embeddings.weight", ("type_embed.weight",), "copy"),
        (p + "embeddings.LayerNorm.weight", ("embed_norm.weight",), "copy"),
        (p + "embeddings.LayerNorm.bias", ("embed_norm.bias",), "copy"),
    ] + [(L + hf + "." + wb, (_B + ours + "." + wb,), "copy") for hf, ours in (
        ("attention.self.query", "attn.q"), ("attention.self.key", "attn.k"), ("attention.self.value", "attn.v"),
        ("attention.output.dense", "attn.o"), ("attention.output.LayerNorm", "attn_norm"),
        ("intermediate.dense", "mlp.up"), ("output.dense", "mlp.down"), ("output.LayerNorm", "mlp_norm"),
    ) for wb in ("weight", "bias")]


def _linear(hf: str, ours: str) -> list:
    return [(hf + ".weight", (ours + ".weight",), "copy"), (hf + ".bias", (ours + ".bias",), "copy")]


_BERT_MLM = _linear("cls.predictions.transform.dense", "lm_transform.dense") + _linear(
    "cls.predictions.transform.LayerNorm", "lm_transform.norm") + [
    ("cls.predictions.decoder.weight", ("lm_head.weight",), "copy"),
    ("cls.predictions.bias", ("lm_head.bias",), "copy"),
    ("cls.predictions.decoder.bias", ("lm_head.bias",), "alias"),
] + _linear("bert.pooler.dense", "pooler") + _linear("cls.seq_relationship", "nsp_head")
_ROBERTA_MLM = _linear("lm_head.dense", "lm_transform.dense") + _linear("lm_head.layer_norm", "lm_transform.norm") + [
    ("lm_head.decoder.weight", ("lm_head.weight",), "copy"),
    ("lm_head.bias", ("lm_head.bias",), "copy"),
    ("lm_head.decoder.bias", ("lm_head.bias",), "alias"),
] + _linear("roberta.pooler.dense", "pooler")  # RobertaModel's, unused by its task heads
_D = "distilbert.transformer.layer.{}."
_DISTILBERT_MAP = [
    ("distilbert.embeddings.word_embeddings.weight", ("embed.weight",), "copy"),
    ("distilbert.embeddings.position_embeddings.weight", ("pos_embed.weight",), "copy"),
    ("distilbert.embeddings.LayerNorm.weight", ("embed_norm.weight",), "copy"),
    ("distilbert.embeddings.LayerNorm.bias", ("embed_norm.bias",), "copy"),
] + [(_D + hf + "." + wb, (_B + ours + "." + wb,), "copy") for hf, ours in (
    ("attention.q_lin", "attn.q"), ("attention.k_lin", "attn.k"), ("attention.v_lin", "attn.v"),
    ("attention.out_lin", "attn.o"), ("sa_layer_norm", "attn_norm"), ("ffn.lin1", "mlp.up"),
    ("ffn.lin2", "mlp.down"), ("output_layer_norm", "mlp_norm"),
) for wb in ("weight", "bias")]
_DISTILBERT_MLM = _linear("vocab_transform", "lm_transform.dense") + _linear("vocab_layer_norm", "lm_transform.norm") + [
    ("vocab_projector.weight", ("lm_head.weight",), "copy"), ("vocab_projector.bias", ("lm_head.bias",), "copy")]
_M = "model.layers.{}."
_MODERNBERT_MAP = [
    ("model.embeddings.tok_embeddings.weight", ("embed.weight",), "copy"),
    ("model.embeddings.norm.weight", ("embed_norm.weight",), "copy"),
    ("model.embeddings.norm.bias", ("embed_norm.bias",), "copy"),
    ("model.final_norm.weight", ("norm.weight",), "copy"),
    ("model.final_norm.bias", ("norm.bias",), "copy"),
    (_M + "attn.Wqkv.weight", (_B + "attn.q.weight", _B + "attn.k.weight", _B + "attn.v.weight"), "qkv"),
    (_M + "attn.Wqkv.bias", (_B + "attn.q.bias", _B + "attn.k.bias", _B + "attn.v.bias"), "qkv"),
    (_M + "mlp.Wi.weight", (_B + "mlp.gate.weight", _B + "mlp.up.weight"), "gate_up"),
    (_M + "mlp.Wi.bias", (_B + "mlp.gate.bias", _B + "mlp.up.bias"), "gate_up"),
] + [(_M + hf + "." + wb, (_B + ours + "." + wb,), "copy") for hf, ours in (
    ("attn_norm", "attn_norm"), ("attn.Wo", "attn.o"), ("mlp_norm", "mlp_norm"), ("mlp.Wo", "mlp.down"),
) for wb in ("weight", "bias")]
_MODERNBERT_HEAD = _linear("head.dense", "lm_head.transform.dense") + _linear("head.norm", "lm_head.transform.norm")
_MODERNBERT_MLM = _linear("head.dense", "lm_transform.dense") + _linear("head.norm", "lm_transform.norm") + [
    ("decoder.weight", ("lm_head.weight",), "copy"), ("decoder.bias", ("lm_head.bias",), "copy")]


def _encoder_heads(mlm: list, sequence: list, token: str = "classifier", span: str = "qa_outputs",
                   hidden: list = ()) -> dict:
    """The four head tables of an encoder: its MLM head, and the task heads whose projection is
    `lm_head.weight/bias` (TaskHead) with, for ModernBERT, its `hidden` layer in front."""
    return {"lm": mlm, "sequence": sequence, "token": list(hidden) + _linear(token, "lm_head"),
            "span": list(hidden) + _linear(span, "lm_head")}


def _encoder_tasks(prefix: str) -> dict:
    return {"lm": prefix + "ForMaskedLM", "sequence": prefix + "ForSequenceClassification",
            "token": prefix + "ForTokenClassification", "span": prefix + "ForQuestionAnswering"}


# --- encoder-decoders: T5 (v1.0, v1.1 / Flan-T5), BART --------------------------------------------
def _t5_attn(hf: str, ours: str) -> list:
    return [(f"{hf}.{p}.weight", (f"{ours}.{p}.weight",), "copy") for p in "qkvo"]


def _t5_mlp(hf: str, ours: str) -> list:
    return [(hf + ".DenseReluDense." + a + ".weight", (ours + ".mlp." + b + ".weight",), kind)
            for a, b, kind in (("wi", "up", "plain"), ("wi_0", "gate", "gated"), ("wi_1", "up", "gated"),
                               ("wo", "down", "copy"))]


_TE, _TD, _EB = "encoder.block.{}.layer.", "decoder.block.{}.layer.", "encoder.blocks.{}."
_T5_MAP = [
    ("shared.weight", ("embed.weight",), "copy"),
    ("encoder.embed_tokens.weight", ("embed.weight",), "tied"),
    ("decoder.embed_tokens.weight", ("embed.weight",), "tied"),
    ("encoder.final_layer_norm.weight", ("encoder.norm.weight",), "copy"),
    ("decoder.final_layer_norm.weight", ("norm.weight",), "copy"),
    # The bias table sits in block 0's attention in HF; the stack owns it here (its layers share it).
    ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", ("encoder.rel_bias.weight",), "copy"),
    ("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", ("rel_bias.weight",), "copy"),
    (_TE + "0.layer_norm.weight", (_EB + "attn_norm.weight",), "copy"),
    (_TE + "1.layer_norm.weight", (_EB + "mlp_norm.weight",), "copy"),
    (_TD + "0.layer_norm.weight", (_B + "attn_norm.weight",), "copy"),
    (_TD + "1.layer_norm.weight", (_B + "cross_norm.weight",), "copy"),
    (_TD + "2.layer_norm.weight", (_B + "mlp_norm.weight",), "copy"),
] + _t5_attn(_TE + "0.SelfAttention", _EB + "attn") + _t5_mlp(_TE + "1", _EB[:-1]) \
  + _t5_attn(_TD + "0.SelfAttention", _B + "attn") + _t5_attn(_TD + "1.EncDecAttention", _B + "cross_attn") \
  + _t5_mlp(_TD + "2", _B[:-1])


def _bart_layer(hf: str, ours: str, cross: bool) -> list:
    parts = [("self_attn.q_proj", "attn.q"), ("self_attn.k_proj", "attn.k"), ("self_attn.v_proj", "attn.v"),
             ("self_attn.out_proj", "attn.o"), ("self_attn_layer_norm", "attn_norm"), ("fc1", "mlp.up"),
             ("fc2", "mlp.down"), ("final_layer_norm", "mlp_norm")]
    if cross:
        parts += [("encoder_attn.q_proj", "cross_attn.q"), ("encoder_attn.k_proj", "cross_attn.k"),
                  ("encoder_attn.v_proj", "cross_attn.v"), ("encoder_attn.out_proj", "cross_attn.o"),
                  ("encoder_attn_layer_norm", "cross_norm")]
    return [row for a, b in parts for row in _linear(hf + a, ours + b)]


_BART_MAP = [
    ("model.shared.weight", ("embed.weight",), "copy"),
    ("model.encoder.embed_tokens.weight", ("embed.weight",), "tied"),
    ("model.decoder.embed_tokens.weight", ("embed.weight",), "tied"),
    ("model.encoder.embed_positions.weight", ("encoder.pos_embed.weight",), "copy"),
    ("model.decoder.embed_positions.weight", ("pos_embed.weight",), "copy"),
] + _linear("model.encoder.layernorm_embedding", "encoder.embed_norm") + _linear(
    "model.decoder.layernorm_embedding", "embed_norm") + _bart_layer("model.encoder.layers.{}.", _EB, False) \
  + _bart_layer("model.decoder.layers.{}.", _B, True)
_BART_LM = [("lm_head.weight", ("lm_head.weight",), "copy"), ("final_logits_bias", ("logit_bias",), "row")]

# Buffers some HF checkpoints carry that are recomputed, never loaded.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq", "embeddings.position_ids",
                     "embeddings.token_type_ids")
# Token ids that travel in config.json / generation_config.json (kept in ModelConfig.extra).
EXTRA_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "forced_bos_token_id",
              "forced_eos_token_id")


# --- config fields that only some families have ---------------------------------------------------
# A reader takes (HF config dict, ModelConfig fields so far) and adds or checks fields; a writer
# takes (ModelConfig, HF dict so far) and adds keys. Each family lists the ones it needs.
Reader = Callable[[dict, dict], None]
Writer = Callable[[ModelConfig, dict], None]


def _read_silu(hf: dict, c: dict) -> None:
    act = hf.get("hidden_act") or hf.get("hidden_activation") or "silu"
    if act != "silu":
        raise LLMKitError(f"hidden_act '{act}' is not supported for {c['hf_model_type']}")


def _write_silu(cfg: ModelConfig, hf: dict) -> None:
    hf["hidden_act"] = "silu"


def _read_geglu(hf: dict, c: dict) -> None:
    """Gemma: GeGLU MLP, RMSNorm weights stored as offsets from 1, embeddings scaled by sqrt(d)."""
    act = hf.get("hidden_activation") or "gelu_pytorch_tanh"
    c.update(mlp="geglu", gelu_approx="none" if act == "gelu" else "tanh", norm_unit_offset=True, embed_scale=True)


def _write_geglu(cfg: ModelConfig, hf: dict) -> None:
    act = "gelu_pytorch_tanh" if cfg.gelu_approx == "tanh" else "gelu"
    hf.update(hidden_activation=act, hidden_act=act)


def _read_llama_bias(hf: dict, c: dict) -> None:
    bias = bool(hf.get("attention_bias"))
    c.update(qkv_bias=bias, attn_out_bias=bias, mlp_bias=bool(hf.get("mlp_bias")))


def _write_llama_bias(cfg: ModelConfig, hf: dict) -> None:
    hf.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias)


def _read_attention_bias(hf: dict, c: dict) -> None:  # Qwen3: one flag for q, k, v and o
    bias = bool(hf.get("attention_bias"))
    c.update(qkv_bias=bias, attn_out_bias=bias)


def _write_attention_bias(cfg: ModelConfig, hf: dict) -> None:
    hf["attention_bias"] = cfg.qkv_bias


def _read_no_window(hf: dict, c: dict) -> None:  # Qwen2/3: sliding windows on some layers only
    if hf.get("use_sliding_window"):
        raise LLMKitError(f"{c['hf_model_type']} with use_sliding_window=true is not supported")


def _write_no_window(cfg: ModelConfig, hf: dict) -> None:
    hf.update(use_sliding_window=False, max_window_layers=cfg.n_layer, sliding_window=None)


def _read_window(hf: dict, c: dict) -> None:  # Mistral, Phi-3: one window for every layer
    if hf.get("sliding_window"):
        c["sliding_window"] = int(hf["sliding_window"])


def _write_window(cfg: ModelConfig, hf: dict) -> None:
    hf["sliding_window"] = cfg.sliding_window


def _read_full_rotary(hf: dict, c: dict) -> None:
    if float(hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise LLMKitError("Phi-3 variants with partial_rotary_factor != 1 are not supported")


def _write_pad_id(cfg: ModelConfig, hf: dict) -> None:
    if "pad_token_id" not in hf:
        hf["pad_token_id"] = cfg.extra.get("eos_token_id", 0)  # Phi3Config requires one in range


def _read_gemma2(hf: dict, c: dict) -> None:
    """Gemma 2: sandwich norms, query_pre_attn_scalar, logit softcaps, local/global layers."""
    c.update(
        post_block_norms=True, attn_scale=float(hf.get("query_pre_attn_scalar", 256)) ** -0.5,
        attn_softcap=hf.get("attn_logit_softcapping"), final_softcap=hf.get("final_logit_softcapping"),
        sliding_window=hf.get("sliding_window"),
    )
    types = hf.get("layer_types")
    if types and c["sliding_window"]:
        every = _window_period(types)
        if every is None:
            raise LLMKitError(f"gemma2 layer_types pattern {types[:4]}... is not supported")
        c.update(sliding_window_every=every)
    elif c["sliding_window"]:
        c.update(sliding_window_every=2)


def _write_gemma2(cfg: ModelConfig, hf: dict) -> None:
    scalar = round((cfg.attn_scale or cfg.head_size**-0.5) ** -2, 6)
    hf.update(query_pre_attn_scalar=int(scalar) if scalar == int(scalar) else scalar,
              attn_logit_softcapping=cfg.attn_softcap, final_logit_softcapping=cfg.final_softcap,
              sliding_window=cfg.sliding_window,
              layer_types=["sliding_attention" if cfg.is_local_layer(i) else "full_attention"
                           for i in range(cfg.n_layer)])


def _window_period(types: list[str]) -> Optional[int]:
    """k such that layer i is local iff i % k == 0, or None if the pattern is not of that form."""
    for k in range(1, len(types) + 1):
        if all((t == "sliding_attention") == (i % k == 0) for i, t in enumerate(types)):
            return k
    return None


def _read_gelu(hf: dict, c: dict) -> None:  # BERT, RoBERTa, DistilBERT
    act = hf.get("hidden_act") or hf.get("activation") or "gelu"
    if act not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
        raise LLMKitError(f"hidden_act '{act}' is not supported for {c['hf_model_type']}")
    c["gelu_approx"] = "none" if act == "gelu" else "tanh"
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise LLMKitError(f"position_embedding_type '{hf['position_embedding_type']}' is not supported")


def _write_gelu(cfg: ModelConfig, hf: dict) -> None:
    hf["hidden_act" if "dim" not in hf else "activation"] = "gelu" if cfg.gelu_approx == "none" else "gelu_new"


def _read_roberta(hf: dict, c: dict) -> None:
    """RoBERTa numbers positions from padding_idx + 1 (fairseq's make_positions)."""
    c["pos_offset"] = int(hf.get("pad_token_id", 1)) + 1
    c["block_size"] -= c["pos_offset"]


def _read_modernbert(hf: dict, c: dict) -> None:
    """ModernBERT: GeGLU, RoPE with a base per layer type, global attention every k layers and a
    symmetric local window elsewhere, norms without bias, block 0 without an attention norm."""
    act = hf.get("hidden_activation", "gelu")
    head_act = hf.get("classifier_activation", "gelu")
    if act not in ("gelu", "gelu_pytorch_tanh") or head_act != act:
        raise LLMKitError(f"ModernBERT activations '{act}'/'{head_act}' are not supported (gelu, the same for both)")
    params = hf.get("rope_parameters") or {}
    glob = (params.get("full_attention") or {}).get("rope_theta", hf.get("global_rope_theta", 160000.0))
    loc = (params.get("sliding_attention") or {}).get("rope_theta", hf.get("local_rope_theta", 10000.0))
    types = hf.get("layer_types") or ["sliding_attention" if i % int(hf.get("global_attn_every_n_layers", 3))
                                      else "full_attention" for i in range(c["n_layer"])]
    every = next((k for k in range(1, len(types) + 1)
                  if all((t == "full_attention") == (i % k == 0) for i, t in enumerate(types))), None)
    if every is None:
        raise LLMKitError(f"modernbert layer_types pattern {types[:4]}... is not supported")
    bias = bool(hf.get("attention_bias"))
    c.update(gelu_approx="none" if act == "gelu" else "tanh", rope_theta=float(glob), rope_local_theta=float(loc),
             norm_bias=bool(hf.get("norm_bias")), qkv_bias=bias, attn_out_bias=bias, mlp_bias=bool(hf.get("mlp_bias")),
             lm_head_bias=bool(hf.get("decoder_bias", True)), head_dense_bias=bool(hf.get("classifier_bias")),
             sliding_window=int(hf.get("local_attention", 128)) if every > 1 else None,
             global_every=every if every > 1 else None)


def _write_modernbert(cfg: ModelConfig, hf: dict) -> None:
    act = "gelu" if cfg.gelu_approx == "none" else "gelu_pytorch_tanh"
    hf.update(hidden_activation=act, classifier_activation=act, norm_bias=cfg.norm_bias, attention_bias=cfg.qkv_bias,
              mlp_bias=cfg.mlp_bias, decoder_bias=cfg.lm_head_bias, classifier_bias=cfg.head_dense_bias,
              local_attention=cfg.sliding_window or 128, global_attn_every_n_layers=cfg.global_every or 1,
              layer_types=["sliding_attention" if cfg.is_local_layer(i) else "full_attention" for i in range(cfg.n_layer)],
              rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": cfg.rope_theta},
                               "sliding_attention": {"rope_type": "default",
                                                     "rope_theta": cfg.rope_local_theta or cfg.rope_theta}},
              attention_dropout=0.0, embedding_dropout=0.0, mlp_dropout=0.0, classifier_dropout=0.0,
              norm_eps=cfg.norm_eps, reference_compile=False)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id"):
        hf.setdefault(key, cfg.extra.get(key, 0))


# --- sizes: what every family spells its own way -------------------------------------------------
def _gpt2_sizes_to(cfg: ModelConfig, hf: dict) -> None:
    hf.update(n_layer=cfg.n_layer, n_embd=cfg.n_embd, n_head=cfg.n_head, n_inner=cfg.ffn_size,
              n_positions=cfg.block_size, n_ctx=cfg.block_size, layer_norm_epsilon=cfg.norm_eps,
              activation_function="gelu_new" if cfg.gelu_approx == "tanh" else "gelu")


def _rope_sizes_to(cfg: ModelConfig, hf: dict) -> None:
    hf.update(num_hidden_layers=cfg.n_layer, hidden_size=cfg.n_embd, num_attention_heads=cfg.n_head,
              num_key_value_heads=cfg.kv_heads, head_dim=cfg.head_size, intermediate_size=cfg.ffn_size,
              max_position_embeddings=cfg.block_size, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
              attention_dropout=0.0)
    rope_params: dict = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    s = cfg.rope_scaling
    if s is not None:
        scaling = {"rope_type": s.type, "factor": s.factor}
        if s.type == "llama3":
            scaling.update(low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor,
                           original_max_position_embeddings=s.original_max_seq_len)
        hf["rope_scaling"] = scaling
        rope_params = {**scaling, "rope_theta": cfg.rope_theta}
    hf["rope_parameters"] = rope_params


_ENCODER = dict(causal=False, norm="layer", norm_bias=True, qkv_bias=True, attn_out_bias=True, mlp_bias=True,
                mlp="gelu", norm_position="post", embed_norm=True, final_norm=False, pos="learned",
                lm_head_bias=True, lm_head_transform=True)


def _bert_sizes_from(hf: dict, common: dict) -> dict:
    return dict(common, **_ENCODER, n_layer=hf["num_hidden_layers"], n_embd=hf["hidden_size"],
                n_head=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
                block_size=hf.get("max_position_embeddings", 512), norm_eps=hf.get("layer_norm_eps", 1e-12),
                type_vocab_size=hf.get("type_vocab_size", 2))


def _bert_sizes_to(cfg: ModelConfig, hf: dict) -> None:
    hf.update(num_hidden_layers=cfg.n_layer, hidden_size=cfg.n_embd, num_attention_heads=cfg.n_head,
              intermediate_size=cfg.ffn_size, max_position_embeddings=cfg.block_size + cfg.pos_offset,
              layer_norm_eps=cfg.norm_eps, type_vocab_size=cfg.type_vocab_size, hidden_dropout_prob=0.0,
              attention_probs_dropout_prob=0.0, position_embedding_type="absolute")
    if cfg.pos_offset:
        hf["pad_token_id"] = cfg.pos_offset - 1  # RoBERTa's padding_idx, which its positions start after


def _distilbert_sizes_from(hf: dict, common: dict) -> dict:
    if hf.get("sinusoidal_pos_embds"):
        raise LLMKitError("DistilBERT with sinusoidal_pos_embds is not supported")
    return dict(common, **_ENCODER, n_layer=hf["n_layers"], n_embd=hf["dim"], n_head=hf["n_heads"],
                intermediate_size=hf["hidden_dim"], block_size=hf.get("max_position_embeddings", 512),
                norm_eps=1e-12)  # DistilBERT's LayerNorms have a fixed eps


def _distilbert_sizes_to(cfg: ModelConfig, hf: dict) -> None:
    hf.update(n_layers=cfg.n_layer, dim=cfg.n_embd, n_heads=cfg.n_head, hidden_dim=cfg.ffn_size,
              max_position_embeddings=cfg.block_size, sinusoidal_pos_embds=False, dropout=0.0,
              attention_dropout=0.0, qa_dropout=0.0, seq_classif_dropout=0.0)


def _modernbert_sizes_from(hf: dict, common: dict) -> dict:
    return dict(common, causal=False, norm="layer", mlp="geglu", embed_norm=True, first_attn_norm=False,
                lm_head_transform=True, pos="rope", n_layer=hf["num_hidden_layers"], n_embd=hf["hidden_size"],
                n_head=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
                block_size=hf.get("max_position_embeddings", 8192), norm_eps=hf.get("norm_eps", 1e-5))


def _modernbert_sizes_to(cfg: ModelConfig, hf: dict) -> None:
    hf.update(num_hidden_layers=cfg.n_layer, hidden_size=cfg.n_embd, num_attention_heads=cfg.n_head,
              intermediate_size=cfg.ffn_size, max_position_embeddings=cfg.block_size)


_T5_MLPS = {"relu": dict(mlp="relu"), "gelu": dict(mlp="gelu", gelu_approx="none"),
            "gated-gelu": dict(mlp="geglu", gelu_approx="tanh"), "gated-gelu_new": dict(mlp="geglu", gelu_approx="tanh"),
            "gated-silu": dict(mlp="swiglu")}


def _t5_sizes_from(hf: dict, common: dict) -> dict:
    """T5: pre-norm RMSNorm ("T5LayerNorm"), no biases, unscaled attention logits (the scale is
    folded into the init), a relative position bias per stack. v1.0 ties the output layer to the
    embedding and rescales the decoder's output by d_model**-0.5; v1.1 / Flan-T5 do neither
    (transformers 5 keeps that as `scale_decoder_outputs`)."""
    proj = hf.get("feed_forward_proj", "relu")
    if proj not in _T5_MLPS:
        raise LLMKitError(f"T5 feed_forward_proj '{proj}' is not supported ({', '.join(_T5_MLPS)})")
    rescale = bool(hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True) is not False))
    d, n_head, d_kv = hf["d_model"], hf["num_heads"], hf.get("d_kv", hf["d_model"] // hf["num_heads"])
    return dict(common, **_T5_MLPS[proj], n_layer=hf.get("num_decoder_layers") or hf["num_layers"],
                n_encoder_layer=hf["num_layers"], n_embd=d, n_head=n_head,
                head_dim=d_kv if d_kv != d // n_head or d % n_head else None, intermediate_size=hf["d_ff"],
                block_size=hf.get("n_positions", 512), norm_eps=hf.get("layer_norm_epsilon", 1e-6),
                rel_buckets=hf.get("relative_attention_num_buckets", 32),
                rel_max_distance=hf.get("relative_attention_max_distance", 128),
                tie_embeddings=rescale, lm_head_rescale=rescale)


def _t5_sizes_to(cfg: ModelConfig, hf: dict) -> None:
    proj = next(k for k, v in _T5_MLPS.items() if all(getattr(cfg, f) == x for f, x in v.items()))
    hf.update(num_layers=cfg.n_encoder_layer, num_decoder_layers=cfg.n_layer, d_model=cfg.n_embd,
              num_heads=cfg.n_head, d_kv=cfg.head_size, d_ff=cfg.ffn_size, feed_forward_proj=proj,
              relative_attention_num_buckets=cfg.rel_buckets, relative_attention_max_distance=cfg.rel_max_distance,
              layer_norm_epsilon=cfg.norm_eps, n_positions=cfg.block_size, dropout_rate=0.0,
              is_encoder_decoder=True, tie_word_embeddings=cfg.tie_embeddings,
              scale_decoder_outputs=cfg.lm_head_rescale)
    hf.setdefault("decoder_start_token_id", cfg.extra.get("decoder_start_token_id", cfg.extra.get("pad_token_id", 0)))


_BART_ACTS = {"gelu": dict(mlp="gelu", gelu_approx="none"), "gelu_new": dict(mlp="gelu", gelu_approx="tanh"),
              "relu": dict(mlp="relu")}


def _bart_sizes_from(hf: dict, common: dict) -> dict:
    """BART (Lewis et al. 2020): post-norm like BERT, learned positions numbered from 2 (fairseq's
    padding offset), a LayerNorm after the embeddings of both stacks, biases everywhere, the
    output layer tied to the embedding plus `final_logits_bias`."""
    act = hf.get("activation_function", "gelu")
    if act not in _BART_ACTS:
        raise LLMKitError(f"BART activation_function '{act}' is not supported ({', '.join(_BART_ACTS)})")
    for a, b in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        if hf.get(a, 16) != hf.get(b, 16):
            raise LLMKitError(f"BART with {a} != {b} is not supported")
    if hf.get("add_final_layer_norm") or hf.get("normalize_before"):
        raise LLMKitError("mBART-style pre-norm BART variants are not supported")
    return dict(common, **_BART_ACTS[act], n_layer=hf["decoder_layers"], n_encoder_layer=hf["encoder_layers"],
                n_embd=hf["d_model"], n_head=hf["encoder_attention_heads"], intermediate_size=hf["encoder_ffn_dim"],
                block_size=hf.get("max_position_embeddings", 1024), pos="learned", pos_offset=2, norm="layer",
                norm_eps=1e-5, norm_bias=True, qkv_bias=True, attn_out_bias=True, mlp_bias=True,
                norm_position="post", embed_norm=True, final_norm=False, embed_scale=bool(hf.get("scale_embedding")),
                logit_bias=True)


def _bart_sizes_to(cfg: ModelConfig, hf: dict) -> None:
    act = next(k for k, v in _BART_ACTS.items() if all(getattr(cfg, f) == x for f, x in v.items()))
    hf.update(encoder_layers=cfg.n_encoder_layer, decoder_layers=cfg.n_layer, d_model=cfg.n_embd,
              encoder_attention_heads=cfg.n_head, decoder_attention_heads=cfg.n_head,
              encoder_ffn_dim=cfg.ffn_size, decoder_ffn_dim=cfg.ffn_size, max_position_embeddings=cfg.block_size,
              activation_function=act, scale_embedding=cfg.embed_scale, is_encoder_decoder=True, dropout=0.0,
              attention_dropout=0.0, activation_dropout=0.0, forced_eos_token_id=None)
    hf.update({k: v for k, v in cfg.extra.items() if k in EXTRA_KEYS})
    for key, default in (("pad_token_id", 1), ("bos_token_id", 0), ("eos_token_id", 2)):
        hf.setdefault(key, default)
    hf.setdefault("decoder_start_token_id", hf["eos_token_id"])


# --- the families -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    weights: list  # the backbone's (HF name, llmkit name(s), transform) rows
    architecture: str  # the transformers class `from_pretrained` builds for a language model
    tie_default: bool  # tie_word_embeddings when config.json does not say
    fixed: dict = dataclasses.field(default_factory=dict)  # ModelConfig fields every member has
    read: tuple[Reader, ...] = ()
    write: tuple[Writer, ...] = ()
    prefix: str = "model."  # of the backbone's tensor names (base-model checkpoints omit it)
    sizes_from: Callable[[dict, dict], dict] = None  # config.json -> the size fields (default: Llama's)
    sizes_to: Callable[[ModelConfig, dict], None] = None
    heads: dict = dataclasses.field(default_factory=lambda: {"lm": [("lm_head.weight", ("lm_head.weight",), "copy")]})
    tasks: dict = dataclasses.field(default_factory=dict)  # task -> transformers class (lm: `architecture`)
    base: Optional[str] = None  # the bare backbone's class (BertModel): no head weights
    pretraining: Optional[str] = None  # the class with BERT's pooler and next-sentence head too
    pooling_key: Optional[str] = None  # config.json key of a sequence head's pooling (ModernBERT's cls/mean)
    head_from_embedding: bool = False  # an untied head absent from the checkpoint is the embedding (T5 in HF 5)

    def arch(self, task: str) -> str:
        return self.architecture if task == "lm" else self.tasks[task]


FAMILIES: dict[str, Family] = {
    "llama": Family(_LLAMA_MAP, "LlamaForCausalLM", False, read=(_read_silu, _read_llama_bias),
                    write=(_write_silu, _write_llama_bias)),
    "mistral": Family(_LLAMA_MAP, "MistralForCausalLM", False, read=(_read_silu, _read_window),
                      write=(_write_silu, _write_window)),
    "qwen2": Family(_LLAMA_MAP, "Qwen2ForCausalLM", False, fixed=dict(qkv_bias=True),
                    read=(_read_silu, _read_no_window), write=(_write_silu, _write_no_window)),
    "qwen3": Family(_LLAMA_MAP, "Qwen3ForCausalLM", True, fixed=dict(qk_norm=True),
                    read=(_read_silu, _read_attention_bias, _read_no_window),
                    write=(_write_silu, _write_attention_bias, _write_no_window)),
    "phi3": Family(_PHI3_MAP, "Phi3ForCausalLM", False, read=(_read_silu, _read_window, _read_full_rotary),
                   write=(_write_silu, _write_window, _write_pad_id)),
    "gemma": Family(_LLAMA_MAP, "GemmaForCausalLM", True, read=(_read_geglu,), write=(_write_geglu,)),
    "gemma2": Family(_GEMMA2_MAP, "Gemma2ForCausalLM", True, read=(_read_geglu, _read_gemma2),
                     write=(_write_geglu, _write_gemma2)),
    "gpt2": Family(_GPT2_MAP, "GPT2LMHeadModel", True, prefix="transformer.", sizes_from=lambda hf, c: _gpt2_from_hf(hf, c),
                   sizes_to=_gpt2_sizes_to),
    "bert": Family(_bert_map("bert."), "BertForMaskedLM", True, read=(_read_gelu,), write=(_write_gelu,),
                   prefix="bert.", sizes_from=_bert_sizes_from, sizes_to=_bert_sizes_to,
                   heads=_encoder_heads(_BERT_MLM, _linear("bert.pooler.dense", "lm_head.transform.dense")
                                        + _linear("classifier", "lm_head")),
                   tasks=_encoder_tasks("Bert"), base="BertModel", pretraining="BertForPreTraining"),
    "roberta": Family(_bert_map("roberta."), "RobertaForMaskedLM", True, read=(_read_gelu, _read_roberta),
                      write=(_write_gelu,), prefix="roberta.", sizes_from=_bert_sizes_from, sizes_to=_bert_sizes_to,
                      heads=_encoder_heads(_ROBERTA_MLM, _linear("classifier.dense", "lm_head.transform.dense")
                                           + _linear("classifier.out_proj", "lm_head")),
                      tasks=_encoder_tasks("Roberta"), base="RobertaModel"),
    "distilbert": Family(_DISTILBERT_MAP, "DistilBertForMaskedLM", True, read=(_read_gelu,), write=(_write_gelu,),
                         prefix="distilbert.", sizes_from=_distilbert_sizes_from, sizes_to=_distilbert_sizes_to,
                         heads=_encoder_heads(_DISTILBERT_MLM, _linear("pre_classifier", "lm_head.transform.dense")
                                              + _linear("classifier", "lm_head")),
                         tasks=_encoder_tasks("DistilBert"), base="DistilBertModel"),
    "modernbert": Family(_MODERNBERT_MAP, "ModernBertForMaskedLM", True, read=(_read_modernbert,),
                         write=(_write_modernbert,), sizes_from=_modernbert_sizes_from, sizes_to=_modernbert_sizes_to,
                         heads=_encoder_heads(_MODERNBERT_MLM, _MODERNBERT_HEAD + _linear("classifier", "lm_head"),
                                              token="classifier", span="classifier", hidden=_MODERNBERT_HEAD),
                         tasks=_encoder_tasks("ModernBert"), base="ModernBertModel",
                         pooling_key="classifier_pooling"),
    "t5": Family(_T5_MAP, "T5ForConditionalGeneration", True, prefix="", sizes_from=_t5_sizes_from,
                 sizes_to=_t5_sizes_to, fixed=dict(pos="relative", norm="rms", attn_scale=1.0),
                 head_from_embedding=True),
    "bart": Family(_BART_MAP, "BartForConditionalGeneration", True, sizes_from=_bart_sizes_from,
                   sizes_to=_bart_sizes_to, heads={"lm": _BART_LM}),
}
WEIGHT_MAPS = {mt: f.weights for mt, f in FAMILIES.items()}
ARCHITECTURES = {mt: f.architecture for mt, f in FAMILIES.items()}


# --- weights ------------------------------------------------------------------------------------
def _expand(table, cfg: ModelConfig):
    """[(hf_name, native_names, transform)] with the layer index filled in (an encoder-decoder's
    `encoder.blocks.{}` rows over its encoder layers)."""
    gated = cfg.mlp in ("swiglu", "geglu")
    for hf, natives, kind in table:
        if kind in ("gated", "plain"):  # rows for one kind of MLP: T5's wi vs wi_0 / wi_1
            if (kind == "gated") != gated:
                continue
            kind = "copy"
        if "{}" in hf:
            n_layer = cfg.n_encoder_layer if natives[0].startswith("encoder.") else cfg.n_layer
            for i in range(n_layer):
                yield hf.format(i), tuple(n.format(i) for n in natives), kind
        else:
            yield hf, natives, kind


def _qkv_sizes(cfg: ModelConfig) -> list[int]:
    return [cfg.n_head * cfg.head_size, cfg.kv_heads * cfg.head_size, cfg.kv_heads * cfg.head_size]


def _table(family: Family, task: Optional[str]) -> list:
    return family.weights + family.heads[task or "lm"]


def _head_names(family: Family) -> set[str]:
    """HF names of head tensors that sit outside the backbone's prefix (cls., classifier, ...)."""
    return {hf for rows in family.heads.values() for hf, _, _ in rows if not hf.startswith(family.prefix)}


def _tied(cfg: ModelConfig, natives: tuple) -> bool:
    return cfg.tie_embeddings and natives == ("lm_head.weight",)


def state_dict_from_hf(hf_sd: dict[str, torch.Tensor], cfg: ModelConfig, source: str = "checkpoint",
                       task: Optional[str] = None) -> dict:
    """HF tensors -> llmkit tensors for `cfg` (whose hf_model_type picks the table) and `task`
    (None: the language-model head; "sequence", "token", "span": a task head's checkpoint)."""
    mt = cfg.hf_model_type
    family = FAMILIES[mt]
    heads = _head_names(family)
    sd = {}
    for k, v in hf_sd.items():
        if k.endswith(_IGNORED_SUFFIXES):
            continue
        if k.endswith((".gamma", ".beta")) and "LayerNorm" in k:  # TF-era BERT checkpoints
            k = k.rsplit(".", 1)[0] + (".weight" if k.endswith(".gamma") else ".bias")
        if not k.startswith(family.prefix) and k not in heads:
            k = family.prefix + k  # a base-model checkpoint (e.g. openai-community/gpt2, BertModel)
        sd[k] = v
    out: dict[str, torch.Tensor] = {}
    for hf, natives, kind in _expand(_table(family, task), cfg):
        if hf not in sd:
            continue
        t = sd.pop(hf)
        if kind in ("alias", "tied") or (task in (None, "lm") and _tied(cfg, natives)):
            continue  # the same tensor under its other name
        if kind == "copy":
            out[natives[0]] = t
        elif kind == "row":
            out[natives[0]] = t.reshape(-1)
        elif kind == "t":
            out[natives[0]] = t.t()
        elif kind in ("qkv", "qkv_t", "gate_up"):
            sizes = _qkv_sizes(cfg) if kind != "gate_up" else [cfg.ffn_size, cfg.ffn_size]
            dim = 1 if kind == "qkv_t" else 0
            if t.shape[dim] != sum(sizes):
                raise LLMKitError(f"{source}: shape mismatch for {hf}: {tuple(t.shape)} does not split into {sizes}")
            for name, part in zip(natives, torch.split(t, sizes, dim=dim)):
                out[name] = part.t() if kind == "qkv_t" else part
    if family.head_from_embedding and not cfg.tie_embeddings and "lm_head.weight" not in out and "embed.weight" in out:
        out["lm_head.weight"] = out["embed.weight"].clone()  # HF ties a head it did not save
    if not cfg.pooler:  # a bare backbone's pooler (BertModel): only BERT's pretraining heads use it
        for k in [k for k in out if k.startswith(("pooler.", "nsp_head."))]:
            del out[k]
    if sd:
        keys = sorted(sd)
        raise LLMKitError(f"{source}: tensors with no llmkit counterpart for model_type '{mt}': "
                          f"{', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}")
    return out


def state_dict_to_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig, model_type: str,
                     task: Optional[str] = None) -> dict:
    """llmkit tensors -> HF tensors (the tied head omitted, as HF saves it)."""
    out = {}
    for hf, natives, kind in _expand(_table(FAMILIES[model_type], task), cfg):
        if not all(n in sd for n in natives) or kind == "tied":
            continue
        if _tied(cfg, natives):
            continue
        parts = [sd[n] for n in natives]
        if kind == "alias":
            out[hf] = parts[0].clone()  # safetensors stores no shared tensors
        elif kind == "copy":
            out[hf] = parts[0]
        elif kind == "t":
            out[hf] = parts[0].t()
        elif kind == "row":
            out[hf] = parts[0][None]
        elif kind == "qkv_t":
            out[hf] = torch.cat([p.t() for p in parts], dim=1)
        else:
            out[hf] = torch.cat(parts, dim=0)
    return out


# --- configs ------------------------------------------------------------------------------------
def _rope(hf: dict) -> tuple[float, Optional[RopeScaling]]:
    """rope_theta and scaling from either the legacy keys or transformers 5's `rope_parameters`."""
    params = dict(hf.get("rope_parameters") or {})
    legacy = hf.get("rope_scaling") or {}
    theta = float(hf.get("rope_theta") or params.get("rope_theta") or 10000.0)
    scaling = {**params, **legacy}
    rtype = scaling.get("rope_type") or scaling.get("type") or "default"
    if rtype == "default":
        return theta, None
    if rtype == "llama3":
        return theta, RopeScaling(
            type="llama3", factor=float(scaling["factor"]),
            low_freq_factor=float(scaling["low_freq_factor"]), high_freq_factor=float(scaling["high_freq_factor"]),
            original_max_seq_len=int(scaling["original_max_position_embeddings"]),
        )
    if rtype == "linear":
        return theta, RopeScaling(type="linear", factor=float(scaling["factor"]))
    raise LLMKitError(f"RoPE scaling type '{rtype}' is not supported (supported: llama3, linear)")


def _gpt2_from_hf(hf: dict, common: dict) -> dict:
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
        raise LLMKitError("GPT-2 variants with scale_attn_by_inverse_layer_idx/reorder_and_upcast_attn are not supported")
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu"):
        raise LLMKitError(f"GPT-2 activation '{act}' is not supported")
    return dict(
        common, n_layer=hf["n_layer"], n_embd=hf["n_embd"], n_head=hf["n_head"],
        intermediate_size=hf.get("n_inner") or 4 * hf["n_embd"], block_size=hf.get("n_positions", 1024),
        pos="learned", norm="layer", norm_eps=hf.get("layer_norm_epsilon", 1e-5), norm_bias=True, mlp="gelu",
        gelu_approx="none" if act == "gelu" else "tanh", qkv_bias=True, attn_out_bias=True, mlp_bias=True,
    )


def _rope_family_from_hf(hf: dict, common: dict) -> dict:
    theta, scaling = _rope(hf)
    n_head, d = hf["num_attention_heads"], hf["hidden_size"]
    head_dim = hf.get("head_dim")
    return dict(
        common, n_layer=hf["num_hidden_layers"], n_embd=d, n_head=n_head,
        n_kv_heads=hf.get("num_key_value_heads") or n_head,
        head_dim=head_dim if head_dim and head_dim != d // n_head else None,
        intermediate_size=hf["intermediate_size"], block_size=hf.get("max_position_embeddings", 2048),
        pos="rope", rope_theta=theta, rope_scaling=scaling, norm="rms", norm_eps=hf.get("rms_norm_eps", 1e-6),
        mlp="swiglu",
    )


def config_from_hf(hf: dict, name: Optional[str] = None) -> ModelConfig:
    """A ModelConfig from a transformers config.json dict."""
    mt = hf.get("model_type")
    if mt not in FAMILIES:
        raise LLMKitError(f"unsupported architecture model_type='{mt}' (supported: {', '.join(FAMILIES)})")
    family = FAMILIES[mt]
    try:
        common = dict(name=name or hf.get("_name_or_path") or mt, hf_model_type=mt, vocab_size=hf["vocab_size"],
                      tie_embeddings=hf.get("tie_word_embeddings", family.tie_default),
                      extra={k: hf[k] for k in EXTRA_KEYS if hf.get(k) is not None})
        c = (family.sizes_from or _rope_family_from_hf)(hf, common)
        c.update(family.fixed)
        for read in family.read:
            read(hf, c)
        arch = (hf.get("architectures") or [family.architecture])[0]
        if arch == family.base:  # a bare backbone (BertModel): no MLM head weights to load
            c.update(lm_head_transform=False, lm_head_bias=False)
        if family.pretraining and arch == family.pretraining:
            c["pooler"] = True
    except KeyError as e:  # a required field of this family is missing
        raise LLMKitError(f"config.json lacks '{e.args[0]}', which a '{mt}' model needs") from None
    except (TypeError, ValueError) as e:  # a field of the wrong type (e.g. a string for a size)
        raise LLMKitError(f"config.json has a field of the wrong type for '{mt}' ({e})") from None
    return ModelConfig(**c)


def infer_hf_model_type(cfg: ModelConfig) -> str:
    """The HF family a config belongs to: its own, else the plainest one that expresses it."""
    if cfg.hf_model_type:
        return cfg.hf_model_type
    if cfg.is_seq2seq:
        return "t5" if cfg.pos == "relative" else "bart"
    if not cfg.causal:
        return "modernbert" if cfg.pos == "rope" else ("bert" if cfg.type_vocab_size > 1 else "distilbert")
    if cfg.pos == "learned":
        return "gpt2"
    if cfg.post_block_norms:
        return "gemma2"
    if cfg.norm_unit_offset:
        return "gemma"
    if cfg.qk_norm:
        return "qwen3"
    if cfg.qkv_bias and not cfg.attn_out_bias:
        return "qwen2"
    if cfg.sliding_window:
        return "mistral"
    return "llama"


def config_to_hf(cfg: ModelConfig, model_type: Optional[str] = None, dtype: str = "float32",
                 head: Optional[dict] = None, labels: Optional[list] = None) -> dict:
    """A transformers config.json dict for `cfg` (with `head`, a task head's spec, and its
    `labels`: that task's class), verified by reading it back."""
    mt = model_type or infer_hf_model_type(cfg)
    if mt not in FAMILIES:
        raise LLMKitError(f"cannot export to model_type '{mt}' (supported: {', '.join(FAMILIES)})")
    family = FAMILIES[mt]
    task = head["task"] if head else "lm"
    if task != "lm" and task not in family.tasks:
        raise LLMKitError(f"a '{task}' head cannot be exported as Hugging Face '{mt}'")
    arch = family.arch(task)
    if task == "lm" and cfg.pooler and family.pretraining:
        arch = family.pretraining  # BERT's MLM + next-sentence heads
    elif task == "lm" and not cfg.causal and not cfg.lm_head_transform and family.base:
        arch = family.base  # a bare backbone (a BertModel, e.g. a sentence-embedding model): no LM head
    hf: dict = {"architectures": [arch], "model_type": mt, "vocab_size": cfg.vocab_size,
                "tie_word_embeddings": cfg.tie_embeddings if task == "lm" else family.tie_default,
                "torch_dtype": dtype, "use_cache": True}
    (family.sizes_to or _rope_sizes_to)(cfg, hf)
    hf.update({k: v for k, v in cfg.extra.items() if k in EXTRA_KEYS and k not in hf})
    for write in family.write:
        write(cfg, hf)
    if head is not None:
        _write_head(cfg, mt, head, labels, hf)
    # The round trip: what transformers will build from this dict must be our architecture.
    back = config_from_hf(hf, name=cfg.name)
    ignore = {"name", "hf_repo", "extra", "hf_model_type"}
    if head is not None:  # the vocabulary head's fields describe a layer a task model does not have
        ignore |= {"tie_embeddings", "lm_head_bias", "lm_head_transform", "pooler", "final_softcap"}
    diffs = [f.name for f in dataclasses.fields(cfg) if f.name not in ignore and _norm_field(cfg, f.name) != _norm_field(back, f.name)]
    if diffs:
        raise LLMKitError(f"this architecture cannot be expressed as Hugging Face '{mt}': it differs in {', '.join(diffs)}")
    return hf


def _write_head(cfg: ModelConfig, mt: str, head: dict, labels: Optional[list], hf: dict) -> None:
    """num_labels / id2label of a task head, refusing a head the HF class would build otherwise."""
    from llmkit.heads import head_spec

    names = list(labels) if labels else [f"LABEL_{i}" for i in range(head["n_out"])]
    if head["task"] == "span":
        names = ["LABEL_0", "LABEL_1"]
    hf.update(num_labels=len(names), id2label={str(i): n for i, n in enumerate(names)},
              label2id={n: i for i, n in enumerate(names)})
    key = FAMILIES[mt].pooling_key
    if key and head["task"] == "sequence":
        hf[key] = {"first": "cls", "mean": "mean"}.get(head.get("pool"), head.get("pool"))
    expected = head_spec(cfg, head["task"], head["n_out"], pool=head.get("pool") if key else None)
    if {k: head.get(k) for k in ("pool", "act", "norm")} != {k: expected[k] for k in ("pool", "act", "norm")}:
        raise LLMKitError(f"this {head['task']} head (pool={head.get('pool')}, act={head.get('act')}) cannot be "
                          f"expressed as Hugging Face '{mt}', whose head is pool={expected['pool']}, act={expected['act']}")


def hf_head(hf: Optional[dict], cfg: ModelConfig) -> Optional[dict]:
    """A transformers task checkpoint's head as llmkit's classifier.json ({"labels", "head"}), or
    None for a language model or a bare backbone."""
    from llmkit.heads import head_spec

    if not hf or cfg.hf_model_type not in FAMILIES:
        return None
    family = FAMILIES[cfg.hf_model_type]
    arch = (hf.get("architectures") or [family.architecture])[0]
    task = next((t for t, a in family.tasks.items() if a == arch), None)
    if task is None or task == "lm":
        return None
    id2label = hf.get("id2label") or {}
    n = int(hf.get("num_labels") or len(id2label) or 2)
    labels = [id2label.get(str(i), id2label.get(i, f"LABEL_{i}")) for i in range(n)]
    pool = None
    if task == "sequence" and family.pooling_key:
        pool = {"cls": "first", "mean": "mean"}.get(hf.get(family.pooling_key, "cls"))
    return {"labels": labels if task != "span" else ["start", "end"], "head": head_spec(cfg, task, n, pool)}


def generation_config(cfg: ModelConfig) -> dict:
    """generation_config.json for an exported model: its BOS/EOS/pad token ids."""
    return {k: v for k, v in cfg.extra.items() if k in EXTRA_KEYS}


def _norm_field(cfg: ModelConfig, name: str):
    v = getattr(cfg, name)
    if name == "head_dim":
        return cfg.head_size
    if name == "n_kv_heads":
        return cfg.kv_heads
    if name == "intermediate_size":
        return cfg.ffn_size
    if name == "attn_scale":
        return round(v if v is not None else cfg.head_size**-0.5, 6)
    if name == "sliding_window_every" and cfg.sliding_window is None:
        return None
    return v
