"""The `llmkit` command line.

One table maps each subcommand to a plain typed function ("module:function"); jsonargparse
builds the options from the function's signature and docstring, so the CLI and the Python API
cannot drift apart. Modules are imported only when their command runs: `llmkit --help` stays
fast and a command never pays for torch it does not use.

Every function also accepts `--config FILE.yaml` (jsonargparse). Before jsonargparse reads the
words, a few conveniences rewrite them (`_normalize`, `_model_overrides`, `_train_shortcuts`,
`_lists`): dashes or underscores (`--max-new-tokens` == `--max_new_tokens`), `--model.n_layer 4`
into `model_overrides`, loop settings without their `train.` prefix, several words for a list
option. `parse(argv)` does all of it and returns the function and its arguments; `run` calls
it, and tests/test_configs.py validates every example YAML through the same `parse`.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
from typing import Callable

from llmkit.errors import LLMKitError

# name -> "module:function" | {subname: "module:function"}. Help texts come from docstrings.
COMMANDS: dict[str, str | dict[str, str]] = {
    "models": "llmkit.presets.listing:list_models",
    "plan": "llmkit.plan:plan",
    "download": "llmkit.hub:download",
    "convert": {
        "from-hf": "llmkit.checkpoint:from_hf",
        "to-hf": "llmkit.checkpoint:to_hf",
    },
    "quickstart": "llmkit.recipes.quickstart:quickstart",
    "run": "llmkit.cycle:run_cycle",
    "pretrain": "llmkit.recipes.pretrain:pretrain",
    "tokenizer": {"train": "llmkit.tokenizer:train_tokenizer"},
    "data": {
        "prepare": "llmkit.data.prepare:prepare",
        "curate": "llmkit.data.curate:curate",
        "quality-train": "llmkit.data.quality_model:quality_train",
    },
    "generate": "llmkit.generate.cli:generate_cli",
    "pipeline": "llmkit.pipelines.cli:pipeline_cli",
    "chat": "llmkit.chat:chat",
    "serve": "llmkit.serve:serve",
    "finetune": "llmkit.recipes.finetune:finetune",
    "merge-lora": "llmkit.checkpoint:merge_lora",
    "classify": {
        "train": "llmkit.recipes.classify:classify_train",
        "predict": "llmkit.recipes.classify:classify_predict",
    },
    "embed": {
        "train": "llmkit.recipes.embed:embed_train",
        "encode": "llmkit.recipes.embed:embed_encode",
    },
    "ner": {
        "train": "llmkit.recipes.tasks:ner_train",
        "predict": "llmkit.recipes.tasks:ner_predict",
    },
    "qa": {
        "train": "llmkit.recipes.tasks:qa_train",
        "predict": "llmkit.recipes.tasks:qa_predict",
    },
    "dpo": "llmkit.recipes.dpo:dpo",
    "evaluate": "llmkit.evaluate:evaluate",
    "report": "llmkit.report:report",
    # "" is the group's own command: `llmkit arena MODEL MODEL`, next to `llmkit arena ratings VOTES`.
    "arena": {
        "": "llmkit.arena.server:arena",
        "ratings": "llmkit.arena.ratings:ratings",
    },
}


def _resolve(target: str) -> Callable:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _summary(target: str) -> str:
    """The first line of the target function's docstring, read from its source with `ast`:
    `llmkit --help` imports none of the commands' modules (torch, transformers...), so it
    answers in a fraction of a second."""
    import ast
    from pathlib import Path

    module, _, name = target.partition(":")
    try:
        # The file, found without importing the packages above it (importlib's find_spec would).
        base = Path(__file__).parent.joinpath(*module.split(".")[1:])
        source = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        tree = ast.parse(source.read_text(encoding="utf-8"))
        node = next(n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name)
        doc = ast.get_docstring(node) or ""
    except Exception:  # a moved or broken module must not break `llmkit --help`: ask it the slow way
        try:
            doc = _resolve(target).__doc__ or ""
        except Exception:
            return ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _usage(table: dict, prog: str) -> str:
    lines = [f"usage: {prog} COMMAND [options]   ({prog} COMMAND --help for one command)", "", "commands:"]
    for name, target in table.items():
        if isinstance(target, dict):
            lines.append(f"  {name} {{{','.join(sub or '...' for sub in target)}}}")
            for sub, t in target.items():
                lines.append(f"      {sub or '...':<14} {_summary(t)}")
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


def _model_overrides(fn: Callable, args: list[str]) -> list[str]:
    """`--model llama-3.2-1b --model.n_layer 4`: MODEL is a name, the dotted options override
    its config fields. They are gathered into the function's `model_overrides` dict."""
    import yaml

    if "model_overrides" not in inspect.signature(fn).parameters:
        return args
    rest, overrides, i = [], {}, 0
    while i < len(args):
        a = args[i]
        if a.startswith("--model."):
            key, eq, val = a[len("--model."):].partition("=")
            if not eq:
                if i + 1 >= len(args):
                    raise LLMKitError(f"{a} needs a value")
                i += 1
                val = args[i]
            overrides[key] = yaml.safe_load(val)
        else:
            rest.append(a)
        i += 1
    if overrides:
        import json

        rest += ["--model_overrides", json.dumps(overrides)]
    return rest


