"""Token-level task heads on the one scaffold: named-entity tagging (`llmkit ner`) and extractive
question answering (`llmkit qa`), each its batches and its loss.

    ner   CoNLL/BIO files (data/conll.py): a token head, the word's label on its first sub-token
          and no loss on the others (the transformers recipe); scored by entity-level
          precision / recall / F1 with seqeval's semantics (evaluate/metrics.py).
    qa    SQuAD v1.1 JSON (data/squad.py): a span head (start and end logits per token), long
          contexts in overlapping windows; the best valid span over the windows; scored by the
          official SQuAD exact match and F1. The "first sentence of the context" baseline is
          reported next to it, so the reader sees what the model learned.

Both take any encoder llmkit loads (a pretrained llmkit run, a Hugging Face BERT / RoBERTa /
DistilBERT / ModernBERT folder) and train with full / lora / freeze (recipes/tuning.py) through
the one loop; every checkpoint carries classifier.json (labels and the head spec), so any of
them is a model `predict` and `llmkit pipeline` load.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from llmkit.checkpoint import CLASSIFIER
from llmkit.errors import LLMKitError
from llmkit.heads import attach_head, head_spec
from llmkit.lora import LoRAConfig
from llmkit.recipes.classify import collate, pad_types
from llmkit.recipes.scaffold import Run, base_reference
from llmkit.training.loop import TrainConfig
from llmkit.training.losses import IGNORE_INDEX


# --- the shared part: a head on an encoder, trained with the one loop ---------------------------
def _check(method: str, quantize: Optional[str], lora: LoRAConfig, train: TrainConfig) -> None:
    from llmkit.recipes.tuning import check_method

    train.validate(complete=False)
    check_method(method, quantize)
    if method == "lora" and "lm_head" in lora.resolved_targets():
        raise LLMKitError("the task head always trains in full: leave lm_head out of --lora.targets")


def _fit_head(run: Run, net, spec: dict, method: str, lora: LoRAConfig, train_last: int, quantize: Optional[str],
              batches, loss_fn: Callable, evaluate: Callable, meta: dict) -> dict:
    """Attach the head, choose what trains, run the loop; every checkpoint carries `meta`."""
    from llmkit.recipes.tuning import setup_method

    torch.manual_seed(run.train.seed)  # the same head on every process and every (re)start
    attach_head(net, spec)
    line = setup_method(net, method, lora, train_last, quantize)
    for p in net.lm_head.parameters():  # the new head trains whatever the method
        p.requires_grad_(True)
    if run.main:
        print(line + f"; with the {spec['task']} head ({spec['n_out']} outputs)", flush=True)
    return run.fit(run.train, batches, loss_fn, lora=lora if method == "lora" else None,
                   quantize=None if quantize == "none" else quantize, extra_files={CLASSIFIER: meta},
                   evaluate=evaluate)


@contextlib.contextmanager
def _inference(run: Run, net):
    """The unwrapped model on this process, in eval mode and the run's precision."""
    net.eval()
    amp = run.trainer.amp_dtype if run.trainer is not None else None
    with torch.no_grad(), (torch.autocast(run.rt.device.type, dtype=amp) if amp else contextlib.nullcontext()):
        yield
    net.train()


def _loaded(spec: str, task: str, device: str):
    from llmkit.checkpoint import load_model

    d = Path(spec).expanduser()
    if d.is_dir() and not (d / CLASSIFIER).exists() and (d / "final").is_dir():
        d = d / "final"  # a run's --out
    loaded = load_model(d, device=device)
    head = (loaded.classifier or {}).get("head") or {}
    if head.get("task") != task:
        what = {"token": "a tagger (llmkit ner train)", "span": "a question-answering model (llmkit qa train)"}[task]
        raise LLMKitError(f"{d}: not {what}")
    return loaded


# --- named entities ---------------------------------------------------------------------------------
@torch.no_grad()
def tag_sentences(model, tokenizer, sentences, labels: list[str], max_len: int, batch_size: int = 32,
                  device="cpu") -> list[list[str]]:
    """Predicted tags (one per word) of each sentence: each word takes its first sub-token's label."""
    from llmkit.data.conll import encode_sentences, word_tags

    lab = {y: i for i, y in enumerate(labels)}
    encoded, _ = encode_sentences(sentences, tokenizer, {**lab, **{t: 0 for s in sentences for t in s.tags
                                                                  if t not in lab}}, max_len)
    out: list[list[str]] = [[] for _ in sentences]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    for s in range(0, len(order), batch_size):
        chunk = order[s:s + batch_size]
        idx, mask = collate([encoded[i].ids for i in chunk], pad)
        pred = model(idx.to(device), attention_mask=mask.to(device)).argmax(-1).cpu()  # (B, T)
        for b, i in enumerate(chunk):
            e = encoded[i]
            out[i] = word_tags(e.word_ids, pred[b, :len(e.ids)].tolist(), labels, len(sentences[i].words))
    return out


