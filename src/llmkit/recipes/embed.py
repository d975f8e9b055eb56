"""Sentence embeddings: encoding texts as vectors (`encode_texts`, `llmkit embed encode`, the
server's /v1/embeddings) and contrastive finetuning for them (`llmkit embed train`).

An embedding is the mean of the model's final hidden states over a text's real tokens,
L2-normalised (`model.mean_pool`, the model's `pool="mean"` forward; Reimers & Gurevych 2019, "Sentence-BERT", sec. 3: mean
pooling beat [CLS] and max pooling), so a dot product is the cosine similarity. Encoders
(BERT, RoBERTa, DistilBERT, ModernBERT) and decoders both work: rows are right-padded, an
encoder's attention skips the padding, and a causal model needs no attention mask at all (no
real token attends to a later position), only the pooling mask. The output layer (LM head,
class head) is not used.

Training is InfoNCE with in-batch negatives (Henderson et al. 2017, "Efficient natural language
response suggestion", sec. 4.4; sentence-transformers' MultipleNegativesRankingLoss; van den
Oord et al. 2018): for B (anchor, positive) pairs, the similarity matrix cos(a_i, p_j) / t is
a B-way classification whose answer is the diagonal. A hard negative per pair (SNLI's
contradiction hypothesis of the same premise; Gao et al. 2021, "SimCSE", sec. 5.1) adds a
column every anchor must also rank below its positive. `symmetric` adds the positives -> anchors
direction. Temperature 0.05 is sentence-transformers' default scale of 20 (SimCSE uses 0.05).
Candidates that are not negatives at all (the same premise's other positive, the very same
text twice in a batch) are masked out rather than pushed away. Under torchrun the candidates
are gathered from every process (gradients flow back through the gather, as in OpenCLIP's
`gather_with_grad`), so B is the global batch and two processes train exactly as one;
gradient accumulation does not widen the negatives (each micro-batch is its own task).

The recipe is its batches and its loss on the one scaffold (recipes/scaffold.py): methods
full / lora / freeze, checkpoints, exact resume and summary.json as every recipe has them. It
is evaluated by retrieval on held-out pairs: for each query (premise), is one of its positives
the nearest of all held-out candidate texts (its own and every other premise's hypotheses,
neutral and contradiction ones included)? Top-1, top-5 and MRR, before training (the baseline)
and after.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from llmkit.data.nli import NLIPair, entailment_pairs, nli_triples, read_nli
from llmkit.errors import LLMKitError
from llmkit.lora import LoRAConfig
from llmkit.recipes.classify import collate
from llmkit.training.loop import TrainConfig

EMBEDDING = "embedding.json"  # next to the weights of every checkpoint of `embed train`
POSITIVE, NEGATIVE = "entailment", "contradiction"
HEAD_MODULES = ("lm_head", "lm_transform", "pooler", "nsp_head")  # what an embedding never reads


# --- encoding -------------------------------------------------------------------------------------
def truncate(ids: list[int], max_len: int, tokenizer=None) -> list[int]:
    """`ids` cut to `max_len` tokens, keeping the closing [SEP] of a BERT-style tokenizer (as
    `transformers`' truncation keeps its special tokens)."""
    if len(ids) <= max_len:
        return ids
    if tokenizer is not None and getattr(tokenizer, "add_cls_sep", False) and max_len >= 2 \
            and ids[-1] == tokenizer.sep_id:
        return ids[:max_len - 1] + ids[-1:]
    return ids[:max_len]


def embed_rows(model: nn.Module, idx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, d) float32 embeddings of right-padded rows (`mask` (B, T): 1 at real tokens): the
    model's pooling forward, the call DDP / FSDP / torch.compile wrap when it trains."""
    return model(idx, attention_mask=mask, pool="mean")  # (B, d) float32, through forward


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode_ids(model: nn.Module, token_lists: Sequence[list[int]], pad_id: int, batch_size: int = 32,
               device: Optional[torch.device | str] = None,
               embed: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """(n, d) float32 embeddings of token id lists, in input order. Batches are taken in order
    of length (longest first: little padding, and an out-of-memory shows at once).
    `embed(idx, mask)`: how a batch is embedded (default `embed_rows` on `model`; the training
    loop passes its wrapped model)."""
    if batch_size < 1:
        raise LLMKitError(f"batch_size must be >= 1, got {batch_size}")
    embed = embed or partial(embed_rows, model)
    device = torch.device(device) if device is not None else model_device(model)
    order = sorted(range(len(token_lists)), key=lambda i: -len(token_lists[i]))
    out = torch.empty(len(token_lists), model.cfg.n_embd)
    for s in range(0, len(order), batch_size):
        chunk = order[s:s + batch_size]
        idx, mask = collate([token_lists[i] for i in chunk], pad_id)
        out[chunk] = embed(idx.to(device), mask.to(device)).float().cpu()
    return out


def pad_id_of(tokenizer) -> int:
    """The padding id of batches (it never reaches the pooling: the mask excludes it)."""
    return next(i for i in (tokenizer.pad_id, tokenizer.eos_id, 0) if i is not None)


def tokenize(tokenizer, texts: Sequence[str], max_len: int, source: str = "") -> list[list[int]]:
    """Token ids of `texts` (the tokenizer's specials included), each cut to `max_len`."""
    ids = [truncate(t, max_len, tokenizer) for t in tokenizer.encode_batch(list(texts))]
    for text, t in zip(texts, ids):
        if not t:
            raise LLMKitError(f"{source + ': ' if source else ''}text {text[:40]!r} encodes to no tokens")
    return ids


def encode_texts(model: nn.Module, tokenizer, texts: Sequence[str], batch_size: int = 32,
                 max_len: Optional[int] = None, device: Optional[torch.device | str] = None) -> torch.Tensor:
    """(n, d) float32 sentence embeddings of `texts` (mean-pooled, L2-normalised), in input
    order; texts are cut to `max_len` tokens (default: the model's context)."""
    T = min(max_len or model.max_seq_len, model.max_seq_len)
    return encode_ids(model, tokenize(tokenizer, texts, T), pad_id_of(tokenizer), batch_size, device)


# --- retrieval evaluation -------------------------------------------------------------------------
@dataclass
class RetrievalSet:
    """Queries, the candidate texts they are ranked against, and which candidates answer each."""

    queries: list[str]
    docs: list[str]
    relevant: list[list[int]]  # per query: indices into docs of its positives


def retrieval_set(pairs: Sequence[NLIPair], positive: str = POSITIVE) -> RetrievalSet:
    """Every premise with a positive is a query; every hypothesis of `pairs` (any label) is a
    candidate, once per distinct text; a query's positives are its `positive` hypotheses."""
    doc_index: dict[str, int] = {}
    rel: dict[str, list[int]] = {}
    for p in pairs:
        j = doc_index.setdefault(p.hypothesis, len(doc_index))
        if p.label == positive:
            hits = rel.setdefault(p.premise, [])
            if j not in hits:
                hits.append(j)
    return RetrievalSet(list(rel), list(doc_index), list(rel.values()))


def retrieval_metrics(q: torch.Tensor, d: torch.Tensor, relevant: Sequence[Sequence[int]],
                      ks: Sequence[int] = (1, 5), chunk: int = 1024) -> dict:
    """{"top1", "top5", "mrr"} of queries `q` (n, dim) against candidates `d` (m, dim), both
    normalised: a query's rank is that of its best-scored positive (ties counted in its favour)."""
    ranks = []
    with torch.autocast(q.device.type, enabled=False):  # the loop evaluates under autocast: not here
        for s in range(0, len(q), chunk):
            scores = q[s:s + chunk].float() @ d.float().T  # (c, m)
            best = torch.stack([scores[i, list(relevant[s + i])].max() for i in range(len(scores))])  # (c,)
            ranks.append(1 + (scores > best[:, None]).sum(1))
    r = torch.cat(ranks).double()
    out = {f"top{k}": float((r <= k).double().mean()) for k in ks}
    out["mrr"] = float((1.0 / r).mean())
    return out


def format_retrieval(m: dict) -> str:
    return ", ".join(f"{'MRR' if k == 'mrr' else 'top-' + k[3:]} {v:.3f}" for k, v in m.items())


# --- data -----------------------------------------------------------------------------------------
def read_pairs(path: str | Path) -> list[NLIPair]:
    """The labelled pairs of a JSONL / JSON file: SNLI-style records ({"premise", "hypothesis",
    "label"}, see data/nli.py), or sentence-transformers' {"anchor", "positive"[, "negative"]}
    (read as an entailment pair plus, with a negative, a contradiction pair)."""
    from llmkit.data import read_records

    records = read_records(path)
    first = records[0][1] if records else None
    if not (isinstance(first, dict) and "anchor" in first):
        return read_nli(path)
    pairs = []
    for where, r in records:
        if not isinstance(r, dict):
            raise LLMKitError(f"{where}: expected a JSON object, got {type(r).__name__}")
        for key in ("anchor", "positive", "negative"):
            if (key != "negative" or r.get(key) is not None) and not isinstance(r.get(key), str):
                got = "missing" if key not in r else f"a {type(r[key]).__name__}"
                raise LLMKitError(f"{where}: '{key}' must be a string ({got}); record keys: {', '.join(sorted(r))}")
        pairs.append(NLIPair(r["anchor"], r["positive"], POSITIVE, where))
        if r.get("negative") is not None:
            pairs.append(NLIPair(r["anchor"], r["negative"], NEGATIVE, where))
    return pairs


def training_examples(pairs: Sequence[NLIPair], hard_negatives: bool) -> list[tuple[str, str, Optional[str]]]:
    """(anchor, positive, hard negative or None): every entailment pair once; with
    `hard_negatives`, those whose premise has a contradiction take one (`nli_triples`)."""
    if not hard_negatives:
        return [(a, p, None) for a, p in entailment_pairs(pairs, POSITIVE)]
    triples = nli_triples(pairs, POSITIVE, NEGATIVE)
    covered = {a for a, _, _ in triples}
    return list(triples) + [(a, p, None) for a, p in entailment_pairs(pairs, POSITIVE) if a not in covered]


def split_by_anchor(pairs: Sequence[NLIPair], fraction: float, seed: int) -> tuple[list[NLIPair], list[NLIPair]]:
    """(train, held out): a `fraction` of the premises with all their pairs held out, so that no
    held-out query was seen in training."""
    anchors = list(dict.fromkeys(p.premise for p in pairs if p.label == POSITIVE))
    k = round(fraction * len(anchors))
    if fraction > 0 and len(anchors) >= 2:
        k = min(max(k, 1), len(anchors) - 1)
    held = set(random.Random(seed).sample(anchors, k))
    return [p for p in pairs if p.premise not in held], [p for p in pairs if p.premise in held]


def cap_queries(pairs: Sequence[NLIPair], n: int, seed: int) -> list[NLIPair]:
    """The pairs of at most `n` premises (a seeded sample, the same on every run)."""
    anchors = list(dict.fromkeys(p.premise for p in pairs if p.label == POSITIVE))
    if len(anchors) <= n:
        return list(pairs)
    keep = set(random.Random(seed).sample(anchors, n))
    return [p for p in pairs if p.premise in keep]


# --- loss -----------------------------------------------------------------------------------------
def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(every process's rows of `x` concatenated in rank order, where this process's start).
    With gradients, they flow back to each process's own rows. Row counts may differ."""
    if _world() == 1:
        return x, 0
    import torch.distributed as dist
    import torch.distributed.nn.functional as dnn

    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(_world())]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    pad = max(sizes) - x.shape[0]
    xp = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]) if pad else x
    if x.requires_grad:
        parts = dnn.all_gather(xp)
    else:
        parts = [torch.empty_like(xp) for _ in sizes]
        dist.all_gather(parts, xp.contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]), sum(sizes[:dist.get_rank()])


