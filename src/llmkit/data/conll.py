"""Token classification data (named-entity recognition): CoNLL files, label lists, sub-token labels.

A CoNLL file has one token per line, its tag in the last column (`token<TAB>tag`, or columns
separated by spaces as in CoNLL-2003's `EU NNP B-NP B-ORG`), and a blank line between
sentences. `-DOCSTART-` lines (document boundaries in CoNLL-2003) end the sentence before them
and are skipped. Tags are kept as written (BIO, IOB1 or IOBES); `evaluate.metrics.entity_scores`
scores them the way conlleval / seqeval do.

A model sees sub-word tokens, not words, so word tags are aligned to tokens
(`align_labels`) as in transformers' token-classification recipe (`run_ner.py`,
`tokenize_and_align_labels`): the first sub-token of each word carries the word's label, every
other sub-token and every special token carries `IGNORE_INDEX` (-100, no loss). Predictions go
back to words the same way (`word_tags`): a word's tag is its first sub-token's.

A sentence longer than `max_length` tokens is truncated (`encode_sentences` counts them): its
words past the cut carry no loss in training, and are predicted "O" in evaluation, which counts
their entities as missed rather than silently dropping them. (WNUT-17's longest sentence is 105
words.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

from llmkit.errors import LLMKitError
from llmkit.training.losses import IGNORE_INDEX

if TYPE_CHECKING:
    from llmkit.tokenizer import Tokenizer

OUTSIDE = "O"


@dataclass(frozen=True)
class Sentence:
    """One sentence: its words, their tags (one each), and where it starts ("FILE:LINE")."""

    words: tuple[str, ...]
    tags: tuple[str, ...]
    where: str


def read_conll(path: str | Path) -> list[Sentence]:
    """Every sentence of a CoNLL file: a word in the first column, its tag in the last.

    Columns are tab-separated when the line has a tab (a WNUT-17 token may hold any other
    character), whitespace-separated otherwise. A line with a single column is an error naming
    the file and line.
    """
    p = Path(path).expanduser()
    try:
        lines = p.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise LLMKitError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise LLMKitError(f"{path}: is a directory; expected a CoNLL file") from None
    except UnicodeDecodeError as e:
        raise LLMKitError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise LLMKitError(f"{path}: cannot read ({e.strerror or e})") from None
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    first = 0

    def close() -> None:
        if words:
            sentences.append(Sentence(tuple(words), tuple(tags), f"{path}:{first}"))
            words.clear()
            tags.clear()

    for n, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("-DOCSTART-"):
            close()
            continue
        cols = line.split("\t") if "\t" in line else line.split()
        word, tag = cols[0], cols[-1].strip()
        if len(cols) < 2 or not word or not tag:
            raise LLMKitError(f"{path}:{n}: expected a token and its tag separated by a tab or spaces, got {line!r}")
        if not words:
            first = n
        words.append(word)
        tags.append(tag)
    close()
    if not sentences:
        raise LLMKitError(f"{path}: no sentences (expected one 'token<TAB>tag' per line, "
                          "a blank line between sentences)")
    return sentences


def label_list(sentences: Sequence[Sentence]) -> list[str]:
    """The tags that occur, "O" first, then sorted: the label ids a model's head predicts."""
    tags = {t for s in sentences for t in s.tags}
    return [OUTSIDE] + sorted(tags - {OUTSIDE})


def align_labels(word_ids: Sequence[Optional[int]], tags: Sequence[str], label_to_id: Mapping[str, int]) -> list[int]:
    """Per-token label ids: the word's label on its first sub-token, `IGNORE_INDEX` (-100) on the
    others and on special tokens (whose word id is None), as transformers' token-classification
    recipe does. `word_ids` are an encoding's (`Encoded.word_ids`)."""
    labels = []
    previous = None
    for w in word_ids:
        if w is None or w == previous:
            labels.append(IGNORE_INDEX)
        else:
            tag = tags[w]
            if tag not in label_to_id:
                raise LLMKitError(f"tag {tag!r} is not in the label list ({', '.join(label_to_id)})")
            labels.append(label_to_id[tag])
        previous = w
    return labels


def word_tags(word_ids: Sequence[Optional[int]], token_label_ids: Sequence[int], labels: Sequence[str],
              n_words: int) -> list[str]:
    """Per-word tags from per-token predicted label ids (`align_labels` in reverse): each word
    takes its first sub-token's label; a word with no token (cut off by truncation) is "O"."""
    tags = [OUTSIDE] * n_words
    previous = None
    for w, label in zip(word_ids, token_label_ids):
        if w is not None and w != previous:
            tags[w] = labels[int(label)]
        previous = w
    return tags


@dataclass(frozen=True)
class TaggedTokens:
    """One sentence encoded for token classification (all lists one entry per token)."""

    ids: list[int]
    labels: list[int]  # label ids, IGNORE_INDEX where no loss
    word_ids: list[Optional[int]]
    sentence: int  # index into the sentences encoded
    truncated: bool


def encode_sentences(sentences: Sequence[Sentence], tokenizer: "Tokenizer", label_to_id: Mapping[str, int],
                     max_length: int = 512) -> tuple[list[TaggedTokens], int]:
    """(one `TaggedTokens` per sentence, how many were truncated to `max_length` tokens).

    The words are encoded as pre-tokenized input (`Tokenizer.encode_offsets(words,
    is_pretokenized=True)`, transformers' `is_split_into_words=True`) with the tokenizer's
    special tokens; a byte-level BPE tokenizer should add a prefix space to each word (RoBERTa's
    `add_prefix_space=True`).
    """
    out, n_truncated = [], 0
    for i, s in enumerate(sentences):
        enc = tokenizer.encode_offsets(list(s.words), is_pretokenized=True)
        truncated = len(enc) > max_length
        if truncated:
            enc = tokenizer.encode_offsets(list(s.words), is_pretokenized=True, max_length=max_length)
            n_truncated += 1
        try:
            labels = align_labels(enc.word_ids, s.tags, label_to_id)
        except LLMKitError as e:
            raise LLMKitError(f"{s.where}: {e}") from None
        out.append(TaggedTokens(enc.ids, labels, enc.word_ids, i, truncated))
    return out, n_truncated
