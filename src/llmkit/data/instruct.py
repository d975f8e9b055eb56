"""Instruction data for supervised finetuning: read, render with a prompt style, tokenize, mask,
batch.

Records (a JSON array, or JSON Lines: one object per line):

* Alpaca: `{"instruction": str, "input": str (optional), "output": str}` (Taori et al. 2023);
* chat: `{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}` (OpenAI's
  finetuning format), optionally with `"system": str` instead of a leading system message.
  The conversation ends with an assistant turn; every assistant turn is trained on.

Rendering (`render_example`) turns a conversation into text *segments*, each either prompt
(no loss) or response (loss): the conversation is rendered prefix by prefix with the prompt
style (`style.render(messages[:k], add_generation_prompt=True)` is the text up to where reply k
begins, `style.render(messages[:k+1], add_generation_prompt=False)` the text through it), so
any style, the model's own Jinja chat template included, gives exact turn boundaries without a
per-style table. A reply is trained through its end-of-turn marker (`<|im_end|>`, `<|eot_id|>`,
`</s>`, ...) so the model learns to stop; a style without one (alpaca, plain) gets the
tokenizer's EOS appended to each reply instead. Whitespace the template puts after a reply
belongs to the next prompt.

Segments are tokenized one by one and concatenated (`encode_example`), as at inference, where
the prompt is encoded alone and the reply is generated token by token; encoding the joined
text instead can merge tokens across the prompt/reply boundary and shift the mask by one.

`labels[i]` is the target *for token i itself* (`IGNORE_INDEX` where no loss), so a training
pair is `x = ids[:-1], y = labels[1:]`.

Packing (`pack`) concatenates the encoded examples (in a seeded shuffled order) into one token
stream cut into rows of exactly `seq_len` inputs, like pretraining windows: no padding, labels
still masked per example. Attention crosses example boundaries inside a row, as in TRL's
ConstantLengthDataset and litgpt's packed SFT; the EOS between examples marks the boundary.
(Isolating examples would need a block-diagonal attention mask that model.forward does not
take.) An example may continue in the next row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch

from llmkit.data.batches import ShuffledBatches
from llmkit.errors import LLMKitError
from llmkit.training.losses import IGNORE_INDEX

if TYPE_CHECKING:
    from llmkit.prompts import PromptStyle
    from llmkit.tokenizer import Tokenizer

ROLES = ("system", "user", "assistant")
TRUNCATION = ("truncate", "drop")


# --- records -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Example:
    """One training conversation: optional system message, then user/assistant turns, ending
    with an assistant reply."""

    messages: tuple  # ({"role", "content"}, ...)
    where: str  # "file: record N" / "file: line N", for error messages
    alpaca: Optional[tuple[str, str]] = None  # (instruction, input) for an Alpaca record

    @property
    def reference(self) -> str:
        """The last reply (the answer a generation is compared with)."""
        return self.messages[-1]["content"]

    @property
    def prompt(self) -> str:
        """The last user message (the question the last reply answers)."""
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "user")

    @property
    def context(self) -> tuple:
        """The messages before the last reply (what a model is asked to continue)."""
        return self.messages[:-1]


def alpaca_user_message(instruction: str, input: str = "") -> str:
    """The user turn of an Alpaca record for a chat style: the instruction, then the input."""
    return instruction + (f"\n\n{input}" if input.strip() else "")


def _str_field(record: Mapping, key: str, where: str, required: bool = True) -> str:
    value = record.get(key)
    if value is None and not required:
        return ""
    if key not in record and required:
        raise LLMKitError(f"{where}: missing field '{key}' (record keys: {', '.join(sorted(record)) or 'none'})")
    if not isinstance(value, str):
        raise LLMKitError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
    return value


def parse_record(record: Any, where: str) -> Example:
    """An `Example` from one Alpaca or chat record; a one-line LLMKitError naming `where` if
    the record is malformed."""
    if not isinstance(record, Mapping):
        raise LLMKitError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        return _parse_chat(record, where)
    if "instruction" in record or "output" in record:
        instruction = _str_field(record, "instruction", where)
        output = _str_field(record, "output", where)
        inp = _str_field(record, "input", where, required=False)
        if not instruction.strip():
            raise LLMKitError(f"{where}: empty 'instruction'")
        system = _str_field(record, "system", where, required=False)
        msgs = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": alpaca_user_message(instruction, inp)},
            {"role": "assistant", "content": output}]
        return Example(tuple(msgs), where, None if system else (instruction, inp))
    raise LLMKitError(f"{where}: missing fields: expected Alpaca 'instruction' and 'output', or chat 'messages' "
                      f"(record keys: {', '.join(sorted(record)) or 'none'})")


def _parse_chat(record: Mapping, where: str) -> Example:
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise LLMKitError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects")
    out = []
    system = _str_field(record, "system", where, required=False)
    if system:
        out.append({"role": "system", "content": system})
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise LLMKitError(f"{where}: message {i} must be an object, got {type(m).__name__}")
        for key in ("role", "content"):
            if key not in m:
                raise LLMKitError(f"{where}: message {i} is missing '{key}'")
        if m["role"] not in ROLES:
            raise LLMKitError(f"{where}: message {i} has unknown role {m['role']!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise LLMKitError(f"{where}: message {i}: 'content' must be a string, got {type(m['content']).__name__}")
        if m["role"] == "system" and out:
            raise LLMKitError(f"{where}: message {i}: a system message may only come first"
                              + (" (the record also has a 'system' field)" if system else ""))
        out.append({"role": m["role"], "content": m["content"]})
    turns = [m for m in out if m["role"] != "system"]
    if not turns or turns[0]["role"] != "user":
        raise LLMKitError(f"{where}: the conversation must start with a user message (after an optional system one)")
    if out[-1]["role"] != "assistant":
        raise LLMKitError(f"{where}: the last message must be the assistant's (the reply to train on)")
    return Example(tuple(out), where)


def load_examples(path: str | Path) -> list[Example]:
    """Read a JSON array or JSON Lines file of Alpaca or chat records."""
    from llmkit.data import read_records

    examples = [parse_record(r, where) for where, r in read_records(path)]
    if not examples:
        raise LLMKitError(f"{path}: no records")
    return examples


def split_examples(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, val): a seeded random `fraction` of the examples (at least one when the fraction
    is > 0) held out for validation."""
    if not 0.0 <= fraction < 1.0:
        raise LLMKitError(f"val_fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return list(examples), []
    n_val = max(1, round(len(examples) * fraction))
    if n_val >= len(examples):
        raise LLMKitError(f"{len(examples)} examples are too few to hold out {fraction:.0%} for validation; "
                          "give more data, a smaller --val_fraction or --val_data")
    order = np.random.default_rng(seed).permutation(len(examples))
    val = set(order[:n_val].tolist())
    return ([e for i, e in enumerate(examples) if i not in val], [e for i, e in enumerate(examples) if i in val])


def _end_markers(style: "PromptStyle", tokenizer: "Tokenizer") -> list[str]:
    """Strings that end an assistant turn in `style`'s rendering: its stop strings that are not
    turn headers (alpaca's "### Instruction:" starts the next turn; it does not end a reply)."""
    from llmkit.prompts import Alpaca

    marks = [] if isinstance(style, Alpaca) else list(style.stop_strings)
    eos = tokenizer.special_tokens.get("eos_token")
    if eos and style.writes_special_tokens:  # a template may end turns with the EOS string itself
        marks.append(eos)
    return [m for m in marks if m]


@dataclass
class Segment:
    text: str
    trained: bool  # a reply (loss) or prompt text (no loss)
    eos: bool = False  # append the tokenizer's EOS id after the text (replies of styles without an end marker)


def render_example(messages: Sequence[Mapping[str, str]] | Example, style: "PromptStyle",
                   tokenizer: "Tokenizer") -> list[Segment]:
    """The conversation as prompt/reply text segments in `style` (see the module docstring).

    Concatenated, the segments' text is the style's rendering of the whole conversation (minus
    whitespace after the last reply). An `Example` from an Alpaca record rendered in the alpaca
    style uses Alpaca's own two templates (with and without input)."""
    from llmkit.prompts import Alpaca, alpaca_prompt

    if isinstance(messages, Example):
        ex = messages
        if ex.alpaca is not None and isinstance(style, Alpaca):
            return [Segment(alpaca_prompt(*ex.alpaca), False), Segment(ex.reference, True, eos=True)]
        messages, where = ex.messages, ex.where
    else:
        where = "conversation"
    msgs = [dict(m) for m in messages]
    marks = _end_markers(style, tokenizer)
    segments: list[Segment] = []
    done = ""  # text covered by the segments so far
    for k, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before = style.render(msgs[:k], add_generation_prompt=True)
        through = style.render(msgs[:k + 1], add_generation_prompt=False)
        if not before.startswith(done) or not through.startswith(before):
            raise LLMKitError(f"{where}: the prompt style {style.name!r} does not render this conversation turn by "
                              f"turn (the text before reply {k} changes once the reply is added), so the "
                              "replies cannot be located for the loss mask; choose another --prompt_style")
        reply = through[len(before):]
        # Train through the end-of-turn marker that follows the content (searching after the
        # content: a reply may itself mention a marker-like string).
        content = m["content"].strip()
        start = reply.find(content) + len(content) if content and content in reply else 0
        hits = [(reply.find(s, start), s) for s in marks if reply.find(s, start) >= 0]
        if hits:
            pos, s = min(hits)
            trained, eos = reply[: pos + len(s)], False
        else:
            trained, eos = reply[: len(reply.rstrip())] if reply.strip() else reply, True
        segments.append(Segment(before[len(done):], False))
        segments.append(Segment(trained, True, eos=eos))
        done = before + trained
    return [s for s in segments if s.text or s.eos]


@dataclass
class Encoded:
    """A tokenized example: `labels[i]` is the target for `ids[i]` (IGNORE_INDEX: no loss)."""

    ids: list[int]
    labels: list[int]
    prompt_len: int  # tokens before the last reply: ids[:prompt_len] is the generation prompt
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_trained(self) -> int:
        """Tokens that carry loss (the first token never does: nothing predicts it)."""
        return sum(1 for y in self.labels[1:] if y != IGNORE_INDEX)


def encode_segments(segments: Sequence[Segment], style: "PromptStyle", tokenizer: "Tokenizer",
                    mask_prompt: bool = True) -> Encoded:
    """Token ids and labels of rendered segments. BOS as the tokenizer adds it, unless the
    style writes its special tokens itself (chat templates)."""
    ids: list[int] = []
    labels: list[int] = []
    prompt_len = 0
    for i, seg in enumerate(segments):
        bos = (False if style.writes_special_tokens else None) if i == 0 else False
        toks = tokenizer.encode(seg.text, bos=bos)
        if seg.eos:
            if tokenizer.eos_id is None:
                raise LLMKitError(f"the prompt style {style.name!r} ends replies with the tokenizer's EOS, but the "
                                  "tokenizer has none (set eos_token in tokenizer_config.json)")
            toks = toks + [tokenizer.eos_id]
        if seg.trained:
            prompt_len = len(ids)
        ids += toks
        labels += toks if (seg.trained or not mask_prompt) else [IGNORE_INDEX] * len(toks)
    return Encoded(ids, labels, prompt_len)


def encode_example(example: Example | Sequence[Mapping[str, str]], style: "PromptStyle", tokenizer: "Tokenizer",
                   mask_prompt: bool = True) -> Encoded:
    """`render_example` + `encode_segments`: ids and labels (replies only when `mask_prompt`)."""
    return encode_segments(render_example(example, style, tokenizer), style, tokenizer, mask_prompt)


def encode_prompt(messages: Sequence[Mapping[str, str]] | Example, style: "PromptStyle",
                  tokenizer: "Tokenizer") -> list[int]:
    """Ids of the generation prompt for an example's last reply (the context it was trained
    with, token for token), or for a conversation ending with a user turn."""
    if isinstance(messages, Example) or (messages and messages[-1]["role"] == "assistant"):
        enc = encode_example(messages, style, tokenizer)
        return enc.ids[: enc.prompt_len]
    return style.encode(tokenizer, list(messages), add_generation_prompt=True)


@dataclass
class EncodeStats:
    examples: int = 0
    truncated: int = 0
    dropped: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    longest: int = 0

    def line(self, name: str) -> str:
        return (f"{name}: {self.examples:,} examples, {self.tokens:,} tokens ({self.trained_tokens:,} trained), "
                f"longest {self.longest}; {self.truncated} truncated, {self.dropped} dropped")


def encode_all(examples: Sequence[Example], style: "PromptStyle", tokenizer: "Tokenizer", max_len: int,
               mask_prompt: bool = True, truncation: str = "truncate") -> tuple[list[Encoded], EncodeStats]:
    """Encode examples, keeping each at most `max_len` tokens: "truncate" cuts the end (an
    example left with no trained token is dropped), "drop" drops an example that is too long."""
    if truncation not in TRUNCATION:
        raise LLMKitError(f"truncation must be one of {', '.join(TRUNCATION)}, got '{truncation}'")
    out, st = [], EncodeStats()
    for ex in examples:
        enc = encode_example(ex, style, tokenizer, mask_prompt)
        st.longest = max(st.longest, len(enc))
        if len(enc) > max_len:
            if truncation == "drop":
                st.dropped += 1
                continue
            enc = Encoded(enc.ids[:max_len], enc.labels[:max_len], min(enc.prompt_len, max_len), truncated=True)
            if enc.n_trained == 0:
                st.dropped += 1
                continue
            st.truncated += 1
        elif enc.n_trained == 0:  # e.g. an empty reply in a style without an end marker or EOS
            st.dropped += 1
            continue
        out.append(enc)
        st.examples += 1
        st.tokens += len(enc)
        st.trained_tokens += enc.n_trained
    return out, st


# --- batches -----------------------------------------------------------------------------------
def collate(examples: Sequence[Encoded], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y), both (B, T): inputs ids[:-1] and targets labels[1:], right-padded to the longest
    padding has label IGNORE_INDEX. Right padding leaves every real token's
    causal context unchanged, so no attention mask is needed."""
    T = max(len(e) - 1 for e in examples)
    x = torch.full((len(examples), T), pad_id, dtype=torch.long)
    y = torch.full((len(examples), T), IGNORE_INDEX, dtype=torch.long)
    for b, e in enumerate(examples):
        n = len(e) - 1
        x[b, :n] = torch.tensor(e.ids[:-1], dtype=torch.long)
        y[b, :n] = torch.tensor(e.labels[1:], dtype=torch.long)
    return x, y


@dataclass
class Packed:
    """A packed token stream: row r is ids[r*T : r*T+T+1] (T inputs and their shifted
    targets; consecutive rows overlap by one token so every token is predicted once)."""

    ids: np.ndarray
    labels: np.ndarray
    seq_len: int

    def __len__(self) -> int:
        return max(1, -(-(len(self.ids) - 1) // self.seq_len))

    def rows(self, rows: Sequence[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of the given rows, both (B, seq_len); only the last row can be short (padded)."""
        T = self.seq_len
        x = torch.full((len(rows), T), pad_id, dtype=torch.long)
        y = torch.full((len(rows), T), IGNORE_INDEX, dtype=torch.long)
        for b, r in enumerate(rows):
            a = r * T
            chunk = self.ids[a:a + T + 1]
            n = len(chunk) - 1
            x[b, :n] = torch.from_numpy(chunk[:-1])
            y[b, :n] = torch.from_numpy(self.labels[a + 1:a + n + 1])
        return x, y


def pack(examples: Sequence[Encoded], seq_len: int, seed: int) -> Packed:
    """Concatenate the examples in a seeded shuffled order into one stream of rows of
    `seq_len` inputs (see the module docstring). Packed once; the rows are reshuffled each epoch."""
    if not examples:
        raise LLMKitError("no examples to pack")
    order = np.random.default_rng([seed, 1]).permutation(len(examples))
    ids = np.concatenate([np.asarray(examples[i].ids, dtype=np.int64) for i in order])
    labels = np.concatenate([np.asarray(examples[i].labels, dtype=np.int64) for i in order])
    return Packed(ids, labels, seq_len)


class InstructBatches:
    """Endless shuffled training batches of examples (right-padded) or packed rows, resumable
    exactly: a new permutation each epoch from (seed, epoch), the position in `state_dict()`.
    The shuffling is `data.batches.ShuffledBatches`, shared with the classifier and DPO recipes."""

    def __init__(self, examples: Sequence[Encoded], batch_size: int, pad_id: int, seed: int = 0,
                 packing: bool = False, seq_len: Optional[int] = None, rank: int = 0, world_size: int = 1):
        if not examples:
            raise LLMKitError("no training examples left (all were dropped: see the truncation counts)")
        self.pad_id, self.examples = pad_id, list(examples)
        self.packed: Optional[Packed] = None
        if packing:
            if not seq_len:
                raise LLMKitError("packing needs a sequence length")
            self.packed = pack(self.examples, seq_len, seed)
        n = len(self.packed) if self.packed is not None else len(self.examples)
        self.sampler = ShuffledBatches(n, batch_size, self._collate, seed=seed, rank=rank, world_size=world_size)
        self.fingerprint = int(sum(len(e) for e in self.examples))  # a resumed run must see the same data

    def _collate(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.packed is not None:
            return self.packed.rows(indices, self.pad_id)
        return collate([self.examples[i] for i in indices], self.pad_id)

    @property
    def steps_per_epoch(self) -> int:
        """Micro-batches (per process) that make one pass over the examples (or rows)."""
        s = self.sampler
        return max(1, -(-s.n // (s.batch_size * s.world_size)))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return next(self.sampler)

    def state_dict(self) -> dict:
        return {**self.sampler.state_dict(), "packed": self.packed is not None, "tokens": self.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        for key, mine in (("packed", self.packed is not None), ("tokens", self.fingerprint)):
            if key in state and state[key] != mine:
                raise LLMKitError(f"cannot resume: the checkpoint's data position is for {key}={state[key]}, this "
                                  f"run has {mine} (data, prompt style, packing or max_seq_len changed)")
        self.sampler.load_state_dict(state)


def eval_batches(examples: Sequence[Encoded], batch_size: int, pad_id: int,
                 max_batches: Optional[int] = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Validation batches over the first `max_batches * batch_size` examples, grouped by length
    (less padding; a token-weighted loss does not depend on the grouping)."""
    chosen = list(examples)[: max_batches * batch_size] if max_batches else list(examples)
    chosen.sort(key=len)
    return [collate(chosen[i:i + batch_size], pad_id) for i in range(0, len(chosen), batch_size)]
