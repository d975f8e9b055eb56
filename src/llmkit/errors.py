"""User-facing errors.

Anything a user can cause (a wrong path, a corrupt file, a bad setting) raises `LLMKitError`
with one line that names the file and the problem. The CLI prints that line and exits non-zero
without a traceback; anything else is a bug and keeps its traceback.
"""


class LLMKitError(Exception):
    """An error caused by input: printed as one line by the CLI, exit code 1."""
