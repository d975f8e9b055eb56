"""`llmkit arena`: battles between two anonymous models, votes, reveal, limits, ratings (HTTP level).

The contestants are real: one tiny checkpoint served in-process (the local path of
open_backends) and one `llmkit serve` app reached by URL (the remote path), so every battle
streams real replies through the arena's relay."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from llmkit.arena.server import PairSampler, create_arena_app, open_backends, read_users
from llmkit.arena.votes import VoteStore
from llmkit.errors import LLMKitError
from llmkit.serve import ServerThread, create_app


@pytest.fixture(scope="module")
def contestants(tiny_model_dir, tmp_path_factory):
    """Two backends: tiny llama (in-process, by path) and tiny qwen2 (a separate server, by URL)."""
    remote_dir = tiny_model_dir("qwen2", seed=1)
    with ServerThread(create_app(str(remote_dir), model_name="remote-qwen", max_batch_size=4)) as remote:
        backends = open_backends([str(tiny_model_dir("llama")), remote.url + "/v1"])
        try:
            yield backends
        finally:
            for b in backends:
                b.close()


def arena_server(backends, store, **kw):
    return ServerThread(create_arena_app(backends, store, **kw))


def stream(client, url, battle, side, headers=None):
    """The side's reply text and the raw SSE text, read as the page reads it."""
    text, raw = [], []
    with client.stream("POST", f"{url}/api/battles/{battle}/{side}", json={}, headers=headers or {}) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            raw.append(line)
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                for c in chunk.get("choices", []):
                    text.append(c["delta"].get("content") or "")
    return "".join(text), "\n".join(raw)


def battle(client, url, headers=None, **body):
    r = client.post(f"{url}/api/battles", json={"prompt": "Say something.", "max_tokens": 12, "temperature": 0,
                                                **body}, headers=headers or {})
    assert r.status_code == 200, r.text
    return r.json()["battle"]


def test_backends_are_named_and_reached(contestants):
    assert [b.name for b in contestants] == ["llama", "remote-qwen"]
    assert contestants[0].server is not None and contestants[0].api_key  # in-process, behind a random key
    assert contestants[1].server is None and contestants[1].base.endswith("/v1")


def test_battle_streams_both_sides_anonymously_then_the_vote_reveals(contestants, tmp_path):
    store = VoteStore(tmp_path / "votes.db")
    with arena_server(contestants, store, seed=0) as s, httpx.Client(timeout=60) as c:
        bid = battle(c, s.url, user="ann")
        a, raw_a = stream(c, s.url, bid, "a")
        b, raw_b = stream(c, s.url, bid, "b")
        assert a and b
        for raw in (raw_a, raw_b):  # nothing in the stream tells which model answered
            assert "llama" not in raw and "qwen" not in raw
        assert '"model": "model A"' in raw_a and '"model": "model B"' in raw_b
        r = c.post(f"{s.url}/api/votes", json={"battle": bid, "winner": "b"})
        assert r.status_code == 200, r.text
        reveal = r.json()
        assert {reveal["model_a"], reveal["model_b"]} == {"llama", "remote-qwen"} and reveal["winner"] == "b"
        # The store holds what the server streamed, with the prompt, user and source.
        (v,) = store.votes()
        assert v["id"] == reveal["id"] and (v["model_a"], v["model_b"]) == (reveal["model_a"], reveal["model_b"])
        assert (v["reply_a"], v["reply_b"], v["prompt"], v["user"], v["source"]) == (a, b, "Say something.", "ann",
                                                                                        "arena")
        # Greedy replies are the models' own: the same prompt straight to each backend gives the same text.
        for name, reply in ((v["model_a"], a), (v["model_b"], b)):
            be = next(x for x in contestants if x.name == name)
            direct = c.post(be.base + "/chat/completions", headers=be.headers(),
                            json={"model": be.model, "messages": [{"role": "user", "content": "Say something."}],
                                  "max_tokens": 12, "temperature": 0}).json()
            assert direct["choices"][0]["message"]["content"] == reply
    store.close()


