"""The server under abuse: body-size limit (413), work off the event loop, OpenAI's error
contract (404 model_not_found, 415, deep nesting, seed range, min_tokens), /predict max_tokens,
and the warning for a public --host without an API key. Live on 127.0.0.1, bounded requests."""

import json
import threading
import time
from types import SimpleNamespace

import httpx
import openai
import pytest

from llmkit.generate import generate, load_for_inference
from llmkit.prompts import PromptStyle
from llmkit.serve import ServerThread, create_app, exposure_warning
from llmkit.serve.protocol import DEFAULT_MAX_REQUEST_BYTES

CONTEXT = 256
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def srv(tiny_model_dir):
    d = tiny_model_dir(context=CONTEXT)
    app = create_app(str(d), max_batch_size=4, model_name="tiny")  # the default body limit: 8 MiB
    with ServerThread(app) as server:
        yield SimpleNamespace(url=server.url, app=app, dir=d, svc=app.state.service,
                              client=openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0,
                                                   timeout=60))


def assert_openai_error(r: httpx.Response, status: int, code=None, param=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["type"] == "invalid_request_error" and err["code"] == code and err["param"] == param
    return err


class Poller:
    """Sends small requests one after another from a thread; records how long each took."""

    def __init__(self, url: str, request):
        self.url, self.request, self.waits, self.failures = url, request, [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        with httpx.Client(base_url=self.url, timeout=60) as c:
            while not self._stop.is_set() and len(self.waits) < 2000:  # bounded
                t = time.monotonic()
                r = self.request(c)
                self.waits.append(time.monotonic() - t)
                if r.status_code != 200:
                    self.failures.append(r.text)
                time.sleep(0.01)

    def __enter__(self):
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.waits:  # the first small answer came: the server is idle and warm
            assert self._thread.is_alive() and time.monotonic() < deadline, "no answer to a small request"
            time.sleep(0.005)
        return self

    def __exit__(self, *exc):
        time.sleep(0.05)
        self._stop.set()
        self._thread.join(timeout=60)


def health(c):
    return c.get("/health")


def one_token(c):
    return c.post("/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 1, "temperature": 0})


# --- 1. size limit, and big inputs off the event loop ----------------------------------------
def test_default_limit_is_8_mib(srv):
    assert DEFAULT_MAX_REQUEST_BYTES == 8 * 2**20 == srv.svc.max_request_bytes
    with pytest.raises(Exception, match="max_request_bytes"):
        create_app(srv.app.state.service.loaded, max_request_bytes=0)


def test_oversized_bodies_are_413_quickly_while_others_are_served(srv):
    """10 MB with a Content-Length, and 9 MiB chunked without one: both cut off with 413
    (without the limit, tokenizing the 10 MB prompt held the event loop ~20 s on this CPU)."""
    huge = json.dumps({"model": "tiny", "prompt": "fox " * 2_500_000, "max_tokens": 1}).encode()  # 10 MB
    assert len(huge) > 10**7

    def chunked():  # no Content-Length: the server has to count
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(9 * 16):
            yield b"fox " * 16384  # 64 KiB
        yield b'"}'

    with Poller(srv.url, health) as poll:
        for path in ("/v1/completions", "/v1/chat/completions", "/tokenize"):
            t = time.monotonic()
            r = httpx.post(srv.url + path, content=huge, headers=JSON, timeout=60)
            elapsed = time.monotonic() - t
            err = assert_openai_error(r, 413, code="request_too_large")
            assert "8 MiB" in err["message"] and r.headers["connection"] == "close"
            assert elapsed < 5, f"{path}: 413 after {elapsed:.2f}s"
        t = time.monotonic()
        r = httpx.post(srv.url + "/v1/completions", content=chunked(), headers=JSON, timeout=60)
        assert_openai_error(r, 413, code="request_too_large")
        assert time.monotonic() - t < 5
    assert not poll.failures and max(poll.waits) < 2.0, max(poll.waits)
    # ... and the server goes on serving, on new connections and through the openai client.
    r = srv.client.completions.create(model="tiny", prompt="Hi", max_tokens=2, temperature=0)
    assert r.choices[0].finish_reason


def test_a_smaller_limit_is_honoured(srv):
    app = create_app(srv.svc.loaded, max_request_bytes=1000, model_name="tiny", max_batch_size=1)
    with ServerThread(app) as server:
        ok = {"model": "tiny", "prompt": "fox " * 100, "max_tokens": 1}
        assert httpx.post(server.url + "/v1/completions", json=ok, timeout=30).status_code == 200
        r = httpx.post(server.url + "/v1/completions", json={**ok, "prompt": "fox " * 300}, timeout=30)
        assert_openai_error(r, 413, code="request_too_large")


def test_tokenizing_a_big_prompt_does_not_stall_small_requests(srv):
    """A 2 MB prompt (allowed) takes a second or more to tokenize: /health and 1-token
    completions keep being answered meanwhile (before, each waited for the whole tokenization:
    3-9 s for 4 MB on this machine)."""
    text = "the quick brown fox " * 100_000
    big = json.dumps({"model": "tiny", "prompt": text, "max_tokens": 1}).encode()
    big_tok = json.dumps({"prompt": text}).encode()
    for request, path, body in ((health, "/v1/completions", big), (health, "/tokenize", big_tok),
                                (one_token, "/v1/completions", big)):
        with Poller(srv.url, request) as poll:
            n_before = len(poll.waits)
            t = time.monotonic()
            r = httpx.post(srv.url + path, content=body, headers=JSON, timeout=120)
            elapsed = time.monotonic() - t
            answered = len(poll.waits) - n_before
        if path == "/tokenize":
            assert r.status_code == 200 and r.json()["count"] > 300_000
        else:
            assert_openai_error(r, 400, code="context_length_exceeded", param="prompt")
        worst = max(poll.waits)
        assert not poll.failures and answered >= 3, (answered, elapsed)
        assert worst < 2.0 and worst < elapsed / 2, (request.__name__, worst, elapsed)


def test_slow_tokenizer_runs_off_the_event_loop(srv, monkeypatch):
    """Deterministic version of the above: a tokenizer that takes 1.5 s (sleeping, as a Rust
    backend does without the GIL) must not delay /health."""
    tok = srv.svc.tokenizer
    real_encode, real_batch, real_decode = tok.encode, tok.encode_batch, tok.decode

    def slow(fn):
        def wrapped(*a, **k):
            time.sleep(1.5)
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(tok, "encode", slow(real_encode))
    monkeypatch.setattr(tok, "encode_batch", slow(real_batch))
    monkeypatch.setattr(tok, "decode", slow(real_decode))
    long_text = "fox " * 20_000  # 80 kB: past the size handled inline
    ids = real_encode(long_text)
    assert len(ids) >= 16384  # so is its token list (app.OFF_LOOP_AT)
    calls = [("/tokenize", {"prompt": long_text}), ("/detokenize", {"tokens": ids}),
             ("/v1/completions", {"model": "tiny", "prompt": long_text, "max_tokens": 1}),
             ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": long_text}]}),
             ("/predict", {"prompt": long_text})]
    for path, body in calls:
        with Poller(srv.url, health) as poll:
            t = time.monotonic()
            r = httpx.post(srv.url + path, json=body, timeout=60)
            elapsed = time.monotonic() - t
        assert r.status_code in (200, 400), r.text  # 400: longer than the context
        assert elapsed >= 1.5 and not poll.failures
        assert max(poll.waits) < 0.75, (path, max(poll.waits))


# --- 2. the OpenAI error contract ------------------------------------------------------------
def test_unknown_model_is_404_and_aliases_are_accepted(srv):
    for create in (lambda m: srv.client.completions.create(model=m, prompt="Hi", max_tokens=1),
                   lambda m: srv.client.chat.completions.create(model=m, max_tokens=1,
                                                                messages=[{"role": "user", "content": "Hi"}])):
        with pytest.raises(openai.NotFoundError) as e:
            create("gpt-4o")
        assert e.value.status_code == 404 and e.value.code == "model_not_found" and "gpt-4o" in e.value.message
        for alias in ("tiny", srv.dir.name, str(srv.dir), str(srv.dir) + "/"):  # served name, folder, path
            assert create(alias).model == "tiny"
    r = httpx.post(srv.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 1})  # no model: this one
    assert r.status_code == 200 and r.json()["model"] == "tiny"
    assert_openai_error(httpx.post(srv.url + "/v1/completions", json={"model": "x", "prompt": "Hi"}), 404,
                        code="model_not_found", param="model")


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/predict"])
def test_seed_outside_64_bits_is_400(srv, path):
    body = {"prompt": "Hi"} if path != "/v1/chat/completions" else {"messages": [{"role": "user", "content": "Hi"}]}
    for seed in (2**70, 2**63, -(2**63) - 1):
        r = httpx.post(srv.url + path, json={**body, "max_tokens": 1, "seed": seed})
        assert_openai_error(r, 400, code="invalid_value", param="seed")
    for seed in (2**63 - 1, -(2**63)):  # the extremes are fine
        assert httpx.post(srv.url + path, json={**body, "max_tokens": 1, "seed": seed}).status_code == 200


@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"prompt": "hi", "user": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}",
], ids=["lists", "in-a-field", "objects"])
def test_pathologically_nested_json_is_400(srv, body):
    for path in ("/v1/completions", "/v1/chat/completions", "/tokenize"):
        r = httpx.post(srv.url + path, content=body, headers=JSON)
        err = assert_openai_error(r, 400, code="invalid_json")
        assert "nested too deeply" in err["message"]
    assert httpx.get(srv.url + "/health").status_code == 200


