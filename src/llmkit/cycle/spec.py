"""A cycle file, read and checked: every stage's command, references and options, validated by
the command's own parser before anything runs.

    out: out/cycle                   # the cycle's folder (default: out/<file name>)
    stages:                          # run in this order
      tokenizer: {files: [my_texts/], vocab_size: 4096}
      prepare: {sources: [my_texts/], tokenizer: "${tokenizer}", seq_len: 256}
      pretrain: {model: micro-llama, data: "${prepare}", max_steps: 400}
      evaluate: {model: "${pretrain.model}", perplexity: [held_out.txt]}

A stage is `name: {options}`. Its command is `command:` when given (`command: finetune`,
`command: data prepare`), else the stage's name, or the part of it before the first "-"
(`evaluate-sft` runs `evaluate`); curate, tokenizer, prepare and classify stand for `data
curate`, `tokenizer train`, `data prepare` and `classify train`; `corpus` is the cycle's
built-in offline data set (cycle/builtin.py). The options are the command's, spelt as in a
`--config` file or on its command line (`max_steps: 4` for `train: {max_steps: 4}`,
`model.n_layer: 2`), plus `config: FILE.yaml`: a config file of that command, whose options the
stage's own replace.
Every stage's `out` is OUT/<stage> unless it sets one.

References, inside any string option: `${stage}` is that stage's folder, `${stage.model}` the
model it wrote (OUT/<stage>/final for the training commands); `$${` is a literal `${`. A stage
may refer only to stages above it, so the order of the file is an order that works.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from llmkit.errors import LLMKitError

# Stage name -> command words, for stages that do not say `command:`.
STAGE_COMMANDS = {
    "corpus": ["corpus"], "curate": ["data", "curate"], "tokenizer": ["tokenizer", "train"],
    "prepare": ["data", "prepare"], "pretrain": ["pretrain"], "finetune": ["finetune"],
    "classify": ["classify", "train"], "dpo": ["dpo"], "evaluate": ["evaluate"], "serve": ["serve"],
}
# The cycle's own commands (not `llmkit` subcommands): validated with the same parser builder.
OWN_COMMANDS = {"corpus": "llmkit.cycle.builtin:builtin_corpus"}
# Commands that cannot be a stage: interactive, or this command itself.
NOT_STAGES = {"run": "a cycle cannot run a cycle", "chat": "it is interactive",
              "arena": "it serves until stopped (only serve may, as the last stage)"}
# Where a command writes its model, relative to its out: training recipes publish OUT/final;
# these write the model to OUT itself.
MODEL_IN_OUT = {("merge-lora",), ("convert", "from-hf"), ("convert", "to-hf"), ("download",)}
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}")
TOP_KEYS = ("out", "stages")
RESERVED = {"report": "report card"}  # folders under OUT that the cycle itself writes


@dataclass
class Stage:
    name: str
    words: list[str]                      # the command, e.g. ["data", "prepare"]
    fn: Callable
    settings: dict                        # the file's options, references resolved
    kwargs: dict = field(default_factory=dict)  # the function's arguments, as its parser built them
    out: Optional[Path] = None            # None: the command writes no folder (serve)
    deps: list[str] = field(default_factory=list)  # stages it refers to, in file order
    inputs: list[str] = field(default_factory=list)  # literal paths it names (not other stages')

    @property
    def command(self) -> str:
        return " ".join(self.words)

    @property
    def label(self) -> str:
        return f"stage '{self.name}' ({self.command})"

    @property
    def trains(self) -> bool:
        """A training recipe (a `train` loop group): resumes from its last checkpoint when its
        loop's `resume` is auto (the default)."""
        return _train_config(self.kwargs) is not None

    @property
    def resumes(self) -> bool:
        tc = _train_config(self.kwargs)
        return tc is not None and tc.resume == "auto"

    @property
    def model(self) -> Optional[Path]:
        if self.out is None:
            return None
        if tuple(self.words) in MODEL_IN_OUT:
            return self.out
        return self.out / "final" if self.trains else None

    @property
    def serves(self) -> bool:
        return self.words == ["serve"]


@dataclass
class Cycle:
    path: Path
    out: Path
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


def _train_config(kwargs: dict):
    import sys

    loop = sys.modules.get("llmkit.training.loop")  # imported by the parser of every training command
    if loop is None:
        return None
    return next((v for v in kwargs.values() if isinstance(v, loop.TrainConfig)), None)


