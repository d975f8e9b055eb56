"""The chat page of `llmkit serve` (GET /) in a real browser: Debian's headless chromium driven by
Playwright (tests/browser.py), against a tiny model served by `ServerThread`.

The tiny model decodes ~1,000 tokens/s here, so the streaming and stop tests slow each decode
step down (`pace`) to see a reply arrive in pieces; what the page sends is read from the
requests the browser makes (`page.on("request")`), what it shows from the DOM.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from llmkit.serve import ServerThread, create_app
from llmkit.serve.web import page_response, static_response
from tests.browser import browser, page, page_errors  # noqa: F401  (fixtures)

WEB = Path(__file__).resolve().parents[1] / "src" / "llmkit" / "web"
TIMING = re.compile(r"^Time for inference: (\d+\.\d\d) sec total, (\d+\.\d\d) tokens/sec, (\d+) tokens")
CHAT_URL = "/v1/chat/completions"


@pytest.fixture(scope="module")
def srv(tiny_model_dir):
    d = tiny_model_dir(context=1024)
    app = create_app(str(d), max_batch_size=4, model_name="tiny")
    engine = app.state.engine
    pace = {"s": 0.0}
    real_step = engine.batch.step

    def paced_step():  # a slower model: each decode step takes at least pace["s"]
        if pace["s"]:
            time.sleep(pace["s"])
        return real_step()

    engine.batch.step = paced_step
    with ServerThread(app) as server:
        yield SimpleNamespace(url=server.url, engine=engine, pace=pace, dir=d)


@pytest.fixture(autouse=True)
def _normal_pace(request):
    yield
    if "srv" in request.fixturenames:
        request.getfixturevalue("srv").pace["s"] = 0.0


def wait_idle(engine, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while engine.active_count and time.monotonic() < deadline:
        time.sleep(0.01)
    return engine.active_count


def chat_bodies(pg) -> list[dict]:
    """The JSON bodies of the page's chat requests, in order (filled in as they are sent)."""
    bodies: list[dict] = []
    pg.on("request", lambda r: bodies.append(r.post_data_json) if r.url.endswith(CHAT_URL) else None)
    return bodies


def open_chat(pg, url: str, **settings) -> None:
    """Load the chat page; fill in the settings given (system, temperature, max_tokens, ...)."""
    pg.goto(url + "/")
    if settings:
        pg.click("#settings summary")
        for field, value in settings.items():
            pg.fill(f"#{field}", str(value))


def send(pg, text: str) -> None:
    pg.fill("#input", text)
    pg.press("#input", "Enter")


def wait_reply(pg, n: int) -> str:
    """The timing line of the n-th reply (1-based), once that reply is complete."""
    timing = pg.locator(".message.assistant .timing").nth(n - 1)
    timing.wait_for()
    pg.wait_for_function("n => { const t = document.querySelectorAll('.message.assistant .timing')[n - 1];"
                         " return t && t.textContent.length > 0; }", arg=n)
    return timing.text_content()