@pytest.mark.parametrize("ctype,body", [
    ("text/plain", b'{"model": "tiny", "prompt": "Hi", "max_tokens": 1}'),
    ("application/x-www-form-urlencoded", b"prompt=Hi&max_tokens=1"),
    ("multipart/form-data; boundary=xyz", b'--xyz\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nHi\r\n--xyz--'),
], ids=["text", "form", "multipart"])
def test_non_json_content_type_is_415(srv, ctype, body):
    for path in ("/v1/completions", "/v1/chat/completions", "/predict", "/tokenize"):
        r = httpx.post(srv.url + path, content=body, headers={"content-type": ctype})
        err = assert_openai_error(r, 415, code="unsupported_media_type")
        assert "application/json" in err["message"]


def test_json_content_types_and_none_are_accepted(srv):
    body = b'{"model": "tiny", "prompt": "Hi", "max_tokens": 1}'
    for headers in ({"content-type": "application/json; charset=utf-8"}, {"content-type": "Application/JSON"},
                    {"content-type": "application/vnd.api+json"}):
        assert httpx.post(srv.url + "/v1/completions", content=body, headers=headers).status_code == 200
    # No Content-Type at all (httpx with raw bytes, curl -H 'Content-Type:'): read as JSON
    req = httpx.Request("POST", srv.url + "/v1/completions", content=body)
    assert "content-type" not in req.headers
    with httpx.Client() as c:
        assert c.send(req).status_code == 200


