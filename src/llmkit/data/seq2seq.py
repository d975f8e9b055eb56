"""(source, target) records for encoder-decoder finetuning (T5, BART): read, tokenize, truncate,
batch.

Records come from a JSON array, JSON Lines (both read by `llmkit.data.read_records`, the reader
of the instruction and preference sets) or a CSV/TSV table with a header row (read by
`llmkit.data.tables.read_table`, the classifier's reader). The two fields are named with
`source_field` / `target_field`, or found in the first record among the common names
(`FIELD_PAIRS`, first match wins):

    source/target (SciTLDR), src/tgt, input/output, document|article|text|dialogue ->
    summary|tldr|highlights, en/de (NTREX, FLORES), and Alpaca records: instruction (+ input)
    -> output, the source being `instruction + "\\n\\n" + input` when the input is non-empty
    (`instruct.alpaca_user_message`, the same user turn the instruction recipe builds).

A value is a string or a list of strings. A list *source* is joined with single spaces (SciTLDR
stores an abstract as its sentences); a list *target* is several references: training takes the
first (`load_pairs`), evaluation keeps them all (`load_references`), as SciTLDR's README says.
Every problem is a one-line LLMKitError naming the file, the record (line) and the field.
`prefix` is T5's task prefix ("summarize: ", "translate English to German: ", Raffel et al.
2020, sec. 2.4), prepended to every source.

Tokenizing (`Seq2SeqExamples`): the source and the target are each encoded with the tokenizer's
own specials (`Tokenizer.encode`: none for T5, `<s> ... </s>` for BART's template), then made to
end with EOS exactly once: T5's tokenizer appends `</s>` to both in HF (`tokenizer(text)`,
`tokenizer(text_target=...)`), and a target must end with EOS for the model to learn to stop.
Truncation cuts the text and keeps the EOS last, as HF's tokenizer truncates before adding its
specials, so ids equal `tokenizer(text, max_length=L, truncation=True)["input_ids"]`.

Batches (`collate_seq2seq`), right-padded, the one dict contract of every encoder-decoder batch
(span-corruption pretraining included):

    src       (B, S) long  encoder ids, pad_id after the end
    src_mask  (B, S) long  1 on real tokens, 0 on padding
    idx       (B, T) long  decoder inputs: the labels shifted right, decoder_start_id first
    labels    (B, T) long  target ids, -100 on padding

`idx` is exactly HF's `shift_tokens_right(labels, pad_id, decoder_start_id)` (modeling_t5 /
modeling_bart): `idx[:, 0] = decoder_start_id`, `idx[:, 1:] = labels[:, :-1]` with -100 read as
pad (teacher forcing: position t sees target tokens < t and predicts token t). The decoder
start is the pad id for T5 and `</s>` for BART (its `decoder_start_token_id`). The loss is
`cross_entropy(model(idx, src=src, src_mask=src_mask).flatten(0, 1), labels.flatten(),
ignore_index=-100)`. The decoder needs no padding mask: its attention is causal and the padding
comes after every real target token.

Training batches (`Seq2SeqBatches`) are `data.batches.ShuffledBatches`, the instruction
recipe's sampler: a new permutation each epoch from (seed, epoch), resumable exactly from
`state_dict()`. Validation batches (`eval_batches`) are grouped by length, as instruct's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional, Sequence

import torch

from llmkit.data.batches import ShuffledBatches
from llmkit.errors import LLMKitError
from llmkit.training.losses import IGNORE_INDEX

if TYPE_CHECKING:
    from llmkit.tokenizer import Tokenizer

# Auto-detected (source, target) field names, tried in this order on the first record.
FIELD_PAIRS: tuple[tuple[str, str], ...] = (
    ("source", "target"), ("src", "tgt"), ("input", "output"),
    *((doc, summ) for summ in ("summary", "tldr", "highlights") for doc in ("document", "article", "text", "dialogue")),
    ("en", "de"),
)
ALPACA = "alpaca"  # the "fields" of an Alpaca record: instruction (+ input) -> output
TABLE_SUFFIXES = (".csv", ".tsv", ".tab")
TRUNCATION = ("truncate", "drop")


# --- records -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Seq2SeqRecord:
    """One record: the source text (prefix included) and its reference targets (at least one)."""

    source: str
    targets: tuple[str, ...]
    where: str  # "FILE: line N" / "FILE: record N", for error messages

    @property
    def target(self) -> str:
        """The target trained on: the first reference."""
        return self.targets[0]


def _read(path: str | Path) -> list[tuple[str, Any]]:
    """(where, record) pairs: a CSV/TSV table through the classifier's reader (its rows as
    {column: text}), anything else through the JSON / JSON Lines reader."""
    from llmkit.data import read_records

    p = Path(path).expanduser()
    if p.suffix.lower() in TABLE_SUFFIXES:
        from llmkit.data.tables import read_table

        header, rows = read_table(p)
        return [(f"{path}: line {n}", dict(zip(header, r))) for n, r in rows]
    return read_records(p)


def _keys(record: Mapping) -> str:
    return ", ".join(sorted(map(str, record))) or "none"


def detect_fields(record: Any, where: str, source_field: Optional[str] = None,
                  target_field: Optional[str] = None) -> tuple[str, str]:
    """(source field, target field) of a record: the given names, else the first of
    `FIELD_PAIRS` that fits them and the record's keys; ("alpaca", "output") for an Alpaca
    record when neither is given."""
    if not isinstance(record, Mapping):
        raise LLMKitError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if source_field is not None and target_field is not None:
        return source_field, target_field
    if source_field is None and target_field in (None, "output") and "instruction" in record:
        return ALPACA, "output"
    for src, tgt in FIELD_PAIRS:
        if source_field not in (None, src) or target_field not in (None, tgt):
            continue
        if src in record and tgt in record:
            return src, tgt
    given = " and ".join(f"{k} '{v}'" for k, v in (("source_field", source_field), ("target_field", target_field))
                         if v is not None)
    known = ", ".join(f"{s}/{t}" for s, t in FIELD_PAIRS)
    raise LLMKitError(f"{where}: cannot tell which fields are the source and the target"
                      f"{' for ' + given if given else ''} (record keys: {_keys(record)}); name both with "
                      f"source_field and target_field (recognised: {known}, Alpaca instruction/input/output)")


def _texts(record: Mapping, key: str, where: str, what: str) -> list[str]:
    """The value of `key` as a non-empty list of strings (a string is a list of one)."""
    if key not in record or record[key] is None:
        raise LLMKitError(f"{where}: missing {what} field '{key}' (record keys: {_keys(record)})")
    value = record[key]
    values = [value] if isinstance(value, str) else value if isinstance(value, list) else None
    if values is None or not all(isinstance(v, str) for v in values):
        bad = value if values is None else next(v for v in values if not isinstance(v, str))
        raise LLMKitError(f"{where}: {what} field '{key}' must be a string or a list of strings, got {type(bad).__name__}")
    if not any(v.strip() for v in values):
        raise LLMKitError(f"{where}: empty {what} field '{key}'")
    return values


def parse_pair(record: Any, where: str, source_field: str, target_field: str, prefix: str = "") -> Seq2SeqRecord:
    """A `Seq2SeqRecord` from one record with known fields (`detect_fields`)."""
    from llmkit.data.instruct import alpaca_user_message

    if not isinstance(record, Mapping):
        raise LLMKitError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if source_field == ALPACA:
        instruction = _texts(record, "instruction", where, "source")
        inp = record.get("input")
        for key, value in (("instruction", record["instruction"]), ("input", inp)):
            if value is not None and not isinstance(value, str):
                raise LLMKitError(f"{where}: source field '{key}' must be a string, got {type(value).__name__}")
        source = alpaca_user_message(instruction[0], inp or "")
    else:
        # A list source is one text in pieces (SciTLDR's sentences): joined with single spaces.
        source = " ".join(s.strip() for s in _texts(record, source_field, where, "source") if s.strip())
    targets = _texts(record, target_field, where, "target")
    if isinstance(record[target_field], list):  # several references; an empty one among them is dropped
        targets = [t.strip() for t in targets if t.strip()]
    return Seq2SeqRecord(prefix + source, tuple(targets), where)


def read_seq2seq(path: str | Path, source_field: Optional[str] = None, target_field: Optional[str] = None,
                 prefix: str = "") -> list[Seq2SeqRecord]:
    """Every record of a JSON / JSONL / CSV / TSV file as a `Seq2SeqRecord` (see the module
    docstring for the fields). The fields are detected on the first record and required of all."""
    records = _read(path)
    if not records:
        raise LLMKitError(f"{path}: no records")
    src, tgt = detect_fields(records[0][1], records[0][0], source_field, target_field)
    return [parse_pair(r, where, src, tgt, prefix) for where, r in records]


def load_pairs(path: str | Path, source_field: Optional[str] = None, target_field: Optional[str] = None,
               prefix: str = "") -> list[tuple[str, str]]:
    """(source, target) training pairs: the first target of each record."""
    return [(r.source, r.target) for r in read_seq2seq(path, source_field, target_field, prefix)]


def load_references(path: str | Path, source_field: Optional[str] = None, target_field: Optional[str] = None,
                    prefix: str = "") -> tuple[list[str], list[list[str]]]:
    """(sources, references) for evaluation: every target of each record, in the form
    `rouge_scores` / `sacrebleu_scores` take (one list of references per source)."""
    records = read_seq2seq(path, source_field, target_field, prefix)
    return [r.source for r in records], [list(r.targets) for r in records]


# --- tokens ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Seq2SeqExample:
    """A tokenized pair: `src` and `tgt` each end with EOS exactly once."""

    src: list[int]
    tgt: list[int]
    src_truncated: bool = False
    tgt_truncated: bool = False

    def __len__(self) -> int:
        return len(self.src) + len(self.tgt)


@dataclass
class Seq2SeqStats:
    examples: int = 0
    truncated_sources: int = 0
    truncated_targets: int = 0
    dropped: int = 0
    source_tokens: int = 0
    target_tokens: int = 0
    longest_source: int = 0  # before truncation
    longest_target: int = 0

    def line(self, name: str) -> str:
        return (f"{name}: {self.examples:,} pairs, {self.source_tokens:,} source + {self.target_tokens:,} target "
                f"tokens, longest {self.longest_source} / {self.longest_target}; {self.truncated_sources} sources "
                f"and {self.truncated_targets} targets truncated, {self.dropped} dropped")


def end_with_eos(ids: list[int], eos_id: int, max_len: Optional[int] = None) -> tuple[list[int], bool]:
    """(ids ending with exactly one EOS, whether they were cut to `max_len`): trailing EOS ids
    are dropped (a text ending in "</s>", a template that appends it), then one is appended
    after at most `max_len - 1` tokens."""
    n = len(ids)
    while n and ids[n - 1] == eos_id:
        n -= 1
    cut = max_len is not None and n + 1 > max_len
    keep = min(n, max_len - 1) if max_len is not None else n
    return list(ids[:keep]) + [eos_id], cut


class Seq2SeqExamples(Sequence[Seq2SeqExample]):
    """Tokenized (source, target) pairs, each at most `max_source_len` / `max_target_len` tokens
    (EOS included): "truncate" cuts the end and keeps the EOS, "drop" leaves out a pair with a
    side too long. `stats` counts what was truncated or dropped."""

    def __init__(self, pairs: Sequence[tuple[str, str]] | Sequence[Seq2SeqRecord], tokenizer: "Tokenizer",
                 max_source_len: int = 512, max_target_len: int = 128, truncation: str = "truncate"):
        if truncation not in TRUNCATION:
            raise LLMKitError(f"truncation must be one of {', '.join(TRUNCATION)}, got '{truncation}'")
        for name, value in (("max_source_len", max_source_len), ("max_target_len", max_target_len)):
            if value < 2:
                raise LLMKitError(f"{name} must be >= 2 (a token and the EOS), got {value}")
        eos = tokenizer.eos_id
        if eos is None:
            raise LLMKitError("the tokenizer has no EOS token, and seq2seq targets must end with one "
                              "(set eos_token in tokenizer_config.json)")
        pairs = [(p.source, p.target) if isinstance(p, Seq2SeqRecord) else tuple(p) for p in pairs]
        sources = tokenizer.encode_batch([s for s, _ in pairs])
        targets = tokenizer.encode_batch([t for _, t in pairs])
        self.max_source_len, self.max_target_len = max_source_len, max_target_len
        self.examples: list[Seq2SeqExample] = []
        st = self.stats = Seq2SeqStats()
        for s_ids, t_ids in zip(sources, targets):
            src, _ = end_with_eos(s_ids, eos)
            tgt, _ = end_with_eos(t_ids, eos)
            st.longest_source, st.longest_target = max(st.longest_source, len(src)), max(st.longest_target, len(tgt))
            s_cut, t_cut = len(src) > max_source_len, len(tgt) > max_target_len
            src = src[:max_source_len - 1] + [eos] if s_cut else src  # the EOS stays last
            tgt = tgt[:max_target_len - 1] + [eos] if t_cut else tgt
            if (s_cut or t_cut) and truncation == "drop":
                st.dropped += 1
                continue
            st.truncated_sources += s_cut
            st.truncated_targets += t_cut
            self.examples.append(Seq2SeqExample(src, tgt, s_cut, t_cut))
            st.examples += 1
            st.source_tokens += len(src)
            st.target_tokens += len(tgt)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i):  # type: ignore[override]
        return self.examples[i]


# --- batches -----------------------------------------------------------------------------------
def collate_seq2seq(examples: Sequence[Seq2SeqExample], pad_id: int, decoder_start_id: int) -> dict[str, torch.Tensor]:
    """{"src", "src_mask", "idx", "labels"} of right-padded examples (see the module docstring)."""
    if not examples:
        raise LLMKitError("no examples to batch")
    B = len(examples)
    S = max(len(e.src) for e in examples)
    T = max(len(e.tgt) for e in examples)
    src = torch.full((B, S), pad_id, dtype=torch.long)
    src_mask = torch.zeros((B, S), dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    for b, e in enumerate(examples):
        src[b, :len(e.src)] = torch.tensor(e.src, dtype=torch.long)
        src_mask[b, :len(e.src)] = 1
        labels[b, :len(e.tgt)] = torch.tensor(e.tgt, dtype=torch.long)
    # HF's shift_tokens_right: start token, then the labels shifted one right, -100 -> pad.
    idx = torch.empty_like(labels)  # (B, T)
    idx[:, 0] = decoder_start_id
    idx[:, 1:] = labels[:, :-1]
    idx.masked_fill_(idx == IGNORE_INDEX, pad_id)
    return {"src": src, "src_mask": src_mask, "idx": idx, "labels": labels}


class Seq2SeqBatches:
    """Endless shuffled training batches (dicts from `collate_seq2seq`), resumable exactly: a new
    permutation each epoch from (seed, epoch), the position in `state_dict()`, as
    `instruct.InstructBatches` (the same `ShuffledBatches` sampler)."""

    def __init__(self, examples: Sequence[Seq2SeqExample], batch_size: int, pad_id: int, decoder_start_id: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        if not examples:
            raise LLMKitError("no training pairs left (all were dropped: see the truncation counts)")
        self.examples = list(examples)
        self.pad_id, self.decoder_start_id = pad_id, decoder_start_id
        self.sampler = ShuffledBatches(len(self.examples), batch_size, self._collate, seed=seed, rank=rank,
                                       world_size=world_size)
        self.fingerprint = int(sum(len(e) for e in self.examples))  # a resumed run must see the same data

    def _collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return collate_seq2seq([self.examples[i] for i in indices], self.pad_id, self.decoder_start_id)

    @property
    def steps_per_epoch(self) -> int:
        """Micro-batches (per process) that make one pass over the pairs."""
        s = self.sampler
        return max(1, -(-s.n // (s.batch_size * s.world_size)))

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        return next(self.sampler)

    def state_dict(self) -> dict:
        return {**self.sampler.state_dict(), "tokens": self.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        if "tokens" in state and state["tokens"] != self.fingerprint:
            raise LLMKitError(f"cannot resume: the checkpoint's data position is for tokens={state['tokens']}, this "
                              f"run has {self.fingerprint} (data, prefix or max lengths changed)")
        self.sampler.load_state_dict(state)


def eval_batches(examples: Sequence[Seq2SeqExample], batch_size: int, pad_id: int, decoder_start_id: int,
                 max_batches: Optional[int] = None) -> list[dict[str, torch.Tensor]]:
    """Validation batches over the first `max_batches * batch_size` pairs, grouped by length
    (less padding; a token-weighted loss does not depend on the grouping)."""
    chosen = list(examples)[: max_batches * batch_size] if max_batches else list(examples)
    chosen.sort(key=lambda e: (len(e.src), len(e.tgt)))
    return [collate_seq2seq(chosen[i:i + batch_size], pad_id, decoder_start_id)
            for i in range(0, len(chosen), batch_size)]
