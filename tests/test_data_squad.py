"""SQuAD: reading, windowed features (equal to transformers' overflowing encodings), answer
token positions, and the best-span post-processing (against run_qa.py's, transcribed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmkit.data.squad import CLS_INDEX, QAExample, best_spans, features, read_squad
from llmkit.errors import LLMKitError
from llmkit.evaluate.metrics import squad_scores
from llmkit.tokenizer import Tokenizer
from tests.conftest import SHARED_DATA
from tests.helpers import ENCODER_TEXT, build_roberta, build_wordpiece

QA = SHARED_DATA / "qa"
LONG = " ".join(ENCODER_TEXT[:6]) + " The winner was Paris"  # the answer is the context's last token


def squad_json(contexts_qas) -> dict:
    paragraphs = []
    for context, qas in contexts_qas:
        items = []
        for qid, question, answer in qas:
            answers = [{"text": answer, "answer_start": context.rindex(answer)}] if answer else []
            items.append({"id": qid, "question": question, "answers": answers})
        paragraphs.append({"context": context, "qas": items})
    return {"version": "1.1", "data": [{"title": "Tiny", "paragraphs": paragraphs}]}


DATA = squad_json([
    (ENCODER_TEXT[0], [("q1", "Where was Super Bowl 50 played?", "Santa Clara, California"),
                       ("q2", "  When was it played?", "February 7, 2016")]),
    (LONG, [("q3", "Who defeated the Carolina Panthers?", "Denver Broncos"),
            ("q4", "Who was the winner?", "Paris"),
            ("q5", "Who wrote for the piano?", "Frederic Chopin"),
            ("q6", "What did Steve Jobs call the iPod?", "a thousand songs in your pocket")]),
])


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("qa")
    return {"bert": build_wordpiece(root / "bert"), "roberta": build_roberta(root / "roberta")}


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> list[QAExample]:
    path = tmp_path_factory.mktemp("squad") / "tiny.json"
    path.write_text(json.dumps(DATA), encoding="utf-8")
    return read_squad(path)


def test_read_squad(examples, tmp_path):
    assert [e.id for e in examples] == ["q1", "q2", "q3", "q4", "q5", "q6"]
    e = examples[0]
    assert e.answers == ("Santa Clara, California",) and e.context[e.answer_starts[0]:].startswith("Santa Clara")
    assert e.title == "Tiny" and examples[1].question == "  When was it played?"  # kept as written
    bad = json.loads(json.dumps(DATA))
    bad["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] += 1
    (tmp_path / "bad.json").write_text(json.dumps(bad), encoding="utf-8")
    with pytest.raises(LLMKitError, match=r"bad.json: question q1: answer 'Santa Clara, California' is not at"):
        read_squad(tmp_path / "bad.json")
    del bad["data"][0]["paragraphs"][0]["qas"][0]["question"]
    (tmp_path / "bad.json").write_text(json.dumps(bad), encoding="utf-8")
    with pytest.raises(LLMKitError, match=r"question q1: 'question' must be a string"):
        read_squad(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text("[]", encoding="utf-8")
    with pytest.raises(LLMKitError, match="'data' list"):
        read_squad(tmp_path / "bad.json")


def run_qa_positions(offsets, sequence_ids, start_char, end_char) -> tuple[int, int]:
    """transformers' examples/pytorch/question-answering/run_qa.py, prepare_train_features, for
    one feature (cls_index 0, padding on the right)."""
    token_start_index = 0
    while sequence_ids[token_start_index] != 1:
        token_start_index += 1
    token_end_index = len(offsets) - 1
    while sequence_ids[token_end_index] != 1:
        token_end_index -= 1
    if not (offsets[token_start_index][0] <= start_char and offsets[token_end_index][1] >= end_char):
        return 0, 0
    while token_start_index < len(offsets) and offsets[token_start_index][0] <= start_char:
        token_start_index += 1
    start = token_start_index - 1
    while offsets[token_end_index][1] >= end_char:
        token_end_index -= 1
    return start, token_end_index + 1


def check_features(feats, examples, hf, max_length, stride) -> int:
    """Asserts the features equal transformers' encodings and run_qa.py's answer positions;
    returns how many features hold their answer."""
    ref = hf([e.question.lstrip() for e in examples], [e.context for e in examples], truncation="only_second",
             max_length=max_length, stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True,
             return_token_type_ids=True)
    assert [f.ids for f in feats] == ref["input_ids"]
    assert [f.type_ids for f in feats] == ref["token_type_ids"]
    assert [f.example for f in feats] == ref["overflow_to_sample_mapping"]
    inside = 0
    for k, f in enumerate(feats):
        e, seq = examples[f.example], ref.sequence_ids(k)
        assert f.offsets == [tuple(o) if s == 1 else None for o, s in zip(ref["offset_mapping"][k], seq)]
        lo, hi = e.answer_starts[0], e.answer_starts[0] + len(e.answers[0])
        want = run_qa_positions(ref["offset_mapping"][k], seq, lo, hi)
        if (f.start, f.end) == (CLS_INDEX, CLS_INDEX):
            assert want == (0, 0)
            continue
        inside += 1
        # The span covers the answer, and no shorter span does.
        assert f.offsets[f.start][0] <= lo and f.offsets[f.end][1] >= hi and f.start <= f.end
        assert f.start == f.end or (f.offsets[f.start][1] <= lo or f.offsets[f.start + 1][0] > lo)
        if want != (f.start, f.end):
            # run_qa.py's one slip: an answer starting in the context's last token makes its start
            # loop run on through the final [SEP] (offsets (0, 0)) to the last position.
            assert want[0] == len(f.ids) - 1 and f.offsets[f.start] is not None and f.offsets[f.start + 1] is None
    return inside


@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_features_match_transformers(tokenizers, examples, name):
    from transformers import AutoTokenizer

    tok, hf = Tokenizer.from_dir(tokenizers[name]), AutoTokenizer.from_pretrained(str(tokenizers[name]))
    for max_length, stride in ((48, 16), (64, 24), (384, 128)):
        feats = features(examples, tok, max_length=max_length, stride=stride)
        inside = check_features(feats, examples, hf, max_length, stride)
        assert inside >= len(examples)  # every answer is whole in at least one window
        if max_length == 48:
            assert len(feats) > 2 * len(examples)  # the long context was split, answers outside some windows
            assert sum(f.start == CLS_INDEX for f in feats) > 0
    # The last-token answer "Paris" (q4): the context's last token, not the [SEP] after it.
    f = next(f for f in features(examples, tok, 384, 128) if examples[f.example].id == "q4")
    lo, hi = f.offsets[f.start][0], f.offsets[f.end][1]
    assert examples[f.example].context[lo:hi] == "Paris" and f.ids[f.end + 1] == tok.sep_id
    with pytest.raises(LLMKitError, match="question q1: no room for the context"):
        features(examples, tok, max_length=8, stride=2)


def run_qa_best(start_logits, end_logits, feats, examples, n_best, max_answer_len) -> list[tuple[str, float]]:
    """run_qa.py's utils_qa.postprocess_qa_predictions (SQuAD v1: no null answer), transcribed:
    the best (text, score) of each example."""
    out = []
    for i, e in enumerate(examples):
        prelim = []
        for k, f in enumerate(feats):
            if f.example != i:
                continue
            s, t = start_logits[k][:len(f.ids)], end_logits[k][:len(f.ids)]
            start_indexes = np.argsort(s)[-1: -n_best - 1: -1].tolist()
            end_indexes = np.argsort(t)[-1: -n_best - 1: -1].tolist()
            for a in start_indexes:
                for b in end_indexes:
                    if a >= len(f.offsets) or b >= len(f.offsets) or f.offsets[a] is None or f.offsets[b] is None:
                        continue
                    if b < a or b - a + 1 > max_answer_len:
                        continue
                    prelim.append(((f.offsets[a][0], f.offsets[b][1]), s[a] + t[b]))
        if not prelim:
            out.append(("", float("-inf")))
            continue
        (lo, hi), score = sorted(prelim, key=lambda x: x[1], reverse=True)[0]
        out.append((e.context[lo:hi], float(score)))
    return out


def exhaustive_best(start_logits, end_logits, feats, examples, max_answer_len) -> list[float]:
    best = [float("-inf")] * len(examples)
    for k, f in enumerate(feats):
        for a in range(len(f.ids)):
            for b in range(a, min(len(f.ids), a + max_answer_len)):
                if f.offsets[a] is not None and f.offsets[b] is not None:
                    best[f.example] = max(best[f.example], float(start_logits[k][a] + end_logits[k][b]))
    return best


def test_best_spans(tokenizers, examples):
    import torch

    tok = Tokenizer.from_dir(tokenizers["bert"])
    feats = features(examples, tok, max_length=48, stride=16)
    T = max(len(f) for f in feats) + 3  # padded columns are ignored
    rng = np.random.default_rng(0)
    for trial in range(20):
        s, e = rng.normal(size=(len(feats), T)), rng.normal(size=(len(feats), T))
        for n_best, max_len in ((20, 30), (3, 4), (T, 5)):
            got = best_spans(s, e, feats, examples, n_best=n_best, max_answer_len=max_len)
            want = run_qa_best(s, e, feats, examples, n_best, max_len)
            assert [g.text for g in got] == [w[0] for w in want]
            assert [g.score for g in got] == pytest.approx([w[1] for w in want])
            for g, ex in zip(got, examples):
                assert ex.context[g.start:g.end] == g.text
            if n_best == T:  # all candidates: the true optimum
                assert [g.score for g in got] == pytest.approx(exhaustive_best(s, e, feats, examples, max_len))
    # A tensor, or a list of unpadded rows, gives the same.
    as_list = [row[:len(f)] for row, f in zip(s, feats)]
    assert best_spans(torch.tensor(s), torch.tensor(e), feats, examples) == best_spans(s, e, feats, examples) \
        == best_spans(as_list, [row[:len(f)] for row, f in zip(e, feats)], feats, examples)
    # Logits that point at the answer tokens recover the answers (across windows).
    s, e = np.full((len(feats), T), -5.0), np.full((len(feats), T), -5.0)
    for k, f in enumerate(feats):
        if f.start != CLS_INDEX:
            s[k, f.start], e[k, f.end] = 5.0, 5.0
    got = best_spans(s, e, feats, examples)
    assert [g.text for g in got] == [ex.answers[0] for ex in examples]
    assert squad_scores([g.text for g in got], [list(ex.answers) for ex in examples]) == {"exact_match": 100.0,
                                                                                          "f1": 100.0}
    # No valid span anywhere (every candidate outside the context): "" and -inf.
    only_question = np.full((len(feats), T), -5.0)
    only_question[:, 1] = 50.0
    got = best_spans(only_question, only_question, feats, examples, n_best=1)
    assert all(g.text == "" and g.score == float("-inf") for g in got)
    with pytest.raises(LLMKitError, match="rows"):
        best_spans(s[:-1], e, feats, examples)


@pytest.mark.skipif(not (QA / "dev-v1.1.json").exists(), reason=f"SQuAD files not in {QA}")
def test_squad_files(tmp_path):
    from transformers import AutoTokenizer

    from llmkit.tokenizer import train_tokenizer

    dev, train = read_squad(QA / "dev-v1.1.json"), read_squad(QA / "train-v1.1.first11articles.json")
    assert (len(dev), sum(len(e.answers) for e in dev), len({e.title for e in dev})) == (10570, 34726, 48)
    assert (len(train), len({e.title for e in train})) == (3807, 11) and not {e.id for e in dev} & {e.id for e in train}
    (tmp_path / "contexts.txt").write_text("\n\n".join(sorted({e.context for e in train})), encoding="utf-8")
    train_tokenizer([str(tmp_path / "contexts.txt")], vocab_size=3000, out=str(tmp_path / "tok"), kind="wordpiece")
    tok, hf = Tokenizer.from_dir(tmp_path / "tok"), AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    sample = dev[:400]
    feats = features(sample, tok, max_length=128, stride=32)
    assert len(feats) > len(sample)  # real contexts overflow 128 tokens
    assert check_features(feats, sample, hf, 128, 32) >= len(sample)
    # Logits at the gold tokens give back the answers (up to tokens wider than the answer).
    T = max(len(f) for f in feats)
    s, e = np.zeros((len(feats), T)), np.zeros((len(feats), T))
    for k, f in enumerate(feats):
        if f.start != CLS_INDEX:
            s[k, f.start], e[k, f.end] = 10.0, 10.0
    got = best_spans(s, e, feats, sample, max_answer_len=128)  # (one gold answer is 31 tokens long)
    assert all(ex.answers[0] in g.text for g, ex in zip(got, sample))
    assert squad_scores([g.text for g in got], [list(ex.answers) for ex in sample])["exact_match"] > 95
