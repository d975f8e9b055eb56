"""The transformer: one model for every supported family: decoders (GPT, Llama), encoders (BERT)
and encoder-decoders (T5, BART).

Reads top to bottom: norm -> RoPE -> relative bias -> attention (the KV cache: kv_cache.py) -> MLP -> block -> heads -> model.
Families differ only through `ModelConfig` fields (see config.py); nothing here checks a model's
name. An encoder is the same stack with `causal=False`: every token attends to every other one
that is not padding (Devlin et al. 2019), and a sliding window becomes symmetric (ModernBERT).

    tokens -> embed (* sqrt(d) if embed_scale) (+ learned positions) (+ token types) (-> embed_norm)
           -> n_layer x Block, pre-norm (GPT-2, Llama, ModernBERT):
                  x = x + post_attn_norm(Attention(attn_norm(x)))      # post_* only in Gemma 2
                  x = x + post_mlp_norm(MLP(mlp_norm(x)))
              or post-norm (BERT, Vaswani et al. 2017):
                  x = attn_norm(x + Attention(x));  x = mlp_norm(x + MLP(x))
           -> norm (pre-norm only) -> [lm_transform: dense -> GELU -> norm, BERT's MLM head]
           -> lm_head (tied to embed if tie_embeddings) -> softcap -> logits
              or a TaskHead (classification, tagging, QA spans): pool -> dense -> act -> (N, d)

An encoder-decoder (`n_encoder_layer` > 0) is two Stacks sharing the token embedding: the
encoder (bidirectional) reads the source; the decoder's blocks add a cross-attention between
self-attention and MLP, the same Attention module with keys/values from the encoder's states
(written once per request into the KV cache when decoding). T5's relative position bias is one
table per stack added to every layer's logits.

Positions are explicit: `forward(idx, input_pos, cache)`. Row b's token t sits at position
`input_pos[b, t]` and its keys/values are written to cache slot `input_pos[b, t]`, so rows of a
batch may be at different positions (right-padded prompts, continuous batching) and still get
exactly the positions, and therefore the tokens, they would get alone.
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmkit.config import ModelConfig
from llmkit.cross_entropy import IGNORE_INDEX, linear_cross_entropy
from llmkit.hardware import cpu_attention_in_float32
from llmkit.kv_cache import KVCache  # the preallocated cache (re-exported: `from llmkit.model import KVCache`)


# --- normalisation ------------------------------------------------------------------------------
class Norm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019) or LayerNorm, per `cfg.norm`.

    RMSNorm normalises in float32 like the reference implementations (HF LlamaRMSNorm); with
    `norm_unit_offset` (Gemma) the scale is (1 + w) and w is stored around zero.
    """

    def __init__(self, dim: int, cfg: ModelConfig):
        super().__init__()
        self.kind, self.eps, self.unit_offset = cfg.norm, cfg.norm_eps, cfg.norm_unit_offset
        self.weight = nn.Parameter(torch.zeros(dim) if cfg.norm_unit_offset else torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if cfg.norm_bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "layer":
            return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)
        normed = F.rms_norm(x.float(), self.weight.shape, eps=self.eps)
        if self.unit_offset:  # Gemma multiplies in float32, then casts
            return (normed * (1.0 + self.weight.float())).type_as(x)
        return self.weight * normed.type_as(x)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight) if self.unit_offset else nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


