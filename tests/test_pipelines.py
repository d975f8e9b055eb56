"""Pipelines (llmkit.pipelines, `llmkit pipeline`): every task's results equal transformers'
pipelines on the same tiny random weights (question-answering, gone from transformers 5: the
best-span decoding computed here from AutoModelForQuestionAnswering's logits), batched like
one by one; the CLI's JSON lines, table and progress; one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import llmkit
from llmkit.errors import LLMKitError
from tests.helpers import cli_error, cli_run

CORPUS = [
    "John Smith lives in Paris and works for the Acme company in France.",
    "Mary Jones went to London yesterday, where it rained all day!",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Where does John live? He lives in Paris, near the old river.",
    "This movie was great, I loved it. That book was terrible and boring.",
    "Unbelievably, the restructuring happened overnight in Berlin and Rome.",
    "Paris is the capital of France; Berlin is the capital of Germany.",
    "The weather today is sunny, but tomorrow it will rain in London.",
] * 10
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
NLI_LABELS = ["contradiction", "neutral", "entailment"]
TEXTS = ["Unbelievably John Smith lives in Zürich near the river.",
         "Mary went to London yesterday, where it rained all day!",
         "John met ωmega in Paris.",  # an unseen character: the word is [UNK]
         "The capital of France is Paris; the capital of Germany is Berlin, and Rome is nice."]


def _bert_config(family: str, vocab_size: int, **kw):
    import transformers as T

    if family == "distilbert":
        return T.DistilBertConfig(vocab_size=vocab_size, dim=32, n_layers=2, n_heads=4, hidden_dim=48,
                                  max_position_embeddings=128, pad_token_id=0, **kw)
    return T.BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=128, type_vocab_size=2, pad_token_id=0, **kw)


def _save(root: Path, tok_dir: Path, name: str, cls: str, family: str = "bert", labels=None, seed: int = 0,
          tokenizer_config: dict | None = None, **kw) -> Path:
    """A tiny random transformers model `cls` (every weight perturbed) with the WordPiece files."""
    import transformers as T

    extra = {} if not labels else {"id2label": dict(enumerate(labels)),
                                   "label2id": {lab: i for i, lab in enumerate(labels)}}
    from llmkit.tokenizer import Tokenizer

    cfg = _bert_config(family, Tokenizer.from_dir(tok_dir).vocab_size, **extra, **kw)
    torch.manual_seed(seed)
    model = getattr(T, cls)(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    d = root / name
    model.save_pretrained(d)
    for f in tok_dir.iterdir():
        shutil.copy(f, d / f.name)
    if tokenizer_config:
        path = d / "tokenizer_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **tokenizer_config}))
    return d


@pytest.fixture(scope="module")
def m(tmp_path_factory):
    from llmkit.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("pipelines")
    (root / "corpus.txt").write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    train_tokenizer([str(root / "corpus.txt")], vocab_size=220, out=str(root / "tok"), kind="wordpiece",
                    lowercase=True, min_frequency=1)
    tok = root / "tok"
    no_types = {"model_input_names": ["input_ids", "attention_mask"]}  # DistilBERT reads no token types
    return SimpleNamespace(
        root=root,
        mlm=_save(root, tok, "mlm", "BertForMaskedLM"),
        mlm_distil=_save(root, tok, "mlm-distil", "DistilBertForMaskedLM", "distilbert", seed=1,
                         tokenizer_config=no_types),
        ner=_save(root, tok, "ner", "BertForTokenClassification", labels=NER_LABELS, seed=2),
        ner_short=_save(root, tok, "ner-short", "BertForTokenClassification", labels=NER_LABELS, seed=2,
                        tokenizer_config={"model_max_length": 16}),
        sst=_save(root, tok, "sst", "BertForSequenceClassification", labels=["NEGATIVE", "POSITIVE"], seed=3),
        sst_distil=_save(root, tok, "sst-distil", "DistilBertForSequenceClassification", "distilbert",
                         labels=["NEGATIVE", "NEUTRAL", "POSITIVE"], seed=4, tokenizer_config=no_types),
        multi=_save(root, tok, "multi", "BertForSequenceClassification", labels=["a", "b", "c"], seed=5,
                    problem_type="multi_label_classification"),
        nli=_save(root, tok, "nli", "BertForSequenceClassification", labels=NLI_LABELS, seed=6),
        qa=_save(root, tok, "qa", "BertForQuestionAnswering", seed=7),
    )


def plain(x):
    """numpy scalars as Python numbers, tuples as lists (transformers returns np.float32 scores)."""
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def assert_same(ours, theirs, tol: float = 1e-4, where: str = "result"):
    """Equal structure, keys, strings and ints; floats within `tol`."""
    ours, theirs = plain(ours), plain(theirs)
    if isinstance(theirs, dict):
        assert isinstance(ours, dict) and list(ours) == list(theirs), (where, ours, theirs)
        for k in theirs:
            assert_same(ours[k], theirs[k], tol, f"{where}[{k!r}]")
    elif isinstance(theirs, list):
        assert isinstance(ours, list) and len(ours) == len(theirs), (where, ours, theirs)
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same(a, b, tol, f"{where}[{i}]")
    elif isinstance(theirs, float):
        assert isinstance(ours, float) and abs(ours - theirs) <= tol, (where, ours, theirs)
    else:
        assert type(ours) is type(theirs) and ours == theirs, (where, ours, theirs)


def hf(task: str, folder: Path, **kw):
    import transformers as T

    return T.pipeline(task, model=str(folder), **kw)


# --- fill-mask ------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["mlm", "mlm_distil"])
def test_fill_mask_equals_transformers(m, which):
    folder = getattr(m, which)
    ours, theirs = llmkit.pipeline("fill-mask", folder, batch_size=2), hf("fill-mask", folder)
    texts = ["Paris is the [MASK] of France.", "John lives in [MASK].", "The [MASK] fox jumps over the [MASK] dog.",
             "Where does [MASK] live?"]
    assert_same(ours(texts[0]), theirs(texts[0]))  # one text: its top 5
    assert_same(ours(texts), theirs(texts))  # a batch, with a two-mask text (a list per mask)
    assert_same(ours([texts[1]]), theirs([texts[1]]))  # transformers unwraps a one-text list
    assert_same(ours(texts[1], top_k=2, targets=["paris", "london", "berlin"]),
                theirs(texts[1], top_k=2, targets=["paris", "london", "berlin"]))
    assert_same(ours(texts[2], top_k=3), theirs(texts[2], top_k=3))
    from llmkit.checkpoint import load_model

    assert_same(llmkit.pipeline("fill-mask", load_model(folder))(texts[:2]), theirs(texts[:2]))  # a loaded model
    first = ours(texts[0])[0]
    assert set(first) == {"score", "token", "token_str", "sequence"} and "[MASK]" not in first["sequence"]


# --- text-classification / sentiment-analysis -------------------------------------------------------
@pytest.mark.parametrize("which", ["sst", "sst_distil"])
def test_text_classification_equals_transformers(m, which):
    folder = getattr(m, which)
    ours, theirs = llmkit.pipeline("sentiment-analysis", folder, batch_size=2), hf("text-classification", folder)
    texts = CORPUS[:5]
    assert_same(ours(texts[0]), theirs(texts[0]))  # [{"label", "score"}]
    assert_same(ours(texts), theirs(texts))  # one dict per text
    for kw in (dict(top_k=None), dict(top_k=2), dict(top_k=1), dict(function_to_apply="sigmoid"),
               dict(function_to_apply="none", top_k=None)):
        assert_same(ours(texts[1], **kw), theirs(texts[1], **kw))
        assert_same(ours(texts[:3], **kw), theirs(texts[:3], **kw))
    pair = {"text": "Where does John live?", "text_pair": "He lives in Paris."}
    assert_same(ours(pair), theirs(pair))
    assert_same(ours([pair, pair]), theirs([pair, pair]))


def test_multi_label_problem_type_uses_sigmoid(m):
    ours, theirs = llmkit.pipeline("text-classification", m.multi), hf("text-classification", m.multi)
    out = ours(CORPUS[0], top_k=None)
    assert_same(out, theirs(CORPUS[0], top_k=None))
    assert abs(sum(d["score"] for d in out) - 1) > 1e-3  # independent labels, not a softmax


# --- token-classification / ner ---------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
def test_token_classification_equals_transformers(m, strategy):
    ours = llmkit.pipeline("ner", m.ner, aggregation_strategy=strategy, batch_size=3)
    theirs = hf("token-classification", m.ner, aggregation_strategy=strategy)
    out = ours(TEXTS)
    assert_same(out, theirs(TEXTS))
    assert_same(ours(TEXTS[0]), theirs(TEXTS[0]))
    assert_same(ours(TEXTS[1], ignore_labels=[]), theirs(TEXTS[1], ignore_labels=[]))
    key = "entity" if strategy == "none" else "entity_group"
    assert any(out) and all(key in e and TEXTS[i][e["start"]:e["end"]] for i, es in enumerate(out) for e in es)
    if strategy == "none":  # the unknown word is given as written, as transformers does
        assert any(e["word"] == "ωmega" for e in ours(TEXTS[2], ignore_labels=[]))


def test_token_classification_windows_and_words(m):
    """A text longer than model_max_length (16) in windows sharing `stride` tokens; pre-split words."""
    long = " ".join(CORPUS[:3])
    for strategy in ("simple", "first", "max"):
        ours = llmkit.pipeline("ner", m.ner_short, aggregation_strategy=strategy)
        theirs = hf("token-classification", m.ner_short, aggregation_strategy=strategy)
        assert_same(ours(long, stride=4), theirs(long, stride=4))
    assert_same(llmkit.pipeline("ner", m.ner_short)(long), hf("ner", m.ner_short)(long))  # cut at 16 tokens
    words = ["John", "Smith", "lives", "in", "Zürich"]
    ours, theirs = llmkit.pipeline("ner", m.ner), hf("ner", m.ner)
    for kw in (dict(), dict(aggregation_strategy="first"), dict(delimiter="  ")):
        assert_same(ours(words, is_split_into_words=True, **kw), theirs(words, is_split_into_words=True, **kw))
        assert_same(ours([words, words[:3]], is_split_into_words=True, **kw),
                    theirs([words, words[:3]], is_split_into_words=True, **kw))
    with pytest.raises(LLMKitError, match="aggregation_strategy"):
        llmkit.pipeline("ner", m.ner_short)(long, stride=4)


# --- zero-shot-classification -----------------------------------------------------------------------
def test_zero_shot_equals_transformers(m):
    ours = llmkit.pipeline("zero-shot-classification", m.nli, batch_size=4)
    theirs = hf("zero-shot-classification", m.nli)
    labels = ["travel", "weather", "cinema", "politics"]
    assert_same(ours(CORPUS[1], candidate_labels=labels), theirs(CORPUS[1], candidate_labels=labels))
    assert_same(ours(CORPUS[:3], candidate_labels=labels), theirs(CORPUS[:3], candidate_labels=labels))
    for kw in (dict(multi_label=True), dict(hypothesis_template="The topic is {}!")):
        assert_same(ours(CORPUS[:2], candidate_labels=labels, **kw), theirs(CORPUS[:2], candidate_labels=labels, **kw))
    assert_same(ours(CORPUS[7], candidate_labels="weather"), theirs(CORPUS[7], candidate_labels="weather"))
    assert_same(ours(CORPUS[7], candidate_labels="rain, sun"), theirs(CORPUS[7], candidate_labels="rain, sun"))
    out = ours(CORPUS[1], candidate_labels=labels)
    assert sorted(out["labels"]) == sorted(labels) and abs(sum(out["scores"]) - 1) < 1e-5
    assert out["scores"] == sorted(out["scores"], reverse=True)


# --- feature-extraction -----------------------------------------------------------------------------
def test_feature_extraction_equals_transformers(m, tiny_model_dir):
    for folder in (m.mlm, m.mlm_distil, tiny_model_dir()):
        ours, theirs = llmkit.pipeline("feature-extraction", folder, batch_size=3), hf("feature-extraction", folder)
        for text, got in zip(TEXTS, ours(TEXTS)):
            ref = torch.tensor(theirs(text))
            assert torch.tensor(got).shape == ref.shape and ref.shape[0] == 1
            torch.testing.assert_close(torch.tensor(got), ref, atol=1e-4, rtol=1e-4)
        t = ours(TEXTS[0], return_tensors=True)
        assert isinstance(t, torch.Tensor) and t.shape == torch.tensor(theirs(TEXTS[0])).shape


# --- question-answering -----------------------------------------------------------------------------
def reference_qa(folder, question: str, context: str, max_seq_len: int, stride: int, top_k: int = 1,
                 max_answer_len: int = 15) -> list[dict]:
    """transformers 4's decoding, written out from AutoModelForQuestionAnswering's logits: per
    window, softmaxes over the context tokens and [CLS]; every span start <= end <
    start + max_answer_len inside the context scored p(start) p(end); characters widened to
    whole words. The top_k best over all windows."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForQuestionAnswering.from_pretrained(str(folder)).eval()
    enc = tok(question, context, truncation="only_second", max_length=max_seq_len, stride=stride,
              return_overflowing_tokens=True, return_offsets_mapping=True, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                    token_type_ids=enc["token_type_ids"])
    spans = []
    for w in range(enc["input_ids"].shape[0]):
        inside = [i for i, s in enumerate(enc.sequence_ids(w)) if s == 1]
        seen = [0] + inside
        ps = torch.zeros(enc["input_ids"].shape[1], dtype=torch.float64)
        pe = torch.zeros_like(ps)
        ps[seen] = out.start_logits[w, seen].double().softmax(-1)
        pe[seen] = out.end_logits[w, seen].double().softmax(-1)
        for s in inside:
            for e in inside:
                if s <= e < s + max_answer_len:
                    a = enc.word_to_chars(w, enc.token_to_word(w, s), sequence_index=1).start
                    b = enc.word_to_chars(w, enc.token_to_word(w, e), sequence_index=1).end
                    spans.append({"score": float(ps[s] * pe[e]), "start": a, "end": b, "answer": context[a:b]})
    spans.sort(key=lambda d: d["score"], reverse=True)
    return spans[:top_k]