def _train_shortcuts(fn: Callable, args: list[str]) -> list[str]:
    """Training loop settings without their group prefix: `--resume auto`, `--max_steps 100`,
    `--lr 1e-4` mean `--train.resume auto`, ... for commands that train (a `train` group),
    unless the command has a parameter of that name itself."""
    fields = _shortcut_fields(fn)
    if not fields:
        return args
    out = []
    for a in args:
        if a.startswith("--") and a[2:].split("=", 1)[0] in fields:
            a = "--train." + a[2:]
        out.append(a)
    return out


def _shortcut_fields(fn: Callable) -> set[str]:
    """The loop settings `fn` takes without their `train.` prefix (see `_train_shortcuts`)."""
    import dataclasses
    import typing

    params = inspect.signature(fn).parameters
    group = typing.get_type_hints(fn).get("train") if "train" in params else None
    if not dataclasses.is_dataclass(group):
        return set()
    return {f.name for f in dataclasses.fields(group)} - set(params)


def _is_list(annotation) -> bool:
    import typing

    if isinstance(annotation, str):  # postponed annotations
        return annotation.replace("Optional[", "").startswith(("list[", "List[", "tuple[", "Sequence[")) or "list[" in annotation.split("|")[0]
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        return True
    return any(_is_list(a) for a in typing.get_args(annotation) if a is not type(None)) if origin else False


