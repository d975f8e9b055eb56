"""Text classification: a pretrained model with its output layer replaced by a class head,
finetuned on labelled texts or text pairs (`llmkit classify train`), and prediction with the
result (`llmkit classify predict`).

The head (heads.py) reads a causal model's last real token, or an encoder's [CLS] token (BERT:
through the pooler) or mean over tokens, in place of `lm_head`, so the model is still one
`Transformer` and the training loop, LoRA, frozen layers and checkpoints work unchanged.
Sentence pairs (`--text-pair-col`: NLI's premise and hypothesis) are encoded as the model's
tokenizer pairs them ([CLS] A [SEP] B [SEP] with token types for BERT). The recipe is its
batches (texts cut to max_seq_len, right-padded) and its loss (cross-entropy over the
classes), on the scaffold.

Which weights train is the finetuning method (`full`, `lora`, `freeze` = last N blocks); the
head always trains. Every checkpoint holds a `classifier.json` (labels, columns, base model,
method) next to its weights, so any of them is a classifier `classify predict` can load.
"""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from llmkit.checkpoint import CLASSIFIER
from llmkit.data.tables import LabeledTexts, balanced, read_labeled, read_table, stratified_split
from llmkit.errors import LLMKitError
from llmkit.evaluate.metrics import classification_report, format_report, markdown_confusion
from llmkit.heads import attach_head, class_logits, head_spec
from llmkit.lora import LoRAConfig
from llmkit.recipes.scaffold import Run, base_reference
from llmkit.training.loop import TrainConfig


