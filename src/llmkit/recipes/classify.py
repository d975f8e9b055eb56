"""Text classification: a pretrained language model with its output layer replaced by a
class head, finetuned on labelled texts (`llmkit classify train`), and prediction with the
result (`llmkit classify predict`).

The head is `nn.Linear(d_model, N)` on the final hidden state of each text's last token: in a
causal model that is the only position that has seen the whole text (Radford et al. 2018,
"Improving Language Understanding by Generative Pre-training", sec. 3.3; Raschka, "Build a
Large Language Model (From Scratch)", ch. 6). It replaces `lm_head` in place (untied from the
embeddings), so the model is still one `Transformer` and the training loop, LoRA, frozen
layers and checkpoints work unchanged:

    tokens -> embed -> blocks -> norm -> (B, T, d) --[row b, position last[b]]--> head -> (B, N)

Which weights train is the finetuning method (`full`, `lora`, `freeze` = last N blocks); the
head always trains. Every checkpoint holds a `classifier.json` (labels, columns, base model,
method) next to its weights, so any of them is a classifier `classify predict` can load.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmkit.errors import LLMKitError
from llmkit.lora import LoRAConfig
from llmkit.training.loop import TrainConfig

CLASSIFIER_FILE = "classifier.json"


# --- data ------------------------------------------------------------------------------------------
@dataclass
class LabeledTexts:
    texts: list[str]
    labels: list[str]
    source: str


def _dialect(path: Path, sample: str) -> tuple[str, int]:
    """(delimiter, quoting): by extension, else sniffed from the first lines.

    TSV is read without quote handling (the IANA text/tab-separated-values convention: fields
    hold no tabs or newlines, and a `"` is just a character, as in the SMS Spam Collection,
    whose messages may start with one); CSV uses standard RFC 4180 quoting."""
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".tab"):
        return "\t", csv.QUOTE_NONE
    if suffix == ".csv":
        return ",", csv.QUOTE_MINIMAL
    try:
        delim = csv.Sniffer().sniff(sample, delimiters=",\t;|").delimiter
    except csv.Error:
        first = sample.splitlines()[0] if sample else ""
        delim = "\t" if "\t" in first else ","
    return delim, csv.QUOTE_NONE if delim == "\t" else csv.QUOTE_MINIMAL


def _column(header: list[str], name: str, what: str, path: Path) -> int:
    """Index of column `name` (exact match, else a unique case-insensitive one)."""
    if name in header:
        return header.index(name)
    folded = [i for i, h in enumerate(header) if h.strip().lower() == name.strip().lower()]
    if len(folded) == 1:
        return folded[0]
    found = ", ".join(repr(h) for h in header)
    raise LLMKitError(f"{path}: no {what} column '{name}' (columns found: {found}); choose one with --{what}-col")


def read_table(path: str | Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line number, fields), ...]) of a CSV or TSV file with a header row."""
    p = Path(path)
    if not p.exists():
        raise LLMKitError(f"{p}: no such file")
    if p.is_dir():
        raise LLMKitError(f"{p}: is a directory; give a CSV or TSV file")
    try:
        raw = p.read_text(encoding="utf-8-sig")  # -sig: drop the BOM spreadsheet exports add
    except UnicodeDecodeError as e:
        raise LLMKitError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not raw.strip():
        raise LLMKitError(f"{p}: empty file (expected a header row and labelled rows)")
    delim, quoting = _dialect(p, raw[:65536])
    csv.field_size_limit(1 << 30)
    reader = csv.reader(io.StringIO(raw, newline=""), delimiter=delim, quoting=quoting)
    try:
        rows = [(reader.line_num, r) for r in reader if any(c.strip() for c in r)]  # skip blank lines
    except csv.Error as e:
        raise LLMKitError(f"{p}: not a valid {'TSV' if delim == chr(9) else 'CSV'} file ({e})") from None
    header = [h.strip() for h in rows[0][1]]
    if len(rows) == 1:
        raise LLMKitError(f"{p}: only a header row ({', '.join(header)}), no data")
    return header, rows[1:]


def read_labeled(path: str | Path, text_col: str = "text", label_col: Optional[str] = "label") -> LabeledTexts:
    """Texts (and labels, unless `label_col` is None) of a CSV or TSV file with a header row."""
    p = Path(path)
    header, rows = read_table(p)
    ti = _column(header, text_col, "text", p)
    li = _column(header, label_col, "label", p) if label_col is not None else None
    texts, labels, need = [], [], max(ti, li if li is not None else -1) + 1
    for n, r in rows:
        if len(r) < need:
            raise LLMKitError(f"{p}: line {n} has {len(r)} field(s), the header {len(header)}")
        text = r[ti]
        if not text.strip():
            raise LLMKitError(f"{p}: line {n}: empty text in column '{header[ti]}'")
        texts.append(text)
        if li is not None:
            label = r[li].strip()
            if not label:
                raise LLMKitError(f"{p}: line {n}: empty label in column '{header[li]}'")
            labels.append(label)
    return LabeledTexts(texts, labels, str(p))