def _ranking_loss(q: torch.Tensor, q_anchor: torch.Tensor, q_text: torch.Tensor, c: torch.Tensor,
                  c_anchor: torch.Tensor, c_text: torch.Tensor, target: torch.Tensor, temperature: float):
    """Cross-entropy of each query over the candidates, its `target` the answer; candidates of
    the same anchor or the same text as the query's answer are masked out (not negatives)."""
    logits = q @ c.T / temperature  # (B, C)
    fake = (c_anchor[None] == q_anchor[:, None]) | (c_text[None] == q_text[:, None])  # (B, C)
    fake[torch.arange(len(q), device=q.device), target] = False
    logits = logits.masked_fill(fake, float("-inf"))
    return F.cross_entropy(logits, target), (logits.argmax(-1) == target).float().mean()


def contrastive_loss(a: torch.Tensor, p: torch.Tensor, n: torch.Tensor, a_key: torch.Tensor, p_key: torch.Tensor,
                     n_key: torch.Tensor, temperature: float = 0.05, symmetric: bool = False):
    """(InfoNCE loss, in-batch accuracy) of anchors `a` (B, d) and their positives `p` (B, d)
    with hard negatives `n` (M, d), every other positive and negative (of every process) as
    negatives. Keys: integer ids of each row's anchor and text (equal texts, equal ids), to
    mask candidates that are no negatives."""
    with torch.autocast(a.device.type, enabled=False):  # similarities / 0.05 in float32
        a, p, n = a.float(), p.float(), n.float()
        P, off = gather_rows(p)
        A, _ = gather_rows(a)
        N, _ = gather_rows(n)
        (Pa, _), (Pt, _), (Nt, _) = gather_rows(a_key), gather_rows(p_key), gather_rows(n_key)
        target = off + torch.arange(len(a), device=a.device)
        cands = torch.cat([P, N])
        c_anchor = torch.cat([Pa, torch.full_like(Nt, -1)])  # a hard negative of the same anchor is one
        loss, acc = _ranking_loss(a, a_key, p_key, cands, c_anchor, torch.cat([Pt, Nt]), target, temperature)
        if symmetric:  # positives -> anchors (the negatives are anchors' only)
            back, _ = _ranking_loss(p, a_key, a_key, A, Pa, Pa, target, temperature)
            loss = (loss + back) / 2
    return loss, acc


