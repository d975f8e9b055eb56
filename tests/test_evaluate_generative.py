"""Generative evaluation: responses to an Alpaca file, text metrics, and an LLM judge served by
llmkit's own OpenAI-compatible server on 127.0.0.1 (a tiny random model: its replies are
gibberish, so they must come out as counted failures, not as scores or crashes)."""

from __future__ import annotations

import json

import pytest

from llmkit.cli import main
from llmkit.errors import LLMKitError
from llmkit.evaluate.generative import build_prompts, evaluate_responses, load_examples
from llmkit.checkpoint import load_model
from llmkit.evaluate.judge import OpenAIJudge, judge_scores, parse_score, parse_verdict
from llmkit.evaluate.metrics import text_metrics
from llmkit.tokenizer import Tokenizer
from test_evaluate_helpers import ALPACA, make_model_dir
from tests.helpers import cli_error

KEY = "test-key"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen-eval")
    data = root / "alpaca.json"
    data.write_text(json.dumps(ALPACA))
    # Alpaca prompts and grading prompts are hundreds of tokens with a 320-token vocabulary.
    return {"root": root, "data": data, "m1": make_model_dir(root, "llama", seed=0, context=1024),
            "m2": make_model_dir(root, "llama", seed=1, context=1024),
            "judge": make_model_dir(root, "llama", seed=2, context=2048)}


@pytest.fixture(scope="module")
def judge_server(env):
    from llmkit.serve import ServerThread, create_app

    with ServerThread(create_app(str(env["judge"]), api_key=KEY, max_batch_size=4)) as server:
        yield server.url


def test_responses_metrics_and_fake_judge(env, tmp_path):
    loaded = load_model(env["m1"], dtype="float32")
    model, tok = loaded.model, loaded.tokenizer
    prompts, stop, _ = build_prompts(tok, ALPACA[:2])
    assert tok.decode(prompts[0]).endswith("### Instruction:\nName the capital of France.\n\n### Response:\n")
    assert "### Instruction:" in stop
    replies = iter(["Score: 90", "no idea", "40/100", "**75**", "101"])
    section = evaluate_responses(model, tok, data=str(env["data"]), max_new_tokens=6, batch_size=2,
                                 judge=lambda messages: next(replies), judge_concurrency=1, out=str(tmp_path),
                                 progress=False)
    saved = [json.loads(line) for line in (tmp_path / "responses.jsonl").read_text().splitlines()]
    assert [r["instruction"] for r in saved] == [ex["instruction"] for ex in ALPACA]
    responses = [r["response"] for r in saved]
    assert section["metrics"] == pytest.approx(text_metrics(responses, [ex["output"] for ex in ALPACA]), nan_ok=True)
    judge = section["judge"]
    assert (judge["examples"], judge["scored"], judge["failures"]) == (5, 3, 2)
    assert judge["mean"] == pytest.approx((90 + 40 + 75) / 3)
    judged = [json.loads(line) for line in (tmp_path / "judgments.jsonl").read_text().splitlines()]
    assert [j["judge_score"] for j in judged] == [90, None, 40, 75, None]
    assert [j["judge_failure"] for j in judged][1] == "no score in reply"

    # An earlier run's responses are scored again without generating (model None).
    again = evaluate_responses(None, None, responses_file=str(tmp_path / "responses.jsonl"), progress=False)
    assert again["metrics"] == section["metrics"] and again["examples"] == 5


def test_judge_served_by_llmkit(env, judge_server, tmp_path, capsys):
    """End to end through the CLI: generate, then the served tiny model judges (score 0-100)
    and compares against a second model; every reply is either a parsed score or a counted
    failure."""
    out = tmp_path / "run"
    main(["evaluate", str(env["m1"]), "--generate-data", str(env["data"]), "--max-new-tokens", "8",
          "--judge-url", f"{judge_server}/v1", "--judge-api-key", KEY, "--judge-concurrency", "3",
          "--compare-model", str(env["m2"]), "--out", str(out)])
    result = json.loads((out / "results.json").read_text())
    gen = result["generative"]
    judged = [json.loads(line) for line in (out / "judgments.jsonl").read_text().splitlines()]
    assert len(judged) == 5 and all(isinstance(j["judge_reply"], str) for j in judged)  # every request answered
    expected = [parse_score(j["judge_reply"])[0] for j in judged]
    assert [j["judge_score"] for j in judged] == expected
    assert gen["judge"]["failures"] == sum(s is None for s in expected)
    assert gen["judge"]["scored"] + gen["judge"]["failures"] == 5
    assert sum(gen["judge"]["histogram"].values()) == gen["judge"]["scored"]
    verdicts = [parse_verdict(j["pair_reply"])[0] for j in judged]
    pair = gen["pairwise"]
    assert pair["against"] == env["m2"].name
    assert pair["failures"] == sum(v is None for v in verdicts)
    assert pair["wins"] + pair["ties"] + pair["losses"] + pair["failures"] == 5
    stdout = capsys.readouterr().out
    assert "judge_mean" in stdout and "judge_failures" in stdout