def _lists(fn: Callable, args: list[str]) -> list[str]:
    """Let list-typed parameters take several words, as argparse's nargs="+" does:
    `prepare a.txt b.txt --tokenizer t` and `--stop a b` become the JSON lists jsonargparse reads."""
    import dataclasses
    import json
    import typing

    params = inspect.signature(fn).parameters
    lists = {n for n, p in params.items() if _is_list(p.annotation)}
    # Fields of a dataclass group (`--lora.targets q v`) take several words too.
    hints = typing.get_type_hints(fn)
    for n in params:
        if dataclasses.is_dataclass(hints.get(n)):
            sub = typing.get_type_hints(hints[n])
            lists |= {f"{n}.{f.name}" for f in dataclasses.fields(hints[n]) if _is_list(sub.get(f.name))}
    bools = {n for n, p in params.items() if p.annotation in (bool, "bool")}
    positional_names = [n for n, p in params.items() if p.default is inspect.Parameter.empty]
    opts, pos, i = [], [], 0
    while i < len(args):
        a = args[i]
        if a.startswith("--") and len(a) > 2:
            name = a[2:].split("=", 1)[0]
            if "=" in a:
                opts.append(a)
            elif name in lists:
                vals = []
                while i + 1 < len(args) and not args[i + 1].startswith("--"):
                    i += 1
                    vals.append(args[i])
                opts += [a, vals[0] if len(vals) == 1 and vals[0].startswith("[") else json.dumps(vals)]
            elif name in bools and (i + 1 >= len(args) or args[i + 1].lower() not in ("true", "false")):
                opts += [a, "true"]
            elif i + 1 < len(args) and name not in ("help", "print_config"):
                opts += [a, args[i + 1]]
                i += 1
            else:
                opts.append(a)
        elif a in ("-h",):
            opts.append(a)
        else:
            pos.append(a)
        i += 1
    # A required parameter may also be given as an option (`--tokenizer DIR`): jsonargparse
    # only takes required parameters positionally, so move it into its slot.
    named: dict[str, str] = {}
    kept: list[str] = []
    j = 0
    while j < len(opts):
        name = opts[j][2:].split("=", 1)[0] if opts[j].startswith("--") else None
        if name in positional_names:
            if "=" in opts[j]:
                named[name] = opts[j].split("=", 1)[1]
                j += 1
            else:
                named[name] = opts[j + 1] if j + 1 < len(opts) else ""
                j += 2
            continue
        kept.append(opts[j])
        j += 1
    opts = kept
    # Fill the remaining positional slots in order; a list slot takes every word left over.
    slots = [n for n in positional_names if n not in named]
    extra = len(pos) - len(slots)
    values: dict[str, str] = dict(named)
    k = 0
    for n in slots:
        if n in lists:
            take = max(extra + 1, 0)
            items, k = pos[k:k + take], k + take
            values[n] = items[0] if len(items) == 1 and items[0].startswith("[") else json.dumps(items)
        elif k < len(pos):
            values[n], k = pos[k], k + 1
    for n in named:
        if n in lists and not named[n].startswith("["):
            values[n] = json.dumps([named[n]])
    ordered = [values[n] for n in positional_names if n in values]
    # Words left over go to the first optional parameter when it is a list and not given as an
    # option: `classify predict MODEL "text one" "text two"`, `evaluate MODEL hellaswag arc_easy`.
    optional = [n for n, p in params.items() if p.default is not inspect.Parameter.empty]
    rest = pos[k:]
    if rest and optional and optional[0] in lists and not any(
            o.startswith("--") and o[2:].split("=", 1)[0] == optional[0] for o in opts):
        opts += ["--" + optional[0], json.dumps(rest)]
        rest = []
    return ordered + rest + opts