def greedy_reply(url: str, messages: list[dict], max_tokens: int, **extra) -> str:
    r = httpx.post(url + CHAT_URL, json={"messages": messages, "max_tokens": max_tokens, "temperature": 0, **extra},
                   timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


# --- the files and their headers ----------------------------------------------------------------
def test_page_and_static_files_are_served_with_strict_headers(srv):
    r = httpx.get(srv.url + "/")
    assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    csp = r.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'self'" and directives["script-src"] == "'self'"
    assert "unsafe" not in csp and directives["img-src"] == "'self' blob: data:"
    assert directives["frame-ancestors"] == "'none'" and directives["object-src"] == "'none'"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "llmkit chat" in r.text
    for name, ctype in [("markdown.js", "text/javascript"), ("stream.js", "text/javascript"),
                        ("chat.js", "text/javascript"), ("common.css", "text/css"), ("favicon.svg", "image/svg+xml")]:
        r = httpx.get(f"{srv.url}/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].split(";")[0] == ctype, name
        assert r.headers["x-content-type-options"] == "nosniff" and r.content == (WEB / name).read_bytes()
    # Only bare names of shipped page files: no traversal, no Python source, no hidden files.
    for bad in ["..%2Fserve%2Fapp.py", "..%2F..%2F..%2Fpyproject.toml", "__init__.py", ".hidden.js", "missing.js",
                "chat.html%00.js", "%2E%2E", "%2Fetc%2Fpasswd", "chat.HTML.py"]:
        r = httpx.get(f"{srv.url}/static/{bad}")
        assert r.status_code == 404 and r.json()["error"]["code"] in ("not_found", None), bad
    assert httpx.get(srv.url + "/static/sub/chat.js").status_code == 404
    assert page_response("markdown.js").status_code == 404 and page_response("nope.html").status_code == 404
    assert static_response("chat.html").headers["content-security-policy"] == csp


def test_pages_have_no_inline_script_and_scripts_never_write_html():
    for html in WEB.glob("*.html"):
        text = html.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), html.name  # every script is a file
        assert not re.search(r"\son[a-z]+\s*=", text) and "javascript:" not in text, html.name
        assert not re.search(r"\sstyle\s*=", text), html.name  # style-src 'self': no inline styles
    for js in ("markdown.js", "stream.js", "chat.js"):
        code = (WEB / js).read_text()
        code = re.sub(r"^\s*//.*$", "", code, flags=re.M)  # comments may name what is never used
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in code, (js, sink)


# --- chatting -----------------------------------------------------------------------------------
def test_reply_streams_into_the_page_with_its_timing(srv, page, page_errors):
    bodies = chat_bodies(page)
    open_chat(page, srv.url, temperature=0, max_tokens=150, top_p=0.9, seed=7)
    page.wait_for_selector("#model:not(:empty)")
    assert page.text_content("#model").startswith("tiny")
    # Record the reply's length at every change of the DOM: a streamed reply grows in steps.
    page.evaluate("""() => {
        window.__lengths = [];
        new MutationObserver(() => {
            const c = document.querySelectorAll('.message.assistant .content');
            if (c.length) window.__lengths.push(c[c.length - 1].textContent.length);
        }).observe(document.getElementById('messages'), {childList: true, subtree: true, characterData: true});
    }""")
    srv.pace["s"] = 0.004
    send(page, "Tell me a story")
    assert page.is_disabled("#send") and page.is_enabled("#stop")
    timing = wait_reply(page, 1)
    lengths = page.evaluate("window.__lengths")
    assert len(set(lengths)) >= 10 and lengths == sorted(lengths), lengths  # many chunks, text only grows
    m = TIMING.match(timing)
    assert m, timing
    seconds, rate, tokens = float(m[1]), float(m[2]), int(m[3])
    assert tokens == 150 and "max tokens reached" in timing  # greedy: this model does not stop by itself
    assert seconds >= 150 * 0.004 and rate == pytest.approx(tokens / seconds, rel=0.02, abs=0.02)
    assert page.is_enabled("#send") and page.is_disabled("#stop")
    (body,) = bodies
    assert body["messages"] == [{"role": "user", "content": "Tell me a story"}]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True} and body["model"] == "tiny"
    assert (body["temperature"], body["max_tokens"], body["top_k"], body["top_p"], body["seed"]) == (0, 150, 50, 0.9, 7)
    # What the page shows is the model's reply rendered by llmkitMarkdown, node for node.
    expected = greedy_reply(srv.url, body["messages"], 150, seed=7, top_p=0.9)
    assert page.evaluate("""text => {
        const expected = document.createElement('div');
        expected.className = 'content';
        expected.appendChild(window.llmkitMarkdown.render(text));
        return document.querySelector('.message.assistant .content').isEqualNode(expected);
    }""", expected)
    assert page_errors == []


def test_multi_turn_system_prompt_and_new_chat(srv, page, page_errors):
    bodies = chat_bodies(page)
    open_chat(page, srv.url, system="You are terse.", temperature=0, max_tokens=12)
    send(page, "Hi")
    wait_reply(page, 1)
    send(page, "And then?")
    wait_reply(page, 2)
    system = {"role": "system", "content": "You are terse."}
    first = greedy_reply(srv.url, [system, {"role": "user", "content": "Hi"}], 12)
    assert bodies[0]["messages"] == [system, {"role": "user", "content": "Hi"}]
    # The second request carries the whole conversation: the first reply exactly as it streamed.
    assert bodies[1]["messages"] == [system, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": first},
                                     {"role": "user", "content": "And then?"}]
    assert page.locator(".message.user").all_text_contents() == ["Hi", "And then?"]
    page.click("#newchat")
    assert page.locator(".message").count() == 0
    send(page, "Fresh start")
    wait_reply(page, 1)
    assert bodies[2]["messages"] == [system, {"role": "user", "content": "Fresh start"}]
    assert page_errors == []


