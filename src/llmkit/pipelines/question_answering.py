"""question-answering: the span of a context that answers a question, from a span head (two
logits per token: the answer's start and end; BERT, Devlin et al. 2019, sec. 4.2).

    {"question": "Where does John live?", "context": "John lives in Paris."}
    -> {"score": 0.61, "start": 14, "end": 19, "answer": "Paris"}

The decoding of transformers 4's QuestionAnsweringPipeline (removed from transformers 5):

* (question, context) is encoded as the tokenizer's pair template; a context too long for
  `max_seq_len` tokens (default min(384, the model's input length)) is read in windows that
  share `doc_stride` tokens (default min(max_seq_len // 2, 128));
* per window, a softmax of the start logits and one of the end logits over the context tokens
  (and the [CLS] token, which some models use to say "no answer");
* a span's score is p(start) * p(end), for start <= end < start + `max_answer_len` (15), both
  in the context; the best `top_k` spans of each window, then the best `top_k` overall;
* the span becomes characters of the context, widened to whole words (`align_to_words`);
* `handle_impossible_answer`: also the empty answer, scored p(start=[CLS]) * p(end=[CLS]) (the
  lowest over the windows).

One answer is a dict, several (top_k > 1) a list of dicts. `max_question_len` is accepted
and unused, as in transformers with a fast tokenizer.
"""

from __future__ import annotations

import numpy as np

from llmkit.errors import LLMKitError
from llmkit.pipelines.base import Pipeline


def select_spans(start: np.ndarray, end: np.ndarray, allowed: np.ndarray, top_k: int, max_answer_len: int,
                 cls_index=None) -> tuple[list[tuple[int, int, float]], float]:
    """The best spans of one window: ([(start token, end token, score)], score of the empty
    answer). `start`/`end` are the window's logits (T,), `allowed` (T,) True at context tokens
    (and [CLS], position `cls_index`, whose probability becomes the empty answer's)."""
    start = np.where(allowed, start, -10000.0)
    end = np.where(allowed, end, -10000.0)
    start = np.exp(start - start.max())
    start = start / start.sum()
    end = np.exp(end - end.max())
    end = end / end.sum()
    null = float(start[0] * end[0])
    start[0] = end[0] = 0.0  # the first token ([CLS]) is never part of an answer
    outer = np.outer(start, end)
    candidates = np.tril(np.triu(outer), max_answer_len - 1)  # start <= end < start + max_answer_len
    flat = candidates.flatten()
    if top_k == 1:
        order = [int(np.argmax(flat))]
    elif len(flat) < top_k:
        order = list(np.argsort(-flat))
    else:
        idx = np.argpartition(-flat, top_k)[:top_k]
        order = list(idx[np.argsort(-flat[idx])])
    ok = set(np.nonzero(allowed)[0].tolist())
    spans = []
    for k in order:
        s, e = divmod(int(k), len(end))
        if s in ok and e in ok:
            spans.append((s, e, float(candidates[s, e])))
    return spans, null


