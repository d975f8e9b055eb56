"""Beam search: the sequences, and their scores, that transformers' `generate(num_beams=n,
do_sample=False)` returns, for one prompt or several decoding together.

    prompts ──prefill──> one cache row per prompt, each with its start (next token, position)
    loop, one forward for every live beam of every prompt (rows = prompts x beams):
        log_softmax (float32) -> no-repeat n-grams, min_new_tokens -> + the beam's running score
        -> top K over beams x vocab (K = max(2, 1 + #stop ids) * n: n beams keep running even
           when every beam's best candidates end in a stop token)
        -> candidates ending in a stop token (or at max_new_tokens) join the prompt's n finished
           hypotheses, scored sum of log-probs / generated_len ** length_penalty
        -> the n best others run on: the cache rows are gathered to follow their parents
        a prompt is done when its running beams cannot beat its finished ones (early_stopping,
        below) or at max_new_tokens; its rows leave the batch.

What transformers 5 does (generation/utils.py `_beam_search`, which we follow step for step):
* The length in the penalty is the number of generated tokens, the stop token included, the
  prompt excluded (for an encoder-decoder model: excluding the decoder start token).
* Only a candidate among the n best of the K (by summed log-prob, before any penalty) may
  finish; the others that end are dropped. A candidate that finishes at max_new_tokens counts too.
* early_stopping=True: a prompt is done once it has n finished hypotheses. False (the
  default): also done when the best running beam, scored as if it ended now (its length so
  far), cannot beat the worst of n finished ones — a heuristic, with length_penalty > 0 a
  longer beam might still have won. "never": the same test, but with length_penalty > 0 the
  running beam is scored at max_new_tokens (the best it could still reach), the canonical
  beam search. True also applies the heuristic: whichever ends the prompt first.
* The result is the n finished hypotheses best first; num_return_sequences of them are kept.
* num_beams=1 is greedy search there (not a one-beam search, which keeps a runner-up alive
  after a stop token), and here too.

The two model-specific pieces are `prefill` (a decoder-only model continues its prompt: the
prompt but its last token fills the cache row, which then decodes from the last token at its
position) and `next_logprobs` (one cached forward at (B, 1) tokens and positions). An
encoder-decoder model replaces the first: run the encoder once per prompt and start the
decoder from its start token at position 0; the loop and the scoring are the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence as Seq

import torch

from llmkit.errors import LLMKitError
from llmkit.generate.decode import DecodeBatch, Sequence, encode_prompt
from llmkit.generate.sampling import SamplingParams, force_token, forced_tokens

if TYPE_CHECKING:
    from llmkit.tokenizer import Tokenizer

# transformers' "minus infinity" for beams that must not be picked: a large finite number, so
# that masked candidates keep their order among themselves as there (they can matter when
# fewer than n unmasked candidates are left, e.g. with banned tokens).
_MASKED = -1.0e9


@dataclass
class BeamResult:
    """One finished hypothesis of a beam search."""

    text: str  # decoded, the stop token left out (as Completion.text)
    token_ids: list[int]  # generated ids, the stop token included when one ended the hypothesis
    prompt_ids: list[int]
    score: float  # logprob / len(token_ids) ** length_penalty: transformers' `sequences_scores`
    logprob: float  # sum of the generated tokens' log-probabilities
    finish_reason: str  # "stop" (a stop token) or "length" (max_new_tokens or the context)


@dataclass
class Start:
    """Where a prompt's decoding starts once prefilled: feed `token` at `pos` in its cache row.
    `context` is what the decoder has seen, `token` last: the prompt for a decoder-only model,
    [decoder start token] for an encoder-decoder one (no-repeat n-grams are counted over it,
    as transformers does)."""

    token: int
    pos: int
    context: list[int]


# --- the model-specific pieces ------------------------------------------------------------------
def prefill(model, tokenizer: "Tokenizer", prompts: list[list[int]], max_len: int):
    """(cache, starts): prompt i prefilled into row i of a new cache of `max_len` slots by the
    decoding engine's own prefill (DecodeBatch.add: chunked, prompt checks and their errors)."""
    batch = DecodeBatch(model, len(prompts), max_len, src_len=max(len(p) for p in prompts))
    seqs = [Sequence(p, SamplingParams(max_new_tokens=1), tokenizer, set()) for p in prompts]
    batch.add(seqs)
    # A decoder's context is the prompt; an encoder-decoder's decoder starts from its start token
    # at position 0 (the source is in the cache's cross-attention rows).
    return batch.cache, [Start(s.next_input, s.pos, s.context_ids) for s in seqs]


