"""token-classification (alias ner): a label per token, or entities grouped from the labels.

    "John lives in Paris" -> [{"entity": "B-PER", "score", "index", "word", "start", "end"}, ...]
    aggregation_strategy="simple" -> [{"entity_group": "PER", "score", "word", "start", "end"}, ...]

Exactly transformers' TokenClassificationPipeline (its gather / aggregate / group steps, ported
one for one): a softmax per token over the labels, special tokens dropped, `ignore_labels`
(default ["O"]) left out, and the aggregation strategies

    none     every token with its best label (and its `index` in the encoding)
    simple   adjacent tokens with the same tag merged (B- starts a new entity, I- continues)
    first    words (a token and its ## continuations) take their first token's label, then simple
    average  words take the label of their tokens' mean scores, then simple
    max      words take the label of their most confident token, then simple

`start`/`end` are character offsets into the text; `word` is the tokens decoded. A text longer
than the model's context is cut, or, with `stride`, read in overlapping windows whose entities
are merged (the longer, then the more confident, of two overlapping ones wins).
"""

from __future__ import annotations

import numpy as np

from llmkit.errors import LLMKitError
from llmkit.pipelines.base import Pipeline

STRATEGIES = ("none", "simple", "first", "average", "max")


def _tag(name: str) -> tuple[str, str]:
    if name.startswith("B-"):
        return "B", name[2:]
    if name.startswith("I-"):
        return "I", name[2:]
    return "I", name  # a label without a B-/I- prefix continues an entity of the same label


