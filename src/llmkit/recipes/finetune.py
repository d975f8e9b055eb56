"""Instruction finetuning (supervised finetuning, SFT): full, LoRA / QLoRA or the last N blocks.

A recipe on the scaffold (recipes/scaffold.py): `data.instruct` renders and masks the examples,
`recipes.tuning` sets which weights train, the one loop trains with `causal_lm_loss` on the
masked labels (loss on the replies only). Evaluation is the
validation loss; each evaluation also prints a few greedy answers to held-out prompts and
appends them to OUT/samples.jsonl, so the log shows what the loss numbers mean.
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
from llmkit.training.losses import causal_lm_loss, mean_lm_loss, target_count

# Peak learning rates. LoRA adapters start at zero and train a few hundred thousand weights:
# 1e-4..3e-4 is the usual range (Hu et al. 2021 used 2e-4 for GPT-2; peft, torchtune and litgpt
# default to 1e-4..3e-4). Updating every weight (full) or whole blocks (freeze) moves a
# pretrained model much further per step, so those default to 2e-5 (Alpaca used 2e-5 for full
# finetuning of LLaMA-7B).
LORA_LR = 2e-4
FULL_LR = 2e-5

def finetune(
    model: str,
    data: str,
    out: str = "out/finetune",
    method: str = "lora",
    lora: LoRAConfig = LoRAConfig(),
    train_last: int = 2,
    quantize: Optional[str] = None,
    prompt_style: Optional[str] = None,
    mask_prompt: bool = True,
    packing: bool = False,
    max_seq_len: Optional[int] = None,
    truncation: str = "truncate",
    val_data: Optional[str] = None,
    val_fraction: float = 0.1,
    eval_batches: int = 32,
    samples: int = 3,
    sample_tokens: int = 64,
    epochs: Optional[float] = None,
    source_field: Optional[str] = None,
    target_field: Optional[str] = None,
    prefix: str = "",
    max_source_len: Optional[int] = None,
    max_target_len: Optional[int] = None,
    train: TrainConfig = TrainConfig(lr=None, micro_batch_size=8, warmup_steps=20, weight_decay=0.0,
                                     beta2=0.999, eval_every=100, log_every=10, save_every=200),
) -> dict:
    """Finetune a model on instruction data (supervised finetuning): loss on the answers only.
    An encoder-decoder (T5, BART) trains on (source, target) pairs instead: loss on the target.

    Args:
        model: the base model: an llmkit checkpoint dir, a Hugging Face model dir or a hub repo id.
        data: training data: a JSON array or JSONL file of Alpaca records {"instruction", "input"
            (optional), "output"} or chat records {"messages": [{"role", "content"}, ...]} (every
            assistant turn is trained on; optional "system").
        out: output directory (checkpoints, metrics.csv, samples.jsonl, summary.json, final/).
        method: lora (low-rank adapters; OUT/final holds only the adapter), full (every weight)
            or freeze (only the last --train_last blocks, the final norm and the output head).
        lora: LoRA settings (--lora.r, --lora.alpha, --lora.dropout, --lora.targets).
        train_last: with --method freeze, how many of the last blocks train.
        quantize: with --method lora, hold the frozen base in int8 or nf4 (QLoRA).
        prompt_style: how examples are rendered: auto (the model's chat template if its tokenizer
            has one, else alpaca), chat_template, a style name (alpaca, chatml, llama3, llama2,
            mistral, phi3, gemma, plain) or a Jinja template file.
        mask_prompt: train on the answers only (prompt tokens get no loss).
        packing: concatenate examples into full rows of max_seq_len tokens (no padding;
            attention then crosses example boundaries within a row).
        max_seq_len: longest training sequence (default: the model's context).
        truncation: what to do with a longer example: truncate (cut its end) or drop.
        val_data: a separate validation file (same formats as --data); else --val_fraction.
        val_fraction: fraction of --data held out for validation (seeded by --train.seed).
        eval_batches: validation batches per evaluation (at most).
        samples: held-out prompts answered (greedy) at every evaluation, printed and appended
            to OUT/samples.jsonl (0 = none).
        sample_tokens: longest sample answer, in tokens.
        epochs: training length in passes over the training examples; used when no --train
            budget (max_steps, max_tokens, max_time) is set (default then: 1 epoch).
        source_field: an encoder-decoder's source field in --data (default: detected: source,
            src, input, document, article, text, en, or Alpaca's instruction + input).
        target_field: its target field (default: detected: target, tgt, output, summary, tldr, de).
        prefix: text put before every source, e.g. T5's "summarize: " or
            "translate English to German: ".
        max_source_len: an encoder-decoder's longest source in tokens (default: the context).
        max_target_len: its longest target in tokens (default: 128, or the context if shorter).
        train: training loop settings. --train.lr, when not given, is 2e-4 for lora and 2e-5
            for full and freeze.
    """
    from llmkit.checkpoint import atomic_write_json, resume_point
    from llmkit.data import instruct
    from llmkit.prompts import builtin_template, resolve_style
    from llmkit.recipes.tuning import check_method, tune

    # --- check settings and read everything that can fail before loading the model ----------
    check_method(method, quantize)
    quantize = None if quantize in (None, "none") else quantize
    if method == "lora":
        lora.validate()
    if truncation not in instruct.TRUNCATION:
        raise LLMKitError(f"truncation must be one of {', '.join(instruct.TRUNCATION)}, got '{truncation}'")
    if samples < 0 or sample_tokens < 1 or eval_batches < 1:
        raise LLMKitError("samples must be >= 0, sample_tokens and eval_batches >= 1")
    if epochs is not None and (train.max_steps or train.max_tokens or train.max_time):
        raise LLMKitError("give either --epochs or a --train budget (max_steps, max_tokens, max_time), not both")
    if epochs is not None and not epochs > 0:
        raise LLMKitError(f"epochs must be > 0, got {epochs}")
    run = Run(model, out, train)
    if run.config().is_seq2seq:
        from llmkit.recipes.seq2seq import finetune_seq2seq

        if packing or prompt_style not in (None, "auto"):
            raise LLMKitError("--packing and --prompt-style are for decoder-only models; an encoder-decoder "
                              "reads the source and writes the target")
        return finetune_seq2seq(run, data, val_data=val_data, val_fraction=val_fraction, source_field=source_field,
                                target_field=target_field, prefix=prefix, max_source_len=max_source_len,
                                max_target_len=max_target_len, truncation=truncation, method=method, lora=lora,
                                train_last=train_last, quantize=quantize, eval_batches=eval_batches,
                                samples=samples, sample_tokens=sample_tokens, epochs=epochs, train=train,
                                lr_default=LORA_LR if method == "lora" else FULL_LR)
    if source_field or target_field or prefix:
        raise LLMKitError("--source-field, --target-field and --prefix are for encoder-decoder models")
    tokenizer = run.tokenizer
    style = resolve_style(tokenizer, prompt_style)
    examples = instruct.load_examples(data)
    if val_data is not None:
        train_ex, val_ex = examples, instruct.load_examples(val_data)
    else:
        train_ex, val_ex = instruct.split_examples(examples, val_fraction, train.seed)

    net = run.load()  # the seed is set first: LoRA's A matrices are the same on every process
    cfg, rt, model_dir = net.cfg, run.rt, run.model_dir
    T = cfg.block_size if max_seq_len is None else max_seq_len  # 0 is an error below, not "the context"
    if not 1 <= T <= cfg.block_size:
        raise LLMKitError(f"max_seq_len must be between 1 and the model's context ({cfg.block_size}), got {T}")

    # --- data --------------------------------------------------------------------------------
    # An example of n tokens gives n - 1 (input, target) pairs: T inputs need T + 1 tokens.
    train_enc, train_stats = instruct.encode_all(train_ex, style, tokenizer, T + 1, mask_prompt, truncation)
    val_enc, val_stats = instruct.encode_all(val_ex, style, tokenizer, T + 1, mask_prompt=True, truncation=truncation)
    pad_id = run.pad_id
    batches = instruct.InstructBatches(train_enc, train.micro_batch_size, pad_id, seed=train.seed, packing=packing,
                                       seq_len=T, rank=rt.rank, world_size=rt.world)
    # Validation always on whole, unpacked examples with the prompt masked: the same number
    # whatever the training settings, so runs compare.
    val_batches = instruct.eval_batches(val_enc, train.micro_batch_size, pad_id, eval_batches)

    # --- method and loop settings ------------------------------------------------------------
    t = tune(net, method, lora, train_last, quantize, train, batches.steps_per_epoch, epochs,
             LORA_LR if method == "lora" else FULL_LR)
    tc, steps_per_epoch, method_line = t.train, t.steps_per_epoch, t.line
    n_params, n_trainable, bytes_before, bytes_after = t.params, t.trainable, t.bytes_before, t.bytes_after

    out_dir = Path(out)
    resuming = resume_point(out_dir, tc.resume) is not None
    if rt.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        print(f"model: {cfg.name} from {model_dir}; {method_line}", flush=True)
        print(f"prompt style: {style.name}; mask_prompt {mask_prompt}; packing {packing}; max_seq_len {T}", flush=True)
        print(instruct.EncodeStats.line(train_stats, "train") + f"; {steps_per_epoch} steps per epoch", flush=True)
        if val_ex:
            print(instruct.EncodeStats.line(val_stats, "val"), flush=True)
        print(f"lr {tc.lr:g}, {tc.max_steps or '-'} steps, micro-batch {tc.micro_batch_size} x {tc.grad_accum}",
              flush=True)

    # --- evaluation: validation loss, and sample answers -------------------------------------
    def evaluate(m) -> dict:
        return mean_lm_loss(m, val_batches) if val_batches else {}

    # Sample prompts: the first held-out examples whose prompt leaves room for an answer.
    sample_set = []
    for ex in val_ex:
        if len(sample_set) >= samples:
            break
        ids = instruct.encode_prompt(ex, style, tokenizer)
        if len(ids) + sample_tokens <= cfg.block_size:
            sample_set.append((ex, ids))
    baseline_path = out_dir / "baseline.json"

    def on_eval(step: int, m, metrics: dict) -> None:
        if step == 0 and metrics and not baseline_path.exists():
            atomic_write_json(baseline_path, metrics)
        if sample_set and rt.mode != "fsdp":  # an FSDP model is sharded: rank 0 alone cannot run it
            write_samples(m, tokenizer, style, sample_set, step, sample_tokens, out_dir / "samples.jsonl")

    # A base without a chat template of its own gets the tuned format's (see prompts.builtin_template),
    # so that `auto` prompts the tuned model as it was trained.
    template = None if tokenizer.chat_template else builtin_template(
        style.name, tokenizer.add_bos and tokenizer.bos_id is not None)
    extra_files = {"chat_template.jinja": template} if template is not None else None
    # MFU only for full finetuning: with frozen weights the backward pass skips their
    # gradients, so the 6N FLOPs/token of a full step would overstate the work.
    result = run.fit(tc, batches, causal_lm_loss, lora=lora if method == "lora" else None, quantize=quantize,
                     extra_files=extra_files, evaluate=evaluate if val_batches else None, on_eval=on_eval,
                     flops_per_token=cfg.flops_per_token(T) if method == "full" else None,
                     weight_fn=target_count,  # answers differ in length: weigh tokens, not micro-batches
                     # the loop evaluates at step 0 only with eval_every: the "before" numbers
                     eval_first=not resuming and not tc.eval_every and bool(val_batches))
    if not rt.main:
        return result
    before = json.loads(baseline_path.read_text()) if baseline_path.exists() else {}
    summary = {
        "model": str(model), "method": method, "prompt_style": style.name,
        "params": n_params, "trainable_params": n_trainable, "trainable_percent": 100 * n_trainable / n_params,
        "quantize": quantize, "weight_bytes_before": bytes_before, "weight_bytes_after": bytes_after,
        "weight_bytes_saved": bytes_before - bytes_after if quantize else 0,
        "lr": tc.lr, "steps": result["step"], "tokens": result["tokens"], "epochs": round(
            result["step"] * tc.grad_accum / batches.steps_per_epoch, 3),
        "step_time_s": run.trainer.elapsed / max(result["step"], 1),
        "train_loss": result.get("loss"),
        "val_loss_before": before.get("val_loss"), "val_ppl_before": before.get("val_ppl"),
        "val_loss_after": result.get("val_loss"), "val_ppl_after": result.get("val_ppl"),
        "train_examples": dataclasses.asdict(train_stats), "val_examples": dataclasses.asdict(val_stats),
        "packing": packing, "mask_prompt": mask_prompt, "max_seq_len": T,
    }
    if summary["val_loss_before"] is not None and summary["val_loss_after"] is not None:
        print(f"val loss {summary['val_loss_before']:.4f} -> {summary['val_loss_after']:.4f}", flush=True)
    if method == "lora":  # final/ will hold copies of the checkpoint's files
        summary["adapter_bytes"] = sum(f.stat().st_size for f in Path(result["checkpoint"]).glob("adapter*.safetensors"))
    return run.finish(result, summary, done=f"step {result['step']}, {result['tokens']:,} trained tokens",
                      next_steps=["llmkit chat {final}", "llmkit serve {final}",
                                  "llmkit evaluate {final} --generate-data YOUR_HELD_OUT.json"])


def write_samples(model, tokenizer, style, sample_set, step: int, max_new_tokens: int, path: Path) -> list[dict]:
    """Greedy answers to the sample prompts: printed, and appended to `path` as JSON lines
    {step, prompt, response, reference}. Greedy decoding draws no random numbers, so samples
    do not change the training run (resume stays exact)."""
    from llmkit.generate import SamplingParams, generate_batch, with_style_stops

    was_training = model.training
    model.eval()
    params, stop_ids = with_style_stops(SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0), style, tokenizer)
    try:
        with torch.no_grad():
            done = generate_batch(model, tokenizer, [ids for _, ids in sample_set], params, stop_ids=stop_ids)
    finally:
        model.train(was_training)
    rows = [{"step": step, "prompt": ex.prompt, "response": c.text.strip(), "reference": ex.reference}
            for (ex, _), c in zip(sample_set, done)]
    with open(path, "a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    from tqdm.auto import tqdm

    from llmkit.progress import short_text

    for r in rows:  # through tqdm: the loop's progress bar is redrawn below, not mixed in
        tqdm.write(f"  [step {step}] {short_text(r['prompt'])!r} -> {short_text(r['response'])!r}")
    return rows

