"""Data shared by the tests/test_evaluate_*.py files (this module holds no tests).

The tiny model directories (`make_model_dir`: a random Hugging Face model and a byte-level BPE
tokenizer trained on CORPUS, in one directory, so that `transformers`, the harness's `hf`
backend and llmkit load the very same weights and vocabulary) are built by tests/helpers.py,
with the other test builders; the multiple-choice task and Alpaca records are here.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import CORPUS, make_model_dir  # noqa: F401 (used by the test_evaluate_* files)

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
