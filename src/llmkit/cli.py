"""The `llmkit` command line.

One table maps each subcommand to a plain typed function ("module:function"); jsonargparse
builds the options from the function's signature and docstring, so the CLI and the Python API
cannot drift apart. Modules are imported only when their command runs: `llmkit --help` stays
fast and a command never pays for torch it does not use.

Every function also accepts `--config FILE.yaml` (jsonargparse), and options may be written
with dashes or underscores (`--max-new-tokens` == `--max_new_tokens`).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Callable

from llmkit.errors import LLMKitError

# name -> "module:function" | {subname: "module:function"}. Help texts come from docstrings.
COMMANDS: dict[str, str | dict[str, str]] = {
    "models": "llmkit.model:list_models",
    "download": "llmkit.hub:download",
    "convert": {
        "from-hf": "llmkit.convert.hf:from_hf",
        "to-hf": "llmkit.convert.hf:to_hf",
    },
    "tokenizer": {"train": "llmkit.tokenizer:train_tokenizer"},
    "data": {
        "prepare": "llmkit.data.prepare:prepare",
        "curate": "llmkit.data.curate:curate",
    },
}


def _resolve(target: str) -> Callable:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _summary(target: str) -> str:
    try:
        doc = _resolve(target).__doc__ or ""
    except Exception:  # a broken optional module must not break `llmkit --help`
        return ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _usage(table: dict, prog: str) -> str:
    lines = [f"usage: {prog} COMMAND [options]   ({prog} COMMAND --help for one command)", "", "commands:"]
    for name, target in table.items():
        if isinstance(target, dict):
            lines.append(f"  {name} {{{','.join(target)}}}")
            for sub, t in target.items():
                lines.append(f"      {sub:<14} {_summary(t)}")
        else:
            lines.append(f"  {name:<18} {_summary(target)}")
    return "\n".join(lines)


def _normalize(args: list[str]) -> list[str]:
    """Accept `--max-new-tokens` as well as jsonargparse's `--max_new_tokens`."""
    out = []
    for a in args:
        if a.startswith("--") and len(a) > 2:
            key, eq, val = a[2:].partition("=")
            a = "--" + key.replace("-", "_") + eq + val
        out.append(a)
    return out


def run(argv: list[str] | None = None) -> object:
    """Parse `argv` (without the program name) and run the command. Raises on error."""
    from jsonargparse import CLI

    argv = list(sys.argv[1:] if argv is None else argv)
    table: dict = COMMANDS
    prog = "llmkit"
    while True:
        if not argv or argv[0] in ("-h", "--help"):
            print(_usage(table, prog))
            return None
        name = argv.pop(0)
        if name not in table:
            raise LLMKitError(f"unknown command '{name}'; choose from: {', '.join(table)}")
        prog += " " + name
        target = table[name]
        if isinstance(target, dict):
            table = target
            continue
        fn = _resolve(target)
        return CLI(fn, args=_normalize(argv), prog=prog, as_positional=True)


def main(argv: list[str] | None = None) -> None:
    debug = os.environ.get("LLMKIT_DEBUG", "") not in ("", "0")
    try:
        run(argv)
    except LLMKitError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