QUESTIONS = ["Where does John live?", "What is the capital of Germany?", "When did it rain?"]
CONTEXT = " ".join(CORPUS[:5])


def test_question_answering_equals_the_span_decoding(m):
    qa = llmkit.pipeline("question-answering", m.qa, batch_size=3)
    for max_seq_len, stride in ((128, 32), (40, 10), (28, 6)):  # one window, then several
        n_windows = len(qa.tokenizer.encode_windows(QUESTIONS[0], CONTEXT, max_length=max_seq_len, stride=stride))
        assert (n_windows > 1) == (max_seq_len < 128)
        got = qa([{"question": q, "context": CONTEXT} for q in QUESTIONS], max_seq_len=max_seq_len, doc_stride=stride)
        for q, answer in zip(QUESTIONS, got):
            ref = reference_qa(m.qa, q, CONTEXT, max_seq_len, stride)[0]
            assert_same(answer, ref, tol=1e-5)
            assert CONTEXT[answer["start"]:answer["end"]] == answer["answer"] and answer["answer"]
    top = qa(question=QUESTIONS[1], context=CONTEXT, top_k=3, max_seq_len=40, doc_stride=10)
    assert_same(top, reference_qa(m.qa, QUESTIONS[1], CONTEXT, 40, 10, top_k=3), tol=1e-5)
    short = qa(question=QUESTIONS[0], context=CORPUS[3], max_answer_len=1)
    assert_same(short, reference_qa(m.qa, QUESTIONS[0], CORPUS[3], 128, 64, max_answer_len=1)[0], tol=1e-5)
    assert " " not in short["answer"]  # one token: one word
    both = qa(question=QUESTIONS[0], context=CORPUS[3], top_k=2, handle_impossible_answer=True)
    assert len(both) == 2 and {"answer", "score", "start", "end"} == set(both[0])
    asked = [{"question": q, "context": CONTEXT} for q in QUESTIONS[:2]]
    assert qa(question=QUESTIONS[:2], context=CONTEXT) == qa(asked)