class TokenClassificationPipeline(Pipeline):
    """Inputs: a text or a list of texts; with `is_split_into_words`, a list of words or a list
    of such lists (joined with `delimiter` for the offsets and words)."""

    task = "token-classification"
    OPTIONS = {"aggregation_strategy": "none", "ignore_labels": None, "stride": None,
               "is_split_into_words": False, "delimiter": None}

    def check(self) -> None:
        self.need_head("token", "a token-classification head")

    def _items(self, inputs, opts):
        if not opts["is_split_into_words"]:
            return super()._items(inputs, opts)
        if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(w, str) for w in inputs):
            return [list(inputs)], True
        if isinstance(inputs, (list, tuple)) and inputs and all(
                isinstance(x, (list, tuple)) and all(isinstance(w, str) for w in x) for x in inputs):
            return [list(x) for x in inputs], False
        raise LLMKitError("token-classification with is_split_into_words takes a list of words "
                          "or a list of such lists")

    def _strategy(self, opts: dict) -> str:
        s = str(opts["aggregation_strategy"] or "none").lower()
        if s not in STRATEGIES:
            raise LLMKitError(f"aggregation_strategy must be one of {', '.join(STRATEGIES)}, got {s!r}")
        return s

    def _run(self, items: list, opts: dict) -> list:
        strategy = self._strategy(opts)
        stride = opts["stride"]
        L = self.max_length
        if stride is not None:
            if not isinstance(stride, int) or isinstance(stride, bool) or stride < 0:
                raise LLMKitError(f"stride must be a non-negative integer, got {stride!r}")
            if stride >= L:
                raise LLMKitError(f"stride ({stride}) must be less than the model's input length ({L})")
            if strategy == "none":
                raise LLMKitError("stride reads the whole text in windows, which needs an aggregation_strategy "
                                  "other than 'none' (simple, first, average or max)")
        ignore = ["O"] if opts["ignore_labels"] is None else list(opts["ignore_labels"])
        words = opts["is_split_into_words"]
        delimiter = " " if opts["delimiter"] is None else opts["delimiter"]
        # Every window of every input, then one forward over all of them.
        plan, windows = [], []
        for item in items:
            ws = self.tokenizer.encode_windows(item, max_length=L, stride=stride or 0, is_pretokenized=words)
            if stride is None:
                ws = ws[:1]  # truncated, as transformers' truncation=True
            plan.append((item, len(windows), len(ws)))
            windows.extend(ws)
        logits = self.forward(windows)
        results = []
        for item, first, n in plan:
            if words:
                sentence = delimiter.join(item)
                starts, pos = [], 0
                for w in item:
                    starts.append(pos)
                    pos += len(w) + len(delimiter)
            else:
                sentence, starts = item, None
            entities = []
            for w in range(first, first + n):
                scores = _softmax(logits[w].numpy())
                pre = self._gather(sentence, windows[w], scores, strategy, starts)
                entities += [e for e in self._aggregate(pre, strategy)
                             if e.get("entity") not in ignore and e.get("entity_group") not in ignore]
            if n > 1:
                entities = _merge_overlapping(entities)
            results.append(entities)
        return results

    def _shape(self, results, single, opts, inputs):
        # transformers wraps one pre-tokenized input in a list ([words] -> [[entities]])
        if single and opts["is_split_into_words"]:
            return results
        return super()._shape(results, single, opts, inputs)

    # --- transformers' steps, one for one ------------------------------------------------------
    def _gather(self, sentence: str, enc, scores: np.ndarray, strategy: str, word_starts) -> list[dict]:
        """A dict per non-special token: its piece, scores, character span, index, and whether
        it continues a word (`gather_pre_entities`)."""
        backend = self.tokenizer.backend
        unk = self.tokenizer.special_tokens.get("unk_token")
        unk_id = backend.token_to_id(unk) if unk is not None else None
        wordpiece = bool(getattr(backend.model, "continuing_subword_prefix", None))
        pre = []
        for idx, token_scores in enumerate(scores):
            if enc.sequence_ids[idx] is None:  # special tokens of the template
                continue
            word = backend.id_to_token(enc.ids[idx])
            start, end = enc.offsets[idx]
            if word_starts is not None and enc.word_ids[idx] is not None:
                start += word_starts[enc.word_ids[idx]]
                end += word_starts[enc.word_ids[idx]]
            ref = sentence[start:end]
            if wordpiece:
                is_subword = len(word) != len(ref)
            else:
                is_subword = start > 0 and " " not in sentence[start - 1:start + 1]
            if enc.ids[idx] == unk_id:
                word, is_subword = ref, False
            pre.append({"word": word, "scores": token_scores, "start": start, "end": end, "index": idx,
                        "is_subword": is_subword})
        return pre

    def _aggregate(self, pre: list[dict], strategy: str) -> list[dict]:
        labels = self.labels
        if strategy in ("none", "simple"):
            entities = []
            for p in pre:
                i = int(p["scores"].argmax())
                entities.append({"entity": labels[i], "score": float(p["scores"][i]), "index": p["index"],
                                 "word": p["word"], "start": p["start"], "end": p["end"]})
        else:
            entities = self._aggregate_words(pre, strategy)
        return entities if strategy == "none" else self._group(entities)

    def _aggregate_word(self, tokens: list[dict], strategy: str) -> dict:
        labels = self.labels
        word = self.tokens_to_string([t["word"] for t in tokens])
        if strategy == "first":
            scores = tokens[0]["scores"]
        elif strategy == "max":
            scores = max(tokens, key=lambda t: t["scores"].max())["scores"]
        else:  # average
            scores = np.nanmean(np.stack([t["scores"] for t in tokens]), axis=0)
        i = int(scores.argmax())
        return {"entity": labels[i], "score": float(scores[i]), "word": word, "start": tokens[0]["start"],
                "end": tokens[-1]["end"]}

    def _aggregate_words(self, pre: list[dict], strategy: str) -> list[dict]:
        out, group = [], None
        for p in pre:
            if group is None:
                group = [p]
            elif p["is_subword"]:
                group.append(p)
            else:
                out.append(self._aggregate_word(group, strategy))
                group = [p]
        if group is not None:
            out.append(self._aggregate_word(group, strategy))
        return out

    def _group_sub_entities(self, entities: list[dict]) -> dict:
        return {"entity_group": entities[0]["entity"].split("-", 1)[-1],
                "score": float(np.mean(np.nanmean([e["score"] for e in entities]))),
                "word": self.tokens_to_string([e["word"] for e in entities]),
                "start": entities[0]["start"], "end": entities[-1]["end"]}

    def _group(self, entities: list[dict]) -> list[dict]:
        groups, current = [], []
        for e in entities:
            if not current:
                current.append(e)
                continue
            bi, tag = _tag(e["entity"])
            _, last_tag = _tag(current[-1]["entity"])
            if tag == last_tag and bi != "B":
                current.append(e)
            else:
                groups.append(self._group_sub_entities(current))
                current = [e]
        if current:
            groups.append(self._group_sub_entities(current))
        return groups


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _merge_overlapping(entities: list[dict]) -> list[dict]:
    """Entities of overlapping windows: of two that overlap, the longer (then the more
    confident) stays (`aggregate_overlapping_entities`)."""
    if not entities:
        return entities
    entities = sorted(entities, key=lambda e: e["start"])
    out, prev = [], entities[0]
    for e in entities:
        if prev["start"] <= e["start"] < prev["end"]:
            n, m = e["end"] - e["start"], prev["end"] - prev["start"]
            if n > m or (n == m and e["score"] > prev["score"]):
                prev = e
        else:
            out.append(prev)
            prev = e
    out.append(prev)
    return out
