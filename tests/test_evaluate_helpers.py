"""Fixtures shared by the tests/test_evaluate_*.py files (this module holds no tests).

A tiny random Hugging Face model and a byte-level BPE tokenizer trained on the spot are saved
in one directory, so that `transformers` (and the harness's `hf` backend) and llmkit load the
very same weights and vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import make_hf_model

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Question: what is the capital of France? Answer: Paris.",
    "A cat sat on the mat and looked at the moon, then went to sleep.",
    "Numbers: 1 2 3 4 5 6 7 8 9 10. Colours: red, green, blue, yellow.",
] * 5

MC_DOCS = [
    {"question": "What is the capital of France?", "choices": ["Paris", "London", "Rome", "Berlin"], "label": 0},
    {"question": "How many legs does a cat have?", "choices": ["two", "four", "six", "eight"], "label": 1},
    {"question": "Which animal jumps over the lazy dog?",
     "choices": ["the cat", "the cow", "the quick brown fox", "a bird"], "label": 2},
    {"question": "What color is the sky?", "choices": ["green", "red", "yellow", "blue"], "label": 3},
    {"question": "What comes after 3?", "choices": ["4", "5", "2", "1"], "label": 0},
    {"question": "Where did the cat sit?",
     "choices": ["on the moon", "on the mat", "in the box", "under the bed"], "label": 1},
    {"question": "What does the fox do?", "choices": ["sleeps", "jumps", "sings", "reads"], "label": 1},
]


def save_tokenizer(out: Path, vocab_size: int, bos: bool) -> None:
    """Byte-level BPE with <pad>=0, <s>=1, </s>=2 (the tiny HF configs' ids). With `bos`, the
    tokenizer.json post-processor prepends <s> (Llama's convention), otherwise nothing (GPT-2's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"], min_frequency=1,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    assert tok.get_vocab_size() == vocab_size
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", 1)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "pad_token": "<pad>", "clean_up_tokenization_spaces": False}
    (out / "tokenizer_config.json").write_text(json.dumps(config))


def make_model_dir(root: Path, family: str = "llama", bos: bool = True, seed: int = 0,
                   context: int | None = None) -> Path:
    """A tiny HF model of `family` plus its tokenizer in root/<family>-<bos>-<seed>[-<context>].

    `context` raises the context length (RoPE families only) for prompts longer than the tiny
    configs' 128 tokens, e.g. a judge's grading prompt."""
    d = Path(root) / (f"{family}-{'bos' if bos else 'nobos'}-{seed}" + (f"-{context}" if context else ""))
    if not (d / "tokenizer.json").exists():
        model = make_hf_model(family, seed)
        if context:
            model.config.max_position_embeddings = context
        model.save_pretrained(d)
        save_tokenizer(d, model.config.vocab_size, bos)
    return d


ALPACA = [
    {"instruction": "Name the capital of France.", "input": "", "output": "Paris"},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Give the opposite of the word.", "input": "hot", "output": "cold"},
    {"instruction": "Say what the fox does.", "input": "", "output": "The quick brown fox jumps over the lazy dog."},
    {"instruction": "Where did the cat sit?", "input": "A cat sat on the mat.", "output": "On the mat."},
]


def write_mc_task(root: Path, name: str = "tiny_mc", docs: list[dict] | None = None,
                  data_file: Path | None = None, extra: str = "") -> Path:
    """A multiple-choice harness task (YAML + JSONL) in root/tasks; returns that folder."""
    tasks = Path(root) / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    data = data_file or tasks / f"{name}.jsonl"
    if data_file is None:
        data.write_text("".join(json.dumps(d) + "\n" for d in (docs or MC_DOCS)))
    # cache_dir keeps the `datasets` cache inside the test's temporary folder.
    (tasks / f"{name}.yaml").write_text(f"""task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {Path(root) / "hf-datasets-cache"}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: label
doc_to_choice: "{{{{choices}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
{extra}""")
    return tasks
