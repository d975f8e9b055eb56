"""Pretraining: from a preset (from scratch) or from an existing model (continued pretraining).

Objectives over the same prepared shards, the loop and checkpoints the same:
    clm      next-token prediction (decoders: GPT, Llama)
    mlm      masked-language modelling (encoders: BERT), optionally with whole-word masking and
             next-sentence prediction (data/mlm.py for the batches, training/losses.py's mlm_loss)
    span     T5's span corruption (encoder-decoders): 15% of the tokens in spans of mean length
             3, each span a sentinel in the input, the targets the spans after their sentinels
    denoise  BART's text infilling: 30% of the tokens in Poisson(3) spans, each span one mask
             token, the target the original text (data/spans.py; training/losses.py's seq2seq_loss)
"""

from __future__ import annotations

from typing import Optional

from llmkit.errors import LLMKitError
from llmkit.recipes.scaffold import Run
from llmkit.training.loop import TrainConfig
from llmkit.training.losses import (causal_lm_loss, labelled_count, mean_lm_loss, mean_mlm_loss, mean_seq2seq_loss,
                                    mlm_loss, mlm_targets, seq2seq_loss)

# What each kind of model pretrains with (the first: its default).
KIND_OBJECTIVES = {"decoder": ("clm",), "encoder": ("mlm",), "encoder-decoder": ("span", "denoise")}
OBJECTIVES = tuple(o for objs in KIND_OBJECTIVES.values() for o in objs)
KIND_EXAMPLES = {"decoder": "micro-llama, gpt2", "encoder": "micro-bert, bert-base-uncased",
                 "encoder-decoder": "micro-t5, t5-small, bart-base"}


