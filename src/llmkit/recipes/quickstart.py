"""The built-in default: the cycle so far on a fresh machine, with nothing downloaded.

corpus -> tokenizer -> token shards -> samples from the untrained model -> pretraining for a few
minutes -> samples again. `--arch llama` (the default) pretrains a small decoder on next tokens
and samples text; `--arch bert` a small encoder (WordPiece, masked-LM) and shows its fill-mask
predictions; `--arch t5` a small encoder-decoder (Unigram with sentinels, T5's span corruption)
and shows how it fills sentinel spans. The corpus is real English text that every Python installation
carries: the docstrings of the standard library (a few MB of prose about code), extracted with
`ast` (nothing is imported or executed). `--corpus` uses your own files instead.
"""

from __future__ import annotations

import ast
import json
import sysconfig
from pathlib import Path
from typing import Optional

from llmkit.errors import LLMKitError

PROMPTS = ("Return the", "This module provides", "If the file")
MASKED = ("Return the [MASK] of the list.", "This module provides functions for [MASK] files.",
          "If the file does not [MASK], an error is raised.")
SPANS = ("Return the <extra_id_0> of the list.", "This module provides <extra_id_0> for <extra_id_1> files.",
         "If the file does not <extra_id_0>, an error is raised.")
ARCHS = {"llama": "micro-llama", "bert": "micro-bert", "t5": "micro-t5"}  # --arch -> the preset it pretrains
KINDS = {"llama": "decoder", "bert": "encoder", "t5": "encoder-decoder"}
TOKENIZERS = {"llama": "bpe", "bert": "wordpiece", "t5": "unigram"}


def stdlib_docstrings(out: Path, max_bytes: int = 4_000_000) -> tuple[int, int]:
    """Write the standard library's docstrings as JSONL documents (one per module); returns
    (documents, bytes). Sorted file order, so the corpus is the same on every run."""
    root = Path(sysconfig.get_paths()["stdlib"])
    n_docs = n_bytes = 0
    with open(out, "w") as f:
        for path in sorted(root.rglob("*.py")):
            if any(p in ("test", "tests", "idlelib", "site-packages", "lib2to3") for p in path.relative_to(root).parts):
                continue
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, OSError):
                continue
            parts = []
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc and len(doc) > 80:
                        parts.append(doc.strip())
            if not parts:
                continue
            text = "\n\n".join(parts)
            f.write(json.dumps({"text": text}) + "\n")
            n_docs += 1
            n_bytes += len(text.encode())
            if n_bytes >= max_bytes:
                break
    if n_docs == 0:
        raise LLMKitError(f"no docstrings found under {root}: pass --corpus FILES")
    return n_docs, n_bytes


def _finished_run(run_dir: Path, budget_s: float) -> Optional[dict]:
    """The summary of a quickstart run in `run_dir` whose time budget is spent (so resuming it
    would train 0 steps), or None (no run yet, or an interrupted one, which then continues)."""
    from llmkit.checkpoint import SUMMARY, TRAINER_STATE, find_latest

    latest = find_latest(run_dir)
    if latest is None or not (run_dir / SUMMARY).exists() or not (run_dir / "final").is_dir():
        return None
    try:  # the counters only: the weights and optimizer state are not needed to tell
        elapsed = float(json.loads((latest / TRAINER_STATE).read_text())["elapsed"])
        summary = json.loads((run_dir / SUMMARY).read_text())
    except (KeyError, TypeError, ValueError, OSError):  # JSONDecodeError is a ValueError
        return None
    return summary if elapsed >= budget_s else None


def _samples(model, tokenizer, title: str) -> list[dict]:
    """Each prompt continued (printed); returns [{prompt, response}] for OUT/run/samples.jsonl."""
    from llmkit.generate import generate

    print(f"\n--- {title} ---")
    rows = []
    for p in PROMPTS:
        c = generate(model, tokenizer, p, max_new_tokens=40, temperature=0.8, top_k=40, seed=0)
        print(f"{p!r} -> {p}{c.text}".replace("\n", " ")[:200])
        rows.append({"prompt": p, "response": c.text})  # the continuation alone
    print(flush=True)
    return rows


def _fill_mask_samples(model, tokenizer, title: str, top_k: int = 5) -> list[dict]:
    """Each masked sentence with the model's top-k tokens for its [MASK] and their probabilities."""
    import torch

    print(f"\n--- {title} ---")
    rows = []
    for text in MASKED:
        ids = torch.tensor([tokenizer.encode(text)])
        where = (ids[0] == tokenizer.mask_id).nonzero()
        with torch.no_grad():
            probs = model(ids)[0, int(where[0])].float().softmax(-1)
        p, i = probs.topk(top_k)
        guesses = ", ".join(f"{tokenizer.decode([int(t)]).strip() or repr(tokenizer.decode([int(t)], skip_special=False))}"
                            f" ({float(q):.2f})" for q, t in zip(p, i))
        print(f"{text!r} -> {guesses}")
        rows.append({"prompt": text, "response": guesses})
    print(flush=True)
    return rows


def _span_samples(model, tokenizer, title: str) -> list[dict]:
    """Each sentence with sentinel gaps and the model's greedy targets (sentinels shown)."""
    from llmkit.generate import generate

    print(f"\n--- {title} ---")
    rows = []
    for text in SPANS:
        c = generate(model, tokenizer, text, max_new_tokens=16, temperature=0.0)
        fill = tokenizer.decode(c.token_ids, skip_special=False)
        print(f"{text!r} -> {fill!r}")
        rows.append({"prompt": text, "response": fill})
    print(flush=True)
    return rows