# --- the training forward -------------------------------------------------------------------------
def freeze_head(model: nn.Module, method: str) -> None:
    """Stop the output layers' parameters from training: an embedding never reads them (and DDP
    refuses parameters that get no gradient). Embeddings tied to the LM head keep training,
    except with `freeze`, which enabled them only as the head."""
    backbone = {id(p) for name, p in model.named_parameters(remove_duplicate=False)
                if name.split(".")[0] not in HEAD_MODULES}
    for mod in HEAD_MODULES:
        m = getattr(model, mod, None)
        for p in (m.parameters() if m is not None else ()):
            if id(p) not in backbone or method == "freeze":
                p.requires_grad_(False)


# --- training -------------------------------------------------------------------------------------
def embed_train(
    model: str,
    data: str,
    out: str = "out/embed",
    val_data: Optional[str] = None,
    val_fraction: float = 0.1,
    eval_size: int = 1000,
    method: str = "full",
    lora: LoRAConfig = LoRAConfig(),
    train_last: int = 2,
    quantize: Optional[str] = None,
    temperature: float = 0.05,
    symmetric: bool = False,
    hard_negatives: bool = True,
    max_seq_len: int = 128,
    train: TrainConfig = TrainConfig(max_steps=500, micro_batch_size=32, lr=2e-5, warmup_steps=50,
                                     weight_decay=0.01, eval_every=100, save_every=100, log_every=10),
) -> dict:
    """Finetune a model for sentence embeddings (contrastive, in-batch negatives), evaluated by retrieval.

    Args:
        model: the base model: an llmkit checkpoint dir, a Hugging Face model dir or a hub repo
            id; an encoder (BERT, RoBERTa, ModernBERT, ...) or a decoder.
        data: JSONL/JSON pairs: SNLI-style {"premise", "hypothesis", "label"} records (entailment
            pairs train, a contradiction of the same premise is its hard negative), or
            {"anchor", "positive", "negative" (optional)} records.
        out: output directory (checkpoints, metrics.csv, summary.json, final/).
        val_data: a separate file of held-out pairs for the retrieval evaluation (same formats).
        val_fraction: without --val-data, the share of --data's premises held out for it.
        eval_size: evaluate on at most this many held-out premises (a seeded sample).
        method: which weights train: full (all), lora (adapters) or freeze (the last
            --train-last blocks and the final norm).
        lora: LoRA settings for --method lora (--lora.r, --lora.alpha, --lora.targets, ...).
        train_last: blocks that train with --method freeze.
        quantize: with --method lora, hold the frozen base in int8 or nf4 (QLoRA).
        temperature: similarities are cosine / temperature (0.05: a scale of 20).
        symmetric: also rank the anchors for each positive (the loss averages both directions).
        hard_negatives: use a premise's contradiction hypothesis as a hard negative of its pairs.
        max_seq_len: texts are cut to this many tokens (at most the model's context).
        train: training loop settings (--train.max_steps, --train.lr, ...).
    """
    from llmkit.recipes.scaffold import Run, base_reference, is_new_model
    from llmkit.recipes.tuning import check_method, setup_method
    from llmkit.training.loop import resolve_precision

    train.validate(complete=False)  # settings first: nothing is read before they are known good
    check_method(method, quantize)
    if is_new_model(model):
        raise LLMKitError(f"{model}: names an architecture to build; embed train finetunes an existing model "
                          "(a checkpoint, Hugging Face dir or hub id)")
    if not 0.0 <= val_fraction < 1.0:
        raise LLMKitError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not temperature > 0:
        raise LLMKitError(f"temperature must be > 0, got {temperature}")
    if max_seq_len < 2:
        raise LLMKitError(f"max_seq_len must be >= 2, got {max_seq_len}")
    if eval_size < 1:
        raise LLMKitError(f"eval_size must be >= 1, got {eval_size}")
    if method == "lora" and "lm_head" in lora.resolved_targets():
        raise LLMKitError("an embedding does not use the output layer: leave lm_head out of --lora.targets")

    # Everything about the data is checked before the model is loaded.
    pairs = read_pairs(data)
    if val_data:
        train_pairs, eval_pairs, eval_source = pairs, read_pairs(val_data), str(val_data)
    else:
        train_pairs, eval_pairs = split_by_anchor(pairs, val_fraction, train.seed)
        eval_source = f"{data} (held-out {val_fraction:g} of its premises)"
    examples = training_examples(train_pairs, hard_negatives)
    if not examples:
        raise LLMKitError(f"{data}: no '{POSITIVE}' pairs to train on (labels found: "
                          f"{', '.join(sorted({p.label for p in pairs}))})")
    eval_set = retrieval_set(cap_queries(eval_pairs, eval_size, train.seed)) if eval_pairs else None
    if eval_set is not None and not eval_set.queries:
        raise LLMKitError(f"{val_data or data}: no '{POSITIVE}' pairs to evaluate retrieval on")

    run = Run(model, out, train)
    net = run.load()
    rt, tok = run.rt, run.tokenizer
    from llmkit.model import TaskHead

    if isinstance(net.lm_head, TaskHead):  # its checkpoints would need classifier.json to load
        raise LLMKitError(f"{model}: a classifier (a task head in place of the output layer); train embeddings "
                          "from its base model")
    T = min(max_seq_len, net.cfg.block_size)
    if T < max_seq_len and rt.main:
        print(f"max_seq_len {max_seq_len} is past the model's context: texts are cut to {T} tokens", flush=True)
    pad_id = run.pad_id

    # Every distinct text tokenized once; its index is the key that tells equal texts apart.
    texts = list(dict.fromkeys([t for ex in examples for t in ex if t is not None]
                               + (eval_set.queries + eval_set.docs if eval_set else [])))
    key = {t: i for i, t in enumerate(texts)}
    ids = tokenize(tok, texts, T, str(data))
    train_keys = [(key[a], key[p], key[n] if n is not None else None) for a, p, n in examples]

    total = sum(p.numel() for p in net.parameters())
    setup_method(net, method, lora, train_last, quantize)
    freeze_head(net, method)
    n_train = sum(p.numel() for p in net.parameters() if p.requires_grad)
    summary_line = f"method {method}: {n_train:,} trainable of {total:,} parameters ({100 * n_train / max(total, 1):.2f}%)"

    def make_batch(indices: list[int]) -> dict:
        a, p, n = zip(*(train_keys[i] for i in indices))
        n = [k for k in n if k is not None]
        rows = [ids[k] for k in (*a, *p, *n)]
        idx, mask = collate(rows, pad_id)
        return {"idx": idx, "mask": mask, "a_key": torch.tensor(a), "p_key": torch.tensor(p),
                "n_key": torch.tensor(n, dtype=torch.long), "tokens": sum(len(r) for r in rows)}

    from llmkit.data.batches import ShuffledBatches

    batches = ShuffledBatches(len(examples), train.micro_batch_size, make_batch, seed=train.seed,
                              rank=rt.rank, world_size=rt.world)

    def loss_fn(m, batch) -> dict:
        emb = m(batch["idx"], attention_mask=batch["mask"], pool="mean")  # (2B + M, d): anchors, positives, hard negatives
        B = len(batch["a_key"])
        loss, acc = contrastive_loss(emb[:B], emb[B:2 * B], emb[2 * B:], batch["a_key"], batch["p_key"],
                                     batch["n_key"], temperature, symmetric)
        return {"loss": loss, "tokens": batch["tokens"], "train_acc": acc}

    baseline: dict = {}

    def retrieval(m) -> dict:
        enc = partial(encode_ids, net, pad_id=pad_id, batch_size=2 * train.micro_batch_size, device=rt.device,
                      embed=partial(embed_rows, m))
        q = enc([ids[key[t]] for t in eval_set.queries])
        d = enc([ids[key[t]] for t in eval_set.docs])
        return retrieval_metrics(q, d, eval_set.relevant)

    def evaluate(m) -> dict:
        if eval_set is None:
            return {}
        if baseline and run.trainer is not None and run.trainer.step == 0:
            found = baseline  # the untrained model, measured below already
        else:
            found = retrieval(m)
        return {f"val_{k}": v for k, v in found.items()}

    def on_eval(step: int, m, metrics: dict) -> None:
        if metrics:
            from tqdm.auto import tqdm

            tqdm.write(f"retrieval, step {step}: " + format_retrieval({k[4:]: v for k, v in metrics.items()}))

    meta = {"format": "llmkit-embedding", "pooling": "mean", "normalize": True, "max_seq_len": T,
            "base_model": base_reference(model), "method": method, "temperature": temperature,
            "symmetric": symmetric, "hard_negatives": hard_negatives}
    n_neg = sum(n is not None for _, _, n in examples)
    if rt.main:
        print(f"pairs: train {len(examples):,} ({n_neg:,} with a hard negative); retrieval eval: "
              + (f"{len(eval_set.queries):,} queries over {len(eval_set.docs):,} candidates from {eval_source}"
                 if eval_set else "none (--val-fraction 0 and no --val-data)") + f"; max {T} tokens", flush=True)
        print(summary_line, flush=True)

    if eval_set is not None:  # the baseline: the model as loaded, measured as the loop measures
        net.to(rt.device).eval()
        amp = resolve_precision(train.precision, rt.device)
        with torch.no_grad(), (torch.autocast(rt.device.type, dtype=amp) if amp else contextlib.nullcontext()):
            baseline.update(retrieval(net))
        net.train()
        if rt.main:
            print("retrieval before training: " + format_retrieval(baseline), flush=True)
    result = run.fit(train, batches, loss_fn, lora=lora if method == "lora" else None,
                     quantize=None if quantize == "none" else quantize, extra_files={EMBEDDING: meta},
                     evaluate=evaluate, on_eval=on_eval)
    if not rt.main:
        return result
    trained = {k[4:]: result[k] for k in list(result) if k.startswith("val_")}
    summary = {**result, "examples": {"train": len(examples), "with_hard_negative": n_neg}, "method": method,
               "temperature": temperature, "symmetric": symmetric}
    done = f"step {result['step']}"
    if eval_set is not None:
        summary["retrieval"] = {"source": eval_source, "queries": len(eval_set.queries),
                                "candidates": len(eval_set.docs), "baseline": baseline, "trained": trained}
        line = ", ".join(f"{'MRR' if k == 'mrr' else 'top-' + k[3:]} {baseline[k]:.3f} -> {trained[k]:.3f}"
                         for k in baseline if k in trained)
        print(f"retrieval ({len(eval_set.queries):,} queries, {len(eval_set.docs):,} candidates): {line}", flush=True)
        done += f"; retrieval top-1 {baseline['top1']:.3f} -> {trained.get('top1', float('nan')):.3f}"
    return run.finish(result, summary=summary, done=done,
                      next_steps=["llmkit embed encode {final} --file TEXTS.txt --out embeddings.npy",
                                  "llmkit serve {final}   # then POST /v1/embeddings"])


