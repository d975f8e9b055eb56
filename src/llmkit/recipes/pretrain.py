"""Pretraining: from a preset (from scratch) or from an existing model (continued pretraining)."""

from __future__ import annotations

from typing import Optional

from llmkit.errors import LLMKitError
from llmkit.recipes.scaffold import Run
from llmkit.training.loop import TrainConfig
from llmkit.training.losses import causal_lm_loss, mean_lm_loss


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
    run, result = pretraining_run(model, data, out, seq_len, eval_batches, model_overrides, train)
    return run.finish(result, done=f"step {result['step']}, {result['tokens']:,} tokens", next_steps=NEXT_STEPS)


NEXT_STEPS = ['llmkit generate {final} --prompt "..."',
              "llmkit evaluate {final} --perplexity YOUR_TEXT.txt",
              "llmkit finetune {final} --data YOUR_ALPACA.json --method lora --out out/finetune",
              "llmkit serve {final}    # OpenAI-compatible API on http://127.0.0.1:8000/v1"]


def pretraining_run(model: str, data: Optional[str], out: str, seq_len: Optional[int], eval_batches: int,
                    model_overrides: Optional[dict], train: TrainConfig) -> tuple[Run, dict]:
    """`pretrain` up to the end of training: (the run, the loop's result), not yet finished
    (the caller publishes final/ with `run.finish`; quickstart prints its samples first)."""
    from llmkit.data.shards import TokenShards, WindowSampler, load_manifest

    train.validate(complete=False)  # settings first: nothing is read before they are known good
    if data is None:
        raise LLMKitError("--data is required: a directory written by `llmkit data prepare`")
    manifest = load_manifest(data)
    train_shards = TokenShards(data, "train")
    # Checkpoints carry the data's tokenizer: the one the model is trained to read.
    run = Run(model, out, train, tokenizer_dir=train_shards.tokenizer_dir)
    net = run.load(model_overrides, vocab_size=manifest.get("vocab_size"))
    cfg, rt = net.cfg, run.rt
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
    return run, run.fit(train, batches, causal_lm_loss, evaluate=evaluate, flops_per_token=cfg.flops_per_token(T))
