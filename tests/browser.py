"""Real-browser test fixtures (this module holds no tests): Playwright driving Debian's headless
chromium (`apt-get install chromium chromium-driver`; .ci/run installs them). Playwright's own
browser download (`playwright install`) is never used.

A test module imports the fixtures it uses, which registers them for that module:

    from tests.browser import browser, page, page_errors  # noqa: F401

- `browser`: one chromium per test module (starting one takes about a second);
- `page`: a fresh page in its own context (no cookies or storage shared between tests); it
  records into `page_errors` every console error, uncaught page error and dialog (an
  `alert(1)` an injection would raise: dismissed and recorded);
- `page_errors`: that list of strings, for the test to assert empty (or to filter, where an
  error is expected: Chromium logs "Failed to load resource: ... 401" for a refused request).

A missing chromium or playwright is a test failure with the command that fixes it, not a skip:
these tests are part of the suite.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("LLMKIT_CHROMIUM", "/usr/bin/chromium")


def launch_chromium(playwright):
    """Debian's chromium, headless. --no-sandbox: containers (CI, root) lack the user namespaces
    chromium's sandbox needs."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: the browser tests need Debian's chromium "
                    "(sudo apt-get install -y chromium chromium-driver; .ci/run does it)", pytrace=False)
    return playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)


@pytest.fixture(scope="module")
def browser():
    """One headless chromium for the test module."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need playwright: pip install -e '.[test]' (the Python package only; "
                    "never `playwright install`)", pytrace=False)
    with sync_playwright() as p:
        b = launch_chromium(p)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page_errors() -> list[str]:
    """Console errors, page errors and dialogs of the test's page, as 'kind: text' strings."""
    return []


@pytest.fixture
def page(browser, page_errors):
    """A fresh page (own context) whose errors go into `page_errors`."""
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    context.set_default_timeout(15_000)
    pg = context.new_page()
    pg.on("console", lambda msg: page_errors.append(f"console.{msg.type}: {msg.text}") if msg.type == "error" else None)
    pg.on("pageerror", lambda exc: page_errors.append(f"pageerror: {exc}"))

    def on_dialog(dialog):
        page_errors.append(f"dialog: {dialog.type} {dialog.message}")
        dialog.dismiss()

    pg.on("dialog", on_dialog)
    try:
        yield pg
    finally:
        context.close()