# --- text-generation --------------------------------------------------------------------------------
def test_text_generation_greedy_equals_transformers(tiny_model_dir):
    d = tiny_model_dir()
    ours, theirs = llmkit.pipeline("text-generation", d, batch_size=2), hf("text-generation", d)
    prompts = ["Once upon a time", "The quick brown fox", "Hello"]
    kw = dict(do_sample=False, max_new_tokens=8)
    assert_same(ours(prompts[0], **kw), theirs(prompts[0], **kw))  # [{"generated_text": prompt + new}]
    assert_same(ours(prompts, **kw), theirs(prompts, **kw))
    assert_same(ours(prompts[1], return_full_text=False, **kw), theirs(prompts[1], return_full_text=False, **kw))
    ids = ours(prompts[1], return_tensors=True, **kw)[0]["generated_token_ids"]
    assert ids == theirs(prompts[1], return_tensors=True, **kw)[0]["generated_token_ids"] and len(ids) > 8
    new = ours(prompts[2], return_full_text=False, **kw)[0]["generated_text"]
    stop = next(new[k:k + 2] for k in range(1, len(new) - 1) if new[k:k + 2].isascii() and new[k:k + 2].isalpha())
    cut = ours(prompts[2], stop_sequence=stop, **kw)
    assert_same(cut, theirs(prompts[2], stop_sequence=stop, **kw))  # stops at the token completing it
    text = cut[0]["generated_text"]  # up to the token that completes the stop string
    assert stop in text[len(prompts[2]):] and len(text) < len(prompts[2] + new)
    chat = [{"role": "user", "content": "Hi there"}]
    assert_same(ours(chat, **kw), theirs(chat, **kw))  # the chat template, the reply appended
    sampled = ours(prompts[0], do_sample=True, seed=3, num_return_sequences=2, max_new_tokens=8)
    assert len(sampled) == 2 and all(s["generated_text"].startswith(prompts[0]) for s in sampled)
    assert sampled == ours(prompts[0], do_sample=True, seed=3, num_return_sequences=2, max_new_tokens=8)


