"""llmkit's model as an EleutherAI lm-evaluation-harness backend.

`LLMKitLM` is an `lm_eval.api.model.TemplateLM`: the harness's own base class turns each
(context, continuation) request into token ids (trailing context spaces moved into the
continuation, `prefix_token_id` standing in for an empty context), and we score the ids on
llmkit's `Transformer` directly from its checkpoint, no conversion to a `transformers` model.
Every token convention copies the harness's `hf` backend (`lm_eval.models.huggingface.HFLM`)
so that numbers are comparable with published ones:

* BOS is prepended iff the tokenizer prepends it (`add_bos_token` overrides), and never to a
  string that already starts with the BOS text; an empty context becomes the prefix token
  (BOS, else EOS).
* A request is scored on `(context + continuation)[-(max_length + 1):][:-1]`: too long inputs
  lose tokens on the left. The hf backend does that silently (a warning in a log); here it is
  an error unless `truncate=True`, because a few-shot prompt cut in the middle measures
  something other than what the task intends.
* `loglikelihood_rolling` uses the harness's disjoint windows (`get_rolling_token_windows`
  with one token of context), `generate_until` the same left-truncation to
  `max_length - max_gen_toks`, stop strings and EOS handling.

Encoder-decoders (T5, BART; `cfg.is_seq2seq`) follow the hf backend's `backend="seq2seq"`:

* `loglikelihood`: context and continuation are tokenized apart, the context with the
  tokenizer's own special tokens (T5: `... </s>`, BART: `<s> ... </s>`), the continuation with
  none. The context (its last `max_length` tokens) is the encoder's input; the decoder reads
  the decoder-start token then the continuation minus its last token (what transformers'
  `shift_tokens_right` makes of `labels`) and scores the continuation; `is_greedy` is the
  argmax at each of those positions. An empty context becomes the prefix token (BOS, else EOS).
* `loglikelihood_rolling`: the same token windows as for a decoder, scored as above, so the
  encoder sees one token (the prefix token, then the token before each window) and the decoder
  predicts the window: what the hf backend does (its own TODO says so), kept for comparable
  numbers.
* `generate_until`: the context, with the tokenizer's special tokens and cut to its last
  `max_length` tokens, is the source; the decoder starts from the decoder-start token and
  writes `max_gen_toks` tokens at most, stopped at EOS or an `until` string. Two hf-backend
  quirks are not copied, since they make a request's text depend on its batch: transformers'
  `max_length` counts decoder tokens, so the hf backend lets a seq2seq model write
  (longest source in the batch) + max_gen_toks - 1 tokens; and it left-pads sources, which
  moves BART's learned encoder positions. Here sources are right-padded under a mask, so a
  request gives the text the hf backend gives it alone, whenever EOS or a stop string ends it
  within max_gen_toks tokens.

Speed comes from sharing work the hf backend repeats. A request's input is split into a
*prefix* (the context without its last token) and a *suffix* (the last context token plus the
continuation minus its last token, i.e. exactly the positions whose logits are scored). Requests
with the same prefix (the choices of a multiple-choice question, whose contexts are identical)
run the prefix once; its keys and values are copied into a KV cache row per request, and only
the short suffixes run again. An encoder-decoder's requests with the same context run the encoder
once. The vocabulary projection is applied only at scored positions, not to the context or to
padding.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F

from llmkit.errors import LLMKitError

try:  # the harness is an optional extra (`pip install llmkit[eval]`)
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError:  # pragma: no cover - exercised only without the extra
    TemplateLM = object  # type: ignore[misc,assignment]

    def register_model(*_names):  # type: ignore[no-redef]
        return lambda cls: cls

LM_EVAL_MISSING = "the lm-evaluation-harness is not installed: pip install 'llmkit[eval]' (or lm_eval)"

# Largest (tokens x vocab) float32 block of logits materialised at once while scoring.
_LOGIT_BLOCK = 1 << 25


def require_lm_eval() -> None:
    if TemplateLM is object:
        raise LLMKitError(LM_EVAL_MISSING)


def output_logits(model, h: torch.Tensor) -> torch.Tensor:
    """The model's output head on hidden states `h` (..., n_embd), as `Transformer.forward` applies
    it (Gemma 2's softcap, BART's logit bias, T5 v1.0's rescaled tied embedding). Applied here at
    chosen positions only: on (B, T, vocab) logits of a padded batch most rows would be context
    or padding, and with a 150k vocabulary they dominate memory."""
    return model._lm_logits(h)


@register_model("llmkit")
class LLMKitLM(TemplateLM):
    """lm-evaluation-harness backend running an llmkit model.

    Importing this module registers it with the harness under the name "llmkit", so harness
    code can also ask for it by name:
    `lm_eval.simple_evaluate(model="llmkit", model_args="pretrained=DIR,batch_size=16", ...)`.
    """

    backend = "causal"

    def __init__(
        self,
        pretrained: Any,
        tokenizer: Any = None,
        device: Optional[str] = None,
        dtype: Optional[str] = None,
        batch_size: int | str = 16,
        max_length: Optional[int] = None,
        max_gen_toks: int = 256,
        truncate: bool = False,
        add_bos_token: Optional[bool] = None,
        prefix_token_id: Optional[int] = None,
        **_ignored: Any,  # harness-wide arguments (max_batch_size, ...) that do not apply here
    ) -> None:
        """
        Args:
            pretrained: a MODEL argument (llmkit or Hugging Face directory, hub repo id), or an
                already loaded `Transformer` (then `tokenizer` is required).
            tokenizer: an `llmkit.tokenizer.Tokenizer` or a tokenizer directory.
            batch_size: requests per forward pass.
            max_length: context length used for scoring (default: the model's block_size); for an
                encoder-decoder the longest source, and the longest continuation scored.
            max_gen_toks: default number of new tokens for `generate_until`.
            truncate: cut over-long inputs from the left like the hf backend, instead of failing.
            add_bos_token: force BOS on (True) or off (False); None follows the tokenizer.
            prefix_token_id: token that stands for an empty context (default BOS, else EOS).
        """
        require_lm_eval()
        super().__init__()
        from llmkit.tokenizer import Tokenizer

        if isinstance(pretrained, (str, Path)):
            from llmkit.checkpoint import load_model

            loaded = load_model(pretrained, device=device, dtype=dtype)
            model = loaded.model
            tokenizer = tokenizer if tokenizer is not None else loaded.tokenizer
        else:
            model = pretrained
            if tokenizer is None:
                raise LLMKitError("LLMKitLM: a tokenizer is required with an already loaded model")
        if isinstance(tokenizer, (str, Path)):
            tokenizer = Tokenizer.from_dir(tokenizer)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self._device = next(model.parameters()).device
        # An encoder-decoder: the harness's TemplateLM reads `backend` to tokenize context and
        # continuation apart; the decoder starts from the config's decoder-start token (T5: pad,
        # BART: </s>), as transformers' shift_tokens_right and generate do.
        self.seq2seq = bool(model.cfg.is_seq2seq)
        self.backend = "seq2seq" if self.seq2seq else "causal"
        extra = model.cfg.extra or {}
        self.decoder_start_id = int(extra.get("decoder_start_token_id", extra.get("pad_token_id", 0)))
        try:
            self.batch_size = int(batch_size)
        except (TypeError, ValueError):
            raise LLMKitError(f"batch_size must be a positive integer, got {batch_size!r}") from None
        if self.batch_size < 1:
            raise LLMKitError(f"batch_size must be a positive integer, got {batch_size}")
        block = model.cfg.block_size
        if max_length is not None and not 1 < int(max_length) <= block:
            raise LLMKitError(f"max_length {max_length} must be between 2 and the model's context ({block})")
        self._max_length = int(max_length) if max_length else block
        self._context_name = "the model's context" if not max_length else "the max_length"
        self._max_gen_toks = int(max_gen_toks)
        self.truncate = bool(truncate)
        self.add_bos_token = add_bos_token
        self.custom_prefix_token_id = prefix_token_id
        if self.prefix_token_id is None:
            raise LLMKitError("the tokenizer has neither a BOS nor an EOS token, so an empty context cannot be "
                              "represented; pass prefix_token_id")
        self._tasks: str = ""  # names of the tasks being scored, for error messages

    # --- what the harness asks of a model ----------------------------------------------------
    @property
    def eot_token_id(self) -> Optional[int]:
        return self.tokenizer.eos_id

    @property
    def prefix_token_id(self) -> Optional[int]:
        # hf backend: an explicit prefix token, else BOS, else EOS.
        if self.custom_prefix_token_id is not None:
            return self.custom_prefix_token_id
        return self.tokenizer.bos_id if self.tokenizer.bos_id is not None else self.tokenizer.eos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "source_dir", None) or "llmkit").replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> Optional[str]:
        return self.tokenizer.chat_template if chat_template else None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render the harness's few-shot chat history in the model's chat format (`auto`: its
        template, or the style its vocabulary suggests)."""
        from llmkit.prompts import resolve_style

        return resolve_style(self.tokenizer).render(chat_history, add_generation_prompt)

    def get_model_info(self) -> dict:
        n_params = sum(p.numel() for p in self.model.parameters())
        return {"model_num_parameters": n_params, "model_dtype": str(next(self.model.parameters()).dtype),
                "max_length": self.max_length}

    # --- tokenization (hf backend conventions) -----------------------------------------------
    def _bos_flag(self, add_special_tokens: Optional[bool]) -> Optional[bool]:
        """Map the harness's `add_special_tokens` onto `Tokenizer.encode(bos=...)`: True adds what
        the tokenizer adds by itself (BOS for Llama, nothing for GPT-2), as in transformers."""
        if add_special_tokens is False:
            return False
        return self.add_bos_token  # None: the tokenizer's own default

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None,
                   left_truncate_len: Optional[int] = None, **kwargs: Any) -> list[int]:
        bos = self._bos_flag(add_special_tokens)
        if add_special_tokens is None and self._starts_with_bos(string):
            bos = False  # the text carries its BOS already (e.g. a chat template put it there)
        # No special tokens at all, as transformers' add_special_tokens=False: no T5 </s> after
        # a seq2seq continuation either.
        ids = self.tokenizer.encode(string, bos=bos, eos=False if bos is False else None)
        if left_truncate_len:
            ids = ids[-left_truncate_len:]
        return ids

    def tok_decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special=skip_special_tokens)

    def _starts_with_bos(self, string: str) -> bool:
        pid = self.prefix_token_id
        text = self.tokenizer.decode([pid], skip_special=False) if pid is not None else ""
        return bool(text) and string.startswith(text)

    # --- loglikelihood ------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        self._tasks = ", ".join(sorted({r.task_name for r in requests if getattr(r, "task_name", None)}))
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def _too_long(self, n_ctx: int, n_cont: int) -> LLMKitError:
        where = f"task {self._tasks}: " if self._tasks else ""
        if self.seq2seq and n_cont > self.max_length:
            return LLMKitError(f"{where}a continuation of {n_cont} tokens does not fit {self._context_name} of "
                               f"{self.max_length} tokens (the decoder's input)")
        if self.seq2seq:
            return LLMKitError(
                f"{where}a context of {n_ctx} tokens does not fit {self._context_name} of {self.max_length} tokens "
                "(the encoder's input); use fewer few-shot examples (--num-fewshot), or --truncate to cut contexts "
                "from the left as the harness's hf backend does")
        return LLMKitError(
            f"{where}a prompt of {n_ctx} context + {n_cont} continuation tokens does not fit {self._context_name} "
            f"of {self.max_length} tokens; use fewer few-shot examples (--num-fewshot), or --truncate to cut "
            "prompts from the left as the harness's hf backend does")

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False,
                              override_bs: Optional[int] = None) -> list[tuple[float, bool]]:
        """Score `(key, context_ids, continuation_ids)` requests: (sum log p(continuation), greedy?)."""
        if self.seq2seq:
            return self._seq2seq_loglikelihood_tokens(requests, disable_tqdm, override_bs)
        L = self.max_length
        items = []  # (prefix ids, suffix ids, target ids) per request
        for _, ctx, cont in requests:
            if not cont:
                raise LLMKitError("empty continuation: nothing to score")
            if len(cont) > L:
                raise self._too_long(len(ctx), len(cont))
            if len(ctx) + len(cont) > L + 1 and not self.truncate:
                raise self._too_long(len(ctx), len(cont))
            inp = (ctx + cont)[-(L + 1):][:-1]  # the hf backend's input, left-truncated
            n = len(cont)
            items.append((tuple(inp[:-n]), inp[-n:], cont))

        batches = _plan_batches([p for p, _, _ in items], [len(s) for _, s, _ in items],
                                override_bs or self.batch_size)
        return self._run_batches(requests, items, batches, self._score_batch, disable_tqdm)

    def _run_batches(self, requests, items: list, batches: list[list[int]], score, disable_tqdm: bool):
        """`score` each batch of `items`; results in request order, each added to the harness's cache."""
        from tqdm import tqdm

        results: list[Optional[tuple[float, bool]]] = [None] * len(items)
        with tqdm(total=len(items), desc="loglikelihood", disable=disable_tqdm or None, leave=False) as bar:
            for batch in batches:
                for i, res in zip(batch, score([items[i] for i in batch])):
                    results[i] = res
                    key = requests[i][0]
                    if key is not None:
                        self.cache_hook.add_partial("loglikelihood", key, res)
                bar.update(len(batch))
        return results  # type: ignore[return-value]

    def _seq2seq_loglikelihood_tokens(self, requests, disable_tqdm: bool = False,
                                      override_bs: Optional[int] = None) -> list[tuple[float, bool]]:
        """An encoder-decoder's scores, as the hf seq2seq backend computes them: the context's last
        max_length tokens are the source, the continuation the decoder's target."""
        L = self.max_length
        items = []  # (source ids, continuation ids) per request
        for _, ctx, cont in requests:
            if not cont:
                raise LLMKitError("empty continuation: nothing to score")
            if not ctx:  # the harness gives an empty context the prefix token
                raise LLMKitError("empty context: an encoder-decoder needs a source")
            if len(cont) > L or (len(ctx) > L and not self.truncate):
                raise self._too_long(len(ctx), len(cont))
            items.append((tuple(ctx[-L:]), list(cont)))
        batches = _plan_batches([c for c, _ in items], [len(t) for _, t in items], override_bs or self.batch_size)
        return self._run_batches(requests, items, batches, self._score_seq2seq_batch, disable_tqdm)

    @torch.inference_mode()
    def _score_seq2seq_batch(self, items: Sequence[tuple[tuple, list[int]]]) -> list[tuple[float, bool]]:
        """One batch: each distinct source through the encoder once (right-padded, masked), then
        every decoder row [start] + continuation[:-1] against its source's states. Decoder rows are
        right-padded too: the causal mask keeps the padding after a row's tokens invisible."""
        model, dev = self.model, self.device
        sources = list(dict.fromkeys(src for src, _ in items))
        src_ids, _ = _right_pad(sources, dev)
        src_len = torch.tensor([len(src) for src in sources], device=dev)
        src_mask = torch.arange(src_ids.shape[1], device=dev)[None, :] < src_len[:, None]  # (U, S)
        memory = model.encode(src_ids, src_mask)  # (U, S, d)
        where = {src: r for r, src in enumerate(sources)}
        row = torch.tensor([where[src] for src, _ in items], device=dev)
        dec_ids, _ = _right_pad([[self.decoder_start_id] + cont[:-1] for _, cont in items], dev)  # (B, T)
        h = model.hidden_states(dec_ids, memory=memory.index_select(0, row),
                                memory_mask=src_mask.index_select(0, row))  # (B, T, d)
        lengths = torch.tensor([len(cont) for _, cont in items], device=dev)
        real = torch.arange(dec_ids.shape[1], device=dev)[None, :] < lengths[:, None]  # (B, T)
        targets = torch.tensor([t for _, cont in items for t in cont], device=dev)
        logp, greedy = token_logprobs(model, h[real], targets)
        out, k = [], 0
        for _, cont in items:
            m = len(cont)
            out.append((float(logp[k:k + m].sum()), bool(greedy[k:k + m].all())))
            k += m
        return out

    @torch.inference_mode()
    def _score_batch(self, items: Sequence[tuple[tuple, list[int], list[int]]]) -> list[tuple[float, bool]]:
        """One batch: unique prefixes through the model once, then every suffix on its prefix's
        cache row (copied when several requests share it). Rows are right-padded; padding sits at
        later positions than any real token of its row, so the causal mask keeps it invisible."""
        model, dev, L = self.model, self.device, self.max_length
        prefixes = list(dict.fromkeys(p for p, _, _ in items if p))
        p_len = [len(p) for p, _, _ in items]
        max_s = max(len(s) for _, s, _ in items)

        prefix_cache = None
        if prefixes:
            # Room for the suffixes too: a cache row is then used as it is, or copied whole.
            max_p = max(len(p) for p in prefixes)
            prefix_cache = model.new_cache(len(prefixes), max_p + max_s)
            ids, pos = _right_pad([list(p) for p in prefixes], dev)
            model.hidden_states(ids, pos, prefix_cache)  # fills the cache; no output head needed
        row_of = {p: r for r, p in enumerate(prefixes)}

        # Padding positions run past a row's last token; a row whose prefix plus the batch's
        # longest suffix would pass the context (learned position tables end there) runs alone.
        together = [i for i in range(len(items)) if p_len[i] + max_s <= L]
        alone = [i for i in range(len(items)) if p_len[i] + max_s > L]
        out: list[Optional[tuple[float, bool]]] = [None] * len(items)
        for rows in ([together] if together else []) + [[i] for i in alone]:
            suffixes = [items[i][1] for i in rows]
            width = max(len(s) for s in suffixes)
            ids, pos = _right_pad(suffixes, dev, start=[p_len[i] for i in rows])
            if max(p_len[i] for i in rows) == 0:  # no prefix (rolling windows): plain causal, no cache
                h = model.hidden_states(ids)  # (B, width, d)
            else:
                src = [row_of.get(items[i][0], 0) for i in rows]
                cache = prefix_cache if src == list(range(len(prefixes))) else prefix_cache.select(src)
                h = model.hidden_states(ids, pos, cache)  # (B, width, d)
            lengths = torch.tensor([len(suffix) for suffix in suffixes], device=dev)
            real = torch.arange(width, device=dev)[None, :] < lengths[:, None]  # (B, width)
            targets = torch.tensor([t for i in rows for t in items[i][2]], device=dev)
            logp, greedy = token_logprobs(model, h[real], targets)
            k = 0
            for i in rows:
                m = len(items[i][2])
                out[i] = (float(logp[k:k + m].sum()), bool(greedy[k:k + m].all()))
                k += m
        return out  # type: ignore[return-value]

    # --- loglikelihood_rolling ----------------------------------------------------------------
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-document log-likelihoods over disjoint max_length windows (hf backend windows).

        An encoder-decoder scores each window as the hf seq2seq backend does: the window's one
        context token (the prefix token, then the token before the window) is the source and the
        decoder predicts the window. That is a decoder language model over a one-token source,
        not what the model was trained for; kept to give the harness's numbers."""
        from lm_eval import utils as lm_utils

        windows, owner = [], []
        for n, req in enumerate(requests):
            (string,) = req.args
            pairs = lm_utils.get_rolling_token_windows(token_list=self.tok_encode(string),
                                                       prefix_token=self.prefix_token_id,
                                                       max_seq_len=self.max_length, context_len=1)
            for ctx, cont in map(lm_utils.make_disjoint_window, pairs):
                windows.append((None, ctx, cont))
                owner.append(n)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm) if windows else []
        totals = [0.0] * len(requests)
        for n, (lp, _) in zip(owner, scores):
            totals[n] += lp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # --- generate_until -----------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, per the task's gen_kwargs) generation, stopped at `until` strings.

        Requests with the same generation settings run together, longest prompt first, through
        llmkit's batched KV-cache generation. An encoder-decoder's prompt is its source and its
        decoder writes up to max_gen_toks tokens (see the module notes for the hf backend's own
        seq2seq budget, which depends on the batch).
        """
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
        from tqdm import tqdm

        from llmkit.evaluate.generative import complete

        args = [req.args for req in requests]
        groups: dict[str, list[int]] = defaultdict(list)
        for i, (_, kw) in enumerate(args):
            groups[repr(sorted(kw.items(), key=lambda kv: kv[0]))].append(i)
        eot = self.eot_token_id
        eos_text = self.tok_decode([eot], skip_special_tokens=False) if eot is not None else None
        out: list[str] = [""] * len(args)
        bar = tqdm(total=len(args), desc="generate_until", disable=disable_tqdm or None, leave=False)
        for members in groups.values():
            kwargs = normalize_gen_kwargs(copy.deepcopy(args[members[0]][1]), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
            max_new = int(kwargs.pop("max_gen_toks"))
            # A decoder-only prompt shares the context with the new tokens; an encoder-decoder's
            # source has max_length to itself, and its decoder holds the start token + new tokens.
            max_ctx = self.max_length if self.seq2seq else self.max_length - max_new
            if self.seq2seq and max_new + 1 > self.model.cfg.block_size:
                raise LLMKitError(f"task {', '.join(sorted({str(requests[i].task_name) for i in members}))}: "
                                  f"{max_new} new tokens do not fit the decoder's context of "
                                  f"{self.model.cfg.block_size} tokens (the decoder-start token and the new tokens)")
            if max_ctx <= 0:
                raise LLMKitError(f"task {', '.join(sorted({str(requests[i].task_name) for i in members}))}: "
                                  f"{max_new} new tokens leave no room for a prompt in {self._context_name} of "
                                  f"{self.max_length} tokens")
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
            prompts = []
            for i in members:
                # hf seq2seq backend: the tokenizer's own special tokens on every source (its batch
                # encoding applies neither the BOS-prefix rule nor add_bos_token).
                ids = self.tokenizer.encode(args[i][0]) if self.seq2seq else self.tok_encode(args[i][0])
                if len(ids) > max_ctx and not self.truncate:
                    self._tasks = requests[i].task_name or ""
                    what = (f"a source of {len(ids)} tokens does not fit" if self.seq2seq else
                            f"a prompt of {len(ids)} tokens plus {max_new} new tokens does not fit")
                    raise LLMKitError(
                        f"task {self._tasks}: {what} {self._context_name} of {self.max_length} tokens; use fewer "
                        "few-shot examples (--num-fewshot), or --truncate to cut prompts from the left as the hf "
                        "backend does")
                prompts.append(ids[-max_ctx:])
            order = sorted(range(len(members)), key=lambda j: -len(prompts[j]))
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                texts = complete(self.model, self.tokenizer, [prompts[j] for j in chunk], max_new, stop=until,
                                 temperature=temperature, top_p=float(kwargs.get("top_p") or 1.0),
                                 top_k=kwargs.get("top_k"))
                for j, text in zip(chunk, texts):
                    i = members[j]
                    out[i] = postprocess_generated_text(text, stop=until, think_end_token=None)
                    self.cache_hook.add_partial("generate_until", args[i], out[i])
                bar.update(len(chunk))
        bar.close()
        return out


def _plan_batches(keys: Sequence[tuple], sizes: Sequence[int], batch_size: int) -> list[list[int]]:
    """Batches of item indices: items with the same key (a shared prefix or source) together, a
    group larger than a batch split; longest (key + size) first, so each batch pads to similar
    lengths and a batch that does not fit in memory fails at once rather than at the end."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        groups[key].append(i)
    order = sorted(groups, key=lambda k: (-(len(k) + max(sizes[i] for i in groups[k])), k))
    batches: list[list[int]] = []
    current: list[int] = []
    for key in order:
        members = sorted(groups[key], key=lambda i: -sizes[i])
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            if current and len(current) + len(chunk) > batch_size:
                batches.append(current)
                current = []
            current.extend(chunk)
    if current:
        batches.append(current)
    return batches