def next_logprobs(model, tokens: torch.Tensor, pos: torch.Tensor, cache) -> torch.Tensor:
    """Log-probabilities (R, vocab), float32, of the token after each row's `tokens` (R,) fed
    at positions `pos` (R,) (or (1,): every row at the same one) into cache rows 0..R-1."""
    logits = model(tokens[:, None], pos[:, None] if pos.numel() > 1 else pos[None], cache, last_only=True)
    return torch.log_softmax(logits[:, -1].float(), dim=-1)


def reorder(cache, rows: torch.Tensor):
    """The cache whose row b is row rows[b] of `cache` (beams follow their parents).

    A new cache (`select`, one index_select per buffer) rather than gathering the used slots
    in place: measured 2.1 vs 4.4 ms a step (SmolLM2-135M shape, fp32, 4 beams, 64 + 48
    tokens, a ~100 ms forward), and an encoder-decoder cache only needs its own `select`."""
    return cache.select(rows.tolist())


# --- logits processors (transformers applies them to the log-probs, after log_softmax) ------------
def _ban_repeated_ngrams(logprobs: torch.Tensor, seqs: torch.Tensor, n: int) -> None:
    """Forbid, in place, every token that would repeat an n-gram of its row: logprobs (N, V),
    seqs (N, L) the tokens each row has seen (context + generated). Vectorised over rows: the
    last n-1 tokens are compared with every window of the row."""
    L = seqs.shape[1]
    if L < n:
        return
    if n == 1:  # every token seen is banned
        logprobs.scatter_(1, seqs, float("-inf"))
        return
    windows = seqs.unfold(1, n, 1)  # (N, L - n + 1, n)
    suffix = seqs[:, L - n + 1:]  # (N, n - 1)
    hit = (windows[:, :, :-1] == suffix[:, None]).all(-1)  # (N, L - n + 1)
    rows, w = hit.nonzero(as_tuple=True)
    logprobs[rows, windows[rows, w, -1]] = float("-inf")


# --- argument checks ----------------------------------------------------------------------------
def _check_args(num_beams, max_new_tokens, length_penalty, early_stopping, num_return_sequences,
                no_repeat_ngram_size, min_new_tokens) -> None:
    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not is_int(num_beams) or num_beams < 1:
        raise LLMKitError(f"num_beams must be a positive integer, got {num_beams!r}")
    if not is_int(num_return_sequences) or not 1 <= num_return_sequences <= num_beams:
        raise LLMKitError(f"num_return_sequences must be between 1 and num_beams ({num_beams}), "
                          f"got {num_return_sequences!r}")
    if not is_int(max_new_tokens) or max_new_tokens < 1:
        raise LLMKitError(f"max_new_tokens must be a positive integer for beam search, got {max_new_tokens!r}")
    if not isinstance(length_penalty, (int, float)) or isinstance(length_penalty, bool) \
            or not math.isfinite(length_penalty):
        raise LLMKitError(f"length_penalty must be a finite number, got {length_penalty!r}")
    if early_stopping not in (True, False, "never") or isinstance(early_stopping, (int, float)) \
            and not isinstance(early_stopping, bool):
        raise LLMKitError(f"early_stopping must be true, false or 'never', got {early_stopping!r}")
    for name, v in (("no_repeat_ngram_size", no_repeat_ngram_size), ("min_new_tokens", min_new_tokens)):
        if not is_int(v) or v < 0:
            raise LLMKitError(f"{name} must be a non-negative integer, got {v!r}")


# --- the search ---------------------------------------------------------------------------------
def beam_search(model, tokenizer: "Tokenizer", prompt: "str | Seq[int]", num_beams: int = 4, *,
                max_new_tokens: int = 128, length_penalty: float = 1.0, early_stopping: "bool | str" = False,
                num_return_sequences: int = 1, stop_ids: Optional[set[int]] = None,
                no_repeat_ngram_size: int = 0, min_new_tokens: int = 0) -> list[BeamResult]:
    """The `num_return_sequences` best hypotheses of a beam search over `prompt`, best first.

    Token for token `transformers`' generate(num_beams=..., do_sample=False, length_penalty=...,
    early_stopping=..., num_return_sequences=..., no_repeat_ngram_size=..., min_new_tokens=...)
    with eos_token_id = `stop_ids` (default: the tokenizer's EOS ids); `score` is its
    `sequences_scores`. length_penalty > 0 favours longer hypotheses, < 0 shorter ones;
    early_stopping True / False / "never" as there (see the module notes). num_beams=1 is
    greedy decoding (scored the same way)."""
    return beam_search_batch(model, tokenizer, [prompt], num_beams, max_new_tokens=max_new_tokens,
                             length_penalty=length_penalty, early_stopping=early_stopping,
                             num_return_sequences=num_return_sequences, stop_ids=stop_ids,
                             no_repeat_ngram_size=no_repeat_ngram_size, min_new_tokens=min_new_tokens)[0]