# --- errors ---------------------------------------------------------------------------------------
def test_errors_are_one_clear_line(m, tiny_model_dir, tmp_path, capsys):
    with pytest.raises(LLMKitError, match="unknown pipeline task 'fill-mak'.*did you mean 'fill-mask'"):
        llmkit.pipeline("fill-mak", m.mlm)
    with pytest.raises(LLMKitError, match="token-classification needs a token-classification head; .* masked "
                                          "language model"):
        llmkit.pipeline("ner", m.mlm)
    with pytest.raises(LLMKitError, match="fill-mask needs a masked language model.*sequence head"):
        llmkit.pipeline("fill-mask", m.sst)
    with pytest.raises(LLMKitError, match="text-generation needs a causal language model"):
        llmkit.pipeline("text-generation", m.mlm)
    with pytest.raises(LLMKitError, match="fill-mask needs a masked language model.*causal"):
        llmkit.pipeline("fill-mask", tiny_model_dir())
    bare = _save(tmp_path, m.root / "tok", "bare", "BertModel")
    with pytest.raises(LLMKitError, match="bare BertModel"):
        llmkit.pipeline("fill-mask", bare)
    with pytest.raises(LLMKitError, match="entailment"):
        llmkit.pipeline("zero-shot-classification", m.sst)
    with pytest.raises(LLMKitError, match=r"no mask token \(\[MASK\]\)"):
        llmkit.pipeline("fill-mask", m.mlm)(["a [MASK] b", "no mask here"])
    with pytest.raises(LLMKitError, match="has no option 'topk'"):
        llmkit.pipeline("fill-mask", m.mlm, topk=3)
    with pytest.raises(LLMKitError, match="candidate_labels"):
        llmkit.pipeline("zero-shot-classification", m.nli)("a text")
    with pytest.raises(LLMKitError, match="aggregation_strategy must be one of"):
        llmkit.pipeline("ner", m.ner)("John", aggregation_strategy="mean")
    cli_error(capsys, ["pipeline", "fill-mak", m.mlm, "a [MASK]"], "unknown pipeline task")
    cli_error(capsys, ["pipeline", "ner", m.mlm, "John lives in Paris"], "token-classification head")
    cli_error(capsys, ["pipeline", "fill-mask", m.mlm, "no mask"], "no mask token")
    cli_error(capsys, ["pipeline", "fill-mask", m.mlm, "a [MASK]", "--candidate_labels", "x"],
              "--candidate_labels does not apply to fill-mask")
    cli_error(capsys, ["pipeline", "fill-mask", m.mlm], "give the inputs")
    cli_error(capsys, ["pipeline", "question-answering", m.qa, "Where?"], "--context")


