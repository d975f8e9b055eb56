"""The arena's pages in a real browser: a battle (/) and the leaderboard (/leaderboard) of
`llmkit arena`, in Debian's headless chromium driven by Playwright (tests/browser.py).

The two contestants are real tiny checkpoints (llama and qwen2) served in-process by
`open_backends`, the path `llmkit arena MODEL MODEL` takes, so the page streams real replies
through the arena's relay. What the page shows is read from the DOM, what it sent from the
requests the browser makes, and what was recorded from the VoteStore.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from llmkit.arena.server import create_arena_app, open_backends
from llmkit.arena.votes import VoteStore
from llmkit.serve import ServerThread
from tests.browser import browser, page, page_errors  # noqa: F401  (fixtures)

NAMES = {"llama", "qwen2"}
VOTE_BUTTONS = "#votes button"


def readable_model(out_dir: Path, family: str, seed: int) -> Path:
    """A tiny random checkpoint (tests.helpers.build_model_dir) whose output layer can only pick
    tokens that decode to printable ASCII. A random model's bytes are mostly invalid UTF-8, which
    the server holds back until the reply ends (an incomplete character may still be completed):
    such a reply arrives in one piece, and streaming could not be seen."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    from tests.helpers import build_model_dir

    build_model_dir(out_dir, family, seed=seed, context=1024)  # room for a long reply to stop
    tok = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    unreadable = [i for i in range(tok.get_vocab_size())
                  if not (lambda s: s and s.isascii() and s.isprintable())(tok.decode([i]))]
    model = AutoModelForCausalLM.from_pretrained(out_dir)
    with torch.no_grad():  # a zero row: logit 0, below the best of the other (random) rows
        model.lm_head.weight[unreadable] = 0.0
    model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    """The two contestants, each served in-process behind its random key, with a `pace` that
    slows every decode step of both (a tiny model writes ~1,000 tokens/s: too fast to see a
    stream grow, or to press Stop in the middle of one)."""
    root = tmp_path_factory.mktemp("arena-models")
    found = open_backends([str(readable_model(root / "llama", "llama", 0)),
                           str(readable_model(root / "qwen2", "qwen2", 1))])
    pace = {"s": 0.0}
    for b in found:
        batch = b.server.server.config.app.state.engine.batch
        real_step = batch.step

        def paced_step(real_step=real_step):
            if pace["s"]:
                time.sleep(pace["s"])
            return real_step()

        batch.step = paced_step
    try:
        yield SimpleNamespace(list=found, pace=pace)
    finally:
        for b in found:
            b.close()


@pytest.fixture
def arena(backends, tmp_path):
    """Factory: an arena over the two contestants with a fresh vote store, on a server thread."""
    opened = []

    def _start(**kw):
        store = VoteStore(tmp_path / f"votes{len(opened)}.db")
        server = ServerThread(create_arena_app(backends.list, store, **kw)).start()
        opened.append((server, store))
        return SimpleNamespace(url=server.url, store=store)

    yield _start
    backends.pace["s"] = 0.0
    for server, store in opened:
        server.stop()
        store.close()


def api_requests(pg) -> list:
    """(method, path, Authorization) of every /api request the page makes, in order."""
    seen: list = []

    def on_request(r):
        path = r.url.split("/", 3)[3] if r.url.count("/") >= 3 else ""
        if path.startswith("api/"):
            seen.append((r.method, "/" + path, r.headers.get("authorization")))

    pg.on("request", on_request)
    return seen


def start_battle(pg, prompt: str, max_tokens: int = 24) -> None:
    pg.fill("#prompt", prompt)
    pg.click("#ask details summary")
    pg.fill("#max_tokens", str(max_tokens))
    pg.fill("#temperature", "0")
    pg.click("#ask details summary")
    pg.click("#send")


def wait_both_done(pg) -> None:
    """Both replies have arrived: each side's timing line is written when its stream ends."""
    pg.wait_for_function("() => document.getElementById('timing-a').textContent"
                         " && document.getElementById('timing-b').textContent")


def rendered_as(pg, side: str, text: str) -> bool:
    """The side's pane is exactly llmkitMarkdown.render(text), node for node."""
    return pg.evaluate("""([side, text]) => {
        const expected = document.createElement('div');
        expected.appendChild(window.llmkitMarkdown.render(text));
        const box = document.getElementById('reply-' + side);
        return box.childNodes.length === expected.childNodes.length
            && Array.from(box.childNodes).every((n, i) => n.isEqualNode(expected.childNodes[i]));
    }""", [side, text])


def vote_buttons_disabled(pg) -> list[bool]:
    return [b.is_disabled() for b in pg.locator(VOTE_BUTTONS).all()]