def ner_train(
    model: str,
    data: str,
    val_data: Optional[str] = None,
    test_data: Optional[str] = None,
    out: str = "out/ner",
    method: str = "full",
    lora: LoRAConfig = LoRAConfig(),
    train_last: int = 2,
    quantize: Optional[str] = None,
    max_seq_len: int = 256,
    train: TrainConfig = TrainConfig(max_steps=500, micro_batch_size=16, lr=5e-5, eval_every=100,
                                     save_every=100, log_every=10),
) -> dict:
    """Finetune an encoder to tag named entities (token classification) on CoNLL/BIO files.

    Args:
        model: the encoder: an llmkit checkpoint, a Hugging Face dir (BERT, RoBERTa, ...) or hub id.
        data: training sentences: one "word TAB tag" (or "word tag") line per token, blank lines
            between sentences, BIO tags (B-PER, I-PER, O, ...), e.g. WNUT-17 or CoNLL-2003.
        val_data: validation file (same format), scored every --train.eval_every steps.
        test_data: test file, scored once at the end.
        out: output directory (checkpoints, metrics.csv, metrics.json, final/).
        method: full, lora or freeze (the last --train-last blocks); the head always trains.
        lora: LoRA settings for --method lora.
        train_last: blocks that train with --method freeze.
        quantize: with --method lora, hold the frozen base in int8 or nf4 (QLoRA).
        max_seq_len: sentences are cut to this many tokens.
        train: training loop settings (--train.max_steps, --train.lr, ...).
    """
    from llmkit.checkpoint import atomic_write_json
    from llmkit.data.batches import ShuffledBatches
    from llmkit.data.conll import encode_sentences, label_list, read_conll
    from llmkit.evaluate.metrics import entity_scores

    _check(method, quantize, lora, train)
    sentences = read_conll(data)
    splits = {"val": read_conll(val_data) if val_data else None, "test": read_conll(test_data) if test_data else None}
    labels = label_list(sentences)
    if len(labels) < 2:
        raise LLMKitError(f"{data}: only the tag {labels[0]!r}; a tagger needs entity tags (B-..., I-...)")
    run = Run(model, out, train)
    net = run.load()
    if net.cfg.causal:
        raise LLMKitError(f"{model}: a causal (decoder) model; tagging reads each token in context: use an encoder")
    tok, rt = run.tokenizer, run.rt
    T = min(max_seq_len, net.cfg.block_size)
    label_id = {y: i for i, y in enumerate(labels)}
    encoded, n_cut = encode_sentences(sentences, tok, label_id, T)
    pad = run.pad_id

    def make_batch(indices: list[int]) -> dict:
        idx, mask = collate([encoded[i].ids for i in indices], pad)
        y, _ = collate([encoded[i].labels for i in indices], IGNORE_INDEX)
        return {"idx": idx, "mask": mask, "labels": y}

    batches = ShuffledBatches(len(encoded), train.micro_batch_size, make_batch, seed=train.seed, rank=rt.rank,
                              world_size=rt.world)

    def loss_fn(m, batch) -> dict:
        logits = m(batch["idx"], attention_mask=batch["mask"])  # (B, T, N)
        y = batch["labels"]
        return {"loss": F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX),
                "tokens": batch["mask"].sum()}

    def weight_fn(batch):
        return (batch["labels"] != IGNORE_INDEX).sum()

    scores: dict[str, dict] = {}

    def score(m, name: str) -> dict:
        gold = splits[name]
        pred = tag_sentences(m, tok, gold, labels, T, 2 * train.micro_batch_size, rt.device)
        scores[name] = entity_scores([s.tags for s in gold], pred)
        return scores[name]

    def evaluate(m) -> dict:
        if splits["val"] is None:
            return {}
        with _inference(run, m):
            s = score(m, "val")
        return {"val_f1": s["f1"], "val_precision": s["precision"], "val_recall": s["recall"]}

    spec = head_spec(net.cfg, "token", len(labels))
    meta = {"format": "llmkit-tagger", "labels": labels, "head": spec, "base_model": base_reference(model),
            "method": method, "max_seq_len": T}
    if rt.main:
        print(f"tags ({len(labels)}): {', '.join(labels)}; sentences: train {len(sentences):,}"
              + "".join(f", {k} {len(v):,}" for k, v in splits.items() if v) + f"; {n_cut} cut to {T} tokens",
              flush=True)
    result = _fit_head(run, net, spec, method, lora, train_last, quantize, batches, loss_fn, evaluate, meta)
    if not rt.main:
        return result
    if splits["test"] is not None:
        with _inference(run, net):
            s = score(net, "test")
        result.update(test_f1=s["f1"], test_precision=s["precision"], test_recall=s["recall"])
        print(f"test: entity F1 {100 * s['f1']:.1f} (precision {100 * s['precision']:.1f}, "
              f"recall {100 * s['recall']:.1f}; {s['n_true']} entities); the all-O baseline scores 0", flush=True)
    atomic_write_json(Path(out) / "metrics.json", {"labels": labels, "step": result["step"], **scores})
    return run.finish(result, done=f"step {result['step']}; metrics in {Path(out) / 'metrics.json'}",
                      next_steps=['llmkit ner predict {final} "Sam moved to Berlin in May"',
                                  'llmkit pipeline ner {final} "Sam moved to Berlin" --aggregation-strategy simple'])


