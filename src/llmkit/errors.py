"""User-facing errors.

Anything a user can cause (a wrong path, a corrupt file, a bad setting) raises `LLMKitError`
with one line that names the file and the problem. The CLI prints that line and exits non-zero
without a traceback; anything else is a bug and keeps its traceback.
"""


class LLMKitError(Exception):
    """An error caused by input: printed as one line by the CLI, exit code 1."""


def read_json(path) -> object:
    """The JSON value of the file at `path`; a missing, unreadable or malformed file is an
    LLMKitError naming the file (for the JSON files users hand to llmkit: configs, manifests,
    results, tokenizer side files)."""
    import json
    from pathlib import Path

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LLMKitError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LLMKitError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise LLMKitError(f"{path}: cannot read ({e.strerror or e})") from None