def _write_samples(path: Path, before: list[dict], after: list[dict], step: int) -> None:
    """The samples before (step 0) and after training as finetune's samples.jsonl has them
    ({step, prompt, response}; `llmkit report` shows them side by side), in one atomic write:
    a rerun that resumes an interrupted run writes both again, never half a file."""
    from llmkit.checkpoint import atomic_write_text

    rows = [{"step": 0, **r} for r in before] + [{"step": step, **r} for r in after]
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def quickstart(
    out: Optional[str] = None,
    minutes: float = 5.0,
    corpus: Optional[list[str]] = None,
    arch: str = "llama",
    model: Optional[str] = None,
    vocab_size: int = 4096,
    seq_len: int = 256,
    batch_size: int = 16,
    lr: float = 2e-3,
) -> dict:
    """Run the built-in default: build a corpus, train a tokenizer, pretrain a small model, sample.

    Args:
        out: output directory (corpus, tokenizer, data, run with checkpoints, loss.png and
            samples.jsonl; default out/quickstart, out/quickstart-bert / out/quickstart-t5 for
            --arch bert / t5).
        minutes: pretraining time budget.
        corpus: your own text/JSONL/Parquet files or folders (default: the Python standard
            library's docstrings, already on this machine).
        arch: llama (a decoder, next-token prediction, text samples), bert (an encoder,
            masked-LM, fill-mask predictions) or t5 (an encoder-decoder, span corruption,
            sentinel fills).
        model: the architecture preset to pretrain (default: micro-llama / micro-bert / micro-t5).
        vocab_size: tokenizer vocabulary size (BPE; WordPiece for bert; Unigram for t5).
        seq_len: training sequence length.
        batch_size: sequences per step.
        lr: peak learning rate.
    """
    import torch

    from llmkit.data.prepare import prepare
    from llmkit.model import Transformer
    from llmkit.recipes.pretrain import ENCODER_NEXT_STEPS, NEXT_STEPS, SEQ2SEQ_NEXT_STEPS, pretraining_run
    from llmkit.recipes.scaffold import model_config
    from llmkit.tokenizer import Tokenizer, train_tokenizer
    from llmkit.training.loop import TrainConfig

    if arch not in ARCHS:
        raise LLMKitError(f"unknown --arch '{arch}' (choose from {', '.join(ARCHS)})")
    bert = arch == "bert"
    model = model or ARCHS[arch]
    if model_config(model).kind != KINDS[arch]:
        raise LLMKitError(f"--arch {arch} pretrains {'an' if KINDS[arch][0] == 'e' else 'a'} {KINDS[arch]}; "
                          f"'{model}' is not one")
    o = Path(out or ("out/quickstart" if arch == "llama" else f"out/quickstart-{arch}"))
    o.mkdir(parents=True, exist_ok=True)
    if corpus:
        sources = list(corpus)
    else:
        src = o / "corpus.jsonl"
        n, b = stdlib_docstrings(src)
        print(f"corpus: {n:,} documents, {b / 1e6:.1f} MB of Python standard-library docstrings -> {src}")
        sources = [str(src)]
    tok_dir = o / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        train_tokenizer(sources, vocab_size=vocab_size, out=str(tok_dir), kind=TOKENIZERS[arch], lowercase=bert)
    data = o / "data"
    if not (data / "manifest.json").exists():
        prepare(sources, tokenizer=str(tok_dir), out=str(data), seq_len=seq_len, val_fraction=0.02)
    tok = Tokenizer.from_dir(tok_dir)
    finished = _finished_run(o / "run", minutes * 60)
    if finished is not None:
        from llmkit.checkpoint import read_config

        if read_config(o / "run" / "final")[0].kind != KINDS[arch]:
            raise LLMKitError(f"{o / 'run'} holds a finished run of another kind of model than --arch {arch}: "
                              f"pass another --out")
        print(f"{o / 'run'} already holds a finished run ({finished['step']} steps, the {minutes:g}-minute budget "
              f"spent); its model: {o / 'run' / 'final'}. To train again, pass another --out or remove {o}.")
        return finished
    torch.manual_seed(42)
    untrained = Transformer(model_config(model, vocab_size=tok.vocab_size))
    samples = {"llama": _samples, "bert": _fill_mask_samples, "t5": _span_samples}[arch]
    what = {"llama": "samples", "bert": "fill-mask", "t5": "span fills"}[arch]
    before = samples(untrained.eval(), tok, f"{what} before training")
    train = TrainConfig(max_time=minutes * 60, micro_batch_size=batch_size, lr=lr, warmup_steps=50,
                        eval_every=100, log_every=10, save_every=200, tensorboard=True)
    run, result = pretraining_run(model, str(data), str(o / "run"), seq_len, 16, None, train)
    result = run.finish(result, done=f"step {result['step']}, {result['tokens']:,} tokens")  # next steps: below
    from llmkit.checkpoint import load_model

    trained = load_model(result["final"]).model
    after = samples(trained, tok, f"{what} after {result['step']} steps ({minutes:g} min)")
    _write_samples(o / "run" / "samples.jsonl", before, after, result["step"])
    print(f"validation loss: {result.get('val_loss', float('nan')):.3f} (ppl {result.get('val_ppl', float('nan')):.1f}); "
          f"loss curve: {o / 'run' / 'loss.png'}; model: {result['final']}")
    steps = {"llama": NEXT_STEPS, "bert": ENCODER_NEXT_STEPS, "t5": SEQ2SEQ_NEXT_STEPS}[arch]
    print("next steps (the rest of the cycle, on this model):\n"
          + "\n".join("  " + c.format(final=result["final"]).replace('"..."', '"Return the"') for c in steps))
    return result
