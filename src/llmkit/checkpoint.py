"""Checkpoint I/O: the only module that reads or writes model files.

An llmkit checkpoint is a directory:

    config.json                      ModelConfig.to_dict() ({"format": "llmkit", ...})
    model.safetensors                weights (or model-0000i-of-0000n.safetensors + index)
    tokenizer.json, tokenizer_config.json, ...   tokenizer files, copied as they came

Every file is written atomically (temp file in the same directory, fsync, rename), so a crash
mid-write leaves the previous file or none, never half a file. Weights are safetensors only:
nothing here unpickles. A MODEL argument anywhere in llmkit goes through `load_model`, which
accepts an llmkit directory, a Hugging Face model directory (converted in memory) or a hub
repo id (downloaded first).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from llmkit.config import ModelConfig
from llmkit.errors import LLMKitError

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
# A LoRA checkpoint holds only the trained tensors and names its base model (see save_adapter).
ADAPTER = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3  # the HF hub's own default shard size
# Files that travel with the weights: tokenizer, chat template, generation defaults.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
    "vocab.json", "merges.txt", "encoder.json", "vocab.bpe", "tokenizer.model", "chat_template.jinja",
    "chat_template.json", "added_tokens.json",
)
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


# --- atomic writes ------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write_fn) -> None:
    """Call `write_fn(tmp_path)` to write a temp file next to `path`, fsync it, rename it over."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: Optional[dict] = None) -> None:
    """safetensors file, atomically. Tensors that share memory (tied or split views) are copied."""
    from safetensors.torch import save_file

    seen: set = set()
    out = {}
    for k, t in tensors.items():
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen or not t.is_contiguous() or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.contiguous().clone()
        seen.add((t.untyped_storage().data_ptr(), t.storage_offset()))
        out[k] = t
    meta = {"format": "pt", **(metadata or {})}
    atomic_write(path, lambda tmp: save_file(out, tmp, metadata=meta))


# --- weights: save and load ---------------------------------------------------------------------
def save_weights(
    out_dir: str | Path,
    state_dict: dict[str, torch.Tensor],
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    prefix: str = "model",
) -> None:
    """Write `model.safetensors`, or shards plus `model.safetensors.index.json` above the limit.

    The index is written last, so a reader never sees an index naming shards not yet on disk.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards: list[dict] = [{}]
    size = 0
    for k, t in state_dict.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = t
        size += nbytes
    # Remove weight files of an earlier save with another shard count: they would confuse readers.
    for old in out_dir.glob(f"{prefix}*.safetensors*"):
        old.unlink()
    if len(shards) == 1:
        save_tensors(shards[0], out_dir / f"{prefix}.safetensors")
        return
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        name = f"{prefix}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_tensors(shard, out_dir / name)
        for k, t in shard.items():
            weight_map[k] = name
            total += t.numel() * t.element_size()
    atomic_write_json(out_dir / f"{prefix}.safetensors.index.json",
                      {"metadata": {"total_size": total}, "weight_map": weight_map})


def load_weights(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of `model.safetensors` or of the shards its index names."""
    from safetensors.torch import load_file

    d = Path(model_dir)
    index = d / WEIGHTS_INDEX
    if index.exists():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
            raise LLMKitError(f"{index}: not a valid safetensors index ({e})") from None
    elif (d / WEIGHTS).exists():
        files = [WEIGHTS]
    elif (d / ADAPTER).exists():
        files = [ADAPTER]
    else:
        found = [p.name for p in d.glob("*.bin")] + [p.name for p in d.glob("*.pt*")]
        hint = f" (found {', '.join(found[:3])}: pickled weights are not loaded, for safety; convert them to safetensors)" if found else ""
        raise LLMKitError(f"{d}: no {WEIGHTS} or {WEIGHTS_INDEX}{hint}")
    sd: dict[str, torch.Tensor] = {}
    for name in files:
        path = d / name
        if not path.exists():
            raise LLMKitError(f"{path}: shard named in {WEIGHTS_INDEX} is missing")
        try:
            sd.update(load_file(path))
        except Exception as e:  # SafetensorError, OSError: truncated or corrupt file
            raise LLMKitError(f"{path}: cannot read safetensors file ({str(e).splitlines()[0]})") from None
    return sd


