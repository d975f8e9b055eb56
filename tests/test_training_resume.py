"""The loop's resume path (src/llmkit/training/loop.py with checkpoint.py): a damaged latest
checkpoint is skipped with a warning, metrics.csv keeps every step once, stale temporary files
go, and the progress shows the budget with a total in a log file too."""

import csv

import pytest
import torch

from llmkit.config import ModelConfig
from llmkit.model import Transformer
from llmkit.training.loop import TrainConfig, Trainer
from llmkit.training.losses import causal_lm_loss


class Batches:
    """Seeded random token windows with a checkpointable position."""

    def __init__(self):
        self.i = 0

    def __next__(self):
        g = torch.Generator().manual_seed(self.i)
        self.i += 1
        x = torch.randint(0, 64, (2, 9), generator=g)
        return x[:, :-1], x[:, 1:]

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, s):
        self.i = s["i"]


def fit(out, **kw):
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny-llama", vocab_size=64, n_layer=1))
    cfg = TrainConfig(**{"micro_batch_size": 2, "eval_every": 0, "log_every": 1, "precision": "fp32",
                         "tensorboard": False, "warmup_steps": 1, "keep_last": 5, **kw})
    return Trainer(model, cfg, out, Batches(), causal_lm_loss).fit()


def loss_rows(out):
    with open(out / "metrics.csv") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r["metric"] == "loss"]


def test_a_damaged_latest_checkpoint_is_skipped_and_metrics_keep_each_step_once(tmp_path, capsys):
    out = tmp_path / "run"
    fit(out, max_steps=6, save_every=2)
    assert loss_rows(out) == [1, 2, 3, 4, 5, 6]
    (out / "checkpoints" / "step-00000006" / "optimizer.pt").write_bytes(b"truncated")
    (out / "checkpoints" / "step-00000008.tmp").mkdir()  # an interrupted write
    capsys.readouterr()
    result = fit(out, max_steps=8, save_every=2)
    err = capsys.readouterr()
    assert result["step"] == 8
    assert "resumed from" in err.out and "step-00000004" in err.out  # the newest intact one
    warns = [line for line in err.err.splitlines() if line.startswith("warning:")]
    assert len(warns) == 1 and "step-00000006" in warns[0] and "optimizer.pt" in warns[0]
    assert loss_rows(out) == [1, 2, 3, 4, 5, 6, 7, 8]  # 5 and 6 once: the interrupted run's rows dropped
    assert not (out / "checkpoints" / "step-00000008.tmp").exists()


def test_a_fresh_run_in_an_old_directory_starts_a_new_metrics_file(tmp_path):
    out = tmp_path / "run"
    fit(out, max_steps=3, save_every=0)
    fit(out, max_steps=2, save_every=0, resume="none")
    assert loss_rows(out) == [1, 2]


@pytest.mark.parametrize("budget,unit", [({"max_steps": 3}, "step"), ({"max_time": 1.0}, "s"),
                                         ({"max_tokens": 64}, "tok")])
def test_progress_lines_in_a_log_file_show_the_budget_total(tmp_path, capsys, monkeypatch, budget, unit):
    monkeypatch.setenv("LLMKIT_PROGRESS_INTERVAL", "0")  # a line at every update
    fit(tmp_path / "run", save_every=0, **budget)
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("training:")]
    total = {"step": "3", "s": "1", "tok": "64"}[unit]
    assert lines and all(f"/{total} {unit} (" in x and "elapsed, ETA" in x for x in lines), lines
    assert lines[-1].split("(")[1].startswith("100%")
