"""What every finetuning recipe (finetune, classify, dpo) shares: which weights train (`full`,
`lora` / QLoRA, `freeze` = the last N blocks), how a checkpoint of them is saved, and merging
an adapter into its base. The recipes differ only in their batches and loss; the loop is
`training.loop.Trainer`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch

from llmkit.errors import LLMKitError
from llmkit.lora import LoRAConfig

METHODS = ("full", "lora", "freeze")


def load_base(model: str):
    """The model to finetune, in float32 (the loop's autocast gives bf16 speed where it can;
    float32 master weights keep small updates from rounding away)."""
    from llmkit.checkpoint import load_model

    loaded = load_model(model, dtype=torch.float32)
    if loaded.kind == "lora":
        raise LLMKitError(f"{model}: a LoRA adapter; merge it first (llmkit merge-lora {model} --out DIR) "
                          "and finetune the merged model")
    loaded.model.train()
    return loaded


def check_method(method: str, quantize: Optional[str] = None) -> None:
    """The method settings' own errors, raised before any data or model is loaded."""
    from llmkit.lora import QUANTIZERS

    if method not in METHODS:
        raise LLMKitError(f"unknown method '{method}': choose from {', '.join(METHODS)}")
    if quantize not in (None, "none"):
        if method != "lora":
            raise LLMKitError("--quantize holds frozen base weights in low precision: use it with --method lora")
        if quantize not in QUANTIZERS:
            raise LLMKitError(f"unknown quantization '{quantize}': choose from {', '.join(QUANTIZERS)}")


def setup_method(model: torch.nn.Module, method: str, lora: LoRAConfig, train_last: int = 2,
                 quantize: Optional[str] = None) -> str:
    """Set requires_grad for `method` (and wrap layers for LoRA); returns a one-line summary.

    full: every weight. freeze: only the last `train_last` blocks, the final norm and the
    output head ("fine-tune only the last layers"). lora: only the adapters (base frozen,
    stored quantized with `quantize` = int8 | nf4: QLoRA).
    """
    from llmkit.lora import apply_lora, weight_bytes

    check_method(method, quantize)
    before = weight_bytes(model)
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif method == "freeze":
        n = len(model.blocks)
        if not 1 <= train_last <= n:
            raise LLMKitError(f"--train-last must be between 1 and the model's {n} blocks, got {train_last}")
        for p in model.parameters():
            p.requires_grad_(False)
        # lm_head may be tied to the embeddings, in which case those train too (one tensor).
        for m in list(model.blocks[n - train_last:]) + [model.norm, model.lm_head]:
            for p in m.parameters():
                p.requires_grad_(True)
    else:
        apply_lora(model, lora, quantize=None if quantize == "none" else quantize)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    line = f"method {method}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / max(total, 1):.2f}%)"
    if method == "lora" and quantize not in (None, "none"):
        after = weight_bytes(model)
        line += f"; base weights {quantize}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB"
    return line


def base_reference(model_spec: str) -> str:
    """How an adapter names its base: a hub repo id as given, a directory as an absolute path."""
    p = Path(model_spec).expanduser()
    return str(p.resolve()) if p.exists() else model_spec


def finetune_saver(model: torch.nn.Module, method: str, base: str, tokenizer_dir: Optional[Path],
                   lora: LoRAConfig, quantize: Optional[str] = None,
                   extra: Optional[Callable[[Path], None]] = None) -> Callable[[Path, dict], None]:
    """save_fn for the loop. lora: the adapter (+ any other trained tensor) and adapter_config.json
    naming the base; full/freeze: a complete model directory. `extra(dir)` writes recipe files
    (e.g. a classifier's labels) into every checkpoint."""
    from llmkit.checkpoint import save_adapter
    from llmkit.recipes.pretrain import checkpoint_saver

    if method == "lora":
        meta = {"base_model": base, "quantize": None if quantize == "none" else quantize,
                "lora": {"r": lora.r, "alpha": lora.alpha, "dropout": lora.dropout,
                         "targets": lora.resolved_targets()}}

        def save(d: Path, sd: dict) -> None:
            save_adapter(d, sd, meta, tokenizer_dir)
            if extra is not None:
                extra(d)
    else:
        full = checkpoint_saver(model.cfg, tokenizer_dir)

        def save(d: Path, sd: dict) -> None:
            full(d, sd)
            if extra is not None:
                extra(d)
    return save


def merge_lora_cli(adapter: str, out: str, dtype: Optional[str] = None) -> str:
    """Fold a LoRA adapter into its base model: a plain llmkit checkpoint (exports to Hugging Face
    with `llmkit convert to-hf` like any other).

    Args:
        adapter: a LoRA checkpoint directory (from `llmkit finetune --method lora`, e.g. OUT/final).
        out: directory for the merged model.
        dtype: weights dtype of the merged model (float32, bfloat16, float16; default float32).
    """
    from llmkit.checkpoint import DTYPES, load_model, read_adapter_config, resolve_model_dir, save_model

    d = resolve_model_dir(adapter)
    if read_adapter_config(d) is None:
        raise LLMKitError(f"{adapter}: not a LoRA checkpoint (no adapter_config.json)")
    if dtype is not None and dtype not in DTYPES:
        raise LLMKitError(f"unknown dtype '{dtype}'; choose from {', '.join(DTYPES)}")
    loaded = load_model(d, dtype=DTYPES[dtype] if dtype else torch.float32)  # merged in float32, then cast
    save_model(out, loaded.model, tokenizer_dir=d)
    print(f"merged {d} into {out}")
    return str(out)