class QuestionAnsweringPipeline(Pipeline):
    """Inputs: {"question", "context"} or a list of them (or `question=`/`context=` keywords,
    strings or lists of equal length)."""

    task = "question-answering"
    OPTIONS = {"top_k": 1, "doc_stride": None, "max_answer_len": 15, "max_seq_len": None, "max_question_len": 64,
               "handle_impossible_answer": False, "align_to_words": True}

    def check(self) -> None:
        self.need_head("span", "a question-answering (span) head")

    def __call__(self, inputs=None, question=None, context=None, **options):
        if inputs is None:
            if question is None or context is None:
                raise LLMKitError("question-answering needs a question and a context")
            if isinstance(question, str) and isinstance(context, str):
                inputs = {"question": question, "context": context}
            elif isinstance(question, (list, tuple)) and isinstance(context, (list, tuple)) \
                    and len(question) == len(context):
                inputs = [{"question": q, "context": c} for q, c in zip(question, context)]
            elif isinstance(question, (list, tuple)) and isinstance(context, str):
                inputs = [{"question": q, "context": context} for q in question]
            else:
                raise LLMKitError("question-answering: give as many questions as contexts")
        elif question is not None or context is not None:
            raise LLMKitError("question-answering: give inputs or question/context, not both")
        return super().__call__(inputs, **options)

    def _items(self, inputs, opts):
        def ok(x):
            return isinstance(x, dict) and isinstance(x.get("question"), str) and isinstance(x.get("context"), str)

        if ok(inputs):
            items, single = [inputs], True
        elif isinstance(inputs, (list, tuple)) and all(ok(x) for x in inputs):
            items, single = list(inputs), False
        else:
            raise LLMKitError('question-answering takes {"question": ..., "context": ...} or a list of them')
        for x in items:
            if not x["question"].strip() or not x["context"].strip():
                raise LLMKitError("question-answering: the question and the context must not be empty")
        return items, single

    def _run(self, items: list, opts: dict) -> list:
        top_k, max_answer_len = opts["top_k"], opts["max_answer_len"]
        for name, v in (("top_k", top_k), ("max_answer_len", max_answer_len)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise LLMKitError(f"question-answering: {name} must be a positive integer, got {v!r}")
        max_seq_len = opts["max_seq_len"] or min(384, self.max_length)
        if max_seq_len > self.model.max_seq_len:
            raise LLMKitError(f"max_seq_len {max_seq_len} is longer than the model's context "
                              f"({self.model.max_seq_len})")
        stride = opts["doc_stride"] if opts["doc_stride"] is not None else min(max_seq_len // 2, 128)
        if stride > max_seq_len:
            raise LLMKitError(f"doc_stride ({stride}) must not exceed max_seq_len ({max_seq_len})")
        cls_id = self.tokenizer.cls_id
        plan, windows = [], []
        for x in items:
            ws = self.tokenizer.encode_windows(x["question"], x["context"], max_length=max_seq_len, stride=stride)
            plan.append((x, len(windows), len(ws)))
            windows.extend(ws)
        outputs = self.forward(windows)
        results = []
        for x, first, n in plan:
            answers, null = [], 1000000.0
            for w in range(first, first + n):
                enc, logits = windows[w], outputs[w].numpy()
                allowed = np.array([s == 1 or (cls_id is not None and t == cls_id)
                                    for s, t in zip(enc.sequence_ids, enc.ids)])
                spans, window_null = select_spans(logits[:, 0], logits[:, 1], allowed, top_k, max_answer_len)
                null = min(null, window_null)
                for s, e, score in spans:
                    a, b = self._chars(enc, s, e, opts["align_to_words"])
                    answers.append({"score": score, "start": a, "end": b, "answer": x["context"][a:b]})
            if opts["handle_impossible_answer"]:
                answers.append({"score": null, "start": 0, "end": 0, "answer": ""})
            answers = sorted(answers, key=lambda d: d["score"], reverse=True)[:top_k]
            results.append(answers[0] if len(answers) == 1 else answers)
        return results

    @staticmethod
    def _chars(enc, s: int, e: int, align_to_words: bool) -> tuple[int, int]:
        """Character span of tokens s..e in the context: from the start of s's word to the end
        of e's word (`token_to_word` + `word_to_chars` within the window), or their offsets."""
        if align_to_words and enc.word_ids[s] is not None and enc.word_ids[e] is not None:
            def word_span(word):
                toks = [i for i, (q, w) in enumerate(zip(enc.sequence_ids, enc.word_ids)) if q == 1 and w == word]
                return enc.offsets[toks[0]][0], enc.offsets[toks[-1]][1]

            return word_span(enc.word_ids[s])[0], word_span(enc.word_ids[e])[1]
        return enc.offsets[s][0], enc.offsets[e][1]
