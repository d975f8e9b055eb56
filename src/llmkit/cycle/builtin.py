"""The built-in offline data set of the default cycle (`corpus` stage of configs/cycle/default.yaml).

Everything comes from text every Python installation carries: the docstrings of the standard
library, read with `ast` (nothing imported or executed), as `llmkit quickstart` reads them.

    corpus.jsonl            one document per module: its docstrings (quickstart's corpus, less
                            the held-out modules), for the tokenizer and pretraining
    heldout.jsonl           the held-out modules' documents, for perplexity
    instruct.json           Alpaca records for instruction finetuning, two kinds of task, each
                            answered with the docstring's first sentence (its summary):
                              "Summarize this documentation of `json.dumps` in one sentence."
                              with the docstring as input (most records)
                              "What does `json.dumps` do in Python?" (the others)
    preference.json         summarize prompts with a chosen answer (the right summary) and a
                            rejected one (another object's summary), for DPO
    heldout-instruct.json   instruction records from the held-out modules, for evaluation
    summary.json            counts

Every `heldout_every`-th module (in sorted path order) is held out of all training files, so the
evaluation sets are on modules no stage trained on, by construction.
"""

from __future__ import annotations

import ast
import json
import random
import re
import sysconfig
from pathlib import Path

from llmkit.errors import LLMKitError

# Where quickstart's stdlib_docstrings does not look: test suites (code-heavy, repetitive),
# IDLE, installed packages, the removed lib2to3. Kept identical to it: the corpus is the same.
_SKIP_PARTS = ("test", "tests", "idlelib", "site-packages", "lib2to3")
_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_OBJECT_NODES = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _modules(root: Path):
    """(module name, parsed tree) of every standard-library file quickstart reads, sorted by path."""
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(p in _SKIP_PARTS for p in rel.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts) or rel.stem, tree


def _document(tree: ast.Module) -> str:
    """A module's document exactly as quickstart.stdlib_docstrings builds it: its docstrings of
    more than 80 characters, in ast.walk order, separated by blank lines."""
    parts = []
    for node in ast.walk(tree):
        if isinstance(node, _DOC_NODES):
            doc = ast.get_docstring(node)
            if doc and len(doc) > 80:
                parts.append(doc.strip())
    return "\n\n".join(parts)


def _objects(module: str, tree: ast.Module):
    """(qualified name, docstring) of the module's public classes, functions and methods."""
    def walk(body, prefix):
        for node in body:
            if isinstance(node, _OBJECT_NODES) and not node.name.startswith("_"):
                name = f"{prefix}.{node.name}"
                doc = ast.get_docstring(node)
                if doc:
                    yield name, doc.strip()
                if isinstance(node, ast.ClassDef):
                    yield from walk(node.body, name)

    if not any(p.startswith("_") for p in module.split(".")):
        yield from walk(tree.body, module)


def _one_line(text: str) -> str:
    return " ".join(text.split())


# The end of a docstring's first sentence: a full stop (or ! ?) before whitespace and a capital,
# a quote or a bracket. "e.g. the" and "os.path.join" do not end one.
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)`'\"][.!?])\s+(?=[A-Z(`'\"])")


def _records(objects: list[tuple[str, str]], summary_chars: int, input_chars: int, rng: random.Random) -> list[dict]:
    """Instruction records from (name, docstring) pairs. The answer is the docstring's first
    sentence, the summary docstring conventions ask for (PEP 257); docstrings whose first
    sentence is not a short sentence are skipped. Where the docstring says more than that
    sentence, the record is mostly (4 in 5) the summarize task, answerable from its input;
    otherwise the question about the name, answerable only from what the model has learnt."""
    out = []
    for name, doc in objects:
        text = _one_line(doc)
        summary = _SENTENCE_END.split(_one_line(doc.split("\n\n")[0]), maxsplit=1)[0]
        if not (20 <= len(summary) <= summary_chars and summary.endswith(".")):
            continue
        if len(text) >= len(summary) + 40 and rng.random() < 0.8:
            if len(text) > input_chars:  # cut at a word boundary
                text = text[:input_chars].rsplit(" ", 1)[0] + " ..."
            out.append({"instruction": f"Summarize this documentation of `{name}` in one sentence.",
                        "input": text, "output": summary})
        else:
            out.append({"instruction": f"What does `{name}` do in Python?", "input": "", "output": summary})
    return out