def ner_predict(model: str, texts: Optional[list[str]] = None, file: Optional[str] = None, batch_size: int = 32,
                device: str = "cpu") -> dict:
    """Tag the words of texts (split at whitespace) or of a CoNLL file (scored against its tags).

    Args:
        model: a tagger (a checkpoint or final/ of `llmkit ner train`, or its --out).
        texts: texts to tag.
        file: a CoNLL/BIO file instead: its words are tagged and its tags scored (entity F1).
        batch_size: sentences per forward pass.
        device: cpu, cuda, cuda:N or mps.
    """
    from llmkit.data.conll import Sentence, read_conll
    from llmkit.evaluate.metrics import entity_scores

    if (texts is None) == (file is None):
        raise LLMKitError("give texts to tag, or --file with a CoNLL file (not both)")
    loaded = _loaded(model, "token", device)
    meta = loaded.classifier
    T = int(meta.get("max_seq_len") or loaded.model.cfg.block_size)
    if file is not None:
        sentences = read_conll(file)
    else:
        sentences = [Sentence(t.split(), ["O"] * len(t.split()), f"text {i + 1}") for i, t in enumerate(texts)]
        if any(not s.words for s in sentences):
            raise LLMKitError("empty text: give non-empty texts to tag")
    pred = tag_sentences(loaded.model, loaded.tokenizer, sentences, meta["labels"], T, batch_size, device)
    if file is None:
        for s, tags in zip(sentences, pred):
            print(" ".join(w if t == "O" else f"[{w}]{t}" for w, t in zip(s.words, tags)))
        return {"tags": pred}
    s = entity_scores([x.tags for x in sentences], pred)
    print(f"{file}: entity F1 {100 * s['f1']:.1f} (precision {100 * s['precision']:.1f}, recall "
          f"{100 * s['recall']:.1f}) over {s['n_true']} entities")
    for t, v in s["per_type"].items():
        print(f"  {t:<16} F1 {100 * v['f1']:5.1f}  support {v['support']}")
    return {"tags": pred, "scores": s}


# --- extractive question answering ------------------------------------------------------------------
def first_sentence(context: str) -> str:
    """The baseline answer: the context's first sentence."""
    m = re.search(r"(?<=[.!?])\s", context)
    return context[:m.start()] if m else context


