"""text2text-generation, summarization and translation pipelines on an encoder-decoder: outputs
equal transformers' generate + decode on the same weights (greedy, beam search with a length
penalty, no-repeat n-grams), settings from config.json's task_specific_params, shapes as
transformers 4's pipelines, the CLI."""

import json

import pytest
import torch

import llmkit
from llmkit.errors import LLMKitError
from tests.helpers import build_seq2seq_dir, cli_run

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Super Bowl 50 was an American football game.",
         "A language model predicts the next token."]


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    d = build_seq2seq_dir(tmp_path_factory.mktemp("t5"), "t5v1.1")
    cfg = json.loads((d / "config.json").read_text())
    cfg["task_specific_params"] = {
        "summarization": {"prefix": "summarize: ", "num_beams": 3, "length_penalty": 2.0, "max_length": 12,
                          "no_repeat_ngram_size": 2, "early_stopping": True},
        "translation_en_to_de": {"prefix": "translate English to German: ", "max_length": 10}}
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def hf_generate(d, text, **kw):
    import transformers as T

    model = T.AutoModelForSeq2SeqLM.from_pretrained(d).eval()
    tok = T.AutoTokenizer.from_pretrained(d)
    out = model.generate(**tok([text], return_tensors="pt"), do_sample=False, **kw)
    return tok.decode(out[0], skip_special_tokens=True)


def test_text2text_greedy_and_beams_equal_transformers(t5):
    pipe = llmkit.pipeline("text2text-generation", t5)
    for text in TEXTS:
        assert pipe(text) == [{"generated_text": hf_generate(t5, text, max_length=20, num_beams=1)}]
        got = pipe(text, num_beams=4, length_penalty=0.6, max_new_tokens=10, no_repeat_ngram_size=2)
        assert got == [{"generated_text": hf_generate(t5, text, max_new_tokens=10, num_beams=4, length_penalty=0.6,
                                                      no_repeat_ngram_size=2)}]
    many = pipe(TEXTS, max_new_tokens=6)
    assert many == [pipe(t, max_new_tokens=6)[0] for t in TEXTS]  # a list in, a flat list of records out
    two = pipe(TEXTS[0], num_beams=3, num_return_sequences=2, max_new_tokens=6)
    assert len(two) == 2 and all("generated_text" in r for r in two)
    ids = pipe(TEXTS[0], return_tensors=True, max_new_tokens=5)
    assert list(ids[0]) == ["generated_token_ids"]


def test_summarization_uses_the_task_params(t5):
    pipe = llmkit.pipeline("summarization", t5)
    for text in TEXTS:
        ref = hf_generate(t5, "summarize: " + text, num_beams=3, length_penalty=2.0, max_length=12,
                          no_repeat_ngram_size=2, early_stopping=True)
        assert pipe(text) == [{"summary_text": ref}]


def test_translation_task_name_picks_its_prefix(t5):
    pipe = llmkit.pipeline("translation_en_to_de", t5)
    ref = hf_generate(t5, "translate English to German: " + TEXTS[0], max_length=10)
    assert pipe(TEXTS[0]) == [{"translation_text": ref}]
    sampled = pipe(TEXTS[0], do_sample=True, seed=3, max_new_tokens=6)
    assert sampled == pipe(TEXTS[0], do_sample=True, seed=3, max_new_tokens=6)


def test_wrong_model_kinds_are_refused(t5, tmp_path):
    from tests.helpers import build_model_dir

    with pytest.raises(LLMKitError, match="encoder-decoder"):
        llmkit.pipeline("summarization", build_model_dir(tmp_path / "llama"))
    with pytest.raises(LLMKitError, match="text2text-generation"):
        llmkit.pipeline("text-generation", t5)


def test_cli(t5, capsys):
    code, out, err = cli_run(capsys, ["pipeline", "summarization", str(t5), TEXTS[0], "--num-beams", "2",
                                      "--max-new-tokens", "5"])
    assert code == 0, err
    assert list(json.loads(out.splitlines()[0])[0]) == ["summary_text"]
    code, out, err = cli_run(capsys, ["pipeline", "translation_en_to_de", str(t5), TEXTS[0], "--format", "table"])
    assert code == 0, err
    assert out.startswith("> ")
