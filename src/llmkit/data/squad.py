"""Extractive question answering (SQuAD): examples, windowed features, and best answer spans.

Reading (`read_squad`): the official SQuAD v1.1 JSON, `{"data": [{"title", "paragraphs":
[{"context", "qas": [{"id", "question", "answers": [{"text", "answer_start"}]}]}]}]}`, one
`QAExample` per question. Every answer must sit at its `answer_start` in the context (true of
both official v1.1 files); a v2 question with no answer (`is_impossible`) has none.

Features (`features`): the question first, the context second, as BERT was finetuned on SQuAD
(Devlin et al. 2019, sec. 4.2). A context too long for `max_length` tokens is split into
overlapping windows that share `stride` tokens, the question repeated in each: exactly the
encodings of transformers' `tokenizer(question, context, truncation="only_second", max_length,
stride, return_overflowing_tokens=True, return_offsets_mapping=True)`, as its QA recipe
(`run_qa.py`) prepares them. Each window knows its example and the context character span of
each of its context tokens, and carries the token positions of the (first) answer for training:
the context tokens holding its first and last characters, or 0 and 0 (the CLS token, "no answer
here") when the answer is not wholly inside the window.

Post-processing (`best_spans`): given a model's start and end logits for every feature, the
best span of each example over all its windows, as `run_qa.py`'s `postprocess_qa_predictions`
finds it: among the `n_best` highest start and `n_best` highest end logits of each window, the
pair with the highest start + end logit such that both tokens are in the context, start <= end
and the span has at most `max_answer_len` tokens; its text is cut from the context characters
(so the answer keeps the context's casing and spacing, whatever the tokenizer normalised).
Model-independent: plain numpy on the given logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from llmkit.errors import LLMKitError, read_json

if TYPE_CHECKING:
    from llmkit.tokenizer import Tokenizer

CLS_INDEX = 0  # the template's first token ([CLS], <s>): the "no answer in this window" target


@dataclass(frozen=True)
class QAExample:
    """One question about one context, with its gold answers (texts and character starts)."""

    id: str
    question: str
    context: str
    answers: tuple[str, ...]
    answer_starts: tuple[int, ...]
    title: str = ""


def _str(record: Any, key: str, where: str) -> str:
    value = record.get(key) if isinstance(record, dict) else None
    if not isinstance(value, str):
        got = "missing" if value is None else f"a {type(value).__name__}"
        raise LLMKitError(f"{where}: '{key}' must be a string ({got})")
    return value


def _list(record: Any, key: str, where: str) -> list:
    value = record.get(key) if isinstance(record, dict) else None
    if not isinstance(value, list):
        got = "missing" if value is None else f"a {type(value).__name__}"
        raise LLMKitError(f"{where}: '{key}' must be a list ({got})")
    return value


def read_squad(path: str | Path) -> list[QAExample]:
    """Every question of a SQuAD-format JSON file, in file order."""
    data = read_json(Path(path).expanduser())
    if not isinstance(data, dict):
        raise LLMKitError(f"{path}: expected a SQuAD JSON object with a 'data' list")
    examples = []
    for a, article in enumerate(_list(data, "data", str(path))):
        title = article.get("title", "") if isinstance(article, dict) else ""
        for p, paragraph in enumerate(_list(article, "paragraphs", f"{path}: data[{a}]")):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            context = _str(paragraph, "context", where)
            for q, qa in enumerate(_list(paragraph, "qas", where)):
                qid = _str(qa, "id", f"{where}.qas[{q}]")
                at = f"{path}: question {qid}"
                question = _str(qa, "question", at)
                texts, starts = [], []
                for answer in _list(qa, "answers", at):
                    text = _str(answer, "text", at)
                    start = answer.get("answer_start") if isinstance(answer, dict) else None
                    if not isinstance(start, int) or isinstance(start, bool):
                        raise LLMKitError(f"{at}: 'answer_start' must be an integer, got {start!r}")
                    if context[start:start + len(text)] != text:
                        raise LLMKitError(f"{at}: answer {text!r} is not at character {start} of the context "
                                          f"(found {context[start:start + len(text)]!r})")
                    texts.append(text)
                    starts.append(start)
                examples.append(QAExample(qid, question, context, tuple(texts), tuple(starts), str(title)))
    if not examples:
        raise LLMKitError(f"{path}: no questions")
    return examples


@dataclass(frozen=True)
class QAFeature:
    """One window of one example: `[CLS] question [SEP] context window [SEP]` (or the
    tokenizer's own template), and what training and post-processing need of it."""

    ids: list[int]
    type_ids: list[int]
    offsets: list[Optional[tuple[int, int]]]  # context character span per token; None outside the context
    example: int  # index into the examples
    start: int  # token position of the answer's first character; CLS_INDEX if not in this window
    end: int  # token position of its last character; CLS_INDEX if not in this window

    def __len__(self) -> int:
        return len(self.ids)


def _answer_tokens(offsets: Sequence[tuple[int, int]], context: Sequence[int], start_char: int,
                   end_char: int) -> tuple[int, int]:
    """(start token, end token) of the answer characters [start_char, end_char) among the context
    tokens `context` (ascending positions), or (CLS_INDEX, CLS_INDEX) if it is not all inside."""
    first, last = context[0], context[-1]
    if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
        return CLS_INDEX, CLS_INDEX
    s = first  # the last context token that starts at or before the answer's first character
    while s < last and offsets[s + 1][0] <= start_char:
        s += 1
    e = last  # the first context token that ends at or after the answer's last character
    while e > first and offsets[e - 1][1] >= end_char:
        e -= 1
    return s, e


def features(examples: Sequence[QAExample], tokenizer: "Tokenizer", max_length: int = 384,
             stride: int = 128) -> list[QAFeature]:
    """Every window of every example, in example order (see the module docstring).

    The question's leading whitespace is dropped, as `run_qa.py` does (some SQuAD questions
    start with spaces, which would only take room from the context).
    """
    out = []
    for i, ex in enumerate(examples):
        try:
            windows = tokenizer.encode_windows(ex.question.lstrip(), ex.context, max_length=max_length, stride=stride)
        except LLMKitError as e:
            raise LLMKitError(f"question {ex.id}: {e}") from None
        for w in windows:
            context = [k for k, s in enumerate(w.sequence_ids) if s == 1]
            if not context:
                raise LLMKitError(f"question {ex.id}: a window holds no context token")
            start = end = CLS_INDEX
            if ex.answers:
                start_char = ex.answer_starts[0]
                start, end = _answer_tokens(w.offsets, context, start_char, start_char + len(ex.answers[0]))
            offsets = [o if s == 1 else None for o, s in zip(w.offsets, w.sequence_ids)]
            out.append(QAFeature(w.ids, w.type_ids, offsets, i, start, end))
    return out


@dataclass(frozen=True)
class Span:
    """The predicted answer of one example: its text, start + end logit, and its character span
    in the context (`context[start:end] == text`); text "" and score -inf if no window had a
    valid span."""

    text: str
    score: float
    start: int
    end: int


def _rows(logits: Any, n: int, what: str) -> list[np.ndarray]:
    """One 1-D float array per feature, from an (N, T) array / tensor or a list of rows."""
    if hasattr(logits, "detach"):  # a torch tensor
        logits = logits.detach().cpu().double().numpy()
    if isinstance(logits, np.ndarray):
        if logits.ndim != 2:
            raise LLMKitError(f"{what} must be (features, tokens), got shape {logits.shape}")
        rows = list(logits)
    else:
        rows = [np.asarray(r.detach().cpu().double() if hasattr(r, "detach") else r, dtype=np.float64)
                for r in logits]
    if len(rows) != n:
        raise LLMKitError(f"{what}: {len(rows)} rows for {n} features")
    return rows


def best_spans(start_logits: Any, end_logits: Any, features: Sequence[QAFeature], examples: Sequence[QAExample],
               n_best: int = 20, max_answer_len: int = 30) -> list[Span]:
    """The best answer span of each example (in example order) over all its windows.

    `start_logits` / `end_logits`: one row of per-token logits per feature, as an (N, T) array
    or tensor (T at least the longest feature; padding columns are ignored) or a list of rows.
    Candidates are the `n_best` highest start and end logits of each window; a pair counts if
    both tokens are context tokens, start <= end and end - start + 1 <= `max_answer_len`; the
    highest start + end logit wins (ties: the earlier window, then the higher-ranked start).
    """
    starts = _rows(start_logits, len(features), "start_logits")
    ends = _rows(end_logits, len(features), "end_logits")
    best: list[Span] = [Span("", float("-inf"), -1, -1) for _ in examples]
    for f, s_row, e_row in zip(features, starts, ends):
        n = len(f.ids)
        if len(s_row) < n or len(e_row) < n:
            raise LLMKitError(f"logits have {min(len(s_row), len(e_row))} columns for a feature of {n} tokens")
        s_row, e_row = np.asarray(s_row[:n], dtype=np.float64), np.asarray(e_row[:n], dtype=np.float64)
        in_context = np.array([o is not None for o in f.offsets])
        # run_qa.py's candidates: the n_best top starts x the n_best top ends, best first.
        top_s = np.argsort(s_row)[-1:-n_best - 1:-1]
        top_e = np.argsort(e_row)[-1:-n_best - 1:-1]
        i, j = top_s[:, None], top_e[None, :]  # (n_best, 1), (1, n_best)
        valid = in_context[i] & in_context[j] & (j >= i) & (j - i + 1 <= max_answer_len)
        if not valid.any():
            continue
        scores = np.where(valid, s_row[i] + e_row[j], -np.inf)
        k = int(np.argmax(scores))  # row-major: the first best pair in run_qa's order
        score = float(scores.flat[k])
        if score > best[f.example].score:
            a, b = int(top_s[k // scores.shape[1]]), int(top_e[k % scores.shape[1]])
            lo, hi = f.offsets[a][0], f.offsets[b][1]
            best[f.example] = Span(examples[f.example].context[lo:hi], score, lo, hi)
    return best