def test_stop_ends_the_stream_and_the_server_keeps_serving(srv, page, page_errors):
    engine = srv.engine
    assert wait_idle(engine) == 0
    cancelled = engine.stats["cancelled"]
    open_chat(page, srv.url, temperature=0, max_tokens=990)
    srv.pace["s"] = 0.02  # 990 tokens would take 20 s
    send(page, "Go on and on")
    page.wait_for_function("() => { const c = document.querySelector('.message.assistant .content');"
                           " return c && c.textContent.length > 5; }")
    page.click("#stop")
    timing = wait_reply(page, 1)
    assert "(stopped)" in timing and int(TIMING.match(timing)[3]) < 990
    shown = page.text_content(".message.assistant .content")
    time.sleep(0.4)
    assert page.text_content(".message.assistant .content") == shown  # no more text after Stop
    assert wait_idle(engine) == 0 and engine.stats["cancelled"] == cancelled + 1  # the server dropped the row
    srv.pace["s"] = 0.0
    page.fill("#max_tokens", "5")
    send(page, "Again")
    assert int(TIMING.match(wait_reply(page, 2))[3]) == 5
    assert page_errors == []


def test_api_key_is_asked_for_and_sent(srv, page, page_errors):
    app = create_app(str(srv.dir), api_key="s3cret", max_batch_size=1, model_name="locked")
    with ServerThread(app) as server:
        auth: list = []
        page.on("request", lambda r: auth.append(r.headers.get("authorization")) if r.url.endswith(CHAT_URL) else None)
        page.goto(server.url + "/")  # the page and its scripts need no key
        page.wait_for_selector("#keybar:not([hidden])")
        assert "Incorrect or missing API key" in page.text_content("#error")
        page.fill("#apikey", "wrong")
        page.press("#apikey", "Enter")
        page.wait_for_selector("#keybar:not([hidden])")
        send(page, "Hello?")
        page.wait_for_selector(".message.user.failed")
        assert "Incorrect or missing API key" in page.text_content("#error")
        assert page.input_value("#input") == "Hello?" and page.locator(".message.assistant").count() == 0
        page.fill("#apikey", "s3cret")
        page.click("#savekey")
        page.wait_for_selector("#model:not(:empty)")
        assert page.is_hidden("#keybar") and page.text_content("#model").startswith("locked")
        assert page.is_hidden("#error")
        page.fill("#input", "")
        open_settings = page.locator("#settings summary")
        open_settings.click()
        page.fill("#max_tokens", "4")
        send(page, "Hello again")
        assert TIMING.match(wait_reply(page, 1))
        assert auth == ["Bearer wrong", "Bearer s3cret"]
    # The browser logs each refused request; nothing else went wrong.
    assert page_errors and all("status of 401" in e for e in page_errors), page_errors


def test_a_too_long_conversation_leaves_out_the_oldest_exchange(srv, page, page_errors):
    app = create_app(str(srv.dir), max_batch_size=1, max_seq_len=128, model_name="short")
    with ServerThread(app) as server:
        bodies = chat_bodies(page)
        open_chat(page, server.url, temperature=0, max_tokens=30)
        timings = []
        for i, text in enumerate(["one " * 12, "two " * 12, "three " * 12], 1):
            send(page, text)
            timings.append(wait_reply(page, i))
        assert "left out to fit the context" not in timings[0]
        assert any("left out to fit the context" in t for t in timings[1:]), timings
        last = bodies[-1]["messages"]  # the oldest exchange is gone, the new message is there
        assert all(m["content"] != "one " * 12 for m in last) and last[-1]["content"] == "three " * 12
        assert page.locator(".message.user").count() == 3 and page.is_hidden("#error")
    assert all("status of 400" in e for e in page_errors), page_errors


# --- markdown.js and stream.js, exactly --------------------------------------------------------
TREE_JS = """
(inputs) => {
  const tree = (n) => n.nodeType === Node.TEXT_NODE ? n.textContent : [
      n.tagName.toLowerCase(),
      Object.fromEntries(Array.from(n.attributes).map((a) => [a.name, a.value])),
      ...Array.from(n.childNodes).map(tree)];
  return inputs.map((text) => Array.from(window.llmkitMarkdown.render(text).childNodes).map(tree));
}
"""