def load_cycle(path: str | Path, out: Optional[str] = None, overrides: Optional[list[str]] = None) -> Cycle:
    """Read and validate a cycle file: every error (a bad key, an unknown reference, an option the
    command does not take) is one line naming the file and the stage, raised before any stage runs."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LLMKitError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LLMKitError(f"{path}: cannot read ({e})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise LLMKitError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(data, dict):
        raise LLMKitError(f"{path}: a cycle is a mapping with `out:` and `stages:`")
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise LLMKitError(f"{path}: unknown key '{unknown[0]}'{_close(unknown[0], TOP_KEYS)}; a cycle has: "
                          f"{', '.join(TOP_KEYS)}")
    stages = data.get("stages")
    if not isinstance(stages, dict) or not stages:
        raise LLMKitError(f"{path}: `stages:` must be a mapping of stage name -> options, in run order")
    root = Path(out if out is not None else data.get("out") or Path("out") / path.stem)
    raw = {}
    for name, options in stages.items():
        if not isinstance(name, str) or not NAME.match(name):
            raise LLMKitError(f"{path}: stage name {name!r}: use letters, digits, '-' and '_' (starting with a letter)")
        if name in RESERVED:
            raise LLMKitError(f"{path}: stage name '{name}': OUT/{name} is the cycle's {RESERVED[name]}; "
                              "name the stage otherwise")
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise LLMKitError(f"{path}: stage '{name}': its options must be a mapping, got {type(options).__name__}")
        raw[name] = dict(options)
    _apply_overrides(path, raw, overrides or [])

    cycle = Cycle(path, root, [])
    names = list(raw)
    for i, (name, options) in enumerate(raw.items()):
        words, fn = _command_of(path, name, options.pop("command", None))
        stage = Stage(name, words, fn, {})
        where = f"{path}: {stage.label}"
        if stage.serves and i != len(names) - 1:
            raise LLMKitError(f"{where}: serve runs until it is stopped, so it must be the last stage")
        earlier = {s.name: s for s in cycle.stages}
        settings = {k: _resolve(v, where, name, earlier, names, stage.deps) for k, v in options.items()}
        takes_out = "out" in inspect.signature(fn).parameters
        if takes_out:
            stage.out = Path(settings.get("out") or root / name)
            settings["out"] = str(stage.out)
        elif "out" in settings:
            raise LLMKitError(f"{where}: `{stage.command}` writes no output folder; it takes no out")
        stage.settings = settings
        stage.kwargs = _validate(where, stage)
        cycle.stages.append(stage)
    _check_folders(cycle)
    for stage in cycle.stages:
        stage.inputs = _inputs(cycle, stage, raw[stage.name])
    return cycle


def _close(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _apply_overrides(path: Path, raw: dict, overrides: list[str]) -> None:
    """`--override STAGE.KEY=VALUE` (VALUE read as YAML): sets KEY of STAGE as if the file said
    so. KEY may be dotted (`pretrain.train.max_steps=8`): the command's parser reads dotted options."""
    import yaml

    for item in overrides:
        target, eq, value = item.partition("=")
        stage, dot, key = target.partition(".")
        if not eq or not dot or not key:
            raise LLMKitError(f"--override {item}: write STAGE.KEY=VALUE, e.g. pretrain.max_steps=100")
        if stage not in raw:
            raise LLMKitError(f"--override {item}: {path} has no stage '{stage}'{_close(stage, raw)}; "
                              f"stages: {', '.join(raw)}")
        try:
            parsed = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            parsed = value
        if key == "command":
            raise LLMKitError(f"--override {item}: a stage's command is set in the file")
        raw[stage][key] = parsed


