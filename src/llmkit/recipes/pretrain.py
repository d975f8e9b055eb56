"""Pretraining: from a preset (from scratch) or from an existing model (continued pretraining).

Two objectives over the same prepared shards, the loop and checkpoints the same:
    clm   next-token prediction (decoders: GPT, Llama)
    mlm   masked-language modelling (encoders: BERT), optionally with whole-word masking and
          next-sentence prediction (data/mlm.py for the batches, training/losses.py's mlm_loss)
"""

from __future__ import annotations

from typing import Optional

from llmkit.errors import LLMKitError
from llmkit.recipes.scaffold import Run
from llmkit.training.loop import TrainConfig
from llmkit.training.losses import causal_lm_loss, mean_lm_loss, mean_mlm_loss, mlm_loss, mlm_targets

OBJECTIVES = ("clm", "mlm")


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
        objective: clm (next token; decoders) or mlm (masked tokens; encoders such as
            bert-base-uncased or micro-bert). Default: the model's kind.
        mlm_probability: with mlm, the share of tokens selected (80% become [MASK], 10% a
            random token, 10% stay), BERT's 15% by default.
        whole_word: with mlm, mask every piece of a selected word together.
        nsp: with mlm, BERT's next-sentence prediction on sentence pairs ([CLS] A [SEP] B [SEP],
            half with B from another document); adds the pooler and the NSP head.
        train: training loop settings (--train.max_steps, --train.lr, ...).
    """
    run, result = pretraining_run(model, data, out, seq_len, eval_batches, model_overrides, train,
                                  objective, mlm_probability, whole_word, nsp)
    next_steps = NEXT_STEPS if run.model.cfg.causal else ENCODER_NEXT_STEPS
    return run.finish(result, done=f"step {result['step']}, {result['tokens']:,} tokens", next_steps=next_steps)


ENCODER_NEXT_STEPS = ['llmkit pipeline fill-mask {final} "The capital of France is [MASK]."',
                      "llmkit classify train {final} --data YOUR_LABELLED.csv --out out/classify",
                      "llmkit embed train {final} --data PAIRS.jsonl --out out/embed",
                      "llmkit convert to-hf {final} out/hf    # loads in transformers' AutoModelForMaskedLM"]
NEXT_STEPS = ['llmkit generate {final} --prompt "..."',
              "llmkit evaluate {final} --perplexity YOUR_TEXT.txt",
              "llmkit finetune {final} --data YOUR_ALPACA.json --method lora --out out/finetune",
              "llmkit serve {final}    # OpenAI-compatible API on http://127.0.0.1:8000/v1"]


def pretraining_run(model: str, data: Optional[str], out: str, seq_len: Optional[int], eval_batches: int,
                    model_overrides: Optional[dict], train: TrainConfig, objective: Optional[str] = None,
                    mlm_probability: float = 0.15, whole_word: bool = False, nsp: bool = False) -> tuple[Run, dict]:
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
        causal = model_config(model, model_overrides).causal
        objective = objective or ("clm" if causal else "mlm")
        if objective == "mlm" and causal:
            raise LLMKitError(f"'{model}' is a causal (decoder) model: masked-LM pretraining needs an encoder "
                              "(e.g. micro-bert, bert-base-uncased; see `llmkit models`)")
        if objective == "clm" and not causal:
            raise LLMKitError(f"'{model}' is an encoder: pretrain it with --objective mlm")
        if nsp:
            model_overrides = {**(model_overrides or {}), "pooler": True}
    if (whole_word or nsp) and objective == "clm":
        raise LLMKitError("--whole-word and --nsp apply to --objective mlm")
    manifest = load_manifest(data)
    train_shards = TokenShards(data, "train")
    # Checkpoints carry the data's tokenizer: the one the model is trained to read.
    run = Run(model, out, train, tokenizer_dir=train_shards.tokenizer_dir)
    net = run.load(model_overrides, vocab_size=manifest.get("vocab_size"))
    cfg, rt = net.cfg, run.rt
    objective = objective or ("clm" if cfg.causal else "mlm")
    if (objective == "mlm") == cfg.causal:
        raise LLMKitError(f"{model}: a {'decoder' if cfg.causal else 'encoder'} cannot be pretrained with "
                          f"--objective {objective}")
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
        what = {"clm": "next-token", "mlm": "masked-LM" + (" + next-sentence" if nsp else "")}[objective]
        print(f"model: {cfg.name}, {n_params:,} parameters, {cfg.n_layer} layers, d_model {cfg.n_embd}; "
              f"data: {len(train_shards):,} train tokens, seq_len {T}; objective: {what}", flush=True)
    return run, run.fit(train, batches, loss_fn, evaluate=evaluate, flops_per_token=cfg.flops_per_token(T),
                        weight_fn=weight_fn)
