"""`llmkit plan`: how big, how many tokens, how long, how much money, will it fit, before training.

    model -> parameters and shape -> compute-optimal tokens (Hoffmann et al. 2022) -> FLOPs
          -> time on N devices at an MFU -> cost, energy, CO2
          -> memory per device (weights, gradients, optimizer, activations, logits), timeline peak
          -> fits? if not, what would (checkpointing, FSDP shards, LoRA, QLoRA); serving memory

Nothing is trained and nothing is allocated: the model is built on the meta device and the
finetuning method is applied to it as `llmkit finetune` applies it, so the counts of weights and
trainable parameters are llmkit's own, for any architecture it builds. The memory model follows
what llmkit's loop actually holds (training/loop.py: float32 master weights under bf16 autocast,
torch AdamW), checked against measured peaks of real training runs in tests/test_plan.py.
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from llmkit import hardware as hw
from llmkit.config import ModelConfig
from llmkit.errors import LLMKitError
from llmkit.lora import LoRAConfig

GIB = 2**30
DEFAULT_MFU = 0.40
DEFAULT_PUE = 1.2
DEFAULT_GRID = 480.0  # gCO2/kWh
HEADROOM = 0.10  # of device memory kept free for the CUDA context and allocator fragmentation
SEQ_LEN_CAP = 4096  # default sequence length: the model's context, at most this

# --- counts: "7B", "400M", "1.1e9", "3T" ---------------------------------------------------------
_SUFFIX = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def parse_count(text, what: str = "count") -> float:
    """A positive count written as a number (1.1e9, 400000000) or with a suffix K, M, B (or G), T."""
    s = str(text).strip().replace("_", "").replace(",", "")
    mult = 1.0
    if s and s[-1].lower() in _SUFFIX:
        mult, s = _SUFFIX[s[-1].lower()], s[:-1]
    try:
        value = float(s) * mult
    except ValueError:
        raise LLMKitError(f"{what} '{text}' is not a number like 7B, 400M, 3T or 1.1e9") from None
    if not math.isfinite(value) or value <= 0:
        raise LLMKitError(f"{what} must be positive, got '{text}'")
    return value


def _is_count(text: str) -> bool:
    try:
        parse_count(text)
        return True
    except LLMKitError:
        return False


# --- compute-optimal tokens: Hoffmann et al. 2022 ------------------------------------------------
# Table 3 of "Training Compute-Optimal Large Language Models" (Hoffmann et al. 2022, arXiv
# 2203.15556): parameters, FLOPs, tokens of a compute-optimal model (their Approach 1 fits).
HOFFMANN_TABLE3 = (
    (400e6, 1.92e19, 8.0e9), (1e9, 1.21e20, 20.2e9), (10e9, 1.23e22, 205.1e9), (67e9, 5.76e23, 1.5e12),
    (175e9, 3.85e24, 3.7e12), (280e9, 9.90e24, 5.9e12), (520e9, 3.43e25, 11.0e12), (1e12, 1.27e26, 21.2e12),
    (10e12, 1.30e28, 216.2e12),
)


def _table_nodes() -> list[tuple[float, float]]:
    """(log N, log D) nodes of Table 3. Its rows satisfy FLOPs = 6ND to within 1%, except the
    67B row: 6 x 67e9 x 1.5e12 = 6.03e23 against the 5.76e23 printed (4.7% apart; the FLOPs
    column gives 1.43T tokens). Each node takes the geometric mean of the two readings of D
    (the tokens column and FLOPs / 6N), so both columns are met within 2.4% at every row,
    where picking either reading alone misses the other column by 4.7% at 67B."""
    return [(math.log(n), 0.5 * (math.log(d) + math.log(c / (6 * n)))) for n, c, d in HOFFMANN_TABLE3]


def compute_optimal_tokens(n_params: float) -> float:
    """Compute-optimal training tokens for a model of `n_params` (all parameters, as Hoffmann et
    al. count them): Table 3 interpolated linearly in log-log, extrapolated beyond its ends with
    the slope of the end segment (~20 tokens per parameter at the small end, growing slowly:
    20.0 at 400M, 22 at 10T; a flat 20 is 11% short of the table at 67B)."""
    nodes = _table_nodes()
    x = math.log(n_params)
    i = 0 if x <= nodes[1][0] else len(nodes) - 2 if x >= nodes[-2][0] else \
        next(j for j in range(len(nodes) - 1) if nodes[j][0] <= x <= nodes[j + 1][0])
    (x0, y0), (x1, y1) = nodes[i], nodes[i + 1]
    return math.exp(y0 + (y1 - y0) * (x - x0) / (x1 - x0))


# --- the model: preset, config file, checkpoint, or a parameter count ---------------------------
@dataclass
class ModelSpec:
    cfg: ModelConfig
    source: str  # preset | config file | checkpoint | parameter count
    asked: Optional[float] = None  # the parameter count asked for (a derived shape)
    note: str = ""


VOCAB = 32000  # Llama / Llama 2's vocabulary, for a shape derived from a parameter count


def derive_shape(n_params: float) -> ModelConfig:
    """A Llama-like decoder of about `n_params` parameters, so that activations, attention
    FLOPs and the KV cache can be estimated: RMSNorm, RoPE, SwiGLU, multi-head attention, an
    untied 32,000-token vocabulary, width ~128 x depth (Llama 2 7B: 32 x 4096, 13B: 40 x 5120;
    GPT-3 175B: 96 x 12288), head_dim 64 below d = 2048 and 128 from there, and the MLP width
    (Llama's 8/3 d) solved for so that the count lands within a fraction of a percent."""
    best = None
    for n_layer in range(1, 257):
        # N ~ 12 L d^2 + 2 V d (attention 4d^2, SwiGLU 3 * (8/3) d^2 per layer): solve for d.
        d = (-2 * VOCAB + math.sqrt(4 * VOCAB**2 + 48 * n_layer * n_params)) / (24 * n_layer)
        hd = 64 if d < 2048 else 128
        d = max(hd, round(d / hd) * hd)
        score = abs(math.log(d / (128 * n_layer)))
        if best is None or score < best[0]:
            best = (score, n_layer, d, hd)
    _, n_layer, d, hd = best
    attn = 4 * d * d
    ffn = max(8, round((n_params - 2 * VOCAB * d - n_layer * (attn + 2 * d) - d) / (3 * d * n_layer) / 8) * 8)
    return ModelConfig(name=f"llama-like-{_fmt_count(n_params)}", vocab_size=VOCAB, n_layer=n_layer, n_embd=d,
                       n_head=d // hd, intermediate_size=ffn, block_size=max(2048, SEQ_LEN_CAP // 2))


def resolve_model(spec: str) -> ModelSpec:
    """A preset name, a ModelConfig JSON/YAML file, a model or run directory, or a parameter count."""
    from llmkit.presets import PRESETS

    text = str(spec).strip()
    if text.lower() in PRESETS:
        return ModelSpec(ModelConfig.from_name(text), "preset")
    p = Path(text).expanduser()
    if p.is_dir():
        from llmkit.checkpoint import read_config

        if not (p / "config.json").exists() and (p / "final" / "config.json").exists():
            p = p / "final"
        return ModelSpec(read_config(p)[0], "checkpoint")
    if p.is_file():
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            try:
                d = yaml.safe_load(p.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError) as e:
                raise LLMKitError(f"{p}: not a readable YAML file ({e.__class__.__name__})") from None
            if not isinstance(d, dict):
                raise LLMKitError(f"{p}: expected a mapping of ModelConfig fields")
            try:
                return ModelSpec(ModelConfig.from_dict(d), "config file")
            except (LLMKitError, TypeError) as e:
                raise LLMKitError(f"{p}: {e}") from None
        return ModelSpec(ModelConfig.from_file(p), "config file")
    if _is_count(text):
        n = parse_count(text, "parameter count")
        if n < 1e6:
            raise LLMKitError(f"parameter count {text} is below 1M: give a preset or a config file for tiny models")
        cfg = derive_shape(n)
        note = (f"shape derived from {text}: Llama-like, {cfg.n_layer} layers x d {cfg.n_embd}, {cfg.n_head} heads of "
                f"{cfg.head_size}, SwiGLU MLP {cfg.ffn_size}, vocab {cfg.vocab_size} (untied), MHA")
        return ModelSpec(cfg, "parameter count", asked=n, note=note)
    from difflib import get_close_matches

    close = get_close_matches(text.lower(), list(PRESETS), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise LLMKitError(f"model '{spec}' is not a preset{hint}, a config file, a model directory or a parameter count "
                      "like 7B, 400M or 1.1e9")


# --- memory ---------------------------------------------------------------------------------------
@dataclass
class Memory:
    """Bytes per device of one training setting. `peak` comes from the timeline of a step
    (train_memory): the parts are not all alive at once, backward frees activations as it
    makes gradients."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    logits: float
    autocast_copies: float
    ddp_buckets: float = 0.0
    fsdp_working: float = 0.0
    peak: float = 0.0
    params: int = 0
    trainable: int = 0
    frozen_nonembedding: int = 0
    forward_saved: float = 0.0  # what autograd holds when the forward pass and the loss are done

    @property
    def total(self) -> float:
        return (self.weights + self.gradients + self.optimizer + self.activations + self.logits
                + self.autocast_copies + self.ddp_buckets + self.fsdp_working)

    def as_dict(self) -> dict:
        keys = ("weights", "gradients", "optimizer", "activations", "logits", "autocast_copies", "ddp_buckets",
                "fsdp_working")
        return {**{k: int(getattr(self, k)) for k in keys}, "sum": int(self.total), "peak": int(self.peak)}


_META: dict = {}


def _meta_model(cfg: ModelConfig, method: str, lora: LoRAConfig, train_last: int):
    """The model on the meta device with `method` applied by finetune's own code (no memory).
    Cached: `_what_fits` asks about the same model under several settings."""
    import torch

    from llmkit.model import Transformer
    from llmkit.recipes.tuning import setup_method

    key = (cfg, method, train_last if method == "freeze" else None,
           (lora.r, lora.alpha, tuple(lora.resolved_targets())) if method == "lora" else None)
    if key not in _META:
        if len(_META) > 8:
            _META.clear()
        with torch.device("meta"):
            model = Transformer(cfg)
            setup_method(model, method, lora, train_last, None)  # quantization: counted from its layout
        _META[key] = model
    return _META[key]


def _quantized_bytes(numel: int, out_features: int, kind: str) -> int:
    """Bytes of a frozen weight as lora.py stores it: int8 = one byte per weight + a float32
    scale per output row; nf4 = two 4-bit indices per byte + a float32 absmax per block of 64
    (+ the 16 float32 levels per layer)."""
    if kind == "int8":
        return numel + 4 * out_features
    return numel // 2 + 4 * (numel // 64) + 64


def train_memory(cfg: ModelConfig, method: str = "full", quantize: Optional[str] = None,
                 lora: Optional[LoRAConfig] = None, train_last: int = 2, precision: str = "bf16",
                 micro_batch_size: int = 8, seq_len: int = 1024, activation_checkpointing: bool = False,
                 devices: int = 1, distributed: str = "none", shards: int = 1, device: str = "cuda") -> Memory:
    """Peak training memory per device of llmkit's loop (training/loop.py) for one micro-batch.
    `device` "cpu": bf16 attention runs in float32 where this CPU measured that faster
    (model.Attention.cpu_fp32), and keeps float32 copies of q, k, v and its output.

    What the loop holds: float32 parameters (autocast computes in bf16 but the weights stay
    float32, recipes/scaffold.py `Run.load`), float32 gradients of the trainable ones, AdamW's
    two float32 moments (torch.optim.AdamW, fused), and what autograd saves for backward:
    activations, the bf16 copies autocast makes of each weight (kept until that layer's
    backward), and the loss's float32 log-probabilities.
    """
    from torch import nn

    from llmkit.lora import LoRALinear

    lora = lora or LoRAConfig()
    model = _meta_model(cfg, method, lora, train_last)
    a = 4 if precision == "fp32" else 2  # activation bytes: autocast's dtype (fp8: llmkit trains it as bf16)
    r = 4  # the residual stream's bytes: float32, as the weights (embeddings are never autocast)
    cast = a < r  # autocast makes a copy of each input and weight it casts
    n_tok = micro_batch_size * seq_len
    d, qd, c, f, H = cfg.n_embd, cfg.n_head * cfg.head_size, cfg.kv_heads * cfg.head_size, cfg.ffn_size, cfg.n_head

    params = trainable = weight_bytes = 0
    block_linears = {"q", "k", "v", "o", "gate", "up", "down"}
    for name, p in model.named_parameters():  # a tied weight once
        params += p.numel()
        trainable += p.numel() * p.requires_grad
        parts = name.split(".")
        base_linear = name.startswith("blocks.") and name.endswith(".weight") and (
            parts[-2] in block_linears or (parts[-2] == "base" and parts[-3] in block_linears))
        if quantize and base_linear and not p.requires_grad:
            weight_bytes += _quantized_bytes(p.numel(), p.shape[0], quantize)
        elif cast and name.endswith(".base.weight") and not p.requires_grad and distributed != "fsdp":
            weight_bytes += a * p.numel()  # a LoRA base held in autocast's dtype (lora.hold_frozen_bases)
        else:
            weight_bytes += 4 * p.numel()
    weight_bytes += sum(b.numel() * b.element_size() for b in model.buffers())  # RoPE tables, BART's logit bias
    frozen_nonemb = sum(p.numel() for n, p in model.named_parameters() if not p.requires_grad and n.startswith("blocks."))

    def linear(m) -> tuple[bool, int, int]:
        """(saves its input for backward, weight elements autocast copies and keeps, LoRA rank)."""
        if isinstance(m, LoRALinear):
            # The frozen base runs through lora.frozen_linear (nothing kept); A keeps its input.
            return True, (m.lora_a.numel() + m.lora_b.numel()) if cast else 0, m.lora_a.shape[0]
        if isinstance(m, nn.Linear):
            if quantize and not m.weight.requires_grad and m is not model.lm_head:
                return False, 0, 0  # quantized (a block's linear): lora.frozen_linear, nothing kept
            # A frozen plain layer keeps autocast's bf16 copy of its weight for the input gradient.
            return m.weight.requires_grad, m.weight.numel() if cast else 0, 0
        return False, 0, 0

    def norm(m, savers: int, kind: str = cfg.norm) -> float:
        """Bytes per token a norm and the linears reading its output keep. RMSNorm (model.Norm):
        rms_norm keeps its input, `weight * normed` keeps `normed` if the weight trains;
        LayerNorm is one fused op keeping its input. The linears then keep each its own bf16
        cast of the output under autocast, or the float32 output once without."""
        w = getattr(m, "weight", None)
        kept = r * d + (r * d if kind == "rms" and w is not None and w.requires_grad else 0)
        return kept + (savers * a * d if cast else (r * d if savers else 0))

    blocks_act, blocks_copy, block_grads, block_params = [], [], [], []
    in_path = model.embed.weight.requires_grad
    for blk in model.blocks:
        has_trainable = any(p.requires_grad for p in blk.parameters())
        in_path = in_path or has_trainable
        block_params.append(sum(p.numel() for p in blk.parameters()))
        block_grads.append(4 * sum(p.numel() for p in blk.parameters() if p.requires_grad))
        if not in_path:  # frozen, and nothing below it trains: no backward through it
            blocks_act.append(0.0)
            blocks_copy.append(0.0)
            continue
        att, mlp = blk.attn, blk.mlp
        q, k, v, o = (linear(getattr(att, n)) for n in ("q", "k", "v", "o"))
        mlp_in = [linear(m) for m in (mlp.gate, mlp.up) if m is not None]
        down = linear(mlp.down)
        act = norm(blk.attn_norm, sum(s for s, _, _ in (q, k, v)))
        fp32_attn = cast and device == "cpu" and att.cpu_fp32
        if cfg.attn_softcap is None:
            # Fused attention (SDPA's flash kernels on CUDA and CPU) keeps q and k after RoPE, v,
            # its output and one float32 log-sum-exp per head; o reads a view of that output
            # (float32 attention: the four float32, and o keeps its own bf16 cast of the output).
            act += (4 * (2 * qd + 2 * c) + (a * qd if o[0] else 0) if fp32_attn else a * (2 * qd + 2 * c)) + 4 * H
        else:
            # Gemma 2's eager soft-capped attention (model.Attention._softcapped): q and the
            # repeated k and v, the tanh'd T x T scores, their float32 softmax and its cast,
            # and the output copy o reads.
            act += a * 3 * qd + H * seq_len * (a + 4 + (a if cast else 0)) + (a * qd if o[0] else 0)
        if cfg.qk_norm:  # Qwen3: per-head RMSNorm of q and k (float32 input copy, normed if trained)
            trained = blk.attn.q_norm.weight.requires_grad
            act += (4 + (a if trained else 0)) * (qd + c)
        act += a * sum(rk for _, _, rk in (q, k, v, o))  # LoRA A's outputs, kept by B
        act += norm(blk.mlp_norm, sum(s for s, _, _ in mlp_in))
        # Gated MLP (SwiGLU/GeGLU): the gate's output (act's input), the act's output and the
        # up projection (the product's inputs), and the product if `down` keeps its input.
        act += (3 if mlp.gated else 1) * a * f + (a * f if down[0] else 0) + a * sum(rk for _, _, rk in mlp_in + [down])
        if cfg.post_block_norms:  # Gemma 2's norms on the attention and MLP outputs
            act += 2 * 4 * d * (1 + blk.post_attn_norm.weight.requires_grad)
        if blk.cross_attn is not None:  # an encoder-decoder's decoder: a second attention (approximate)
            act += norm(blk.cross_norm, 1) + (4 if fp32_attn else a) * (2 * qd + 2 * c) + 4 * H
        copies = a * sum(n for _, n, _ in (q, k, v, o, *mlp_in, down))
        blocks_act.append(act * n_tok)
        blocks_copy.append(copies)
    n_blocks = len(blocks_act)
    head = linear(model.lm_head)
    head_grad = 4 * model.lm_head.weight.numel() if model.lm_head.weight.requires_grad else 0
    # The loss (training/losses.py -> Transformer.forward(labels=)): a plain output layer and its
    # cross-entropy run block by block (cross_entropy.py), keeping only the gradients of the
    # head's input (autocast's dtype), weight and bias (float32), computed in the forward; one
    # block's logits exist at a time (in the output dtype, float32, and the gradient's cast) with
    # the weight's autocast cast. Otherwise (LoRA on the head, Gemma 2's soft cap, a logit bias):
    # float32 logits -> log_softmax keeps its float32 output; its backward holds that, the
    # incoming gradient and its own output: 3 x 4 bytes per logit.
    fused = type(model.lm_head) is nn.Linear and not cfg.logit_bias and cfg.final_softcap is None
    n_norm = 0 if fused else int(head[0])  # the blockwise loss keeps no input of its own
    final_act = norm(model.norm, n_norm) * n_tok if isinstance(model.norm, nn.Module) else 0.0
    if fused:
        from llmkit.cross_entropy import block_rows

        bias = model.lm_head.bias
        head_copy = 0.0
        logits_kept = a * d * n_tok + head_grad + (4 * bias.numel() if bias is not None and bias.requires_grad else 0)
        logits = block_rows(cfg.vocab_size, n_tok) * cfg.vocab_size * (4 + 2 * a) + (
            a * model.lm_head.weight.numel() if cast else 0)
    else:
        head_copy = a * model.lm_head.weight.numel() if cast else 0
        logits_kept = (4 + (a if cfg.final_softcap is not None else 0)) * cfg.vocab_size * n_tok  # + Gemma 2's tanh
        logits = logits_kept + 8 * cfg.vocab_size * n_tok
    embed_grad = 4 * model.embed.weight.numel() if model.embed.weight.requires_grad else 0
    if activation_checkpointing:
        # Each block keeps only its input; its backward recomputes it (its activations and
        # autocast copies live again, one block at a time): Chen et al. 2016, "Training Deep
        # Nets with Sublinear Memory Cost"; torch.utils.checkpoint (use_reentrant=False).
        kept = [r * d * n_tok if x else 0.0 for x in blocks_act]
    else:
        kept = list(blocks_act)

    # Sharding: FSDP2 (fully_shard per block, then the root) divides parameters, gradients and
    # optimizer state by the shard count (Zhao et al. 2023, "PyTorch FSDP"; ZeRO-3); while a
    # block runs, its full float32 parameters are gathered (that one, and the next, prefetched)
    # and its full gradients exist until reduce-scattered; the root (embeddings, head) stays
    # gathered. DDP keeps gradient buckets as large as the gradients (gradient_as_bucket_view off).
    fsdp = distributed == "fsdp" and shards > 1
    sh = shards if fsdp else 1
    grads_total = 4 * trainable
    mem = Memory(weights=weight_bytes / sh, gradients=grads_total / sh, optimizer=8 * trainable / sh,
                 activations=sum(kept) + final_act + (max(blocks_act) if activation_checkpointing and blocks_act else 0),
                 logits=logits, autocast_copies=sum(blocks_copy) + head_copy,
                 ddp_buckets=grads_total if distributed == "ddp" and devices > 1 else 0.0,
                 params=params, trainable=trainable, frozen_nonembedding=frozen_nonemb)
    if fsdp:
        root = 4 * (params - sum(block_params))
        big = 4 * max(block_params)
        mem.fsdp_working = root * (1 - 1 / sh) + 2 * big + max(block_grads)
    # The timeline of one steady-state step (optimizer state allocated, gradients set to None at
    # the previous step). Forward: activations, and autocast's copies of every weight, which its
    # cache holds until the autocast block (forward and loss) is left, checkpointing or not; the
    # loss: the head's logits, their float32 copy and the log-probabilities. Backward: the loss's
    # buffers, then each block (top first) frees its activations and copies and adds gradients.
    static = mem.weights + mem.optimizer + mem.ddp_buckets + mem.fsdp_working
    gshare = 1 / sh
    V = cfg.vocab_size * n_tok
    if fused:  # the saved gradients, and one block's buffers
        fwd_logits = logits_kept + logits
    else:
        fwd_logits = logits_kept + 4 * V + (a * V if cast else 0)  # (+ the bf16 logits under autocast)
    copies_all = sum(blocks_copy)
    peak = static + sum(kept) + final_act + copies_all + head_copy + fwd_logits
    if activation_checkpointing:
        copies_all = 0.0  # nothing in the graph holds them: freed with autocast's cache
    mem.forward_saved = sum(kept) + final_act + copies_all + head_copy + logits_kept
    live = static + mem.forward_saved
    if fused:  # backward: the saved gradients, scaled, in the input's and the weight's dtypes
        peak = max(peak, live + r * d * n_tok + head_grad * gshare)
    else:
        peak = max(peak, live + logits - logits_kept)
    live += head_grad * gshare - logits_kept - final_act - head_copy
    peak = max(peak, live)
    for i in reversed(range(n_blocks)):
        if activation_checkpointing and blocks_act[i]:
            live += blocks_act[i] + blocks_copy[i]  # the recomputed forward of this block
        peak = max(peak, live + block_grads[i] * gshare)
        own = blocks_act[i] + blocks_copy[i] if activation_checkpointing else kept[i] + blocks_copy[i]
        live += block_grads[i] * gshare - own - (kept[i] if activation_checkpointing else 0)
    if embed_grad:
        # The embedding's dense gradient, then accumulated into the tied head's (or its own).
        peak = max(peak, live + embed_grad * gshare)
    mem.peak = peak
    return mem


def serve_memory(cfg: ModelConfig, precision: str, batch: int, context: int) -> dict:
    """Weights at the serving precision plus the KV cache llmkit preallocates (kv_cache.py:
    keys and values of every layer for batch x context positions, in the model's dtype)."""
    from llmkit.model import count_params

    b = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}[precision]
    weights = count_params(cfg) * b
    per_seq = 2 * cfg.n_layer * cfg.kv_heads * cfg.head_size * context * b
    if cfg.is_seq2seq:
        per_seq *= 2  # cross-attention keys/values of a source as long as the context
    return {"precision": precision, "batch": batch, "context": context, "weights": int(weights),
            "kv_cache": int(per_seq * batch), "kv_per_sequence": int(per_seq), "total": int(weights + per_seq * batch)}


# --- a run directory's measured MFU ---------------------------------------------------------------
def run_mfu(run: str) -> tuple[float, int]:
    """(median, count) of the `mfu` rows an llmkit run logged to RUN/metrics.csv (training/logger.py)."""
    path = Path(run).expanduser()
    path = path / "metrics.csv" if path.is_dir() else path
    if not path.is_file():
        raise LLMKitError(f"{run}: no metrics.csv (not an llmkit training run directory)")
    values = []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if row.get("metric") == "mfu":
                    values.append(float(row["value"]))
    except (OSError, ValueError, KeyError, csv.Error) as e:
        raise LLMKitError(f"{path}: unreadable metrics ({e.__class__.__name__}: {e})") from None
    values = [v for v in values if math.isfinite(v) and v > 0]
    if not values:
        raise LLMKitError(f"{path}: no mfu rows (the loop logs MFU for pretraining and full finetuning runs)")
    return statistics.median(values), len(values)


# --- the command ----------------------------------------------------------------------------------
def plan(
    model: str,
    tokens: Optional[str] = None,
    hardware: str = "a100-80gb",
    gpus: int = 1,
    mfu: Optional[float] = None,
    run: Optional[str] = None,
    price: Optional[float] = None,
    power: Optional[float] = None,
    pue: float = DEFAULT_PUE,
    grid_intensity: float = DEFAULT_GRID,
    precision: str = "bf16",
    method: str = "full",
    quantize: Optional[str] = None,
    lora: LoRAConfig = LoRAConfig(),
    train_last: int = 2,
    distributed: str = "auto",
    shards: Optional[int] = None,
    micro_batch_size: int = 8,
    seq_len: Optional[int] = None,
    activation_checkpointing: bool = False,
    serve_batch: int = 1,
    serve_context: Optional[int] = None,
    json: bool = False,
) -> dict:
    """Plan a training run: compute-optimal tokens, FLOPs, time, cost, energy and memory per device.

    Args:
        model: a preset (see `llmkit models`), a ModelConfig JSON/YAML file, a model directory,
            or a parameter count such as 7B, 400M or 1.1e9 (a Llama-like shape is then derived).
        tokens: training tokens, e.g. 3T or 2e11 (default: compute-optimal, Hoffmann et al. 2022).
        hardware: a100-40gb, a100-80gb, h100, h100-pcie, h200, l4, l40s, a10, rtx-4090, rtx-3090,
            v100, t4, or cpu (this machine, its matmul peak measured).
        gpus: number of devices training together.
        mfu: model FLOPs utilization, 0-1 (default: 0.40, an assumption; or --run's measured one).
        run: an llmkit training run directory: its logged MFU (median of metrics.csv) is used.
        price: dollars per device-hour (default: an assumed on-demand rate for the hardware).
        power: watts per device (default: the hardware's board power).
        pue: data-centre power usage effectiveness (facility energy / IT energy).
        grid_intensity: grams of CO2 per kWh of the electricity (default: 2023 world average).
        precision: bf16, fp16, fp32 or fp8 (fp8: the hardware's fp8 peak for time; memory as bf16).
        method: full, lora, qlora (lora with an nf4 base), or freeze (the last --train-last blocks).
        quantize: with lora, the frozen base in int8 or nf4 (QLoRA).
        lora: LoRA settings (--lora.r, --lora.targets), as finetune takes them.
        train_last: with --method freeze, how many of the last blocks train.
        distributed: auto (ddp with several devices), none, ddp or fsdp.
        shards: FSDP shard count (default: every device).
        micro_batch_size: sequences per forward pass per device.
        seq_len: training sequence length (default: the model's context, at most 4096).
        activation_checkpointing: recompute block activations in backward to save memory.
        serve_batch: sequences decoded together when serving (KV cache rows).
        serve_context: tokens per served sequence (default: the model's context).
        json: print the plan as JSON instead of a table.
    """
    import json as jsonlib

    # --- settings -----------------------------------------------------------------------------
    for name, value in (("gpus", gpus), ("micro_batch_size", micro_batch_size), ("serve_batch", serve_batch),
                        ("train_last", train_last)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise LLMKitError(f"{name} must be an integer >= 1, got {value}")
    for name, value in (("seq_len", seq_len), ("serve_context", serve_context), ("shards", shards)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise LLMKitError(f"{name} must be an integer >= 1, got {value}")
    if mfu is not None and not (0 < mfu <= 1):
        raise LLMKitError(f"mfu must be in (0, 1], got {mfu} (a fraction: 40% is 0.4)")
    if mfu is not None and run is not None:
        raise LLMKitError("give --mfu or --run (whose measured MFU is used), not both")
    for name, value, low in (("price", price, 0.0), ("grid_intensity", grid_intensity, 0.0)):
        if value is not None and not (math.isfinite(value) and value >= low):
            raise LLMKitError(f"{name} must be >= {low:g}, got {value}")
    if power is not None and not (math.isfinite(power) and power > 0):
        raise LLMKitError(f"power must be > 0 watts, got {power}")
    if not (math.isfinite(pue) and pue >= 1):
        raise LLMKitError(f"pue must be >= 1 (facility energy over IT energy), got {pue}")
    if precision not in ("bf16", "fp16", "fp32", "fp8"):
        raise LLMKitError(f"precision must be bf16, fp16, fp32 or fp8, got '{precision}'")
    if method == "qlora":
        method, quantize = "lora", quantize or "nf4"
    if method not in ("full", "lora", "freeze"):
        raise LLMKitError(f"unknown method '{method}': choose from full, lora, qlora, freeze")
    quantize = None if quantize in (None, "none") else quantize
    if quantize is not None:
        if quantize not in ("int8", "nf4"):
            raise LLMKitError(f"unknown quantization '{quantize}': choose from int8, nf4")
        if method != "lora":
            raise LLMKitError("--quantize holds the frozen base in low precision: use it with --method lora")
    if method == "lora":
        lora.validate()
    if distributed not in ("auto", "none", "ddp", "fsdp"):
        raise LLMKitError(f"distributed must be auto, none, ddp or fsdp, got '{distributed}'")
    if distributed == "none" and gpus > 1:
        raise LLMKitError("distributed=none trains on one device: use ddp or fsdp with --gpus > 1")
    mode = ("ddp" if gpus > 1 else "none") if distributed == "auto" else distributed
    if shards is not None and mode != "fsdp":
        raise LLMKitError("--shards is the FSDP shard count: use it with --distributed fsdp")
    n_shards = (shards or gpus) if mode == "fsdp" else 1
    if n_shards > gpus:
        raise LLMKitError(f"shards ({n_shards}) cannot exceed the devices ({gpus})")
    hard = hw.lookup(hardware)
    if hard.name == "cpu" and precision in ("fp16", "fp8"):
        raise LLMKitError(f"{precision} on CPU: matmuls fall back to a ~300x slower path (fp16) or do not exist "
                          "(fp8); use --precision bf16 or fp32")
    peak_flops = hard.peak(precision)

    # --- model -------------------------------------------------------------------------------
    spec = resolve_model(model)
    cfg = spec.cfg
    T = seq_len or min(cfg.block_size, SEQ_LEN_CAP)
    if T > cfg.block_size:
        if spec.source != "parameter count":
            raise LLMKitError(f"seq_len {T} is longer than the model's context ({cfg.block_size})")
        cfg = cfg.replace(block_size=T)
    if method == "freeze" and train_last > cfg.n_layer:
        raise LLMKitError(f"--train-last must be between 1 and the model's {cfg.n_layer} blocks, got {train_last}")
    ctx = serve_context or cfg.block_size
    if ctx > cfg.block_size:
        raise LLMKitError(f"serve_context {ctx} is longer than the model's context ({cfg.block_size})")

    def memory(**over) -> Memory:
        kw = dict(method=method, quantize=quantize, lora=lora, train_last=train_last, precision=precision,
                  micro_batch_size=micro_batch_size, seq_len=T, activation_checkpointing=activation_checkpointing,
                  devices=gpus, distributed=mode, shards=n_shards, device="cpu" if hard.name == "cpu" else "cuda")
        kw.update(over)
        return train_memory(cfg, **kw)

    from llmkit.model import count_params

    mem = memory()
    n = count_params(cfg)  # the model's own parameters (LoRA adapters come on top)

    # --- compute -------------------------------------------------------------------------------
    optimal = compute_optimal_tokens(n)
    D = parse_count(tokens, "tokens") if tokens is not None else optimal
    # 6ND counts all parameters, as Hoffmann et al. do; the time uses the loop's own count per
    # token (config.flops_per_token: 6 x non-embedding parameters + attention, PaLM appendix B),
    # the one its MFU is logged against. Frozen weights need no weight gradient: 2 of their 6
    # FLOPs per token fall away (LoRA's speed-up, Hu et al. 2021 sec. 4.2).
    fpt = cfg.flops_per_token(T) - 2 * mem.frozen_nonembedding
    train_flops = D * fpt

    # --- time, cost, energy -----------------------------------------------------------------------
    if run is not None:
        used_mfu, n_rows = run_mfu(run)
        mfu_source = f"measured: median of {n_rows} logged mfu rows of {run}"
    else:
        used_mfu = mfu if mfu is not None else DEFAULT_MFU
        mfu_source = "given" if mfu is not None else (
            f"assumed {DEFAULT_MFU:.0%}: well-tuned dense training reaches 40-55% (PaLM 46%, Chowdhery et al. 2022 "
            "Table 3; TinyLlama 56%)")
    seconds = train_flops / (gpus * peak_flops * used_mfu)
    device_hours = seconds / 3600 * gpus
    rate = price if price is not None else hard.price
    watts = power if power is not None else hard.watts
    kwh = device_hours * watts / 1000 * pue
    co2_kg = kwh * grid_intensity / 1000

    # --- fit -------------------------------------------------------------------------------------
    capacity = hard.memory_gib * GIB
    usable = capacity * (1 - HEADROOM)
    fits = mem.peak <= usable
    to_fit = [] if fits else _what_fits(memory, usable, gpus, method, activation_checkpointing, micro_batch_size)
    serving = serve_memory(cfg, "bf16" if precision == "fp8" else precision, serve_batch, ctx)
    serving["fits"] = serving["total"] <= usable
    serving["max_batch"] = max(0, int((usable - serving["weights"]) // max(1, serving["kv_per_sequence"])))

    bpp = (mem.weights + mem.gradients + mem.optimizer + mem.ddp_buckets) * n_shards / n  # all devices' share
    rule = ("rule of thumb (ZeRO, Rajbhandari et al. 2020, sec. 3): mixed-precision AdamW full finetuning holds "
            "16 bytes per parameter before activations: bf16 weights 2 + bf16 gradients 2 + fp32 master weights 4 "
            "+ Adam m and v 4 + 4. llmkit keeps fp32 weights and lets autocast cast them per use: fp32 weights 4 + "
            "fp32 gradients 4 + Adam 8 = 16 for full training, plus 2 per parameter of bf16 copies held for the "
            f"backward pass; this plan ({method}{' ' + quantize if quantize else ''}"
            f"{', DDP buckets' if mem.ddp_buckets else ''}): {bpp:.2f} bytes per parameter before activations")
    assumptions = [
        f"MFU {used_mfu:.1%} ({mfu_source})",
        f"peak {peak_flops / 1e12:.1f} TFLOP/s per device, dense {precision}"
        + (" (measured on this CPU: a 1024^3 matmul)" if hard.name == "cpu" else " (NVIDIA data sheet)"),
        (f"price ${rate:.2f} per device-hour" + (" (given)" if price is not None else
                                                  f" (assumed on-demand rate, {hw.PRICES_AS_OF}; --price)")),
        f"power {watts:.0f} W per device (" + ("given" if power is not None else "board power, TDP")
        + f"), PUE {pue:g}; grid {grid_intensity:g} gCO2/kWh"
        + (" (world average 2023, Ember Global Electricity Review 2024)" if grid_intensity == DEFAULT_GRID else ""),
        f"memory: {HEADROOM:.0%} of the device kept free (CUDA context, allocator fragmentation)",
    ]
    if precision == "fp8":
        assumptions.append("fp8: time at the fp8 peak (e.g. Transformer Engine); llmkit's loop trains in bf16, "
                           "whose memory is shown")
    if cfg.kind != "decoder":
        assumptions.append(f"memory modelled for causal-LM training of the decoder blocks; a {cfg.kind}'s "
                           "encoder blocks and its loss are approximated as such")
    if mode == "fsdp" and precision != "fp32":
        assumptions.append("FSDP: llmkit shards float32 parameters without a mixed-precision policy, so autocast's "
                           "bf16 copies of every weight are whole on each device until backward")
    if spec.note:
        assumptions.append(spec.note)

    result = {
        "model": {"name": cfg.name, "source": spec.source, "params": n, "asked_params": spec.asked,
                  "trainable": mem.trainable, "method": method, "quantize": quantize, "n_layer": cfg.n_layer,
                  "n_embd": cfg.n_embd, "n_head": cfg.n_head, "n_kv_heads": cfg.kv_heads, "head_dim": cfg.head_size,
                  "ffn": cfg.ffn_size, "vocab_size": cfg.vocab_size, "seq_len": T},
        "compute": {"tokens": D, "tokens_source": "given" if tokens is not None else "compute-optimal",
                    "compute_optimal_tokens": optimal, "tokens_per_param": D / n,
                    "compute_optimal_flops_6nd": 6 * n * optimal, "flops_6nd": 6 * n * D,
                    "flops_per_token": fpt, "train_flops": train_flops},
        "time": {"hardware": hard.name, "devices": gpus, "peak_flops": peak_flops, "mfu": used_mfu,
                 "mfu_source": mfu_source, "seconds": seconds, "days": seconds / 86400, "device_hours": device_hours,
                 "price_per_device_hour": rate, "cost_usd": device_hours * rate, "watts": watts, "pue": pue,
                 "energy_kwh": kwh, "grid_gco2_per_kwh": grid_intensity, "co2_kg": co2_kg},
        "memory": {"per_device": mem.as_dict(), "capacity": int(capacity), "usable": int(usable), "fits": fits,
                   "distributed": mode, "shards": n_shards, "micro_batch_size": micro_batch_size,
                   "activation_checkpointing": activation_checkpointing, "bytes_per_param": bpp,
                   "rule_of_thumb": rule, "to_fit": to_fit},
        "serving": serving,
        "assumptions": assumptions,
    }
    print(jsonlib.dumps(result, indent=2) if json else format_plan(result), flush=True)
    return result


def _what_fits(memory, usable: float, gpus: int, method: str, ckpt: bool, micro: int) -> list[dict]:
    """Changes that would fit, each on its own and then combined: activation checkpointing, a
    micro-batch of 1, FSDP over the fewest devices (a power of two; with checkpointing and a
    micro-batch of 1 if need be), LoRA, QLoRA (nf4). Each: {"change", "peak", "fits"}."""
    out: list[dict] = []

    def option(change: str, **kw) -> dict:
        m = memory(**kw)
        return {"change": change, "peak": int(m.peak), "fits": m.peak <= usable}

    extras = [("", {})]
    if not ckpt:
        out.append(option("activation checkpointing", activation_checkpointing=True))
        extras.append((" + activation checkpointing", {"activation_checkpointing": True}))
    if micro > 1:
        out.append(option("micro-batch 1", micro_batch_size=1))
        extras.append((" + micro-batch 1" + ("" if ckpt else " + activation checkpointing"),
                       {"micro_batch_size": 1, "activation_checkpointing": True}))
    fsdp = None
    for label, kw in extras:
        k = 2
        while k <= 4096 and fsdp is None:
            o = option(f"FSDP over {k} devices{label}", distributed="fsdp", shards=k, devices=max(k, gpus), **kw)
            fsdp = o if o["fits"] else None
            k *= 2
        if fsdp:
            break
    out.append(fsdp or {"change": "FSDP: no shard count up to 4096 is enough", "peak": None, "fits": False})
    if method == "full":
        out.append(option("LoRA", method="lora", quantize=None))
        out.append(option("QLoRA (nf4 base)", method="lora", quantize="nf4"))
        if not ckpt:
            out.append(option("QLoRA + activation checkpointing", method="lora", quantize="nf4",
                              activation_checkpointing=True))
    return out


# --- the table ------------------------------------------------------------------------------------
def _fmt_count(x: float) -> str:
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if x >= div:
            v = x / div
            return f"{v:.3g}{suffix}" if v < 1000 else f"{v:,.0f}{suffix}"
    return f"{x:.3g}"


def _fmt_num(x: float) -> str:
    """1,234 for large values, three significant digits for small ones (0.0421)."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _fmt_bytes(x: float) -> str:
    return f"{x / GIB:,.2f} GiB" if x >= GIB / 10 else f"{x / 2**20:,.1f} MiB"


def _fmt_time(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.1f} minutes"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} hours"
    days = seconds / 86400
    if days < 60:
        return f"{days:.1f} days ({days / 7:.1f} weeks)"
    return f"{days:,.0f} days ({days / 365.25:.1f} years)"


def format_plan(p: dict) -> str:
    m, c, t, mem, s = p["model"], p["compute"], p["time"], p["memory"], p["serving"]
    pd = mem["per_device"]
    lines: list[str] = []

    def section(title: str) -> None:
        if lines:
            lines.append("")
        lines.append(title)

    def row(label: str, value: str) -> None:
        lines.append(f"  {label:<26} {value}")

    section("model")
    row("name", f"{m['name']} ({m['source']})")
    row("parameters", f"{m['params']:,} ({_fmt_count(m['params'])})"
        + (f", asked {_fmt_count(m['asked_params'])}" if m["asked_params"] else ""))
    row("shape", f"{m['n_layer']} layers, d {m['n_embd']}, {m['n_head']} heads ({m['n_kv_heads']} kv) of {m['head_dim']}, "
        f"MLP {m['ffn']}, vocab {m['vocab_size']:,}")
    row("method", f"{m['method']}{' + ' + m['quantize'] + ' base' if m['quantize'] else ''}: "
        f"{m['trainable']:,} trainable ({100 * m['trainable'] / m['params']:.2f}%)")
    section("compute")
    row("compute-optimal tokens", f"{_fmt_count(c['compute_optimal_tokens'])} "
        f"({c['compute_optimal_tokens'] / m['params']:.1f} per parameter; Hoffmann et al. 2022, Table 3) "
        f"= {c['compute_optimal_flops_6nd']:.3g} FLOPs (6ND)")
    row("training tokens", f"{_fmt_count(c['tokens'])} ({c['tokens_source']}; {c['tokens_per_param']:.1f} per parameter)")
    row("FLOPs (6ND)", f"{c['flops_6nd']:.3g}")
    row("FLOPs with attention", f"{c['train_flops']:.3g} = {c['flops_per_token']:.3g} per token "
        f"(6N non-embedding + attention at seq_len {m['seq_len']})")
    section("time, cost, energy")
    row("hardware", f"{t['devices']} x {t['hardware']}, {t['peak_flops'] / 1e12:.1f} TFLOP/s peak, MFU {t['mfu']:.1%}")
    row("wall time", _fmt_time(t["seconds"]))
    row("device-hours", _fmt_num(t["device_hours"]))
    row("cost", f"${_fmt_num(t['cost_usd'])} at ${t['price_per_device_hour']:.2f}/device-hour")
    row("energy", f"{_fmt_num(t['energy_kwh'])} kWh ({t['watts']:.0f} W x PUE {t['pue']:g})")
    row("CO2", f"{_fmt_num(t['co2_kg'])} kg at {t['grid_gco2_per_kwh']:g} g/kWh")
    section(f"memory per device (training: {mem['distributed']}"
            + (f", {mem['shards']} shards" if mem["distributed"] == "fsdp" else "")
            + f", micro-batch {mem['micro_batch_size']} x {m['seq_len']} tokens"
            + (", activation checkpointing" if mem["activation_checkpointing"] else "") + ")")
    labels = {"weights": "weights (fp32)" if not m["quantize"] else f"weights ({m['quantize']} base + fp32)",
              "gradients": "gradients (fp32)", "optimizer": "optimizer (AdamW m, v)", "activations": "activations",
              "logits": "logits (fp32 log-probs)", "autocast_copies": "autocast weight copies",
              "ddp_buckets": "DDP gradient buckets", "fsdp_working": "FSDP gathered params"}
    for key, label in labels.items():
        if pd[key] or key in ("weights", "activations", "logits"):
            row(label, _fmt_bytes(pd[key]))
    row("sum of the parts", _fmt_bytes(pd["sum"]))
    row("peak (timeline)", f"{_fmt_bytes(pd['peak'])} of {_fmt_bytes(mem['capacity'])}: "
        + ("fits" if mem["fits"] else "does NOT fit"))
    import textwrap

    lines += textwrap.wrap(mem["rule_of_thumb"], 100, initial_indent="  ", subsequent_indent="    ")
    for i, o in enumerate(mem["to_fit"]):
        peak = f": {_fmt_bytes(o['peak'])}" if o["peak"] is not None else ""
        row("to fit" if i == 0 else "", f"{o['change']}{peak}" + ("" if o["fits"] else " (not enough)"))
    section(f"serving ({s['precision']}, batch {s['batch']} x {s['context']} tokens)")
    row("weights", _fmt_bytes(s["weights"]))
    row("KV cache", _fmt_bytes(s["kv_cache"]))
    row("total", f"{_fmt_bytes(s['total'])}: " + ("fits" if s["fits"] else "does NOT fit")
        + f" (largest batch at this context: {s['max_batch']})")
    section("assumptions")
    for a in p["assumptions"]:
        lines.append(f"  - {a}")
    return "\n".join(lines)