MARKDOWN_CASES = [
    ("<img src=x onerror=alert(1)> and <script>alert(2)</script>",
     [["p", {}, "<img src=x onerror=alert(1)> and <script>alert(2)</script>"]]),
    ("**bold**, *italic*, `<b>code</b>` and 2 * 3 * 4",
     [["p", {}, ["strong", {}, "bold"], ", ", ["em", {}, "italic"], ", ", ["code", {}, "<b>code</b>"],
       " and 2 * 3 * 4"]]),
    ("# Title\nline one\nline two\n\nnext paragraph",
     [["h1", {}, "Title"], ["p", {}, "line one", ["br", {}], "line two"], ["p", {}, "next paragraph"]]),
    ("```python\nif a < b:\n    print('<b>')\n```\nafter",
     [["pre", {}, ["code", {"class": "language-python"}, "if a < b:\n    print('<b>')"]], ["p", {}, "after"]]),
    ("Streaming:\n```js\nlet x = 1;",  # an unclosed fence, mid-stream
     [["p", {}, "Streaming:"], ["pre", {}, ["code", {"class": "language-js"}, "let x = 1;"]]]),
    ('```x" onload="alert(1)\ncode', [["pre", {}, ["code", {}, "code"]]]),
    ("- a\n- **b**\n  - nested\n\n3. three\n4. four",
     [["ul", {}, ["li", {}, "a"], ["li", {}, ["strong", {}, "b"], ["ul", {}, ["li", {}, "nested"]]]],
      ["ol", {"start": "3"}, ["li", {}, "three"], ["li", {}, "four"]]]),
    ("[docs](https://example.com/a?b=1) [bad](javascript:alert(1)) see http://example.org.",
     [["p", {}, ["a", {"href": "https://example.com/a?b=1", "rel": "noopener noreferrer", "target": "_blank"}, "docs"],
       " [bad](javascript:alert(1)) see ",
       ["a", {"href": "http://example.org/", "rel": "noopener noreferrer", "target": "_blank"}, "http://example.org"],
       "."]]),
    ("**half-written bold and `code", [["p", {}, "**half-written bold and `code"]]),
    ("snake_case_name and \\*not italic\\*", [["p", {}, "snake_case_name and *not italic*"]]),
    ("> quoted **text**\n\n---", [["blockquote", {}, ["p", {}, "quoted ", ["strong", {}, "text"]]], ["hr", {}]]),
]


def test_markdown_renders_a_safe_subset(srv, page, page_errors):
    page.goto(srv.url + "/")
    got = page.evaluate(TREE_JS, [text for text, _ in MARKDOWN_CASES])
    for (text, expected), tree in zip(MARKDOWN_CASES, got):
        assert tree == expected, text
    # Rendered into the live page, the HTML-looking text stays text: no element, no script ran.
    page.evaluate("""() => {
        const box = document.getElementById('messages');
        box.appendChild(window.llmkitMarkdown.render('<img src=x onerror=alert(1)><script>alert(2)</script>'));
        box.appendChild(window.llmkitMarkdown.render('<svg onload=alert(3)>'));
    }""")
    time.sleep(0.2)
    assert page.locator("#messages img, #messages script, #messages svg").count() == 0
    # The CSP's Trusted Types: even a careless innerHTML with a string is refused on this page.
    assert page.evaluate("() => { try { document.body.innerHTML = '<b>x</b>'; return 'allowed'; }"
                         " catch (e) { return e.name; } }") == "TypeError"
    assert all("TrustedHTML" in e for e in page_errors), page_errors  # that refusal, logged; no dialog