# --- model -----------------------------------------------------------------------------------------
def collate(token_lists: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, T) ids and their (B, T) mask, 1 at real tokens: an encoder's attention
    skips the padding, a causal model's head reads each row's last real token."""
    T = max(len(t) for t in token_lists)
    idx = torch.full((len(token_lists), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_lists), T), dtype=torch.long)
    for b, t in enumerate(token_lists):
        idx[b, :len(t)] = torch.tensor(t, dtype=torch.long)
        mask[b, :len(t)] = 1
    return idx, mask


def pad_types(type_lists: Optional[list[list[int]]]) -> Optional[torch.Tensor]:
    """Right-padded (B, T) token types of sentence pairs (None for single texts)."""
    if type_lists is None:
        return None
    return collate(type_lists, 0)[0]


def encode_texts(tok, texts: list[str], pairs: Optional[list[str]], T: int,
                 causal: bool) -> tuple[list[list[int]], Optional[list[list[int]]]]:
    """Token ids (and, for pairs, token types) of each text, at most T tokens: a decoder's text
    cut at T; an encoder's through its tokenizer's template ([CLS] ... [SEP]), the (second)
    text truncated so the closing [SEP] stays."""
    if causal and pairs is None:
        return [t[:T] for t in tok.encode_batch(texts)], None
    encoded = [tok.encode_offsets(a, pairs[i] if pairs is not None else None, max_length=T)
               for i, a in enumerate(texts)]
    return [e.ids for e in encoded], ([e.type_ids for e in encoded] if pairs is not None else None)


@torch.no_grad()
def predict_proba(model: nn.Module, token_lists: list[list[int]], n_classes: int, pad_id: int,
                  batch_size: int = 32, device: torch.device | str = "cpu",
                  type_lists: Optional[list[list[int]]] = None) -> torch.Tensor:
    """(n, N) class probabilities, batched by length (little padding), in input order."""
    order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
    out = torch.empty(len(token_lists), n_classes)
    for s in range(0, len(order), batch_size):
        chunk = order[s:s + batch_size]
        idx, mask = collate([token_lists[i] for i in chunk], pad_id)
        types = pad_types([type_lists[i] for i in chunk] if type_lists is not None else None)
        out[chunk] = class_logits(model, idx.to(device), mask.to(device),
                                  types.to(device) if types is not None else None).softmax(-1).cpu()
    return out


# --- training --------------------------------------------------------------------------------------
def classify_train(
    model: str,
    data: str,
    text_col: str = "text",
    label_col: str = "label",
    text_pair_col: Optional[str] = None,
    pool: Optional[str] = None,
    out: str = "out/classify",
    method: str = "full",
    lora: LoRAConfig = LoRAConfig(),
    train_last: int = 2,
    quantize: Optional[str] = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    val_data: Optional[str] = None,
    test_data: Optional[str] = None,
    balance: bool = False,
    max_seq_len: int = 256,
    train: TrainConfig = TrainConfig(max_steps=300, micro_batch_size=8, lr=1e-4, warmup_steps=20,
                                     eval_every=100, save_every=100, log_every=10),
) -> dict:
    """Finetune a model as a text classifier (its output layer replaced by a class head).

    Args:
        model: the base model: an llmkit checkpoint dir, a Hugging Face model dir or a hub repo id.
        data: a CSV or TSV file with a header row (the delimiter is taken from the extension,
            else sniffed), or a JSONL file; texts in --text-col, labels (any strings) in --label-col.
        text_col: the column holding the texts.
        label_col: the column holding the labels.
        text_pair_col: for sentence-pair tasks (NLI: premise, hypothesis), the column holding
            each text's second text.
        pool: what an encoder's head reads: first ([CLS], the default) or mean (over tokens);
            a decoder's reads its last token.
        out: output directory (checkpoints, metrics.csv, metrics.json, confusion_matrix.md, final/).
        method: which weights train besides the head: full (all), lora (adapters) or freeze
            (the last --train-last blocks and the final norm).
        lora: LoRA settings for --method lora (--lora.r, --lora.alpha, --lora.targets, ...).
        train_last: blocks that train with --method freeze.
        quantize: with --method lora, hold the frozen base in int8 or nf4 (QLoRA).
        val_fraction: share of --data held out for validation (unless --val-data is given).
        test_fraction: share of --data held out for the final test (unless --test-data is given).
        val_data: a separate validation file (same columns).
        test_data: a separate test file (same columns).
        balance: downsample --data to the size of its smallest class before splitting (so
            train, validation and test are balanced; separate --val-data/--test-data are kept as given).
        max_seq_len: texts are cut to this many tokens (at most the model's context).
        train: training loop settings (--train.max_steps, --train.lr, ...).
    """
    from llmkit.checkpoint import atomic_write_json, atomic_write_text
    from llmkit.data.batches import ShuffledBatches
    from llmkit.recipes.tuning import check_method, setup_method

    train.validate(complete=False)  # settings first: nothing is read before they are known good
    check_method(method, quantize)
    # Everything about the data is checked before the model is loaded.
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise LLMKitError(f"{name} must be in [0, 1), got {f}")
    if max_seq_len < 1:
        raise LLMKitError(f"max_seq_len must be >= 1, got {max_seq_len}")
    if method == "lora" and "lm_head" in lora.resolved_targets():
        raise LLMKitError("the classifier head always trains in full: leave lm_head out of --lora.targets")
    if pool not in (None, "first", "mean", "last"):
        raise LLMKitError(f"unknown pooling '{pool}' (choose from first, mean, last)")
    full = read_labeled(data, text_col, label_col, text_pair_col)
    rows = list(range(len(full.texts)))
    if balance:
        rows = balanced(rows, full.labels, train.seed)
    fractions = (0.0 if val_data else val_fraction, 0.0 if test_data else test_fraction)
    if sum(fractions) >= 1.0:
        raise LLMKitError(f"val_fraction + test_fraction must be < 1, got {sum(fractions)}")
    val_idx, test_idx, train_idx = stratified_split([full.labels[i] for i in rows], fractions, train.seed)
    val_idx, test_idx, train_idx = ([rows[i] for i in part] for part in (val_idx, test_idx, train_idx))
    labels = sorted(set(full.labels[i] for i in train_idx))
    if len(labels) < 2:
        raise LLMKitError(f"{data}: only one class ({labels[0]!r}) in the training data; a classifier needs two or more")
    splits = {"train": (full, train_idx)}
    for name, path, idx in (("val", val_data, val_idx), ("test", test_data, test_idx)):
        if path:
            other = read_labeled(path, text_col, label_col, text_pair_col)
            splits[name] = (other, list(range(len(other.texts))))
        elif idx:
            splits[name] = (full, idx)
    for name in ("val", "test"):
        if name in splits:
            src, idx = splits[name]
            unknown = sorted(set(src.labels[i] for i in idx) - set(labels))
            if unknown:
                raise LLMKitError(f"{src.source}: {name} labels {unknown[:5]} do not occur in the training data "
                                  f"(classes: {', '.join(labels[:10])})")

    run = Run(model, out, train)
    net = run.load()
    rt, tok = run.rt, run.tokenizer
    T = min(max_seq_len, net.cfg.block_size)
    if T < max_seq_len and rt.main:
        print(f"max_seq_len {max_seq_len} is past the model's context: texts are cut to {T} tokens", flush=True)
    pad_id = run.pad_id
    label_id = {y: k for k, y in enumerate(labels)}

    def encode(src: LabeledTexts, idx: list[int]) -> tuple[list[list[int]], list[int], Optional[list[list[int]]]]:
        pairs = [src.pairs[i] for i in idx] if src.pairs is not None else None
        ids, types = encode_texts(tok, [src.texts[i] for i in idx], pairs, T, net.cfg.causal)
        for i, t in zip(idx, ids):
            if not t:
                raise LLMKitError(f"{src.source}: text {src.texts[i][:40]!r} encodes to no tokens")
        return ids, [label_id[src.labels[i]] for i in idx], types

    encoded = {name: encode(src, idx) for name, (src, idx) in splits.items()}
    train_ids, train_y, train_types = encoded["train"]

    torch.manual_seed(train.seed)  # the same head on every process and every (re)start
    try:
        spec = head_spec(net.cfg, "sequence", len(labels), pool)
    except LLMKitError as e:
        raise LLMKitError(f"--pool {pool}: {e}") from None
    attach_head(net, spec)
    summary_line = setup_method(net, method, lora, train_last, quantize)
    for p in net.lm_head.parameters():  # the new head trains whatever the method
        p.requires_grad_(True)
    n_train = sum(p.numel() for p in net.parameters() if p.requires_grad)
    summary_line += f"; with the {len(labels)}-class head: {n_train:,} trainable"

    def make_batch(indices: list[int]) -> dict:
        idx, mask = collate([train_ids[i] for i in indices], pad_id)
        types = pad_types([train_types[i] for i in indices] if train_types is not None else None)
        return {"idx": idx, "mask": mask, **({"types": types} if types is not None else {}), "label": torch.tensor([train_y[i] for i in indices]),
                "tokens": sum(len(train_ids[i]) for i in indices)}

    batches = ShuffledBatches(len(train_ids), train.micro_batch_size, make_batch, seed=train.seed,
                              rank=rt.rank, world_size=rt.world)

    def loss_fn(m, batch) -> dict:
        logits = class_logits(m, batch["idx"], batch["mask"], batch.get("types"))
        loss = F.cross_entropy(logits, batch["label"])
        acc = (logits.argmax(-1) == batch["label"]).float().mean()
        return {"loss": loss, "tokens": batch["tokens"], "train_acc": acc}

    out_dir = Path(out)
    reports: dict[str, dict] = {}

    def split_report(m, name: str) -> tuple[dict, float]:
        ids, y, types = encoded[name]
        probs = predict_proba(m, ids, len(labels), pad_id, 2 * train.micro_batch_size, rt.device, types)
        loss = float(F.nll_loss(probs.clamp_min(1e-12).log(), torch.tensor(y)))
        return classification_report(y, probs.argmax(-1).tolist(), labels), loss

    def evaluate(m) -> dict:
        if "val" not in encoded:
            return {}
        report, loss = split_report(m, "val")
        reports["val"] = {**report, "loss": loss}
        return {"val_loss": loss, "val_acc": report["accuracy"], "val_macro_f1": report["macro_f1"]}

    meta = {"format": "llmkit-classifier", "labels": labels, "text_col": text_col, "label_col": label_col,
            "text_pair_col": text_pair_col, "head": spec,
            "base_model": base_reference(model), "method": method, "max_seq_len": T,
            "pad_id": pad_id, "train_last": train_last if method == "freeze" else None}

    def write_metrics(step: Optional[int] = None) -> None:
        atomic_write_json(out_dir / "metrics.json", {
            "labels": labels, "method": method, "step": step,
            "examples": {name: len(v[0]) for name, v in encoded.items()},
            "balanced": balance, **{name: reports[name] for name in ("val", "test") if name in reports}})
        md = "".join(markdown_confusion(reports[n], f"{n} (step {step})") + "\n" for n in ("val", "test") if n in reports)
        if md:
            atomic_write_text(out_dir / "confusion_matrix.md", f"# Classifier metrics: {out_dir}\n\n" + md)

    def on_eval(step: int, m, metrics: dict) -> None:
        if "val" in reports:
            from tqdm.auto import tqdm

            tqdm.write(format_report(reports["val"], f"validation, step {step}"))  # above the progress bar
            write_metrics(step)

    if rt.main:
        counts = {name: len(v[0]) for name, v in encoded.items()}
        print(f"classes ({len(labels)}): {', '.join(labels)}; texts: "
              + ", ".join(f"{k} {v:,}" for k, v in counts.items()) + f"; max {T} tokens", flush=True)
        print(summary_line, flush=True)
    # Every checkpoint carries classifier.json: any of them is a classifier `classify predict` loads.
    result = run.fit(train, batches, loss_fn, lora=lora if method == "lora" else None,
                     quantize=None if quantize == "none" else quantize, extra_files={CLASSIFIER: meta},
                     evaluate=evaluate, on_eval=on_eval)
    if not rt.main:
        return result
    if "test" in encoded:
        # The unwrapped model, on this process alone (a DDP forward would wait for the others).
        net.eval()
        amp = run.trainer.amp_dtype
        with torch.no_grad(), (torch.autocast(rt.device.type, dtype=amp) if amp else contextlib.nullcontext()):
            report, loss = split_report(net, "test")
        reports["test"] = {**report, "loss": loss}
        print(format_report(report, "test"), flush=True)
        result.update(test_acc=report["accuracy"], test_macro_f1=report["macro_f1"])
    write_metrics(result["step"])
    return run.finish(result, done=f"step {result['step']}; metrics in {out_dir / 'metrics.json'}",
                      next_steps=['llmkit classify predict {final} "a text to label"',
                                  "llmkit classify predict {final} --file TEXTS.csv --out predictions.csv"])


# --- prediction ------------------------------------------------------------------------------------
def _classifier_dir(spec: str | Path) -> Path:
    """The checkpoint directory of a classifier: the one given, or its final/ (a run's --out)."""
    d = Path(spec).expanduser()
    if not d.exists():
        raise LLMKitError(f"{d}: no such classifier directory")
    if not (d / CLASSIFIER).exists() and (d / "final" / CLASSIFIER).exists():
        d = d / "final"
    if not (d / CLASSIFIER).exists():
        raise LLMKitError(f"{d}: not a classifier (no {CLASSIFIER}); train one with `llmkit classify train`")
    return d


def load_classifier(spec: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, tokenizer, classifier.json) of a classifier checkpoint directory
    (through the one loader, which attaches the class head; a LoRA classifier comes merged)."""
    from llmkit.checkpoint import load_model

    loaded = load_model(_classifier_dir(spec), device=device)
    net = loaded.model
    for p in net.parameters():
        p.requires_grad_(False)
    return net, loaded.tokenizer, loaded.classifier


def classify_predict(
    model: str,
    texts: Optional[list[str]] = None,
    file: Optional[str] = None,
    text_col: Optional[str] = None,
    out: Optional[str] = None,
    batch_size: int = 32,
    device: str = "cpu",
) -> list[dict]:
    """Label texts with a trained classifier.

    Args:
        model: a classifier directory (a checkpoint or final/ of `llmkit classify train`, or its --out).
        texts: texts to classify (given on the command line).
        file: a CSV or TSV file of texts to classify instead (header row required).
        text_col: the column of --file holding the texts (default: the training data's).
        out: write the predictions to this CSV file (the input columns plus prediction and
            probability) instead of printing them.
        batch_size: texts per forward pass.
        device: cpu, cuda, cuda:N or mps.
    """
    if (texts is None) == (file is None):
        raise LLMKitError("give texts to classify, or --file with a CSV/TSV of texts (not both)")
    net, tok, meta = load_classifier(model, device)
    labels, T = meta["labels"], int(meta.get("max_seq_len") or net.cfg.block_size)
    pad_id = int(meta.get("pad_id") or 0)
    rows: list[dict] = []
    true_labels: Optional[list[str]] = None
    pairs: Optional[list[str]] = None
    if file is not None:
        col = text_col or meta.get("text_col") or "text"
        label_col = meta.get("label_col")
        data = read_labeled(file, col, None, meta.get("text_pair_col"))
        texts, pairs = data.texts, data.pairs
        # Keep the input's columns in the output; score against its labels when it has them.
        header, table = read_table(file)
        rows = [dict(zip(header, r)) for _, r in table]
        if label_col and label_col in header:
            true_labels = [r[label_col].strip() for r in rows]
    else:
        texts = list(texts)
        if not texts or any(not t.strip() for t in texts):
            raise LLMKitError("empty text: give non-empty texts to classify")
        if meta.get("text_pair_col"):
            raise LLMKitError(f"this classifier reads text pairs ('{meta['text_col']}', '{meta['text_pair_col']}'): "
                              "give them with --file")
        rows = [{"text": t} for t in texts]
    ids, types = encode_texts(tok, texts, pairs, T, net.cfg.causal)
    with torch.no_grad():
        probs = predict_proba(net, ids, len(labels), pad_id, batch_size, device, types)
    conf, pred = probs.max(-1)
    results = [{"text": t, "label": labels[int(k)], "probability": float(c),
                "probabilities": {y: float(p) for y, p in zip(labels, probs[i].tolist())}}
               for i, (t, k, c) in enumerate(zip(texts, pred, conf))]
    if out is not None:
        from llmkit.checkpoint import atomic_write_text

        buf = io.StringIO()
        fields = list(rows[0]) + [c for c in ("prediction", "probability") if c not in rows[0]]
        w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n",
                           delimiter="\t" if Path(out).suffix.lower() in (".tsv", ".tab") else ",")
        w.writeheader()
        for row, r in zip(rows, results):
            w.writerow({**row, "prediction": r["label"], "probability": f"{r['probability']:.6f}"})
        atomic_write_text(out, buf.getvalue())
        print(f"wrote {len(results)} predictions to {out}")
    else:
        for r in results:
            text = r["text"].replace("\n", " ")
            print(f"{r['label']}\t{r['probability']:.4f}\t{text[:100] + ('...' if len(text) > 100 else '')}")
    if true_labels is not None:
        known = {y: k for k, y in enumerate(labels)}
        pairs = [(known[t], int(p)) for t, p in zip(true_labels, pred) if t in known]
        if pairs:
            report = classification_report([a for a, _ in pairs], [b for _, b in pairs], labels)
            print(format_report(report, f"against the '{meta.get('label_col')}' column of {file}"))
    return results