@torch.inference_mode()
def beam_search_batch(model, tokenizer: "Tokenizer", prompts: Seq["str | Seq[int]"], num_beams: int = 4, *,
                      max_new_tokens: int = 128, length_penalty: float = 1.0, early_stopping: "bool | str" = False,
                      num_return_sequences: int = 1, stop_ids: Optional[set[int]] = None,
                      no_repeat_ngram_size: int = 0, min_new_tokens: int = 0) -> list[list[BeamResult]]:
    """`beam_search` over several prompts at once: their beams share one cache and one forward
    a step (rows = prompts x beams), each prompt at its own positions, and each gets what it
    gets alone. A prompt that is done leaves the batch."""
    _check_args(num_beams, max_new_tokens, length_penalty, early_stopping, num_return_sequences,
                no_repeat_ngram_size, min_new_tokens)
    ids = [encode_prompt(tokenizer, p) for p in prompts]
    if not ids:
        return []
    stops = sorted(set(tokenizer.eos_ids if stop_ids is None else stop_ids))
    context = 1 if model.cfg.is_seq2seq else max(len(p) for p in ids)  # the decoder's tokens before generating
    max_len = min(model.max_seq_len, context + max_new_tokens)
    cache, starts = prefill(model, tokenizer, ids, max_len)
    search = _greedy if num_beams == 1 else _beams
    forced = forced_tokens(model.cfg)  # BART's <s> first and </s> last
    hyps = search(model, cache, starts, stops, max_len, num_beams, max_new_tokens, float(length_penalty),
                  early_stopping, no_repeat_ngram_size, min_new_tokens, forced)
    results = []
    for p, found in zip(ids, hyps):
        out = []
        for tokens, logprob, score in found[:num_return_sequences]:
            stopped = bool(tokens) and tokens[-1] in stops
            text = tokenizer.decode(tokens[:-1] if stopped else tokens)
            out.append(BeamResult(text, tokens, list(p), score, logprob, "stop" if stopped else "length"))
        results.append(out)
    return results


class _Prompts:
    """Per-prompt decoding state of the live prompts (row q of each tensor: live prompt q)."""

    def __init__(self, starts: list[Start], max_len: int, max_new: int, device):
        self.index = torch.arange(len(starts))  # original prompt number
        self.pos = torch.tensor([s.pos for s in starts], device=device)  # position of the first fed token
        # Tokens each prompt may generate: max_new_tokens, fewer where the context ends first.
        self.limit = torch.tensor([min(max_new, max_len - s.pos - 1) for s in starts], device=device)
        self.context = [torch.tensor(s.context, device=device) for s in starts]

    def keep(self, mask: torch.Tensor) -> None:
        kept = mask.nonzero().squeeze(1)
        self.index, self.pos, self.limit = self.index[kept.cpu()], self.pos[kept], self.limit[kept]
        self.context = [self.context[q] for q in kept.tolist()]


def _positions(pos: torch.Tensor, per_prompt: int) -> torch.Tensor:
    """Row positions (R,) for `per_prompt` rows per prompt, or (1,) when all are equal (the
    model's one-query path: no mask, one contiguous cache write)."""
    if bool((pos == pos[0]).all()):
        return pos[:1]
    return pos.repeat_interleave(per_prompt)