def test_reply_is_rendered_as_markdown_end_to_end(srv, page, page_errors):
    """A fixed server reply (the route answered by the test), through stream.js and the page."""
    reply = ["Here is **bold** and `x <y>`:\n", "```py\nprint(1)\n", "```\n- <img src=x onerror=alert(1)>\n- two"]
    chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    chunks += [{"choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}]} for t in reply]
    chunks += [{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
               {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 17, "total_tokens": 22}}]
    sse = "".join(f"data: {json.dumps(c)}\r\n\r\n" for c in chunks) + "data: [DONE]\r\n\r\n"
    page.route("**" + CHAT_URL, lambda route: route.fulfill(status=200, body=sse,
                                                            headers={"Content-Type": "text/event-stream"}))
    page.goto(srv.url + "/")
    send(page, "show me")
    timing = wait_reply(page, 1)
    assert int(TIMING.match(timing)[3]) == 17 and "(" not in timing
    box = page.locator(".message.assistant .content")
    assert box.locator("strong").text_content() == "bold" and box.locator("p > code").text_content() == "x <y>"
    assert box.locator("pre code.language-py").text_content() == "print(1)"
    assert box.locator("li").all_text_contents() == ["<img src=x onerror=alert(1)>", "two"]
    assert box.locator("img").count() == 0
    assert page_errors == []


STREAM_JS = """
async ({pieces, status, hang}) => {
  // A fetch answered by a stream of exactly these byte pieces (split anywhere), or never ending.
  window.fetch = async (url, init) => {
    window.__sent = {url: url, body: JSON.parse(init.body), auth: init.headers.Authorization};
    const body = new ReadableStream({
      start(controller) {
        for (const p of pieces) controller.enqueue(new Uint8Array(p));
        if (!hang) controller.close();
        if (init.signal) {
          init.signal.addEventListener('abort', () => controller.error(new DOMException('aborted', 'AbortError')));
        }
      },
    });
    const type = status === 200 ? 'text/event-stream' : 'application/json';
    return new Response(body, {status: status, headers: {'Content-Type': type}});
  };
  const deltas = [];
  const ac = new AbortController();
  if (hang) setTimeout(() => ac.abort(), 100);
  try {
    const r = await window.llmkitStream.chat({url: '/v1/chat/completions', apiKey: 'k',
                                              body: {messages: [], max_tokens: 3},
                                              onDelta: (d, full) => deltas.push([d, full]), signal: ac.signal});
    return {result: r, deltas: deltas, sent: window.__sent};
  } catch (e) {
    return {error: e.message, code: e.code, status: e.status, deltas: deltas};
  }
}
"""


def as_bytes(text: str) -> list[int]:
    return list(text.encode())


def test_stream_parses_events_split_anywhere(srv, page, page_errors):
    from llmkit.generate.cli import timing_line

    page.goto(srv.url + "/")
    events = [{"choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}]}
              for t in ["Hé", "llo ", "wörld €"]]
    events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
    text = "".join(f"data: {json.dumps(e, ensure_ascii=False)}\r\n\r\n" for e in events)
    text += ": comment\n\ndata: [DONE]\n\n"
    raw = text.encode()
    # Pieces of 1..7 bytes: splits inside multi-byte characters, inside \r\n, inside "data:".
    sizes = [1, 2, 3, 5, 7]
    pieces, i, k = [], 0, 0
    while i < len(raw):
        pieces.append(raw[i:i + sizes[k % len(sizes)]])
        i, k = i + sizes[k % len(sizes)], k + 1
    out = page.evaluate(STREAM_JS, {"pieces": [list(p) for p in pieces], "status": 200, "hang": False})
    r = out["result"]
    assert r["text"] == "Héllo wörld €" and r["finishReason"] == "length"
    assert [d for d, _ in out["deltas"]] == ["Hé", "llo ", "wörld €"] and out["deltas"][-1][1] == r["text"]
    assert r["tokens"] == 3 and r["usage"] is None and r["seconds"] >= r["firstTokenSeconds"] >= 0  # no usage: chunks
    sent = out["sent"]
    assert sent["body"] == {"messages": [], "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}
    assert sent["auth"] == "Bearer k"
    # A refused request throws the server's message; an abort returns what arrived, no exception.
    refusal = '{"error": {"message": "max_tokens is too large", "code": "bad"}}'
    err = page.evaluate(STREAM_JS, {"pieces": [as_bytes(refusal)], "status": 400, "hang": False})
    assert (err["error"], err["code"], err["status"]) == ("max_tokens is too large", "bad", 400)
    first = f"data: {json.dumps(events[0])}\n\n"
    hung = page.evaluate(STREAM_JS, {"pieces": [as_bytes(first)], "status": 200, "hang": True})
    assert hung["result"]["finishReason"] == "aborted" and hung["result"]["text"] == "Hé"
    failed = first + 'data: {"error": {"message": "engine failed"}}\n\n'
    midway = page.evaluate(STREAM_JS, {"pieces": [as_bytes(failed)], "status": 200, "hang": False})
    assert midway["error"] == "engine failed" and midway["deltas"] == [["Hé", "Hé"]]
    # The timing line is `llmkit chat`'s, figure for figure.
    for seconds, tokens in [(3.08, 43), (0.5, 0), (12.345, 1000)]:
        js = page.evaluate("([s, n]) => window.llmkitStream.formatTiming(s, n)", [seconds, tokens])
        assert "Time for inference: " + js == timing_line(seconds, tokens)
    assert page_errors == []
