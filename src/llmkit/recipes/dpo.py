"""Preference tuning with Direct Preference Optimization (Rafailov et al. 2023, "Direct
Preference Optimization: Your Language Model is Secretly a Reward Model").

For a prompt x with a preferred answer y_c and a dispreferred one y_r, DPO minimizes (eq. 7)

    -log sigmoid( beta * [ (log pi(y_c|x) - log ref(y_c|x)) - (log pi(y_r|x) - log ref(y_r|x)) ] )

where log pi(y|x) is the *summed* log-probability of the answer's tokens (the prompt is
context, not scored) under the model being trained, and ref is the model before training.
beta * (log pi - log ref) is the implicit reward of an answer (sec. 5); we log the rewards of
both answers, their margin and how often the chosen one wins (preference accuracy).

The reference never costs a second copy of the model:
* method lora: the reference *is* the frozen base, i.e. the same model with its adapters
  switched off (`lora.adapters_disabled`), evaluated on each batch without gradients;
* method full / freeze: the weights themselves move, so the reference log-probs of every
  train and validation pair are computed once, before training (one no-grad pass), kept as a
  tensor and saved in OUT/reference_logps.safetensors: a resumed run reuses them instead of
  recomputing them (possibly on another device or precision, i.e. slightly differently).

At step 0 the policy equals the reference, so every reward is 0 and the loss is log 2.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from llmkit.checkpoint import REFERENCE_LOGPS as REFERENCE_FILE
from llmkit.errors import LLMKitError
from llmkit.lora import LoRAConfig
from llmkit.recipes.scaffold import Run, base_reference
from llmkit.training.loop import TrainConfig
from llmkit.training.losses import IGNORE_INDEX


# --- prompts and tokens ----------------------------------------------------------------------------
def answer_end_ids(style, tokenizer) -> list[int]:
    """What closes an answer: the style's end-of-turn token (e.g. <|im_end|>) when it is one
    token of the vocabulary, else EOS. The same marker generation stops on, so the tuned model
    learns to end its answers where `generate`/`chat` will stop it."""
    ids = sorted(style.stop_token_ids(tokenizer))
    if ids:
        return ids[:1]
    return [tokenizer.eos_id] if tokenizer.eos_id is not None else []


def encode_pair(tokenizer, style, pair, max_len: int) -> tuple[list[int], list[int], list[int], bool]:
    """(prompt ids, chosen ids, rejected ids, truncated). Prompt and answers are encoded apart,
    so the boundary between scored and unscored tokens is exact. Too long: the answers are cut
    first (keeping at least half of max_len), then the prompt loses its oldest tokens."""
    from llmkit.prompts import Alpaca, alpaca_prompt

    if isinstance(style, Alpaca) and pair.alpaca is not None:
        prompt = tokenizer.encode(alpaca_prompt(*pair.alpaca))  # exactly as Alpaca SFT renders it
    else:
        prompt = style.encode(tokenizer, list(pair.messages), add_generation_prompt=True)
    end = answer_end_ids(style, tokenizer)
    answers = [tokenizer.encode(a, bos=False) + end for a in (pair.chosen, pair.rejected)]
    truncated = False
    longest = max(len(a) for a in answers)
    if len(prompt) + longest > max_len:
        truncated = True
        keep = max(max_len - len(prompt), max_len // 2)
        answers = [a[:keep] for a in answers]
        room = max_len - max(len(a) for a in answers)
        prompt = prompt[len(prompt) - room:] if room > 0 else []
    if not prompt:
        raise LLMKitError(f"{pair.where}: max_seq_len {max_len} leaves no room for the prompt")
    return prompt, answers[0], answers[1], truncated


def collate_pairs(items: list[tuple[list[int], list[int], list[int]]], pad_id: int) -> dict:
    """One (2B, T) batch: the B chosen sequences, then the B rejected ones (one forward for
    both), right-padded by instruction finetuning's collate; labels are the next tokens of
    the answers, IGNORE_INDEX elsewhere (prompt and padding)."""
    from llmkit.data.instruct import Encoded, collate

    seqs = [(p, c) for p, c, _ in items] + [(p, r) for p, _, r in items]
    idx, labels = collate([Encoded(p + a, [IGNORE_INDEX] * len(p) + a, len(p)) for p, a in seqs], pad_id)
    return {"idx": idx, "labels": labels, "tokens": sum(len(p) + len(a) for p, a in seqs)}


def sequence_logps(model, idx: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) summed log-probabilities of the labelled tokens of each row, in float32."""
    logits = model(idx)  # (B, T, vocab)
    tok = -F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX,
                           reduction="none")  # (B*T,), 0 where ignored
    return tok.view(idx.shape).sum(-1)