def test_min_tokens_above_max_tokens_is_400(srv):
    r = httpx.post(srv.url + "/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 2,
                                                      "min_tokens": 5})
    assert_openai_error(r, 400, code="invalid_value", param="min_tokens")
    r = httpx.post(srv.url + "/v1/chat/completions", json={"model": "tiny", "max_tokens": 2, "min_tokens": 3,
                                                           "messages": [{"role": "user", "content": "Hi"}]})
    assert_openai_error(r, 400, code="invalid_value", param="min_tokens")
    # chat without max_tokens: the limit is what the context leaves
    r = httpx.post(srv.url + "/v1/chat/completions", json={"model": "tiny", "min_tokens": CONTEXT,
                                                           "messages": [{"role": "user", "content": "Hi"}]})
    assert_openai_error(r, 400, code="invalid_value", param="min_tokens")
    r = httpx.post(srv.url + "/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 3,
                                                      "min_tokens": 3, "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3  # equal is fine


# --- 4. /predict max_tokens ------------------------------------------------------------------
def test_predict_accepts_max_tokens(srv):
    loaded, tok = load_for_inference(str(srv.dir))
    style = PromptStyle.for_model(tok)
    ids = style.encode(tok, [{"role": "user", "content": "Hello"}])

    def ref(n):
        return generate(loaded.model, tok, ids, max_new_tokens=n, stop=style.stop_strings,
                        stop_ids=tok.eos_ids | style.stop_token_ids(tok))

    short, longer = ref(3), ref(12)
    assert short.finish_reason == "length" and len(longer.text) > len(short.text)  # the limit shows
    for body in ({"max_tokens": 3}, {"max_new_tokens": 3}, {"max_tokens": 3, "max_new_tokens": 3}):
        r = httpx.post(srv.url + "/predict", json={"prompt": "Hello", "temperature": 0, **body})
        assert r.status_code == 200 and r.json()["output"] == short.text, body
    r = httpx.post(srv.url + "/predict", json={"prompt": "Hello", "max_tokens": 3, "max_new_tokens": 4})
    assert_openai_error(r, 400, code="invalid_value", param="max_tokens")
    for bad in (0, -1, "3"):
        assert httpx.post(srv.url + "/predict", json={"prompt": "Hello", "max_tokens": bad}).status_code == 400
    r = httpx.post(srv.url + "/predict", json={"prompt": "Hello", "max_tokens": CONTEXT})
    assert_openai_error(r, 400, code="context_length_exceeded", param="prompt")


def test_predict_fields_are_documented():
    import llmkit.serve.app as app

    for field in ("prompt", "max_new_tokens", "max_tokens", "temperature", "top_k", "top_p", "seed"):
        assert f"    {field} " in app.__doc__, field


# --- 3. a public --host without an API key ---------------------------------------------------
@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "localhost", "LOCALHOST", "::1", "[::1]",
                                  "::ffff:127.0.0.1"])