def test_judge_errors_are_one_line(env, judge_server, tmp_path, capsys):
    base = ["evaluate", str(env["m1"]), "--generate-data", str(env["data"]), "--max-new-tokens", "2",
            "--limit", "2", "--judge-url", f"{judge_server}/v1"]
    for extra in ([], ["--judge-api-key", "wrong", "--judge-model", "judge"]):  # no key, then a wrong one
        cli_error(capsys, base + extra, "error: the judge rejected the request: HTTP 401")  # exit 1, one line
    dead = OpenAIJudge("http://127.0.0.1:9/v1", model="m", max_retries=1, backoff=0.01, timeout=2)  # nothing there
    with pytest.raises(LLMKitError, match="cannot reach the judge"):
        judge_scores(ALPACA[:2], ["a", "b"], dead, progress=False)


def test_bad_alpaca_files(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"instruction": "x"}\n')
    with pytest.raises(LLMKitError, match="bad.jsonl: line 1: missing field 'output'"):
        load_examples(tmp_path / "bad.jsonl")
    with pytest.raises(LLMKitError, match="no such file"):
        load_examples(tmp_path / "missing.json")
    (tmp_path / "obj.json").write_text('{"instruction": "x"}')
    with pytest.raises(LLMKitError, match="expected a JSON array"):
        load_examples(tmp_path / "obj.json")
    assert len(load_examples(_write(tmp_path / "a.jsonl", ALPACA), limit=0.5)) == 3


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_http_judge_retries_with_backoff():
    """503 and 429 (with Retry-After) are retried; the request carries the model and the key;
    a judge that keeps failing raises JudgeUnavailable after max_retries."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from llmkit.evaluate.judge import JudgeUnavailable

    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((body, self.headers.get("Authorization")))
            if body["model"] == "down" or len(seen) <= 2:
                self.send_response(503 if len(seen) == 1 or body["model"] == "down" else 429)
                self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(b"busy")
                return
            payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": "Score: 77"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        judge = OpenAIJudge(f"http://127.0.0.1:{server.server_port}", model="j", api_key="k", backoff=0.01)
        assert judge.endpoint.endswith(":%d/v1/chat/completions" % server.server_port)
        assert judge([{"role": "user", "content": "grade this"}]) == "Score: 77"
        assert len(seen) == 3 and seen[-1][0]["model"] == "j" and seen[-1][1] == "Bearer k"
        down = OpenAIJudge(f"http://127.0.0.1:{server.server_port}/v1", model="down", max_retries=2, backoff=0.01)
        seen.clear()
        with pytest.raises(JudgeUnavailable, match="HTTP 503"):
            down([{"role": "user", "content": "x"}])
        assert len(seen) == 3  # the first try and two retries
    finally:
        server.shutdown()


def test_chat_records_are_evaluated_on_their_conversation(env, tmp_path):
    """The files finetuning reads evaluate too: a chat record's last assistant reply is the
    reference, and a chat-style prompt continues the conversation before it."""
    p = tmp_path / "chat.jsonl"
    convo = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
             {"role": "assistant", "content": "Red."}, {"role": "user", "content": "Another one?"}]
    p.write_text(json.dumps({"messages": convo + [{"role": "assistant", "content": "Blue."}]}) + "\n"
                 + json.dumps(ALPACA[0]) + "\n")
    chat, alpaca = load_examples(p)
    assert (chat["instruction"], chat["input"], chat["output"]) == ("Another one?", "", "Blue.")
    assert chat["messages"] == convo
    assert (alpaca["instruction"], alpaca["output"]) == (ALPACA[0]["instruction"], ALPACA[0]["output"])
    tok = Tokenizer.from_dir(env["m1"])
    prompts, _, _ = build_prompts(tok, [chat, alpaca], "chatml")
    from llmkit.prompts import PromptStyle

    chatml = PromptStyle.from_name("chatml")
    assert prompts[0] == chatml.encode(tok, convo)
    assert prompts[1] == chatml.encode(tok, [{"role": "user", "content": ALPACA[0]["instruction"]
                                              + (f"\n\n{ALPACA[0]['input']}" if ALPACA[0].get("input") else "")}])
