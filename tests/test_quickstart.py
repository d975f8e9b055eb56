"""The built-in default (`llmkit quickstart`, src/llmkit/recipes/quickstart.py): corpus ->
tokenizer -> shards -> samples -> pretraining -> samples, with nothing downloaded."""

import json

from llmkit.recipes.quickstart import PROMPTS, quickstart, stdlib_docstrings


def test_stdlib_docstrings_are_a_real_corpus(tmp_path):
    n_docs, n_bytes = stdlib_docstrings(tmp_path / "c.jsonl", max_bytes=100_000)
    lines = (tmp_path / "c.jsonl").read_text().splitlines()
    assert len(lines) == n_docs >= 3 and n_bytes >= 100_000
    texts = [json.loads(x)["text"] for x in lines]
    assert sum(len(t.encode()) for t in texts) == n_bytes and all(len(t) > 80 for t in texts)


def test_quickstart_runs_the_cycle_on_a_small_corpus(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    words = "the model reads text and learns which word comes next in a sentence".split()
    corpus.write_text("\n\n".join(" ".join(words[(i + j) % len(words)] for j in range(40)) for i in range(60)))
    out = tmp_path / "qs"
    result = quickstart(out=str(out), minutes=0.02, corpus=[str(corpus)], model="tiny-llama", vocab_size=300,
                        seq_len=32, batch_size=4, lr=3e-3)
    printed = capsys.readouterr().out
    assert result["step"] >= 1 and result["final"] == str(out / "run" / "final")
    for f in ("tokenizer/tokenizer.json", "data/manifest.json", "run/final/model.safetensors", "run/loss.png",
              "run/summary.json"):
        assert (out / f).exists(), f
    assert printed.count("--- samples") == 2 and all(f"{p!r} -> {p}" in printed for p in PROMPTS)
    assert f"llmkit serve {out / 'run' / 'final'}" in printed  # ends with the rest of the cycle
    assert printed.count("next steps") == 1 and printed.rstrip().endswith("http://127.0.0.1:8000/v1")
    # Run again on the finished run: said, not silently 0 more steps with the old samples relabelled.
    before = (out / "run" / "metrics.csv").read_text()
    again = quickstart(out=str(out), minutes=0.02, corpus=[str(corpus)], model="tiny-llama", vocab_size=300,
                       seq_len=32, batch_size=4, lr=3e-3)
    printed = capsys.readouterr().out
    assert "already holds a finished run" in printed and "--- samples" not in printed
    assert again["step"] == result["step"] and (out / "run" / "metrics.csv").read_text() == before


def test_quickstart_bert_pretrains_an_encoder_and_shows_fill_mask(tmp_path, capsys):
    from llmkit.checkpoint import load_model
    from llmkit.recipes.quickstart import MASKED

    corpus = tmp_path / "corpus.txt"
    words = "the function returns the value of the list and the file is read".split()
    corpus.write_text("\n\n".join(" ".join(words[(i + j) % len(words)] for j in range(40)) for i in range(60)))
    out = tmp_path / "qsb"
    result = quickstart(out=str(out), minutes=0.02, corpus=[str(corpus)], arch="bert", model="tiny-bert",
                        vocab_size=200, seq_len=32, batch_size=4, lr=3e-3)
    printed = capsys.readouterr().out
    assert result["step"] >= 1 and load_model(out / "run" / "final").config.causal is False
    assert printed.count("--- fill-mask") == 2 and all(f"{m!r} -> " in printed for m in MASKED)
    assert "objective: masked-LM" in printed and "llmkit pipeline fill-mask" in printed
    tok = json.loads((out / "tokenizer" / "tokenizer_config.json").read_text())
    assert tok["tokenizer_class"] == "BertTokenizerFast"


def test_quickstart_t5_pretrains_an_encoder_decoder_and_shows_span_fills(tmp_path, capsys):
    from llmkit.checkpoint import load_model
    from llmkit.recipes.quickstart import SPANS

    corpus = tmp_path / "corpus.txt"
    words = "the function returns the value of the list and the file is read".split()
    corpus.write_text("\n\n".join(" ".join(words[(i + j) % len(words)] for j in range(40)) for i in range(60)))
    out = tmp_path / "qst5"
    result = quickstart(out=str(out), minutes=0.02, corpus=[str(corpus)], arch="t5", model="tiny-t5",
                        vocab_size=200, seq_len=32, batch_size=4, lr=3e-3)
    printed = capsys.readouterr().out
    assert result["step"] >= 1 and load_model(out / "run" / "final").config.is_seq2seq
    assert printed.count("--- span fills") == 2 and all(f"{m!r} -> " in printed for m in SPANS)
    assert "objective: span corruption" in printed and "AutoModelForSeq2SeqLM" in printed
    tok = json.loads((out / "tokenizer" / "tokenizer_config.json").read_text())
    assert tok["tokenizer_class"] == "T5Tokenizer"


def test_quickstart_refuses_a_mismatched_arch(tmp_path):
    import pytest

    from llmkit.errors import LLMKitError

    with pytest.raises(LLMKitError, match="--arch bert pretrains an encoder"):
        quickstart(out=str(tmp_path / "x"), arch="bert", model="tiny-llama")
