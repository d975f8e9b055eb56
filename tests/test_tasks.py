"""Token-level task heads (recipes/tasks.py): `llmkit ner` on CoNLL files and `llmkit qa` on SQuAD
JSON learn a tiny task end to end, score with the reference metrics, write a model that
`predict`, the pipelines and transformers' task classes load with the same outputs."""

import json
import random

import pytest
import torch

from llmkit.checkpoint import load_model
from tests.helpers import build_encoder_dir, cli_error, cli_run

NAMES = ["paris", "london", "sister", "title"]  # whole tokens of the tiny WordPiece vocabulary
OTHER = ["game", "piano", "songs", "night", "the", "was", "and"]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return build_encoder_dir(tmp_path_factory.mktemp("enc"), "bert", noise=0.0)


def _conll(path, n, seed):
    """Sentences where the NAMES words are B-LOC (and a following 'night' I-LOC), others O."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = [rng.choice(NAMES + OTHER) for _ in range(rng.randint(3, 8))]
        tags, prev = [], "O"
        for w in words:
            t = "B-LOC" if w in NAMES else ("I-LOC" if w == "night" and prev != "O" else "O")
            tags.append(t)
            prev = t
        lines += [f"{w}\t{t}" for w, t in zip(words, tags)] + [""]
    path.write_text("\n".join(lines) + "\n")
    return path


def _args(*extra):
    return [*extra, "--train.eval_every", "0", "--train.save_every", "0", "--train.precision", "fp32",
            "--train.tensorboard", "false", "--train.warmup_steps", "5", "--train.micro_batch_size", "8"]


def test_ner_learns_tags_and_scores_like_seqeval(encoder, tmp_path, capsys):
    import seqeval.metrics
    import transformers

    from llmkit.data.conll import read_conll
    from llmkit.recipes.tasks import tag_sentences

    train, test = _conll(tmp_path / "train.conll", 150, 0), _conll(tmp_path / "test.conll", 40, 1)
    out = tmp_path / "ner"
    code, stdout, err = cli_run(capsys, ["ner", "train", str(encoder), "--data", str(train), "--test-data",
                                         str(test), "--out", str(out),
                                         *_args("--train.max_steps", "120", "--train.lr", "3e-3")])
    assert code == 0, err
    result = json.loads((out / "summary.json").read_text())
    assert result["test_f1"] > 0.9, result
    loaded = load_model(out / "final")
    gold = read_conll(test)
    pred = tag_sentences(loaded.model, loaded.tokenizer, gold, loaded.classifier["labels"], 64)
    assert result["test_f1"] == pytest.approx(seqeval.metrics.f1_score([list(s.tags) for s in gold], pred))
    code, stdout, _ = cli_run(capsys, ["ner", "predict", str(out), "the", "--file", str(test)])
    assert code != 0  # texts and --file together: refused
    code, stdout, _ = cli_run(capsys, ["ner", "predict", str(out), "--file", str(test)])
    assert code == 0 and "entity F1" in stdout
    code, stdout, _ = cli_run(capsys, ["ner", "predict", str(out), "the paris game"])
    assert code == 0 and "[paris]B-LOC" in stdout
    # Exported as BertForTokenClassification: the same logits.
    code, _, err = cli_run(capsys, ["convert", "to-hf", str(out / "final"), str(tmp_path / "hf")])
    assert code == 0, err
    theirs = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path / "hf").eval()
    ids = torch.tensor([loaded.tokenizer.encode("the paris game was london")])
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, loaded.model(ids), atol=1e-4, rtol=1e-4)


def _squad(path, n, seed):
    """Questions 'where is X?' about contexts where one NAMES word follows 'in'."""
    rng = random.Random(seed)
    paras = []
    for i in range(n):
        place = rng.choice(NAMES)
        words = [rng.choice(OTHER) for _ in range(rng.randint(2, 6))] + ["in", place] + \
            [rng.choice(OTHER) for _ in range(rng.randint(2, 12))]
        context = " ".join(words) + "."
        start = context.index(" in ") + 4
        paras.append({"context": context, "qas": [{"id": f"q{i}", "question": "where was the game?",
                                                   "answers": [{"text": place, "answer_start": start}]}]})
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paras}]}))
    return path


def test_qa_learns_spans_over_windows_and_beats_the_baseline(encoder, tmp_path, capsys):
    train, dev = _squad(tmp_path / "train.json", 160, 0), _squad(tmp_path / "dev.json", 40, 1)
    out = tmp_path / "qa"
    # Windows of 16 tokens with stride 4: most contexts span two or three windows.
    code, stdout, err = cli_run(capsys, ["qa", "train", str(encoder), "--data", str(train), "--val-data",
                                         str(dev), "--out", str(out), "--max-seq-len", "16", "--stride", "4",
                                         *_args("--train.max_steps", "150", "--train.lr", "3e-3")])
    assert code == 0, err
    result = json.loads((out / "summary.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())["val"]
    assert result["val_exact_match"] > 80, metrics
    assert metrics["baseline_first_sentence"]["exact_match"] == 0  # the whole context is one sentence
    code, stdout, _ = cli_run(capsys, ["qa", "predict", str(out), "--question", "where was the game?",
                                       "--context", "the game was in london and the night"])
    assert code == 0 and stdout.strip().splitlines()[-1] == "london"
    code, stdout, _ = cli_run(capsys, ["qa", "predict", str(out), "--file", str(dev), "--out",
                                       str(tmp_path / "pred.json")])
    assert code == 0 and len(json.loads((tmp_path / "pred.json").read_text())) == 40
    # The question-answering pipeline reads the same model and gives the same answer.
    import llmkit

    ans = llmkit.pipeline("question-answering", str(out / "final"))(question="where was the game?",
                                                                   context="the game was in paris and the songs")
    assert ans["answer"] == "paris"


def test_task_commands_refuse_decoders_and_wrong_models(encoder, tiny_model_dir, tmp_path, capsys):
    train = _conll(tmp_path / "t.conll", 5, 0)
    cli_error(capsys, ["ner", "train", str(tiny_model_dir()), "--data", str(train), "--out", str(tmp_path / "a"),
                       *_args("--train.max_steps", "1")], "decoder", "encoder")
    cli_error(capsys, ["qa", "predict", str(encoder), "--question", "q", "--context", "c"],
              "not a question-answering model")