def board_rows(pg) -> list[dict]:
    """The leaderboard table as {column: text} rows."""
    heads = pg.locator("#table thead th").all_text_contents()
    return [dict(zip(heads, tr.locator("td").all_text_contents())) for tr in pg.locator("#rows tr").all()]


# --- a battle -----------------------------------------------------------------------------------
def test_battle_streams_both_sides_anonymously_and_the_vote_reveals_the_names(arena, backends, page, page_errors):
    a = arena(seed=3)
    sent = api_requests(page)
    page.goto(a.url + "/")
    page.fill("#user", "ann")
    # Record each pane's text length at every change of the DOM: a streamed reply grows in steps.
    page.evaluate("""() => {
        window.__lengths = {a: [], b: []};
        for (const side of ['a', 'b']) {
            const box = document.getElementById('reply-' + side);
            new MutationObserver(() => window.__lengths[side].push(box.textContent.length))
                .observe(box, {childList: true, subtree: true, characterData: true});
        }
    }""")
    backends.pace["s"] = 0.01
    start_battle(page, "Tell me about foxes.", max_tokens=40)
    page.wait_for_function("() => document.getElementById('reply-a').textContent.length > 0"
                           " || document.getElementById('reply-b').textContent.length > 0")
    # Mid-stream: no vote yet, no name, Stop available.
    assert all(vote_buttons_disabled(page)) and page.is_disabled("#send") and page.is_enabled("#stop")
    assert page.text_content("#name-a") == "" and page.text_content("#name-b") == ""
    wait_both_done(page)
    lengths = page.evaluate("window.__lengths")
    for side in "ab":  # many pieces, each longer than the last
        assert len(set(lengths[side])) >= 5 and lengths[side] == sorted(lengths[side]), (side, lengths[side])
    assert page.text_content("#reply-a").strip() and page.text_content("#reply-b").strip()
    # Both finished: the vote is open, and nothing on the page says which model is which.
    assert not any(vote_buttons_disabled(page)) and page.is_disabled("#stop") and page.is_hidden("#reveal")
    shown = page.evaluate("() => document.body.innerText")
    assert not any(name in shown for name in NAMES), shown
    assert page.text_content("#name-a") == "" and page.text_content("#name-b") == ""

    page.click("#votes button[data-winner='a']")
    page.wait_for_selector("#reveal:not([hidden])")
    (v,) = a.store.votes()
    # The names shown are the ones recorded, on the sides they were on, and the winner is the left one.
    assert page.text_content("#name-a") == "— " + v["model_a"] and page.text_content("#name-b") == "— " + v["model_b"]
    assert {v["model_a"], v["model_b"]} == NAMES and v["winner"] == "a"
    reveal = page.text_content("#reveal-text")
    assert reveal == (f"Vote #{v['id']} recorded: Model A ({v['model_a']}) is better. Model A was {v['model_a']}, "
                      f"model B was {v['model_b']}.")
    # What was stored is what the page showed, with the prompt, settings and typed name.
    assert rendered_as(page, "a", v["reply_a"]) and rendered_as(page, "b", v["reply_b"])
    assert (v["prompt"], v["user"], v["source"]) == ("Tell me about foxes.", "ann", "arena")
    assert v["settings"] == {"max_tokens": 40, "temperature": 0.0, "top_p": 1.0}
    battle_id = v["battle"]
    assert [(m, p) for m, p, _ in sent] == [("GET", "/api/info"), ("POST", "/api/battles"),
                                            ("POST", f"/api/battles/{battle_id}/a"),
                                            ("POST", f"/api/battles/{battle_id}/b"), ("POST", "/api/votes")]

    # One vote per battle: the page offers no second one, the API refuses it.
    assert all(vote_buttons_disabled(page))
    page.evaluate("() => document.querySelectorAll('#votes button').forEach((b) => b.click())")
    dup = httpx.post(a.url + "/api/votes", json={"battle": battle_id, "winner": "b"}, timeout=30)
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "duplicate_vote"
    time.sleep(0.2)
    assert a.store.count() == 1 and sent[-1][1] == "/api/votes" and len(sent) == 5

    # New battle: a clean slate, the names hidden again until the next vote.
    page.click("#again")
    assert page.text_content("#name-a") == "" and page.text_content("#reply-a") == "" and page.is_hidden("#reveal")
    assert all(vote_buttons_disabled(page)) and page.input_value("#prompt") == ""
    backends.pace["s"] = 0.0
    start_battle(page, "And about owls?", max_tokens=8)
    wait_both_done(page)
    assert page.text_content("#name-a") == "" and page.text_content("#name-b") == ""
    page.click("#votes button[data-winner='both_bad']")
    page.wait_for_selector("#reveal:not([hidden])")
    second = a.store.votes()[1]
    assert second["winner"] == "both_bad" and second["prompt"] == "And about owls?" and second["battle"] != battle_id
    assert "both are bad" in page.text_content("#reveal-text")
    assert page_errors == []


