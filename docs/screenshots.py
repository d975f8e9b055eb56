"""Screenshots of the web pages for the README: `python docs/screenshots.py` (from the repo root).

    docs/img/chat.png    the chat page of `llmkit serve`, a second reply still streaming

The chat is real, its model tiny: the test suite's random 2-layer Llama (tests/helpers.py, width
64, vocab 320) trained for a few seconds on this one conversation until it has it by heart, so
its greedy replies are readable markdown (a random model writes byte soup). It is served by
`create_app` + `ServerThread` and the page is driven in Debian's headless chromium by
Playwright, as tests/test_web_chat.py drives it; each decode step is slowed to 30 ms so that the
picture catches the second reply halfway. Needs the test extra (transformers, playwright) and
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


def memorize(model_dir: Path, steps: int = 150) -> None:
    """Train the tiny model in `model_dir` on CONVERSATION (in its chat template) until it
    repeats it (loss ~0.01 after 150 full-batch AdamW steps, a few seconds on a CPU)."""
    import torch
    from transformers import AutoModelForCausalLM

    from llmkit.prompts import resolve_style
    from llmkit.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(model_dir)
    messages = [{"role": "system", "content": SYSTEM}]
    for user, reply in CONVERSATION:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
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
        memorize(model_dir)
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


if __name__ == "__main__":
    chat_screenshot(ROOT / "docs" / "img" / "chat.png")
