"""Checkpoint I/O: the one module that writes or reads back the files of a model or a run.

An llmkit model directory:

    config.json                      ModelConfig.to_dict() ({"format": "llmkit", ...})
    model.safetensors                weights (or model-0000i-of-0000n.safetensors + index)
    tokenizer.json, tokenizer_config.json, ...   tokenizer files, copied as they came
    classifier.json                  (a task head: classifier, tagger, QA) its labels, columns and
                                     head spec ("head": task, pooling, hidden layer; heads.py)
    adapter.safetensors + adapter_config.json    (a LoRA checkpoint, instead of the weights)
                                     the trained tensors, naming the base model

A training run's output directory (`--out`):

    checkpoints/step-00000500/       a model directory + optimizer.pt + trainer_state.json
    checkpoints/latest               the name of the newest complete step directory
    final/                           the last checkpoint's model files: the run's model
    summary.json                     what the run did (recipe-specific fields)
    reference_logps.safetensors      (DPO) the reference model's log-probabilities

Every file is written atomically (temp file in the same directory, fsync, rename), so a crash
mid-write leaves the previous file or none, never half a file; a directory (a step checkpoint,
`final/`) is built under a temporary name and swapped in by one rename. Weights are
safetensors; the optimizer state is loaded with `torch.load(weights_only=True)`, which accepts
tensors and plain containers only: nothing here unpickles code. A MODEL argument anywhere in
llmkit goes through `load_model`, which accepts an llmkit directory, a Hugging Face model
directory (converted in memory), a LoRA or classifier checkpoint, or a hub repo id (downloaded
first). `convert/hf.py` maps names and configs; this module reads and writes the directories.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from llmkit.config import ModelConfig
from llmkit.errors import LLMKitError, read_json

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


CLASSIFIER = "classifier.json"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER_STATE = "optimizer.pt"
REFERENCE_LOGPS = "reference_logps.safetensors"
SUMMARY = "summary.json"


# --- atomic files (llmkit.fileio; re-exported: recipes import them from here) ---------------
from llmkit.fileio import _fsync_dir, atomic_copy, atomic_write, atomic_write_json, atomic_write_text  # noqa: E402,F401


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic rename (Linux renameat2 RENAME_EXCHANGE); False where the
    OS or the file system cannot."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # glibc < 2.28, musl
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    return renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0


def replace_dir(new: str | Path, target: str | Path) -> None:
    """Put the complete directory `new` at `target`, atomically: a reader sees the old
    directory or the new one, never a partial one and never none. Where `target` exists the
    two are exchanged in one rename (Linux), then the old one is removed; elsewhere the old
    one is renamed aside first (a moment with no `target`, but never a mixed one) and removed
    after the new one is in place."""
    new, target = Path(new), Path(target)
    if not target.exists():
        os.replace(new, target)
    elif _exchange(new, target):
        shutil.rmtree(new)  # now the old directory
    else:
        aside = target.with_name(f".{target.name}.old")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(target, aside)
        os.replace(new, target)
        shutil.rmtree(aside, ignore_errors=True)
    _fsync_dir(target.parent)


def write_summary(out_dir: str | Path, summary: dict) -> Path:
    """OUT/summary.json, atomically (paths written as strings)."""
    path = Path(out_dir) / SUMMARY
    atomic_write_json(path, summary)
    return path


# --- tensors and weights ------------------------------------------------------------------------
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
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as e:
            raise LLMKitError(f"{index}: not a valid safetensors index ({e})") from None
        # A shard is a file of this folder: an index naming '../x' or '/etc/x' is refused.
        bad = [f for f in files if not isinstance(f, str) or Path(f).name != f or f in ("", ".", "..")]
        if bad:
            raise LLMKitError(f"{index}: shard names must be files of {d}, got {bad[0]!r}")
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
                device: str | torch.device = "cpu", dtype: Optional[torch.dtype] = None,
                head: Optional[dict] = None):
    """A Transformer holding `state_dict`, checked key by key and shape by shape; with
    `head` (a spec, see heads.py), its output layer that task head.

    Built on the meta device and filled by assignment: no random init, no second copy.
    """
    from llmkit.heads import attach_head
    from llmkit.model import Transformer, rope_tables

    with torch.device("meta"):
        model = Transformer(cfg)
        if head is not None:
            attach_head(model, head)
    cfg = model.cfg
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
        what = f"a {head['task']} head of {head['n_out']} outputs on this config" if head else "the config"
        raise LLMKitError(f"{source}: weights do not match {what} ({'; '.join(parts)})")
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
    # non-persistent buffers: rebuilt, not loaded (an encoder-decoder's encoder has its own)
    for stack in (model, model.encoder) if model.encoder is not None else (model,):
        stack.inv_freq, stack.inv_freq_local = (t.to(device) for t in rope_tables(stack.cfg))
    return model.eval()


def _abbrev(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


# --- model directories ------------------------------------------------------------------------
def copy_tokenizer_files(src_dir: str | Path, out_dir: str | Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        p = Path(src_dir) / name
        if p.is_file() and Path(src_dir).resolve() != Path(out_dir).resolve():
            atomic_copy(p, Path(out_dir) / name)
            copied.append(name)
    return copied


def save_model(out_dir: str | Path, model, tokenizer_dir: str | Path | None = None,
               max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, dtype: Optional[torch.dtype] = None,
               extra: Optional[dict] = None) -> Path:
    """Write an llmkit checkpoint directory: weights, then tokenizer files and `extra` files
    ({name: dict or str}), then config.json (last: its presence marks a complete directory)."""
    out = Path(out_dir)
    sd = model.state_dict()
    if model.cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)  # HF convention: the tied head is not stored twice
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    save_weights(out, sd, max_shard_bytes)
    if tokenizer_dir is not None:
        copy_tokenizer_files(tokenizer_dir, out)
    _write_extra(out, extra)
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


def _read_json(path: Path):
    """The JSON value in `path`, None if there is no such file; a clear error if it is not JSON."""
    return read_json(path) if path.exists() else None


def read_adapter_config(model_dir: str | Path) -> Optional[dict]:
    """The adapter settings of a LoRA checkpoint directory, or None for a full model."""
    path = Path(model_dir) / ADAPTER_CONFIG
    meta = _read_json(path)
    if meta is None:
        return None
    if not isinstance(meta, dict) or meta.get("format") != "llmkit-lora":
        if isinstance(meta, dict) and "peft_type" in meta:
            raise LLMKitError(f"{path}: a Hugging Face peft adapter; merge it into its base with peft and load "
                              "the merged model (llmkit loads its own adapters)")
        raise LLMKitError(f"{path}: not an llmkit adapter config")
    for key in ("base_model", "lora"):
        if key not in meta:
            raise LLMKitError(f"{path}: missing '{key}'")
    return meta


def read_classifier(model_dir: str | Path) -> Optional[dict]:
    """The classifier.json of a classifier checkpoint (labels, columns, ...), or None."""
    path = Path(model_dir) / CLASSIFIER
    meta = _read_json(path)
    if meta is None:
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("labels"), list) or len(meta["labels"]) < 2:
        raise LLMKitError(f"{path}: no label list")
    return meta


def _write_extra(d: Path, extra: Optional[dict]) -> None:
    """Recipe files of a model directory: {name: dict (JSON) or str (text)}."""
    for name, content in (extra or {}).items():
        if isinstance(content, str):
            atomic_write_text(d / name, content)
        else:
            atomic_write_json(d / name, content)


def model_writer(cfg: ModelConfig, tokenizer_dir: Optional[Path] = None, adapter: Optional[dict] = None,
                 extra: Optional[dict] = None) -> Callable[[Path, dict], None]:
    """How a run writes the model files of each checkpoint (the training loop's `save_fn`):
    a complete model directory (weights, tokenizer files, `extra` files, config.json last), or,
    with `adapter` (the adapter_config fields: base_model, lora, quantize), a LoRA checkpoint
    holding only the trained tensors. `extra`: {file name: dict or str}, e.g. classifier.json
    or the chat template the model was tuned with."""

    def write(d: Path, sd: dict) -> None:
        if adapter is not None:
            save_adapter(d, sd, adapter, tokenizer_dir)
            _write_extra(d, extra)
            return
        if cfg.tie_embeddings:
            sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}
        save_weights(d, sd)
        if tokenizer_dir is not None:
            copy_tokenizer_files(tokenizer_dir, d)
        _write_extra(d, extra)
        atomic_write_json(d / "config.json", cfg.to_dict())

    return write


# --- Hugging Face directories -------------------------------------------------------------------
def read_config(model_dir: str | Path) -> tuple[ModelConfig, str]:
    """(config, kind) where kind is "llmkit" or "hf" (a transformers config.json)."""
    from llmkit.convert.hf import config_from_hf

    path = Path(model_dir) / "config.json"
    raw = _read_json(path)
    if raw is None:
        raise LLMKitError(f"{path}: missing (not an llmkit or Hugging Face model directory)")
    if not isinstance(raw, dict):
        raise LLMKitError(f"{path}: expected a JSON object")
    if raw.get("format") == "llmkit":
        return ModelConfig.from_file(path), "llmkit"
    if "model_type" in raw:
        gen = _read_json(Path(model_dir) / "generation_config.json")
        if isinstance(gen, dict):  # transformers 5 keeps an encoder-decoder's forced tokens there
            raw = {**raw, **{k: gen[k] for k in ("decoder_start_token_id", "forced_bos_token_id",
                                                  "forced_eos_token_id") if gen.get(k) is not None}}
        try:
            return config_from_hf(raw), "hf"
        except LLMKitError as e:
            raise LLMKitError(f"{path}: {e}") from None
    raise LLMKitError(f"{path}: neither an llmkit config (\"format\": \"llmkit\") nor a Hugging Face one (no \"model_type\")")


def save_hf(out_dir: str | Path, model, tokenizer_dir: Optional[Path] = None, model_type: Optional[str] = None,
            max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, classifier: Optional[dict] = None) -> str:
    """Write a Hugging Face model directory that transformers' `from_pretrained` loads:
    HF-named weights, tokenizer files, generation_config.json (unless the tokenizer files bring
    one) and config.json last. `classifier`: a task head's classifier.json (labels, head), which
    picks the task's class (BertForTokenClassification, ...). Returns the architecture name."""
    from llmkit.convert import hf
    from llmkit.heads import head_of

    cfg = model.cfg
    mt = model_type or hf.infer_hf_model_type(cfg)
    param_dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    head = head_of(classifier, cfg)
    # refuses what the HF class cannot express
    hf_cfg = hf.config_to_hf(cfg, mt, dtype=param_dtype, head=head, labels=(classifier or {}).get("labels"))
    out = Path(out_dir)
    save_weights(out, hf.state_dict_to_hf(model.state_dict(), cfg, mt, head["task"] if head else None), max_shard_bytes)
    if tokenizer_dir is not None:
        copy_tokenizer_files(tokenizer_dir, out)
    if not (out / "generation_config.json").exists():
        atomic_write_json(out / "generation_config.json", hf.generation_config(cfg))
    atomic_write_json(out / "config.json", hf_cfg)
    return hf_cfg["architectures"][0]


# --- the one loader: a MODEL argument -> model (+ tokenizer) ------------------------------------
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model_dir(spec: str | Path) -> Path:
    """A local directory for `spec`: the directory itself (a training run's --out stands for its
    final/ model), or a hub repo id downloaded first."""
    p = Path(spec).expanduser()
    if p.exists():
        if not p.is_dir():
            raise LLMKitError(f"{p}: expected a model directory, got a file")
        if not (p / "config.json").exists() and (p / "final" / "config.json").exists():
            return p / "final"
        return p
    if isinstance(spec, str) and _REPO_ID.match(spec) and not spec.startswith((".", "/")):
        from llmkit.hub import download

        return download(spec)
    raise LLMKitError(f"{spec}: no such model directory (and not a Hugging Face repo id like 'org/name')")


def resolve_dtype(dtype: Optional[torch.dtype | str]) -> Optional[torch.dtype]:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise LLMKitError(f"unknown dtype '{dtype}'; choose from {', '.join(DTYPES)}")
    return DTYPES[dtype]


def resolve_device(device: Optional[str | torch.device]) -> torch.device:
    """"auto"/None: the first CUDA GPU if there is one, else the CPU."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise LLMKitError(f"unknown device '{device}' ({e})") from None


@dataclass
class Loaded:
    model: "torch.nn.Module"
    config: ModelConfig
    path: Path  # the directory the weights (and tokenizer files) came from
    kind: str  # "llmkit", "hf" or "lora"
    classifier: Optional[dict] = None  # classifier.json of a classifier checkpoint
    _tokenizer: object = None

    @property
    def tokenizer(self):
        """The tokenizer of the same folder (loaded on first use), checked against the model's
        embeddings."""
        if self._tokenizer is None:
            from llmkit.tokenizer import Tokenizer

            tok = Tokenizer.from_dir(self.path)
            if self.classifier is None and tok.vocab_size > self.config.vocab_size:
                raise LLMKitError(f"{self.path}: the tokenizer has {tok.vocab_size} tokens but the model only "
                                  f"{self.config.vocab_size} embeddings (mismatched tokenizer files?)")
            self._tokenizer = tok
        return self._tokenizer


def load_model(spec: str | Path, device: str | torch.device = "cpu", dtype: Optional[torch.dtype | str] = None,
               merge: bool = True) -> Loaded:
    """Load MODEL, for every command: an llmkit checkpoint directory, a Hugging Face model
    directory (converted in memory), a LoRA checkpoint (its base + the adapter, merged into
    plain linear layers unless `merge=False`), a classifier checkpoint (classifier.json: the
    class head in place of the output layer), or a hub repo id (downloaded first).

    `device` may be "auto"; `dtype` a torch dtype or a name (float32, bf16, ...; default: as
    stored). The model is in eval mode; `.tokenizer` loads the folder's tokenizer.
    """
    dtype, device = resolve_dtype(dtype), resolve_device(device)
    d = resolve_model_dir(spec)
    from llmkit.heads import head_of

    classifier = read_classifier(d)
    meta = read_adapter_config(d)
    if meta is not None:
        return _load_adapter(d, meta, device, dtype, merge, classifier)
    cfg, kind = read_config(d)
    sd = load_weights(d)
    if kind == "hf":
        from llmkit.convert.hf import hf_head, state_dict_from_hf

        classifier = hf_head(_read_json(d / "config.json"), cfg)  # ...ForSequenceClassification etc.
        sd = state_dict_from_hf(sd, cfg, source=str(d), task=classifier["head"]["task"] if classifier else None)
    model = build_model(cfg, sd, source=str(d), device=device, dtype=dtype, head=head_of(classifier, cfg))
    return Loaded(model, model.cfg, d, kind, classifier)


def _load_adapter(d: Path, meta: dict, device: torch.device, dtype: Optional[torch.dtype], merge: bool,
                  classifier: Optional[dict]) -> Loaded:
    """Base model + adapter (+ class head). The adapter was trained against the (possibly
    quantized) base: that is rebuilt exactly, so merging folds it into the weights training
    saw. The merge is computed in float32, then cast to `dtype`."""
    from llmkit.heads import attach_head, head_of
    from llmkit.lora import LoRAConfig, apply_lora, load_lora_state_dict, merge_lora

    base = load_model(meta["base_model"], device=device, dtype=torch.float32)
    model = base.model
    if classifier is not None:
        attach_head(model, head_of(classifier, model.cfg))
    apply_lora(model, LoRAConfig(**meta["lora"]), quantize=meta.get("quantize"))
    load_lora_state_dict(model, load_weights(d), source=str(d / ADAPTER))
    if merge:
        merge_lora(model)
    if dtype is not None:
        model.to(dtype)
    model.eval()
    return Loaded(model, model.cfg, d, "lora", classifier)


# --- a training run: OUT/checkpoints, OUT/final, OUT/reference_logps ----------------------------
def step_dir(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step-{step:08d}"


def find_latest(out_dir: str | Path) -> Optional[Path]:
    """The newest complete step checkpoint of a run (what `latest` names, else the highest
    step directory holding a trainer state), or None."""
    root = Path(out_dir) / "checkpoints"
    latest = root / "latest"
    if latest.exists():
        d = root / latest.read_text().strip()
        if (d / TRAINER_STATE).exists():
            return d
    done = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")
                  and (p / TRAINER_STATE).exists())
    return done[-1] if done else None


def resume_point(out_dir: str | Path, resume: str) -> Optional[Path]:
    """The checkpoint a run with `--resume` continues from: "none" -> None, "auto" -> the
    latest one in `out_dir` (None in a fresh directory), else the directory given."""
    if resume == "none":
        return None
    path = find_latest(out_dir) if resume == "auto" else Path(resume)
    if path is not None and not (path / TRAINER_STATE).exists():
        raise LLMKitError(f"{path}: not a training checkpoint (no {TRAINER_STATE})")
    return path


def save_training_checkpoint(out_dir: str | Path, step: int, model_state: dict,
                             write_model: Optional[Callable[[Path, dict], None]], optimizer_state: dict,
                             rng_state: dict, trainer_state: dict, keep_last: int) -> Path:
    """OUT/checkpoints/step-N: the model files (`write_model(dir, state dict)`, default the
    weights alone), the optimizer and RNG states (optimizer.pt) and `trainer_state` (JSON:
    step, tokens, data position, ...). Built as step-N.tmp and swapped in whole; `latest` is
    switched after it, then all but the newest `keep_last` step directories are removed."""
    final = step_dir(out_dir, step)
    root = final.parent
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (write_model or (lambda d, sd: save_weights(d, sd)))(tmp, model_state)
    # Tensors, ints and floats only: loadable with weights_only=True.
    atomic_write(tmp / OPTIMIZER_STATE, lambda p: torch.save({"optimizer": optimizer_state, "rng": rng_state}, p))
    atomic_write_json(tmp / TRAINER_STATE, trainer_state)
    replace_dir(tmp, final)
    atomic_write_text(root / "latest", final.name + "\n")
    if keep_last > 0:  # `final` counts as one of the kept
        older = sorted(p for p in root.glob("step-*") if p.is_dir() and p != final and not p.name.endswith(".tmp"))
        for old in older[: len(older) - (keep_last - 1)]:
            shutil.rmtree(old, ignore_errors=True)
    return final


@dataclass
class TrainingCheckpoint:
    model: dict[str, torch.Tensor]  # the saved (trained) tensors
    optimizer: dict
    rng: dict
    state: dict  # trainer_state.json


_STATE_KEYS = {"step": int, "tokens": int, "elapsed": (int, float)}


def load_training_checkpoint(path: str | Path) -> TrainingCheckpoint:
    """Everything a step checkpoint holds, each part checked: a damaged one (truncated or
    garbled optimizer.pt, a trainer_state.json that is not JSON or lacks a key, missing or
    corrupt weights) is an LLMKitError that says which file and what is wrong."""
    path = Path(path)
    try:
        state = json.loads((path / TRAINER_STATE).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LLMKitError(f"{path / TRAINER_STATE}: cannot read the trainer state ({e})") from None
    if not isinstance(state, dict):
        raise LLMKitError(f"{path / TRAINER_STATE}: expected a JSON object")
    for key, kind in _STATE_KEYS.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise LLMKitError(f"{path / TRAINER_STATE}: no valid '{key}'")
    try:
        bundle = torch.load(path / OPTIMIZER_STATE, map_location="cpu", weights_only=True)
        optimizer, rng = bundle["optimizer"], bundle["rng"]
    except Exception as e:  # missing, truncated, corrupt or not ours
        first = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]  # torch's first sentence
        raise LLMKitError(f"{path / OPTIMIZER_STATE}: cannot read the optimizer state ({first})") from None
    return TrainingCheckpoint(load_weights(path), optimizer, rng, state)


def load_resume_checkpoint(out_dir: str | Path, resume: str,
                           warn: Callable[[str], None] = lambda msg: None) -> Optional[tuple[Path, TrainingCheckpoint]]:
    """(path, checkpoint) a run continues from, or None for a fresh start. "auto": the newest
    intact step checkpoint of `out_dir`; a damaged one is reported through `warn` (one line:
    which file, what is wrong) and the next older one is tried; when there are checkpoints but
    none is intact, an LLMKitError. A directory given explicitly must be intact."""
    if resume == "none":
        return None
    if resume != "auto":
        path = resume_point(out_dir, resume)
        return path, load_training_checkpoint(path)
    root = Path(out_dir) / "checkpoints"
    candidates = sorted((p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")), reverse=True)
    latest = find_latest(out_dir)
    if latest is not None and latest in candidates:  # what `latest` names first
        candidates.remove(latest)
        candidates.insert(0, latest)
    problems = []
    for path in candidates:
        try:
            return path, load_training_checkpoint(path)
        except LLMKitError as e:
            problems.append(str(e))
            warn(f"warning: skipping damaged checkpoint {path.name}: {e}")
    if problems:
        raise LLMKitError(f"no intact checkpoint in {root} ({len(problems)} damaged, newest: {problems[0]}); "
                          "start over with --resume none or another --out")
    return None


def clean_stale_files(out_dir: str | Path) -> list[Path]:
    """Remove what an interrupted write left behind in a run's directory: step-N.tmp
    directories, `.final.tmp` / `.final.old`, and atomic writes' `.NAME.*.tmp` files."""
    out = Path(out_dir)
    stale = [p for p in (out / "checkpoints").glob("step-*.tmp")]
    stale += [p for p in (out / ".final.tmp", out / ".final.old") if p.exists()]
    for d in (out, out / "checkpoints", *(p for p in (out / "checkpoints").glob("step-*") if p.is_dir())):
        stale += [p for p in d.glob(".*.tmp") if p.is_file()]
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale


def publish_final(ckpt: str | Path, final: str | Path) -> Path:
    """OUT/final: the model files of checkpoint `ckpt` (not the optimizer or trainer state),
    copied to a temporary directory, then swapped in with one rename (see `replace_dir`)."""
    ckpt, final = Path(ckpt), Path(final)
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in ckpt.iterdir():
        if f.name not in (OPTIMIZER_STATE, TRAINER_STATE):
            shutil.copy2(f, tmp / f.name)
    for f in tmp.iterdir():  # copy2 kept the data; make it durable before the swap
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    replace_dir(tmp, final)
    return final


def save_reference_logps(out_dir: str | Path, logps: torch.Tensor, fingerprint: str) -> Path:
    """DPO's reference log-probabilities, with the fingerprint of the data and model they
    belong to (so a resumed run reuses exactly the same numbers)."""
    path = Path(out_dir) / REFERENCE_LOGPS
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors({"reference_logps": logps}, path, metadata={"fingerprint": fingerprint})
    return path


def load_reference_logps(out_dir: str | Path, fingerprint: str) -> Optional[torch.Tensor]:
    """The saved reference log-probabilities if they carry `fingerprint`; None when absent,
    computed for other data, or unreadable (then they are recomputed, never fatal)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(out_dir) / REFERENCE_LOGPS
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("fingerprint") != fingerprint:
            return None
        return load_file(path)["reference_logps"].clone()  # not a view of the mmapped file
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError):
        return None


# --- commands: convert from-hf / to-hf, merge-lora ----------------------------------------------
def from_hf(src: str, out: str, dtype: Optional[str] = None, max_shard_size_mb: int = 5000) -> None:
    """Convert a Hugging Face model (directory or hub repo id) to an llmkit checkpoint.

    Args:
        src: a Hugging Face model directory or hub repo id.
        out: the llmkit checkpoint directory to write.
        dtype: store weights as float32, bfloat16 or float16 (default: as in the source).
        max_shard_size_mb: split the weights into shards of at most this size.
    """
    loaded = load_model(src, dtype=dtype)
    if loaded.kind != "hf":
        raise LLMKitError(f"{loaded.path}: already an llmkit checkpoint")
    extra = {CLASSIFIER: loaded.classifier} if loaded.classifier is not None else None
    save_model(out, loaded.model, tokenizer_dir=loaded.path, max_shard_bytes=max_shard_size_mb * 1024**2, extra=extra)
    n = sum(p.numel() for p in loaded.model.parameters())
    print(f"wrote {out} ({loaded.config.hf_model_type}, {n:,} parameters)")


def to_hf(src: str, out: str, model_type: Optional[str] = None, dtype: Optional[str] = None,
          max_shard_size_mb: int = 5000) -> None:
    """Export a model to a Hugging Face directory that transformers' from_pretrained loads.

    Args:
        src: an llmkit checkpoint (or any MODEL llmkit accepts).
        out: the Hugging Face model directory to write.
        model_type: the transformers model_type to export as (default: from the config).
        dtype: store weights as float32, bfloat16 or float16 (default: as loaded).
    """
    loaded = load_model(src, dtype=dtype)
    arch = save_hf(out, loaded.model, loaded.path, model_type, max_shard_size_mb * 1024**2, loaded.classifier)
    print(f"wrote {out} (Hugging Face {arch})")


def merge_lora(adapter: str, out: str, dtype: Optional[str] = None) -> str:
    """Fold a LoRA adapter into its base model: a plain llmkit checkpoint (exports to Hugging Face
    with `llmkit convert to-hf` like any other).

    Args:
        adapter: a LoRA checkpoint directory (from `llmkit finetune --method lora`, e.g. OUT/final).
        out: directory for the merged model.
        dtype: weights dtype of the merged model (float32, bfloat16, float16; default float32).
    """
    d = resolve_model_dir(adapter)
    if read_adapter_config(d) is None:
        raise LLMKitError(f"{adapter}: not a LoRA checkpoint (no adapter_config.json)")
    loaded = load_model(d, dtype=resolve_dtype(dtype) or torch.float32)  # merged in float32, then cast
    extra = {CLASSIFIER: loaded.classifier} if loaded.classifier is not None else None
    save_model(out, loaded.model, tokenizer_dir=d, extra=extra)
    print(f"merged {d} into {out}")
    return str(out)
