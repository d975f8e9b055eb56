"""Every example YAML config under configs/<command>/ is valid for that llmkit command.

Configs are found, not listed: any `configs/<command>/**/*.yaml` whose directory is an llmkit
CLI command (see COMMANDS in cli.py) is parsed by the very parser `llmkit <command> --config
FILE` uses, so an unknown key, a misspelt option or a wrong type fails here before it fails a
user. Commands with subcommands (`classify train|predict`) take their configs from
`configs/<command>/<subcommand>/` or from files named `<subcommand>-*.yaml`. Directories that
are not commands (configs/eval holds lm-eval task files) are left alone.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from jsonargparse import Namespace

from llmkit.cli import COMMANDS, main, parse
from llmkit.errors import LLMKitError
from tests.helpers import make_token_shards

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRETRAIN = CONFIGS / "pretrain"


def command_of(path: Path, root: Path = CONFIGS) -> list[str]:
    """The command words a config file belongs to, from where it lies under `root`."""
    top = path.relative_to(root).parts[0]
    target = COMMANDS[top]
    if not isinstance(target, dict):
        return [top]
    rel = path.relative_to(root / top)
    if len(rel.parts) > 1 and rel.parts[0] in target:
        return [top, rel.parts[0]]
    for sub in target:
        if rel.name.startswith((f"{sub}-", f"{sub}_", f"{sub}.")):
            return [top, sub]
    raise AssertionError(f"{path}: put configs of `llmkit {top}` under configs/{top}/<subcommand>/ "
                         f"or name them <subcommand>-*.yaml (subcommands: {', '.join(target)})")


def discover(root: Path = CONFIGS) -> list[Path]:
    if not root.is_dir():
        return []
    found = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name in COMMANDS):
        found += sorted(p for p in d.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    return found


def _objects(value):
    """Every value in a (nested) parsed namespace, dataclass instances included."""
    if isinstance(value, Namespace):
        value = vars(value)
    if isinstance(value, dict):
        for v in value.values():
            yield v
            yield from _objects(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield v
            yield from _objects(v)


def validate_config(path: Path, command: list[str]) -> dict:
    """Parse `path` exactly as `llmkit COMMAND --config PATH` does (`cli.parse`: the same argv
    handling and parser, up to the function call), then run the checks the command itself runs
    before doing any work: dataclass `validate()` (e.g. the training budget) and, where the
    command builds a model from a preset, the model_overrides."""
    text = yaml.safe_load(path.read_text())
    assert isinstance(text, dict) and text, f"{path}: a config is a non-empty mapping of option: value"
    fn, init = parse([*command, "--config", str(path)])
    assert fn is command_function(command)
    for obj in _objects(init):
        if dataclasses.is_dataclass(obj) and hasattr(obj, "validate"):
            obj.validate()
    overrides = init.get("model_overrides")
    model = init.get("model")
    if isinstance(model, str):
        from llmkit.recipes.scaffold import is_new_model, model_config

        if is_new_model(model) and not model.endswith(".json"):
            model_config(model, overrides)  # unknown fields / invalid shapes raise LLMKitError
        elif overrides:
            raise LLMKitError(f"{path}: model_overrides apply to presets, not to the existing model '{model}'")
    return Namespace(init)


def command_function(command: list[str]):
    target = COMMANDS
    for w in command:
        target = target[w]
    module, _, name = target.partition(":")
    import importlib

    return getattr(importlib.import_module(module), name)


CONFIG_FILES = discover()


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[str(p.relative_to(CONFIGS)) for p in CONFIG_FILES])
def test_config_is_valid_for_its_command(path):
    parsed = validate_config(path, command_of(path))
    # Every option the file sets reaches the function with the file's value (none is dropped or
    # overridden by a default).
    for key, value in yaml.safe_load(path.read_text()).items():
        key = key.replace("-", "_")
        assert key in parsed and _same(parsed[key], value), (key, value, parsed[key] if key in parsed else None)


def _same(got, want) -> bool:
    """A parsed value equals the YAML's: a group as its dataclass's fields, numbers as numbers
    (YAML reads 3e-4 as text), paths and tuples as what they spell."""
    if dataclasses.is_dataclass(got) and isinstance(want, dict):
        return all(_same(getattr(got, k.replace("-", "_")), v) for k, v in want.items())
    if isinstance(got, float) and not isinstance(want, bool):
        return got == float(want)
    if isinstance(want, list):
        return [str(g) for g in got] == [str(w) for w in want]
    return got == want or (isinstance(want, str) and str(got) == want)


def test_pretrain_examples_exist():
    names = {p.name for p in CONFIG_FILES if command_of(p) == ["pretrain"]}
    assert {"micro-llama.yaml", "llama-3.2-1b-resized.yaml", "smollm2-135m-continued.yaml",
            "llama-3.2-1b-fsdp.yaml"} <= names
    # Directories that are not commands are not mistaken for configs.
    assert not any(p.relative_to(CONFIGS).parts[0] == "eval" for p in CONFIG_FILES)


def test_example_configs_say_what_they_promise():
    resized = validate_config(PRETRAIN / "llama-3.2-1b-resized.yaml", ["pretrain"])
    from llmkit.recipes.scaffold import model_config

    cfg = model_config(resized.model, resized.model_overrides, vocab_size=8192)
    assert (cfg.n_layer, cfg.n_embd, cfg.kv_heads, cfg.rope_scaling.type) == (8, 768, 4, "llama3")
    fsdp = validate_config(PRETRAIN / "llama-3.2-1b-fsdp.yaml", ["pretrain"])
    assert fsdp.train.distributed == "fsdp" and fsdp.train.precision == "bf16"
    assert "torchrun" in (PRETRAIN / "llama-3.2-1b-fsdp.yaml").read_text()
    continued = validate_config(PRETRAIN / "smollm2-135m-continued.yaml", ["pretrain"])
    from llmkit.recipes.scaffold import is_new_model

    assert not is_new_model(continued.model) and not continued.model_overrides


# --- the checks fail where they should ------------------------------------------------------------
BAD = {
    "unknown top-level key": ("model: micro-llama\nlearning_rate: 0.1\ntrain: {max_steps: 5}\n", "learning_rate"),
    "unknown train key": ("model: micro-llama\ntrain: {max_steps: 5, lrr: 0.1}\n", "lrr"),
    "wrong type": ("model: micro-llama\ntrain: {max_steps: five}\n", "max_steps"),
    "wrong type top-level": ("model: micro-llama\nseq_len: [1, 2]\ntrain: {max_steps: 5}\n", "seq_len"),
    "no training budget": ("model: micro-llama\ntrain: {max_steps: null}\n", "budget"),
    "unknown model field": ("model: micro-llama\nmodel_overrides: {n_layers: 2}\ntrain: {max_steps: 5}\n", "n_layers"),
    "invalid model shape": ("model: micro-llama\nmodel_overrides: {n_head: 7}\ntrain: {max_steps: 5}\n", "n_head"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_invalid_config_is_rejected(case, tmp_path):
    text, word = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(Exception) as info:
        validate_config(path, ["pretrain"])
    assert word in str(info.value)


def test_invalid_config_fails_on_the_command_line(tmp_path, capsys):
    """The real entry point refuses the config before training anything."""
    path = tmp_path / "bad.yaml"
    path.write_text("model: micro-llama\ntrain: {max_steps: 5, lrr: 0.1}\n")
    with pytest.raises(SystemExit) as info:
        main(["pretrain", "--config", str(path), "--out", str(tmp_path / "run")])
    assert info.value.code != 0
    assert "lrr" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_unplaced_group_config_is_reported(tmp_path):
    """A config in a command group's folder that names no subcommand is an error, not skipped."""
    root = tmp_path / "configs"
    (root / "classify").mkdir(parents=True)
    (root / "classify" / "spam.yaml").write_text("model: x\n")
    (root / "classify" / "train-spam.yaml").write_text("model: x\n")
    (root / "eval").mkdir()
    (root / "eval" / "task.yaml").write_text("task: x\n")
    (root / "pretrain").mkdir()
    (root / "pretrain" / "a.yml").write_text("model: x\n")
    found = discover(root)
    assert [p.relative_to(root).as_posix() for p in found] == [
        "classify/spam.yaml", "classify/train-spam.yaml", "pretrain/a.yml"]
    assert command_of(found[1], root) == ["classify", "train"]
    assert command_of(found[2], root) == ["pretrain"]
    with pytest.raises(AssertionError, match="subcommand"):
        command_of(found[0], root)


