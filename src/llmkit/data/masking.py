"""Masked-language-model inputs and next-sentence-prediction pairs (BERT's pretraining data).

Masking (`mask_tokens`) follows BERT (Devlin et al. 2019, sec. 3.1 and appendix A.1) and
transformers' `DataCollatorForLanguageModeling`: each non-special token is selected with
probability `mlm_probability` (15%); a selected token becomes the mask token 80% of the time, a
random token 10% of the time and stays as it is 10% of the time; the labels are the original
ids at the selected positions and `IGNORE_INDEX` (-100) elsewhere, so the loss is over the
selected tokens only. Selection is an independent coin per token (as transformers does), so the
15% holds in expectation, not exactly per sequence (BERT's own script rounds it per sequence).

The random replacement is uniform over the whole vocabulary, special tokens included, as both
BERT's `create_pretraining_data.py` (`vocab_words[rng.randint(0, len(vocab_words) - 1)]`) and
transformers' collator (`torch.randint(len(tokenizer), ...)`) draw it: rare enough (1.5% of
tokens times a few specials out of thousands of ids) not to matter, and the same as the
reference. Special tokens (CLS, SEP, padding, ...: `special_ids`) are never selected.

Whole-word masking (BERT's "whole word masking" release; `DataCollatorForWholeWordMask`):
given `word_starts`, a boolean table over the vocabulary (`word_start_table`: a WordPiece token
that does not begin with "##", a byte-level BPE token that begins with "Ġ" or a SentencePiece
one with "▁"), a word is a word-start token and the continuation tokens after it; the coin is
tossed per word and every token of a chosen word is selected, so each token is still selected
with probability `mlm_probability` (the same budget in expectation). The 80/10/10 choice is
then made per token, as in BERT's script. A token right after a special token always starts a
word.

Determinism: every call draws the same three tensors from `generator` (selection coins,
80/10/10 coins, random ids), whatever the data, so the same generator state gives the same
masks, and a resumed run that restores the generator state masks exactly as the uninterrupted
one would.

Next-sentence prediction (`nsp_pairs`) builds BERT's `[CLS] A [SEP] B [SEP]` pairs from
documents of sentences as BERT's `create_instances_from_document` does; see there.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import torch

from llmkit.errors import LLMKitError
from llmkit.training.losses import IGNORE_INDEX

if TYPE_CHECKING:
    from llmkit.tokenizer import Tokenizer

IS_NEXT, IS_RANDOM = 0, 1  # NSP labels, as transformers' BertForPreTraining reads them


def special_token_ids(tokenizer: "Tokenizer") -> list[int]:
    """Every id never to be masked: the tokenizer's special tokens (CLS, SEP, padding, mask,
    unknown, BOS/EOS) and the backend's added special tokens, as transformers'
    `all_special_ids` (its collator does not mask [UNK] either)."""
    ids = {t for t in (tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id, tokenizer.mask_id, tokenizer.bos_id,
                       tokenizer.eos_id) if t is not None}
    ids |= {tokenizer.token_to_id(t) for t in tokenizer.special_tokens.values()} - {None}
    ids |= {i for i, t in tokenizer.backend.get_added_tokens_decoder().items() if t.special}
    return sorted(ids)


def word_start_table(tokenizer: "Tokenizer") -> torch.Tensor:
    """(vocab_size,) bool: whether each id begins a word, read from the vocabulary once.

    WordPiece (BERT): every token but the "##" continuation pieces (the model's own prefix).
    Byte-level BPE (GPT-2, RoBERTa): tokens beginning with "Ġ" (a space); SentencePiece-style
    BPE/Unigram: tokens beginning with "▁". Special and added tokens count as word starts
    (they are never masked anyway). For byte-level BPE, punctuation directly after a word
    ("word," -> "word", ",") joins that word, as its tokens carry no space.
    """
    # WordPiece models (and BPE models trained with one) name their continuation prefix.
    prefix = getattr(tokenizer.backend.model, "continuing_subword_prefix", None)
    vocab = tokenizer.backend.get_vocab(with_added_tokens=True)
    table = torch.zeros(max(tokenizer.vocab_size, max(vocab.values()) + 1), dtype=torch.bool)
    for token, i in vocab.items():
        table[i] = not token.startswith(prefix) if prefix else token.startswith(("Ġ", "▁"))
    for i in tokenizer.backend.get_added_tokens_decoder():
        table[i] = True
    return table


def mask_tokens(ids: torch.Tensor, *, mask_id: int, vocab_size: int, special_ids: Sequence[int],
                generator: torch.Generator, mlm_probability: float = 0.15, mask_fraction: float = 0.8,
                random_fraction: float = 0.1, word_starts: Optional[torch.Tensor] = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) for masked-LM training from a (B, T) batch of token ids (see the module
    docstring). `ids` is not modified.

    Args:
        ids: (B, T) int64 token ids, padding included.
        mask_id: the mask token's id.
        vocab_size: random replacements are drawn from [0, vocab_size).
        special_ids: ids never selected (`special_token_ids(tokenizer)`; padding among them).
        generator: the only source of randomness, on `ids`' device.
        mlm_probability: chance that a token (or, with `word_starts`, a word) is selected.
        mask_fraction / random_fraction: of the selected tokens, the share replaced by the mask
            token / by a random id; the rest keep their id (0.8 / 0.1 / 0.1 in BERT).
        word_starts: (vocab_size,) bool (`word_start_table`) for whole-word masking; None
            selects tokens independently.
    """
    if ids.dim() != 2:
        raise LLMKitError(f"mask_tokens takes a (batch, tokens) tensor, got shape {tuple(ids.shape)}")
    if not (0.0 <= mlm_probability <= 1.0 and 0.0 <= mask_fraction and 0.0 <= random_fraction
            and mask_fraction + random_fraction <= 1.0):
        raise LLMKitError(f"need 0 <= mlm_probability <= 1 and mask_fraction + random_fraction <= 1, got "
                          f"{mlm_probability}, {mask_fraction}, {random_fraction}")
    B, T = ids.shape
    device = ids.device
    # Always the same three draws, in this order (see "Determinism" in the module docstring).
    select_coin = torch.rand((B, T), generator=generator, device=device)
    action_coin = torch.rand((B, T), generator=generator, device=device)
    random_ids = torch.randint(vocab_size, (B, T), generator=generator, device=device, dtype=ids.dtype)

    special = torch.as_tensor(list(special_ids), dtype=ids.dtype, device=device)
    eligible = ~torch.isin(ids, special)  # (B, T)
    if word_starts is None:
        selected = eligible & (select_coin < mlm_probability)
    else:
        table = word_starts.to(device)
        if ids.numel() and table.numel() < int(ids.max()) + 1:
            raise LLMKitError(f"word_starts covers {table.numel()} ids, but the batch has id {int(ids.max())}")
        # A word starts at a word-start token, or at any eligible token after an ineligible one.
        after_special = torch.ones_like(eligible)
        after_special[:, 1:] = ~eligible[:, :-1]
        starts = eligible & (table[ids] | after_special)  # (B, T)
        # Each token takes the coin of the start of its word: the latest start at or before it.
        position = torch.arange(T, device=device).expand(B, T)
        word_start = torch.where(starts, position, torch.zeros_like(position)).cummax(dim=1).values  # (B, T)
        selected = eligible & (select_coin.gather(1, word_start) < mlm_probability)

    masked = selected & (action_coin < mask_fraction)
    randomized = selected & (action_coin >= mask_fraction) & (action_coin < mask_fraction + random_fraction)
    inputs = torch.where(masked, torch.full_like(ids, mask_id), ids)
    inputs = torch.where(randomized, random_ids, inputs)
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
    return inputs, labels


# --- next-sentence prediction ----------------------------------------------------------------------
@dataclass(frozen=True)
class NSPExample:
    """`[CLS] A [SEP] B [SEP]`, token type ids 0 over `[CLS] A [SEP]` and 1 over `B [SEP]`, and
    the label: IS_NEXT (0) when B follows A in the document, IS_RANDOM (1) when B comes from
    another document (transformers' `BertForPreTraining` convention)."""

    ids: list[int]
    type_ids: list[int]
    label: int


def truncate_seq_pair(a: list[int], b: list[int], max_tokens: int, rng: random.Random) -> None:
    """Shorten `a` and `b` in place to at most `max_tokens` together, one token at a time from the
    longer one, from its front or its back at random (BERT's `truncate_seq_pair`: the random end
    avoids always cutting the same side)."""
    while len(a) + len(b) > max_tokens:
        longer = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


def nsp_pairs(documents: Sequence[Sequence[Sequence[int]]], *, cls_id: int, sep_id: int, max_length: int,
              seed: int = 0, short_seq_prob: float = 0.1, random_next_prob: float = 0.5) -> list[NSPExample]:
    """Next-sentence-prediction pairs from `documents` (each a list of sentences, each a list of
    token ids without special tokens), as BERT's `create_instances_from_document`:

    Sentences of a document are gathered into a chunk until it holds `max_length - 3` tokens
    (for a document drawn with probability `short_seq_prob`, a shorter random target, so the
    model also sees short inputs). A chunk is split at a random sentence boundary into A and B; with probability
    `random_next_prob` (always, for a one-sentence chunk, which has no B), B is instead taken
    from a random sentence onward of another document, and the sentences of the chunk it did not
    use go back to be read again. A and B are then cut to fit (`truncate_seq_pair`).
    Pairs come in document order (BERT shuffles them afterwards; the batch sampler does that
    here). Deterministic given `seed`. Another document is drawn uniformly among the other non-empty
    ones (BERT retries a random draw ten times), so at least two non-empty documents are needed.
    """
    docs = [[list(s) for s in d if len(s)] for d in documents]
    docs = [d for d in docs if d]
    if len(docs) < 2:
        raise LLMKitError(f"next-sentence prediction needs at least two non-empty documents, got {len(docs)}")
    max_tokens = max_length - 3  # [CLS], [SEP], [SEP]
    if max_tokens < 2:
        raise LLMKitError(f"max_length {max_length} leaves no room for two segments and [CLS] [SEP] [SEP]")
    rng = random.Random(seed)
    out: list[NSPExample] = []
    for d, doc in enumerate(docs):
        target = rng.randint(2, max_tokens) if rng.random() < short_seq_prob else max_tokens
        chunk: list[list[int]] = []
        length = 0
        i = 0
        while i < len(doc):
            chunk.append(doc[i])
            length += len(doc[i])
            if i == len(doc) - 1 or length >= target:
                a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
                a = [t for s in chunk[:a_end] for t in s]
                if len(chunk) == 1 or rng.random() < random_next_prob:
                    label = IS_RANDOM
                    other = rng.randrange(len(docs) - 1)
                    other_doc = docs[other + (other >= d)]  # uniform over the other documents
                    b: list[int] = []
                    for s in other_doc[rng.randrange(len(other_doc)):]:
                        b.extend(s)
                        if len(b) >= target - len(a):
                            break
                    i -= len(chunk) - a_end  # the unused sentences are read again
                else:
                    label = IS_NEXT
                    b = [t for s in chunk[a_end:] for t in s]
                truncate_seq_pair(a, b, max_tokens, rng)
                ids = [cls_id, *a, sep_id, *b, sep_id]
                out.append(NSPExample(ids, [0] * (len(a) + 2) + [1] * (len(b) + 1), label))
                chunk, length = [], 0
            i += 1
    return out
