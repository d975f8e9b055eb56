"""Evaluating an encoder-decoder on (source, reference) pairs: summarization, translation, any
text-to-text task (`llmkit evaluate MODEL --generate-data FILE` when MODEL is a T5 or BART).

The model writes an output for every source (batched decoding, greedy or beam search), and the
outputs are scored against every reference of their source by the standard libraries:
ROUGE-1/2/L/Lsum by `rouge_score` (Google's implementation, stemming on, sentences split for
Lsum) and corpus BLEU / chrF by `sacrebleu` (its signature reported). Two trivial baselines are
scored on the same pairs, so a number means something: the source's first sentence (the "lead"
baseline of summarization) and the source itself copied (translation's floor: what a model
that learned nothing but copying would score). Outputs go to responses.jsonl.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from llmkit.errors import LLMKitError

SEQ2SEQ_RESPONSES = "responses.jsonl"


def score_outputs(outputs: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """ROUGE (x100, rouge_score) and BLEU / chrF (sacrebleu) of outputs against their references."""
    from llmkit.evaluate.metrics import rouge_scores, sacrebleu_scores

    rouge = rouge_scores(list(outputs), [list(r) for r in references], sentence_split=True, sentence_method="rules")
    bleu = sacrebleu_scores(list(outputs), [list(r) for r in references])
    return {**{k: round(v, 2) for k, v in rouge.items()}, "bleu": round(bleu["bleu"], 2),
            "chrf": round(bleu["chrf"], 2), "bleu_signature": bleu["signature"],
            "chrf_signature": bleu["chrf_signature"]}


def generate_outputs(model, tokenizer, sources: Sequence[str], max_new_tokens: int = 128, batch_size: int = 16,
                     num_beams: int = 1, length_penalty: float = 1.0, progress: bool = True) -> list[str]:
    """An output per source: greedy in batches (longest sources first), or beam search per source."""
    from llmkit.generate import generate_batch, prepare_for_decoding
    from llmkit.progress import progress as make_progress

    prepare_for_decoding(model)
    ids = tokenizer.encode_batch(list(sources))
    limit = model.cfg.block_size
    for i, s in enumerate(ids):
        if len(s) > limit:  # T5-style truncation: the end of a too-long source is cut, EOS kept
            ids[i] = s[: limit - 1] + s[-1:]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    out = [""] * len(ids)
    with make_progress(total=len(ids), desc="generating", unit="outputs", enabled=progress) as bar:
        if num_beams > 1:
            from llmkit.generate import beam_search

            for i in order:
                out[i] = beam_search(model, tokenizer, ids[i], num_beams=num_beams, max_new_tokens=max_new_tokens,
                                     length_penalty=length_penalty)[0].text.strip()
                bar.update(1)
        else:
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                done = generate_batch(model, tokenizer, [ids[i] for i in chunk], max_new_tokens=max_new_tokens,
                                      temperature=0.0)
                for i, c in zip(chunk, done):
                    out[i] = c.text.strip()
                bar.update(len(chunk))
    return out


def evaluate_seq2seq(model, tokenizer, data: str, source_field: Optional[str] = None,
                     target_field: Optional[str] = None, prefix: str = "", max_new_tokens: int = 128,
                     batch_size: int = 16, num_beams: int = 1, length_penalty: float = 1.0,
                     limit: Optional[float] = None, out: Optional[str] = None, progress: bool = True) -> dict:
    """The "seq2seq" section of an evaluation: the model's scores and the two baselines'."""
    import math

    from llmkit.data.seq2seq import read_seq2seq
    from llmkit.evaluate.generative import write_jsonl
    from llmkit.evaluate.metrics import copy_source, lead_sentence

    if not model.cfg.is_seq2seq:
        raise LLMKitError("evaluate_seq2seq needs an encoder-decoder model")
    records = read_seq2seq(data, source_field, target_field, prefix)
    if limit is not None:
        records = records[: math.ceil(len(records) * limit) if limit < 1 else int(limit)]
    sources = [r.source for r in records]
    references = [list(r.targets) for r in records]
    outputs = generate_outputs(model, tokenizer, sources, max_new_tokens, batch_size, num_beams, length_penalty,
                               progress)
    bare = [s[len(prefix):] if prefix and s.startswith(prefix) else s for s in sources]  # baselines see the text
    section = {
        "data": str(data), "examples": len(records), "prefix": prefix, "num_beams": num_beams,
        "max_new_tokens": max_new_tokens, "metrics": score_outputs(outputs, references),
        "baselines": {"lead sentence": score_outputs([lead_sentence(s) for s in bare], references),
                      "copy source": score_outputs([copy_source(s) for s in bare], references)},
    }
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        write_jsonl(Path(out) / SEQ2SEQ_RESPONSES, [{"source": s, "references": r, "output": o}
                                                     for s, r, o in zip(sources, references, outputs)])
    return section


def seq2seq_markdown(section: dict) -> str:
    """The section as a markdown table: the model and the baselines, one row each."""
    cols = ("rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "chrf")
    rows = [("model", section["metrics"])] + list(section["baselines"].items())
    lines = [f"### {section['data']} ({section['examples']} examples, "
             f"{'beam ' + str(section['num_beams']) if section['num_beams'] > 1 else 'greedy'})", "",
             "| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += ["| " + name + " | " + " | ".join(f"{m[c]:.2f}" for c in cols) + " |" for name, m in rows]
    lines += ["", f"BLEU: sacrebleu {section['metrics']['bleu_signature']}; "
                  f"chrF: {section['metrics']['chrf_signature']}; ROUGE: rouge_score, stemmed, F1 x 100"]
    return "\n".join(lines)