def pretrain(
    model: str = "micro-llama",
    data: Optional[str] = None,
    out: str = "out/pretrain",
    seq_len: Optional[int] = None,
    eval_batches: int = 16,
    model_overrides: Optional[dict] = None,
    objective: Optional[str] = None,
    mlm_probability: float = 0.15,
    whole_word: bool = False,
    nsp: bool = False,
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
    mask_ratio: float = 0.3,
    permute_sentences: bool = False,
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
        objective: clm (next token; decoders), mlm (masked tokens; encoders such as
            bert-base-uncased or micro-bert), span (T5's span corruption) or denoise (BART's
            text infilling) for encoder-decoders such as micro-t5 or t5-small. Default: the
            model's kind's first. For span/denoise, seq_len is the encoder's input length.
        mlm_probability: with mlm, the share of tokens selected (80% become [MASK], 10% a
            random token, 10% stay), BERT's 15% by default.
        whole_word: with mlm, mask every piece of a selected word together.
        nsp: with mlm, BERT's next-sentence prediction on sentence pairs ([CLS] A [SEP] B [SEP],
            half with B from another document); adds the pooler and the NSP head.
        noise_density: with span, the share of tokens corrupted (T5: 0.15).
        mean_span_length: with span, the mean length of a corrupted span (T5: 3).
        mask_ratio: with denoise, the share of tokens masked (BART: 0.3, spans ~ Poisson(3)).
        permute_sentences: with denoise, also shuffle the sentences (BART's best setting).
        train: training loop settings (--train.max_steps, --train.lr, ...).
    """
    run, result = pretraining_run(model, data, out, seq_len, eval_batches, model_overrides, train,
                                  objective, mlm_probability, whole_word, nsp,
                                  dict(noise_density=noise_density, mean_span_length=mean_span_length,
                                       mask_ratio=mask_ratio, permute=permute_sentences))
    next_steps = {"decoder": NEXT_STEPS, "encoder": ENCODER_NEXT_STEPS,
                  "encoder-decoder": SEQ2SEQ_NEXT_STEPS}[run.model.cfg.kind]
    return run.finish(result, done=f"step {result['step']}, {result['tokens']:,} tokens", next_steps=next_steps)


ENCODER_NEXT_STEPS = ['llmkit pipeline fill-mask {final} "The capital of France is [MASK]."',
                      "llmkit classify train {final} --data YOUR_LABELLED.csv --out out/classify",
                      "llmkit embed train {final} --data PAIRS.jsonl --out out/embed",
                      "llmkit convert to-hf {final} out/hf    # loads in transformers' AutoModelForMaskedLM"]
SEQ2SEQ_NEXT_STEPS = ['llmkit generate {final} --prompt "The <extra_id_0> walks in <extra_id_1> park"',
                      "llmkit finetune {final} --data PAIRS.jsonl --method full --out out/finetune",
                      "llmkit convert to-hf {final} out/hf    # loads in transformers' AutoModelForSeq2SeqLM"]
NEXT_STEPS = ['llmkit generate {final} --prompt "..."',
              "llmkit evaluate {final} --perplexity YOUR_TEXT.txt",
              "llmkit finetune {final} --data YOUR_ALPACA.json --method lora --out out/finetune",
              "llmkit serve {final}    # OpenAI-compatible API on http://127.0.0.1:8000/v1"]


def pretraining_run(model: str, data: Optional[str], out: str, seq_len: Optional[int], eval_batches: int,
                    model_overrides: Optional[dict], train: TrainConfig, objective: Optional[str] = None,
                    mlm_probability: float = 0.15, whole_word: bool = False, nsp: bool = False,
                    noise: Optional[dict] = None) -> tuple[Run, dict]:
    """`pretrain` up to the end of training: (the run, the loop's result), not yet finished
    (the caller publishes final/ with `run.finish`; quickstart prints its samples first)."""
    from llmkit.data.shards import TokenShards, WindowSampler, load_manifest
    from llmkit.recipes.scaffold import is_new_model, model_config

    train.validate(complete=False)  # settings first: nothing is read before they are known good
    if data is None:
        raise LLMKitError("--data is required: a directory written by `llmkit data prepare`")
    if objective is not None and objective not in OBJECTIVES:
        raise LLMKitError(f"unknown objective '{objective}' (choose from {', '.join(OBJECTIVES)})")
    if not 0.0 < mlm_probability < 1.0:
        raise LLMKitError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
    if is_new_model(model):  # the kind of model decides the default objective, before any loading
        objective = _objective(model, model_config(model, model_overrides).kind, objective)
        if nsp:
            model_overrides = {**(model_overrides or {}), "pooler": True}
    if (whole_word or nsp) and objective not in (None, "mlm"):
        raise LLMKitError("--whole-word and --nsp apply to --objective mlm")
    manifest = load_manifest(data)
    train_shards = TokenShards(data, "train")
    # Checkpoints carry the data's tokenizer: the one the model is trained to read.
    run = Run(model, out, train, tokenizer_dir=train_shards.tokenizer_dir)
    net = run.load(model_overrides, vocab_size=manifest.get("vocab_size"))
    cfg, rt = net.cfg, run.rt
    objective = _objective(model, cfg.kind, objective)
    if nsp and getattr(net, "nsp_head", None) is None:
        raise LLMKitError(f"{model} has no next-sentence head to train (start from a preset, or a BERT "
                          "pretraining checkpoint)")
    T = seq_len or min(int(manifest.get("seq_len") or cfg.block_size), cfg.block_size)
    if T > cfg.block_size:
        raise LLMKitError(f"seq_len {T} is longer than the model's context ({cfg.block_size})")
    val = TokenShards(data, "val") if manifest.get("splits", {}).get("val", {}).get("tokens") else None
    if objective == "clm":
        batches = WindowSampler(train_shards, T, train.micro_batch_size, seed=train.seed,
                                rank=rt.rank, world_size=rt.world)
        loss_fn, weight_fn = causal_lm_loss, None

        def evaluate(m) -> dict:
            if val is None:
                return {}
            return mean_lm_loss(m, val.val_batches(T, train.micro_batch_size, eval_batches))
    elif objective in ("span", "denoise"):
        from llmkit.data.spans import Corruptor, SpanBatches, span_val_batches
        from llmkit.recipes.seq2seq import decoder_start_id

        corruptor = Corruptor(run.tokenizer, train.seed, **(noise or {}))
        start = decoder_start_id(cfg)
        batches = SpanBatches(train_shards, T, train.micro_batch_size, corruptor, seed=train.seed, rank=rt.rank,
                              world_size=rt.world, objective=objective, decoder_start_id=start)
        loss_fn, weight_fn = seq2seq_loss, labelled_count

        def evaluate(m) -> dict:
            if val is None:
                return {}
            return mean_seq2seq_loss(m, span_val_batches(val, T, train.micro_batch_size, corruptor, objective,
                                                         start, eval_batches))
    else:
        from llmkit.data.mlm import Masker, MaskedWindows, NSPBatches, masked_val_batches

        masker = Masker(run.tokenizer, train.seed, rt.rank, mlm_probability, whole_word, cfg.vocab_size, rt.world)
        if nsp:
            batches = NSPBatches(train_shards, run.tokenizer, T, train.micro_batch_size, masker, seed=train.seed,
                                 rank=rt.rank, world_size=rt.world)
        else:
            batches = MaskedWindows(train_shards, T, train.micro_batch_size, masker, seed=train.seed,
                                    rank=rt.rank, world_size=rt.world)
        loss_fn, weight_fn = mlm_loss, mlm_targets
        val_masker = Masker(run.tokenizer, train.seed, 0, mlm_probability, whole_word, cfg.vocab_size)

        def evaluate(m) -> dict:
            if val is None:
                return {}
            return mean_mlm_loss(m, masked_val_batches(val, T, train.micro_batch_size, val_masker, eval_batches))

    n_params = sum(p.numel() for p in net.parameters())
    if rt.main:
        what = {"clm": "next-token", "mlm": "masked-LM" + (" + next-sentence" if nsp else ""),
                "span": "span corruption (T5)", "denoise": "text infilling (BART)"}[objective]
        layers = f"{cfg.n_encoder_layer}+{cfg.n_layer}" if cfg.is_seq2seq else str(cfg.n_layer)
        print(f"model: {cfg.name}, {n_params:,} parameters, {layers} layers, d_model {cfg.n_embd}; "
              f"data: {len(train_shards):,} train tokens, seq_len {T}; objective: {what}", flush=True)
    return run, run.fit(train, batches, loss_fn, evaluate=evaluate, flops_per_token=cfg.flops_per_token(T),
                        weight_fn=weight_fn)


def _objective(model: str, kind: str, objective: Optional[str]) -> str:
    """The objective to pretrain a `kind` model with: the one asked for, if that kind can."""
    allowed = KIND_OBJECTIVES[kind]
    if objective is None:
        return allowed[0]
    if objective not in allowed:
        other = next(k for k, objs in KIND_OBJECTIVES.items() if objective in objs)
        raise LLMKitError(f"'{model}' is {'an' if kind[0] in 'ae' else 'a'} {kind}: --objective {objective} needs "
                          f"{'an' if other[0] in 'ae' else 'a'} {other} (e.g. {KIND_EXAMPLES[other]}; see "
                          f"`llmkit models`); pretrain this one with --objective {' or '.join(allowed)}")
    return objective
