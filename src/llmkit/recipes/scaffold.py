"""The one recipe scaffold: what every training recipe does before and after its own part.

    Run(model, out, train)   the MODEL argument resolved (a preset or config file to build, or
                             a checkpoint / HF dir / hub id, downloaded if need be; a LoRA
                             adapter is refused: merge it first); its tokenizer, on demand
    run.load()               processes and device (torchrun or one), the seed, the model (built
                             fresh, or loaded in float32), the vocabulary check
      -- the recipe: its batches and its loss --
    run.fit(...)             the one training loop (training.loop.Trainer), its checkpoints
                             written as full model directories or LoRA adapters (checkpoint.py)
    run.finish(...)          OUT/final published, OUT/summary.json and OUT/system.json (the
                             machine: report/system.py) written, the last line and the next
                             commands of the cycle printed

A recipe is then its data, its batches and its loss (pretrain, finetune, classify, dpo): see
recipes/pretrain.py for the shortest one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch

from llmkit.config import ModelConfig
from llmkit.errors import LLMKitError
from llmkit.lora import LoRAConfig
from llmkit.training.loop import TrainConfig, Trainer, setup_runtime


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


def base_reference(model_spec: str) -> str:
    """How an adapter names its base: a hub repo id as given, a directory as an absolute path."""
    p = Path(model_spec).expanduser()
    return str(p.resolve()) if p.exists() else model_spec


class Run:
    """One training run of a recipe, from the MODEL argument to OUT/final.

    model: a preset name or ModelConfig JSON file (built fresh), or an existing model (llmkit
    checkpoint, Hugging Face dir, hub repo id). tokenizer_dir: where the tokenizer comes from
    (default: the model's folder; pretraining passes the data's).
    """

    def __init__(self, model: str, out: str | Path, train: TrainConfig, tokenizer_dir: Optional[Path] = None):
        from llmkit.checkpoint import read_adapter_config, resolve_model_dir

        train.validate(complete=False)  # every setting's range, before anything is read or loaded
        self.spec, self.out, self.train = model, Path(out), train
        self.new = is_new_model(model)
        self.model_dir: Optional[Path] = None if self.new else resolve_model_dir(model)
        if self.model_dir is not None and read_adapter_config(self.model_dir) is not None:
            raise LLMKitError(f"{model}: a LoRA adapter; merge it first (llmkit merge-lora {model} --out DIR) "
                              "and train the merged model")
        self.tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir is not None else self.model_dir
        self.model: Optional[torch.nn.Module] = None
        self.rt = None
        self.trainer: Optional[Trainer] = None
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from llmkit.tokenizer import Tokenizer

            if self.tokenizer_dir is None:
                raise LLMKitError(f"{self.spec}: a new model has no tokenizer; give one")
            self._tokenizer = Tokenizer.from_dir(self.tokenizer_dir)
        return self._tokenizer

    @property
    def pad_id(self) -> int:
        """Padding id of the batches: the tokenizer's pad token, else EOS, else 0 (padding never
        reaches the loss: labels there are IGNORE_INDEX)."""
        tok = self.tokenizer
        return next(i for i in (tok.pad_id, tok.eos_id, 0) if i is not None)

    def config(self) -> ModelConfig:
        """The model's architecture, read without loading any weights (a recipe picks its data
        format by it: an encoder-decoder takes (source, target) pairs)."""
        if self.new:
            return model_config(self.spec)
        from llmkit.checkpoint import read_config

        return read_config(self.model_dir)[0]

    @property
    def main(self) -> bool:
        return self.rt is None or self.rt.main

    def load(self, overrides: Optional[dict] = None, vocab_size: Optional[int] = None) -> torch.nn.Module:
        """Start the processes and build or load the model (float32 master weights: the loop's
        autocast gives bf16 speed where it can, and small updates do not round away).
        `vocab_size`: the largest token id + 1 the data can hold (default: the tokenizer's)."""
        from llmkit.checkpoint import load_model

        self.rt = setup_runtime(self.train)
        torch.manual_seed(self.train.seed)  # the same initial weights on every process
        if self.new:
            from llmkit.model import Transformer

            model = Transformer(model_config(self.spec, overrides, vocab_size))
        else:
            if overrides:
                raise LLMKitError("--model.* overrides apply to presets; an existing model keeps its architecture")
            model = load_model(self.model_dir, dtype=torch.float32).model
            model.train()
        cfg = model.cfg
        if vocab_size is not None and vocab_size > cfg.vocab_size:
            raise LLMKitError(f"the data's tokens go up to vocab size {vocab_size} but the model has "
                              f"{cfg.vocab_size} embeddings: prepare the data with the model's tokenizer")
        if vocab_size is None and self.tokenizer.vocab_size > cfg.vocab_size:
            raise LLMKitError(f"{self.model_dir}: the tokenizer has {self.tokenizer.vocab_size} tokens but the model "
                              f"only {cfg.vocab_size} embeddings")
        self.model = model
        return model

    def fit(self, train: TrainConfig, batches: Iterator, loss_fn: Callable, *, lora: Optional[LoRAConfig] = None,
            quantize: Optional[str] = None, extra_files: Optional[dict] = None, eval_first: bool = False,
            **trainer_kwargs) -> dict:
        """Train with the one loop. With `lora`, checkpoints hold only the trained tensors and an
        adapter_config.json naming the base (quantized with `quantize` if it was); else each is
        a complete model directory. `extra_files` ({name: dict or str}) go into every checkpoint.
        `eval_first`: evaluate before training even when the loop would not (eval_every 0).
        `trainer_kwargs`: evaluate, on_eval, flops_per_token, weight_fn (see Trainer)."""
        from llmkit.checkpoint import model_writer

        adapter = None
        if lora is not None:
            adapter = {"base_model": base_reference(self.spec), "quantize": quantize,
                       "lora": {"r": lora.r, "alpha": lora.alpha, "dropout": lora.dropout,
                                "targets": lora.resolved_targets()}}
        save_fn = model_writer(self.model.cfg, self.tokenizer_dir, adapter=adapter, extra=extra_files)
        self.trainer = Trainer(self.model, train, self.out, batches, loss_fn, save_fn=save_fn,
                               trainable_only=adapter is not None, runtime=self.rt, **trainer_kwargs)
        if eval_first:
            self.trainer.run_eval()
        return self.trainer.fit()

    def finish(self, result: dict, summary: Optional[dict] = None, done: str = "",
               next_steps: Sequence[str] = ()) -> dict:
        """Publish OUT/final, write OUT/summary.json (default: the loop's result), print `done`
        and the next commands. Returns the result with "final" (and "summary") added."""
        if not self.main:
            return result
        from llmkit.checkpoint import publish_final, write_summary

        final = publish_final(result["checkpoint"], self.out / "final")
        result = {**result, "final": str(final)}
        summary = {**result} if summary is None else {"final": str(final), **summary}
        write_summary(self.out, summary)
        from llmkit.report.system import write_system_info

        # The machine that trained, for `llmkit report` (which may run later, elsewhere).
        write_system_info(self.out, device=str(self.rt.device) if self.rt is not None else None)
        print(f"done: {done + '; ' if done else ''}model in {final}", flush=True)
        if next_steps:
            print("next steps:\n" + "\n".join(f"  {c.format(final=final, out=self.out)}" for c in next_steps),
                  flush=True)
        return {**result, "summary": summary}
