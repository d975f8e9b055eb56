"""Pretraining: from a preset (from scratch) or from an existing model (continued pretraining)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from llmkit.config import ModelConfig
from llmkit.errors import LLMKitError
from llmkit.training.loop import TrainConfig, Trainer, setup_runtime
from llmkit.training.losses import causal_lm_loss, mean_lm_loss


def checkpoint_saver(cfg: ModelConfig, tokenizer_dir: Optional[Path]):
    """save_fn for the loop: every step checkpoint is a complete llmkit model directory."""
    from llmkit.checkpoint import atomic_write_json, copy_tokenizer_files, save_weights

    def save(d: Path, sd: dict) -> None:
        if cfg.tie_embeddings:
            sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}
        save_weights(d, sd)
        if tokenizer_dir is not None:
            copy_tokenizer_files(tokenizer_dir, d)
        atomic_write_json(d / "config.json", cfg.to_dict())

    return save


def is_new_model(model: str) -> bool:
    """Whether MODEL names an architecture to build (a preset or a ModelConfig JSON file) rather
    than an existing checkpoint to continue from."""
    from llmkit.presets import PRESETS

    return model.lower() in PRESETS or model.endswith(".json")


def model_config(model: str, overrides: Optional[dict] = None, vocab_size: Optional[int] = None) -> ModelConfig:
    """The ModelConfig of a preset or JSON file with `overrides` applied (validated: an unknown
    field or a bad value is an LLMKitError, not a TypeError). Allocates nothing."""
    from llmkit.presets import PRESETS

    cfg = ModelConfig.from_name(model) if model.lower() in PRESETS else ModelConfig.from_file(model)
    overrides = dict(overrides or {})
    if vocab_size is not None and "vocab_size" not in overrides:
        overrides["vocab_size"] = vocab_size  # the tokenizer decides the embedding size
    if not overrides:
        return cfg
    # Through from_dict, not dataclasses.replace: unknown keys get a clear error and a nested
    # rope_scaling override becomes a RopeScaling.
    return ModelConfig.from_dict({**cfg.to_dict(), **overrides})


def build_or_load(model: str, overrides: Optional[dict], vocab_size: Optional[int]):
    """(model, tokenizer dir or None): a fresh model from a preset or a config.json, or an
    existing checkpoint (llmkit dir, HF dir or hub repo id) for continued pretraining."""
    from llmkit.model import Transformer

    if is_new_model(model):
        return Transformer(model_config(model, overrides, vocab_size)), None
    from llmkit.checkpoint import load_model

    if overrides:
        raise LLMKitError("--model.* overrides apply to presets; an existing model keeps its architecture")
    loaded = load_model(model, dtype=torch.float32)
    loaded.model.train()
    return loaded.model, loaded.path


def pretrain(
    model: str = "micro-llama",
    data: Optional[str] = None,
    out: str = "out/pretrain",
    seq_len: Optional[int] = None,
    eval_batches: int = 16,
    model_overrides: Optional[dict] = None,
    train: TrainConfig = TrainConfig(max_steps=1000, micro_batch_size=16, eval_every=200),
) -> dict:
    """Pretrain a model on prepared token shards (from `llmkit data prepare`).

    Args:
        model: a preset name (from scratch; see `llmkit models`), a ModelConfig JSON file, or an
            existing model (llmkit dir, Hugging Face dir or hub repo id) to continue pretraining.
        data: a directory written by `llmkit data prepare`.
        out: output directory (checkpoints, metrics.csv, loss.png, final/ model).
        seq_len: training sequence length (default: the data's, capped at the model's context).
        eval_batches: validation batches per evaluation.
        model_overrides: preset fields to change, e.g. --model.n_layer 4 --model.n_embd 256.
        train: training loop settings (--train.max_steps, --train.lr, ...).
    """
    from llmkit.data.shards import TokenShards, WindowSampler, load_manifest

    if data is None:
        raise LLMKitError("--data is required: a directory written by `llmkit data prepare`")
    manifest = load_manifest(data)
    train_shards = TokenShards(data, "train")
    tok_dir = train_shards.tokenizer_dir
    rt = setup_runtime(train)
    torch.manual_seed(train.seed)  # the same initial weights on every process
    net, model_dir = build_or_load(model, model_overrides, manifest.get("vocab_size"))
    cfg: ModelConfig = net.cfg
    if manifest.get("vocab_size", 0) > cfg.vocab_size:
        raise LLMKitError(f"{data}: tokens go up to vocab size {manifest['vocab_size']} but the model has "
                          f"{cfg.vocab_size} embeddings: prepare the data with the model's tokenizer")
    T = seq_len or min(int(manifest.get("seq_len") or cfg.block_size), cfg.block_size)
    if T > cfg.block_size:
        raise LLMKitError(f"seq_len {T} is longer than the model's context ({cfg.block_size})")
    batches = WindowSampler(train_shards, T, train.micro_batch_size, seed=train.seed,
                            rank=rt.rank, world_size=rt.world)
    val = TokenShards(data, "val") if manifest.get("splits", {}).get("val", {}).get("tokens") else None

    def evaluate(m) -> dict:
        if val is None:
            return {}
        return mean_lm_loss(m, val.val_batches(T, train.micro_batch_size, eval_batches))

    n_params = sum(p.numel() for p in net.parameters())
    if rt.main:
        print(f"model: {cfg.name}, {n_params:,} parameters, {cfg.n_layer} layers, d_model {cfg.n_embd}; "
              f"data: {len(train_shards):,} train tokens, seq_len {T}", flush=True)
    trainer = Trainer(
        net, train, out, batches, causal_lm_loss, evaluate=evaluate,
        save_fn=checkpoint_saver(cfg, tok_dir or model_dir), flops_per_token=cfg.flops_per_token(T), runtime=rt,
    )
    result = trainer.fit()
    if rt.main:
        final = Path(out) / "final"
        publish_final(result["checkpoint"], final)
        result["final"] = str(final)
        summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in result.items()}
        (Path(out) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"done: step {result['step']}, {result['tokens']:,} tokens; model in {final}", flush=True)
    return result


def publish_final(ckpt: Path, final: Path) -> None:
    """Copy the last checkpoint's model files (not the optimizer) to out/final, atomically."""
    import shutil

    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in ckpt.iterdir():
        if f.name not in ("optimizer.pt", "trainer_state.json"):
            shutil.copy2(f, tmp / f.name)
    shutil.rmtree(final, ignore_errors=True)
    tmp.replace(final)