@torch.no_grad()
def answer_questions(model, tokenizer, examples, max_len: int, stride: int, batch_size: int = 32, device="cpu",
                     max_answer_len: int = 30):
    """The best span of each example over its windows (data/squad.py's best_spans), with a
    progress bar over the windows (SQuAD dev is ~11k questions)."""
    from llmkit.data.squad import best_spans, features
    from llmkit.progress import progress

    feats = features(examples, tokenizer, max_len, stride)
    starts: list = [None] * len(feats)
    ends: list = [None] * len(feats)
    order = sorted(range(len(feats)), key=lambda i: len(feats[i].ids))
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    bar = progress(total=len(feats), desc="answering", unit="window", enabled=len(feats) > 4 * batch_size)
    for s in range(0, len(order), batch_size):
        chunk = order[s:s + batch_size]
        bar.update(len(chunk))
        idx, mask = collate([feats[i].ids for i in chunk], pad)
        types = pad_types([feats[i].type_ids for i in chunk]) if model.cfg.type_vocab_size > 1 else None
        logits = model(idx.to(device), attention_mask=mask.to(device),
                       token_type_ids=types.to(device) if types is not None else None).float().cpu()  # (B, T, 2)
        for b, i in enumerate(chunk):
            n = len(feats[i].ids)
            starts[i], ends[i] = logits[b, :n, 0].numpy(), logits[b, :n, 1].numpy()
    bar.close()
    return best_spans(starts, ends, feats, examples, max_answer_len=max_answer_len)


def _qa_scores(spans, examples) -> dict:
    from llmkit.evaluate.metrics import squad_scores

    refs = [ex.answers for ex in examples]
    model = squad_scores([s.text for s in spans], refs)
    base = squad_scores([first_sentence(ex.context) for ex in examples], refs)
    return {"exact_match": model["exact_match"], "f1": model["f1"], "baseline_first_sentence": base,
            "questions": len(examples)}


def qa_train(
    model: str,
    data: str,
    val_data: Optional[str] = None,
    out: str = "out/qa",
    method: str = "full",
    lora: LoRAConfig = LoRAConfig(),
    train_last: int = 2,
    quantize: Optional[str] = None,
    max_seq_len: int = 384,
    stride: int = 128,
    val_questions: int = 1000,
    train: TrainConfig = TrainConfig(max_steps=1000, micro_batch_size=16, lr=5e-5, eval_every=250,
                                     save_every=250, log_every=10),
) -> dict:
    """Finetune an encoder for extractive question answering on SQuAD v1.1 JSON.

    Args:
        model: the encoder: an llmkit checkpoint, a Hugging Face dir (BERT, RoBERTa, ...) or hub id.
        data: training questions, SQuAD v1.1 JSON ({"data": [{"paragraphs": [{"context", "qas"}]}]}).
        val_data: validation questions (e.g. SQuAD dev-v1.1.json), scored by exact match and F1.
        out: output directory (checkpoints, metrics.csv, metrics.json, final/).
        method: full, lora or freeze (the last --train-last blocks); the head always trains.
        lora: LoRA settings for --method lora.
        train_last: blocks that train with --method freeze.
        quantize: with --method lora, hold the frozen base in int8 or nf4 (QLoRA).
        max_seq_len: tokens per window (question + context part + specials).
        stride: tokens two windows of a long context share.
        val_questions: score the first N validation questions during training (0: all); the
            final score uses all of them.
        train: training loop settings (--train.max_steps, --train.lr, ...).
    """
    from llmkit.checkpoint import atomic_write_json
    from llmkit.data.batches import ShuffledBatches
    from llmkit.data.squad import features, read_squad

    _check(method, quantize, lora, train)
    examples = read_squad(data)
    val = read_squad(val_data) if val_data else None
    run = Run(model, out, train)
    net = run.load()
    if net.cfg.causal:
        raise LLMKitError(f"{model}: a causal (decoder) model; extractive QA reads the passage both ways: use an encoder")
    tok, rt = run.tokenizer, run.rt
    T = min(max_seq_len, net.cfg.block_size)
    if not 0 <= stride < T // 2:
        raise LLMKitError(f"stride must be in [0, {T // 2}) for windows of {T} tokens, got {stride}")
    feats = features(examples, tok, T, stride)
    pad, with_types = run.pad_id, net.cfg.type_vocab_size > 1

    def make_batch(indices: list[int]) -> dict:
        idx, mask = collate([feats[i].ids for i in indices], pad)
        b = {"idx": idx, "mask": mask, "start": torch.tensor([feats[i].start for i in indices]),
             "end": torch.tensor([feats[i].end for i in indices])}
        if with_types:
            b["types"] = pad_types([feats[i].type_ids for i in indices])
        return b

    batches = ShuffledBatches(len(feats), train.micro_batch_size, make_batch, seed=train.seed, rank=rt.rank,
                              world_size=rt.world)

    def loss_fn(m, batch) -> dict:
        logits = m(batch["idx"], attention_mask=batch["mask"], token_type_ids=batch.get("types")).float()
        logits = logits.masked_fill(~batch["mask"].bool()[..., None], float("-inf"))  # never a padding token
        loss = (F.cross_entropy(logits[..., 0], batch["start"]) + F.cross_entropy(logits[..., 1], batch["end"])) / 2
        return {"loss": loss, "tokens": batch["mask"].sum()}  # BERT sec. 4.2: the mean of the two

    scores: dict[str, dict] = {}
    some = val[:val_questions] if val and val_questions else val

    def evaluate(m) -> dict:
        if not some:
            return {}
        with _inference(run, m):
            s = _qa_scores(answer_questions(m, tok, some, T, stride, 2 * train.micro_batch_size, rt.device), some)
        return {"val_exact_match": s["exact_match"], "val_f1": s["f1"]}

    spec = head_spec(net.cfg, "span", 2)
    meta = {"format": "llmkit-qa", "labels": ["start", "end"], "head": spec, "base_model": base_reference(model),
            "method": method, "max_seq_len": T, "stride": stride}
    if rt.main:
        print(f"questions: train {len(examples):,} ({len(feats):,} windows of {T} tokens, stride {stride})"
              + (f", validation {len(val):,}" if val else ""), flush=True)
    result = _fit_head(run, net, spec, method, lora, train_last, quantize, batches, loss_fn, evaluate, meta)
    if not rt.main:
        return result
    if val:
        with _inference(run, net):
            s = _qa_scores(answer_questions(net, tok, val, T, stride, 2 * train.micro_batch_size, rt.device), val)
        scores["val"] = s
        result.update(val_exact_match=s["exact_match"], val_f1=s["f1"])
        b = s["baseline_first_sentence"]
        print(f"validation ({len(val):,} questions): exact match {s['exact_match']:.1f}, F1 {s['f1']:.1f} "
              f"(first-sentence baseline: {b['exact_match']:.1f} / {b['f1']:.1f})", flush=True)
    atomic_write_json(Path(out) / "metrics.json", {"step": result["step"], **scores})
    return run.finish(result, done=f"step {result['step']}; metrics in {Path(out) / 'metrics.json'}",
                      next_steps=['llmkit qa predict {final} --question "Who won?" --context "The Broncos won."',
                                  "llmkit qa predict {final} --file dev-v1.1.json"])


