"""`llmkit arena MODEL_OR_URL MODEL_OR_URL [...]`: people compare two anonymous models.

A battle, as in Chatbot Arena (Chiang et al. 2024, "Chatbot Arena: An Open Platform for
Evaluating LLMs by Human Preference", sec. 3): the server picks a pair of models and a random
left/right order, the user's prompt goes to both, both replies stream side by side, the user votes
(left / right / tie / both bad) and only the acknowledged vote reveals the names.

    browser --POST /api/battles {prompt}----------> Arena: pick the pair, keep the prompt
            --POST /api/battles/ID/a -------------> stream model A's reply (OpenAI SSE chunks,
            --POST /api/battles/ID/b -------------> names stripped), recorded server-side
            --POST /api/votes {battle, winner} ---> VoteStore.add (one committed transaction),
                                                    then the names

Every model is an OpenAI-compatible chat endpoint: a URL is used as it is; a local checkpoint is
served in-process by `llmkit serve`'s app on a loopback port with a random key, so there is one
code path. The replies stored with a vote are the ones the server streamed, not what a client
says they were; a battle takes one vote (the store's UNIQUE battle id makes it so even across
restarts or two racing requests).
"""

import asyncio
import hmac
import itertools
import json
import os
import random
import secrets
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict, deque
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from llmkit.errors import LLMKitError

WINNERS = ("a", "b", "tie", "both_bad")
BATTLE_TTL = 3600.0  # seconds an unvoted battle is kept
MAX_OPEN_BATTLES = 10_000
SIDE_NAMES = {"a": "model A", "b": "model B"}


# --- the models: OpenAI-compatible chat endpoints ---------------------------------------------------
@dataclass
class Backend:
    """One contestant: `base` is its OpenAI API root (.../v1), `model` the id sent in requests."""

    name: str
    base: str
    model: Optional[str] = None
    api_key: Optional[str] = None
    server: object = None  # the in-process ServerThread of a local checkpoint

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


def is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def api_base(url: str) -> str:
    """The /v1 root of an endpoint given as http://host:port, http://host:port/v1 or a full
    .../chat/completions URL."""
    url = url.rstrip("/")
    for tail in ("/chat/completions", "/completions"):
        if url.endswith(tail):
            url = url[: -len(tail)]
    return url if url.endswith("/v1") else url + "/v1"


