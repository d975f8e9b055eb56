"""/v1/embeddings on `llmkit serve`, live on 127.0.0.1 through the official `openai` client and
httpx: equal to `encode_texts` (decoder) and to a plain transformers mean-pooling loop
(encoder), float and base64 alike, every input form, dimensions, the limits as OpenAI's errors,
the model work off the event loop and between decode steps, and an encoder server whose
completion routes answer 400 instead of crashing."""

from __future__ import annotations

import base64
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import numpy as np
import openai
import pytest
import torch
import torch.nn.functional as F

import llmkit.recipes.embed as em
import llmkit.serve.app as app_mod
from llmkit.checkpoint import load_model
from llmkit.generate import generate, load_for_inference
from llmkit.serve import ServerThread, create_app
from tests.helpers import ENCODER_TEXT
from tests.test_embed import TEXTS, hf_mean_pool, make_bert_dir

CONTEXT = 256
SHORT = ["The quick brown fox", "Hello world! How are you today?", "tokens are pieces of words"]


def client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def dec(tiny_model_dir):
    d = tiny_model_dir(context=CONTEXT)
    app = create_app(str(d), max_batch_size=4, model_name="tiny")
    loaded, tok = load_for_inference(str(d))  # a second copy, as the server prepares it
    with ServerThread(app) as server:
        yield SimpleNamespace(url=server.url, app=app, engine=app.state.engine, dir=d, model=loaded.model, tok=tok,
                              client=client(server.url))


@pytest.fixture(scope="module")
def enc(tmp_path_factory):
    d = make_bert_dir(tmp_path_factory.mktemp("srvbert"))
    app = create_app(str(d), model_name="bert")
    with ServerThread(app) as server:
        yield SimpleNamespace(url=server.url, app=app, engine=app.state.engine, dir=d, client=client(server.url))


def vectors(resp) -> torch.Tensor:
    assert [e.index for e in resp.data] == list(range(len(resp.data)))
    assert all(e.object == "embedding" for e in resp.data)
    return torch.tensor([e.embedding for e in resp.data])


def assert_error(r: httpx.Response, status: int, code=None, param=None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["type"] == "invalid_request_error" and err["code"] == code and err["param"] == param, err
    return err


# --- decoder --------------------------------------------------------------------------------------
def test_decoder_embeddings_equal_encode_texts_float_and_base64(dec):
    ref = em.encode_texts(dec.model, dec.tok, SHORT)
    r = dec.client.embeddings.create(model="tiny", input=SHORT, encoding_format="float")
    assert r.object == "list" and r.model == "tiny"
    got = vectors(r)
    assert got.shape == (3, 64)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)
    n = sum(len(dec.tok.encode(t)) for t in SHORT)
    assert r.usage.prompt_tokens == r.usage.total_tokens == n
    # The client's default is base64 (decoded by it); and decoded by hand from the raw JSON.
    torch.testing.assert_close(vectors(dec.client.embeddings.create(model="tiny", input=SHORT)), got, atol=0, rtol=0)
    raw = httpx.post(dec.url + "/v1/embeddings", json={"input": SHORT, "encoding_format": "base64"}).json()
    floats = httpx.post(dec.url + "/v1/embeddings", json={"input": SHORT}).json()  # default: float
    for b, f in zip(raw["data"], floats["data"]):
        assert isinstance(b["embedding"], str)
        np.testing.assert_array_equal(np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4"),
                                      np.asarray(f["embedding"], dtype=np.float32))
    assert set(floats) == {"object", "data", "model", "usage"} and floats["usage"] == {"prompt_tokens": n,
                                                                                       "total_tokens": n}


def test_every_input_form(dec):
    ref = em.encode_texts(dec.model, dec.tok, SHORT)
    one = vectors(dec.client.embeddings.create(model="tiny", input=SHORT[1], encoding_format="float"))
    torch.testing.assert_close(one, ref[1:2], atol=1e-6, rtol=1e-5)
    ids = [dec.tok.encode(t) for t in SHORT]
    r = dec.client.embeddings.create(model="tiny", input=ids[2], encoding_format="float")  # one list of ids
    torch.testing.assert_close(vectors(r), ref[2:3], atol=1e-6, rtol=1e-5)
    assert r.usage.prompt_tokens == len(ids[2])
    torch.testing.assert_close(vectors(dec.client.embeddings.create(model="tiny", input=ids, encoding_format="float")),
                               ref, atol=1e-6, rtol=1e-5)