def _process(logprobs: torch.Tensor, t: int, live: _Prompts, generated: torch.Tensor, stops: list[int],
             no_repeat: int, min_new: int, forced: tuple = (None, None)) -> None:
    """Apply min_new_tokens, no_repeat_ngram_size and forced first / last tokens (transformers'
    ForcedBOS/ForcedEOSTokenLogitsProcessor, which a BART config asks for) to logprobs
    (P, n, V) in place; generated (P, n, >= t) holds each beam's tokens so far."""
    if t < min_new and stops:
        logprobs[..., stops] = float("-inf")
    bos, eos = forced
    for token, rows in ((bos, slice(None) if t == 0 else None),
                        (eos, (t + 1 >= live.limit).nonzero().squeeze(1) if eos is not None else None)):
        if token is not None and rows is not None:
            chosen = logprobs[rows]  # a view (all rows) or a copy (some rows): written back below
            force_token(chosen, token)
            logprobs[rows] = chosen
    if no_repeat:
        for q, ctx in enumerate(live.context):  # per prompt (contexts differ in length), not per beam
            n = logprobs.shape[1]
            seqs = torch.cat([ctx.expand(n, -1), generated[q, :, :t]], dim=1)  # (n, len)
            _ban_repeated_ngrams(logprobs[q], seqs, no_repeat)


def _greedy(model, cache, starts, stops, max_len, n, max_new, length_penalty, early_stopping, no_repeat, min_new,
            forced=(None, None)):
    """num_beams=1: the likeliest token each step (transformers' greedy search), one row a prompt."""
    device = next(model.parameters()).device
    live = _Prompts(starts, max_len, max_new, device)
    P = len(starts)
    tokens = torch.tensor([s.token for s in starts], device=device)
    generated = torch.zeros(P, 1, max_new, dtype=torch.long, device=device)
    total = torch.zeros(P, device=device)
    found: list[list] = [[] for _ in range(P)]
    stop_t = torch.tensor(stops, dtype=torch.long, device=device)
    for t in range(max_new):
        logprobs = next_logprobs(model, tokens, _positions(live.pos + t, 1), cache)[:, None]  # (P, 1, V)
        _process(logprobs, t, live, generated, stops, no_repeat, min_new, forced)
        best, tokens = logprobs[:, 0].max(-1)  # (P,)
        total = total + best
        generated[:, 0, t] = tokens
        done = torch.isin(tokens, stop_t) | (t + 1 >= live.limit)
        for q in done.nonzero().squeeze(1).tolist():
            lp = float(total[q])
            found[int(live.index[q])] = [(generated[q, 0, : t + 1].tolist(), lp, lp / (t + 1) ** length_penalty)]
        if bool(done.all()):
            break
        keep = ~done
        live.keep(keep)
        tokens, total, generated = tokens[keep], total[keep], generated[keep]
        if not bool(keep.all()):
            cache = reorder(cache, keep.nonzero().squeeze(1))
    return found


