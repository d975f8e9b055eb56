"""Progress for people (src/llmkit/progress.py): a bar on a terminal, periodic lines with a
total and an ETA in a log file — for training, DPO's reference pass, perplexity and
generation alike."""

import contextlib
import io

import torch

from llmkit.progress import LineProgress, progress


def test_log_lines_have_total_percent_and_eta():
    buf = io.StringIO()
    bar = progress(total=4, desc="work", unit="items", file=buf, interval=0)
    assert isinstance(bar, LineProgress)  # a StringIO is not a terminal
    with bar:
        for _ in range(4):
            bar.update(1)
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("work: 1/4 items (25%), ") and "elapsed, ETA " in lines[0]
    assert lines[-1].startswith("work: 4/4 items (100%)") and len(lines) == 4  # no repeated last line
    quiet = io.StringIO()
    with progress(total=4, desc="w", file=quiet, interval=3600) as bar:
        bar.update(4)
    assert quiet.getvalue().startswith("w: 4/4 it (100%)")  # the closing line even with a long interval
    silent = io.StringIO()
    with progress(total=2, desc="w", file=silent, interval=0, enabled=False) as bar:
        bar.update(2)
        bar.write("hidden")
    assert silent.getvalue() == ""


def test_a_terminal_gets_a_tqdm_bar():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    from tqdm.auto import tqdm

    bar = progress(total=3, desc="x", file=Tty())
    assert isinstance(bar, tqdm) and bar.total == 3
    bar.close()


def test_perplexity_and_dpo_reference_show_progress_in_a_log(tmp_path, capsys, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("LLMKIT_PROGRESS_INTERVAL", "0")
    from llmkit.checkpoint import load_model
    from llmkit.evaluate.perplexity import document_nlls
    from llmkit.recipes import dpo
    from llmkit.training.loop import Runtime, TrainConfig

    model = load_model(tiny_model_dir(), dtype=torch.float32).model
    docs = [list(range(5, 60)), list(range(7, 30))]
    document_nlls(model, docs, max_length=16, stride=8, batch_size=2)
    err = capsys.readouterr().err.splitlines()
    ppl = [x for x in err if x.startswith("perplexity:")]
    assert ppl and ppl[-1].startswith("perplexity: ") and "(100%)" in ppl[-1] and "windows" in ppl[-1]
    encoded = [([5, 6, 7], [8, 9], [10]), ([5, 6], [11], [12, 13])]
    ref = dpo._reference_logps(model, encoded, [[0, 1]], 0, tmp_path / "out", "base", None,
                               TrainConfig(max_steps=1), Runtime(), contextlib.nullcontext)
    assert ref.shape == (2, 2)
    err = capsys.readouterr()
    lines = [x for x in err.err.splitlines() if x.startswith("reference log-probs:")]
    assert lines == [lines[0]] and lines[0].startswith("reference log-probs: 2/2 pairs (100%)")
