"""The web pages' files (package llmkit/web: plain HTML, CSS and JS, no build step, no CDN).

    GET /                the chat page (chat.html)
    GET /static/{name}   a file of llmkit/web (script, style sheet, image), by bare file name

These routes need no API key: the files hold no secret. The page asks for the key and sends it
as `Authorization: Bearer` on its API calls, which check it as any client's.

Pages go out with a strict Content-Security-Policy: scripts only from this origin's files (no
inline script, no eval), no plugins, no framing, connections only back to this server. Model
output is put into the page as text nodes (markdown.js builds elements, never HTML strings), and
the policy is the second wall should a bug ever let markup through: an injected `<script>` or
`onerror=` handler does not run. (OWASP's XSS prevention cheat sheet: output encoding first,
CSP as defence in depth.)

`static_response` and `page_response` are what another app (the arena) reuses for its own pages.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse, Response

__all__ = ["WEB_DIR", "CONTENT_SECURITY_POLICY", "HEADERS", "page_response", "static_response", "add_web_routes"]

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

# What /static serves, by extension: the pages' own types. An SVG or HTML file opened directly is
# a document that could run script, so every file goes out with the pages' CSP (no inline script
# runs under it).
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
}
# A bare file name: letters, digits, '_', '-' and inner dots. No '/', '\\', '..', NUL or leading
# dot, so a name can never leave WEB_DIR (checked again on the resolved path below).
_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' blob: data:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
    # Trusted Types (W3C): assigning a plain string to innerHTML, outerHTML, document.write...
    # throws on this page, so an HTML sink slipped into a script one day fails loudly instead of
    # parsing model output as markup. The pages build their DOM with createElement/textContent.
    "require-trusted-types-for 'script'",
])
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # frame-ancestors' older spelling, for browsers without CSP 2
    # Fetched again on every load (a few KiB: FileResponse sends ETag and Last-Modified but does
    # not answer If-None-Match with 304), so a browser never runs an old script against an
    # upgraded server.
    "Cache-Control": "no-cache",
}


def _not_found(name: str) -> JSONResponse:
    """OpenAI's error JSON, as every other route of the servers answers."""
    shown = name if len(name) <= 100 else name[:100] + "..."
    return JSONResponse({"error": {"message": f"no such file: {shown!r}", "type": "invalid_request_error",
                                   "param": None, "code": "not_found"}}, status_code=404,
                        headers={"X-Content-Type-Options": "nosniff"})


def _web_file(name: str, types: dict[str, str]) -> Optional[tuple[Path, str]]:
    """(path, content type) of llmkit/web's file `name`, or None."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return None
    suffix = Path(name).suffix.lower()
    path = WEB_DIR / name
    if suffix not in types or name == "__init__.py" or path.resolve().parent != WEB_DIR or not path.is_file():
        return None
    return path, types[suffix]


def static_response(name: str) -> Response:
    """A file of llmkit/web (page, script, style sheet or image) with the pages' security
    headers; a 404 (OpenAI's error JSON, code "not_found") for any other name.

    Args:
        name: a bare file name such as "chat.js": only .html, .css, .js, .png, .svg and .ico
            files of llmkit/web, no directories, no hidden files.
    """
    found = _web_file(name, CONTENT_TYPES)
    if found is None:
        return _not_found(name)
    return FileResponse(found[0], media_type=found[1], headers=dict(HEADERS))


def page_response(name: str) -> Response:
    """An HTML page of llmkit/web with the Content-Security-Policy and nosniff headers (a 404
    when there is no such page).

    Args:
        name: the page's file name, such as "chat.html".
    """
    found = _web_file(name, {".html": CONTENT_TYPES[".html"]})
    if found is None:
        return _not_found(name)
    return FileResponse(found[0], media_type=found[1], headers=dict(HEADERS))


async def _chat_page():
    return page_response("chat.html")


async def _static(name: str):
    return static_response(name)


def add_web_routes(app: FastAPI) -> None:
    """Add the chat page (GET /) and its files (GET /static/{name}) to `app`, without the API key.

    Args:
        app: the FastAPI app of `llmkit serve` (or any app whose /v1/chat/completions the page
            should talk to).
    """
    app.add_api_route("/", _chat_page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/static/{name}", _static, methods=["GET"], include_in_schema=False)
