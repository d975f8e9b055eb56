"""text2text-generation, summarization, translation: an encoder-decoder (T5, BART) writes an
output for each input text with llmkit's one generation engine (the source encoded once;
greedy, sampling, or beam search with a length penalty).

    "summarize: The tower is 324 m tall ..." -> [{"generated_text": "..."}]    text2text-generation
    "The tower is 324 m tall ..."            -> [{"summary_text": "..."}]      summarization
    "How old are you?"                       -> [{"translation_text": "..."}]  translation(_en_to_de)

Shaped as transformers 4's Text2TextGenerationPipeline and its two subclasses (transformers 5
removed them): one input gives a list of `num_return_sequences` records, a list of inputs a list
of records (a list of lists when several sequences are returned); `return_tensors=True` gives
`*_token_ids` instead of text. As there, the settings come from the model: config.json's
`task_specific_params[task]` (T5's "summarize: " prefix and beam settings, `translation_en_to_de`'s
prefix), then generation_config.json, then the call's options; `max_length` / `min_length`
count the decoder start token (so max_new_tokens = max_length - 1), transformers' default
max_length is 20. Options: max_new_tokens, min_new_tokens, max_length, min_length, num_beams,
length_penalty, early_stopping, no_repeat_ngram_size, num_return_sequences, do_sample,
temperature, top_k, top_p, seed, prefix, return_tensors, clean_up_tokenization_spaces.
"""

from __future__ import annotations

from llmkit.errors import LLMKitError
from llmkit.pipelines.base import Pipeline

GENERATION_KEYS = ("max_new_tokens", "min_new_tokens", "max_length", "min_length", "num_beams", "length_penalty",
                   "early_stopping", "no_repeat_ngram_size", "do_sample", "temperature", "top_k", "top_p")
