"""Generative evaluation of an instruction-tuned model on an Alpaca-style file.

Each example has `instruction`, optional `input`, and the reference `output`. The model writes a
response to each prompt (Alpaca prompt or the model's chat template, batched generation with the
KV cache, greedy decoding), and the responses are scored:

* against the reference with exact match, ROUGE-L and corpus BLEU (`metrics.py`);
* by an LLM judge, 0-100 per response (`judge.py`), summarised as mean, decile histogram and
  failures;
* optionally side by side with a second model's (or an earlier run's) responses: the judge
  picks the better one, giving win / tie / loss counts.

Responses and judgments are written next to the results (`responses.jsonl`,
`judgments.jsonl`), so a run can be judged again, or compared, without generating again
(`--responses`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

from llmkit.errors import LLMKitError

RESPONSES_FILE = "responses.jsonl"
JUDGMENTS_FILE = "judgments.jsonl"


# --- data --------------------------------------------------------------------------------------
def _apply_limit(records: list, limit: Optional[float]) -> list:
    if limit is None:
        return records
    n = math.ceil(len(records) * limit) if limit < 1 else int(limit)
    return records[:n]


def load_examples(path: str | Path, limit: Optional[float] = None) -> list[dict]:
    """Evaluation examples from the files finetuning reads (JSON or JSONL): Alpaca records
    {"instruction", "input" (optional), "output"} or chat records {"messages": [...]}, whose last
    assistant reply is the reference. Each becomes {"instruction", "input", "output"} (for the
    metrics, the judge and the Alpaca prompt) plus "messages", the conversation before the
    reference (what a chat-style prompt continues)."""
    from llmkit.data.instruct import load_examples as read_examples

    examples = []
    for ex in read_examples(path):
        instruction, inp = ex.alpaca if ex.alpaca is not None else (ex.prompt, "")
        examples.append({"instruction": instruction, "input": inp, "output": ex.reference,
                         "messages": [dict(m) for m in ex.context]})
    return _apply_limit(examples, limit)


def load_responses(path: str | Path, limit: Optional[float] = None) -> tuple[list[dict], list[str]]:
    """(examples, responses) from a responses.jsonl written by an earlier run."""
    from llmkit.data import read_records

    examples, responses = [], []
    for where, rec in read_records(path):
        fields = ("instruction", "output", "response")
        if not isinstance(rec, dict) or not all(isinstance(rec.get(k), str) for k in fields):
            raise LLMKitError(f"{where}: expected instruction, output and response fields "
                              f"(a {RESPONSES_FILE} written by `llmkit evaluate --generate-data`)")
        examples.append({"instruction": rec["instruction"], "input": rec.get("input") or "", "output": rec["output"]})
        responses.append(rec["response"])
    if not examples:
        raise LLMKitError(f"{path}: no responses")
    n = len(_apply_limit(examples, limit))
    return examples[:n], responses[:n]


def write_jsonl(path: Path, records: Sequence[dict]) -> None:
    from llmkit.checkpoint import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


# --- prompts and generation ---------------------------------------------------------------------
def build_prompts(tokenizer, examples: Sequence[dict],
                  prompt_style: str = "alpaca") -> tuple[list[list[int]], tuple[str, ...], set[int]]:
    """(prompt ids per example, stop strings, stop token ids) for a prompt style.

    "alpaca": the Alpaca prompt llmkit's instruction finetuning trains on (`prompts.format_alpaca`).
    "chat" (or "auto"): `auto` of `prompts.resolve_style` (the model's own chat template, else a
    style its vocabulary suggests, else alpaca); any built-in style name ("chatml", "llama3", ...)
    forces that style. The example's input, if any, follows the instruction in the user message.
    """
    from llmkit.prompts import PromptStyle, format_alpaca, resolve_style

    stop_ids = set(tokenizer.eos_ids)
    if prompt_style == "alpaca":
        style = PromptStyle.from_name("alpaca")
        ids = [tokenizer.encode(format_alpaca(ex)[0]) for ex in examples]
    else:
        style = resolve_style(tokenizer, None if prompt_style in ("chat", "auto") else prompt_style)
        ids = []
        for ex in examples:
            messages = ex.get("messages") or [
                {"role": "user", "content": ex["instruction"] + (f"\n\n{ex['input']}" if ex.get("input") else "")}]
            ids.append(style.encode(tokenizer, messages))
        stop_ids |= style.stop_token_ids(tokenizer)
    return ids, tuple(style.stop_strings), stop_ids


def complete(model, tokenizer, prompts: Sequence[list[int]], max_new_tokens: int, stop: Sequence[str] = (),
             stop_ids: Optional[set[int]] = None, temperature: float = 0.0, top_p: float = 1.0,
             top_k: Optional[int] = None, seed: Optional[int] = None) -> list[str]:
    """Completions of token-id prompts, generated together with llmkit's batched KV-cache
    decoding; each text ends before the first stop string (or stop token)."""
    from llmkit.generate import SamplingParams, generate_batch

    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                            top_k=top_k or None, seed=seed, stop=tuple(s for s in stop if s))
    return [c.text for c in generate_batch(model, tokenizer, list(prompts), params, stop_ids=stop_ids)]


def generate_responses(model, tokenizer, examples: Sequence[dict], prompt_style: str = "alpaca",
                       max_new_tokens: int = 256, batch_size: int = 16, progress: bool = True) -> list[str]:
    """Greedy responses to every example, longest prompts first in batches of `batch_size`."""
    from llmkit.generate import prepare_for_decoding
    from llmkit.progress import progress as make_progress

    prompts, stop, stop_ids = build_prompts(tokenizer, examples, prompt_style)
    context = model.cfg.block_size
    for i, p in enumerate(prompts):
        if len(p) >= context:
            raise LLMKitError(f"example {i + 1}: its prompt is {len(p)} tokens, leaving no room to respond "
                              f"in the model's context of {context} tokens")
    prepare_for_decoding(model)  # faster matrix-vector products; same values
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out = [""] * len(prompts)
    with make_progress(total=len(prompts), desc="generating", unit="responses", enabled=progress) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            texts = complete(model, tokenizer, [prompts[i] for i in chunk], max_new_tokens, stop, stop_ids)
            for i, text in zip(chunk, texts):
                out[i] = text.strip()
            bar.update(len(chunk))
    return out


# --- the whole generative evaluation -----------------------------------------------------------
def evaluate_responses(model, tokenizer, data: Optional[str] = None, responses_file: Optional[str] = None,
                       prompt_style: str = "alpaca", max_new_tokens: int = 256, batch_size: int = 16,
                       limit: Optional[float] = None, judge=None, judge_concurrency: int = 8,
                       compare_model: Optional[str] = None, compare_responses: Optional[str] = None,
                       device: Optional[str] = None, dtype: Optional[str] = None, out: Optional[str] = None,
                       progress: bool = True) -> dict:
    """Generate (or read) responses, score them, judge them; returns the "generative" section."""
    from llmkit.evaluate.judge import judge_pairs, judge_scores, summarize_pairs, summarize_scores
    from llmkit.evaluate.metrics import text_metrics

    if responses_file:
        examples, responses = load_responses(responses_file, limit)
        source = responses_file
    else:
        examples = load_examples(data, limit)
        responses = generate_responses(model, tokenizer, examples, prompt_style, max_new_tokens, batch_size,
                                       progress)
        source = data
    section: dict = {"data": str(source), "examples": len(examples),
                     "metrics": text_metrics(responses, [ex["output"] for ex in examples])}
    records = [{**ex, "response": r} for ex, r in zip(examples, responses)]

    if judge is not None:
        scores = judge_scores(examples, responses, judge, judge_concurrency, progress)
        section["judge"] = summarize_scores(scores)
        for rec, s in zip(records, scores):
            rec.update(judge_score=s["score"], judge_reply=s["reply"], judge_failure=s["failure"])

    if judge is not None and (compare_model or compare_responses):
        if compare_responses:
            other_examples, other = load_responses(compare_responses, limit)
            if [e["instruction"] for e in other_examples] != [e["instruction"] for e in examples]:
                raise LLMKitError(f"{compare_responses}: not the same examples, in the same order, as {source}")
            against = str(compare_responses)
        else:
            from llmkit.checkpoint import load_model

            loaded2 = load_model(compare_model, device=device, dtype=dtype)
            model2, tok2 = loaded2.model, loaded2.tokenizer
            other = generate_responses(model2, tok2, examples, prompt_style, max_new_tokens, batch_size, progress)
            del model2
            against = Path(compare_model).name
        pairs = judge_pairs(examples, responses, other, judge, judge_concurrency, progress)
        section["pairwise"] = summarize_pairs(pairs, against)
        for rec, o, p in zip(records, other, pairs):
            rec.update(other_response=o, pair_winner=p["winner"], pair_reply=p["reply"], pair_failure=p["failure"])

    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        write_jsonl(Path(out) / RESPONSES_FILE, [{k: r[k] for k in ("instruction", "input", "output", "response")}
                                                  for r in records])
        if judge is not None:
            write_jsonl(Path(out) / JUDGMENTS_FILE, records)
    return section
