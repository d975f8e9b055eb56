"""`llmkit serve` with an encoder-decoder (T5): completions and chat completions decode with
continuous batching of decoder steps, each request's source through the encoder once; results
equal `generate`, concurrent requests equal serial ones, bad requests get OpenAI-style 4xx."""

from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import openai
import pytest

from llmkit.generate import generate, load_for_inference
from llmkit.serve import ServerThread, create_app
from tests.helpers import build_seq2seq_dir

PROMPTS = ["the quick brown fox", "a language model", "hello world how are", "super bowl", "the piano", "denver"]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    d = build_seq2seq_dir(tmp_path_factory.mktemp("s2s"), "t5v1.1")
    app = create_app(str(d), max_batch_size=4, model_name="t5")
    loaded, tok = load_for_inference(str(d))
    with ServerThread(app) as server:
        yield SimpleNamespace(url=server.url, model=loaded.model, tok=tok, engine=app.state.engine,
                              client=openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=60))


def test_completions_equal_generate_and_concurrent_equal_serial(srv):
    refs = [generate(srv.model, srv.tok, p, max_new_tokens=12).text for p in PROMPTS]
    serial = [srv.client.completions.create(model="t5", prompt=p, max_tokens=12, temperature=0).choices[0].text
              for p in PROMPTS]
    assert serial == refs
    with ThreadPoolExecutor(6) as pool:  # more requests than rows: they join as rows free up
        together = list(pool.map(lambda p: srv.client.completions.create(
            model="t5", prompt=p, max_tokens=12, temperature=0).choices[0].text, PROMPTS))
    assert together == refs
    chunks = list(srv.client.completions.create(model="t5", prompt=PROMPTS[0], max_tokens=12, temperature=0,
                                                stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == refs[0]
    r = srv.client.completions.create(model="t5", prompt=PROMPTS[1], max_tokens=12, temperature=0)
    assert r.usage.prompt_tokens == len(srv.tok.encode(PROMPTS[1]))


def test_chat_completions_answer(srv):
    r = srv.client.chat.completions.create(model="t5", messages=[{"role": "user", "content": "the quick brown fox"}],
                                           max_tokens=8, temperature=0)
    assert r.choices[0].message.role == "assistant" and r.usage.completion_tokens >= 1


def test_prompt_logprobs_are_refused_with_a_4xx(srv):
    r = httpx.post(srv.url + "/v1/completions", json={"model": "t5", "prompt": "fox", "max_tokens": 1, "echo": True,
                                                      "logprobs": 1})
    assert r.status_code == 400 and "encoder-decoder" in r.json()["error"]["message"]
    ok = srv.client.completions.create(model="t5", prompt="fox", max_tokens=2, temperature=0)
    assert ok.choices[0].finish_reason in ("stop", "length")  # still serving
