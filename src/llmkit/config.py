"""Model configuration: one frozen dataclass, every architectural difference an explicit field.

The model reads only these fields; it never checks a model's name (a family is a set of field
values, see `presets.py`). This module imports no torch so that configs can be listed,
validated and diffed cheaply.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Optional

from llmkit.errors import LLMKitError, read_json


@dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling.

    `llama3`: Llama 3.1's wavelength-dependent scaling (Meta's reference `apply_scaling`):
    long wavelengths are divided by `factor`, short ones kept, a smooth ramp between.
    `linear`: every frequency divided by `factor` (position interpolation, Chen et al. 2023).
    """

    type: Literal["llama3", "linear"] = "llama3"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_seq_len: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    name: str = "custom"
    # --- sizes -------------------------------------------------------------------------------
    vocab_size: int = 50257
    n_layer: int = 12
    n_embd: int = 768
    n_head: int = 12
    n_kv_heads: Optional[int] = None  # None = n_head (MHA); 1 = MQA; otherwise GQA
    head_dim: Optional[int] = None  # None = n_embd // n_head (Gemma/Qwen3 set it explicitly)
    intermediate_size: Optional[int] = None  # None = 4 * n_embd
    block_size: int = 1024  # longest sequence the model is used with (context length)
    n_encoder_layer: int = 0  # > 0: an encoder-decoder (T5, BART); n_layer counts the decoder's blocks
    # --- direction ---------------------------------------------------------------------------
    causal: bool = True  # False: an encoder (BERT), every token sees every other (padding masked)
    # --- positions ---------------------------------------------------------------------------
    pos: Literal["rope", "learned", "relative"] = "rope"  # relative: T5's bucketed attention bias
    pos_offset: int = 0  # learned positions start at this row (RoBERTa: padding_idx + 1 = 2)
    rope_theta: float = 10000.0
    rope_local_theta: Optional[float] = None  # RoPE base of the sliding-window layers (ModernBERT)
    rope_scaling: Optional[RopeScaling] = None
    rel_buckets: int = 32  # T5: relative-position buckets (half per direction in the encoder)
    rel_max_distance: int = 128  # T5: distances from here on share the last bucket
    type_vocab_size: int = 0  # token-type (segment) embeddings: BERT 2, RoBERTa 1, others 0
    # --- normalisation -----------------------------------------------------------------------
    norm: Literal["rms", "layer"] = "rms"
    norm_eps: float = 1e-5
    norm_position: Literal["pre", "post"] = "pre"  # post: x = norm(x + f(x)) (BERT, Vaswani 2017)
    embed_norm: bool = False  # a norm right after the embeddings (BERT, ModernBERT)
    final_norm: bool = True  # a norm after the last block (pre-norm models)
    first_attn_norm: bool = True  # ModernBERT: block 0 has no attention norm (the embedding norm is it)
    norm_unit_offset: bool = False  # Gemma: RMSNorm scales by (1 + w), weights stored around 0
    post_block_norms: bool = False  # Gemma 2: extra norms on the attention and MLP outputs
    qk_norm: bool = False  # Qwen3: RMSNorm on each head's queries and keys before RoPE
    # --- MLP ---------------------------------------------------------------------------------
    mlp: Literal["gelu", "relu", "swiglu", "geglu"] = "swiglu"  # relu: T5 v1.0
    gelu_approx: Literal["tanh", "none"] = "tanh"  # GELU flavour for `gelu` and `geglu`
    # --- biases and embeddings ---------------------------------------------------------------
    qkv_bias: bool = False  # bias on q, k, v projections (GPT-2, Qwen2)
    attn_out_bias: bool = False  # bias on the attention output projection (GPT-2)
    mlp_bias: bool = False  # biases in the MLP (GPT-2)
    norm_bias: bool = False  # LayerNorm with bias (GPT-2); RMSNorm never has one
    tie_embeddings: bool = False  # lm_head shares the token embedding matrix
    lm_head_bias: bool = False  # a bias on the output layer (BERT's MLM decoder)
    logit_bias: bool = False  # BART's final_logits_bias: a fixed bias on the logits (a buffer, not trained)
    lm_head_rescale: bool = False  # T5 v1.0: hidden states * n_embd**-0.5 before the (tied) lm_head
    lm_head_transform: bool = False  # dense -> GELU -> norm before lm_head (BERT's MLM transform)
    head_dense_bias: bool = True  # bias of that dense layer and of task-head ones (ModernBERT: none)
    pooler: bool = False  # BERT's pooler (dense + tanh on [CLS]) and next-sentence head are stored
    embed_scale: bool = False  # Gemma: multiply token embeddings by sqrt(n_embd)
    # --- attention ---------------------------------------------------------------------------
    attn_scale: Optional[float] = None  # None = 1/sqrt(head_dim); Gemma 2: query_pre_attn_scalar**-0.5
    attn_softcap: Optional[float] = None  # Gemma 2: tanh soft-capping of attention logits
    final_softcap: Optional[float] = None  # Gemma 2: tanh soft-capping of output logits
    sliding_window: Optional[int] = None  # local attention span in tokens (Mistral v0.1, Gemma 2)
    sliding_window_every: int = 1  # 1: every layer is local; 2: layers 0, 2, 4... (Gemma 2)
    global_every: Optional[int] = None  # instead: layers 0, k, 2k... global, the rest local (ModernBERT)
    # --- bookkeeping (never read by the model) -----------------------------------------------
    hf_model_type: Optional[str] = None  # HF `model_type` used by `convert to-hf`
    hf_repo: Optional[str] = None  # where the published weights live on the HF hub
    extra: dict = field(default_factory=dict, compare=False, hash=False)  # e.g. HF token ids

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise LLMKitError(f"invalid model config '{self.name}': {msg}")

        for f in ("vocab_size", "n_layer", "n_embd", "n_head", "block_size"):
            v = getattr(self, f)
            if not isinstance(v, int) or v <= 0:
                bad(f"{f} must be a positive integer, got {v!r}")
        if self.head_dim is None and self.n_embd % self.n_head:
            bad(f"n_embd ({self.n_embd}) is not divisible by n_head ({self.n_head}); set head_dim")
        if self.n_kv_heads is not None and (self.n_kv_heads <= 0 or self.n_head % self.n_kv_heads):
            bad(f"n_head ({self.n_head}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.pos == "rope" and self.head_size % 2:
            bad(f"RoPE needs an even head_dim, got {self.head_size}")
        if self.norm_unit_offset and self.norm != "rms":
            bad("norm_unit_offset applies to RMSNorm only")
        if self.norm_bias and self.norm != "layer":
            bad("norm_bias applies to LayerNorm only")
        if self.sliding_window is not None and self.sliding_window <= 0:
            bad("sliding_window must be positive")
        if self.sliding_window_every < 1:
            bad("sliding_window_every must be >= 1")
        if self.global_every is not None and self.global_every < 1:
            bad("global_every must be >= 1")
        if self.type_vocab_size < 0 or self.pos_offset < 0:
            bad("type_vocab_size and pos_offset must be >= 0")
        if self.pos_offset and self.pos != "learned":
            bad("pos_offset applies to learned positions only")
        if self.pooler and self.causal:
            bad("pooler applies to encoders (causal=false) only")
        if not isinstance(self.n_encoder_layer, int) or self.n_encoder_layer < 0:
            bad(f"n_encoder_layer must be an integer >= 0, got {self.n_encoder_layer!r}")
        if self.n_encoder_layer and not self.causal:
            bad("an encoder-decoder's decoder is causal: keep causal=true with n_encoder_layer > 0")
        if self.pos == "relative" and (self.rel_buckets < 2 or self.rel_max_distance < 1):
            bad("relative positions need rel_buckets >= 2 and rel_max_distance >= 1")
        for f in ("pos", "norm", "mlp", "gelu_approx", "norm_position"):
            allowed = _literal_values(f)
            if getattr(self, f) not in allowed:
                bad(f"{f} must be one of {allowed}, got {getattr(self, f)!r}")
        if isinstance(self.rope_scaling, dict):  # from JSON
            object.__setattr__(self, "rope_scaling", RopeScaling(**self.rope_scaling))

    # --- derived sizes -----------------------------------------------------------------------
    @property
    def head_size(self) -> int:
        return self.head_dim if self.head_dim is not None else self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_head

    @property
    def ffn_size(self) -> int:
        return self.intermediate_size if self.intermediate_size is not None else 4 * self.n_embd

    @property
    def is_encoder(self) -> bool:
        return not self.causal

    @property
    def is_seq2seq(self) -> bool:
        """An encoder-decoder: an encoder reads the source, a causal decoder writes the target
        and attends to the encoder's states through cross-attention (Vaswani et al. 2017)."""
        return self.n_encoder_layer > 0

    @property
    def kind(self) -> str:
        return "encoder-decoder" if self.is_seq2seq else ("encoder" if self.is_encoder else "decoder")

    def encoder_config(self) -> "ModelConfig":
        """The encoder half of an encoder-decoder: the same fields, bidirectional, its own depth."""
        return self.replace(causal=False, n_layer=self.n_encoder_layer, n_encoder_layer=0)

    def is_local_layer(self, i: int) -> bool:
        """Whether block `i` uses sliding-window attention."""
        if self.sliding_window is None:
            return False
        if self.global_every is not None:
            return i % self.global_every != 0
        return i % self.sliding_window_every == 0

    def flops_per_token(self, seq_len: Optional[int] = None) -> float:
        """Training FLOPs per token (forward + backward = 6N + attention), PaLM appendix B."""
        t = seq_len or self.block_size
        n = self.n_params_estimate(exclude_embeddings=True)
        attn = 12 * self.n_layer * self.n_head * self.head_size * t
        return 6 * n + attn

    def n_params_estimate(self, exclude_embeddings: bool = False) -> int:
        """Parameter count from the shapes alone (no torch); `model.count_params` is exact."""
        d, h = self.n_embd, self.head_size
        attn = d * h * (self.n_head + 2 * self.kv_heads) + self.n_head * h * d
        mlp = (3 if self.mlp in ("swiglu", "geglu") else 2) * d * self.ffn_size
        n = (self.n_layer + self.n_encoder_layer) * (attn + mlp)
        n += self.n_layer * attn * self.is_seq2seq  # the decoder's cross-attention
        n += (1 + self.is_seq2seq) * self.n_head * self.rel_buckets * (self.pos == "relative")  # T5's bias tables
        n += d * d * self.lm_head_transform + (d * d + 2 * d) * self.pooler  # MLM transform; pooler + NSP
        if not exclude_embeddings:
            n += self.vocab_size * d * (1 if self.tie_embeddings else 2) + self.type_vocab_size * d
        return n

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "ModelConfig":
        """A named preset (see `llmkit models`), with fields overridden: n_layer=2, ..."""
        from llmkit.presets import PRESETS

        key = name.lower()
        if key not in PRESETS:
            close = [p for p in PRESETS if key.split("-")[0] in p][:6]
            hint = f" (did you mean {', '.join(close)}?)" if close else " (see `llmkit models`)"
            raise LLMKitError(f"unknown model preset '{name}'{hint}")
        return cls.from_dict({**PRESETS[key], **overrides})

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - {"format", "llmkit_version"})
        if unknown:
            raise LLMKitError(f"unknown model config keys: {', '.join(unknown)}")
        d = {k: v for k, v in d.items() if k in known}
        if isinstance(d.get("rope_scaling"), dict):
            d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        d = read_json(path)
        try:
            return cls.from_dict(d)
        except LLMKitError as e:
            raise LLMKitError(f"{path}: {e}") from None
        except TypeError as e:
            raise LLMKitError(f"{path}: {e}") from None

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {"format": "llmkit", **d}


def _literal_values(name: str) -> tuple:
    import typing

    hint = typing.get_type_hints(ModelConfig)[name]
    return typing.get_args(hint)