# --- encoding a file ------------------------------------------------------------------------------
def embed_encode(
    model: str,
    texts: Optional[list[str]] = None,
    file: Optional[str] = None,
    out: Optional[str] = None,
    batch_size: int = 32,
    max_seq_len: Optional[int] = None,
    device: str = "cpu",
    dtype: Optional[str] = None,
) -> torch.Tensor:
    """Encode texts as sentence embeddings (mean-pooled, L2-normalised).

    Args:
        model: a model directory (a checkpoint or final/ of `llmkit embed train`, any llmkit or
            Hugging Face model) or a hub repo id.
        texts: texts to encode (given on the command line); their cosine similarities are printed.
        file: a text file to encode instead, one text per line.
        out: write the embeddings to this .npy file ((n, d) float32, row i = text i).
        batch_size: texts per forward pass.
        max_seq_len: texts are cut to this many tokens (default: the model's context).
        device: cpu, cuda, cuda:N or mps.
        dtype: float32 or bfloat16 (default: the checkpoint's).
    """
    from llmkit.checkpoint import load_model

    if (texts is None) == (file is None):
        raise LLMKitError("give texts to encode, or --file with one text per line (not both)")
    if out is not None and not str(out).endswith(".npy"):
        raise LLMKitError(f"--out {out}: embeddings are written as .npy (name the file *.npy)")
    if file is not None:
        p = Path(file).expanduser()
        if not p.is_file():
            raise LLMKitError(f"{file}: no such file")
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise LLMKitError(f"{file}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        empty = next((i for i, t in enumerate(lines, 1) if not t.strip()), None)
        if empty is not None:
            raise LLMKitError(f"{file}: line {empty} is empty (one text per line; row i of the output is line i)")
        texts = lines
    texts = list(texts)
    if not texts:
        raise LLMKitError(f"{file or 'texts'}: nothing to encode")
    if any(not t.strip() for t in texts):
        raise LLMKitError("empty text: give non-empty texts to encode")
    loaded = load_model(model, device=device, dtype=dtype)
    net = loaded.model.requires_grad_(False)
    emb = encode_texts(net, loaded.tokenizer, texts, batch_size, max_seq_len)
    if out is not None:
        import numpy as np

        from llmkit.checkpoint import atomic_write

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:  # a handle: np.save would append .npy to the temp name
                np.save(f, emb.numpy().astype(np.float32))

        atomic_write(out, write)
        print(f"wrote {len(texts)} embeddings of {emb.shape[1]} dims to {out}")
    else:
        sims = emb @ emb.T
        width = min(max(len(t) for t in texts), 40)
        for i, t in enumerate(texts):
            label = t.replace("\n", " ")[:width].ljust(width)
            print(f"{label}  " + " ".join(f"{float(s):6.3f}" for s in sims[i]))
    return emb