def _beams(model, cache, starts, stops, max_len, n, max_new, length_penalty, early_stopping, no_repeat, min_new,
           forced=(None, None)):
    """Beam search proper; returns per prompt its n finished (tokens, logprob, score), best first.

    State per live prompt q (P of them), beam b (n), candidate c (K):
        run_scores (P, n)          summed log-probs of the running beams (-1e9: none yet)
        run_tokens (P, n, max_new) their generated tokens
        fin_*      (P, n)          the n best finished hypotheses: score, summed log-prob,
                                   tokens (P, n, max_new), length, and `fin_real` (False for
                                   the -1e9 placeholders a prompt starts with)
    """
    device = next(model.parameters()).device
    live = _Prompts(starts, max_len, max_new, device)
    P = len(starts)
    K = max(2, 1 + len(stops)) * n
    stop_t = torch.tensor(stops, dtype=torch.long, device=device)
    top_n = torch.arange(K, device=device) < n  # (K,) only these candidates may finish
    tokens = torch.tensor([s.token for s in starts], device=device)  # (rows,) one row a prompt at first
    run_scores = torch.full((P, n), _MASKED, device=device)
    run_scores[:, 0] = 0.0  # the n beams start as copies of one: only the first may expand
    run_tokens = torch.zeros(P, n, max_new, dtype=torch.long, device=device)
    fin_scores = torch.full((P, n), _MASKED, device=device)
    fin_logprob = torch.zeros(P, n, device=device)
    fin_tokens = torch.zeros(P, n, max_new, dtype=torch.long, device=device)
    fin_len = torch.zeros(P, n, dtype=torch.long, device=device)
    fin_real = torch.zeros(P, n, dtype=torch.bool, device=device)
    found: list[list] = [[] for _ in range(P)]

    for t in range(max_new):  # t tokens generated so far
        rows_per_prompt = 1 if t == 0 else n
        logprobs = next_logprobs(model, tokens, _positions(live.pos + t, rows_per_prompt), cache)
        P, V = len(live.index), logprobs.shape[-1]
        logprobs = logprobs.view(P, rows_per_prompt, V).expand(P, n, V).clone() if t == 0 \
            else logprobs.view(P, n, V)  # (P, n, V)
        _process(logprobs, t, live, run_tokens, stops, no_repeat, min_new, forced)

        # Top K continuations over beams x vocab by summed log-prob.
        summed = (logprobs + run_scores[:, :, None]).view(P, n * V)
        cand_scores, flat = summed.topk(K, dim=-1)  # (P, K), best first
        parent, cand_tok = flat // V, flat % V  # (P, K)
        cand_tokens = run_tokens.gather(1, parent[:, :, None].expand(P, K, max_new))  # (P, K, max_new)
        cand_tokens[:, :, t] = cand_tok
        ends = torch.isin(cand_tok, stop_t) | (t + 1 >= live.limit)[:, None]  # (P, K)

        # The n best candidates that do not end run on.
        running = cand_scores + ends.float() * _MASKED
        pick = running.topk(n, dim=-1).indices  # (P, n)
        run_scores = running.gather(1, pick)
        run_tokens = cand_tokens.gather(1, pick[:, :, None].expand(P, n, max_new))
        run_parent, run_tok = parent.gather(1, pick), cand_tok.gather(1, pick)

        # Candidates that end, among the top n, join the finished hypotheses if they are among
        # the n best. (transformers also masks them out once a prompt is done; here a prompt
        # that is done has left the batch, so every live one still takes new hypotheses.)
        new_real = ends & top_n  # (P, K)
        new_scores = cand_scores / (t + 1) ** length_penalty
        new_scores = torch.where(new_real, new_scores, new_scores + _MASKED)
        both = torch.cat([fin_scores, new_scores], dim=1)  # (P, n + K)
        merged = both.topk(n, dim=-1).indices  # (P, n), best first
        fin_scores = both.gather(1, merged)
        fin_logprob = torch.cat([fin_logprob, cand_scores], 1).gather(1, merged)
        fin_len = torch.cat([fin_len, torch.full_like(cand_tok, t + 1)], 1).gather(1, merged)
        fin_real = torch.cat([fin_real, new_real], 1).gather(1, merged)
        fin_tokens = torch.cat([fin_tokens, cand_tokens], 1).gather(1, merged[:, :, None].expand(P, n, max_new))

        # Can the running beams still win? The best one, scored at its length so far (or, for
        # "never" with a positive penalty, at the most tokens it may still reach), against the
        # worst finished hypothesis (with fewer than n finished: yes). Lengths ** penalty in
        # float64 then float32, as transformers' Python floats.
        if early_stopping == "never" and length_penalty > 0:
            best_len = (live.limit.double() ** length_penalty).float()
        else:
            best_len = torch.full_like(run_scores[:, 0], (t + 1) ** length_penalty)
        best_possible = run_scores[:, 0] / best_len  # (P,)
        worst = torch.where(fin_real, fin_scores.min(1, keepdim=True).values, torch.full_like(fin_scores, _MASKED))
        can_win = (best_possible[:, None] > worst).any(1)
        done = ~can_win | (t + 1 >= live.limit)
        if early_stopping is True:
            done |= fin_real.all(1)

        for q in done.nonzero().squeeze(1).tolist():
            lengths, lps, scores, real = (x[q].tolist() for x in (fin_len, fin_logprob, fin_scores, fin_real))
            found[int(live.index[q])] = [(fin_tokens[q, b, : lengths[b]].tolist(), lps[b], scores[b])
                                         for b in range(n) if real[b]]
        if bool(done.all()):
            break
        keep = ~done
        kept = keep.nonzero().squeeze(1)  # (P',)
        # Rows of the next step: prompt q's beam b continues row (q's row of beam b's parent).
        src = kept[:, None] * n + run_parent[kept] if t > 0 else kept[:, None].expand(-1, n)  # (P', n)
        cache = reorder(cache, src.flatten())
        tokens = run_tok[kept].flatten()
        run_scores, run_tokens = run_scores[kept], run_tokens[kept]
        fin_scores, fin_logprob, fin_tokens = fin_scores[kept], fin_logprob[kept], fin_tokens[kept]
        fin_len, fin_real = fin_len[kept], fin_real[kept]
        live.keep(keep)
    return found