# --- the CLI --------------------------------------------------------------------------------------
def test_cli_json_lines_equal_the_python_api(m, capsys):
    texts = ["Paris is the [MASK] of France.", "The [MASK] fox jumps over the [MASK] dog."]
    code, out, err = cli_run(capsys, ["pipeline", "fill-mask", m.mlm, *texts, "--top-k", "3"])
    assert code == 0, err
    pipe = llmkit.pipeline("fill-mask", m.mlm)
    assert_same([json.loads(line) for line in out.splitlines()], [pipe(t, top_k=3) for t in texts], tol=1e-5)
    code, out, err = cli_run(capsys, ["pipeline", "question-answering", m.qa, *QUESTIONS[:2], "--context", CONTEXT])
    assert code == 0, err
    qa = llmkit.pipeline("question-answering", m.qa)
    assert_same([json.loads(line) for line in out.splitlines()],
                [qa(question=q, context=CONTEXT) for q in QUESTIONS[:2]], tol=1e-5)
    code, out, err = cli_run(capsys, ["pipeline", "zero-shot-classification", m.nli, CORPUS[0],
                                      "--candidate-labels", "travel", "cinema"])
    assert code == 0, err
    assert_same(json.loads(out), llmkit.pipeline("zero-shot-classification", m.nli)(
        CORPUS[0], candidate_labels=["travel", "cinema"]), tol=1e-5)


