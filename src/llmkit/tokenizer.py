"""Tokenizers: load Hugging Face tokenizer folders, train byte-level BPE, WordPiece or Unigram, stream-decode.

`Tokenizer` wraps a `tokenizers.Tokenizer` (the Rust library behind HF's fast tokenizers) and
adds what the rest of llmkit needs and the raw library does not know about: special tokens and
stop tokens read from the HF side files (`tokenizer_config.json`, `special_tokens_map.json`,
`generation_config.json`), whether a BOS token is prepended, and the chat template.

Supported folder layouts, tried in this order:

* `tokenizer.json` (every modern HF model),
* GPT-2 style `vocab.json` + `merges.txt`, or OpenAI's original `encoder.json` + `vocab.bpe`
  (byte-level BPE built here from the two files: transformers 5's
  `GPT2TokenizerFast(vocab_file=..., merges_file=...)` silently builds an empty tokenizer),
* `tokenizer.model` only (SentencePiece): converted through `transformers` when installed.

Special tokens are never added by the backend's post-processor: `encode` always asks the backend
for the plain ids and adds BOS/EOS itself, so a tokenizer whose `tokenizer.json` template already
prepends BOS (Llama) cannot end up with two. The same goes for BERT-style encoders: when the
template wraps a text as `[CLS] text [SEP]`, `encode` adds the two itself (`add_cls_sep`), which
gives exactly the ids of HF's `tokenizer(text)["input_ids"]`, and for T5-style templates that
append EOS (`$A </s>`): `encode` appends it itself (`add_eos`).

T5's sentinels (`<extra_id_0>`, `<extra_id_1>`, ..., at the top of the vocabulary, `<extra_id_0>`
highest) are listed in `sentinel_ids`, which span corruption (data/spans.py) reads.

Extractive tasks (token classification, question answering) need more than ids: `encode_offsets`
and `encode_windows` return an `Encoded` (ids, token type ids, character offsets, word and
sequence ids) straight from the backend's own post-processor, so a single text or a pair comes
out exactly as `transformers`' `tokenizer(text, text_pair, return_offsets_mapping=True)` gives it
for any template (BERT's `[CLS] A [SEP] B [SEP]`, RoBERTa's `<s> A </s></s> B </s>`), and a long
input splits into overlapping windows as with `truncation="only_second", stride=...,
return_overflowing_tokens=True`.

Decoding never applies transformers' legacy `clean_up_tokenization_spaces` (" ." -> "."): that
is lossy, and `decode(encode(text)) == text` is an invariant the data pipeline relies on.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as _Backend

from llmkit.errors import LLMKitError, read_json

# Files `save` copies verbatim from the folder a tokenizer was loaded from.
_SIDE_FILES = ("special_tokens_map.json", "generation_config.json", "chat_template.jinja")
_SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token", "cls_token", "sep_token", "mask_token")
# BERT's special tokens, in the order of its vocab.txt ([PAD] = 0); `train_tokenizer(kind="wordpiece")`
# reserves them as ids 0..4.
BERT_SPECIAL_TOKENS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                       "mask_token": "[MASK]"}
# T5's special tokens, in the order of its vocabulary (<pad> = 0, </s> = 1, <unk> = 2);
# `train_tokenizer(kind="unigram")` reserves them as ids 0..2 and puts the sentinels at the top.
T5_SPECIAL_TOKENS = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
SENTINEL = "<extra_id_{}>"  # T5's sentinel tokens, <extra_id_0> first
TOKENIZER_KINDS = ("bpe", "wordpiece", "unigram")
# The input of `encode_offsets` / `encode_windows`: a text, or its words (`is_pretokenized`).
TextInput = Union[str, Sequence[str]]
# Truncation state lives on a Rust tokenizer object, so windows are cut on a private copy of the
# backend (never the shared one `encode` uses), one call at a time.
_WINDOWS_LOCK = threading.Lock()


@dataclass(frozen=True)
class Encoded:
    """A text (or text pair) as tokens, with what extractive tasks need to map tokens back.

    All lists have one entry per token. `offsets` are (start, end) character spans into the
    sequence the token came from (the first text or the pair; into its own word for
    pre-tokenized input), (0, 0) for special tokens, as in transformers' `offset_mapping`.
    `word_ids` index the words of the token's own sequence (the pre-tokenizer's words, or the
    given words for pre-tokenized input) and `sequence_ids` say which input the token came from
    (0 or 1); both are None for special tokens, as transformers' `word_ids()` / `sequence_ids()`.
    """

    ids: list[int]
    type_ids: list[int]
    offsets: list[tuple[int, int]]
    word_ids: list[Optional[int]]
    sequence_ids: list[Optional[int]]

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_backend(cls, e: Any) -> "Encoded":
        """Copy the fields out of a `tokenizers.Encoding`."""
        return cls(ids=list(e.ids), type_ids=list(e.type_ids), offsets=[tuple(o) for o in e.offsets],
                   word_ids=list(e.word_ids), sequence_ids=list(e.sequence_ids))


def _read_json(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    data = read_json(path)
    if not isinstance(data, dict):
        raise LLMKitError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _token_content(value: Any) -> Optional[str]:
    """tokenizer_config stores special tokens as "<s>" or as {"content": "<s>", ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _id_list(value: Any) -> list[int]:
    """generation_config's *_token_id fields are an int, a list of ints, or null."""
    if isinstance(value, bool):  # bool is an int subclass; never a token id
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def _byte_level_bpe(vocab: dict[str, int], merges: list[tuple[str, str]]) -> _Backend:
    """The GPT-2 pipeline: byte-level pre-tokenizer (GPT-2 regex) -> BPE -> byte-level decoder."""
    tok = _Backend(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _read_merges(path: Path) -> list[tuple[str, str]]:
    merges = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise LLMKitError(f"cannot read {path}: {e}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip() or (n == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise LLMKitError(f"{path}:{n}: expected two space-separated symbols per merge, got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def _load_backend(d: Path) -> _Backend:
    if (d / "tokenizer.json").is_file():
        try:
            return _Backend.from_file(str(d / "tokenizer.json"))
        except Exception as e:  # the Rust side raises a bare Exception on malformed files
            raise LLMKitError(f"cannot load {d / 'tokenizer.json'}: {e}") from None
    for vocab_name, merges_name in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
        if (d / vocab_name).is_file() and (d / merges_name).is_file():
            vocab = _read_json(d / vocab_name)
            if not vocab or not all(isinstance(v, int) for v in vocab.values()):
                raise LLMKitError(f"{d / vocab_name}: expected a JSON object of token -> id")
            return _byte_level_bpe(vocab, _read_merges(d / merges_name))
    if (d / "tokenizer.model").is_file():
        # SentencePiece protobuf: transformers carries the converter to a tokenizers pipeline.
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise LLMKitError(f"{d} has only tokenizer.model (SentencePiece); "
                              "install transformers to convert it, or provide tokenizer.json") from None
        try:
            # Never the folder's own code: an `auto_map` + .py file is ignored, never prompted for.
            return AutoTokenizer.from_pretrained(str(d), trust_remote_code=False).backend_tokenizer
        except Exception as e:
            raise LLMKitError(f"cannot convert {d / 'tokenizer.model'}: {e}") from None
    raise LLMKitError(f"no tokenizer files in {d} (expected tokenizer.json, vocab.json + merges.txt, "
                      "encoder.json + vocab.bpe, or tokenizer.model)")


class Tokenizer:
    """A text <-> token id mapping with its special tokens, stop tokens and chat template."""

    def __init__(self, backend: _Backend, config: Optional[dict] = None,
                 special_tokens_map: Optional[dict] = None, generation_config: Optional[dict] = None,
                 chat_template: Optional[str] = None, source_dir: Optional[Path] = None):
        self.backend = backend
        self.config = dict(config or {})
        self.source_dir = source_dir
        smap = special_tokens_map or {}
        gen = generation_config or {}

        # Special token strings: tokenizer_config wins, special_tokens_map fills the gaps.
        self.special_tokens: dict[str, str] = {}
        for key in _SPECIAL_KEYS:
            content = _token_content(self.config.get(key))
            if content is None:
                content = _token_content(smap.get(key))
            if content is not None:
                self.special_tokens[key] = content
        # A GPT-2 folder (vocab + merges, no config) or a bare tokenizer.json: GPT-2's convention
        # is that <|endoftext|> is BOS, EOS and UNK at once (transformers' GPT2Tokenizer defaults).
        if not self.config and not smap and "eos_token" not in self.special_tokens \
                and backend.token_to_id("<|endoftext|>") is not None:
            self.special_tokens.update(bos_token="<|endoftext|>", eos_token="<|endoftext|>")

        # Register the specials (and `added_tokens_decoder` entries) as special added tokens:
        # a no-op for a complete tokenizer.json, essential for vocab + merges folders, where
        # "<|endoftext|>" in text must map to its id and `skip_special` must drop it.
        added = []
        for _, entry in sorted(self.config.get("added_tokens_decoder", {}).items(), key=lambda kv: int(kv[0])):
            if isinstance(entry, dict) and isinstance(entry.get("content"), str):
                added.append(AddedToken(entry["content"], special=bool(entry.get("special", True)),
                                        normalized=bool(entry.get("normalized", False)),
                                        lstrip=bool(entry.get("lstrip", False)),
                                        rstrip=bool(entry.get("rstrip", False))))
        added += [AddedToken(c, special=True, normalized=False) for c in self.special_tokens.values()]
        known = {t.content for t in backend.get_added_tokens_decoder().values()}
        missing = [t for t in added if t.content not in known]
        if missing:
            backend.add_special_tokens(missing)

        def resolve(key: str) -> Optional[int]:
            if key in self.special_tokens:
                return backend.token_to_id(self.special_tokens[key])
            if key in self.config:  # an explicit null (Qwen's bos_token) means "none", as in HF
                return None
            ids = _id_list(gen.get(f"{key}_id"))  # otherwise e.g. generation_config's bos_token_id
            return ids[0] if ids else None

        self.bos_id: Optional[int] = resolve("bos_token")
        self.eos_id: Optional[int] = resolve("eos_token")
        self.pad_id: Optional[int] = resolve("pad_token")
        # Encoder (BERT) specials; None for decoder tokenizers.
        self.cls_id: Optional[int] = resolve("cls_token")
        self.sep_id: Optional[int] = resolve("sep_token")
        self.mask_id: Optional[int] = resolve("mask_token")
        # Stop tokens: chat models list several (Llama 3.1: <|end_of_text|>, <|eom_id|>, <|eot_id|>).
        self.eos_ids: set[int] = set(_id_list(gen.get("eos_token_id")))
        if self.eos_id is not None:
            self.eos_ids.add(self.eos_id)
        for key, tid in (("bos_token", self.bos_id), ("eos_token", self.eos_id), ("pad_token", self.pad_id)):
            if tid is not None and key not in self.special_tokens:
                token = backend.id_to_token(tid)
                if token is not None:
                    self.special_tokens[key] = token

        # [CLS] ... [SEP]: whatever the backend's template does (BERT's and RoBERTa's do, as in HF).
        self.add_cls_sep: bool = self._post_processor_adds_cls_sep()
        # BOS: tokenizer_config's add_bos_token when present, otherwise whatever the backend's
        # post-processor does (Llama's tokenizer.json template prepends it; GPT-2/Qwen do not).
        # A template that wraps in CLS ... SEP is not also a BOS template, even where the CLS
        # token is the BOS token (RoBERTa's <s>): `_wrap` adds it once, as the CLS.
        if isinstance(self.config.get("add_bos_token"), bool):
            self.add_bos: bool = self.config["add_bos_token"]
        else:
            self.add_bos = not self.add_cls_sep and self._post_processor_adds_bos()
        # EOS the same way: T5's template appends </s> to every text (`$A </s>`), and so does
        # transformers' tokenizer(text); a CLS ... SEP template's closing SEP is `_wrap`'s.
        if isinstance(self.config.get("add_eos_token"), bool):
            self.add_eos: bool = self.config["add_eos_token"]
        else:
            self.add_eos = not self.add_cls_sep and self._post_processor_adds_eos()
        # T5's sentinels <extra_id_0>, <extra_id_1>, ... (span corruption's mask tokens), in that
        # order whatever their ids (T5 counts them down from the top of the vocabulary); empty
        # when the vocabulary has none.
        self.sentinel_ids: list[int] = []
        while (sentinel := backend.token_to_id(SENTINEL.format(len(self.sentinel_ids)))) is not None:
            self.sentinel_ids.append(sentinel)
        self.chat_template = chat_template
        self._windows_backend: Optional[_Backend] = None  # see `encode_windows`

    # --- loading ------------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, path: str | Path) -> "Tokenizer":
        """Load a tokenizer folder (a path to its tokenizer.json is accepted too)."""
        d = Path(path)
        if d.is_file() and d.name in ("tokenizer.json", "tokenizer_config.json"):
            d = d.parent
        if not d.exists():
            raise LLMKitError(f"tokenizer directory '{d}' does not exist")
        if not d.is_dir():
            raise LLMKitError(f"tokenizer path '{d}' is not a directory")
        config = _read_json(d / "tokenizer_config.json") or {}
        backend = _load_backend(d)
        template: Any = config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        if not isinstance(template, str):
            template = None
            if (d / "chat_template.jinja").is_file():
                template = (d / "chat_template.jinja").read_text(encoding="utf-8")
            elif (d / "chat_template.json").is_file():  # processor-style folders
                template = (_read_json(d / "chat_template.json") or {}).get("chat_template")
        return cls(backend, config=config, special_tokens_map=_read_json(d / "special_tokens_map.json"),
                   generation_config=_read_json(d / "generation_config.json"),
                   chat_template=template, source_dir=d)

    def _post_processor_adds_bos(self) -> bool:
        if self.bos_id is None:
            return False
        with_specials = self.backend.encode("a", add_special_tokens=True).ids
        plain = self.backend.encode("a", add_special_tokens=False).ids
        return len(with_specials) > len(plain) and with_specials[0] == self.bos_id and plain[:1] != [self.bos_id]

    def _post_processor_adds_eos(self) -> bool:
        if self.eos_id is None:
            return False
        with_specials = self.backend.encode("a", add_special_tokens=True).ids
        plain = self.backend.encode("a", add_special_tokens=False).ids
        return with_specials == plain + [self.eos_id] and plain[-1:] != [self.eos_id]

    def _post_processor_adds_cls_sep(self) -> bool:
        if self.cls_id is None or self.sep_id is None:
            return False
        with_specials = self.backend.encode("a", add_special_tokens=True).ids
        plain = self.backend.encode("a", add_special_tokens=False).ids
        return with_specials == [self.cls_id] + plain + [self.sep_id]

    # --- properties ---------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids, added special tokens included (the model's embedding may be larger)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> Optional[int]:
        return self.backend.token_to_id(token)

    def __repr__(self) -> str:
        extra = f", cls_id={self.cls_id}, sep_id={self.sep_id}, mask_id={self.mask_id}" if self.add_cls_sep else ""
        if self.add_eos:
            extra += ", add_eos=True"
        if self.sentinel_ids:
            extra += f", sentinels={len(self.sentinel_ids)}"
        return (f"Tokenizer(vocab_size={self.vocab_size}, bos_id={self.bos_id}, eos_id={self.eos_id}, "
                f"pad_id={self.pad_id}, add_bos={self.add_bos}{extra})")

    # --- encode / decode ----------------------------------------------------------------------
    def _wrap(self, ids: list[int], bos: Optional[bool], eos: Optional[bool]) -> list[int]:
        wrapped = self.add_cls_sep and bos is not False
        if wrapped:  # BERT: [CLS] text [SEP], as HF's template adds them
            ids = [self.cls_id] + ids + [self.sep_id]
        if (self.add_bos if bos is None else bos) and self.bos_id is not None \
                and not (wrapped and self.cls_id == self.bos_id):  # RoBERTa's <s> is both: once
            ids = [self.bos_id] + ids
        if self.add_eos if eos is None else eos:
            if self.eos_id is None:
                raise LLMKitError("the tokenizer has no EOS token (set eos_token in tokenizer_config.json)")
            ids = ids + [self.eos_id]
        return ids

    def encode(self, text: str, bos: Optional[bool] = None, eos: Optional[bool] = None) -> list[int]:
        """Token ids of `text`; BOS when `bos` (None: `self.add_bos`), EOS when `eos` (None:
        `self.add_eos`, true for T5's `$A </s>` template, so `encode(text)` is HF's ids).

        For a BERT-style tokenizer (`add_cls_sep`) the text is `[CLS] text [SEP]` unless `bos` is
        False (the bare pieces). Special-token strings inside `text` (e.g. "<|endoftext|>") map
        to their ids, as in HF.
        """
        return self._wrap(self.backend.encode(text, add_special_tokens=False).ids, bos, eos)

    def encode_batch(self, texts: list[str], bos: Optional[bool] = None,
                     eos: Optional[bool] = None) -> list[list[int]]:
        """`encode` over many texts at once: the Rust backend spreads them over all cores."""
        fast = getattr(self.backend, "encode_batch_fast", None)  # tokenizers >= 0.21: skips offsets
        encodings = (fast or self.backend.encode_batch)(list(texts), add_special_tokens=False)
        return [self._wrap(e.ids, bos, eos) for e in encodings]

    def encode_pair(self, text: str, text_pair: str) -> tuple[list[int], list[int]]:
        """(ids, token_type_ids) of a sentence pair as the backend's template joins it, which is
        what HF's `tokenizer(text, text_pair)` gives: `[CLS] A [SEP] B [SEP]` with types
        0...0 1...1 for BERT, `<s> A </s></s> B </s>` with types all 0 for RoBERTa. Needs an
        encoder template (`add_cls_sep`)."""
        if not self.add_cls_sep:
            raise LLMKitError("pair encoding needs an encoder tokenizer whose template adds [CLS]/[SEP] (or <s>/</s>)")
        e = self.backend.encode(text, text_pair, add_special_tokens=True)
        return list(e.ids), list(e.type_ids)

    def encode_offsets(self, text: TextInput, text_pair: Optional[TextInput] = None, *, add_special: bool = True,
                       is_pretokenized: bool = False, max_length: Optional[int] = None) -> Encoded:
        """`text` (and `text_pair`) as an `Encoded`: ids, type ids, character offsets, word and
        sequence ids, with the special tokens of the backend's own template when `add_special`.

        Equal to transformers' `tokenizer(text, text_pair, return_offsets_mapping=True)` (with
        `is_split_into_words=True` for pre-tokenized input: `text` is then a list of words, as
        for NER). `max_length` truncates the last input (the pair when there is one, as
        `truncation="only_second"`; the text otherwise): the first of `encode_windows`' windows.

        Pre-tokenized input with a byte-level BPE: the tokenizer should add a prefix space to
        each word (`ByteLevel(add_prefix_space=True)`), as transformers requires for RoBERTa,
        or the words are encoded as if they were glued together.
        """
        if max_length is not None:
            return self.encode_windows(text, text_pair, max_length=max_length, add_special=add_special,
                                       is_pretokenized=is_pretokenized)[0]
        return Encoded.from_backend(self.backend.encode(text, text_pair, is_pretokenized=is_pretokenized,
                                                        add_special_tokens=add_special))

    def encode_windows(self, text: TextInput, text_pair: Optional[TextInput] = None, *, max_length: int,
                       stride: int = 0, add_special: bool = True, is_pretokenized: bool = False) -> list[Encoded]:
        """`encode_offsets`, with an input too long for `max_length` tokens (specials included)
        split into overlapping windows of its last sequence: the context of a (question,
        context) pair, the text alone otherwise. Consecutive windows share `stride` tokens.

        Exactly transformers' `tokenizer(text, text_pair, truncation="only_second" (a pair) or
        True (one text), max_length=max_length, stride=stride, return_overflowing_tokens=True,
        return_offsets_mapping=True)`: the windows are cut by the backend's own truncation.
        One window when everything fits.
        """
        if max_length < 1 or stride < 0:
            raise LLMKitError(f"max_length must be >= 1 and stride >= 0, got max_length={max_length}, stride={stride}")
        whole = self.backend.encode(text, text_pair, is_pretokenized=is_pretokenized, add_special_tokens=add_special)
        if len(whole) <= max_length:
            return [Encoded.from_backend(whole)]
        # Checked here, as the backend would (it panics on a stride that leaves no room).
        last = 1 if text_pair is not None else 0
        n_last = sum(1 for i in whole.sequence_ids if i == last)
        window = n_last - (len(whole) - max_length)  # tokens of the last sequence per window
        what = "the context" if text_pair is not None else "the text"
        if window < 1:
            taken = "the special tokens and the first text take" if text_pair is not None else "the special tokens take"
            raise LLMKitError(f"no room for {what} in {max_length} tokens: {taken} {len(whole) - n_last}")
        if stride >= window:
            raise LLMKitError(f"stride {stride} must be smaller than the {window} tokens of {what} that fit in "
                              f"each window of {max_length}")
        with _WINDOWS_LOCK:
            if self._windows_backend is None:  # a private copy: its truncation setting is ours alone
                self._windows_backend = _Backend.from_str(self.backend.to_str())
                self._windows_backend.no_padding()
            backend = self._windows_backend
            backend.enable_truncation(max_length, stride=stride,
                                      strategy="only_second" if text_pair is not None else "longest_first")
            e = backend.encode(text, text_pair, is_pretokenized=is_pretokenized, add_special_tokens=add_special)
        return [Encoded.from_backend(w) for w in [e, *e.overflowing]]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        if hasattr(ids, "tolist"):  # numpy arrays and torch tensors
            ids = ids.tolist()
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    # --- saving -------------------------------------------------------------------------------
    def save(self, out_dir: str | Path) -> Path:
        """Write tokenizer.json + tokenizer_config.json (and copy the side files it was loaded
        with) so that both `Tokenizer.from_dir` and `transformers.AutoTokenizer` load the folder.
        Each file is written atomically (a temp file renamed over it): a crash never leaves a
        half-written tokenizer.json."""
        from llmkit.fileio import atomic_copy, atomic_write, atomic_write_text

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "tokenizer.json", lambda tmp: self.backend.save(str(tmp)))
        config = dict(self.config)
        config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
        config.update(self.special_tokens)
        config["add_bos_token"] = self.add_bos
        config["add_eos_token"] = self.add_eos
        # Keep AutoTokenizer's decode lossless, like ours (see the module docstring).
        config.setdefault("clean_up_tokenization_spaces", False)
        copied = set()
        if self.source_dir is not None and self.source_dir.resolve() != out.resolve():
            for name in _SIDE_FILES:
                if (self.source_dir / name).is_file():
                    atomic_copy(self.source_dir / name, out / name)
                    copied.add(name)
        if self.chat_template is not None and "chat_template.jinja" not in copied:
            config["chat_template"] = self.chat_template
        atomic_write_text(out / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        return out


class StreamDecoder:
    """Incremental detokenizer: push ids one at a time, get text as soon as it is complete.

    Decoding single tokens is wrong for byte-level BPE (an emoji is 2-4 byte tokens, each alone
    decodes to U+FFFD) and for SentencePiece (a token's leading space depends on its neighbours).
    So, as in vLLM's incremental detokenizer, we decode a short window of recent ids twice —
    `ids[prefix:read]` (text already emitted) and `ids[prefix:]` — and emit the difference once it
    no longer ends in U+FFFD. The window restarts after each emission, so the cost per token is
    O(1) amortised rather than O(length of the generation).
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True):
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self._ids: list[int] = []
        self._prefix = 0  # window start: ids before it are emitted and forgotten
        self._read = 0  # ids[_prefix:_read] decode to text already emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special=self.skip_special)

    def push(self, token_id: int) -> str:
        """Add one id; return the text it completes ("" while a UTF-8 sequence is unfinished)."""
        self._ids.append(int(token_id))
        emitted = self._decode(self._ids[self._prefix:self._read])
        text = self._decode(self._ids[self._prefix:])
        if len(text) <= len(emitted) or text.endswith("\ufffd"):
            return ""
        # The next window starts at the ids that produced the text just emitted, so a
        # SentencePiece leading space is decoded with the same left context both times.
        self._prefix, self._read = self._read, len(self._ids)
        if self._prefix > 64:  # drop ids no window will look at again
            del self._ids[:self._prefix]
            self._read -= self._prefix
            self._prefix = 0
        return text[len(emitted):]

    def flush(self) -> str:
        """Return whatever is still held back (an unfinished byte sequence decodes to U+FFFD)."""
        emitted = self._decode(self._ids[self._prefix:self._read])
        text = self._decode(self._ids[self._prefix:])
        self._ids, self._prefix, self._read = [], 0, 0
        return text[len(emitted):] if len(text) > len(emitted) else ""


def train_tokenizer(files: list[str], vocab_size: int = 8192, out: str = "tokenizer", min_frequency: int = 2,
                    special_tokens: Optional[list[str]] = None, text_field: str = "text", kind: str = "bpe",
                    lowercase: Optional[bool] = None, extra_ids: int = 100) -> None:
    """Train a byte-level BPE (decoders), a WordPiece (BERT-style encoders) or a Unigram (T5-style
    encoder-decoders) tokenizer on text files.

    bpe: the GPT-2 recipe (Radford et al. 2019, sec. 2.2): BPE over UTF-8 bytes after the GPT-2
    regex pre-tokenizer, so any text round-trips without an unknown token.
    wordpiece: the BERT recipe (Devlin et al. 2019; HF's `BertTokenizerFast` pipeline): BERT's
    normalizer (clean-up, CJK characters split, optional lower-casing with accent stripping),
    split on whitespace and punctuation, WordPiece with "##" continuation pieces and [UNK] for
    unseen characters, and the `[CLS] A [SEP] B [SEP]` template with token type ids.
    unigram: the T5 recipe (Raffel et al. 2020, sec. 2.2: a SentencePiece unigram LM vocabulary,
    Kudo 2018; HF's T5 tokenizer.json pipeline): NFKC normalization (`nfkc_charsmap`), words split
    at whitespace (runs of spaces, tabs and newlines are one boundary, as SentencePiece's
    remove_extra_whitespaces), "▁" marking each word's start (Metaspace), a Unigram model with
    <pad> = 0, </s> = 1, <unk> = 2 (unseen characters) and `extra_ids` sentinels at the top
    (<extra_id_0> the highest id), and the `$A </s>` template (pairs `$A </s> $B </s>`).
    The result loads with `Tokenizer.from_dir` and with `transformers.AutoTokenizer.from_pretrained(out)`
    (for wordpiece, as a `BertTokenizerFast`; for unigram, as a `T5Tokenizer`).

    Args:
        files: text files (.txt/.md, one document per file), JSONL/JSON/Parquet files, or folders
            of them (searched recursively) - the same sources as `llmkit data prepare`.
        vocab_size: size of the vocabulary, the 256 byte tokens (bpe), the special tokens and
            the sentinels (unigram) included.
        out: folder to write tokenizer.json and tokenizer_config.json to.
        min_frequency: a pair must occur this often to be merged (bpe, wordpiece; the Unigram
            trainer prunes by likelihood instead and ignores it).
        special_tokens: special tokens to reserve (ids 0, 1, ...). bpe: the first is the document
            separator, used as BOS, EOS and padding; default ["<|endoftext|>"]. wordpiece: extra
            tokens reserved after [PAD], [UNK], [CLS], [SEP], [MASK] (always ids 0..4). unigram:
            extra tokens reserved after <pad>, </s>, <unk> (always ids 0..2).
        text_field: field holding the text in JSONL/JSON/Parquet sources.
        kind: "bpe" (byte-level BPE), "wordpiece" (BERT) or "unigram" (T5).
        lowercase: lower-case the text. Default: true for wordpiece (BERT uncased, which also
            strips accents; false keeps both, as BERT cased), false for unigram (T5 is cased).
            Ignored for bpe, which keeps every byte.
        extra_ids: unigram only: how many sentinel tokens <extra_id_0> ... <extra_id_{N-1}> to put
            at the top of the vocabulary for span corruption (T5: 100; 0 for none).
    """
    from tqdm import tqdm

    from llmkit.data import iter_documents

    if kind not in TOKENIZER_KINDS:
        raise LLMKitError(f"unknown tokenizer kind {kind!r}: expected one of {', '.join(TOKENIZER_KINDS)}")
    wordpiece, unigram = kind == "wordpiece", kind == "unigram"
    if lowercase is None:
        lowercase = wordpiece  # BERT's common checkpoints are uncased, T5's vocabulary is cased
    if not unigram and extra_ids != 100:
        raise LLMKitError(f"extra_ids is for --kind unigram (T5's sentinels), not {kind}")
    if wordpiece:
        specials = list(BERT_SPECIAL_TOKENS.values()) + list(special_tokens or [])
    elif unigram:
        specials = list(T5_SPECIAL_TOKENS.values()) + list(special_tokens or [])
    else:
        specials = list(special_tokens) if special_tokens else ["<|endoftext|>"]
    if len(set(specials)) != len(specials):
        raise LLMKitError(f"duplicate special tokens: {specials}")
    if unigram:
        if extra_ids < 0:
            raise LLMKitError(f"extra_ids must be >= 0, got {extra_ids}")
        clash = [t for t in specials if t.startswith("<extra_id_")]
        if clash:
            raise LLMKitError(f"special token {clash[0]} is a sentinel name; sentinels come from extra_ids")
        # The specials, the sentinels and at least the word-start piece "▁".
        minimum = len(specials) + extra_ids + 1
        if vocab_size < minimum:
            raise LLMKitError(f"vocab_size {vocab_size} is too small: {len(specials)} special token(s) and "
                              f"{extra_ids} sentinel(s) (extra_ids) need at least {minimum}")
    else:
        # WordPiece's alphabet is the corpus's characters, so only the specials set a floor.
        minimum = len(specials) + 1 if wordpiece else 256 + len(specials)
        if vocab_size < minimum:
            what = "" if wordpiece else "the 256 byte tokens and "
            raise LLMKitError(f"vocab_size {vocab_size} is too small: {what}"
                              f"{len(specials)} special token(s) need at least {minimum}")
    if min_frequency < 1:
        raise LLMKitError(f"min_frequency must be >= 1, got {min_frequency}")

    if wordpiece:
        # HF's BertTokenizerFast pipeline; strip_accents=None follows `lowercase`, as in BERT.
        backend = _Backend(models.WordPiece(unk_token=BERT_SPECIAL_TOKENS["unk_token"], continuing_subword_prefix="##"))
        backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                        strip_accents=None, lowercase=lowercase)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece(prefix="##")
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=specials, continuing_subword_prefix="##",
                                            show_progress=True)
    elif unigram:
        backend = _Backend(models.Unigram())
        _t5_pipeline(backend, lowercase)
        # SentencePiece's defaults (Kudo 2018; spm_train): pieces of at most 16 characters, 25% of
        # the candidates pruned per EM round, 2 EM sub-iterations. The trainer's vocab_size counts
        # the specials; the sentinels are appended after training.
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size - extra_ids, special_tokens=specials,
                                          unk_token=T5_SPECIAL_TOKENS["unk_token"], max_piece_length=16,
                                          shrinking_factor=0.75, n_sub_iterations=2, show_progress=True)
    else:
        backend = _Backend(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=True)

    n_docs = 0

    def texts() -> Iterable[str]:
        nonlocal n_docs
        # Documents stream from disk; the trainer keeps only word counts, never the corpus.
        for doc in tqdm(iter_documents(files, text_field=text_field), desc="reading", unit=" docs", disable=None):
            n_docs += 1
            yield doc.text

    try:
        backend.train_from_iterator(texts(), trainer=trainer)
    except LLMKitError:
        raise
    except Exception as e:  # the Rust trainer's refusals, e.g. a Unigram vocabulary below the alphabet
        if not unigram or n_docs == 0:
            raise
        raise LLMKitError(f"cannot train a Unigram vocabulary of {vocab_size} ({extra_ids} sentinels included) "
                          f"on {', '.join(files)}: {e}") from None
    if n_docs == 0:
        raise LLMKitError(f"no text found in {', '.join(files)}")

    if wordpiece:
        _finish_wordpiece(backend, out, lowercase, n_docs)
        return
    if unigram:
        _finish_unigram(backend, out, lowercase, extra_ids, specials, n_docs)
        return

    sep = specials[0]
    pad = next((t for t in specials if t in ("<pad>", "<|pad|>", "[PAD]")), sep)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": sep, "eos_token": sep, "pad_token": pad}
    tok = Tokenizer(backend, config=config)
    tok.save(out)
    print(f"trained byte-level BPE on {n_docs} document(s): {tok.vocab_size} tokens -> {out}")


def _finish_wordpiece(backend: _Backend, out: str, lowercase: bool, n_docs: int) -> None:
    """Add BERT's template and write the folder as transformers' BertTokenizerFast saves it."""
    from llmkit.fileio import atomic_write_text

    cls, sep = BERT_SPECIAL_TOKENS["cls_token"], BERT_SPECIAL_TOKENS["sep_token"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, backend.token_to_id(cls)), (sep, backend.token_to_id(sep))])
    config = {"tokenizer_class": "BertTokenizerFast", "do_lower_case": lowercase, "strip_accents": None,
              "tokenize_chinese_chars": True, **BERT_SPECIAL_TOKENS, "model_max_length": 512}
    tok = Tokenizer(backend, config=config)
    path = tok.save(out)
    atomic_write_text(path / "special_tokens_map.json", json.dumps(BERT_SPECIAL_TOKENS, indent=2) + "\n")
    print(f"trained WordPiece on {n_docs} document(s): {tok.vocab_size} tokens -> {out}")


def _t5_pipeline(backend: _Backend, lowercase: bool) -> None:
    """T5's normalizer, pre-tokenizer and decoder, as transformers 5's `T5Tokenizer` builds them
    (tokenization_t5.py): NFKC as a SentencePiece charsmap (`nfkc_charsmap`), WhitespaceSplit
    then Metaspace("▁", prepend_scheme="always", split=True), the matching Metaspace decoder."""
    backend.normalizer = normalizers.Precompiled(nfkc_charsmap(lowercase))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)])
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)


def _finish_unigram(backend: _Backend, out: str, lowercase: bool, extra_ids: int, specials: list[str],
                    n_docs: int) -> None:
    """Append the sentinels, add T5's template and write the folder as a T5Tokenizer's.

    The sentinels are Unigram pieces (score 0) as well as special added tokens, in T5's order:
    <extra_id_{N-1}> first, <extra_id_0> last, i.e. at vocab_size - 1 (T5's
    `noise_span_to_unique_sentinel` counts down from the top; transformers' T5Converter appends
    them the same way), so that every loader, including transformers 5's T5Tokenizer, which
    rebuilds the model from the vocabulary list, gives them the same ids."""
    data = json.loads(backend.to_str())
    sentinels = [SENTINEL.format(i) for i in range(extra_ids)]
    data["model"]["vocab"] += [[s, 0.0] for s in reversed(sentinels)]
    data["model"]["unk_id"] = specials.index(T5_SPECIAL_TOKENS["unk_token"])
    data["model"]["byte_fallback"] = False
    backend = _Backend.from_str(json.dumps(data))
    backend.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in reversed(sentinels)])
    eos = T5_SPECIAL_TOKENS["eos_token"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, backend.token_to_id(eos))])
    # transformers' T5Tokenizer checks that additional_special_tokens hold exactly `extra_ids` sentinels.
    config = {"tokenizer_class": "T5Tokenizer", **T5_SPECIAL_TOKENS, "extra_ids": extra_ids,
              "additional_special_tokens": sentinels + specials[len(T5_SPECIAL_TOKENS):],
              "do_lower_case": lowercase}
    tok = Tokenizer(backend, config=config)
    tok.save(out)
    print(f"trained Unigram (T5) on {n_docs} document(s): {tok.vocab_size} tokens, "
          f"{len(tok.sentinel_ids)} sentinels -> {out}")


# --- Unigram (T5) -----------------------------------------------------------------------------------
def _double_array(keys: dict[bytes, int]) -> list[int]:
    """A darts-clone double-array trie over byte strings -> int values: the trie format of
    SentencePiece's `precompiled_charsmap`, as tokenizers' `Precompiled` normalizer reads it
    (the `spm_precompiled` crate's `DoubleArray::common_prefix_search`).

    Each 32-bit unit holds a label (bits 0-7), a has-leaf flag (bit 8) and the XOR offset from
    its own position to the base of its children (bits 10-30; the extension bit 9 is never
    needed below 2^21 units). From a node at position p with base b = p ^ offset, the child of
    byte c is at b ^ c (and must carry label c), and a key ending at the node stores its value
    at b itself, with bit 31 set so that it never matches a label. Bases are placed greedily,
    breadth first, at the first free slots: a few hundred thousand units for a charsmap.
    """
    trie: dict = {}
    for key, value in keys.items():
        node = trie
        for byte in key:
            node = node.setdefault(byte, {})
        node[None] = value  # the key ends here
    units = [0] * 256
    used = bytearray(256)
    used[0] = 1  # the root's unit
    bases: set[int] = set()
    queue, cursor = [(trie, 0)], 1
    for node, pos in queue:  # breadth first: the queue grows while it is walked
        labels = sorted(k for k in node if k is not None)
        slots = labels + [0] if None in node else labels  # 0: the value slot, at the base itself
        p = cursor
        while True:  # the first base whose slots are all free
            p = used.find(0, p)
            if p < 0:
                p = len(used)
            base = p ^ slots[0]
            if (base | 255) + 1 > len(used):  # a base's 256 slots share its block of 256
                grow = (base | 255) + 1 - len(used)
                units += [0] * grow
                used += bytes(grow)
            if base not in bases and not any(used[base ^ c] for c in slots):
                break
            p += 1
        bases.add(base)
        if pos ^ base >= 1 << 21:
            raise LLMKitError("normalization table too large for the charsmap's double-array trie")
        units[pos] |= (pos ^ base) << 10
        if None in node:
            units[pos] |= 1 << 8
            units[base] = 1 << 31 | node[None]
            used[base] = 1
        for c in labels:
            units[base ^ c] = c
            used[base ^ c] = 1
            queue.append((node[c], base ^ c))
        found = used.find(0, cursor)
        cursor = found if found >= 0 else len(used)
    return units


@lru_cache(maxsize=2)
def nfkc_charsmap(lowercase: bool = False) -> bytes:
    """A SentencePiece `precompiled_charsmap` that maps each character to its NFKC form (then
    lower-cased, with `lowercase`): T5's normalization (SentencePiece's `nmt_nfkc` rule) in the
    one form both `tokenizers.normalizers.Precompiled` and transformers 5's `T5Tokenizer` keep.

    Why not `normalizers.NFKC()`: transformers 5 rebuilds a T5Tokenizer's pipeline from the
    vocabulary and keeps only a `Precompiled` normalizer (tokenization_t5.py), so any other
    normalizer would make its ids differ from ours on text that NFKC changes ("ﬁ", "Ａ", "…").

    Layout (SentencePiece normalizer.cc): u32 size of the trie in bytes, the trie's u32 units
    (`_double_array`, keyed by each character's UTF-8 bytes), then the replacement strings, each
    NUL-terminated, the trie's values being their byte offsets. Per character, not per sequence:
    a decomposed "e" + U+0301 stays two characters (NFKC would compose them), and, as the
    `Precompiled` normalizer replaces a whole grapheme of under 6 bytes by the mapping of its
    first character when that one is mapped (tokenizers' precompiled.rs), a mapped character
    followed by a combining mark loses the mark: rare in text, and the same in llmkit and
    transformers, which run this one normalizer. The table follows this Python's Unicode version.
    """
    import struct
    import unicodedata

    pool = bytearray()
    offsets: dict[str, int] = {}
    keys: dict[bytes, int] = {}
    for cp in range(0x110000):
        if 0xD800 <= cp < 0xE000:  # surrogates are not characters
            continue
        c = chr(cp)
        n = unicodedata.normalize("NFKC", c)
        if lowercase:
            n = n.lower()
        if n == c:
            continue
        if n not in offsets:
            offsets[n] = len(pool)
            pool += n.encode("utf-8") + b"\0"
        keys[c.encode("utf-8")] = offsets[n]
    units = _double_array(keys)
    return struct.pack(f"<I{len(units)}I", 4 * len(units), *units) + bytes(pool)
