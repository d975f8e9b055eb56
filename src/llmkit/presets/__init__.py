"""Named architecture presets: published shapes and where their weights live. Data only.

A preset is a dict of `ModelConfig` fields. Families share a base dict so that each entry reads
as "what differs". Parameter counts are asserted in tests/test_presets.py against the numbers
the model cards publish.
"""

from __future__ import annotations

_GPT2 = dict(
    hf_model_type="gpt2", vocab_size=50257, block_size=1024, pos="learned", norm="layer",
    norm_eps=1e-5, norm_bias=True, mlp="gelu", gelu_approx="tanh", qkv_bias=True,
    attn_out_bias=True, mlp_bias=True, tie_embeddings=True,
)
_LLAMA = dict(hf_model_type="llama", pos="rope", norm="rms", mlp="swiglu", norm_eps=1e-5)
_LLAMA3_ROPE = dict(type="llama3", low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=8192)
_QWEN2 = dict(
    hf_model_type="qwen2", vocab_size=151936, pos="rope", norm="rms", mlp="swiglu",
    norm_eps=1e-6, rope_theta=1_000_000.0, qkv_bias=True, block_size=32768,
)
_QWEN3 = dict(
    hf_model_type="qwen3", vocab_size=151936, pos="rope", norm="rms", mlp="swiglu",
    norm_eps=1e-6, rope_theta=1_000_000.0, qk_norm=True, head_dim=128, block_size=40960,
    tie_embeddings=True,
)
_SMOLLM2 = dict(_LLAMA, vocab_size=49152, block_size=8192, tie_embeddings=True, rope_theta=100_000.0)
_GEMMA = dict(
    pos="rope", norm="rms", norm_unit_offset=True, mlp="geglu", gelu_approx="tanh",
    norm_eps=1e-6, embed_scale=True, tie_embeddings=True, vocab_size=256000, block_size=8192,
    head_dim=256,
)
# Encoders: bidirectional, post-norm, learned positions and token types (Devlin et al. 2019).
_BERT = dict(
    hf_model_type="bert", causal=False, vocab_size=30522, block_size=512, pos="learned", type_vocab_size=2,
    norm="layer", norm_eps=1e-12, norm_bias=True, norm_position="post", embed_norm=True, final_norm=False,
    mlp="gelu", gelu_approx="none", qkv_bias=True, attn_out_bias=True, mlp_bias=True, tie_embeddings=True,
    lm_head_bias=True, lm_head_transform=True, extra=dict(pad_token_id=0),
)
_ROBERTA = dict(_BERT, hf_model_type="roberta", vocab_size=50265, pos_offset=2, type_vocab_size=1, norm_eps=1e-5,
                extra=dict(pad_token_id=1, bos_token_id=0, eos_token_id=2))
_DISTILBERT = dict(_BERT, hf_model_type="distilbert", type_vocab_size=0)
# ModernBERT (Warner et al. 2024): pre-norm, RoPE, GeGLU, global attention every third layer.
_MODERNBERT = dict(
    hf_model_type="modernbert", causal=False, vocab_size=50368, block_size=8192, pos="rope",
    rope_theta=160_000.0, rope_local_theta=10_000.0, norm="layer", norm_eps=1e-5, embed_norm=True,
    first_attn_norm=False, mlp="geglu", gelu_approx="none", sliding_window=128, global_every=3,
    tie_embeddings=True, lm_head_bias=True, lm_head_transform=True, head_dense_bias=False,
    extra=dict(pad_token_id=50283, bos_token_id=50281, eos_token_id=50282, cls_token_id=50281, sep_token_id=50282),
)