def build_model(cfg: ModelConfig, state_dict: dict[str, torch.Tensor], source: str = "checkpoint",
                device: str | torch.device = "cpu", dtype: Optional[torch.dtype] = None):
    """A Transformer holding `state_dict`, checked key by key and shape by shape.

    Built on the meta device and filled by assignment: no random init, no second copy.
    """
    from llmkit.model import Transformer, rope_inv_freq

    with torch.device("meta"):
        model = Transformer(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        expected.pop("lm_head.weight", None)
        state_dict = {k: v for k, v in state_dict.items() if k != "lm_head.weight"}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors {_abbrev(missing)}")
        if unexpected:
            parts.append(f"unexpected tensors {_abbrev(unexpected)}")
        raise LLMKitError(f"{source}: weights do not match the config ({'; '.join(parts)})")
    for k, shape in expected.items():
        if tuple(state_dict[k].shape) != tuple(shape):
            raise LLMKitError(f"{source}: shape mismatch for {k}: file has {tuple(state_dict[k].shape)}, "
                              f"config expects {tuple(shape)}")
    sd = {}
    for k, t in state_dict.items():
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        sd[k] = t.to(device)
    model.load_state_dict(sd, strict=not cfg.tie_embeddings, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    model.inv_freq = rope_inv_freq(cfg).to(device)  # non-persistent buffer: rebuilt, not loaded
    return model.eval()


def _abbrev(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def copy_tokenizer_files(src_dir: str | Path, out_dir: str | Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        p = Path(src_dir) / name
        if p.is_file() and Path(src_dir).resolve() != Path(out_dir).resolve():
            atomic_copy(p, Path(out_dir) / name)
            copied.append(name)
    return copied


def save_model(out_dir: str | Path, model, tokenizer_dir: str | Path | None = None,
               max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, dtype: Optional[torch.dtype] = None) -> Path:
    """Write an llmkit checkpoint directory: weights, then tokenizer files, then config.json."""
    out = Path(out_dir)
    sd = model.state_dict()
    if model.cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)  # HF convention: the tied head is not stored twice
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    save_weights(out, sd, max_shard_bytes)
    if tokenizer_dir is not None:
        copy_tokenizer_files(tokenizer_dir, out)
    atomic_write_json(out / "config.json", model.cfg.to_dict())
    return out


def save_adapter(out_dir: str | Path, tensors: dict[str, torch.Tensor], meta: dict,
                 tokenizer_dir: str | Path | None = None) -> Path:
    """Write a LoRA checkpoint: the adapter tensors, the tokenizer files, and adapter_config.json
    (written last: its presence marks a complete directory) naming the base model and the
    LoRA settings, so that `load_model` rebuilds base + adapter from it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_tensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, out / ADAPTER)
    if tokenizer_dir is not None:
        copy_tokenizer_files(tokenizer_dir, out)
    atomic_write_json(out / ADAPTER_CONFIG, {"format": "llmkit-lora", **meta})
    return out


def read_adapter_config(model_dir: str | Path) -> Optional[dict]:
    """The adapter settings of a LoRA checkpoint directory, or None for a full model."""
    path = Path(model_dir) / ADAPTER_CONFIG
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LLMKitError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != "llmkit-lora":
        if isinstance(meta, dict) and "peft_type" in meta:
            raise LLMKitError(f"{path}: a Hugging Face peft adapter; merge it into its base with peft and load "
                              "the merged model (llmkit loads its own adapters)")
        raise LLMKitError(f"{path}: not an llmkit adapter config")
    for key in ("base_model", "lora"):
        if key not in meta:
            raise LLMKitError(f"{path}: missing '{key}'")
    return meta


def load_adapter_model(d: Path, meta: dict, device="cpu", dtype: Optional[torch.dtype] = None,
                       merge: bool = True) -> "Loaded":
    """Base model + adapter, merged into plain linear layers by default (inference runs at
    the base model's speed). The merge is computed in float32, then cast to `dtype`."""
    from llmkit.lora import LoRAConfig, apply_lora, load_lora_state_dict, merge_lora

    base = load_model(meta["base_model"], device=device, dtype=torch.float32)
    # The adapter was trained against the (possibly quantized) base: rebuild exactly that, so
    # merging folds it into the same weights training saw.
    apply_lora(base.model, LoRAConfig(**meta["lora"]), quantize=meta.get("quantize"))
    load_lora_state_dict(base.model, load_weights(d), source=str(d / ADAPTER))
    model = merge_lora(base.model) if merge else base.model
    if dtype is not None:
        model.to(dtype)
    model.eval()
    return Loaded(model, base.config, d, "lora")


# --- resolving a MODEL argument -----------------------------------------------------------------
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model_dir(spec: str | Path) -> Path:
    """A local directory for `spec`: the directory itself, or a hub repo id downloaded first."""
    p = Path(spec).expanduser()
    if p.exists():
        if not p.is_dir():
            raise LLMKitError(f"{p}: expected a model directory, got a file")
        return p
    if isinstance(spec, str) and _REPO_ID.match(spec) and not spec.startswith((".", "/")):
        from llmkit.hub import download

        return download(spec)
    raise LLMKitError(f"{spec}: no such model directory (and not a Hugging Face repo id like 'org/name')")


def read_config(model_dir: str | Path) -> tuple[ModelConfig, str]:
    """(config, kind) where kind is "llmkit" or "hf" (a transformers config.json)."""
    path = Path(model_dir) / "config.json"
    if not path.exists():
        raise LLMKitError(f"{path}: missing (not an llmkit or Hugging Face model directory)")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LLMKitError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise LLMKitError(f"{path}: expected a JSON object")
    if raw.get("format") == "llmkit":
        return ModelConfig.from_file(path), "llmkit"
    if "model_type" in raw:
        from llmkit.convert.hf import config_from_hf

        try:
            return config_from_hf(raw), "hf"
        except LLMKitError as e:
            raise LLMKitError(f"{path}: {e}") from None
    raise LLMKitError(f"{path}: neither an llmkit config (\"format\": \"llmkit\") nor a Hugging Face one (no \"model_type\")")


@dataclass
class Loaded:
    model: "torch.nn.Module"
    config: ModelConfig
    path: Path  # the directory the weights (and tokenizer files) came from
    kind: str  # "llmkit" or "hf"


def load_model(spec: str | Path, device: str | torch.device = "cpu", dtype: Optional[torch.dtype | str] = None) -> Loaded:
    """Load MODEL: an llmkit checkpoint dir, a Hugging Face model dir, or a hub repo id."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise LLMKitError(f"unknown dtype '{dtype}'; choose from {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    d = resolve_model_dir(spec)
    meta = read_adapter_config(d)
    if meta is not None:
        return load_adapter_model(d, meta, device, dtype)
    cfg, kind = read_config(d)
    sd = load_weights(d)
    if kind == "hf":
        from llmkit.convert.hf import state_dict_from_hf

        sd = state_dict_from_hf(sd, cfg, source=str(d))
    model = build_model(cfg, sd, source=str(d), device=device, dtype=dtype)
    return Loaded(model, cfg, d, kind)