def test_dimensions_truncate_and_renormalise(dec):
    full = vectors(dec.client.embeddings.create(model="tiny", input=SHORT, encoding_format="float"))
    for fmt in ("float", "base64"):
        r = dec.client.embeddings.create(model="tiny", input=SHORT, dimensions=16, encoding_format=fmt)
        got = vectors(r) if fmt == "float" else torch.tensor(np.stack(  # asked for, base64 is left to the caller
            [np.frombuffer(base64.b64decode(e.embedding), dtype="<f4") for e in r.data]))
        assert got.shape == (3, 16)
        torch.testing.assert_close(got, F.normalize(full[:, :16], dim=-1), atol=1e-6, rtol=1e-5)
    same = vectors(dec.client.embeddings.create(model="tiny", input=SHORT, dimensions=64, encoding_format="float"))
    assert torch.equal(same, full)
    r = httpx.post(dec.url + "/v1/embeddings", json={"input": "hi", "dimensions": 65})
    assert "at most the model's 64" in assert_error(r, 400, "invalid_value", "dimensions")["message"]


@pytest.mark.parametrize("body,code,param,needle", [
    ({"input": ""}, "invalid_value", "input", "empty strings"),
    ({"input": ["a", ""]}, "invalid_value", "input", "empty strings"),
    ({"input": []}, None, "input", "must not be empty"),
    ({"input": [[]]}, None, "input", "input is empty"),
    ({"input": [5, 100000]}, None, "input", "outside the vocabulary"),
    ({"input": 5}, "invalid_value", "input", "expected a string, a list of strings"),
    ({"input": "x", "encoding_format": "int8"}, "invalid_value", "encoding_format", "float"),
    ({"input": "x", "dimensions": 0}, "invalid_value", "dimensions", "greater than or equal to 1"),
    ({}, "invalid_value", "input", "Field required"),
])
def test_bad_requests_are_openai_errors(dec, body, code, param, needle):
    err = assert_error(httpx.post(dec.url + "/v1/embeddings", json=body), 400, code, param)
    assert needle in err["message"], err


def test_limits_inputs_tokens_context(dec, monkeypatch):
    r = httpx.post(dec.url + "/v1/embeddings", json={"input": [[5] * (CONTEXT + 1)]})
    err = assert_error(r, 400, "context_length_exceeded", "input")
    assert f"maximum context length is {CONTEXT} tokens" in err["message"] and f"{CONTEXT + 1} tokens" in err["message"]
    assert httpx.post(dec.url + "/v1/embeddings", json={"input": [[5] * CONTEXT]}).status_code == 200  # the limit itself
    monkeypatch.setattr(app_mod, "MAX_EMBEDDING_INPUTS", 4)
    assert httpx.post(dec.url + "/v1/embeddings", json={"input": ["a"] * 4}).status_code == 200
    err = assert_error(httpx.post(dec.url + "/v1/embeddings", json={"input": ["a"] * 5}), 400, "invalid_value", "input")
    assert "at most 4" in err["message"]
    monkeypatch.setattr(app_mod, "MAX_EMBEDDING_TOKENS", 100)
    err = assert_error(httpx.post(dec.url + "/v1/embeddings", json={"input": [[5] * 60, [6] * 41]}), 400,
                       "max_tokens_per_request", "input")
    assert "Requested 101 tokens, max 100" in err["message"]