# Encoder-decoders. T5 (Raffel et al. 2020): pre-norm RMSNorm, no biases, relative position bias,
# unscaled attention; v1.0 ReLU with a tied, rescaled head, v1.1 / Flan-T5 (Chung et al. 2022)
# gated GELU and an untied head. BART (Lewis et al. 2020): post-norm, learned positions from 2.
_T5 = dict(
    hf_model_type="t5", vocab_size=32128, block_size=512, pos="relative", norm="rms", norm_eps=1e-6,
    attn_scale=1.0, mlp="relu", tie_embeddings=True, lm_head_rescale=True,
    extra=dict(pad_token_id=0, eos_token_id=1, decoder_start_token_id=0),
)
_FLAN_T5 = dict(_T5, mlp="geglu", gelu_approx="tanh", tie_embeddings=False, lm_head_rescale=False, head_dim=64)
_BART = dict(
    hf_model_type="bart", vocab_size=50265, block_size=1024, pos="learned", pos_offset=2, norm="layer",
    norm_eps=1e-5, norm_bias=True, norm_position="post", embed_norm=True, final_norm=False, mlp="gelu",
    gelu_approx="none", qkv_bias=True, attn_out_bias=True, mlp_bias=True, tie_embeddings=True, logit_bias=True,
    extra=dict(pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2),
)