# --- rotary position embedding (Su et al. 2021) -------------------------------------------------
def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies theta^(-2i/d), with Llama 3.1 or linear scaling applied."""
    d = cfg.head_size
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    s = cfg.rope_scaling
    if s is None:
        return inv_freq
    if s.type == "linear":
        return inv_freq / s.factor
    # Llama 3.1: keep high frequencies, divide low ones by `factor`, interpolate in between
    # (Meta's llama-models `apply_scaling`).
    low_wavelen = s.original_max_seq_len / s.low_freq_factor
    high_wavelen = s.original_max_seq_len / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_seq_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)


def rope_cos_sin(inv_freq: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin for positions `pos` (B, T) -> each (B, 1, T, head_dim), computed in float32."""
    freqs = pos[..., None].float() * inv_freq  # (B, T, head_dim/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, head_dim): halves layout, as HF checkpoints
    return emb.cos()[:, None], emb.sin()[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i+d/2}); x is (B, H, T, head_dim)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def rope_tables(cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse frequencies of the global layers and of the sliding-window ones (ModernBERT
    gives its local layers their own base, `rope_local_theta`; otherwise the two are equal)."""
    local = cfg.replace(rope_theta=cfg.rope_local_theta) if cfg.rope_local_theta is not None else cfg
    return rope_inv_freq(cfg), rope_inv_freq(local)


class RelativeBias(nn.Module):
    """T5's relative position bias (Raffel et al. 2020, sec. 2.1): one learned scalar per head and
    bucket of (key position - query position), added to the attention logits of every layer of a
    stack (one table per stack, shared by its layers). Half the buckets are exact distances, the
    other half logarithmically wider up to `rel_max_distance`, beyond which all share the last;
    an encoder gives each direction half the buckets, a decoder's queries see only the past."""

    def __init__(self, cfg: ModelConfig, bidirectional: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(cfg.rel_buckets, cfg.n_head))
        self.bidirectional, self.max_distance = bidirectional, cfg.rel_max_distance

    def buckets(self, rel: torch.Tensor) -> torch.Tensor:
        n, out = self.weight.shape[0], torch.zeros_like(rel)
        if self.bidirectional:
            n //= 2
            out = (rel > 0).long() * n  # keys ahead of the query get the upper half
            dist = rel.abs()
        else:
            dist = (-rel).clamp(min=0)  # only the past; future keys are masked anyway
        exact = n // 2
        # Distances exact..max_distance spread over the remaining buckets on a log scale (float32
        # and math.log as mesh-tensorflow computes it, so boundaries fall on the same integers).
        far = exact + (torch.log(dist.float() / exact) / math.log(self.max_distance / exact) * (n - exact)).long()
        return out + torch.where(dist < exact, dist, far.clamp(max=n - 1))

    def forward(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """Bias (B|1, n_head, T, S) for query positions (B|1, T) and key positions (B|1, S)."""
        rel = k_pos[:, None, :] - q_pos[:, :, None]  # (B, T, S)
        return F.embedding(self.buckets(rel), self.weight).permute(0, 3, 1, 2)


def attention_mask_for(q_pos: torch.Tensor, k_pos: torch.Tensor, window: Optional[int], causal: bool = True,
                   key_valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Boolean mask (B, 1, T, S) from query positions (B|1, T) and key positions (B|1, S).

    Causal: a key at position j is visible to a query at position p iff j <= p and (no window
    or p - j < window). Bidirectional (encoders): every key, or with a window those with
    |p - j| <= window // 2 (ModernBERT's `local_attention` is the whole span, half each side).
    `key_valid` (B, S), False at padding, hides those keys from every query."""
    diff = q_pos[:, None, :, None] - k_pos[:, None, None, :]  # (B, 1, T, S)
    if causal:
        mask = diff >= 0
        if window is not None:
            mask &= diff < window
    else:
        mask = diff.abs() <= window // 2 if window is not None else torch.ones_like(diff, dtype=torch.bool)
    if key_valid is not None:
        mask = mask & key_valid[:, None, None, :].bool()  # (B, 1, T, S)
    return mask


# --- attention ----------------------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head attention with grouped key/value heads.

        n_head query heads share n_kv_heads key/value heads in groups of n_head // n_kv_heads:
        q: [h0 h1 | h2 h3 | h4 h5 | h6 h7]     (GQA, n_head=8, n_kv_heads=4)
        k:  [ k0  |  k1   |  k2   |  k3  ]     MHA: n_kv_heads = n_head; MQA: n_kv_heads = 1

    With `cross=True` it is an encoder-decoder's cross-attention: queries from the decoder, keys
    and values from the encoder's states (`memory`), or from the cache, where they are written
    once per request; no positions, no causal mask, padding of the source hidden.
    """

    def __init__(self, cfg: ModelConfig, layer_idx: int, cross: bool = False):
        super().__init__()
        d, hd = cfg.n_embd, cfg.head_size
        self.n_head, self.n_kv, self.hd = cfg.n_head, cfg.kv_heads, hd
        self.q = nn.Linear(d, cfg.n_head * hd, bias=cfg.qkv_bias)
        self.k = nn.Linear(d, cfg.kv_heads * hd, bias=cfg.qkv_bias)
        self.v = nn.Linear(d, cfg.kv_heads * hd, bias=cfg.qkv_bias)
        self.o = nn.Linear(cfg.n_head * hd, d, bias=cfg.attn_out_bias)
        self.q_norm = Norm(hd, cfg) if cfg.qk_norm else None
        self.k_norm = Norm(hd, cfg) if cfg.qk_norm else None
        self.cross = cross
        self.rope = cfg.pos == "rope" and not cross
        self.causal = cfg.causal and not cross
        self.scale = cfg.attn_scale if cfg.attn_scale is not None else hd**-0.5
        self.softcap = cfg.attn_softcap
        self.window = cfg.sliding_window if cfg.is_local_layer(layer_idx) and not cross else None
        self.layer_idx = layer_idx
        # bf16 attention on this CPU run in float32 when that is faster (measured once per process)
        self.cpu_fp32 = cpu_attention_in_float32(hd)

    def kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, n_kv, S, hd) of inputs x (B, S, d)."""
        B, S, _ = x.shape
        k = self.k(x).view(B, S, self.n_kv, self.hd).transpose(1, 2)  # (B, n_kv, S, hd)
        v = self.v(x).view(B, S, self.n_kv, self.hd).transpose(1, 2)  # (B, n_kv, S, hd)
        return (self.k_norm(k) if self.k_norm is not None else k), v

    def forward(self, x, rope, pos, mask, cache: Optional[KVCache], memory: Optional[torch.Tensor] = None):
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_head, self.hd).transpose(1, 2)  # (B, n_head, T, hd)
        if self.q_norm is not None:  # Qwen3: per-head RMSNorm before RoPE
            q = self.q_norm(q)
        if self.cross:  # keys/values from the encoder's states, or computed once into the cache
            if memory is not None:
                k, v = self.kv(memory)  # (B, n_kv, S, hd)
            else:
                k, v = cache.cross_kv(self.layer_idx, B)
            m = mask.get("cross")  # None: every source token is real
        else:
            k, v = self.kv(x)  # (B, n_kv, T, hd)
            if self.rope:
                cos, sin = rope[self.window is not None]  # (global, local) tables
                q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            if cache is not None:
                k, v = cache.update(self.layer_idx, pos, k, v)  # (B, n_kv, kv_len, hd)
            m = mask[self.window]  # None: causal (or, in an encoder, every key); T == 1: sees all
        if self.softcap is None:
            # bf16/fp16 on CPU: PyTorch's reduced-precision SDPA kernel costs 60-140 us a call for
            # one query (~4 ms a token for 30 layers), float32 18-27 us casts included; in training
            # float32 forward + backward was 1.2-2x faster too where `cpu_fp32` (measured) says so.
            # float32 is the more exact of the two; the output keeps q's dtype.
            fp32 = q.device.type == "cpu" and q.element_size() < 4 and (T == 1 or self.cpu_fp32)
            dt = torch.float32 if fp32 else q.dtype
            if m is not None and m.dtype != torch.bool:  # T5's position bias, -inf where masked
                m = m.to(dt)
            with torch.autocast("cpu", enabled=False) if fp32 else contextlib.nullcontext():  # autocast would cast back
                y = F.scaled_dot_product_attention(
                    q.to(dt), k.to(dt), v.to(dt), attn_mask=m, is_causal=self.causal and m is None and T > 1,
                    scale=self.scale, enable_gqa=self.n_kv != self.n_head,
                ).to(q.dtype)
        else:  # Gemma 2: tanh soft-capped logits; SDPA cannot express this
            y = self._softcapped(q, k.to(q.dtype), v.to(q.dtype), m)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.hd)  # (B, T, n_head * hd)
        return self.o(y)

    def _softcapped(self, q, k, v, mask) -> torch.Tensor:
        rep = self.n_head // self.n_kv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # (B, n_head, S, hd)
        scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, n_head, T, S)
        scores = torch.tanh(scores / self.softcap) * self.softcap
        if mask is None and self.causal:
            T, S = scores.shape[-2:]
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        return torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype) @ v


# --- MLP ----------------------------------------------------------------------------------------
class MLP(nn.Module):
    """GELU (GPT-2) or ReLU (T5 v1.0) MLP, or gated: SwiGLU (Llama) / GeGLU (Gemma, T5 v1.1), Shazeer 2020."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, f = cfg.n_embd, cfg.ffn_size
        self.gated = cfg.mlp in ("swiglu", "geglu")
        self.gate = nn.Linear(d, f, bias=cfg.mlp_bias) if self.gated else None
        self.up = nn.Linear(d, f, bias=cfg.mlp_bias)
        self.down = nn.Linear(f, d, bias=cfg.mlp_bias)
        self.act = {"swiglu": F.silu, "relu": F.relu}.get(cfg.mlp) or (lambda t: F.gelu(t, approximate=cfg.gelu_approx))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.down(self.act(self.gate(x)) * self.up(x))
        return self.down(self.act(self.up(x)))


# --- block and model ----------------------------------------------------------------------------
class Block(nn.Module):
    """Self-attention -> [cross-attention, in an encoder-decoder's decoder] -> MLP, each with its
    norm before (pre-norm) or after the residual sum (post-norm)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int, cross: bool = False):
        super().__init__()
        first_bare = layer_idx == 0 and not cfg.first_attn_norm  # ModernBERT: the embedding norm is it
        self.attn_norm = nn.Identity() if first_bare else Norm(cfg.n_embd, cfg)
        self.attn = Attention(cfg, layer_idx)
        self.cross_norm = Norm(cfg.n_embd, cfg) if cross else None
        self.cross_attn = Attention(cfg, layer_idx, cross=True) if cross else None
        self.mlp_norm = Norm(cfg.n_embd, cfg)
        self.mlp = MLP(cfg)
        self.post_attn_norm = Norm(cfg.n_embd, cfg) if cfg.post_block_norms else nn.Identity()
        self.post_mlp_norm = Norm(cfg.n_embd, cfg) if cfg.post_block_norms else nn.Identity()
        self.post_norm = cfg.norm_position == "post"

    def forward(self, x, rope, pos, mask, cache=None, memory=None):
        if self.post_norm:  # BERT, BART: the norms sit on the residual stream, after each sum
            x = self.attn_norm(x + self.attn(x, rope, pos, mask, cache))
            if self.cross_attn is not None:
                x = self.cross_norm(x + self.cross_attn(x, rope, pos, mask, cache, memory))
            return self.mlp_norm(x + self.mlp(x))
        x = x + self.post_attn_norm(self.attn(self.attn_norm(x), rope, pos, mask, cache))
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.cross_norm(x), rope, pos, mask, cache, memory)
        return x + self.post_mlp_norm(self.mlp(self.mlp_norm(x)))


# --- heads --------------------------------------------------------------------------------------
_ACTS = {"tanh": torch.tanh, "relu": F.relu, "gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh")}


class HeadTransform(nn.Module):
    """dense -> act -> norm, the transform before BERT's MLM decoder (and ModernBERT's heads)."""

    def __init__(self, cfg: ModelConfig, act: str, norm: bool = True):
        super().__init__()
        self.dense = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.head_dense_bias)
        self.act = _ACTS[act]
        self.norm = Norm(cfg.n_embd, cfg) if norm else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.act(self.dense(h))
        return self.norm(h) if self.norm is not None else h


class TaskHead(nn.Module):
    """A task's output layer in place of `lm_head`: pool -> [dense -> act -> norm] -> (N, d).

    pool: "first" ([CLS], BERT), "last" (the last real token, a causal model's classifier),
    "mean" (over real tokens), or None: every position (token tagging; QA start/end, N = 2).
    act: None, or the hidden layer's activation: BERT's pooler and RoBERTa's classifier "tanh",
    DistilBERT's pre-classifier "relu", ModernBERT's head "gelu" (with its norm). The projection
    is this module's own `weight`/`bias`, so a plain classifier stores `lm_head.weight` as before."""

    def __init__(self, cfg: ModelConfig, n_out: int, pool: Optional[str] = None, act: Optional[str] = None,
                 norm: bool = False):
        super().__init__()
        if pool not in (None, "first", "last", "mean"):
            raise ValueError(f"unknown pooling '{pool}'")
        self.pool, self.n_out = pool, n_out
        self.transform = HeadTransform(cfg, act, norm) if act is not None else None
        self.weight = nn.Parameter(torch.empty(n_out, cfg.n_embd))
        self.bias = nn.Parameter(torch.zeros(n_out))
        if self.weight.device.type != "meta":  # the model's own init (GPT-2), not kaiming
            nn.init.normal_(self.weight, std=0.02)
            if self.transform is not None:
                nn.init.normal_(self.transform.dense.weight, std=0.02)
                if self.transform.dense.bias is not None:
                    nn.init.zeros_(self.transform.dense.bias)

    def forward(self, h: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, T, d) hidden states, (B, T) mask (1 = real token) -> (B, N) pooled or (B, T, N)."""
        B, T, _ = h.shape
        if self.pool == "first":
            h = h[:, 0]  # (B, d)
        elif self.pool == "last":  # right-padded rows: the last real token
            last = mask.sum(1) - 1 if mask is not None else torch.full((B,), T - 1, device=h.device)
            h = h[torch.arange(B, device=h.device), last]  # (B, d)
        elif self.pool == "mean":
            m = (mask if mask is not None else torch.ones(B, T, device=h.device))[..., None].to(h.dtype)
            h = (h * m).sum(1) / m.sum(1).clamp(min=1)  # (B, d)
        if self.transform is not None:
            h = self.transform(h)
        return F.linear(h, self.weight.to(h.dtype), self.bias.to(h.dtype))


class Stack(nn.Module):
    """positions -> [embed_norm] -> blocks -> [final norm], over embedded tokens: a decoder, an
    encoder, or one half of an encoder-decoder (whose decoder blocks also cross-attend to the
    encoder's states). `Transformer` is a Stack with the token embedding and the heads."""

    def _build_stack(self, cfg: ModelConfig, cross: bool = False) -> None:
        d = cfg.n_embd
        self.cfg = cfg
        self.pos_embed = nn.Embedding(cfg.block_size + cfg.pos_offset, d) if cfg.pos == "learned" else None
        self.type_embed = nn.Embedding(cfg.type_vocab_size, d) if cfg.type_vocab_size else None
        self.embed_norm = Norm(d, cfg) if cfg.embed_norm else None
        self.blocks = nn.ModuleList(Block(cfg, i, cross) for i in range(cfg.n_layer))
        self.norm = Norm(d, cfg) if cfg.final_norm else nn.Identity()
        self.rel_bias = RelativeBias(cfg, bidirectional=not cfg.causal) if cfg.pos == "relative" else None
        inv_freq, inv_freq_local = rope_tables(cfg)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("inv_freq_local", inv_freq_local, persistent=False)
        self.gradient_checkpointing = False

    def run(
        self,
        x: torch.Tensor,
        input_pos: Optional[torch.Tensor] = None,
        cache: Optional[KVCache] = None,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        memory: Optional[torch.Tensor] = None,
        memory_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Embedded tokens x (B, T, d) -> final-normed hidden states (B, T, d); see hidden_states."""
        B, T, _ = x.shape
        dev = x.device
        if input_pos is None:
            if cache is not None:
                raise ValueError("input_pos is required with a KV cache")
            pos = torch.arange(T, device=dev)[None]  # (1, T)
        else:
            pos = input_pos if input_pos.dim() == 2 else input_pos[None]  # (B|1, T)
        if self.pos_embed is not None:
            x = x + self.pos_embed(pos + self.cfg.pos_offset if self.cfg.pos_offset else pos)
        if self.type_embed is not None:
            types = token_type_ids if token_type_ids is not None else torch.zeros(B, T, dtype=torch.long, device=dev)
            x = x + self.type_embed(types)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        rope = {}  # {is_local: (cos, sin)}
        if self.cfg.pos == "rope":
            for local, inv_freq in ((False, self.inv_freq), (True, self.inv_freq_local)):
                cos, sin = rope_cos_sin(inv_freq, pos)
                if not torch.is_autocast_enabled(dev.type):
                    # Cast once here, not twice per layer in apply_rope (same values; under
                    # autocast q/k's dtype is not x's, so apply_rope casts).
                    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
                rope[local] = (cos, sin)
                if self.cfg.rope_local_theta is None:
                    rope[True] = rope[False]
                    break

        # Masks per window size; None = plain causal (SDPA's fused is_causal path).
        masks: dict = {}
        if cache is not None:  # keys live in slots 0..kv_len-1, slot == position
            cache.kv_len = int(pos.max()) + 1
            if cache.kv_len > cache.max_len:
                raise ValueError(f"position {cache.kv_len - 1} is past the KV cache ({cache.max_len})")
            k_pos = torch.arange(cache.kv_len, device=dev)[None]
        else:
            k_pos = pos
        causal = self.cfg.causal
        if attention_mask is not None and cache is not None:
            raise ValueError("attention_mask is for whole sequences; with a KV cache, positions say what is seen")
        padded = attention_mask is not None and not bool(attention_mask.all())  # all real: the fused paths
        bias = self.rel_bias(pos, k_pos).to(x.dtype) if self.rel_bias is not None else None  # (B|1, H, T, S)
        for w in {blk.attn.window for blk in self.blocks}:
            span = w if causal or w is None else w // 2 + 1  # how far a key may be and still be seen
            plain = cache is None and input_pos is None and not padded and (w is None or span >= T)
            # Decoding one token with every row at the newest position (batch 1): each query
            # sees every cached key (the window too), so no mask is built or applied.
            one_query = cache is not None and T == 1 and pos.shape[0] == 1 and not padded \
                and (w is None or cache.kv_len <= w)
            # A position bias goes in as an additive mask, which then carries the causal mask too.
            bare = one_query or (plain and (bias is None or not causal))
            m = None if bare else attention_mask_for(pos, k_pos, w, causal, attention_mask if padded else None)
            masks[w] = m if bias is None else (bias if m is None else bias.masked_fill(~m, float("-inf")))
        if self.blocks[0].cross_attn is not None:  # which source tokens the decoder may see
            valid = memory_mask if memory is not None else cache.src_valid[:B, : cache.shared["src_len"]]
            masks["cross"] = None if valid is None or bool(valid.all()) else valid[:, None, None, :].bool()

        for blk in self.blocks:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(blk, x, rope, pos, masks, None, memory, use_reentrant=False)
            else:
                x = blk(x, rope, pos, masks, cache, memory)
        return self.norm(x)


class Encoder(Stack):
    """The encoder half of an encoder-decoder (its token embedding is the model's, shared)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self._build_stack(cfg)


class Transformer(Stack):
    """The model: token embedding -> Stack -> head. With `cfg.n_encoder_layer` > 0 an
    encoder-decoder (T5, BART): `self.encoder` reads the source, this stack is the decoder.

        source ids -> embed -> encoder (bidirectional) -> memory (B, S, d) ----------.
        target ids -> embed -> decoder blocks: self-attention (causal) -> cross-attention -> MLP
                   -> norm -> lm_head -> logits
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.n_embd
        self.embed = nn.Embedding(cfg.vocab_size, d)
        self._build_stack(cfg, cross=cfg.is_seq2seq)
        # BERT's pretraining heads: the pooler (dense + tanh on [CLS]) and next-sentence prediction.
        self.pooler = nn.Linear(d, d) if cfg.pooler else None
        self.nsp_head = nn.Linear(d, 2) if cfg.pooler else None
        self.lm_transform = HeadTransform(cfg, "gelu" if cfg.gelu_approx == "none" else "gelu_tanh") \
            if cfg.lm_head_transform else None
        self.lm_head: nn.Module = nn.Linear(d, cfg.vocab_size, bias=cfg.lm_head_bias)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        if cfg.logit_bias:  # BART keeps it out of training (a buffer in fairseq and transformers)
            self.register_buffer("logit_bias", torch.zeros(cfg.vocab_size))
        self.encoder = Encoder(cfg.encoder_config()) if cfg.is_seq2seq else None
        self.init_weights()

    @property
    def max_seq_len(self) -> int:
        return self.cfg.block_size

    def init_weights(self) -> None:
        """GPT-2 init: N(0, 0.02), residual output projections scaled by 1/sqrt(2 n_layer)."""
        std = 0.02
        for name, p in self.named_parameters():
            if p.device.type == "meta":
                return
            if name.endswith(".bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                s = std / math.sqrt(2 * self.cfg.n_layer) if name.endswith(("attn.o.weight", "mlp.down.weight")) else std
                nn.init.normal_(p, mean=0.0, std=s)
        for m in self.modules():
            if isinstance(m, Norm):
                m.reset_parameters()

    def _embed(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)  # (B, T, d)
        if self.cfg.embed_scale:  # Gemma: the scale is rounded to x's dtype, as in the reference
            x = x * torch.tensor(self.cfg.n_embd**0.5, dtype=x.dtype)
        return x

    def hidden_states(
        self,
        idx: torch.Tensor,
        input_pos: Optional[torch.Tensor] = None,
        cache: Optional[KVCache] = None,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        memory: Optional[torch.Tensor] = None,
        memory_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Final-normed hidden states (B, T, n_embd); `forward` applies the head to them.

        idx: (B, T) token ids. input_pos: (T,) or (B, T) positions, default 0..T-1.
        cache: a KVCache to read and extend (positions then index its slots).
        attention_mask: (B, T), 1 at real tokens and 0 at padding, whose keys no query sees.
        token_type_ids: (B, T) segment ids (BERT's sentence A = 0 / B = 1), default 0.
        memory, memory_mask: an encoder-decoder's encoder states (B, S, d) and source mask (B, S);
        with a cache that holds them (`prefill_source`), neither is needed.
        """
        if self.encoder is not None and memory is None and (cache is None or not cache.shared["src_len"]):
            raise ValueError("an encoder-decoder needs its source: forward(idx, src=..., src_mask=...)")
        return self.run(self._embed(idx), input_pos, cache, attention_mask, token_type_ids, memory, memory_mask)

    def encode(self, src: torch.Tensor, src_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """An encoder-decoder's encoder states (B, S, d) for source ids (B, S) (mask: 1 = real)."""
        if self.encoder is None:
            raise ValueError("this model has no encoder (config n_encoder_layer = 0)")
        return self.encoder.run(self._embed(src), attention_mask=src_mask)

    def prefill_source(self, src: torch.Tensor, src_mask: Optional[torch.Tensor], cache: KVCache) -> None:
        """Run the encoder once and write every decoder layer's cross-attention keys/values (and
        the source mask) into the first rows of `cache`: decoding then needs only target tokens."""
        memory = self.encode(src, src_mask)  # (B, S, d)
        for i, blk in enumerate(self.blocks):
            cache.write_cross(i, *blk.cross_attn.kv(memory))
        cache.set_source_mask(src_mask if src_mask is not None else torch.ones(src.shape, dtype=torch.bool,
                                                                                 device=src.device))

    def forward(
        self,
        idx: torch.Tensor,
        input_pos: Optional[torch.Tensor] = None,
        cache: Optional[KVCache] = None,
        last_only: bool = False,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        nsp: bool = False,
        predict: Optional[torch.Tensor] = None,
        pool: Optional[str] = None,
        src: Optional[torch.Tensor] = None,
        src_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
    ):
        """Logits (B, T, vocab), or (B, 1, vocab) for the last position with `last_only`.

        `labels` (B, T) (IGNORE_INDEX where no loss): the mean cross-entropy of those logits
        instead of the logits, computed block by block without holding them (cross_entropy.py);
        with `predict`, at the predicted positions only. Training losses call it so.

        With a TaskHead in place of lm_head: its logits, (B, N) pooled or (B, T, N).
        `predict`: (B, T) bool, logits (n, vocab) at those positions only: masked-LM training
        needs the ~15% masked ones, and the vocabulary projection is the costliest layer.
        `nsp`: (logits, next-sentence logits (B, 2)), BERT's two pretraining outputs at once
        (one forward, so DDP's hooks see both heads).
        `pool="mean"`: sentence embeddings (B, d) instead of logits, `mean_pool` over
        `attention_mask` (through forward, so DDP / FSDP / torch.compile see the call).
        `src`, `src_mask`: an encoder-decoder's source ids and mask (B, S); idx is then the
        decoder's input (the target shifted right). The encoder runs inside this call (one
        forward for DDP); when decoding, `prefill_source` puts it in the cache instead."""
        memory = self.encode(src, src_mask) if src is not None else None
        h = self.hidden_states(idx, input_pos, cache, attention_mask, token_type_ids, memory, src_mask)
        if pool is not None:
            if pool != "mean" or attention_mask is None:
                raise ValueError("pool='mean' with an attention_mask is the one pooling forward offers")
            return mean_pool(h, attention_mask)
        if isinstance(self.lm_head, TaskHead):
            if labels is not None:
                raise ValueError("labels= is for the language-model head; a task head's loss is its recipe's")
            return self.lm_head(h, attention_mask)
        if predict is not None:
            # The selected rows, their count rounded up to a multiple of 64 (the extra rows are
            # computed and dropped, or carry no loss): a new (n, vocab) shape every step made the
            # CPU allocator's resident memory grow by tens of MB a minute; a handful it reuses.
            rows = predict.flatten().nonzero().squeeze(1)  # (n,)
            n = rows.numel()
            rows = torch.cat([rows, rows.new_zeros(-n % 64)])
            hp = h.flatten(0, 1).index_select(0, rows)
            if labels is None:
                lm = self._lm_logits(hp)[:n]  # (n, vocab)
            else:
                lp = labels.flatten().index_select(0, rows)
                lm = self._lm_out(hp, torch.cat([lp[:n], lp.new_full((rows.numel() - n,), IGNORE_INDEX)]))
        if nsp:
            if self.nsp_head is None:
                raise ValueError("this model has no next-sentence head (config pooler=false)")
            pooled = torch.tanh(self.pooler(h[:, 0]))  # (B, d): [CLS]
            return (lm if predict is not None else self._lm_out(h, labels)), self.nsp_head(pooled)
        if predict is not None:
            return lm
        if last_only:
            # contiguous: on a strided (B, 1, d) view F.linear falls back to a batched matmul
            # that copies the whole output matrix once per row (~0.2 s for a 50k vocabulary).
            h = h[:, -1:].contiguous()
        return self._lm_out(h, labels)

    def _lm_out(self, h: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        """The logits of h, or with labels their mean cross-entropy: fused with the output
        layer when that is a plain linear map (not LoRA-wrapped, no softcap, no logit bias)."""
        if labels is None:
            return self._lm_logits(h)
        if type(self.lm_head) is nn.Linear and not self.cfg.logit_bias and self.cfg.final_softcap is None:
            return linear_cross_entropy(self._lm_input(h), self.lm_head.weight, self.lm_head.bias, labels)
        logits = self._lm_logits(h)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                               ignore_index=IGNORE_INDEX)

    def _lm_input(self, h: torch.Tensor) -> torch.Tensor:
        if self.lm_transform is not None:
            h = self.lm_transform(h)
        if self.cfg.lm_head_rescale:  # T5 v1.0 (Mesh TensorFlow): the tied embedding, rescaled
            h = h * self.cfg.n_embd**-0.5
        return h

    def _lm_logits(self, h: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(self._lm_input(h))
        if self.cfg.logit_bias:
            logits = logits + self.logit_bias.to(logits.dtype)
        if self.cfg.final_softcap is not None:  # Gemma 2
            logits = torch.tanh(logits / self.cfg.final_softcap) * self.cfg.final_softcap
        return logits

    def new_cache(self, batch_size: int, max_len: Optional[int] = None, dtype=None,
                  src_len: Optional[int] = None) -> KVCache:
        """A KV cache; an encoder-decoder's also holds sources of up to `src_len` tokens."""
        p = self.embed.weight
        src = (src_len or self.max_seq_len) if self.encoder is not None else 0
        return KVCache(self.cfg, batch_size, min(max_len or self.max_seq_len, self.max_seq_len), p.device,
                       dtype or p.dtype, src_len=src)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Sentence embeddings (B, d) in float32: the mean of the hidden states over real tokens
    (Reimers & Gurevych 2019, sec. 3), summed in float32, L2-normalised so that a dot product
    is the cosine similarity."""
    m = mask[..., None].float()  # (B, T, 1)
    emb = (hidden.float() * m).sum(1) / m.sum(1).clamp(min=1)
    return F.normalize(emb, dim=-1) if normalize else emb


# --- sizes --------------------------------------------------------------------------------------
def count_params(cfg: ModelConfig) -> int:
    """Exact parameter count (tied weights once), without allocating memory (meta device)."""
    with torch.device("meta"):
        model = Transformer(cfg)
    return sum(p.numel() for p in model.parameters())
