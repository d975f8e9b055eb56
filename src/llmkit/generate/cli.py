"""`llmkit generate MODEL --prompt TEXT`: one completion streamed to stdout, timing on stderr."""

from __future__ import annotations

import sys
from typing import Optional

from llmkit.errors import LLMKitError
from llmkit.generate.decode import stream, with_style_stops
from llmkit.generate.kernels import load_for_inference
from llmkit.generate.sampling import COMMAND_DEFAULTS, SamplingParams
from llmkit.prompts import resolve_style


def timing_line(seconds: float, n_tokens: int) -> str:
    """`Time for inference: 3.08 sec total, 13.94 tokens/sec, 43 tokens`"""
    rate = n_tokens / seconds if seconds > 0 else 0.0
    return f"Time for inference: {seconds:.2f} sec total, {rate:.2f} tokens/sec, {n_tokens} tokens"


def generate_cli(
    model: str,
    prompt: str,
    max_new_tokens: int = COMMAND_DEFAULTS.max_new_tokens,
    temperature: float = COMMAND_DEFAULTS.temperature,
    top_k: Optional[int] = COMMAND_DEFAULTS.top_k,
    top_p: float = COMMAND_DEFAULTS.top_p,
    seed: Optional[int] = None,
    stop: Optional[list[str]] = None,
    style: Optional[str] = None,
    chat_template: Optional[str] = None,
    system: Optional[str] = None,
    device: str = "cpu",
    dtype: Optional[str] = None,
    num_beams: int = 1,
    length_penalty: float = 1.0,
) -> None:
    """Generate a continuation of a prompt, streamed to stdout (timing on stderr).

    Args:
        model: an llmkit checkpoint directory, a Hugging Face model directory or a hub repo id
            (with its tokenizer files).
        prompt: the text to continue (or, with --style/--chat_template, the user message).
        max_new_tokens: generate at most this many tokens (fewer if the context ends first).
        temperature: 0 for greedy decoding; higher is more random.
        top_k: sample among the k most likely tokens only (0 or null: all).
        top_p: nucleus sampling: the smallest set of tokens holding this probability, in (0, 1].
        seed: random seed, for reproducible sampling.
        stop: strings that end the generation (cut from the output), e.g. '["\\n\\n"]'.
        style: wrap the prompt as a chat message: "auto" (the model's chat template, else a
            style its vocabulary suggests, else alpaca) or a style name (alpaca, chatml, llama3,
            llama2, mistral, phi3, gemma, plain). Default: the prompt is used as is.
        chat_template: a Jinja chat template file to wrap the prompt with (instead of --style).
        system: system prompt (with --style or --chat_template).
        device: cpu, cuda, cuda:1, mps...
        dtype: float32 or bfloat16 (default: the checkpoint's).
        num_beams: beam search with this many beams (what summarization and translation use;
            deterministic, printed when done rather than streamed). 1: greedy or sampling.
        length_penalty: with beams, a finished beam scores sum(log p) / length ** this (> 1
            favours longer outputs, < 1 shorter ones).
    """
    if num_beams < 1:
        raise LLMKitError(f"--num-beams must be >= 1, got {num_beams}")
    if num_beams > 1 and (temperature > 0 or stop):
        raise LLMKitError("beam search is deterministic and takes no stop strings: give --temperature 0 and no --stop")
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                            seed=seed, stop=tuple(stop or ()))
    if system is not None and style is None and chat_template is None:
        raise LLMKitError("--system needs --style or --chat_template (a plain prompt has no system part)")
    loaded, tokenizer = load_for_inference(model, device, dtype)
    if loaded.classifier is not None:  # its output layer scores labels, not tokens: no text comes out
        labels = ", ".join(map(str, loaded.classifier.get("labels", [])))
        raise LLMKitError(f"{model} is a text classifier (labels: {labels}), not a language model: "
                          f"label texts with `llmkit classify predict {model} \"TEXT\"`")
    if style is None and chat_template is None:
        ids, stop_ids = tokenizer.encode(prompt), set(tokenizer.eos_ids)
    else:
        chat_style = resolve_style(tokenizer, style, chat_template)
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        ids = chat_style.encode(tokenizer, messages)
        params, stop_ids = with_style_stops(params, chat_style, tokenizer)
    context = loaded.model.max_seq_len
    seq2seq = loaded.model.cfg.is_seq2seq  # the prompt is the encoder's source; the decoder has its own context
    if len(ids) > context or (len(ids) == context and not seq2seq):
        raise LLMKitError(f"the prompt is {len(ids)} tokens; the model's context is {context} tokens")
    params = params.replace(max_new_tokens=min(params.max_new_tokens, context - (1 if seq2seq else len(ids))))
    if num_beams > 1:
        import time

        from llmkit.generate import beam_search

        t0 = time.perf_counter()
        best = beam_search(loaded.model, tokenizer, ids, num_beams=num_beams, max_new_tokens=params.max_new_tokens,
                           length_penalty=length_penalty, stop_ids=stop_ids)[0]
        print(best.text, flush=True)
        print(timing_line(time.perf_counter() - t0, len(best.token_ids)), file=sys.stderr)
        print(f"Prompt: {len(ids)} tokens, {num_beams} beams, score {best.score:.4f}; finish reason: "
              f"{best.finish_reason}", file=sys.stderr)
        return
    gen = stream(loaded.model, tokenizer, ids, params, stop_ids=stop_ids)
    for text in gen:
        sys.stdout.write(text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    c = gen.completion
    print(timing_line(c.total_time, len(c.token_ids)), file=sys.stderr)
    print(f"Prompt: {len(ids)} tokens, time to first token {c.time_to_first_token:.2f} sec; "
          f"finish reason: {c.finish_reason}", file=sys.stderr)
