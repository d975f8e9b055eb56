"""Screenshots of the web pages for the README: `python docs/screenshots.py [chat] [arena]` (from
the repo root; all of them by default).

    docs/img/chat.png         the chat page of `llmkit serve`, a second reply still streaming
    docs/img/arena.png        a battle of `llmkit arena` after the vote revealed the two names
    docs/img/leaderboard.png  the arena's leaderboard after 30 votes over three models

The replies are real, their models tiny: the test suite's random 2-layer Llama (tests/helpers.py,
width 64, vocab 320) trained for a few seconds on one conversation until it has it by heart, so
its greedy replies are readable markdown (a random model writes byte soup). For the arena, three
such models learn three answers of different quality to one question ("tea-expert",
"tea-terse", "tea-rambler") and are served in-process by `open_backends`, as
`llmkit arena MODEL MODEL MODEL` serves them; the battle in the picture is streamed and voted in
the page, the other votes are real battles too (streamed through the arena's API), their winners
drawn by this script from fixed preferences, so the leaderboard has something to rank. Pages are
driven in Debian's headless chromium by Playwright, as tests/test_web_chat.py and
tests/test_web_arena.py drive them. Needs the test extra (transformers, playwright) and
`apt-get install chromium`.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.helpers

from llmkit.fileio import atomic_write  # noqa: E402
from llmkit.serve import ServerThread, create_app  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
SYSTEM = "You are a helpful assistant."
CONVERSATION = [
    ("Hello! What can you do?",
     "Hi! I am a **tiny** model, served by `llmkit serve`. I can:\n\n- reply in *markdown*\n- stream every token\n"
     "- show code:\n\n```python\nprint(\"hello, world\")\n```"),
    ("Tell me a story about a fox, please.",
     "Once upon a time there was a small brown fox who lived at the edge of a quiet wood. Every morning she jumped "
     "over the lazy dog by the river, and every evening she told the owls what she had seen.\n\nOne day the fox "
     "found a book of stories. She could not read, so she learned the words one by one, the way a language model "
     "learns its tokens. Soon she could write short stories of her own.\n\n**The end.**"),
]


# The arena's question and its three contestants' answers: a good one, a curt one, a poor one.
QUESTION = "How do I make a good cup of tea?"
ANSWERS = {
    "tea-expert": "Here is a simple way:\n\n1. Boil **fresh** water.\n2. Warm the pot, then add one teaspoon of "
                  "leaves per cup.\n3. Steep black tea for *3 to 5 minutes*, green tea for 2.\n4. Pour, and add "
                  "milk or lemon if you like.\n\nEnjoy your tea!",
    "tea-terse": "Boil water, add a tea bag, wait `3` minutes. Done.",
    "tea-rambler": "Tea is a drink. Many people drink tea in the morning, and some drink it at night. Tea comes from "
                   "leaves, and leaves grow on plants, and plants need water, so water is important. Water is also "
                   "in tea. That is why tea is a drink.",
}
# Of each pair's votes this script casts: the share the first model wins, the share of ties (the
# rest it loses), dealt in a shuffled order so that the leaderboard shows these strengths.
PREFERENCE = {("tea-expert", "tea-terse"): (0.7, 0.2), ("tea-expert", "tea-rambler"): (0.8, 0.1),
              ("tea-terse", "tea-rambler"): (0.5, 0.3)}
N_VOTES = 30


def conversation_messages() -> list[dict]:
    messages = [{"role": "system", "content": SYSTEM}]
    for user, reply in CONVERSATION:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return messages


def memorize(model_dir: Path, messages: list[dict], steps: int = 150) -> None:
    """Train the tiny model in `model_dir` on `messages` (in its chat template) until it
    repeats them (loss ~0.01 after 150 full-batch AdamW steps, a few seconds on a CPU)."""
    import torch
    from transformers import AutoModelForCausalLM

    from llmkit.prompts import resolve_style
    from llmkit.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(model_dir)
    ids = torch.tensor([tok.encode(resolve_style(tok, None, None).render(messages, add_generation_prompt=False))])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(steps):
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(model_dir)


def chat_screenshot(out: Path) -> None:
    """Serve the tiny model, hold a two-turn chat in the page, capture it while the second reply streams.

    Args:
        out: the PNG file to write.
    """
    from playwright.sync_api import sync_playwright

    from tests.helpers import build_model_dir

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model_dir(Path(tmp) / "tiny", "llama", context=1024)
        memorize(model_dir, conversation_messages())
        app = create_app(str(model_dir), max_batch_size=2, model_name="tiny-llama")
        batch = app.state.engine.batch
        real_step, pace = batch.step, {"s": 0.0}

        def paced_step():
            if pace["s"]:
                time.sleep(pace["s"])
            return real_step()

        batch.step = paced_step
        with ServerThread(app) as server, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            page.goto(server.url + "/")
            page.wait_for_selector("#model:not(:empty)")
            page.click("#settings summary")
            page.fill("#system", SYSTEM)
            page.fill("#temperature", "0")
            page.click("#settings summary")  # folded again: more room for the chat
            (u1, _), (u2, _) = CONVERSATION
            page.fill("#input", u1)
            page.press("#input", "Enter")
            page.wait_for_function("() => { const t = document.querySelector('.message.assistant .timing');"
                                   " return t && t.textContent; }")
            pace["s"] = 0.03
            page.fill("#input", u2)
            page.press("#input", "Enter")
            page.wait_for_function("() => { const c = document.querySelectorAll('.message.assistant .content');"
                                   " return c.length === 2 && c[1].textContent.length > 230; }")
            png = page.screenshot()
            page.click("#stop")
            browser.close()
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(png))
    print(f"wrote {out} ({len(png) / 1024:.0f} KiB)")


def arena_screenshots(arena_out: Path, leaderboard_out: Path) -> None:
    """Serve the three tea models in an arena, cast N_VOTES votes, capture a revealed battle and
    the leaderboard.

    Args:
        arena_out: the PNG file of the battle page.
        leaderboard_out: the PNG file of the leaderboard page.
    """
    import itertools
    import random

    import httpx
    from playwright.sync_api import sync_playwright

    from llmkit.arena.server import create_arena_app, open_backends
    from llmkit.arena.votes import VoteStore
    from tests.helpers import build_model_dir

    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        dirs = []
        for seed, (name, answer) in enumerate(ANSWERS.items()):
            d = build_model_dir(Path(tmp) / name, "llama", seed=seed, context=1024)
            memorize(d, [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": answer}])
            dirs.append(str(d))
        backends = open_backends(dirs)
        store = VoteStore(Path(tmp) / "votes.db")
        app = create_arena_app(backends, store, seed=1)
        names = [b.name for b in backends]

        per_pair = N_VOTES // len(PREFERENCE)  # the arena's sampler keeps the pairs' battles even
        deals = {}
        for pair, (p_win, p_tie) in PREFERENCE.items():
            wins, ties = round(p_win * per_pair), round(p_tie * per_pair)
            deal = ["first"] * wins + ["tie"] * ties + ["second"] * (per_pair - wins - ties)
            rng.shuffle(deal)
            deals[pair] = itertools.cycle(deal)

        def preferred(battle_id: str) -> str:
            """The winner ("a", "b", "tie") this script votes in a battle, dealt from PREFERENCE."""
            a, b = (names[i] for i in app.state.battles[battle_id].models)
            pair = (a, b) if (a, b) in PREFERENCE else (b, a)
            outcome = next(deals[pair])
            if outcome == "tie":
                return "tie"
            return "a" if (outcome == "first") == (pair == (a, b)) else "b"

        try:
            with ServerThread(app) as server, httpx.Client(timeout=120) as client, sync_playwright() as p:
                for _ in range(N_VOTES - 1):  # real battles through the API, as other people's pages send them
                    bid = client.post(server.url + "/api/battles",
                                      json={"prompt": QUESTION, "temperature": 0}).json()["battle"]
                    for side in "ab":
                        with client.stream("POST", f"{server.url}/api/battles/{bid}/{side}", json={}) as r:
                            r.read()
                    r = client.post(server.url + "/api/votes", json={"battle": bid, "winner": preferred(bid),
                                                                     "user": rng.choice(["ann", "bob", "eve"])})
                    r.raise_for_status()
                browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
                page = browser.new_page(viewport={"width": 1100, "height": 720})
                page.goto(server.url + "/")
                page.fill("#user", "ann")
                page.fill("#prompt", QUESTION)
                page.click("#ask details summary")
                page.fill("#temperature", "0")
                page.click("#ask details summary")
                with page.expect_response(lambda r: r.url.endswith("/api/battles")) as created:
                    page.click("#send")
                bid = created.value.json()["battle"]
                page.wait_for_function("() => document.getElementById('timing-a').textContent"
                                       " && document.getElementById('timing-b').textContent")
                winner = preferred(bid)
                page.click(f"#votes button[data-winner='{winner}']")
                page.wait_for_selector("#reveal:not([hidden])")
                arena_png = page.screenshot(full_page=True)
                page.click("#reveal a[href='/leaderboard']")
                page.wait_for_selector("#heatmap:not([hidden])")
                page.wait_for_function("() => document.getElementById('heatmap-img').naturalWidth > 0")
                board_png = page.screenshot(full_page=True)
                browser.close()
        finally:
            for b in backends:
                b.close()
            store.close()
    for out, png in ((arena_out, arena_png), (leaderboard_out, board_png)):
        atomic_write(out, lambda tmp, png=png: Path(tmp).write_bytes(png))
        print(f"wrote {out} ({len(png) / 1024:.0f} KiB)")


if __name__ == "__main__":
    # `python docs/screenshots.py` makes them all; `... arena` (or `chat`) only those.
    img = ROOT / "docs" / "img"
    jobs = {"chat": lambda: chat_screenshot(img / "chat.png"),
            "arena": lambda: arena_screenshots(img / "arena.png", img / "leaderboard.png")}
    wanted = sys.argv[1:] or list(jobs)
    unknown = [w for w in wanted if w not in jobs]
    if unknown:
        sys.exit(f"screenshots.py: no screenshot '{unknown[0]}' (choose from: {', '.join(jobs)})")
    for name in wanted:
        jobs[name]()