def test_stop_ends_both_streams_and_the_vote_records_what_arrived(arena, backends, page, page_errors):
    a = arena()
    page.goto(a.url + "/")
    backends.pace["s"] = 0.03  # 600 tokens would take 18 s a side
    start_battle(page, "Go on and on.", max_tokens=600)
    page.wait_for_function("() => document.getElementById('reply-a').textContent.length > 5"
                           " && document.getElementById('reply-b').textContent.length > 5")
    page.click("#stop")
    wait_both_done(page)
    assert page.text_content("#timing-a").startswith("(stopped)")
    assert page.text_content("#timing-b").startswith("(stopped)")
    assert not any(vote_buttons_disabled(page))
    # Voting right after Stop: the server may still be closing the two relays.
    page.click("#votes button[data-winner='tie']")
    page.wait_for_selector("#reveal:not([hidden])")
    assert page.is_hidden("#error")
    (v,) = a.store.votes()
    assert v["winner"] == "tie" and v["reply_a"] and v["reply_b"]
    # What is stored is what the page showed when it stopped, not the chunks still in flight then.
    for side in "ab":
        assert rendered_as(page, side, v[f"reply_{side}"]), side
    assert page_errors == []


# --- the leaderboard ----------------------------------------------------------------------------
def test_leaderboard_follows_the_votes_with_its_heatmap(arena, page, page_errors):
    a = arena()
    page.goto(a.url + "/leaderboard")
    page.wait_for_function("() => document.getElementById('summary').textContent !== 'Loading…'")
    assert page.text_content("#summary") == "0 votes over 2 models."
    assert board_rows(page) == [] and page.is_hidden("#heatmap")

    page.goto(a.url + "/")
    start_battle(page, "Which is better?", max_tokens=8)
    wait_both_done(page)
    page.click("#votes button[data-winner='b']")
    page.wait_for_selector("#reveal:not([hidden])")
    (v,) = a.store.votes()
    page.click("#reveal a[href='/leaderboard']")
    page.wait_for_selector("#heatmap:not([hidden])")
    assert page.text_content("#summary") == "1 vote over 2 models."
    rows = board_rows(page)
    assert [r["model"] for r in rows] == [v["model_b"], v["model_a"]]  # the winner first
    assert [(r["#"], r["battles"], r["wins"], r["ties"], r["losses"], r["win rate"]) for r in rows] == [
        ("1", "1", "1", "0", "0", "100.0%"), ("2", "1", "0", "0", "1", "0.0%")]
    assert float(rows[0]["rating"]) > float(rows[1]["rating"]) and float(rows[0]["Elo"]) > float(rows[1]["Elo"])
    page.wait_for_function("() => document.getElementById('heatmap-img').naturalWidth > 0")

    # Two more votes (through the API, as another person's page would send them); Refresh shows them.
    with httpx.Client(timeout=60) as c:
        for winner in ("tie", "a"):
            bid = c.post(a.url + "/api/battles", json={"prompt": "hi", "max_tokens": 4}).json()["battle"]
            for side in "ab":
                with c.stream("POST", f"{a.url}/api/battles/{bid}/{side}", json={}) as r:
                    r.read()
            assert c.post(a.url + "/api/votes", json={"battle": bid, "winner": winner}).status_code == 200
    first_src = page.get_attribute("#heatmap-img", "src")
    page.click("#refresh")
    page.wait_for_function("() => document.getElementById('summary').textContent.startsWith('3 votes')")
    page.wait_for_function("src => { const img = document.getElementById('heatmap-img');"
                           " return img.src !== src && img.complete && img.naturalWidth > 0; }", arg=first_src)
    rows = board_rows(page)
    assert {r["model"] for r in rows} == NAMES and all(r["battles"] == "3" and r["ties"] == "1" for r in rows)
    record = {m: [0, 0] for m in NAMES}  # wins, losses from the store
    for x in a.store.votes():
        if x["winner"] in ("a", "b"):
            win, lose = (x["model_a"], x["model_b"]) if x["winner"] == "a" else (x["model_b"], x["model_a"])
            record[win][0] += 1
            record[lose][1] += 1
    assert {r["model"]: [int(r["wins"]), int(r["losses"])] for r in rows} == record
    assert page_errors == []