def test_loopback_hosts_need_no_key(host):
    assert exposure_warning(host, None) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.168.1.5", "10.0.0.1", "my-server.example.com",
                                  "fe80::1"])
def test_public_hosts_without_a_key_are_warned_about(host):
    w = exposure_warning(host, None)
    assert w.startswith("warning:") and "anyone who can reach this port can use the model" in w
    assert "--api-key" in w and exposure_warning(host, "k3y") is None


def test_serve_warns_before_listening_publicly(srv, monkeypatch, capsys):
    """Through serve() itself, without binding anything: the listener is stubbed to fail."""
    import llmkit.serve as serve_mod
    from llmkit.errors import LLMKitError

    def no_listener(*a, **k):
        raise OSError(99, "not binding in tests")

    monkeypatch.setattr(serve_mod, "ServerThread", no_listener)
    monkeypatch.delenv("LLMKIT_API_KEY", raising=False)
    for host, api_key, warned in (("0.0.0.0", None, True), ("0.0.0.0", "k3y", False), ("::", None, True)):
        with pytest.raises(LLMKitError, match="cannot listen"):
            serve_mod.serve(str(srv.dir), host=host, api_key=api_key, max_batch_size=1, max_seq_len=64)
        err = capsys.readouterr().err
        assert ("anyone who can reach this port can use the model" in err) == warned, (host, api_key, err)


def test_serve_on_loopback_prints_no_warning(srv, monkeypatch, capsys):
    """serve() really runs on 127.0.0.1 (port 0: a free one), answers, stops; no warning, and
    --max-request-mb reaches the app."""
    import llmkit.serve as serve_mod

    monkeypatch.delenv("LLMKIT_API_KEY", raising=False)
    made = {}
    real_create, real_thread = serve_mod.create_app, serve_mod.ServerThread

    def create(*a, **k):
        made["app"] = real_create(*a, **k)
        return made["app"]

    def thread(*a, **k):
        made["server"] = real_thread(*a, **k)
        return made["server"]

    monkeypatch.setattr(serve_mod, "create_app", create)
    monkeypatch.setattr(serve_mod, "ServerThread", thread)
    t = threading.Thread(target=serve_mod.serve, kwargs=dict(model=str(srv.dir), host="127.0.0.1", port=0,
                                                             max_batch_size=1, max_seq_len=64, max_request_mb=0.5),
                         daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 60
        while "server" not in made or not made["server"].server.started:
            assert t.is_alive() and time.monotonic() < deadline, "serve() did not start"
            time.sleep(0.02)
        url = made["server"].url
        r = httpx.post(url + "/v1/completions", json={"model": srv.dir.name, "prompt": "Hi", "max_tokens": 1},
                       timeout=30)
        assert r.status_code == 200  # the engine runs (in serve's thread)
        assert made["app"].state.service.max_request_bytes == 2**19
        big = {"model": srv.dir.name, "prompt": "x" * 2**19}
        assert httpx.post(url + "/v1/completions", json=big, timeout=30).status_code == 413
    finally:
        if "app" in made:
            made["app"].state.engine.stop()
        t.join(timeout=30)
    assert not t.is_alive()
    err = capsys.readouterr().err
    assert f"serving {srv.dir.name} on http://127.0.0.1:" in err
    assert "warning" not in err.lower() and "anyone who can reach" not in err


def test_cli_has_max_request_mb(srv):
    from llmkit.cli import parse

    fn, kwargs = parse(["serve", str(srv.dir), "--max-request-mb", "2.5"])
    assert fn.__name__ == "serve" and kwargs["max_request_mb"] == 2.5
    fn, kwargs = parse(["serve", str(srv.dir)])
    assert kwargs["max_request_mb"] == 8.0
