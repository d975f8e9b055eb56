"""The OpenAI-compatible server, live on 127.0.0.1, driven by the official `openai` client and httpx."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import openai
import pytest
import torch

from llmkit.generate import generate, load_for_inference
from llmkit.prompts import PromptStyle
from llmkit.serve import ServerThread, create_app

CONTEXT = 1024


@pytest.fixture(scope="module")
def srv(tiny_model_dir):
    d = tiny_model_dir(context=CONTEXT)
    app = create_app(str(d), max_batch_size=16, model_name="tiny")
    loaded, tok = load_for_inference(str(d))  # a second copy for reference results
    with ServerThread(app) as server:
        yield SimpleNamespace(
            url=server.url, app=app, engine=app.state.engine, dir=d, model=loaded.model, tok=tok,
            client=openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60),
        )


def wait_idle(engine, timeout=10.0):
    deadline = time.monotonic() + timeout
    while engine.active_count and time.monotonic() < deadline:
        time.sleep(0.01)
    return engine.active_count


def test_health_and_models(srv):
    import inspect

    from llmkit.serve import serve

    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"  # local only by default
    assert httpx.get(srv.url + "/health").json() == {"status": "ok"}
    models = srv.client.models.list()
    assert [m.id for m in models.data] == ["tiny"] and models.data[0].object == "model"


def test_completion_streamed_and_not_agree_with_generate(srv):
    ref = generate(srv.model, srv.tok, "The quick brown fox", max_new_tokens=20)
    r = srv.client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=20, temperature=0)
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.model == "tiny"
    assert r.choices[0].text == ref.text and r.choices[0].finish_reason == ref.finish_reason
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ref.prompt_ids), len(ref.token_ids))
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    chunks = list(srv.client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=20,
                                                temperature=0, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == ref.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == ref.finish_reason
    assert chunks[-1].usage.completion_tokens == len(ref.token_ids)


def test_chat_streamed_and_not_agree_with_generate(srv):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]
    style = PromptStyle.for_model(srv.tok)
    ref = generate(srv.model, srv.tok, style.encode(srv.tok, messages), max_new_tokens=16,
                   stop=style.stop_strings, stop_ids=srv.tok.eos_ids | style.stop_token_ids(srv.tok))
    r = srv.client.chat.completions.create(model="tiny", messages=messages, max_tokens=16, temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    msg = r.choices[0].message
    assert msg.role == "assistant" and msg.content == ref.text and r.choices[0].finish_reason == ref.finish_reason
    assert r.usage.prompt_tokens == len(ref.prompt_ids)
    chunks = list(srv.client.chat.completions.create(model="tiny", messages=messages, max_completion_tokens=16,
                                                     temperature=0, stream=True))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ref.text
    assert chunks[-1].choices[0].finish_reason == ref.finish_reason
    r = srv.client.chat.completions.create(model="tiny", messages=messages, max_tokens=4, temperature=0,
                                           logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens and all(len(c.top_logprobs) == 2 for c in content)
    assert all(c.logprob == c.top_logprobs[0].logprob >= c.top_logprobs[1].logprob for c in content)  # greedy


def test_stop_strings_and_seed(srv):
    full = srv.client.completions.create(prompt="Once upon a time", max_tokens=30, temperature=0, model="tiny")
    text = full.choices[0].text
    stop = text[5:8]
    cut = srv.client.completions.create(prompt="Once upon a time", max_tokens=30, temperature=0, stop=[stop, "zzz"],
                                        model="tiny")
    assert cut.choices[0].text == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"
    a, b, c = (srv.client.completions.create(prompt="Hi", max_tokens=20, temperature=1.0, seed=s, model="tiny")
               for s in (7, 7, 8))
    assert a.choices[0].text == b.choices[0].text != c.choices[0].text


def test_prompt_forms_give_one_choice_per_prompt(srv):
    ids = srv.tok.encode("Hello world")
    for prompt, n in (("Hello world", 1), (["Hello world", "Bye"], 2), (ids, 1), ([ids, ids[:2], ids[1:]], 3)):
        r = srv.client.completions.create(model="tiny", prompt=prompt, max_tokens=3, temperature=0)
        assert [c.index for c in r.choices] == list(range(n))
    r = srv.client.completions.create(model="tiny", prompt=["Hello world", "Hello world"], max_tokens=4, temperature=0)
    assert r.choices[0].text == r.choices[1].text


def test_echo_logprobs_serve_lm_eval_loglikelihood(srv):
    """lm-eval `local-completions` sends token ids with echo, logprobs=1, max_tokens=1 and reads
    the prompt's token logprobs (dropping the one generated token)."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    ctx, cont = srv.tok.encode("The quick brown"), srv.tok.encode(" fox jumps")
    other = srv.tok.encode("Hello there, world")
    r = httpx.post(srv.url + "/v1/completions", json={
        "model": "tiny", "prompt": [ctx + cont, other], "temperature": 0, "max_tokens": 1, "logprobs": 1,
        "seed": 1234, "echo": True}, timeout=60).json()
    assert [c["index"] for c in r["choices"]] == [0, 1]
    lp = r["choices"][0]["logprobs"]
    full = ctx + cont
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(full) + 1
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["tokens"][: len(full)] == [srv.tok.decode([t], skip_special=False) for t in full]
    with torch.no_grad():
        ref = torch.log_softmax(srv.model(torch.tensor([full]))[0].float(), -1)  # (T, vocab)
    expected = [float(ref[t - 1, full[t]]) for t in range(1, len(full))]
    assert lp["token_logprobs"][1: len(full)] == pytest.approx(expected, abs=1e-4)
    (total, greedy), _ = LocalCompletionsAPI.parse_logprobs(r, ctxlens=[len(ctx), len(other)])
    assert total == pytest.approx(sum(expected[len(ctx) - 1:]), abs=1e-3)
    argmax = [int(ref[t - 1].argmax()) for t in range(len(ctx), len(full))]
    assert greedy == (argmax == cont)