# --- keys ---------------------------------------------------------------------------------------
def test_api_key_is_asked_for_checked_and_sent(arena, page, page_errors):
    # A users file's key makes its owner the vote's user, whatever name is typed.
    a = arena(api_key="shared-key", users={"key-ann": "ann"})
    sent = api_requests(page)
    page.goto(a.url + "/")  # the page and its files need no key
    page.wait_for_selector("#keybar:not([hidden])")
    assert "Incorrect or missing API key" in page.text_content("#error")
    page.fill("#apikey", "wrong")
    page.press("#apikey", "Enter")
    # The key is tried at once: a wrong one is refused before any prompt is typed.
    page.wait_for_function("n => document.querySelectorAll('#keybar:not([hidden])').length === 1"
                           " && performance.getEntriesByType('resource')"
                           ".filter((e) => e.name.endsWith('/api/info')).length === n", arg=2)
    assert page.input_value("#apikey") == ""  # a typed key is not left in the page
    page.fill("#apikey", "key-ann")
    page.click("#savekey")
    page.wait_for_selector("#keybar", state="hidden")
    assert page.is_hidden("#error")
    assert page.input_value("#user") == "ann" and page.is_disabled("#user")  # the name the vote will carry
    start_battle(page, "Hello?", max_tokens=6)
    wait_both_done(page)
    page.click("#votes button[data-winner='b']")
    page.wait_for_selector("#reveal:not([hidden])")
    (v,) = a.store.votes()
    assert v["user"] == "ann" and v["winner"] == "b"
    assert [auth for _, _, auth in sent] == [None, "Bearer wrong"] + ["Bearer key-ann"] * 5
    assert [p for _, p, _ in sent[2:4]] == ["/api/info", "/api/battles"]
    # The leaderboard (same tab: the key is kept for the session) fetches table and heatmap with it.
    page.click("#reveal a[href='/leaderboard']")
    page.wait_for_selector("#heatmap:not([hidden])")
    page.wait_for_function("() => document.getElementById('heatmap-img').naturalWidth > 0")
    assert {r["model"] for r in board_rows(page)} == NAMES and page.is_hidden("#keybar")
    assert sent[-2:] == [("GET", "/api/leaderboard", "Bearer key-ann"), ("GET", "/api/winrates.png", "Bearer key-ann")]
    # A new tab has no key: the leaderboard asks for one, and loads once it is given.
    other = page.context.new_page()
    other.on("pageerror", lambda exc: page_errors.append(f"pageerror: {exc}"))
    other.on("console", lambda m: page_errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    other.goto(a.url + "/leaderboard")
    other.wait_for_selector("#keybar:not([hidden])")
    assert "Incorrect or missing API key" in other.text_content("#error") and board_rows(other) == []
    other.fill("#apikey", "shared-key")
    other.press("#apikey", "Enter")
    other.wait_for_selector("#heatmap:not([hidden])")
    assert {r["model"] for r in board_rows(other)} == NAMES and other.is_hidden("#error")
    # The browser logs each refused request (three 401s); nothing else went wrong.
    assert len(page_errors) == 3 and all("status of 401" in e for e in page_errors), page_errors


# --- what a stopped page says it showed ----------------------------------------------------------
def test_shown_only_cuts_the_relayed_reply_as_javascript_counts(arena):
    from llmkit.arena.server import utf16_prefix

    # JavaScript's length counts UTF-16 units: an emoji is two, and half of one is no character.
    assert [utf16_prefix("a😀b", n) for n in (0, 1, 2, 3, 4, 99)] == ["", "a", "a", "a😀", "a😀b", "a😀b"]
    a = arena()
    with httpx.Client(timeout=60) as c:
        bid = c.post(a.url + "/api/battles", json={"prompt": "hi", "max_tokens": 8}).json()["battle"]
        for side in "ab":
            with c.stream("POST", f"{a.url}/api/battles/{bid}/{side}", json={}) as r:
                r.read()
        for bad in ({"c": 1}, {"a": -1}, {"a": "3"}, {"a": True}, {"a": 1.5}, [3]):
            r = c.post(a.url + "/api/votes", json={"battle": bid, "winner": "a", "shown": bad})
            assert r.status_code == 400 and r.json()["error"]["param"] == "shown", (bad, r.text)
        assert a.store.count() == 0  # a refused vote leaves the battle open
        assert c.post(a.url + "/api/votes", json={"battle": bid, "winner": "a", "shown": {"b": 3}}).status_code == 200
    (v,) = a.store.votes()
    assert len(v["reply_b"]) == 3 and len(v["reply_a"]) > 3  # only the side named is cut