def _right_pad(rows: Sequence[Sequence[int]], device: torch.device,
               start: Optional[Sequence[int]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, positions), both (B, T): rows padded on the right with token 0, positions counting on
    from `start[b]` (default 0) through the padding, so padding never shares a slot with a real
    token of its row."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([list(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long)
    offsets = torch.tensor(start if start is not None else [0] * len(rows), dtype=torch.long)
    pos = offsets[:, None] + torch.arange(width)[None, :]
    return ids.to(device), pos.to(device)


def token_logprobs(model, h: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) and argmax == target for hidden states h (N, d), in float32, in blocks of
    positions small enough that (block x vocab) logits stay bounded."""
    step = max(1, _LOGIT_BLOCK // model.cfg.vocab_size)
    logps, greedy = [], []
    for s in range(0, h.shape[0], step):
        logits = output_logits(model, h[s:s + step]).float()  # (n, vocab)
        t = targets[s:s + step]
        logps.append(F.log_softmax(logits, dim=-1).gather(-1, t[:, None]).squeeze(-1))
        greedy.append(logits.argmax(-1) == t)
    if not logps:
        return torch.zeros(0), torch.zeros(0, dtype=torch.bool)
    return torch.cat(logps), torch.cat(greedy)


# --- running harness tasks ----------------------------------------------------------------------
def _task_manager(names: list[str], include_path: Optional[list[str]]):
    """A TaskManager that knows `names`. Indexing the harness's ~15k built-in tasks takes seconds,
    so when every name is found in the include paths alone the built-ins are not scanned."""
    from lm_eval.tasks import TaskManager

    for p in include_path or []:
        if not Path(p).exists():
            raise LLMKitError(f"--include-path {p}: no such file or directory")
    if include_path:
        local = TaskManager(include_path=list(include_path), include_defaults=False)
        if all(local.match_tasks([n]) for n in names):
            return local
    return TaskManager(include_path=list(include_path) if include_path else None)


def run_tasks(lm: "LLMKitLM", tasks: list[str], num_fewshot: Optional[int] = None, limit: Optional[float] = None,
              include_path: Optional[list[str]] = None, apply_chat_template: bool = False,
              seed: int = 1234, log_samples: bool = False) -> dict:
    """Run harness tasks on `lm`; returns the harness's results dict (with "samples" if asked)."""
    require_lm_eval()
    import lm_eval

    names = [t.strip() for spec in tasks for t in spec.split(",") if t.strip()]
    if not names:
        raise LLMKitError("no task names given")
    tm = _task_manager(names, include_path)
    unknown = [n for n in names
               if not tm.match_tasks([n]) and not (n.endswith((".yaml", ".yml")) and Path(n).is_file())]
    if unknown:
        import difflib

        close = [m for n in unknown for m in difflib.get_close_matches(n, tm.all_tasks, n=3)]
        hint = f" (did you mean {', '.join(dict.fromkeys(close))}?)" if close else \
            " (local YAML tasks need --include-path DIR)" if not include_path else ""
        raise LLMKitError(f"unknown task{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}{hint}; "
                          "list the harness's tasks with `lm_eval ls tasks`")
    if num_fewshot is not None and num_fewshot < 0:
        raise LLMKitError(f"--num-fewshot must be >= 0, got {num_fewshot}")
    if limit is not None and limit <= 0:
        raise LLMKitError(f"--limit must be positive, got {limit}")
    from llmkit import hub

    offline = not hub.reachable()
    if offline:  # tasks whose data is cached or local still run; the others fail at once, in one line
        hub.go_offline()
    try:
        results = lm_eval.simple_evaluate(
            model=lm, tasks=names, num_fewshot=num_fewshot, limit=limit, task_manager=tm,
            log_samples=log_samples, apply_chat_template=apply_chat_template, random_seed=seed,
            numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed, bootstrap_iters=1000,
        )
    except LLMKitError:
        raise
    except FileNotFoundError as e:  # a local data file named in a task YAML
        raise LLMKitError(f"task data not found: {_one_line(e)}") from None
    except Exception as e:  # data set unreachable, malformed YAML/template: name the cause
        name = type(e).__name__
        if name in ("DatasetNotFoundError", "DataFilesNotFoundError", "EmptyDatasetError", "ConnectionError",
                    "HfHubHTTPError", "LocalEntryNotFoundError", "OfflineModeIsEnabled", "DatasetGenerationError"):
            why = " (the Hugging Face hub is not reachable: the data must be cached or local)" if offline else ""
            raise LLMKitError(f"cannot load the data of task(s) {', '.join(names)}{why}: {name}: {_one_line(e)}") from None
        raise
    if results is None:
        raise LLMKitError("the harness returned no results")
    return results


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def task_metrics(results: dict) -> dict[str, dict[str, float]]:
    """{task or group: {metric: value}} from a harness results dict: "acc,none" becomes "acc"
    (the filter name is kept when it is not "none"), stderr values keep their "_stderr" name."""
    table: dict[str, dict[str, float]] = {}
    for task, metrics in results.get("results", {}).items():
        row = {}
        for key, value in metrics.items():
            if key in ("alias", "name", "sample_len", " ") or "," not in key:
                continue
            metric, _, filt = key.partition(",")
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if isinstance(value, float) and math.isnan(value):
                continue
            row[metric if filt == "none" else f"{metric} ({filt})"] = float(value)
        table[task] = row
    return table
