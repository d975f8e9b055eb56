"""text-generation: continue a prompt (or answer a chat) with llmkit's one generation engine
(llmkit.generate: cached, batched decoding; greedy or sampling).

    "Once upon a time" -> [{"generated_text": "Once upon a time there was ..."}]
    [{"role": "user", "content": "Hi"}] -> [{"generated_text": [..., {"role": "assistant", ...}]}]

Shaped as transformers' TextGenerationPipeline: a list of `num_return_sequences` records per
prompt, `generated_text` the prompt followed by the decoded new tokens (special tokens
skipped), or only the new text with `return_full_text=False`, or `generated_token_ids`
(prompt and new ids) with `return_tensors=True`. Greedy decoding (`do_sample=False`) gives
transformers' tokens. Unless the model's generation_config.json says otherwise, the defaults
are transformers' pipeline defaults: sampling, temperature 0.7, top_k 50, 256 new tokens.
`stop_sequence` ends a generation at the token that completes the string (kept in the text).
A chat (a list of {"role", "content"}) is rendered with the model's chat template (else the
style its vocabulary suggests, see llmkit.prompts.resolve_style) and its reply appended.
"""

from __future__ import annotations

from llmkit.errors import LLMKitError
from llmkit.pipelines.base import Pipeline

# transformers' TextGenerationPipeline._default_generation_config, and GenerationConfig's top_k / top_p.
DEFAULTS = {"max_new_tokens": 256, "do_sample": True, "temperature": 0.7, "top_k": 50, "top_p": 1.0}


def _is_chat(x) -> bool:
    return isinstance(x, (list, tuple)) and bool(x) and all(isinstance(m, dict) and "role" in m for m in x)