@pytest.mark.parametrize("body,status,param", [
    (b'{"prompt": "hi", "max_tokens": ', 400, None),  # malformed JSON
    (b'["not", "an", "object"]', 400, None),
    (b'{"prompt": "hi", "max_tokens": "5"}', 400, "max_tokens"),  # wrong type
    (b'{"prompt": 3.5}', 400, "prompt"),
    (b'{"prompt": "hi", "temperature": "hot"}', 400, "temperature"),
    (b'{"prompt": "hi", "max_tokens": -1}', 400, "max_tokens"),
    (b'{"prompt": "hi", "max_tokens": 100000000}', 400, "prompt"),  # absurd: past the context
    (b'{"prompt": "hi", "top_p": 1.5}', 400, "top_p"),
    (b'{"prompt": "hi", "n": 2}', 400, "n"),
    (b'{"prompt": [99999]}', 400, "prompt"),  # token id outside the vocabulary
    (b'{"prompt": []}', 400, "prompt"),
])
def test_completion_errors_are_openai_shaped(srv, body, status, param):
    r = httpx.post(srv.url + "/v1/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"] and err["param"] == param
    assert err["type"] == "invalid_request_error"


def test_chat_errors_and_context_length(srv):
    long_prompt = "fox " * (CONTEXT + 10)
    with pytest.raises(openai.BadRequestError) as e:
        srv.client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": long_prompt}])
    assert e.value.status_code == 400 and e.value.code == "context_length_exceeded"
    assert "maximum context length is 1024 tokens" in e.value.message
    for bad in ([], [{"role": "wizard", "content": "x"}], [{"role": "user"}], [{"role": "user", "content": 5}]):
        r = httpx.post(srv.url + "/v1/chat/completions", json={"model": "tiny", "messages": bad})
        assert r.status_code == 400 and r.json()["error"]["param"].startswith("messages"), bad
    with pytest.raises(openai.BadRequestError):
        srv.client.completions.create(model="tiny", prompt="hi", max_tokens=-5)
    r = httpx.get(srv.url + "/v1/nothing-here")
    assert r.status_code == 404 and "error" in r.json()


def test_api_key_required_when_set(srv):
    from llmkit.checkpoint import load_model

    app = create_app(load_model(srv.dir), api_key="s3cret", max_batch_size=2)
    with ServerThread(app) as server:
        assert httpx.get(server.url + "/health").status_code == 200  # health stays open
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = httpx.get(server.url + "/v1/models", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
        ok = openai.OpenAI(base_url=server.url + "/v1", api_key="s3cret", max_retries=0)
        assert ok.completions.create(model="llama", prompt="Hi", max_tokens=2).choices[0].finish_reason


def test_disconnect_mid_stream_frees_the_slot(srv):
    engine = srv.engine
    assert wait_idle(engine) == 0
    cancelled = engine.stats["cancelled"]
    body = {"model": "tiny", "prompt": "Hello", "max_tokens": CONTEXT - 10, "min_tokens": CONTEXT - 10,
            "temperature": 0, "stream": True}
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", srv.url + "/v1/completions", json=body) as r:
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]
            assert all(g.startswith("data: ") or g == "" for g in got)
            assert engine.active_count == 1
    # The connection is closed with ~1000 tokens still to go: the engine must drop the row.
    assert wait_idle(engine) == 0
    assert engine.stats["cancelled"] == cancelled + 1
    # ... and goes on serving: the next request gets exactly what generate gives.
    after = srv.client.completions.create(model="tiny", prompt="Hi", max_tokens=3, temperature=0).choices[0]
    assert after.text == generate(srv.model, srv.tok, "Hi", max_new_tokens=3).text