def test_parse_unknown_command():
    with pytest.raises(LLMKitError, match="unknown command 'pretrian'"):
        parse(["pretrian"])
    with pytest.raises(LLMKitError, match="unknown subcommand of 'convert' 'sideways'"):
        parse(["convert", "sideways"])


def test_parse_is_what_run_executes(tmp_path):
    """The argv conveniences apply to configs and flags alike, through the one `parse`."""
    fn, kw = parse(["pretrain", "--config", str(PRETRAIN / "micro-llama.yaml"), "--max-steps", "7",
                    "--model.n_layer", "2", "--resume", "none"])
    assert fn.__name__ == "pretrain" and kw["model"] == "micro-llama"
    assert kw["train"].max_steps == 7 and kw["train"].resume == "none"  # shortcuts, dashes
    assert kw["model_overrides"] == {"n_layer": 2}
    fn, kw = parse(["finetune", "m", "--data", "d.json", "--lora.targets", "q", "v"])
    assert (kw["model"], kw["data"], kw["lora"].targets) == ("m", "d.json", ["q", "v"])


# --- one config, run for real -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A tiny tokenizer and token shards from synthetic text (no shared data needed)."""
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "home"]
    return make_token_shards(tmp_path_factory.mktemp("cfgdata"), words, n_docs=30, max_words=160)