def remote_model(base: str, api_key: Optional[str], timeout: float = 10.0) -> str:
    """The first model an endpoint lists at /v1/models (one clear line when it cannot be asked)."""
    req = urllib.request.Request(base + "/models", headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            data = json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise LLMKitError(f"{base}/models answered HTTP {e.code}: is the API key right (--upstream-api-key)?") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise LLMKitError(f"cannot reach the endpoint {base}: {getattr(e, 'reason', e)}") from None
    models = [m.get("id") for m in data.get("data", []) if isinstance(m, dict) and m.get("id")]
    if not models:
        raise LLMKitError(f"{base}/models lists no model: name one as URL#MODEL")
    return models[0]


def open_backends(specs: list[str], upstream_api_key: Optional[str] = None, max_batch_size: int = 4,
                  device: str = "cpu", dtype: Optional[str] = None) -> list[Backend]:
    """A Backend per spec: `URL` or `URL#MODEL` (an OpenAI-compatible endpoint), or a local model
    (llmkit or HF folder, hub id) served in-process on 127.0.0.1 behind a random key. Names are
    the model ids (or folder names), made unique with #2, #3..."""
    from llmkit.serve import ServerThread, create_app

    backends: list[Backend] = []
    try:
        for spec in specs:
            if is_url(spec):
                url, _, model = spec.partition("#")
                base = api_base(url)
                model = model or remote_model(base, upstream_api_key)
                backends.append(Backend(model, base, model, upstream_api_key))
            else:
                key = secrets.token_urlsafe(24)
                print(f"loading {spec} ...", file=sys.stderr, flush=True)
                app = create_app(spec, api_key=key, max_batch_size=max_batch_size, device=device, dtype=dtype)
                server = ServerThread(app).start()
                name = app.state.service.model_name
                backends.append(Backend(name, server.url + "/v1", name, key, server))
    except BaseException:
        for b in backends:
            b.close()
        raise
    seen: dict[str, int] = {}
    for b in backends:
        seen[b.name] = seen.get(b.name, 0) + 1
        if seen[b.name] > 1:
            b.name = f"{b.name}#{seen[b.name]}"
    return backends


# --- battles ---------------------------------------------------------------------------------------
@dataclass
class Battle:
    id: str
    models: tuple[int, int]  # backend indices of sides a and b
    prompt: str
    system: str
    settings: dict
    user: Optional[str]
    created: float = field(default_factory=time.time)
    replies: dict = field(default_factory=lambda: {"a": None, "b": None})
    started: set = field(default_factory=set)
    voted: bool = False

    def done(self) -> bool:
        return self.replies["a"] is not None and self.replies["b"] is not None


def utf16_prefix(text: str, n: int) -> str:
    """The first `n` characters of `text` as JavaScript counts them (UTF-16 code units, so an emoji
    is two); a pair cut in half is left out."""
    units = text.encode("utf-16-le")
    return text if 2 * n >= len(units) else units[: 2 * n].decode("utf-16-le", errors="ignore")


class PairSampler:
    """Picks the next pair: one of those with the fewest battles so far (votes on record plus
    battles started in this run), at random among them, in a random left/right order. Every pair
    gets battles, and their numbers stay within one of each other (Chatbot Arena samples
    uniformly at first, then favours pairs whose ratings are least certain; with the few
    models and votes of a team this is the even version of it)."""

    def __init__(self, n_models: int, seed: Optional[int] = None):
        if n_models < 2:
            raise LLMKitError(f"an arena needs at least two models, got {n_models}")
        self.pairs = list(itertools.combinations(range(n_models), 2))
        self.counts = {p: 0 for p in self.pairs}
        self.rng = random.Random(seed)
        self.lock = threading.Lock()

    def record(self, i: int, j: int, n: int = 1) -> None:
        with self.lock:
            self.counts[(min(i, j), max(i, j))] += n

    def next(self) -> tuple[int, int]:
        with self.lock:
            low = min(self.counts.values())
            i, j = self.rng.choice([p for p in self.pairs if self.counts[p] == low])
            self.counts[(i, j)] += 1
        return (i, j) if self.rng.random() < 0.5 else (j, i)


class RateLimit:
    """At most `n` events per `per` seconds for each key (a user, or an address): a sliding window."""

    def __init__(self, n: int, per: float = 60.0):
        self.n, self.per = n, per
        self.events: dict[str, deque] = defaultdict(deque)

    def allow(self, key: str) -> bool:
        if self.n <= 0:
            return True
        now = time.monotonic()
        q = self.events[key]
        while q and now - q[0] > self.per:
            q.popleft()
        if len(q) >= self.n:
            return False
        q.append(now)
        return True


def read_users(path: Optional[str]) -> dict[str, str]:
    """A users file: one `USER KEY` per line (# comments): each person's own API key, so that a
    vote's user is the key's owner, not a name anyone can type."""
    if path is None:
        return {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise LLMKitError(f"cannot read the users file {path}: {e.strerror or e}") from None
    users: dict[str, str] = {}
    for n, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise LLMKitError(f"{path}:{n}: expected 'USER KEY', got {len(parts)} fields")
        user, key = parts
        if key in users:
            raise LLMKitError(f"{path}:{n}: the key of '{user}' is also '{users[key]}'s")
        users[key] = user
    return users


# --- the app ---------------------------------------------------------------------------------------
def create_arena_app(backends: list[Backend], store, *, api_key: Optional[str] = None,
                     users: Optional[dict[str, str]] = None, max_prompt_chars: int = 8000,
                     max_tokens_limit: int = 1024, battles_per_minute: int = 30, seed: Optional[int] = None,
                     max_request_bytes: int = 64 * 1024, upstream_timeout: float = 300.0):
    """The arena's FastAPI app over `backends` (see open_backends) and a `VoteStore`.

    `api_key` (one shared key) and `users` ({key: user}, each person's own key) gate every /api
    route; with neither the arena is open (keep it on 127.0.0.1 then). A vote's user is the key's
    owner when there are users, else what the page sends (a name, not an authentication)."""
    import httpx
    from fastapi import FastAPI, Request
    from fastapi.responses import Response, StreamingResponse

    from llmkit.arena.ratings import heatmap_png, leaderboard, win_rates, battle_counts
    from llmkit.arena.votes import DuplicateVote
    from llmkit.serve.app import add_error_handlers, read_limited
    from llmkit.serve.protocol import APIError
    from llmkit.serve.web import page_response, static_response

    names = [b.name for b in backends]
    sampler = PairSampler(len(backends), seed)
    index = {n: i for i, n in enumerate(names)}
    for v in store.votes():  # the pairs already battled on record count: new battles even them out
        i, j = index.get(v["model_a"]), index.get(v["model_b"])
        if i is not None and j is not None and i != j:
            sampler.record(i, j)
    battles: dict[str, Battle] = {}
    limit = RateLimit(battles_per_minute)
    users = dict(users or {})
    client = httpx.AsyncClient(timeout=httpx.Timeout(upstream_timeout, connect=10.0))

    def who(request: Request) -> Optional[str]:
        """The key's user (users file), '' for the shared key or an open arena; 401 otherwise."""
        if not users and not api_key:
            return ""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            for key, user in users.items():
                if hmac.compare_digest(token.encode(), key.encode()):
                    return user
            if api_key and hmac.compare_digest(token.encode(), api_key.encode()):
                return ""
        raise APIError(401, "Incorrect or missing API key (send 'Authorization: Bearer <key>')",
                       code="invalid_api_key")

    def too_large(size: Optional[int]) -> APIError:
        got = f"{size} bytes" if size is not None else f"more than {max_request_bytes} bytes"
        return APIError(413, f"Request body too large ({got}); the limit is {max_request_bytes} bytes",
                        code="request_too_large")

    async def body(request: Request) -> dict:
        """The JSON object of a request, at most max_request_bytes (413 past it, as `llmkit serve`)."""
        raw = await read_limited(request, max_request_bytes, too_large)
        try:
            data = json.loads(raw or b"{}")
        except (ValueError, RecursionError) as e:
            raise APIError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise APIError(400, "request body must be a JSON object", code="invalid_json")
        return data

    def text_field(data: dict, key: str, default: str = "", max_chars: int = max_prompt_chars) -> str:
        value = data.get(key, default)
        if value is None:
            value = default
        if not isinstance(value, str):
            raise APIError(400, f"{key} must be a string", param=key)
        if len(value) > max_chars:
            raise APIError(413, f"{key} is {len(value)} characters; the limit is {max_chars}", param=key,
                           code="request_too_large")
        return value

    def number(data: dict, key: str, default, lo, hi, kind=float):
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
            raise APIError(400, f"{key} must be a number", param=key)
        if not lo <= value <= hi:
            raise APIError(400, f"{key} must be in {lo}..{hi}, got {value}", param=key)
        return kind(value)

    def expire() -> None:
        now = time.time()
        for bid in [k for k, b in battles.items() if now - b.created > BATTLE_TTL]:
            del battles[bid]

    @asynccontextmanager
    async def lifespan(app):
        yield
        await client.aclose()

    app = FastAPI(title="llmkit arena", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store, app.state.backends, app.state.battles, app.state.sampler = store, backends, battles, sampler

    add_error_handlers(app)

    @app.get("/")
    async def arena_page():
        return page_response("arena.html")

    @app.get("/leaderboard")
    async def leaderboard_page():
        return page_response("leaderboard.html")

    @app.get("/static/{name}")
    async def static(name: str):
        return static_response(name)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/api/info")
    async def info(request: Request):
        user = who(request)
        return {"models": len(names), "votes": store.count(), "user": user or None, "users": bool(users),
                "max_prompt_chars": max_prompt_chars, "max_tokens_limit": max_tokens_limit}

    @app.post("/api/battles")
    async def new_battle(request: Request):
        """{prompt, system?, max_tokens?, temperature?, top_p?} -> {battle, sides}: a new pair."""
        user = who(request)
        data = await body(request)
        prompt = text_field(data, "prompt")
        if not prompt.strip():
            raise APIError(400, "prompt is empty", param="prompt")
        system = text_field(data, "system")
        settings = {"max_tokens": number(data, "max_tokens", min(256, max_tokens_limit), 1, max_tokens_limit, int),
                    "temperature": number(data, "temperature", 0.7, 0.0, 2.0),
                    "top_p": number(data, "top_p", 1.0, 1e-6, 1.0)}
        # A users file makes the key's owner the user; otherwise the page's name (optional).
        client_name = user or text_field(data, "user", max_chars=64).strip() or None
        rate_key = client_name or (request.client.host if request.client else "?")
        if not limit.allow(rate_key):
            raise APIError(429, f"at most {battles_per_minute} battles a minute; wait a little", code="rate_limited")
        expire()
        if len(battles) >= MAX_OPEN_BATTLES:
            raise APIError(503, "too many open battles; vote on yours or try again later", type="server_error")
        i, j = sampler.next()
        battle = Battle(secrets.token_urlsafe(12), (i, j), prompt, system, settings, client_name)
        battles[battle.id] = battle
        return {"battle": battle.id, "sides": SIDE_NAMES}

    @app.post("/api/battles/{battle_id}/{side}")
    async def stream_side(battle_id: str, side: str, request: Request):
        """Model `side`'s reply to the battle's prompt, as OpenAI chat-completion chunks (SSE) whose
        `model` says only "model A" / "model B". Each side streams once; the text relayed is what is
        recorded, also when the client stops early (then cut by the vote's `shown` to what it saw)."""
        who(request)
        if side not in SIDE_NAMES:
            raise APIError(404, f"no side '{side}': a or b")
        battle = battles.get(battle_id)
        if battle is None:
            raise APIError(404, "no such battle (it may have expired): start a new one", code="battle_not_found")
        if side in battle.started:
            raise APIError(409, f"{SIDE_NAMES[side]} has already answered in this battle", code="already_streamed")
        battle.started.add(side)
        backend = backends[battle.models[0 if side == "a" else 1]]
        messages = ([{"role": "system", "content": battle.system}] if battle.system else []) + \
            [{"role": "user", "content": battle.prompt}]
        payload = {"messages": messages, "stream": True, "stream_options": {"include_usage": True},
                   **battle.settings}
        if backend.model:
            payload["model"] = backend.model
        try:
            upstream = await client.send(client.build_request("POST", backend.base + "/chat/completions",
                                                              json=payload, headers=backend.headers()), stream=True)
        except httpx.HTTPError as e:
            battle.replies[side] = ""
            raise APIError(502, f"{SIDE_NAMES[side]} cannot be reached: {type(e).__name__}",
                           type="server_error", code="upstream_unreachable") from None
        if upstream.status_code != 200:
            raw = await upstream.aread()
            await upstream.aclose()
            battle.replies[side] = ""
            try:
                message = json.loads(raw)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode(errors="replace")[:200]
            raise APIError(502, f"{SIDE_NAMES[side]} failed: {message}", type="server_error", code="upstream_error")

        async def relay():
            parts: list[str] = []
            try:
                async for line in upstream.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        continue
                    if "error" in chunk:
                        yield f"data: {json.dumps({'error': chunk['error']})}\n\n"
                        break
                    for choice in chunk.get("choices") or []:
                        parts.append((choice.get("delta") or {}).get("content") or "")
                    # Only what a client needs; the name, id and fingerprint would tell the model.
                    clean = {"object": "chat.completion.chunk", "model": SIDE_NAMES[side],
                             "choices": chunk.get("choices") or []}
                    if chunk.get("usage"):
                        clean["usage"] = chunk["usage"]
                    yield f"data: {json.dumps(clean, ensure_ascii=False)}\n\n"
                yield "data: [DONE]\n\n"
            except httpx.HTTPError:
                yield f"data: {json.dumps(APIError(502, 'the model stopped answering', type='server_error').body())}\n\n"
                yield "data: [DONE]\n\n"
            finally:  # also when the browser stops the stream: the upstream request is closed too
                battle.replies[side] = "".join(parts)
                await upstream.aclose()

        return StreamingResponse(relay(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/api/votes")
    async def vote(request: Request):
        """{battle, winner: a|b|tie|both_bad, user?, shown?} -> the vote's id and the two names, once
        it is committed to the store.

        `shown` ({side: n}) says that a side the page stopped was seen up to its first n characters:
        the chunks in flight when the browser hung up were relayed but never shown, and the vote
        is about what the voter read. The relayed text is only ever cut, never replaced."""
        user = who(request)
        data = await body(request)
        battle = battles.get(text_field(data, "battle", max_chars=64))
        if battle is None:
            raise APIError(404, "no such battle (it may have expired)", code="battle_not_found")
        winner = data.get("winner")
        if winner not in WINNERS:
            raise APIError(400, f"winner must be one of {', '.join(WINNERS)}", param="winner")
        if not battle.done():
            raise APIError(409, "both replies must be finished before the vote", code="battle_not_finished")
        if battle.voted:
            raise APIError(409, "this battle already has a vote", code="duplicate_vote")
        name = user or text_field(data, "user", max_chars=64).strip() or battle.user
        shown = data.get("shown") or {}
        if not isinstance(shown, dict) or any(side not in SIDE_NAMES or isinstance(n, bool) or not isinstance(n, int)
                                              or n < 0 for side, n in shown.items()):
            raise APIError(400, "shown must map a side (a, b) to a number of characters", param="shown")
        replies = {side: utf16_prefix(text, shown[side]) if side in shown else text
                   for side, text in battle.replies.items()}
        a, b = (names[k] for k in battle.models)
        record = {"time": time.time(), "model_a": a, "model_b": b, "winner": winner, "prompt": battle.prompt,
                  "reply_a": replies["a"], "reply_b": replies["b"], "user": name,
                  "battle": battle.id, "source": "arena", "system": battle.system, "settings": battle.settings}
        battle.voted = True
        try:
            vote_id = await asyncio.to_thread(store.add, record)
        except DuplicateVote:
            raise APIError(409, "this battle already has a vote", code="duplicate_vote") from None
        except LLMKitError as e:
            battle.voted = False
            raise APIError(400, str(e)) from None
        return {"id": vote_id, "model_a": a, "model_b": b, "winner": winner}

    @app.get("/api/leaderboard")
    async def leaderboard_json(request: Request, rounds: int = 200):
        who(request)
        votes = await asyncio.to_thread(store.votes)
        rounds = max(0, min(rounds, 2000))
        rows = await asyncio.to_thread(leaderboard, votes, rounds) if votes else []
        return {"votes": len(votes), "models": names, "rows": rows}

    @app.get("/api/winrates.png")
    async def winrates_png(request: Request):
        who(request)
        votes = await asyncio.to_thread(store.votes)
        if not votes:
            raise APIError(404, "no votes yet", code="no_votes")

        def render() -> bytes:
            models, matrix = win_rates(votes)
            with tempfile.TemporaryDirectory() as d:
                path = Path(d) / "winrates.png"
                heatmap_png(models, matrix, battle_counts(votes), path, title=f"win rates, {len(votes)} votes")
                return path.read_bytes()

        return Response(await asyncio.to_thread(render), media_type="image/png",
                        headers={"Cache-Control": "no-store"})

    @app.get("/api/votes.jsonl")
    async def export(request: Request):
        who(request)
        votes = await asyncio.to_thread(store.votes)
        text = "".join(json.dumps(v, ensure_ascii=False) + "\n" for v in votes)
        return Response(text, media_type="application/x-ndjson")

    return app


def arena(
    models: list[str],
    votes: str = "out/arena/votes.db",
    host: str = "127.0.0.1",
    port: int = 8001,
    api_key: Optional[str] = None,
    users: Optional[str] = None,
    upstream_api_key: Optional[str] = None,
    max_prompt_chars: int = 8000,
    max_tokens_limit: int = 1024,
    battles_per_minute: int = 30,
    max_batch_size: int = 4,
    device: str = "cpu",
    dtype: Optional[str] = None,
    seed: Optional[int] = None,
) -> None:
    """Serve a battle page: two anonymous models answer the same prompt, people vote, names show after.

    Examples:
        llmkit arena out/finetune/final HuggingFaceTB/SmolLM2-135M-Instruct
        llmkit arena ./model-a http://gpu-box:8000/v1 https://api.openai.com/v1#gpt-4o-mini
        llmkit arena ratings out/arena/votes.db

    Args:
        models: two or more contestants: local models (llmkit or Hugging Face folders, hub ids),
            served in-process, or OpenAI-compatible endpoints (URL, or URL#MODEL to pick one).
        votes: the SQLite file of votes (created; WAL mode, one committed transaction per vote).
        host: address to listen on (default: this machine only).
        port: TCP port of the page (/ the battle, /leaderboard the ratings).
        api_key: one key everybody sends (default: $LLMKIT_API_KEY); the page asks for it.
        users: a file of `USER KEY` lines: each person's own key, recorded with their votes.
        upstream_api_key: key sent to the URL endpoints (default: $OPENAI_API_KEY).
        max_prompt_chars: longest prompt (and system prompt) accepted.
        max_tokens_limit: most tokens a reply may be asked for.
        battles_per_minute: new battles a user (or an address) may start a minute (0: no limit).
        max_batch_size: requests each local model decodes together.
        device: where local models run: cpu, cuda, cuda:1, ...
        dtype: local models' weights dtype (default: as stored).
        seed: seed of the pair sampling (default: random).
    """
    from llmkit.arena.votes import VoteStore
    from llmkit.serve import ServerThread, exposure_warning

    if len(models) < 2:
        raise LLMKitError(f"an arena needs at least two models, got {len(models)}")
    if not 0 <= port <= 65535:
        raise LLMKitError(f"port must be in 0..65535, got {port}")
    api_key = api_key or os.environ.get("LLMKIT_API_KEY") or None
    upstream_api_key = upstream_api_key or os.environ.get("OPENAI_API_KEY") or None
    user_keys = read_users(users)
    warning = exposure_warning(host, api_key or (user_keys and "users"))
    if warning:
        print(warning, file=sys.stderr)
    store = VoteStore(votes)
    backends = open_backends(models, upstream_api_key, max_batch_size, device, dtype)
    try:
        app = create_arena_app(backends, store, api_key=api_key, users=user_keys, max_prompt_chars=max_prompt_chars,
                               max_tokens_limit=max_tokens_limit, battles_per_minute=battles_per_minute, seed=seed)
        try:
            server = ServerThread(app, host, port, log_level="info")
        except OSError as e:
            raise LLMKitError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        server.start()
        print(f"arena of {len(backends)} models on {server.url} (leaderboard: {server.url}/leaderboard; "
              f"votes: {votes}, {store.count()} so far); Ctrl-C stops", file=sys.stderr, flush=True)
        try:
            while server.thread.is_alive():
                server.thread.join(timeout=0.5)
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
    finally:
        for b in backends:
            b.close()
        store.close()