def dpo_terms(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, beta: float) -> dict:
    """DPO loss (eq. 7) and its diagnostics from policy (p) and reference (r) log-probs of the
    chosen (c) and rejected (r) answers, each (B,)."""
    reward_c, reward_r = beta * (pc - rc), beta * (pr - rr)  # implicit rewards (sec. 5)
    margin = reward_c - reward_r
    return {"loss": -F.logsigmoid(margin).mean(),
            "reward_chosen": reward_c.mean().detach(), "reward_rejected": reward_r.mean().detach(),
            "reward_margin": margin.mean().detach(), "pref_acc": (margin > 0).float().mean(),
            "logp_chosen": pc.mean().detach(), "logp_rejected": pr.mean().detach()}


def _fingerprint(encoded: list, base: str, precision: Optional[torch.dtype], chunks: list[list[int]]) -> str:
    h = hashlib.sha256(json.dumps([base, str(precision), chunks]).encode())
    for p, c, r in encoded:
        h.update(json.dumps([p, c, r]).encode())
    return h.hexdigest()


# --- the recipe ------------------------------------------------------------------------------------
def dpo(
    model: str,
    data: str,
    out: str = "out/dpo",
    method: str = "lora",
    lora: LoRAConfig = LoRAConfig(),
    train_last: int = 2,
    quantize: Optional[str] = None,
    beta: float = 0.1,
    prompt_style: Optional[str] = None,
    max_seq_len: int = 512,
    val_fraction: float = 0.1,
    train: TrainConfig = TrainConfig(max_steps=200, micro_batch_size=4, lr=5e-5, warmup_steps=10,
                                     weight_decay=0.0, eval_every=50, save_every=100, log_every=10),
) -> dict:
    """Preference-tune a model with DPO on chosen/rejected answer pairs.

    Args:
        model: the model to tune (usually instruction-tuned): an llmkit checkpoint dir, a
            Hugging Face model dir or a hub repo id.
        data: a JSON or JSONL file of preference records: {"prompt", "chosen", "rejected"} (the
            prompt a string or a list of messages), or Alpaca-style {"instruction", "input",
            "chosen", "rejected"}.
        out: output directory (checkpoints, metrics.csv, reference log-probs, final/ model).
        method: which weights train: lora (adapters; the reference is the base with adapters
            off), full, or freeze (the last --train-last blocks); full/freeze precompute the
            reference log-probs once.
        lora: LoRA settings for --method lora (--lora.r, --lora.alpha, --lora.targets, ...).
        train_last: blocks that train with --method freeze.
        quantize: with --method lora, hold the frozen base in int8 or nf4 (QLoRA).
        beta: DPO's beta: how far the tuned model may move from the reference (lower = further).
        prompt_style: how prompts are rendered, chosen as `llmkit finetune` chooses it: the
            model's chat template (what finetune saved with its model), else alpaca; or a style
            name (alpaca, chatml, llama3, ...) or a Jinja template file.
        max_seq_len: prompt + answer tokens at most (answers cut first, then the prompt's start).
        val_fraction: share of the records held out to evaluate on.
        train: training loop settings (--train.max_steps, --train.lr, ...).
    """
    from llmkit.data.batches import ShuffledBatches
    from llmkit.data.pairs import load_pairs, split_pairs
    from llmkit.lora import adapters_disabled
    from llmkit.prompts import resolve_style
    from llmkit.recipes.tuning import check_method, setup_method
    from llmkit.training.loop import resolve_precision

    train.validate(complete=False)  # settings first: nothing is read before they are known good
    check_method(method, quantize)
    if not (beta > 0 and math.isfinite(beta)):
        raise LLMKitError(f"beta must be a positive number, got {beta}")
    if max_seq_len < 2:
        raise LLMKitError(f"max_seq_len must be >= 2, got {max_seq_len}")
    pairs = load_pairs(data)
    train_idx, val_idx = split_pairs(len(pairs), val_fraction, train.seed)

    run = Run(model, out, train)
    net = run.load()
    rt, tok = run.rt, run.tokenizer
    style = resolve_style(tok, prompt_style)  # as `llmkit finetune` chooses it, so SFT then DPO agree
    T = min(max_seq_len, net.cfg.block_size)
    encoded, n_cut = [], 0
    for p in pairs:
        prompt, chosen, rejected, cut = encode_pair(tok, style, p, T)
        encoded.append((prompt, chosen, rejected))
        n_cut += cut
    pad_id = run.pad_id
    torch.manual_seed(train.seed)  # LoRA's A matrices: the same init on every process and (re)start
    summary_line = setup_method(net, method, lora, train_last, quantize)
    net.to(rt.device)
    amp = resolve_precision(train.precision, rt.device)

    def autocast():
        import contextlib

        return torch.autocast(rt.device.type, dtype=amp) if amp else contextlib.nullcontext()

    # Reference log-probs, (n_pairs, 2): chosen, rejected. Only for full/freeze (see above).
    out_dir = Path(out)
    reference: Optional[torch.Tensor] = None
    if method != "lora":
        # The validation pairs in the very batches evaluate() forms (same padding, same kernels):
        # at step 0 their policy and reference log-probs are then bitwise equal, every margin is
        # exactly 0 and the validation loss exactly log 2, not log 2 plus rounding noise. The
        # training pairs come in random batches, so there the equality holds to float precision.
        bs = train.micro_batch_size
        val_chunks = [val_idx[s:s + bs] for s in range(0, len(val_idx), bs)]
        by_length = sorted(train_idx, key=lambda i: -sum(map(len, encoded[i])))  # little padding
        chunks = val_chunks + [by_length[s:s + bs] for s in range(0, len(by_length), bs)]
        reference = _reference_logps(net, encoded, chunks, pad_id, out_dir, base_reference(model), amp, train, rt,
                                     autocast)

    def make_batch(ids: list[int]) -> dict:
        batch = collate_pairs([encoded[i] for i in ids], pad_id)
        if reference is not None:
            batch["ref"] = torch.cat([reference[ids, 0], reference[ids, 1]])  # (2B,), the batch's order
        return batch

    def pair_logps(m, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(policy, reference) summed log-probs, each (2B,)."""
        policy = sequence_logps(m, batch["idx"], batch["labels"])
        if "ref" in batch:
            return policy, batch["ref"]
        with torch.no_grad(), adapters_disabled(m):
            return policy, sequence_logps(m, batch["idx"], batch["labels"])

    def loss_fn(m, batch) -> dict:
        policy, ref = pair_logps(m, batch)
        B = policy.shape[0] // 2
        return {**dpo_terms(policy[:B], policy[B:], ref[:B], ref[B:], beta), "tokens": batch["tokens"]}

    def evaluate(m) -> dict:
        if not val_idx:
            return {}
        sums: dict[str, float] = {}
        bs = train.micro_batch_size
        for s in range(0, len(val_idx), bs):
            chunk = val_idx[s:s + bs]
            batch = {k: v.to(rt.device) if torch.is_tensor(v) else v for k, v in make_batch(chunk).items()}
            policy, ref = pair_logps(m, batch)
            B = len(chunk)
            terms = dpo_terms(policy[:B], policy[B:], ref[:B], ref[B:], beta)
            # The model's own preference, reference aside: does it find the chosen answer likelier?
            terms["logp_acc"] = (policy[:B] > policy[B:]).float().mean()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v) * B
        return {f"val_{k}": v / len(val_idx) for k, v in sums.items()}

    batches = ShuffledBatches(len(train_idx), train.micro_batch_size,
                              lambda ids: make_batch([train_idx[i] for i in ids]),
                              seed=train.seed, rank=rt.rank, world_size=rt.world)
    if rt.main:
        lens = [len(p) + max(len(c), len(r)) for p, c, r in encoded]
        print(f"pairs: {len(train_idx):,} train, {len(val_idx):,} val; prompt style {style.name}; "
              f"longest {max(lens)} tokens (max {T}){f', {n_cut} cut to fit' if n_cut else ''}; beta {beta}; "
              f"reference: {'the base model (adapters off)' if method == 'lora' else 'precomputed log-probs'}",
              flush=True)
        print(summary_line, flush=True)
    result = run.fit(train, batches, loss_fn, lora=lora if method == "lora" else None,
                     quantize=None if quantize == "none" else quantize, evaluate=evaluate)
    shown = ", ".join(f"{k} {result[k]:.4f}" for k in ("val_loss", "val_reward_margin", "val_pref_acc")
                      if isinstance(result.get(k), float))
    return run.finish(result, done=f"step {result['step']}{'; ' + shown if shown else ''}",
                      next_steps=["llmkit chat {final}", "llmkit evaluate {final} --generate-data YOUR_HELD_OUT.json"])


@torch.no_grad()
def _reference_logps(net, encoded, chunks: list[list[int]], pad_id, out_dir: Path, base: str, amp,
                     train: TrainConfig, rt, autocast):
    """(n, 2) reference log-probs of every pair: loaded from OUT when a previous run of the same
    data and base saved them (a resumed run then uses exactly the same numbers), else computed
    with the untrained model, in the training precision, batch by batch as `chunks` lists the
    pair indices, and saved."""
    from llmkit.checkpoint import load_reference_logps, save_reference_logps
    from llmkit.progress import progress

    key = _fingerprint(encoded, base, amp, chunks)
    if train.resume != "none":
        ref = load_reference_logps(out_dir, key)
        if ref is not None:
            if rt.main:
                print(f"reference log-probs: reused {out_dir / REFERENCE_FILE}", flush=True)
            return ref
    was_training = net.training
    net.eval()
    ref = torch.empty(len(encoded), 2)
    with progress(total=len(encoded), desc="reference log-probs", unit="pairs", enabled=rt.main) as bar:
        for chunk in chunks:
            batch = collate_pairs([encoded[i] for i in chunk], pad_id)
            with autocast():
                lp = sequence_logps(net, batch["idx"].to(rt.device), batch["labels"].to(rt.device)).cpu()
            ref[chunk, 0], ref[chunk, 1] = lp[:len(chunk)], lp[len(chunk):]
            bar.update(len(chunk))
    net.train(was_training)
    if rt.main:
        path = save_reference_logps(out_dir, ref, key)
        print(f"reference log-probs of {len(encoded):,} pairs computed and saved to {path}", flush=True)
    return ref