def test_micro_llama_config_runs_end_to_end(tiny_data, tmp_path):
    """`llmkit pretrain --config configs/pretrain/micro-llama.yaml` with only the data, output
    and budget overridden: the config's own model and settings train and write a loadable model."""
    out = tmp_path / "run"
    main(["pretrain", "--config", str(PRETRAIN / "micro-llama.yaml"), "--data", str(tiny_data),
          "--out", str(out), "--seq-len", "32", "--train.max_time", "null", "--train.max_steps", "3",
          "--train.micro_batch_size", "4", "--train.eval_every", "0", "--eval-batches", "2",
          "--train.tensorboard", "false"])
    for f in ("metrics.csv", "summary.json", "loss.png", "final/model.safetensors", "final/config.json",
              "final/tokenizer.json", "checkpoints/latest"):
        assert (out / f).exists(), f
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 3 and summary["tokens"] == 3 * 4 * 32
    assert "val_loss" in summary  # the final evaluation ran on the validation split
    from llmkit.checkpoint import load_model

    model = load_model(out / "final").model
    cfg = model.cfg
    # The preset from the config (micro-llama's shape), sized to the data's vocabulary.
    assert (cfg.name, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.kv_heads) == ("micro-llama", 6, 256, 8, 4)
    assert cfg.vocab_size == json.loads((tiny_data / "manifest.json").read_text())["vocab_size"]


def test_readme_resized_preset_command(tiny_data, tmp_path):
    """README: `llmkit pretrain --model llama-3.2-1b --model.n_layer 4 --model.n_embd 512 ...`:
    dotted options resize a preset (here to a toy size) and the run keeps the preset's family."""
    out = tmp_path / "resized"
    main(["pretrain", "--model", "llama-3.2-1b", "--model.n_layer", "1", "--model.n_embd", "64",
          "--model.n_head", "4", "--model.n_kv_heads", "2", "--model.intermediate_size", "96",
          "--model.block_size", "64", "--data", str(tiny_data), "--out", str(out), "--train.max_steps", "1",
          "--train.micro_batch_size", "2", "--train.eval_every", "0", "--train.tensorboard", "false"])
    cfg = json.loads((out / "final" / "config.json").read_text())
    assert (cfg["n_layer"], cfg["n_embd"], cfg["n_kv_heads"], cfg["block_size"]) == (1, 64, 2, 64)
    assert cfg["rope_scaling"]["type"] == "llama3" and cfg["tie_embeddings"] is True  # still Llama 3.2


def test_example_configs_point_at_data_that_exists_or_say_how_to_make_it():
    """A config's data is either one of the shared public data sets (../shared/data/..., beside
    the repository, which must then exist) or something the config's comments say how to make
    (a `llmkit data prepare` / `llmkit finetune` command, or "your own")."""
    shared = CONFIGS.parent.parent / "shared" / "data"
    for path in CONFIG_FILES:
        cfg = yaml.safe_load(path.read_text())
        for key in ("data", "file", "val_data", "test_data"):
            value = cfg.get(key)
            if not isinstance(value, str):
                continue
            if value.startswith("../shared/data/"):
                if shared.is_dir():  # a clone without shared/ beside it has only the names to check
                    assert (CONFIGS.parent / value).exists(), f"{path.name}: {key} {value} does not exist"
                assert value.split("/")[3] in {"instruct", "sms_spam", "sentiment", "text", "ner", "qa", "nli",
                                                "summarization", "translation", "gpt2"}, value
            else:
                text = path.read_text()
                assert "llmkit data prepare" in text or "llmkit finetune" in text or "your own" in text, \
                    f"{path.name}: {key} {value} is neither shared data nor explained in the config's comments"