class TextGenerationPipeline(Pipeline):
    """Inputs: a prompt, a chat, or a list of prompts or chats."""

    task = "text-generation"
    OPTIONS = {"max_new_tokens": None, "min_new_tokens": 0, "do_sample": None, "temperature": None, "top_k": None,
               "top_p": None, "seed": None, "num_return_sequences": 1, "stop_sequence": None,
               "return_full_text": True, "return_tensors": False, "prefix": "", "clean_up_tokenization_spaces": None,
               "skip_special_tokens": True, "style": None}

    def __init__(self, loaded, batch_size: int = 8, name=None, **defaults):
        super().__init__(loaded, batch_size, name, **defaults)
        from llmkit.generate.kernels import prepare_for_decoding

        prepare_for_decoding(self.model)

    def check(self) -> None:
        if self.head is not None:
            self.need_head("lm", "a causal language model")
        if not self.model.cfg.causal:
            raise LLMKitError(f"text-generation needs a causal language model; {self.name} is an encoder "
                              f"(masked language model): try fill-mask")
        if self.model.cfg.is_seq2seq:
            raise LLMKitError(f"text-generation continues a prompt; {self.name} is an encoder-decoder: try "
                              f"text2text-generation, summarization or translation")

    def _items(self, inputs, opts):
        if isinstance(inputs, str) or _is_chat(inputs):
            return [inputs], True
        if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(x, str) or _is_chat(x) for x in inputs):
            return list(inputs), False
        raise LLMKitError('text-generation takes a prompt, a chat (a list of {"role", "content"}), '
                          'or a list of them')

    def generation_defaults(self) -> dict:
        """DEFAULTS, with what the model's generation_config.json sets."""
        from llmkit.errors import read_json

        out = dict(DEFAULTS)
        f = self.loaded.path / "generation_config.json"
        cfg = read_json(f) if f.is_file() else {}
        if isinstance(cfg, dict):
            out.update({k: cfg[k] for k in DEFAULTS if cfg.get(k) is not None})
            if "max_new_tokens" not in cfg and isinstance(cfg.get("max_length"), int):
                out["max_new_tokens"] = None  # a total length instead, resolved per prompt
                out["max_length"] = cfg["max_length"]
        return out

    def _params(self, opts: dict):
        from llmkit.generate.sampling import SamplingParams

        d = self.generation_defaults()
        given = {k: opts[k] for k in ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p")
                 if opts[k] is not None}
        if "max_new_tokens" in given:
            d.pop("max_length", None)
        d.update(given)
        sample = bool(d["do_sample"])
        n = opts["num_return_sequences"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise LLMKitError(f"num_return_sequences must be a positive integer, got {n!r}")
        if n > 1 and not sample:
            raise LLMKitError("num_return_sequences > 1 needs sampling (do_sample=True): greedy decoding gives "
                              "one sequence")
        stop = opts["stop_sequence"]
        stop = (stop,) if isinstance(stop, str) else tuple(stop or ())
        params = SamplingParams(max_new_tokens=d["max_new_tokens"] if d["max_new_tokens"] is not None else 0,
                                temperature=float(d["temperature"]) if sample else 0.0,
                                top_k=d["top_k"] if sample else None, top_p=float(d["top_p"]) if sample else 1.0,
                                seed=opts["seed"], stop=stop, min_new_tokens=opts["min_new_tokens"])
        if sample and params.temperature == 0:
            raise LLMKitError("do_sample=True needs a temperature > 0")
        return params, d.get("max_length"), n

    def _run(self, items: list, opts: dict) -> list:
        from llmkit.generate.decode import DecodeBatch, Sequence, with_style_stops

        params, max_length, n = self._params(opts)
        tok, context = self.tokenizer, self.model.max_seq_len
        jobs = []  # (prompt ids, params, stop ids) per item
        for x in items:
            p, stop_ids = params, set(tok.eos_ids)
            if isinstance(x, str):
                ids = tok.encode(opts["prefix"] + x)
            else:
                from llmkit.prompts import resolve_style

                style = resolve_style(tok, opts["style"])
                ids = style.encode(tok, list(x))
                p, stop_ids = with_style_stops(p, style, tok)
            if not ids:
                raise LLMKitError("text-generation: the prompt is empty (and the tokenizer adds no BOS token)")
            if len(ids) >= context:
                raise LLMKitError(f"the prompt is {len(ids)} tokens; the model's context is {context} tokens")
            budget = p.max_new_tokens if max_length is None else max(max_length - len(ids), 0)
            p = p.replace(max_new_tokens=min(budget, context - len(ids)))
            jobs.append((ids, p, stop_ids))
        # Rows of `batch_size` sequences share one KV cache; greedy rows equal lone runs.
        rows = [(i, j) for i in range(len(jobs)) for j in range(n)]
        done: dict = {}
        for s in range(0, len(rows), self.batch_size):
            chunk = rows[s:s + self.batch_size]
            seqs = []
            for i, j in chunk:
                ids, p, stop_ids = jobs[i]
                if p.seed is not None and j:
                    p = p.replace(seed=p.seed + j)  # each returned sequence its own draw
                seqs.append(Sequence(ids, p, tok, stop_ids))
            longest = max(len(q.prompt_ids) + max(q.params.max_new_tokens, 1) for q in seqs)
            batch = DecodeBatch(self.model, len(seqs), min(context, longest))  # just the cache these rows need
            batch.add(seqs)
            while batch.seqs:
                batch.step()
            for key, q in zip(chunk, seqs):
                done[key] = q.token_ids
        results = []
        for i, x in enumerate(items):
            ids = jobs[i][0]
            records = []
            for j in range(n):
                new = done[(i, j)]
                if opts["return_tensors"]:
                    records.append({"generated_token_ids": list(ids) + list(new)})
                    continue
                text = self.decode(new, skip_special=opts["skip_special_tokens"],
                                   clean_up=opts["clean_up_tokenization_spaces"])
                if not opts["return_full_text"]:
                    records.append({"generated_text": text})
                elif isinstance(x, str):
                    records.append({"generated_text": x + text})
                else:
                    records.append({"generated_text": list(x) + [{"role": "assistant", "content": text}]})
            results.append(records)
        return results
