"""Pipelines: a task over a model in one call, with inputs and outputs shaped as `transformers`'
pipelines (`llmkit.pipeline(task, model)`, `llmkit pipeline TASK MODEL INPUT...`).

    pipe = llmkit.pipeline("ner", "path/to/model", aggregation_strategy="simple")
    pipe("John lives in Paris")            # one input  -> its result
    pipe(["text one", "text two"])         # a list     -> a list of results, in batches

A pipeline is the tokenizer + the model (loaded by `checkpoint.load_model`: an llmkit or a
Hugging Face folder, or a hub id) + its head + the task's pre- and post-processing; nothing is
trained or converted. The tasks (one module each) and what the model must be:

    task                      alias               model                  result per input
    fill-mask                                     masked LM (encoder)    [{score, token, token_str, sequence}]
    text-classification       sentiment-analysis  sequence head          [{label, score}]
    token-classification      ner                 token head             [{entity | entity_group, score, word,
                                                                           start, end[, index]}]
    question-answering                            span head              {score, start, end, answer}
    feature-extraction                            any                    [[[float] per token]]
    zero-shot-classification                      NLI sequence head      {sequence, labels, scores}
    text-generation                               causal LM              [{generated_text}]
    text2text-generation                          encoder-decoder        [{generated_text}]
    summarization                                 encoder-decoder        [{summary_text}]
    translation, translation_XX_to_YY             encoder-decoder        [{translation_text}]

Each module's docstring gives its options (the names transformers uses, e.g. `top_k`,
`aggregation_strategy`, `candidate_labels`, `max_new_tokens`); `pipeline(...)`'s keyword
arguments are default options of every call, a call's own keywords override them. On the same
weights the results equal transformers' pipelines (question-answering: transformers 4's span
decoding, see question_answering.py).
"""

from __future__ import annotations

import importlib
import re
from typing import Optional

from llmkit.errors import LLMKitError

# task -> "module:class" (imported when the task is asked for)
TASKS = {
    "fill-mask": "llmkit.pipelines.fill_mask:FillMaskPipeline",
    "text-classification": "llmkit.pipelines.classification:TextClassificationPipeline",
    "token-classification": "llmkit.pipelines.token_classification:TokenClassificationPipeline",
    "question-answering": "llmkit.pipelines.question_answering:QuestionAnsweringPipeline",
    "feature-extraction": "llmkit.pipelines.feature_extraction:FeatureExtractionPipeline",
    "zero-shot-classification": "llmkit.pipelines.classification:ZeroShotClassificationPipeline",
    "text-generation": "llmkit.pipelines.text_generation:TextGenerationPipeline",
    "text2text-generation": "llmkit.pipelines.text2text:Text2TextGenerationPipeline",
    "summarization": "llmkit.pipelines.text2text:SummarizationPipeline",
    "translation": "llmkit.pipelines.text2text:TranslationPipeline",
}
ALIASES = {"sentiment-analysis": "text-classification", "ner": "token-classification"}


def resolve_task(task: str) -> str:
    """The task's name (aliases resolved; underscores accepted for dashes)."""
    name = str(task).strip().lower().replace("_", "-")
    name = ALIASES.get(name, name)
    if re.fullmatch(r"translation-[a-z]+-to-[a-z]+", name):  # transformers' translation_en_to_de
        return "translation"
    if name not in TASKS:
        import difflib

        choices = list(TASKS) + list(ALIASES)
        close = difflib.get_close_matches(name, choices, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise LLMKitError(f"unknown pipeline task '{task}'{hint}; choose from: {', '.join(choices)}")
    return name


def pipeline(task: str, model, device: str = "cpu", dtype: Optional[str] = None, batch_size: int = 8,
             **options):
    """A pipeline for `task` over `model`: call it on an input or a list of inputs.

    Args:
        task: fill-mask, text-classification (sentiment-analysis), token-classification (ner),
            question-answering, feature-extraction, zero-shot-classification, text-generation,
            text2text-generation, summarization, translation (or translation_en_to_de, ...).
        model: a model directory (llmkit or Hugging Face, with its tokenizer files), a hub repo
            id, or a model already loaded with `llmkit.checkpoint.load_model`.
        device: cpu, cuda, cuda:N, mps or auto.
        dtype: float32, bfloat16, ... (default: as stored).
        batch_size: inputs per forward pass (text-generation: sequences decoded together).
        options: the task's call options, as defaults for every call.
    """
    from llmkit.checkpoint import Loaded, load_model

    name = resolve_task(task)
    if name == "translation":  # its task name picks config.json's task_specific_params
        options.setdefault("task", str(task).strip().lower().replace("-", "_"))
    module, _, cls = TASKS[name].partition(":")
    pipe_cls = getattr(importlib.import_module(module), cls)
    if isinstance(model, Loaded):
        loaded, label = model, str(model.path)
    else:
        loaded, label = load_model(model, device=device, dtype=dtype), str(model)
    return pipe_cls(loaded, batch_size=batch_size, name=label, **options)


__all__ = ["ALIASES", "TASKS", "pipeline", "resolve_task"]