def test_concurrent_requests_are_batched_and_equal_serial(srv):
    prompts = [f"Request {i}: " + "the quick brown fox " * (i % 5) for i in range(12)]
    lengths = [8 + 3 * (i % 4) for i in range(12)]

    def ask(i):
        r = srv.client.completions.create(model="tiny", prompt=prompts[i], max_tokens=lengths[i], temperature=0)
        return r.choices[0].text

    def chat(i):
        r = srv.client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": prompts[i]}],
                                               max_tokens=lengths[i], temperature=0)
        return r.choices[0].message.content

    serial = [ask(i) for i in range(12)] + [chat(i) for i in range(4)]
    srv.engine.stats["max_rows"] = 0
    barrier = threading.Barrier(16)

    def together(i):
        barrier.wait()
        return ask(i) if i < 12 else chat(i - 12)

    with ThreadPoolExecutor(16) as pool:
        concurrent = list(pool.map(together, range(16)))
    assert concurrent == serial
    assert srv.engine.stats["max_rows"] > 1  # they really shared decode steps
    assert wait_idle(srv.engine) == 0


def test_server_survives_internal_errors(srv, monkeypatch):
    engine = srv.engine
    real_step = engine.batch.step
    calls = {"n": 0}

    def broken_step():
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated failure inside the model")
        return real_step()

    monkeypatch.setattr(engine.batch, "step", broken_step)
    r = httpx.post(srv.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 4})
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    svc = srv.app.state.service
    monkeypatch.setattr(svc, "completion_prompts", lambda req: 1 / 0)
    r = httpx.post(srv.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 4})
    assert r.status_code == 500 and r.json()["error"]["message"] == "internal server error"
    monkeypatch.undo()
    assert srv.client.completions.create(model="tiny", prompt="Hi", max_tokens=4).choices[0].finish_reason
    assert wait_idle(engine) == 0


def test_predict_and_tokenizer_endpoints(srv):
    r = httpx.post(srv.url + "/predict", json={"prompt": "Hello", "max_new_tokens": 5, "temperature": 0})
    assert r.status_code == 200 and isinstance(r.json()["output"], str)
    assert httpx.post(srv.url + "/predict", json={"prompt": 5}).status_code == 400
    ids = httpx.post(srv.url + "/tokenize", json={"prompt": "Hello world", "add_special_tokens": False}).json()
    assert ids["tokens"] == srv.tok.encode("Hello world") and ids["max_model_len"] == CONTEXT
    text = httpx.post(srv.url + "/detokenize", json={"tokens": ids["tokens"]}).json()["prompt"]
    assert text == "Hello world"
    info = httpx.get(srv.url + "/tokenizer_info").json()
    assert info["eos_token"] == "<|im_end|>" and info["chat_template"]


def test_serve_command_runs_until_interrupted(srv):
    import os
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LLMKIT_API_KEY": "k3y"}
    cmd = [sys.executable, "-m", "llmkit", "serve", str(srv.dir), "--port", str(port), "--max-batch-size", "2"]
    # A pytest started in the background (`&`, nohup, some CI runners) ignores SIGINT, and an
    # ignored signal stays ignored across exec: the server would never see the Ctrl-C below.
    # A handled one is reset to the default in the child, where Python turns it into KeyboardInterrupt.
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, old)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        assert httpx.get(url + "/v1/models").status_code == 401  # the key came from LLMKIT_API_KEY
        client = openai.OpenAI(base_url=url + "/v1", api_key="k3y", max_retries=0)
        assert client.completions.create(model="llama", prompt="Hi", max_tokens=3).usage.completion_tokens >= 1
        # A second server on the same port: a one-line error, exit code 1.
        busy = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert busy.returncode == 1 and busy.stderr.strip().startswith("error: cannot listen on 127.0.0.1:")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # never leave a server running behind the test
            proc.kill()
            out, err = proc.communicate()
            raise
    assert proc.returncode == 0 and f"serving llama on http://127.0.0.1:{port}/v1" in err
