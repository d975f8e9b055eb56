"""`llmkit evaluate T5 --generate-data PAIRS`: outputs for every source, scored by rouge_score and
sacrebleu against every reference, next to the lead-sentence and copy-the-source baselines."""

import json

import pytest

from tests.helpers import build_seq2seq_dir, cli_error, cli_run


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    return build_seq2seq_dir(tmp_path_factory.mktemp("t5"), "t5v1.1")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    p = tmp_path_factory.mktemp("pairs") / "test.jsonl"
    rows = [{"source": ["The fox runs.", "It is quick."], "target": ["a quick fox", "the fox is fast"]},
            {"source": ["Denver won the game.", "The score was 24-10."], "target": ["Denver won"]},
            {"source": ["The piano sings."], "target": ["piano music"]}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return p


@pytest.mark.parametrize("beams", ["1", "3"])
def test_scores_are_the_libraries_on_the_written_outputs(t5, pairs, tmp_path, capsys, beams):
    import sacrebleu
    from rouge_score import rouge_scorer

    out = tmp_path / "eval"
    code, stdout, err = cli_run(capsys, ["evaluate", str(t5), "--generate-data", str(pairs), "--out", str(out),
                                         "--max-new-tokens", "8", "--num-beams", beams, "--prefix", "summarize: "])
    assert code == 0, err[-2000:]
    res = json.loads((out / "results.json").read_text())["seq2seq"]
    assert res["examples"] == 3 and set(res["baselines"]) == {"lead sentence", "copy source"}
    rows = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
    assert [len(r["references"]) for r in rows] == [2, 1, 1] and rows[0]["source"].startswith("summarize: ")
    outputs, refs = [r["output"] for r in rows], [r["references"] for r in rows]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    r1 = sum(max(scorer.score(ref, o)["rouge1"].fmeasure for ref in rs) for o, rs in zip(outputs, refs)) / 3
    assert res["metrics"]["rouge1"] == pytest.approx(100 * r1, abs=0.01)
    bleu = sacrebleu.corpus_bleu(outputs, [[rs[i] if i < len(rs) else None for rs in refs] for i in range(2)])
    assert res["metrics"]["bleu"] == pytest.approx(bleu.score, abs=0.01)
    lead = scorer.score("a quick fox", "The fox runs.")["rouge1"].fmeasure
    assert res["baselines"]["lead sentence"]["rouge1"] > 0 and lead > 0
    assert "| model |" in stdout and "| lead sentence |" in stdout and "sacrebleu" in stdout


def test_bad_pairs_file_is_one_line(t5, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"foo": 1}\n')
    cli_error(capsys, ["evaluate", str(t5), "--generate-data", str(bad)], "bad.jsonl")


def test_perplexity_of_an_encoder_decoder_is_refused_clearly(t5, tmp_path, capsys):
    text = tmp_path / "a.txt"
    text.write_text("the quick brown fox " * 20)
    cli_error(capsys, ["evaluate", str(t5), "--perplexity", str(text)], "encoder-decoder", "--generate-data")