def test_the_openai_preamble_applies(dec):
    r = httpx.post(dec.url + "/v1/embeddings", json={"model": "gpt-4", "input": "hi"})
    assert_error(r, 404, "model_not_found", "model")
    r = httpx.post(dec.url + "/v1/embeddings", content=b"input=hi", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    for name in ("tiny", dec.dir.name, str(dec.dir)):  # served name, folder name, path as given
        assert httpx.post(dec.url + "/v1/embeddings", json={"model": name, "input": "hi"}).status_code == 200


def test_api_key_is_required_when_set(tiny_model_dir):
    app = create_app(str(tiny_model_dir(context=CONTEXT)), max_batch_size=1, api_key="s3cret")
    with ServerThread(app) as s:
        r = httpx.post(s.url + "/v1/embeddings", json={"input": "hi"})
        assert_error(r, 401, "invalid_api_key")
        name = app.state.service.model_name
        assert len(client(s.url, "s3cret").embeddings.create(model=name, input="hi").data) == 1


def test_large_requests_run_in_pieces_between_decode_steps(dec, monkeypatch):
    """A request of many inputs is several engine jobs; a completion running meanwhile gives the
    same tokens as alone, and the embeddings equal encode_texts."""
    monkeypatch.setattr(app_mod, "EMBED_BATCH", 4)
    texts = [f"{SHORT[i % 3]} {i}" for i in range(30)]
    ref_text = generate(dec.model, dec.tok, "The quick brown fox", max_new_tokens=24).text
    ref = em.encode_texts(dec.model, dec.tok, texts)
    jobs = dec.engine.stats["jobs"]
    with ThreadPoolExecutor(2) as pool:
        c = pool.submit(dec.client.completions.create, model="tiny", prompt="The quick brown fox", max_tokens=24,
                        temperature=0)
        e = pool.submit(dec.client.embeddings.create, model="tiny", input=texts, encoding_format="float")
        assert c.result().choices[0].text == ref_text
        torch.testing.assert_close(vectors(e.result()), ref, atol=1e-6, rtol=1e-5)
    assert dec.engine.stats["jobs"] - jobs == 8  # ceil(30 / 4)


def test_embedding_work_is_off_the_event_loop(dec, monkeypatch):
    """While the engine computes an embedding (held here until released), the event loop still
    answers other clients."""
    started, release = threading.Event(), threading.Event()
    real = em.encode_ids

    def slow(*a, **k):
        started.set()
        assert release.wait(30)
        return real(*a, **k)

    monkeypatch.setattr(em, "encode_ids", slow)
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(httpx.post, dec.url + "/v1/embeddings", json={"input": SHORT}, timeout=60)
        assert started.wait(30)
        t = time.monotonic()
        assert httpx.get(dec.url + "/health", timeout=10).status_code == 200
        assert httpx.post(dec.url + "/tokenize", json={"prompt": "hello"}, timeout=10).status_code == 200
        assert time.monotonic() - t < 5 and not fut.done()
        release.set()
        assert fut.result().status_code == 200


# --- encoder --------------------------------------------------------------------------------------
def test_encoder_embeddings_equal_transformers_mean_pooling(enc):
    texts = TEXTS + [ENCODER_TEXT[4]]
    got = vectors(enc.client.embeddings.create(model="bert", input=texts, encoding_format="float"))
    torch.testing.assert_close(got, hf_mean_pool(enc.dir, texts), atol=1e-5, rtol=1e-5)
    loaded = load_model(enc.dir)
    torch.testing.assert_close(got, em.encode_texts(loaded.model, loaded.tokenizer, texts), atol=1e-6, rtol=1e-5)
    b64 = vectors(enc.client.embeddings.create(model="bert", input=texts))  # the client's base64
    torch.testing.assert_close(b64, got, atol=0, rtol=0)


def test_encoder_cannot_generate_400_not_a_crash(enc):
    with pytest.raises(openai.BadRequestError) as e:
        enc.client.chat.completions.create(model="bert", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "model_not_supported" and "is an encoder and cannot generate" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        enc.client.completions.create(model="bert", prompt="hi", max_tokens=2)
    assert "Completions API" in str(e.value)
    assert_error(httpx.post(enc.url + "/predict", json={"prompt": "hi"}), 400, "model_not_supported")
    # The rest still works.
    assert [m.id for m in enc.client.models.list().data] == ["bert"]
    assert httpx.post(enc.url + "/tokenize", json={"prompt": "who won"}).json()["tokens"][0] == 2  # [CLS]
    assert len(enc.client.embeddings.create(model="bert", input="still serving").data) == 1
    assert enc.engine.batch is None  # no KV cache allocated for a model that cannot use one


def test_serve_command_starts_on_an_encoder(enc, monkeypatch, capsys):
    """serve() itself (the engine in its thread, the HTTP server in another) on a BERT folder."""
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
    t = threading.Thread(target=serve_mod.serve, kwargs=dict(model=str(enc.dir), host="127.0.0.1", port=0),
                         daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 60
        while "server" not in made or not made["server"].server.started:
            assert t.is_alive() and time.monotonic() < deadline, "serve() did not start"
            time.sleep(0.02)
        url = made["server"].url
        r = client(url).embeddings.create(model="bert", input=["a text", "another"], encoding_format="float")
        assert len(r.data) == 2 and len(r.data[0].embedding) == 32
        assert httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}
                          ).status_code == 400
    finally:
        if "app" in made:
            made["app"].state.engine.stop()
        t.join(timeout=30)
    assert not t.is_alive()
    err = capsys.readouterr().err
    assert "serving bert on http://127.0.0.1:" in err and "embeddings only" in err
