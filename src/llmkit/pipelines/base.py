"""What every pipeline shares: the loaded model and its tokenizer, the model check, call options,
batched forward passes over tokenized inputs, and decoding as `transformers` decodes.

    inputs -> items (one per input) -> encodings -> batches of `batch_size` (right-padded,
    length-sorted) -> the model's outputs per item -> the task's postprocessing -> results

A task subclasses `Pipeline`: `OPTIONS` (its call options and defaults), `check` (the head it
needs), `_items` (what one call's inputs are) and `run` (a list of items -> one result each).
"""

from __future__ import annotations

import threading
from typing import Any, Optional

import torch

from llmkit.errors import LLMKitError


def _clean_up(text: str) -> str:
    """transformers' `clean_up_tokenization` (tokenization_utils_base), for tokenizers that ask
    for it (`clean_up_tokenization_spaces` in tokenizer_config.json)."""
    return (text.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",")
            .replace(" ' ", "'").replace(" n't", "n't").replace(" 'm", "'m").replace(" 's", "'s")
            .replace(" 've", "'ve").replace(" 're", "'re"))


class Pipeline:
    """A task over one model: call it on one input or a list of inputs (see the task's class).

    `defaults` are call options fixed at construction (`pipeline("ner", m, aggregation_strategy=
    "simple")`); options given to a call override them. `run(items, **options)` is the same
    call on a list of inputs that always returns one result per input (what the CLI uses)."""

    task: str = ""
    OPTIONS: dict[str, Any] = {}

    def __init__(self, loaded, batch_size: int = 8, name: Optional[str] = None, **defaults):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise LLMKitError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.loaded = loaded
        self.model = loaded.model
        self.name = name or str(loaded.path)
        self.batch_size = batch_size
        self.check()
        self.defaults = self.options(defaults, base={})
        self._trunc_lock = threading.Lock()
        self._trunc_backend = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task={self.task!r}, model={self.name!r}, batch_size={self.batch_size})"

    # --- the model and the options ----------------------------------------------------------------
    @property
    def tokenizer(self):
        """The model folder's tokenizer (an llmkit `Tokenizer`; `.backend` is the Rust one)."""
        return self.loaded.tokenizer

    @property
    def labels(self) -> list[str]:
        return list((self.loaded.classifier or {}).get("labels") or [])

    @property
    def head(self) -> Optional[str]:
        """The model's task head ("sequence", "token", "span"), or None for a language model."""
        c = self.loaded.classifier
        return None if c is None else (c.get("head") or {}).get("task", "sequence")

    def check(self) -> None:
        """Raise LLMKitError when the model cannot do this task (overridden per task)."""

    def need_head(self, head: str, what: str) -> None:
        if self.head == head:
            return
        if self.head is None:
            kind = "causal language model" if self.model.cfg.causal else "masked language model"
            raise LLMKitError(f"{self.task} needs {what}; {self.name} is a {kind} without one")
        raise LLMKitError(f"{self.task} needs {what}; {self.name} has a {self.head} head "
                          f"(labels: {', '.join(map(str, self.labels))})")

    def options(self, given: dict, base: Optional[dict] = None) -> dict:
        """`given` checked against OPTIONS, over `base` (default: the construction defaults)."""
        unknown = sorted(set(given) - set(self.OPTIONS))
        if unknown:
            names = ", ".join(self.OPTIONS) or "none"
            raise LLMKitError(f"{self.task} has no option {', '.join(map(repr, unknown))} (options: {names})")
        return {**self.OPTIONS, **(self.defaults if base is None else base), **given}

    # --- calls -------------------------------------------------------------------------------------
    def __call__(self, inputs, **options):
        opts = self.options(options)
        items, single = self._items(inputs, opts)
        if not items:
            raise LLMKitError(f"{self.task}: no inputs given")
        results = self._run(items, opts)
        return self._shape(results, single, opts, inputs)

    def run(self, items: list, **options) -> list:
        """`[self(item, **options) for item in items]`, computed in batches: each item is one
        input as `__call__` takes it, each result what that call returns."""
        opts = self.options(options)
        parsed = []
        for item in items:
            one, single = self._items(item, opts)
            if not single:
                raise LLMKitError(f"{self.task}: expected one input per item, got {item!r}")
            parsed.append(one[0])
        results = self._run(parsed, opts) if parsed else []
        return [self._shape([r], True, opts, item) for r, item in zip(results, items)]

    def _items(self, inputs, opts: dict) -> tuple[list, bool]:
        """(items, single): a text, or a list of texts (overridden where inputs are richer)."""
        if isinstance(inputs, str):
            return [inputs], True
        if isinstance(inputs, (list, tuple)) and all(isinstance(t, str) for t in inputs):
            return list(inputs), False
        raise LLMKitError(f"{self.task} takes a text or a list of texts, got {type(inputs).__name__}")

    def _run(self, items: list, opts: dict) -> list:
        raise NotImplementedError

    def _shape(self, results: list, single: bool, opts: dict, inputs):
        """What a call returns for `inputs` given its results (one per item)."""
        return results[0] if single else results

    # --- tokens ------------------------------------------------------------------------------------
    @property
    def max_length(self) -> int:
        """The longest input the model reads: its context, or the tokenizer's model_max_length
        when that is shorter."""
        n = self.model.max_seq_len
        m = self.tokenizer.config.get("model_max_length")
        if isinstance(m, int) and not isinstance(m, bool) and 0 < m < n:
            n = m
        return n

    def encode(self, text, pair=None, *, truncate: Optional[int] = None, strategy: str = "longest_first",
               is_pretokenized: bool = False):
        """An `Encoded` of `text` (and `pair`) with the template's special tokens, exactly as the
        transformers tokenizer's `tokenizer(text, pair, return_offsets_mapping=True)`; cut to
        `truncate` tokens with transformers' truncation `strategy` ("longest_first",
        "only_first", "only_second") when it is longer."""
        from llmkit.tokenizer import Encoded

        backend = self.tokenizer.backend
        whole = backend.encode(text, pair, is_pretokenized=is_pretokenized, add_special_tokens=True)
        if truncate is None or len(whole) <= truncate:
            return Encoded.from_backend(whole)
        with self._trunc_lock:
            if self._trunc_backend is None:  # a private copy: truncation is state on the Rust object
                from tokenizers import Tokenizer as Backend

                self._trunc_backend = Backend.from_str(backend.to_str())
                self._trunc_backend.no_padding()
            try:
                self._trunc_backend.enable_truncation(truncate, strategy=strategy)
                cut = self._trunc_backend.encode(text, pair, is_pretokenized=is_pretokenized, add_special_tokens=True)
            except Exception:  # the sequence to cut is too short: keep it whole, as transformers does
                return Encoded.from_backend(whole)
        return Encoded.from_backend(cut)

    def check_length(self, encodings) -> None:
        limit = self.model.max_seq_len
        for e in encodings:
            if len(e) > limit:
                raise LLMKitError(f"{self.task}: an input is {len(e)} tokens; {self.name} reads at most {limit} "
                                  f"(truncation=True cuts longer inputs)")

    def decode(self, ids, skip_special: bool = False, clean_up: Optional[bool] = None) -> str:
        """`tokenizer.decode(ids, skip_special_tokens=skip_special)` as transformers computes it:
        the backend's decoder, then `clean_up_tokenization_spaces` when the tokenizer config
        (or `clean_up`) asks for it and the model is not a BPE."""
        backend = self.tokenizer.backend
        text = backend.decode([int(i) for i in ids], skip_special_tokens=skip_special)
        if clean_up is None:
            clean_up = bool(self.tokenizer.config.get("clean_up_tokenization_spaces", False))
        if clean_up and type(backend.model).__name__ != "BPE":
            text = _clean_up(text)
        return text

    def tokens_to_string(self, tokens: list[str]) -> str:
        """transformers' `convert_tokens_to_string`: the backend's decoder over token strings."""
        decoder = self.tokenizer.backend.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)

    # --- the model ---------------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, encodings, hidden: bool = False) -> list:
        """The model's outputs per encoding (float32, on the CPU), in `batch_size` batches of
        similar lengths, right-padded: (N,) for a sequence head, (T, ...) per token otherwise,
        T the encoding's own length. `hidden`: the final hidden states (T, d) instead."""
        self.check_length(encodings)
        device = self.model.embed.weight.device
        pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0
        types_used = self.model.cfg.type_vocab_size > 1
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i]))
        out: list = [None] * len(encodings)
        for s in range(0, len(order), self.batch_size):
            chunk = order[s:s + self.batch_size]
            T = max(len(encodings[i]) for i in chunk)
            ids = torch.full((len(chunk), T), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), T), dtype=torch.long)
            types = torch.zeros((len(chunk), T), dtype=torch.long)
            for b, i in enumerate(chunk):
                e = encodings[i]
                ids[b, :len(e)] = torch.tensor(e.ids, dtype=torch.long)
                mask[b, :len(e)] = 1
                types[b, :len(e)] = torch.tensor(e.type_ids, dtype=torch.long)
            kw = {"token_type_ids": types.to(device)} if types_used else {}
            fn = self.model.hidden_states if hidden else self.model
            y = fn(ids.to(device), attention_mask=mask.to(device), **kw).float().cpu()
            for b, i in enumerate(chunk):
                out[i] = y[b, :len(encodings[i])] if y.dim() == 3 else y[b]
        return out
