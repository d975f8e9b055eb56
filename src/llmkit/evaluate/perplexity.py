"""Perplexity of text files with a sliding window.

The method of the Hugging Face guide "Perplexity of fixed-length models": a document longer than
the window is scored in windows of `max_length` tokens that advance by `stride`; each window
scores only the tokens the previous one did not, so every token is scored exactly once, with at
least `max_length - stride` tokens of context (all earlier tokens in the first window). A smaller
stride gives each token more context (a lower, more faithful perplexity) for more compute;
stride == max_length is the fast, disjoint-chunk estimate.

Each document is preceded by the tokenizer's BOS token (EOS where there is none, as GPT-2's
`<|endoftext|>` separates documents), like the harness's `loglikelihood_rolling`, so that the
first word is scored too and bits-per-byte covers every byte of the text.

Reported per file and overall; the overall numbers weight files by their tokens
(exp(total NLL / total tokens)), not an average of per-file perplexities.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional

import torch

from llmkit.errors import LLMKitError
from llmkit.evaluate.harness import token_logprobs


@dataclass
class PerplexityResult:
    name: str
    documents: int
    tokens: int  # scored tokens
    bytes: int  # UTF-8 bytes of the scored text
    nll: float  # summed negative log-likelihood, nats

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.tokens) if self.tokens else float("nan")

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / self.bytes if self.bytes else float("nan")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(perplexity=self.perplexity, bits_per_byte=self.bits_per_byte,
                 nll_per_token=self.nll / self.tokens if self.tokens else float("nan"))
        return d


def sliding_windows(n_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, n_scored) windows over a sequence of n_tokens: tokens[begin:end] is the input
    and its last n_scored tokens are scored (the first token of the sequence never is: it has
    nothing to be predicted from). The HF guide's loop (windows start at multiples of `stride`
    and score what the previous window did not), kept as data so windows can be batched.

    With stride == max_length the guide's loop would drop the first token of every window (no
    context left to predict it from); here such a window starts one token earlier instead,
    which gives the harness's disjoint rolling windows.
    """
    if not 0 < stride <= max_length:
        raise LLMKitError(f"stride must be between 1 and max_length ({max_length}), got {stride}")
    windows, begin, next_token = [], 0, 1  # next_token: first token not scored yet
    while next_token < n_tokens:
        begin = min(begin, next_token - 1)  # at least one token of context for the first target
        end = min(begin + max_length, n_tokens)
        windows.append((begin, end, end - next_token))
        next_token = end
        begin += stride
    return windows


@torch.inference_mode()
def document_nlls(model, docs: list[list[int]], max_length: int, stride: int, batch_size: int = 8,
                  progress: bool = True) -> list[tuple[float, int]]:
    """(summed NLL in nats, scored tokens) per document of token ids."""
    from llmkit.progress import progress as make_progress

    dev = next(model.parameters()).device
    jobs = [(d, b, e, s) for d, ids in enumerate(docs) for b, e, s in sliding_windows(len(ids), max_length, stride)]
    # Longest windows first and together: full windows batch without padding.
    jobs.sort(key=lambda j: -(j[2] - j[1]))
    nll = [0.0] * len(docs)
    count = [0] * len(docs)
    bar = make_progress(total=len(jobs), desc="perplexity", unit="windows", enabled=progress, leave=False)
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start:start + batch_size]
        width = max(e - b for _, b, e, _ in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        for r, (d, b, e, _) in enumerate(batch):
            ids[r, : e - b] = torch.tensor(docs[d][b:e])
        # The window's last token is only a target, so the model reads all but the last column.
        # Right padding with plain causal attention: real tokens never see the padding after them.
        h = model.hidden_states(ids[:, :-1].to(dev))  # (B, width - 1, d)
        for r, (d, b, e, s) in enumerate(batch):
            n = e - b
            # Hidden states at n-s-1 .. n-2 predict the scored tokens n-s .. n-1.
            logp, _ = token_logprobs(model, h[r, n - s - 1: n - 1], ids[r, n - s: n].to(dev))
            nll[d] -= float(logp.sum())
            count[d] += s
        bar.update(len(batch))
    bar.close()
    return list(zip(nll, count))


def _documents(path: Path, text_field: str) -> list[str]:
    from llmkit.data import iter_documents

    return [doc.text for doc in iter_documents([str(path)], text_field=text_field)]


def perplexity(model, tokenizer, files: Iterable[str], max_length: Optional[int] = None,
               stride: Optional[int] = None, batch_size: int = 8, text_field: str = "text",
               progress: bool = True) -> dict:
    """Perplexity and bits-per-byte of each file and overall.

    Args:
        model: an llmkit `Transformer`.
        tokenizer: its `llmkit.tokenizer.Tokenizer`.
        files: text files (one document each), JSONL/JSON/Parquet (one document per record,
            the text in `text_field`), or folders of them.
        max_length: window length in tokens (default: the model's context).
        stride: how far each window advances (default: max_length // 2).
        batch_size: windows per forward pass.
    """
    from llmkit.data import expand_sources

    if model.cfg.is_seq2seq:
        raise LLMKitError("--perplexity scores a decoder's next-token predictions; an encoder-decoder predicts a "
                          "target from a source: evaluate it with --generate-data (ROUGE / BLEU) or --tasks")
    if not model.cfg.causal:
        raise LLMKitError("--perplexity needs a causal language model; this is an encoder (masked LM)")
    block = model.cfg.block_size
    max_length = max_length or block
    if not 1 < max_length <= block:
        raise LLMKitError(f"max_length {max_length} must be between 2 and the model's context ({block})")
    stride = stride or max(1, max_length // 2)
    if not 0 < stride <= max_length:
        raise LLMKitError(f"stride must be between 1 and max_length ({max_length}), got {stride}")
    prefix = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
    if prefix is None:
        raise LLMKitError("the tokenizer has neither a BOS nor an EOS token to start documents with")
    files = list(files)
    if not files:
        raise LLMKitError("no perplexity files given")
    per_file: list[PerplexityResult] = []
    for _, path in expand_sources(files):
        texts = _documents(path, text_field)
        if not texts:
            raise LLMKitError(f"{path}: no text to score")
        docs = [[prefix] + ids for ids in tokenizer.encode_batch(texts, bos=False)]
        scores = document_nlls(model, docs, max_length, stride, batch_size, progress)
        per_file.append(PerplexityResult(
            name=str(path), documents=len(docs), tokens=sum(c for _, c in scores),
            bytes=sum(len(t.encode("utf-8")) for t in texts), nll=sum(v for v, _ in scores)))
    overall = PerplexityResult("overall", sum(r.documents for r in per_file), sum(r.tokens for r in per_file),
                               sum(r.bytes for r in per_file), sum(r.nll for r in per_file))
    return {"max_length": max_length, "stride": stride,
            "files": {r.name: r.to_dict() for r in per_file}, "overall": overall.to_dict()}