def test_cli_file_shows_progress_and_table(m, tiny_model_dir, tmp_path, capsys):
    lines = [CORPUS[i % 8] for i in range(20)]
    f = tmp_path / "texts.txt"
    f.write_text("\n".join(lines[:10]) + "\n\n" + "\n".join(lines[10:]) + "\n")
    code, out, err = cli_run(capsys, ["pipeline", "sentiment-analysis", m.sst, "--file", f, "--batch-size", "6"])
    assert code == 0, err
    pipe = llmkit.pipeline("text-classification", m.sst)
    assert_same([json.loads(line) for line in out.splitlines()], [pipe(t) for t in lines], tol=1e-5)  # padding: ~1e-7
    assert "text-classification: 20/20 inputs" in err  # the progress line (stderr is not a terminal)
    code, out, err = cli_run(capsys, ["pipeline", "ner", m.ner, TEXTS[0], "--aggregation-strategy", "simple",
                                      "--format", "table"])
    assert code == 0, err
    assert out.startswith(f"> {TEXTS[0]}\n") and "entity_group" in out and "score" in out
    for e in llmkit.pipeline("ner", m.ner, aggregation_strategy="simple")(TEXTS[0]):
        assert f"{e['score']:.4f}" in out and e["word"] in out
    code, out, err = cli_run(capsys, ["pipeline", "text-generation", tiny_model_dir(), "Once upon a time",
                                      "--do-sample", "false", "--max-new-tokens", "6", "--format", "table"])
    assert code == 0, err
    gen = llmkit.pipeline("text-generation", tiny_model_dir())("Once upon a time", do_sample=False, max_new_tokens=6)
    assert out == f"> Once upon a time\n  {gen[0]['generated_text']}\n"
