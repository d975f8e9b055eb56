"""Finetuning an encoder-decoder (T5, BART) on (source, target) pairs: `llmkit finetune` with an
encoder-decoder model comes here.

A recipe on the scaffold like the others: `data.seq2seq` reads, tokenizes and batches the pairs
(fields detected or named, T5's task prefix, Alpaca records as instruction + input -> output),
`recipes.tuning` sets which weights train (full, LoRA / QLoRA, or the last decoder blocks), the
one loop trains with `seq2seq_loss` (cross-entropy on the target tokens only: the source is
read, never predicted). Evaluation is the validation loss; each evaluation also prints greedy
outputs for a few held-out sources and appends them to OUT/samples.jsonl.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import torch

from llmkit.errors import LLMKitError
from llmkit.lora import LoRAConfig
from llmkit.recipes.scaffold import Run
from llmkit.training.loop import TrainConfig
from llmkit.training.losses import labelled_count, mean_seq2seq_loss, seq2seq_loss


def decoder_start_id(cfg) -> int:
    """Where the decoder starts: config.json's decoder_start_token_id (T5: pad 0; BART: </s> 2)."""
    return int(cfg.extra.get("decoder_start_token_id", cfg.extra.get("pad_token_id", 0)))


def finetune_seq2seq(run: Run, data: str, *, val_data: Optional[str], val_fraction: float,
                     source_field: Optional[str], target_field: Optional[str], prefix: str,
                     max_source_len: Optional[int], max_target_len: Optional[int], truncation: str, method: str,
                     lora: LoRAConfig, train_last: int, quantize: Optional[str], eval_batches: int, samples: int,
                     sample_tokens: int, epochs: Optional[float], train: TrainConfig, lr_default: float) -> dict:
    """The encoder-decoder branch of `llmkit.recipes.finetune.finetune` (its settings checked there)."""
    from llmkit.checkpoint import atomic_write_json, resume_point
    from llmkit.data import seq2seq as s2s
    from llmkit.data.instruct import split_examples
    from llmkit.recipes.tuning import tune

    tokenizer = run.tokenizer
    records = s2s.read_seq2seq(data, source_field, target_field, prefix)
    if val_data is not None:
        train_rec, val_rec = records, s2s.read_seq2seq(val_data, source_field, target_field, prefix)
    else:
        train_rec, val_rec = split_examples(records, val_fraction, train.seed)

    net = run.load()
    cfg, rt = net.cfg, run.rt
    S = cfg.block_size if max_source_len is None else max_source_len
    max_target_len = min(128, cfg.block_size) if max_target_len is None else max_target_len
    for name, value in (("max_source_len", S), ("max_target_len", max_target_len)):
        if not 2 <= value <= cfg.block_size:
            raise LLMKitError(f"{name} must be between 2 and the model's context ({cfg.block_size}), got {value}")
    train_ex = s2s.Seq2SeqExamples(train_rec, tokenizer, S, max_target_len, truncation)
    val_ex = s2s.Seq2SeqExamples(val_rec, tokenizer, S, max_target_len, truncation) if val_rec else []
    pad_id, start = run.pad_id, decoder_start_id(cfg)
    batches = s2s.Seq2SeqBatches(train_ex, train.micro_batch_size, pad_id, start, seed=train.seed, rank=rt.rank,
                                 world_size=rt.world)
    val_batches = s2s.eval_batches(val_ex, train.micro_batch_size, pad_id, start, eval_batches) if val_ex else []

    t = tune(net, method, lora, train_last, quantize, train, batches.steps_per_epoch, epochs, lr_default)
    tc, steps_per_epoch, method_line = t.train, t.steps_per_epoch, t.line

    out_dir = Path(run.out)
    resuming = resume_point(out_dir, tc.resume) is not None
    if rt.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        print(f"model: {cfg.name} (encoder-decoder) from {run.model_dir or run.spec}; {method_line}", flush=True)
        print(f"prefix {prefix!r}; max_source_len {S}, max_target_len {max_target_len}; decoder start {start}",
              flush=True)
        print(train_ex.stats.line("train") + f"; {steps_per_epoch} steps per epoch", flush=True)
        if val_ex:
            print(val_ex.stats.line("val"), flush=True)
        print(f"lr {tc.lr:g}, {tc.max_steps or '-'} steps, micro-batch {tc.micro_batch_size} x {tc.grad_accum}",
              flush=True)

    def evaluate(m) -> dict:
        return mean_seq2seq_loss(m, val_batches)

    sample_set = [(r, e.src) for r, e in zip(val_rec, val_ex)][:samples] if val_ex else []
    baseline_path = out_dir / "baseline.json"

    def on_eval(step: int, m, metrics: dict) -> None:
        if step == 0 and metrics and not baseline_path.exists():
            atomic_write_json(baseline_path, metrics)
        if sample_set and rt.mode != "fsdp":  # an FSDP model is sharded: rank 0 alone cannot run it
            write_seq2seq_samples(m, tokenizer, sample_set, step, sample_tokens, out_dir / "samples.jsonl")

    result = run.fit(tc, batches, seq2seq_loss, lora=lora if method == "lora" else None, quantize=quantize,
                     evaluate=evaluate if val_batches else None, on_eval=on_eval, weight_fn=labelled_count,
                     eval_first=not resuming and not tc.eval_every and bool(val_batches))
    if not rt.main:
        return result
    before = json.loads(baseline_path.read_text()) if baseline_path.exists() else {}
    summary = {
        "model": str(run.spec), "kind": "encoder-decoder", "method": method, "params": t.params,
        "trainable_params": t.trainable, "trainable_percent": 100 * t.trainable / t.params, "quantize": quantize,
        "weight_bytes_before": t.bytes_before, "weight_bytes_after": t.bytes_after, "lr": tc.lr,
        "steps": result["step"], "tokens": result["tokens"],
        "epochs": round(result["step"] * tc.grad_accum / batches.steps_per_epoch, 3),
        "step_time_s": run.trainer.elapsed / max(result["step"], 1), "train_loss": result.get("loss"),
        "val_loss_before": before.get("val_loss"), "val_ppl_before": before.get("val_ppl"),
        "val_loss_after": result.get("val_loss"), "val_ppl_after": result.get("val_ppl"),
        "train_pairs": dataclasses.asdict(train_ex.stats), "val_pairs": dataclasses.asdict(val_ex.stats) if val_ex else None,
        "prefix": prefix, "max_source_len": S, "max_target_len": max_target_len,
    }
    if summary["val_loss_before"] is not None and summary["val_loss_after"] is not None:
        print(f"val loss {summary['val_loss_before']:.4f} -> {summary['val_loss_after']:.4f}", flush=True)
    return run.finish(result, summary, done=f"step {result['step']}, {result['tokens']:,} trained tokens",
                      next_steps=["llmkit generate {final} 'YOUR SOURCE TEXT'",
                                  "llmkit pipeline summarization {final} 'TEXT'",
                                  "llmkit evaluate {final} --generate-data YOUR_TEST.jsonl"])


def write_seq2seq_samples(model, tokenizer, sample_set, step: int, max_new_tokens: int, path: Path) -> list[dict]:
    """Greedy outputs for held-out sources: printed, and appended to `path` as JSON lines
    {step, source, output, reference}. Greedy decoding draws no random numbers (resume stays exact)."""
    from tqdm.auto import tqdm

    from llmkit.generate import generate_batch
    from llmkit.progress import short_text

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            done = generate_batch(model, tokenizer, [ids for _, ids in sample_set], max_new_tokens=max_new_tokens,
                                  temperature=0.0)
    finally:
        model.train(was_training)
    rows = [{"step": step, "source": r.source, "output": c.text.strip(), "reference": r.target}
            for (r, _), c in zip(sample_set, done)]
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    for row in rows:
        tqdm.write(f"  [step {step}] {short_text(row['source'])!r} -> {short_text(row['output'])!r}")
    return rows
