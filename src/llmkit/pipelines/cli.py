"""`llmkit pipeline TASK MODEL INPUT... [--options]`: a pipeline over the command line's inputs
(or a file's lines), one result per input on stdout: a JSON line each (default; exactly what
`llmkit.pipeline(TASK, MODEL)(INPUT)` returns), or a table for people (`--format table`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

from llmkit.errors import LLMKitError

FORMATS = ("json", "table")


def _read_inputs(file: str, task: str, context: Optional[str]) -> list:
    """Non-empty lines of `file`; each a JSON value in a .jsonl file and for question-answering
    (an object {"question", "context"}, or a question when --context is given)."""
    p = Path(file)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise LLMKitError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LLMKitError(f"{p}: cannot read ({e})") from None
    as_json = p.suffix.lower() == ".jsonl" or (task == "question-answering" and context is None)
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if as_json:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise LLMKitError(f"{p}:{n}: not valid JSON ({e.msg})") from None
        else:
            out.append(line)
    return out


def _items(words: list[str], task: str, context: Optional[str]) -> list:
    """Command-line inputs as pipeline inputs: texts, or for question-answering questions about
    --context (else JSON objects {"question", "context"})."""
    if task != "question-answering":
        return list(words)
    if context is not None:
        return [{"question": q, "context": context} for q in words]
    out = []
    for w in words:
        try:
            out.append(json.loads(w))
        except json.JSONDecodeError:
            raise LLMKitError('question-answering: give --context and questions, or inputs as JSON objects '
                              '{"question": ..., "context": ...}') from None
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, str):
        return v.replace("\n", "\\n")
    return json.dumps(v, ensure_ascii=False)


def _table(rows: list[dict]) -> list[str]:
    if not rows:
        return ["  (nothing)"]
    cols = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  " + "  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()]
    lines += ["  " + "  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return lines


def render_table(item, result) -> list[str]:
    """A readable block for one input and its result."""
    if isinstance(item, dict) and isinstance(item.get("question"), str):
        head = item["question"]  # the context may be long; the answer's offsets point into it
    else:
        head = item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)
    lines = [f"> {head}"]
    if isinstance(result, dict) and "labels" in result and "scores" in result:  # zero-shot
        lines += _table([{"label": a, "score": s} for a, s in zip(result["labels"], result["scores"])])
    elif isinstance(result, dict):
        lines += _table([result])
    elif isinstance(result, list) and result and all(isinstance(r, dict) for r in result):
        text_keys = ({"generated_text"}, {"summary_text"}, {"translation_text"})
        if all(set(r) in text_keys and isinstance(next(iter(r.values())), str) for r in result):
            lines += [f"  {next(iter(r.values()))}" for r in result]
        else:
            lines += _table(result)
    elif isinstance(result, list) and result and all(isinstance(r, list) for r in result) \
            and all(isinstance(d, dict) for r in result for d in r):
        for i, r in enumerate(result):  # several masks, or one pre-split text
            lines += [f"  [{i}]"] + _table(r)
    elif isinstance(result, list) and result and isinstance(result[0], list) and result[0] \
            and isinstance(result[0][0], list):  # feature-extraction: 1 x T x d
        lines.append(f"  features: {len(result)} x {len(result[0])} x {len(result[0][0])} "
                     f"(--format json prints the values)")
    else:
        lines += _table([]) if result == [] else [f"  {_fmt(result)}"]
    return lines


def pipeline_cli(
    task: str,
    model: str,
    inputs: Optional[list[str]] = None,
    file: Optional[str] = None,
    format: str = "json",
    batch_size: int = 8,
    device: str = "cpu",
    dtype: Optional[str] = None,
    top_k: Optional[int] = None,
    targets: Optional[list[str]] = None,
    function_to_apply: Optional[str] = None,
    aggregation_strategy: Optional[str] = None,
    ignore_labels: Optional[list[str]] = None,
    stride: Optional[int] = None,
    context: Optional[str] = None,
    max_answer_len: Optional[int] = None,
    max_seq_len: Optional[int] = None,
    doc_stride: Optional[int] = None,
    handle_impossible_answer: bool = False,
    candidate_labels: Optional[list[str]] = None,
    hypothesis_template: Optional[str] = None,
    multi_label: bool = False,
    max_new_tokens: Optional[int] = None,
    do_sample: Optional[bool] = None,
    temperature: Optional[float] = None,
    top_p: Optional[float] = None,
    seed: Optional[int] = None,
    stop_sequence: Optional[list[str]] = None,
    return_full_text: Optional[bool] = None,
    num_beams: Optional[int] = None,
    length_penalty: Optional[float] = None,
    no_repeat_ngram_size: Optional[int] = None,
    min_new_tokens: Optional[int] = None,
    prefix: Optional[str] = None,
    truncation: bool = False,
) -> list:
    """Run a task pipeline (fill-mask, ner, question-answering, ...) on texts, printing JSON lines.

    One result per input, in input order: a JSON line each (what the Python API
    `llmkit.pipeline(TASK, MODEL)(INPUT)` returns), or a readable block each with --format table.
    Options that do not apply to TASK are an error.

    Args:
        task: fill-mask, text-classification (sentiment-analysis), token-classification (ner),
            question-answering, feature-extraction, zero-shot-classification, text-generation,
            text2text-generation, summarization, translation (or translation_en_to_de, ...).
        model: a model directory (llmkit or Hugging Face, with tokenizer files) or a hub repo id.
        inputs: the texts (question-answering: questions about --context, or JSON objects
            {"question": ..., "context": ...}).
        file: read the inputs from this file instead, one per line (JSON values in a .jsonl file;
            question-answering: JSON objects unless --context is given). Shows progress on stderr.
        format: json (one JSON line per input) or table (for reading).
        batch_size: inputs per forward pass.
        device: cpu, cuda, cuda:N, mps or auto.
        dtype: float32, bfloat16, ... (default: the checkpoint's).
        top_k: fill-mask: predictions per mask (5); text-classification: labels per text (all
            ranked); question-answering: answers (1); text-generation: sample among the k likeliest.
        targets: fill-mask: score only these tokens.
        function_to_apply: text-classification: default, softmax, sigmoid or none.
        aggregation_strategy: token-classification: none, simple, first, average or max.
        ignore_labels: token-classification: labels left out (default O).
        stride: token-classification: read long texts in windows sharing this many tokens.
        context: question-answering: the context every input question is asked about.
        max_answer_len: question-answering: longest answer in tokens (15).
        max_seq_len: question-answering: tokens per window (min(384, the model's)).
        doc_stride: question-answering: tokens shared by consecutive windows.
        handle_impossible_answer: question-answering: allow the empty answer.
        candidate_labels: zero-shot-classification: the labels to choose from.
        hypothesis_template: zero-shot-classification: the hypothesis per label ("This example is {}.").
        multi_label: zero-shot-classification: score each label on its own (entailment vs contradiction).
        max_new_tokens: text-generation: new tokens per prompt (256).
        do_sample: text-generation: false for greedy decoding (default: sampling, as transformers).
        temperature: text-generation: sampling temperature (0.7).
        top_p: text-generation: nucleus sampling threshold.
        seed: text-generation: random seed for sampling.
        stop_sequence: text-generation: strings that end the generation.
        return_full_text: text-generation: false prints only the new text.
        num_beams: text2text-generation, summarization, translation: beam search width (1: greedy).
        length_penalty: with beams: > 1 favours longer outputs, < 1 shorter ones.
        no_repeat_ngram_size: text2text tasks: never repeat an n-gram of this size.
        min_new_tokens: generation tasks: the fewest new tokens before the end token may come.
        prefix: text2text tasks: put before every input (default: the model's task prefix, e.g.
            T5's "summarize: ").
        truncation: cut inputs longer than the model reads (fill-mask, text-classification,
            feature-extraction).
    """
    from llmkit.pipelines import pipeline, resolve_task
    from llmkit.progress import progress

    name = resolve_task(task)
    if format not in FORMATS:
        raise LLMKitError(f"unknown format '{format}'; choose from: {', '.join(FORMATS)}")
    if (inputs is None or not inputs) == (file is None):
        raise LLMKitError("give the inputs on the command line, or --file with one input per line (not both)")
    if context is not None and name != "question-answering":
        raise LLMKitError(f"--context applies to question-answering, not {name}")
    items = _read_inputs(file, name, context) if file is not None else _items(inputs, name, context)
    if not items:
        raise LLMKitError(f"{file}: no inputs (the file has no non-empty lines)")
    given = dict(top_k=top_k, targets=targets, function_to_apply=function_to_apply,
                 aggregation_strategy=aggregation_strategy, ignore_labels=ignore_labels, stride=stride,
                 max_answer_len=max_answer_len, max_seq_len=max_seq_len, doc_stride=doc_stride,
                 handle_impossible_answer=handle_impossible_answer or None, candidate_labels=candidate_labels,
                 hypothesis_template=hypothesis_template, multi_label=multi_label or None,
                 max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p, seed=seed,
                 stop_sequence=stop_sequence, return_full_text=return_full_text, truncation=truncation or None,
                 num_beams=num_beams, length_penalty=length_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
                 min_new_tokens=min_new_tokens, prefix=prefix)
    given = {k: v for k, v in given.items() if v is not None}
    pipe = pipeline(task, model, device=device, dtype=dtype, batch_size=batch_size)
    stray = sorted(set(given) - set(pipe.OPTIONS))
    if stray:
        raise LLMKitError(f"{', '.join('--' + s for s in stray)} do{'es' if len(stray) == 1 else ''} not apply "
                          f"to {name} (its options: {', '.join(pipe.OPTIONS)})")
    results = []
    shown = file is not None or len(items) > batch_size
    with progress(total=len(items), desc=name, unit="inputs", enabled=shown) as bar:
        for s in range(0, len(items), batch_size):
            chunk = items[s:s + batch_size]
            out = pipe.run(chunk, **given)
            for item, result in zip(chunk, out):
                if format == "json":
                    print(json.dumps(result, ensure_ascii=False))
                else:
                    print("\n".join(render_table(item, result)))
            sys.stdout.flush()
            results.extend(out)
            bar.update(len(chunk))
    return results