def _command_of(path: Path, name: str, command) -> tuple[list[str], Callable]:
    from llmkit import cli

    if command is None:
        words = STAGE_COMMANDS.get(name) or STAGE_COMMANDS.get(re.split(r"[-_]", name, maxsplit=1)[0])
        if words is None:
            raise LLMKitError(f"{path}: stage '{name}': say which command it runs (command: pretrain, "
                              f"command: data prepare, ...): '{name}' is not one of {', '.join(STAGE_COMMANDS)}")
    elif isinstance(command, str) and command.split():
        words = command.split()
    else:
        raise LLMKitError(f"{path}: stage '{name}': command must be a command's name, e.g. `command: finetune`")
    if words[0] in NOT_STAGES:
        raise LLMKitError(f"{path}: stage '{name}': `{words[0]}` cannot be a stage ({NOT_STAGES[words[0]]})")
    if words == ["corpus"]:
        return words, cli._resolve(OWN_COMMANDS["corpus"])
    table: Any = cli.COMMANDS
    for k, w in enumerate(words):
        if not isinstance(table, dict) or w not in table:
            known = list(table) if isinstance(table, dict) else []
            what = " ".join(words[:k]) or "llmkit"
            raise LLMKitError(f"{path}: stage '{name}': unknown command '{' '.join(words)}'{_close(w, known)}"
                              + (f"; `{what}` has: {', '.join(c for c in known if c)}" if known else ""))
        table = table[w]
    if isinstance(table, dict):
        subs = [c for c in table if c]
        raise LLMKitError(f"{path}: stage '{name}': `{' '.join(words)}` is a group; name one of its commands: "
                          f"{', '.join(' '.join(words + [c]) for c in subs)}")
    return words, cli._resolve(table)