PRESETS: dict[str, dict] = {
    # --- GPT-2 (Radford et al. 2019) ---------------------------------------------------------
    "gpt2": dict(_GPT2, name="gpt2", n_layer=12, n_embd=768, n_head=12, hf_repo="openai-community/gpt2"),
    "gpt2-medium": dict(_GPT2, name="gpt2-medium", n_layer=24, n_embd=1024, n_head=16, hf_repo="openai-community/gpt2-medium"),
    "gpt2-large": dict(_GPT2, name="gpt2-large", n_layer=36, n_embd=1280, n_head=20, hf_repo="openai-community/gpt2-large"),
    "gpt2-xl": dict(_GPT2, name="gpt2-xl", n_layer=48, n_embd=1600, n_head=25, hf_repo="openai-community/gpt2-xl"),
    # --- Llama -------------------------------------------------------------------------------
    "llama-2-7b": dict(
        _LLAMA, name="llama-2-7b", vocab_size=32000, n_layer=32, n_embd=4096, n_head=32,
        intermediate_size=11008, block_size=4096, hf_repo="meta-llama/Llama-2-7b-hf",
    ),
    "llama-3.1-8b": dict(
        _LLAMA, name="llama-3.1-8b", vocab_size=128256, n_layer=32, n_embd=4096, n_head=32,
        n_kv_heads=8, intermediate_size=14336, block_size=131072, rope_theta=500_000.0,
        rope_scaling=dict(_LLAMA3_ROPE, factor=8.0), hf_repo="meta-llama/Llama-3.1-8B",
    ),
    "llama-3.2-1b": dict(
        _LLAMA, name="llama-3.2-1b", vocab_size=128256, n_layer=16, n_embd=2048, n_head=32,
        n_kv_heads=8, intermediate_size=8192, block_size=131072, rope_theta=500_000.0,
        rope_scaling=dict(_LLAMA3_ROPE, factor=32.0), tie_embeddings=True,
        hf_repo="meta-llama/Llama-3.2-1B",
    ),
    "llama-3.2-3b": dict(
        _LLAMA, name="llama-3.2-3b", vocab_size=128256, n_layer=28, n_embd=3072, n_head=24,
        n_kv_heads=8, intermediate_size=8192, block_size=131072, rope_theta=500_000.0,
        rope_scaling=dict(_LLAMA3_ROPE, factor=32.0), tie_embeddings=True,
        hf_repo="meta-llama/Llama-3.2-3B",
    ),
    "tinyllama-1.1b": dict(
        _LLAMA, name="tinyllama-1.1b", vocab_size=32000, n_layer=22, n_embd=2048, n_head=32,
        n_kv_heads=4, intermediate_size=5632, block_size=2048, hf_repo="TinyLlama/TinyLlama_v1.1",
    ),
    # --- Mistral -----------------------------------------------------------------------------
    "mistral-7b-v0.3": dict(
        _LLAMA, hf_model_type="mistral", name="mistral-7b-v0.3", vocab_size=32768, n_layer=32,
        n_embd=4096, n_head=32, n_kv_heads=8, intermediate_size=14336, block_size=32768,
        rope_theta=1_000_000.0, hf_repo="mistralai/Mistral-7B-v0.3",
    ),
    # --- Qwen --------------------------------------------------------------------------------
    "qwen2.5-0.5b": dict(
        _QWEN2, name="qwen2.5-0.5b", n_layer=24, n_embd=896, n_head=14, n_kv_heads=2,
        intermediate_size=4864, tie_embeddings=True, hf_repo="Qwen/Qwen2.5-0.5B",
    ),
    "qwen2.5-1.5b": dict(
        _QWEN2, name="qwen2.5-1.5b", n_layer=28, n_embd=1536, n_head=12, n_kv_heads=2,
        intermediate_size=8960, tie_embeddings=True, hf_repo="Qwen/Qwen2.5-1.5B",
    ),
    "qwen2.5-7b": dict(
        _QWEN2, name="qwen2.5-7b", vocab_size=152064, n_layer=28, n_embd=3584, n_head=28,
        n_kv_heads=4, intermediate_size=18944, hf_repo="Qwen/Qwen2.5-7B",
    ),
    "qwen3-0.6b": dict(
        _QWEN3, name="qwen3-0.6b", n_layer=28, n_embd=1024, n_head=16, n_kv_heads=8,
        intermediate_size=3072, hf_repo="Qwen/Qwen3-0.6B",
    ),
    "qwen3-1.7b": dict(
        _QWEN3, name="qwen3-1.7b", n_layer=28, n_embd=2048, n_head=16, n_kv_heads=8,
        intermediate_size=6144, hf_repo="Qwen/Qwen3-1.7B",
    ),
    # --- SmolLM2 (Hugging Face) ---------------------------------------------------------------
    "smollm2-135m": dict(
        _SMOLLM2, name="smollm2-135m", n_layer=30, n_embd=576, n_head=9, n_kv_heads=3,
        intermediate_size=1536, hf_repo="HuggingFaceTB/SmolLM2-135M",
    ),
    "smollm2-360m": dict(
        _SMOLLM2, name="smollm2-360m", n_layer=32, n_embd=960, n_head=15, n_kv_heads=5,
        intermediate_size=2560, hf_repo="HuggingFaceTB/SmolLM2-360M",
    ),
    "smollm2-1.7b": dict(
        _SMOLLM2, name="smollm2-1.7b", n_layer=24, n_embd=2048, n_head=32, n_kv_heads=32,
        intermediate_size=8192, rope_theta=130_000.0, hf_repo="HuggingFaceTB/SmolLM2-1.7B",
    ),
    # --- Phi-3 (Microsoft) --------------------------------------------------------------------
    "phi-3-mini-4k": dict(
        _LLAMA, hf_model_type="phi3", name="phi-3-mini-4k", vocab_size=32064, n_layer=32,
        n_embd=3072, n_head=32, intermediate_size=8192, block_size=4096, sliding_window=2047,
        hf_repo="microsoft/Phi-3-mini-4k-instruct",
    ),
    # --- Gemma (Google) -----------------------------------------------------------------------
    "gemma-2b": dict(
        _GEMMA, hf_model_type="gemma", name="gemma-2b", n_layer=18, n_embd=2048, n_head=8,
        n_kv_heads=1, intermediate_size=16384, hf_repo="google/gemma-2b",
    ),
    "gemma-2-2b": dict(
        _GEMMA, hf_model_type="gemma2", name="gemma-2-2b", n_layer=26, n_embd=2304, n_head=8,
        n_kv_heads=4, intermediate_size=9216, post_block_norms=True, attn_scale=256**-0.5,
        attn_softcap=50.0, final_softcap=30.0, sliding_window=4096, sliding_window_every=2,
        hf_repo="google/gemma-2-2b",
    ),
    # --- encoders: BERT (Google), RoBERTa (Meta), DistilBERT (Hugging Face), ModernBERT -------
    "bert-base-uncased": dict(_BERT, name="bert-base-uncased", n_layer=12, n_embd=768, n_head=12,
                              hf_repo="google-bert/bert-base-uncased"),
    "bert-large-uncased": dict(_BERT, name="bert-large-uncased", n_layer=24, n_embd=1024, n_head=16,
                               hf_repo="google-bert/bert-large-uncased"),
    "distilbert-base-uncased": dict(_DISTILBERT, name="distilbert-base-uncased", n_layer=6, n_embd=768, n_head=12,
                                    hf_repo="distilbert/distilbert-base-uncased"),
    "roberta-base": dict(_ROBERTA, name="roberta-base", n_layer=12, n_embd=768, n_head=12,
                         hf_repo="FacebookAI/roberta-base"),
    "roberta-large": dict(_ROBERTA, name="roberta-large", n_layer=24, n_embd=1024, n_head=16,
                          hf_repo="FacebookAI/roberta-large"),
    "modernbert-base": dict(_MODERNBERT, name="modernbert-base", n_layer=22, n_embd=768, n_head=12,
                            intermediate_size=1152, hf_repo="answerdotai/ModernBERT-base"),
    "modernbert-large": dict(_MODERNBERT, name="modernbert-large", n_layer=28, n_embd=1024, n_head=16,
                             intermediate_size=2624, hf_repo="answerdotai/ModernBERT-large"),
    # --- encoder-decoders ----------------------------------------------------------------------
    "t5-small": dict(_T5, name="t5-small", n_layer=6, n_encoder_layer=6, n_embd=512, n_head=8,
                     intermediate_size=2048, hf_repo="google-t5/t5-small"),
    "t5-base": dict(_T5, name="t5-base", n_layer=12, n_encoder_layer=12, n_embd=768, n_head=12,
                    intermediate_size=3072, hf_repo="google-t5/t5-base"),
    "flan-t5-small": dict(_FLAN_T5, name="flan-t5-small", n_layer=8, n_encoder_layer=8, n_embd=512, n_head=6,
                          intermediate_size=1024, hf_repo="google/flan-t5-small"),
    "flan-t5-base": dict(_FLAN_T5, name="flan-t5-base", n_layer=12, n_encoder_layer=12, n_embd=768, n_head=12,
                         intermediate_size=2048, hf_repo="google/flan-t5-base"),
    "flan-t5-large": dict(_FLAN_T5, name="flan-t5-large", n_layer=24, n_encoder_layer=24, n_embd=1024, n_head=16,
                          intermediate_size=2816, hf_repo="google/flan-t5-large"),
    "bart-base": dict(_BART, name="bart-base", n_layer=6, n_encoder_layer=6, n_embd=768, n_head=12,
                      intermediate_size=3072, hf_repo="facebook/bart-base"),
    "bart-large": dict(_BART, name="bart-large", n_layer=12, n_encoder_layer=12, n_embd=1024, n_head=16,
                       intermediate_size=4096, hf_repo="facebook/bart-large"),
    # --- tiny presets: tests, the quickstart, laptop pretraining -------------------------------
    "tiny-llama": dict(
        _LLAMA, name="tiny-llama", vocab_size=512, n_layer=2, n_embd=64, n_head=4, n_kv_heads=2,
        intermediate_size=128, block_size=256,
    ),
    "tiny-bert": dict(_BERT, name="tiny-bert", vocab_size=512, n_layer=2, n_embd=64, n_head=4, block_size=256),
    # ~6M parameters, the encoder the quickstart pretrains (`--arch bert`).
    "micro-bert": dict(_BERT, name="micro-bert", vocab_size=4096, n_layer=6, n_embd=256, n_head=8,
                       intermediate_size=1024, block_size=512),
    "tiny-t5": dict(_FLAN_T5, name="tiny-t5", vocab_size=512, n_layer=2, n_encoder_layer=2, n_embd=64, n_head=4,
                    head_dim=16, intermediate_size=128, block_size=256, rel_buckets=16, rel_max_distance=64),
    # ~8M parameters, the encoder-decoder the quickstart pretrains (`--arch t5`).
    "micro-t5": dict(_FLAN_T5, name="micro-t5", vocab_size=4096, n_layer=4, n_encoder_layer=4, n_embd=256,
                     n_head=8, head_dim=32, intermediate_size=640, block_size=512),
    "tiny-gpt2": dict(_GPT2, name="tiny-gpt2", vocab_size=512, n_layer=2, n_embd=64, n_head=4, block_size=256),
    # ~6M parameters: what 2 CPU cores pretrain to readable text in minutes.
    "micro-llama": dict(
        _LLAMA, name="micro-llama", vocab_size=4096, n_layer=6, n_embd=256, n_head=8,
        n_kv_heads=4, intermediate_size=768, block_size=512, tie_embeddings=True,
    ),
}