def qa_predict(model: str, question: Optional[str] = None, context: Optional[str] = None,
               file: Optional[str] = None, out: Optional[str] = None, batch_size: int = 32,
               device: str = "cpu") -> dict:
    """Answer a question from a passage, or every question of a SQuAD file (and score them).

    Args:
        model: a question-answering model (a checkpoint or final/ of `llmkit qa train`, or its --out).
        question: the question (with --context).
        context: the passage holding the answer.
        file: a SQuAD v1.1 JSON file instead: every question answered, exact match and F1 printed.
        out: with --file, write {question id: answer} here (the official evaluation script's input).
        batch_size: windows per forward pass.
        device: cpu, cuda, cuda:N or mps.
    """
    from llmkit.data.squad import QAExample, read_squad

    if (file is None) == (question is None):
        raise LLMKitError("give --question with --context, or --file with SQuAD questions (not both)")
    if question is not None and not (context or "").strip():
        raise LLMKitError("--question needs the --context passage that holds its answer")
    loaded = _loaded(model, "span", device)
    meta = loaded.classifier
    T, stride = int(meta.get("max_seq_len") or 384), int(meta.get("stride") or 128)
    if file is None:
        examples = [QAExample("q", question, context, (), ())]
    else:
        examples = read_squad(file)
    spans = answer_questions(loaded.model, loaded.tokenizer, examples, T, stride, batch_size, device)
    if file is None:
        print(spans[0].text)
        return {"answer": spans[0].text, "score": spans[0].score, "start": spans[0].start, "end": spans[0].end}
    s = _qa_scores(spans, examples)
    b = s["baseline_first_sentence"]
    print(f"{file}: {len(examples):,} questions: exact match {s['exact_match']:.1f}, F1 {s['f1']:.1f} "
          f"(first-sentence baseline: {b['exact_match']:.1f} / {b['f1']:.1f})")
    if out is not None:
        from llmkit.checkpoint import atomic_write_text

        atomic_write_text(out, json.dumps({ex.id: sp.text for ex, sp in zip(examples, spans)}, ensure_ascii=False))
        print(f"wrote {len(spans):,} answers to {out}")
    return {"scores": s, "answers": [sp.text for sp in spans]}