def _resolve(value, where: str, name: str, earlier: dict, names: list, deps: list):
    """`value` with every ${...} replaced (in strings, lists and mappings); records the stages
    it refers to in `deps`."""
    if isinstance(value, dict):
        return {k: _resolve(v, where, name, earlier, names, deps) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, where, name, earlier, names, deps) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$${":
            return "${"
        ref = m.group(1)
        target, _, attr = ref.partition(".")
        if target == name:
            raise LLMKitError(f"{where}: ${{{ref}}} refers to the stage itself")
        if target not in earlier:
            if target in names:
                raise LLMKitError(f"{where}: ${{{ref}}} refers to stage '{target}', which comes after it: "
                                  "a stage can use only the stages above it (reorder the file)")
            raise LLMKitError(f"{where}: unknown reference ${{{ref}}}: no stage '{target}'"
                              f"{_close(target, earlier)} above it")
        dep = earlier[target]
        if dep.out is None:
            raise LLMKitError(f"{where}: ${{{ref}}}: stage '{target}' ({dep.command}) writes no folder to refer to")
        if attr not in ("", "model"):
            raise LLMKitError(f"{where}: ${{{ref}}}: write ${{{target}}} (its folder) or ${{{target}.model}} (its model)")
        if attr == "model" and dep.model is None:
            raise LLMKitError(f"{where}: ${{{ref}}}: stage '{target}' ({dep.command}) writes no model; "
                              f"${{{target}}} is its folder")
        if target not in deps:
            deps.append(target)
        return str(dep.model if attr == "model" else dep.out)

    return REFERENCE.sub(sub, value)


def _with_config(where: str, settings: dict) -> dict:
    """The stage's options over those of its `config:` file (a config of that command, as
    `llmkit COMMAND --config FILE` reads it). Merged here rather than passed as --config: on the
    command line a required argument (MODEL, DATA) in the config file wins over the same one
    given as an option, and a stage's `model: ${sft.model}` must win."""
    if "config" not in settings:
        return settings
    import yaml

    path = settings["config"]
    try:
        data = yaml.safe_load(Path(str(path)).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LLMKitError(f"{where}: config {path}: no such file") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise LLMKitError(f"{where}: config {path}: cannot read it as YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise LLMKitError(f"{where}: config {path}: a command's config is a mapping of option: value")
    own = {k.replace("-", "_"): v for k, v in settings.items() if k != "config"}
    merged = {k.replace("-", "_"): v for k, v in data.items()}
    for k, v in own.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):  # a group: its fields one by one
            merged[k] = {**merged[k], **v}
        else:
            merged[k] = v
    return merged


def _argv(settings: dict) -> list[str]:
    """The stage's options as the command line the CLI would get: `--key value`, lists and
    mappings as JSON (what the CLI's own list and dict handling reads)."""
    def word(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if v is None:
            return "null"
        if isinstance(v, (list, dict)):
            return json.dumps(v)
        return str(v)

    argv = []
    for k, v in settings.items():
        w = word(v)
        # `--key=value` when the value could pass for an option (a prefix "--x"); else two words, so
        # that a single path given for a list option becomes a one-item list, as on the CLI.
        argv += [f"--{k}={w}"] if w.startswith("-") else [f"--{k}", w]
    return argv


def _validate(where: str, stage: Stage) -> dict:
    """The function's arguments from the stage's options, through the command's own parser
    (`llmkit.cli.parse`; for the cycle's own commands, `llmkit.cli.build_parser`), then the checks
    the command makes before it reads anything (the training loop's settings, a preset's fields)."""
    from llmkit import cli

    argv = _argv(_with_config(where, stage.settings))
    try:
        if stage.words[0] in OWN_COMMANDS:
            parser = cli.build_parser(stage.fn, f"llmkit run: {stage.name}")
            try:
                ns = parser.parse_args(argv)
            except Exception as e:
                if isinstance(e, SystemExit):
                    raise
                raise LLMKitError(str(e).strip().splitlines()[0]) from None
            kwargs = {k: v for k, v in vars(parser.instantiate(ns)).items() if k != "config"}
        else:
            fn, kwargs = cli.parse([*stage.words, *argv])
    except LLMKitError as e:
        message = str(e)
        prefix = f"llmkit {stage.command}: "
        raise LLMKitError(f"{where}: {message.removeprefix(prefix)}") from None
    model, overrides = kwargs.get("model"), kwargs.get("model_overrides")
    if isinstance(model, str):
        from llmkit.recipes.scaffold import is_new_model, model_config

        try:
            if is_new_model(model) and not model.endswith(".json"):
                model_config(model, overrides)  # an unknown field or a bad shape, now
            elif overrides and not model.endswith(".json"):
                raise LLMKitError(f"model_overrides apply to presets, not to the existing model '{model}'")
        except LLMKitError as e:
            raise LLMKitError(f"{where}: {e}") from None
    return kwargs


def _check_folders(cycle: Cycle) -> None:
    """Two stages must not share a folder, nor one sit inside another's (replacing a stage's
    folder when it reruns would take the other's outputs with it)."""
    seen: list[tuple[Path, Stage]] = []
    for stage in cycle.stages:
        if stage.out is None:
            continue
        mine = stage.out.resolve()
        for other_path, other in seen:
            if mine == other_path or mine.is_relative_to(other_path) or other_path.is_relative_to(mine):
                raise LLMKitError(f"{cycle.path}: {stage.label}: its folder {stage.out} overlaps stage "
                                  f"'{other.name}''s {other.out}; give each stage its own out")
        seen.append((mine, stage))


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _inputs(cycle: Cycle, stage: Stage, raw: dict) -> list[str]:
    """The existing files and folders the stage's options name literally (not through a
    reference): what its cache key fingerprints. A literal path into another stage's folder is
    an error: the cycle would not know that the stage depends on it (nor run them in order)."""
    folders = [(s.out.resolve(), s) for s in cycle.stages if s.out is not None]
    found = []
    for key, value in raw.items():
        if key in ("out", "command"):
            continue
        for s in _strings(value):
            if "${" in s or not s or len(s) > 4096:
                continue
            p = Path(s).expanduser()
            try:
                if not p.exists():
                    continue
                rp = p.resolve()
            except OSError:
                continue
            for folder, other in folders:
                if rp == folder or rp.is_relative_to(folder):
                    raise LLMKitError(f"{cycle.path}: {stage.label}: '{s}' is inside stage '{other.name}''s folder: "
                                      f"write ${{{other.name}}} instead, so that the cycle runs them in order")
            if s not in found:
                found.append(s)
    return found


def canonical(stage: Stage, cycle: Cycle) -> dict:
    """The stage's settings as its cache key sees them: every argument of its function after
    parsing (defaults included, groups as mappings), its own out left out, and the folders of
    the stages it refers to written as ${stage}: copying or moving the cycle's folder keeps the
    cache, and what those stages made is in the key through their keys."""
    def plain(v):
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        return str(v)

    settings = {k: plain(v) for k, v in stage.kwargs.items() if k != "out"}
    text = json.dumps(settings, sort_keys=True)
    # Longest folders first: OUT/pretrain must not be replaced inside OUT/pretrain-long.
    for dep in sorted((cycle.stage(d) for d in stage.deps), key=lambda s: -len(str(s.out))):
        text = text.replace(json.dumps(str(dep.out))[1:-1], "${" + dep.name + "}")
    return json.loads(text)
