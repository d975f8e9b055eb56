"""The static files of llmkit's web pages (HTML, CSS, JavaScript), served by `llmkit.serve.web`.

A package so that `importlib.resources.files("llmkit.web")` finds them in any install."""