DEFAULTS = {"max_length": 20, "num_beams": 1, "length_penalty": 1.0, "early_stopping": False,
            "no_repeat_ngram_size": 0, "do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0}


class Text2TextGenerationPipeline(Pipeline):
    """Inputs: a text or a list of texts."""

    task = "text2text-generation"
    key = "generated"  # the result's field: {key}_text / {key}_token_ids
    OPTIONS = {**{k: None for k in GENERATION_KEYS}, "num_return_sequences": 1, "seed": None, "prefix": None,
               "return_tensors": False, "return_text": True, "clean_up_tokenization_spaces": None}

    def __init__(self, loaded, batch_size: int = 8, name=None, **defaults):
        super().__init__(loaded, batch_size, name, **defaults)
        from llmkit.generate.kernels import prepare_for_decoding

        prepare_for_decoding(self.model)

    def check(self) -> None:
        if not self.model.cfg.is_seq2seq:
            kind = "a decoder (try text-generation)" if self.model.cfg.causal else "an encoder"
            raise LLMKitError(f"{self.task} needs an encoder-decoder model (T5, BART); {self.name} is {kind}")

    def task_params(self) -> dict:
        """config.json's task_specific_params for this task (transformers' pipelines apply them)."""
        from llmkit.errors import read_json

        f = self.loaded.path / "config.json"
        cfg = read_json(f) if f.is_file() else {}
        params = (cfg.get("task_specific_params") or {}) if isinstance(cfg, dict) else {}
        return dict(params.get(self.task) or {}) if isinstance(params, dict) else {}

    def settings(self, opts: dict) -> dict:
        """Generation settings: transformers' defaults < generation_config.json < the task's
        params < the call's options."""
        from llmkit.errors import read_json

        d = dict(DEFAULTS)
        f = self.loaded.path / "generation_config.json"
        gen = read_json(f) if f.is_file() else {}
        task = self.task_params()
        layers = [gen if isinstance(gen, dict) else {}, task,
                  {k: opts[k] for k in GENERATION_KEYS if opts[k] is not None}]
        for layer in layers:
            if "max_new_tokens" in layer and layer["max_new_tokens"] is not None:
                d.pop("max_length", None)
            if "max_length" in layer and layer["max_length"] is not None:
                d.pop("max_new_tokens", None)
            d.update({k: layer[k] for k in GENERATION_KEYS if layer.get(k) is not None})
        new = d.get("max_new_tokens")
        d["max_new_tokens"] = int(new) if new is not None else max(int(d["max_length"]) - 1, 1)
        d["min_new_tokens"] = int(d.get("min_new_tokens") or max(int(d.get("min_length") or 0) - 1, 0))
        prefix = opts["prefix"] if opts["prefix"] is not None else task.get("prefix", "")
        return {**d, "prefix": prefix or ""}

    def _run(self, items: list, opts: dict) -> list:
        from llmkit.generate import SamplingParams, beam_search_batch, generate_batch

        s = self.settings(opts)
        n = opts["num_return_sequences"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise LLMKitError(f"num_return_sequences must be a positive integer, got {n!r}")
        tok = self.tokenizer
        ids = tok.encode_batch([s["prefix"] + x for x in items])
        limit = self.model.max_seq_len
        ids = [x if len(x) <= limit else x[: limit - 1] + x[-1:] for x in ids]  # truncated, EOS kept
        beams = int(s["num_beams"])
        outputs: list[list[list[int]]] = []
        if s["do_sample"]:
            if beams > 1:
                raise LLMKitError("beam search with sampling (num_beams > 1, do_sample=True) is not supported")
            for j in range(n):
                seed = s.get("seed", opts["seed"])
                params = SamplingParams(max_new_tokens=s["max_new_tokens"], min_new_tokens=s["min_new_tokens"],
                                        temperature=float(s["temperature"]), top_k=s["top_k"] or None,
                                        top_p=float(s["top_p"]), seed=None if seed is None else seed + j)
                for start in range(0, len(ids), self.batch_size):
                    done = generate_batch(self.model, tok, ids[start:start + self.batch_size], params)
                    for k, c in enumerate(done):
                        if j == 0:
                            outputs.append([])
                        outputs[start + k].append(_without_stop(c.token_ids, tok))
        else:  # greedy (num_beams 1) or beam search, through the beam engine (no-repeat n-grams, forced tokens)
            if n > beams:
                raise LLMKitError(f"num_return_sequences ({n}) must be <= num_beams ({beams}) without sampling")
            for start in range(0, len(ids), self.batch_size):
                found = beam_search_batch(self.model, tok, ids[start:start + self.batch_size], num_beams=beams,
                                          max_new_tokens=s["max_new_tokens"], min_new_tokens=s["min_new_tokens"],
                                          length_penalty=float(s["length_penalty"]),
                                          early_stopping=s["early_stopping"], num_return_sequences=n,
                                          no_repeat_ngram_size=int(s["no_repeat_ngram_size"]))
                outputs += [[_without_stop(r.token_ids, tok) for r in rs] for rs in found]
        results = []
        for out in outputs:
            if opts["return_tensors"]:
                results.append([{f"{self.key}_token_ids": t} for t in out])
            else:
                results.append([{f"{self.key}_text": self.decode(t, skip_special=True,
                                                                 clean_up=opts["clean_up_tokenization_spaces"])}
                                for t in out])
        return results

    def _shape(self, results: list, single: bool, opts: dict, inputs):
        if single:
            return results[0]
        # transformers 4: a list of inputs with one sequence each gives a flat list of records
        return [r[0] for r in results] if all(len(r) == 1 for r in results) else results


def _without_stop(ids: list[int], tok) -> list[int]:
    return ids[:-1] if ids and ids[-1] in tok.eos_ids else list(ids)


class SummarizationPipeline(Text2TextGenerationPipeline):
    task = "summarization"
    key = "summary"


class TranslationPipeline(Text2TextGenerationPipeline):
    """translation, or translation_XX_to_YY: the task name picks config.json's
    task_specific_params (T5: "translate English to German: ")."""

    task = "translation"
    key = "translation"

    def __init__(self, loaded, batch_size: int = 8, name=None, task: str = "translation", **defaults):
        self.task = task
        super().__init__(loaded, batch_size, name, **defaults)