def stratified_split(labels: list[str], fractions: tuple[float, ...], seed: int) -> list[list[int]]:
    """Indices split into len(fractions) + 1 parts (the last takes the rest), class by class so
    that each part keeps the class proportions (a rare class still shows up in val and test)."""
    by_class: dict[str, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    rng = np.random.default_rng([seed, 2])
    for y in sorted(by_class):
        idx = [by_class[y][j] for j in rng.permutation(len(by_class[y]))]
        start = 0
        for k, f in enumerate(fractions):
            take = int(round(len(idx) * f))
            parts[k] += idx[start:start + take]
            start += take
        parts[-1] += idx[start:]
    return [sorted(p) for p in parts]


def balanced(indices: list[int], labels: list[str], seed: int) -> list[int]:
    """Downsample every class to the size of the smallest (a seeded random choice)."""
    by_class: dict[str, list[int]] = {}
    for i in indices:
        by_class.setdefault(labels[i], []).append(i)
    n = min(len(v) for v in by_class.values())
    rng = np.random.default_rng([seed, 3])
    keep = []
    for y in sorted(by_class):
        v = by_class[y]
        keep += [v[j] for j in sorted(rng.choice(len(v), n, replace=False))]
    return sorted(keep)


# --- model -----------------------------------------------------------------------------------------
def attach_head(model: nn.Module, n_classes: int) -> nn.Module:
    """Replace the output layer by an `n_classes` head (in place; the head is freshly initialized).

    The config is updated to what the model now is: the head is no longer tied to the
    embeddings (so a checkpoint stores it), and a final logit softcap (Gemma 2), meant for
    vocabulary logits, no longer applies."""
    cfg = model.cfg
    device = model.embed.weight.device
    head = nn.Linear(cfg.n_embd, n_classes, device=device, dtype=torch.float32)
    if device.type != "meta":
        nn.init.normal_(head.weight, std=0.02)  # the model's own init (GPT-2), not kaiming
        nn.init.zeros_(head.bias)
    model.lm_head = head
    model.cfg = cfg.replace(tie_embeddings=False, final_softcap=None)
    return model


def class_logits(model: nn.Module, idx: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """(B, N) logits at each row's last real token. Through the model's forward (not
    `hidden_states`) so DDP's gradient hooks and torch.compile see the call; the head on every
    position costs T * d * N, nothing next to the blocks."""
    logits = model(idx)  # (B, T, N)
    return logits[torch.arange(idx.shape[0], device=idx.device), last].float()  # (B, N)


def collate(token_lists: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, T) ids and each row's last real index. Right padding never changes a
    causal model's states at the real positions, so no attention mask is needed."""
    T = max(len(t) for t in token_lists)
    idx = torch.full((len(token_lists), T), pad_id, dtype=torch.long)
    for b, t in enumerate(token_lists):
        idx[b, :len(t)] = torch.tensor(t, dtype=torch.long)
    last = torch.tensor([len(t) - 1 for t in token_lists], dtype=torch.long)
    return idx, last


@torch.no_grad()
def predict_proba(model: nn.Module, token_lists: list[list[int]], n_classes: int, pad_id: int,
                  batch_size: int = 32, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n, N) class probabilities, batched by length (little padding), in input order."""
    order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
    out = torch.empty(len(token_lists), n_classes)
    for s in range(0, len(order), batch_size):
        chunk = order[s:s + batch_size]
        idx, last = collate([token_lists[i] for i in chunk], pad_id)
        out[chunk] = class_logits(model, idx.to(device), last.to(device)).softmax(-1).cpu()
    return out


# --- metrics ---------------------------------------------------------------------------------------
def classification_report(y_true: list[int], y_pred: list[int], labels: list[str]) -> dict:
    """Accuracy, per-class precision / recall / F1 / support, macro F1 and the confusion matrix
    (rows: true class, columns: predicted), as in scikit-learn (0 where undefined)."""
    N = len(labels)
    cm = np.zeros((N, N), dtype=np.int64)
    for t, p in zip(y_true, y_pred):
        cm[t, p] += 1
    per = {}
    for k, name in enumerate(labels):
        tp = int(cm[k, k])
        pred, true = int(cm[:, k].sum()), int(cm[k, :].sum())
        precision = tp / pred if pred else 0.0
        recall = tp / true if true else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per[name] = {"precision": precision, "recall": recall, "f1": f1, "support": true}
    n = int(cm.sum())
    return {"n": n, "accuracy": float(np.trace(cm)) / n if n else 0.0,
            "macro_f1": float(np.mean([v["f1"] for v in per.values()])) if per else 0.0,
            "per_class": per, "labels": list(labels), "confusion_matrix": cm.tolist()}


def format_report(report: dict, title: str) -> str:
    """The report as a plain-text table (per-class rows, then the confusion matrix)."""
    labels = report["labels"]
    w = max(12, *(len(x) for x in labels))
    lines = [f"{title}: accuracy {report['accuracy']:.4f}, macro F1 {report['macro_f1']:.4f} ({report['n']} texts)",
             f"  {'class':<{w}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}"]
    for name in labels:
        r = report["per_class"][name]
        lines.append(f"  {name:<{w}} {r['precision']:>9.4f} {r['recall']:>9.4f} {r['f1']:>9.4f} {r['support']:>8}")
    cw = max(8, *(len(x) for x in labels))
    lines.append("  confusion (rows true, columns predicted):")
    lines.append(f"  {'':<{w}} " + " ".join(f"{x:>{cw}}" for x in labels))
    for name, row in zip(labels, report["confusion_matrix"]):
        lines.append(f"  {name:<{w}} " + " ".join(f"{v:>{cw}}" for v in row))
    return "\n".join(lines)


def markdown_confusion(report: dict, title: str) -> str:
    labels = report["labels"]
    esc = [x.replace("|", "\\|") for x in labels]
    lines = [f"### {title}", "",
             f"accuracy {report['accuracy']:.4f}, macro F1 {report['macro_f1']:.4f}, {report['n']} texts", "",
             "| true \\ predicted | " + " | ".join(esc) + " |", "|---|" + "---:|" * len(labels)]
    for name, row in zip(esc, report["confusion_matrix"]):
        lines.append(f"| **{name}** | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", "| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for name, e in zip(labels, esc):
        r = report["per_class"][name]
        lines.append(f"| {e} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | {r['support']} |")
    return "\n".join(lines) + "\n"


# --- training --------------------------------------------------------------------------------------
def classify_train(
    model: str,
    data: str,
    text_col: str = "text",
    label_col: str = "label",
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
            else sniffed); texts in --text-col, labels (any strings) in --label-col.
        text_col: the column holding the texts.
        label_col: the column holding the labels.
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
    from llmkit.data.pairs import ShuffledBatches
    from llmkit.recipes.pretrain import publish_final
    from llmkit.recipes.tuning import base_reference, check_method, finetune_saver, load_base, setup_method
    from llmkit.tokenizer import Tokenizer
    from llmkit.training.loop import Trainer, setup_runtime

    check_method(method, quantize)
    # Everything about the data is checked before the model is loaded.
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise LLMKitError(f"{name} must be in [0, 1), got {f}")
    if max_seq_len < 1:
        raise LLMKitError(f"max_seq_len must be >= 1, got {max_seq_len}")
    if method == "lora" and "lm_head" in lora.resolved_targets():
        raise LLMKitError("the classifier head always trains in full: leave lm_head out of --lora.targets")
    full = read_labeled(data, text_col, label_col)
    pool = list(range(len(full.texts)))
    if balance:
        pool = balanced(pool, full.labels, train.seed)
    fractions = (0.0 if val_data else val_fraction, 0.0 if test_data else test_fraction)
    if sum(fractions) >= 1.0:
        raise LLMKitError(f"val_fraction + test_fraction must be < 1, got {sum(fractions)}")
    val_idx, test_idx, train_idx = stratified_split([full.labels[i] for i in pool], fractions, train.seed)
    val_idx, test_idx, train_idx = ([pool[i] for i in part] for part in (val_idx, test_idx, train_idx))
    labels = sorted(set(full.labels[i] for i in train_idx))
    if len(labels) < 2:
        raise LLMKitError(f"{data}: only one class ({labels[0]!r}) in the training data; a classifier needs two or more")
    splits = {"train": (full, train_idx)}
    for name, path, idx in (("val", val_data, val_idx), ("test", test_data, test_idx)):
        if path:
            other = read_labeled(path, text_col, label_col)
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

    rt = setup_runtime(train)
    loaded = load_base(model)
    net = loaded.model
    tok = Tokenizer.from_dir(loaded.path)
    T = min(max_seq_len, net.cfg.block_size)
    if T < max_seq_len and rt.main:
        print(f"max_seq_len {max_seq_len} is past the model's context: texts are cut to {T} tokens", flush=True)
    pad_id = tok.pad_id if tok.pad_id is not None else (tok.eos_id if tok.eos_id is not None else 0)
    label_id = {y: k for k, y in enumerate(labels)}

    def encode(src: LabeledTexts, idx: list[int]) -> tuple[list[list[int]], list[int]]:
        ids = [t[:T] for t in tok.encode_batch([src.texts[i] for i in idx])]
        for i, t in zip(idx, ids):
            if not t:
                raise LLMKitError(f"{src.source}: text {src.texts[i][:40]!r} encodes to no tokens")
        return ids, [label_id[src.labels[i]] for i in idx]

    encoded = {name: encode(src, idx) for name, (src, idx) in splits.items()}
    train_ids, train_y = encoded["train"]

    torch.manual_seed(train.seed)  # the same head on every process and every (re)start
    attach_head(net, len(labels))
    summary_line = setup_method(net, method, lora, train_last, quantize)
    for p in net.lm_head.parameters():  # the new head trains whatever the method
        p.requires_grad_(True)
    n_train = sum(p.numel() for p in net.parameters() if p.requires_grad)
    summary_line += f"; with the {len(labels)}-class head: {n_train:,} trainable"

    def make_batch(indices: list[int]) -> dict:
        idx, last = collate([train_ids[i] for i in indices], pad_id)
        return {"idx": idx, "last": last, "label": torch.tensor([train_y[i] for i in indices]),
                "tokens": sum(len(train_ids[i]) for i in indices)}

    batches = ShuffledBatches(len(train_ids), train.micro_batch_size, make_batch, seed=train.seed,
                              rank=rt.rank, world_size=rt.world)

    def loss_fn(m, batch) -> dict:
        logits = class_logits(m, batch["idx"], batch["last"])
        loss = F.cross_entropy(logits, batch["label"])
        acc = (logits.argmax(-1) == batch["label"]).float().mean()
        return {"loss": loss, "tokens": batch["tokens"], "train_acc": acc}

    out_dir = Path(out)
    reports: dict[str, dict] = {}

    def split_report(m, name: str) -> tuple[dict, float]:
        ids, y = encoded[name]
        probs = predict_proba(m, ids, len(labels), pad_id, 2 * train.micro_batch_size, rt.device)
        loss = float(F.nll_loss(probs.clamp_min(1e-12).log(), torch.tensor(y)))
        return classification_report(y, probs.argmax(-1).tolist(), labels), loss

    def evaluate(m) -> dict:
        if "val" not in encoded:
            return {}
        report, loss = split_report(m, "val")
        reports["val"] = {**report, "loss": loss}
        return {"val_loss": loss, "val_acc": report["accuracy"], "val_macro_f1": report["macro_f1"]}

    meta = {"format": "llmkit-classifier", "labels": labels, "text_col": text_col, "label_col": label_col,
            "base_model": base_reference(model), "method": method, "max_seq_len": T,
            "pad_id": pad_id, "train_last": train_last if method == "freeze" else None}

    def write_metrics(step: Optional[int] = None) -> None:
        atomic_write_json(out_dir / "metrics.json", {
            "labels": labels, "method": method, "step": step,
            "examples": {name: len(ids) for name, (ids, _) in encoded.items()},
            "balanced": balance, **{name: reports[name] for name in ("val", "test") if name in reports}})
        md = "".join(markdown_confusion(reports[n], f"{n} (step {step})") + "\n" for n in ("val", "test") if n in reports)
        if md:
            atomic_write_text(out_dir / "confusion_matrix.md", f"# Classifier metrics: {out_dir}\n\n" + md)

    def on_eval(step: int, m, metrics: dict) -> None:
        if "val" in reports:
            from tqdm.auto import tqdm

            tqdm.write(format_report(reports["val"], f"validation, step {step}"))  # above the progress bar
            write_metrics(step)

    def extra(d: Path) -> None:
        atomic_write_json(d / CLASSIFIER_FILE, meta)

    save_fn = finetune_saver(net, method, base_reference(model), loaded.path, lora, quantize, extra=extra)
    if rt.main:
        counts = {name: len(ids) for name, (ids, _) in encoded.items()}
        print(f"classes ({len(labels)}): {', '.join(labels)}; texts: "
              + ", ".join(f"{k} {v:,}" for k, v in counts.items()) + f"; max {T} tokens", flush=True)
        print(summary_line, flush=True)
    trainer = Trainer(net, train, out, batches, loss_fn, evaluate=evaluate, on_eval=on_eval, save_fn=save_fn,
                      trainable_only=(method == "lora"), runtime=rt)
    result = trainer.fit()
    if rt.main:
        if "test" in encoded:
            # The unwrapped model, on this process alone (a DDP forward would wait for the others).
            net.eval()
            amp = trainer.amp_dtype
            with torch.no_grad(), (torch.autocast(rt.device.type, dtype=amp) if amp else contextlib.nullcontext()):
                report, loss = split_report(net, "test")
            reports["test"] = {**report, "loss": loss}
            print(format_report(report, "test"), flush=True)
            result.update(test_acc=report["accuracy"], test_macro_f1=report["macro_f1"])
        write_metrics(result["step"])
        final = out_dir / "final"
        publish_final(result["checkpoint"], final)
        result["final"] = str(final)
        summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in result.items()}
        atomic_write_json(out_dir / "summary.json", summary)
        print(f"done: step {result['step']}; classifier in {final}; metrics in {out_dir / 'metrics.json'}", flush=True)
    return result


# --- prediction ------------------------------------------------------------------------------------
def _classifier_dir(spec: str | Path) -> Path:
    """The checkpoint directory of a classifier: the one given, or its final/ (a run's --out)."""
    d = Path(spec).expanduser()
    if not d.exists():
        raise LLMKitError(f"{d}: no such classifier directory")
    if not (d / CLASSIFIER_FILE).exists() and (d / "final" / CLASSIFIER_FILE).exists():
        d = d / "final"
    if not (d / CLASSIFIER_FILE).exists():
        raise LLMKitError(f"{d}: not a classifier (no {CLASSIFIER_FILE}); train one with `llmkit classify train`")
    return d


def load_classifier(spec: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, tokenizer, classifier.json) of a classifier checkpoint directory."""
    from llmkit.checkpoint import (
        load_model,
        load_weights,
        read_adapter_config,
        read_config,
    )
    from llmkit.tokenizer import Tokenizer

    d = _classifier_dir(spec)
    try:
        meta = json.loads((d / CLASSIFIER_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LLMKitError(f"{d / CLASSIFIER_FILE}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("labels"), list) or len(meta["labels"]) < 2:
        raise LLMKitError(f"{d / CLASSIFIER_FILE}: no label list")
    n = len(meta["labels"])
    adapter = read_adapter_config(d)
    if adapter is not None:
        # Base + adapter: the base model as it was trained against (quantized if it was), the
        # head and adapters from the adapter file, then merged for plain-linear speed.
        from llmkit.lora import apply_lora, load_lora_state_dict, merge_lora

        net = load_model(adapter["base_model"], dtype=torch.float32).model
        attach_head(net, n)
        apply_lora(net, LoRAConfig(**adapter["lora"]), quantize=adapter.get("quantize"))
        load_lora_state_dict(net, load_weights(d), source=str(d))
        merge_lora(net)
    else:
        # A full checkpoint whose lm_head is (N, d): not a language model, so not through
        # load_model (which checks the head against the vocabulary); the base architecture
        # from config.json, the class head swapped in, every tensor loaded strictly.
        from llmkit.model import Transformer, rope_inv_freq

        cfg, _ = read_config(d)
        sd = load_weights(d)
        with torch.device("meta"):
            net = attach_head(Transformer(cfg), n)
        try:
            net.load_state_dict(sd, strict=True, assign=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            raise LLMKitError(f"{d}: weights do not fit a {n}-class classifier of this config "
                              f"({' '.join(x.strip() for x in first[:3])[:300]})") from None
        net.inv_freq = rope_inv_freq(net.cfg)  # non-persistent buffer: rebuilt, not loaded
    net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, Tokenizer.from_dir(d), meta


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
    if file is not None:
        col = text_col or meta.get("text_col") or "text"
        label_col = meta.get("label_col")
        data = read_labeled(file, col, None)
        texts = data.texts
        # Keep the input's columns in the output; score against its labels when it has them.
        header, table = read_table(file)
        rows = [dict(zip(header, r)) for _, r in table]
        if label_col and label_col in header:
            true_labels = [r[label_col].strip() for r in rows]
    else:
        texts = list(texts)
        if not texts or any(not t.strip() for t in texts):
            raise LLMKitError("empty text: give non-empty texts to classify")
        rows = [{"text": t} for t in texts]
    ids = [t[:T] for t in tok.encode_batch(texts)]
    with torch.no_grad():
        probs = predict_proba(net, ids, len(labels), pad_id, batch_size, device)
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