def builtin_corpus(out: str = "out/corpus", heldout_every: int = 20, max_examples: int = 4000, max_pairs: int = 2000,
                   max_heldout: int = 200, summary_chars: int = 200, input_chars: int = 400, seed: int = 0) -> dict:
    """Write the built-in offline data set: the standard library's docstrings as a pretraining
    corpus, with instruction, preference and held-out evaluation sets made from them.

    Args:
        out: output folder (corpus.jsonl, heldout.jsonl, instruct.json, preference.json,
            heldout-instruct.json, summary.json).
        heldout_every: every N-th module is held out of the training files (for evaluation).
        max_examples: most instruction records in instruct.json.
        max_pairs: most preference records in preference.json.
        max_heldout: most records in heldout-instruct.json.
        summary_chars: longest answer (a docstring's first paragraph) in characters.
        input_chars: longest documentation given as input to the summarize task.
        seed: seed of the task mix, the record order and the rejected answers.
    """
    from llmkit.fileio import atomic_write_text

    if heldout_every < 2:
        raise LLMKitError(f"heldout_every must be >= 2, got {heldout_every}")
    for name, v in (("max_examples", max_examples), ("max_pairs", max_pairs), ("max_heldout", max_heldout),
                    ("summary_chars", summary_chars), ("input_chars", input_chars)):
        if v < 1:
            raise LLMKitError(f"{name} must be >= 1, got {v}")
    root = Path(sysconfig.get_paths()["stdlib"])
    train_docs, heldout_docs, train_objs, heldout_objs = [], [], [], []
    i = 0
    for module, tree in _modules(root):
        doc = _document(tree)
        if not doc:
            continue  # as quickstart: a module without docstrings is no document, and takes no slot
        held = i % heldout_every == heldout_every - 1
        i += 1
        (heldout_docs if held else train_docs).append(doc)
        (heldout_objs if held else train_objs).extend(_objects(module, tree))
    if not train_docs or not heldout_docs:
        raise LLMKitError(f"too few documented modules under {root} for a held-out split")
    rng = random.Random(seed)
    train = _records(train_objs, summary_chars, input_chars, rng)
    heldout = _records(heldout_objs, summary_chars, input_chars, rng)
    rng.shuffle(train)
    rng.shuffle(heldout)
    # Preference pairs, from the summarize task: the given text's first sentence against another
    # object's. The rejected answer is fluent docstring English about the wrong thing; the right
    # one can be told from the input alone, so even a small model has something to learn.
    pairs = []
    summarize = [r for r in train if r["input"]]
    for k, rec in enumerate(summarize[:max_pairs]):
        j = rng.randrange(len(summarize) - 1)
        other = summarize[j if j < k else j + 1]["output"]
        pairs.append({"instruction": rec["instruction"], "input": rec["input"], "chosen": rec["output"],
                      "rejected": other})
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)

    def jsonl(docs):
        return "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs)

    files = {"corpus.jsonl": jsonl(train_docs), "heldout.jsonl": jsonl(heldout_docs),
             "instruct.json": json.dumps(train[:max_examples], indent=1, ensure_ascii=False),
             "preference.json": json.dumps(pairs, indent=1, ensure_ascii=False),
             "heldout-instruct.json": json.dumps(heldout[:max_heldout], indent=1, ensure_ascii=False)}
    for name, text in files.items():
        atomic_write_text(o / name, text)
    summary = {"source": str(root), "documents": len(train_docs), "heldout_documents": len(heldout_docs),
               "corpus_bytes": sum(len(d.encode()) for d in train_docs),
               "instructions": min(len(train), max_examples), "preference_pairs": len(pairs),
               "heldout_instructions": min(len(heldout), max_heldout)}
    atomic_write_text(o / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(f"built-in data: {summary['documents']} documents ({summary['corpus_bytes'] / 1e6:.1f} MB of standard-library "
          f"docstrings), {summary['heldout_documents']} held out; {summary['instructions']} instructions, "
          f"{summary['preference_pairs']} preference pairs, {summary['heldout_instructions']} held-out instructions "
          f"-> {o}", flush=True)
    return summary