def test_vote_rules_duplicates_and_errors(contestants, tmp_path):
    store = VoteStore(tmp_path / "votes.db")
    with arena_server(contestants, store) as s, httpx.Client(timeout=60) as c:
        bid = battle(c, s.url)
        stream(c, s.url, bid, "a")
        r = c.post(f"{s.url}/api/votes", json={"battle": bid, "winner": "a"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "battle_not_finished"
        stream(c, s.url, bid, "b")
        again = c.post(f"{s.url}/api/battles/{bid}/a", json={})
        assert again.status_code == 409 and again.json()["error"]["code"] == "already_streamed"
        assert c.post(f"{s.url}/api/votes", json={"battle": bid, "winner": "left"}).status_code == 400
        assert c.post(f"{s.url}/api/votes", json={"battle": bid, "winner": "tie"}).status_code == 200
        dup = c.post(f"{s.url}/api/votes", json={"battle": bid, "winner": "a"})
        assert dup.status_code == 409 and dup.json()["error"]["code"] == "duplicate_vote"
        assert store.count() == 1
        assert c.post(f"{s.url}/api/votes", json={"battle": "nope", "winner": "a"}).status_code == 404
        assert c.post(f"{s.url}/api/battles/nope/a", json={}).status_code == 404
        assert c.post(f"{s.url}/api/battles/{bid}/c", json={}).status_code == 404
        # Bad bodies are OpenAI-style 4xx JSON, and the arena keeps serving.
        for body, status in (({"prompt": ""}, 400), ({"prompt": 3}, 400), ({"prompt": "x" * 9000}, 413),
                             ({"prompt": "hi", "max_tokens": 0}, 400), ({"prompt": "hi", "temperature": "hot"}, 400)):
            r = c.post(f"{s.url}/api/battles", json=body)
            assert r.status_code == status and r.json()["error"]["message"], (body, r.text)
        r = c.post(f"{s.url}/api/battles", content=b"{" * 10, headers={"content-type": "application/json"})
        assert r.status_code == 400
        r = c.post(f"{s.url}/api/battles", content=b" " * (70 * 1024), headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.headers["connection"] == "close"  # the same reader as `llmkit serve`
        chunked = c.post(f"{s.url}/api/battles", content=iter([b" " * 8192] * 9))  # no Content-Length: counted
        assert chunked.status_code == 413 and "more than" in chunked.json()["error"]["message"]
        assert c.get(f"{s.url}/health").json() == {"status": "ok"}
    store.close()


def test_pairs_are_sampled_evenly_counting_votes_on_record():
    sampler = PairSampler(4, seed=0)
    seen = [tuple(sorted(sampler.next())) for _ in range(12)]
    assert sorted(set(seen)) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert all(seen.count(p) == 2 for p in set(seen))
    sides = [sampler.next() for _ in range(60)]
    assert 10 < sum(i < j for i, j in sides) < 50  # left/right is random
    primed = PairSampler(3, seed=1)
    primed.record(0, 1, 5)
    primed.record(2, 0, 5)
    assert {tuple(sorted(primed.next())) for _ in range(5)} == {(1, 2)}
    with pytest.raises(LLMKitError, match="at least two"):
        PairSampler(1)


def test_keys_users_and_rate_limit(contestants, tmp_path):
    users_file = tmp_path / "users.txt"
    users_file.write_text("# team\nann key-ann\nbob key-bob\n")
    users = read_users(str(users_file))
    assert users == {"key-ann": "ann", "key-bob": "bob"}
    bad = tmp_path / "bad.txt"
    bad.write_text("ann\n")
    with pytest.raises(LLMKitError, match="bad.txt:1"):
        read_users(str(bad))
    store = VoteStore(tmp_path / "votes.db")
    with arena_server(contestants, store, users=users, battles_per_minute=2) as s, httpx.Client(timeout=60) as c:
        r = c.post(f"{s.url}/api/battles", json={"prompt": "hi"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert c.get(f"{s.url}/api/leaderboard", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get(f"{s.url}/").status_code == 200  # the page itself holds no secret
        bob = {"Authorization": "Bearer key-bob"}
        bid = battle(c, s.url, headers=bob, user="mallory")  # a typed name does not override the key's owner
        stream(c, s.url, bid, "a", bob)
        stream(c, s.url, bid, "b", bob)
        assert c.post(f"{s.url}/api/votes", json={"battle": bid, "winner": "a", "user": "mallory"},
                      headers=bob).status_code == 200
        assert store.votes()[0]["user"] == "bob"
        battle(c, s.url, headers=bob)
        r = c.post(f"{s.url}/api/battles", json={"prompt": "hi"}, headers=bob)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        battle(c, s.url, headers={"Authorization": "Bearer key-ann"})  # the limit is per user
    store.close()


def test_leaderboard_and_heatmap_follow_the_votes(contestants, tmp_path):
    store = VoteStore(tmp_path / "votes.db")
    with arena_server(contestants, store) as s, httpx.Client(timeout=60) as c:
        assert c.get(f"{s.url}/api/leaderboard").json() == {"votes": 0, "models": ["llama", "remote-qwen"], "rows": []}
        assert c.get(f"{s.url}/api/winrates.png").status_code == 404
        for winner in ("a", "b", "a"):
            bid = battle(c, s.url)
            stream(c, s.url, bid, "a")
            stream(c, s.url, bid, "b")
            assert c.post(f"{s.url}/api/votes", json={"battle": bid, "winner": winner}).status_code == 200
        board = c.get(f"{s.url}/api/leaderboard?rounds=20").json()
        assert board["votes"] == 3 and {r["model"] for r in board["rows"]} == {"llama", "remote-qwen"}
        assert all(r["battles"] == 3 for r in board["rows"])
        assert sum(r["wins"] for r in board["rows"]) == 3
        png = c.get(f"{s.url}/api/winrates.png")
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
        lines = c.get(f"{s.url}/api/votes.jsonl").text.splitlines()
        assert [json.loads(x)["id"] for x in lines] == [v["id"] for v in store.votes()]
    store.close()


def test_arena_command_killed_with_sigkill_keeps_every_acknowledged_vote(tiny_model_dir, tmp_path):
    db = tmp_path / "votes.db"
    models = [str(tiny_model_dir("llama")), str(tiny_model_dir("qwen2", seed=1))]
    proc = subprocess.Popen([sys.executable, "-m", "llmkit", "arena", *models, "--votes", str(db), "--port", "0"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        url = None
        deadline = time.monotonic() + 240
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "the arena exited early"
            if line.startswith("arena of 2 models on "):
                url = line.split(" on ", 1)[1].split()[0]
        assert url, "the arena did not start"
        acknowledged = []
        with httpx.Client(timeout=60) as c:
            for winner in ("a", "b", "tie", "both_bad"):
                bid = battle(c, url)
                stream(c, url, bid, "a")
                stream(c, url, bid, "b")
                r = c.post(f"{url}/api/votes", json={"battle": bid, "winner": winner})
                assert r.status_code == 200
                acknowledged.append((r.json()["id"], winner, bid))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    with VoteStore(db) as store:
        assert [(v["id"], v["winner"], v["battle"]) for v in store.votes()] == acknowledged


def test_arena_needs_two_models_and_reachable_urls(tiny_model_dir, capsys, tmp_path):
    from tests.helpers import cli_error

    db = ["--votes", str(tmp_path / "votes.db")]
    cli_error(capsys, ["arena", str(tiny_model_dir("llama")), *db], "at least two models")
    cli_error(capsys, ["arena", "http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1#m", *db], "cannot reach the endpoint")