def _command(words: list[str]) -> tuple[Callable, str, list[str]]:
    """(function, prog, remaining argv) of the command the first words name."""
    table: dict = COMMANDS
    prog = "llmkit"
    while True:
        if table is COMMANDS and words and words[0] in ("--version", "-V"):
            from llmkit import __version__

            raise _Usage(f"llmkit {__version__}")
        if table is not COMMANDS and "" in table and words and words[0] not in table:
            # The group's own command, e.g. `llmkit arena A B` (its --help lists the others).
            return _resolve(table[""]), prog, words
        if not words or words[0] in ("-h", "--help"):
            raise _Usage(_usage(table, prog))
        name, words = words[0], words[1:]
        if name not in table:
            kind = "command" if table is COMMANDS else f"subcommand of '{prog.removeprefix('llmkit ')}'"
            close = difflib.get_close_matches(name, list(table), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise LLMKitError(f"unknown {kind} '{name}'{hint}; choose from: {', '.join(table)}")
        prog += " " + name
        target = table[name]
        if isinstance(target, dict):
            table = target
            continue
        return _resolve(target), prog, words


class _Usage(Exception):
    """`llmkit` or `llmkit GROUP` without a command: print the command list (or the version)."""


def build_parser(fn: Callable, prog: str):
    """The jsonargparse parser of one command: options from `fn`'s signature and docstring,
    required parameters also positional, and `--config FILE.yaml`."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog=prog, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="Path to a YAML config of this command's options "
                        "(options given after it override it).")
    parser.add_function_arguments(fn, as_group=False, as_positional=True, fail_untyped=True, sub_configs=True)
    doc = inspect.cleandoc(fn.__doc__ or "")
    parser.description = doc.split("\nArgs:")[0].strip() or None  # the options carry the Args text
    return parser


def parse(argv: list[str]) -> tuple[Callable, dict]:
    """(function, keyword arguments) for `llmkit ARGV...`, without running it: the argv
    conveniences (dashes, `--model.*`, loop settings without `train.`, several words for a list
    option), then the function's own parser, then instantiation (dataclass groups built). What
    `run` executes and what tests/test_configs.py validates example configs with."""
    fn, prog, rest = _command(list(argv))
    args = _lists(fn, _train_shortcuts(fn, _model_overrides(fn, _normalize(rest))))
    parser = build_parser(fn, prog)
    try:
        ns = parser.parse_args(args)
    except Exception as e:  # jsonargparse's ArgumentError: one line, as every input error
        if isinstance(e, SystemExit):
            raise
        # jsonargparse puts the key on the first line and what is wrong on the next ones.
        lines = [ln.strip(" -") for ln in str(e).strip().splitlines() if ln.strip(" -")]
        message = " ".join(lines) if lines and lines[0].rstrip().endswith(":") else (lines or [""])[0]
        raise LLMKitError(f"{prog}: {message}{_did_you_mean(message, parser, fn)}") from None
    kwargs = parser.instantiate(ns)
    kwargs = {k: v for k, v in vars(kwargs).items() if k != "config"} if not isinstance(kwargs, dict) else kwargs
    kwargs.pop("config", None)
    _check_train(kwargs)
    return fn, kwargs


def _check_train(kwargs: dict) -> None:
    """Validate a training command's loop settings before the command reads its data or loads
    a model: `--max_steps -5` is a one-line error, not an untrained model in OUT/final. (Only
    where a TrainConfig was built: its module is imported by then, and others pay nothing.)"""
    loop = sys.modules.get("llmkit.training.loop")
    if loop is None:
        return
    for value in kwargs.values():
        if isinstance(value, loop.TrainConfig):
            value.validate(complete=False)  # lr and the budget may be the recipe's to choose


def _did_you_mean(message: str, parser, fn: Callable) -> str:
    """` (did you mean --max_steps?)` for argparse's `unrecognized arguments: --max_stpes 5`:
    the closest option of the command (its own, its groups' `--train.*`, and the loop settings
    without their prefix), as git and pip suggest; "" when nothing is close."""
    head, sep, tail = message.partition("unrecognized arguments:")
    if not sep:
        return ""
    # Names without their "--": the shared prefix would make `--foo` look like `--out`.
    names = {s[2:] for a in parser._actions for s in a.option_strings if s.startswith("--")}
    names = (names | _shortcut_fields(fn)) - {"help", "print_config", "config"}
    unknown = [w.split("=", 1)[0] for w in tail.split() if w.startswith("--")]  # the rest are values
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key[2:], sorted(names), n=1)
        if close:
            hints.append((key, "--" + close[0]))
    if not hints:
        return ""
    if len(unknown) == 1:
        return f" (did you mean {hints[0][1]}?)"
    return " (did you mean " + ", ".join(f"{c} for {k}" for k, c in hints) + "?)"


def run(argv: list[str] | None = None) -> object:
    """Parse `argv` (without the program name) and run the command. Raises on error."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        fn, kwargs = parse(argv)
    except _Usage as u:
        print(u)
        return None
    return fn(**kwargs)


def main(argv: list[str] | None = None) -> None:
    debug = os.environ.get("LLMKIT_DEBUG", "") not in ("", "0")
    try:
        run(argv)
        sys.stdout.flush()  # a closed pipe shows here, inside the try, not at interpreter exit
    except BrokenPipeError:
        # The reader left (`llmkit models | head -1`): stop quietly. Python's docs (signal module,
        # "Note on SIGPIPE"): point stdout at devnull, so the flush at exit cannot raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)  # what Python itself exits with on EPIPE
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
