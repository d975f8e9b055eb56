"""`llmkit evaluate --pairwise A B`: seeded balanced order, both-orders consistency, the win
rate's interval and the length-controlled win rate against independent computations (scipy),
votes that `llmkit arena ratings` reads, clear errors, and the CLI end to end with two tiny
checkpoints and a fake OpenAI-compatible judge on 127.0.0.1."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from llmkit.errors import LLMKitError
from llmkit.evaluate import pairwise as pw
from llmkit.evaluate.judge import JudgeUnavailable
from tests.helpers import cli_error, cli_run

ALPACA = [
    {"instruction": "Name the capital of France.", "input": "", "output": "Paris"},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Give the opposite of the word.", "input": "hot", "output": "cold"},
    {"instruction": "Say what the fox does.", "input": "", "output": "The fox jumps over the lazy dog."},
    {"instruction": "Where did the cat sit?", "input": "A cat sat on the mat.", "output": "On the mat."},
]


def _responses(messages) -> tuple[str, str]:
    """(Response A, Response B) as the judge's prompt shows them."""
    text = messages[-1]["content"]
    a = re.search(r"### Response A:\n(.*?)\n\n### Response B:", text, re.S).group(1)
    b = re.search(r"### Response B:\n(.*?)\n\n(?:Which|###)", text, re.S).group(1)
    return a, b


def longer_judge(messages) -> str:
    """A judge that always prefers the longer answer (a tie when equal)."""
    a, b = _responses(messages)
    return "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie"


def examples(n: int) -> list[dict]:
    return [{"instruction": f"Question number {i}?", "input": "", "output": f"answer {i}"} for i in range(n)]


# --- order ----------------------------------------------------------------------------------------
def test_seeded_order_is_reproducible_balanced_and_shown_as_recorded():
    for n in (10, 11, 200):
        orders = pw.assign_orders(n, seed=7)
        assert orders == pw.assign_orders(n, seed=7)  # reproducible
        assert sum(orders) in (n // 2, n - n // 2)  # balanced: half each way (the odd one by a coin)
    assert pw.assign_orders(200, 7) != pw.assign_orders(200, 8)
    orders = pw.assign_orders(200, 7)
    assert 0 < sum(a != b for a, b in zip(orders, orders[1:])) < 199  # shuffled, not alternating
    seen = []

    def judge(messages):
        seen.append(_responses(messages))
        return "A"

    exs = examples(12)
    ra, rb = [f"alpha {i}" for i in range(12)], [f"beta {i}" for i in range(12)]
    records = pw.judge_pairwise(exs, ra, rb, judge, seed=3, concurrency=1, progress=False)
    expected = pw.assign_orders(12, 3)
    assert [r["order"] for r in records] == ["AB" if f else "BA" for f in expected]
    for rec, (first, second), i in zip(records, seen, range(12)):
        assert (first, second) == ((ra[i], rb[i]) if rec["order"] == "AB" else (rb[i], ra[i]))
        # A judge that always says "A" picks whichever model was shown first.
        assert rec["winner"] == ("a" if rec["order"] == "AB" else "b")
    again = pw.judge_pairwise(exs, ra, rb, judge, seed=3, concurrency=1, progress=False)
    assert [r["order"] for r in again] == [r["order"] for r in records]


# --- both orders ----------------------------------------------------------------------------------
def test_combine_follows_mt_bench():
    assert pw.combine("a", "a") == ("a", True)
    assert pw.combine("b", "b") == ("b", True)
    assert pw.combine("tie", "tie") == ("tie", True)
    assert pw.combine("a", "b") == ("tie", False)  # the verdict flipped with the order
    assert pw.combine("a", "tie") == ("tie", False)  # a win in one order only is no win
    assert pw.combine(None, "a") == (None, None)  # a failure in either order: undecided


def test_both_orders_consistency_and_position_bias():
    exs = examples(20)
    ra = [f"a good answer {i}" for i in range(20)]
    rb = [f"a bad answer {i}" for i in range(20)]

    def fair(messages):  # prefers the good answer wherever it is
        a, b = _responses(messages)
        return "A" if "good" in a else "B"

    records = pw.judge_pairwise(exs, ra, rb, fair, both_orders=True, concurrency=2, progress=False)
    s = pw.summarize(records, ra, rb, ["ma", "mb"])
    assert (s["wins"], s["ties"], s["losses"], s["failures"]) == (20, 0, 0, 0)
    assert s["consistency"] == {"pairs": 20, "consistent": 20, "rate": 1.0}
    assert s["first_position_share"] == 0.5 and s["both_orders"] is True
    assert all([j["order"] for j in r["judgments"]] in (["AB", "BA"], ["BA", "AB"]) for r in records)

    # Always "A": in one order, the win rate follows the order; in both orders, all ties.
    one = pw.summarize(pw.judge_pairwise(exs, ra, rb, lambda m: "[[A]]", progress=False), ra, rb, ["ma", "mb"])
    assert (one["wins"], one["losses"]) == (one["shown_first"]["a"], one["shown_first"]["b"]) == (10, 10)
    assert one["first_position_share"] == 1.0 and "consistency" not in one
    both = pw.summarize(pw.judge_pairwise(exs, ra, rb, lambda m: "A", both_orders=True, progress=False), ra, rb,
                        ["ma", "mb"])
    assert (both["wins"], both["ties"], both["losses"]) == (0, 20, 0)
    assert both["consistency"]["rate"] == 0.0 and both["win_rate"] == 0.5

    # The good answer wins when shown first and ties when shown second: a win in one order only.
    def half(messages):
        return "A" if "good" in _responses(messages)[0] else "tie"

    mixed = pw.summarize(pw.judge_pairwise(exs, ra, rb, half, both_orders=True, progress=False), ra, rb, ["x", "y"])
    assert (mixed["wins"], mixed["ties"], mixed["losses"]) == (0, 20, 0)
    assert mixed["consistency"]["rate"] == 0.0


def test_failures_are_counted_never_dropped():
    exs = examples(6)
    ra, rb = [f"a{i}" for i in range(6)], [f"b{i}" for i in range(6)]

    def flaky(messages):
        a, _ = _responses(messages)
        i = int(a[1:])  # both responses of example i end in i
        if i == 1:
            return "I cannot decide between these two."  # no verdict
        if i == 2:
            raise JudgeUnavailable("http://judge: HTTP 503 (after 5 attempts)")
        return "A" if a.startswith("a") else "B"

    records = pw.judge_pairwise(exs, ra, rb, flaky, concurrency=1, progress=False)
    s = pw.summarize(records, ra, rb, ["ma", "mb"])
    assert (s["wins"], s["ties"], s["losses"], s["failures"]) == (4, 0, 0, 2)
    assert s["failure_reasons"] == {"no verdict in reply": 1, "request failed": 1}
    assert s["win_rate"] == 1.0 and s["examples"] == 6
    assert records[1]["winner"] is None and records[1]["failure"] == "no verdict in reply"
    # In both orders a failure in one of them leaves the example undecided.
    both = pw.summarize(pw.judge_pairwise(exs, ra, rb, flaky, both_orders=True, concurrency=1, progress=False),
                        ra, rb, ["ma", "mb"])
    assert both["failures"] == 2 and both["consistency"]["pairs"] == 4


# --- the interval ---------------------------------------------------------------------------------
def test_win_rate_interval_matches_scipy_and_covers():
    from scipy import stats

    rng = np.random.default_rng(0)
    y = rng.choice([1.0, 0.5, 0.0], size=137, p=[0.5, 0.2, 0.3])
    got = pw.win_rate_interval(y)
    low, high = stats.norm.interval(0.95, loc=y.mean(), scale=stats.sem(y))
    assert got["win_rate"] == pytest.approx(y.mean(), abs=1e-12)
    assert got["stderr"] == pytest.approx(stats.sem(y), rel=1e-12)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((low, high), rel=1e-12)
    # Coverage: the true mean (0.5 + 0.1 = 0.6) lies inside about 95% of the intervals.
    sims = rng.choice([1.0, 0.5, 0.0], size=(2000, 150), p=[0.5, 0.2, 0.3])
    hits = 0
    for row in sims:
        r = pw.win_rate_interval(row)
        hits += r["ci_low"] <= 0.6 <= r["ci_high"]
    assert 0.93 <= hits / 2000 <= 0.97
    one = pw.win_rate_interval([1.0])
    assert one["win_rate"] == 1.0 and np.isnan(one["ci_low"])
    assert pw.win_rate_interval([1.0, 1.0, 0.0])["ci_low"] >= 0.0  # clipped to [0, 1]


# --- the length-controlled win rate ---------------------------------------------------------------
def test_length_regression_matches_scipy_minimize():
    from scipy.optimize import minimize

    rng = np.random.default_rng(1)
    n = 300
    len_a, len_b = rng.integers(50, 900, n), rng.integers(50, 700, n)
    x, sd = pw.length_features(len_a, len_b)
    assert sd == pytest.approx(np.std(len_a - len_b, ddof=1))
    assert np.allclose(x, np.tanh((len_a - len_b) / sd))
    p = 1 / (1 + np.exp(-(0.3 + 1.5 * x)))
    y = np.where(rng.random(n) < 0.15, 0.5, (rng.random(n) < p).astype(float))  # ties as 0.5 targets
    X = np.stack([np.ones(n), x], axis=1)

    def loss(t, ridge):  # the penalised log-loss, written out here independently of pw.lc_objective
        z = X @ t
        return np.sum(y * np.log1p(np.exp(-z)) + (1 - y) * np.log1p(np.exp(z))) + ridge / 2 * t[1] ** 2

    def grad(t, ridge):
        return X.T @ (1 / (1 + np.exp(-(X @ t))) - y) + np.array([0.0, ridge * t[1]])

    for ridge in (0.0, pw.LC_RIDGE, 1.0):
        theta, cov, iters = pw.fit_length_logit(x, y, ridge)
        ref = minimize(loss, x0=np.zeros(2), args=(ridge,), jac=grad, method="BFGS",
                       options={"gtol": 1e-8, "maxiter": 1000})
        assert pw.lc_objective(theta, x, y, ridge) == pytest.approx(loss(theta, ridge), rel=1e-12)
        assert ref.success and np.abs(grad(ref.x, ridge)).max() < 1e-7, ref.message
        assert np.allclose(theta, ref.x, atol=1e-6), (theta, ref.x)
        assert iters < 30
    lc = pw.length_controlled(y, len_a, len_b)
    theta, cov, _ = pw.fit_length_logit(x, y)
    assert lc["lc_win_rate"] == pytest.approx(1 / (1 + np.exp(-theta[0])), abs=1e-12)
    assert lc["lc_ci_low"] < lc["lc_win_rate"] < lc["lc_ci_high"]
    # Swapping the two models mirrors the fit: LC(B over A) = 1 - LC(A over B).
    assert pw.length_controlled(1 - y, len_b, len_a)["lc_win_rate"] == pytest.approx(1 - lc["lc_win_rate"], abs=1e-9)


def test_length_regression_recovers_a_known_model_and_its_interval_covers():
    """Preferences drawn from sigmoid(a + b tanh(d / sd)): the fit finds sigmoid(a), and its
    Wald interval holds it about 95% of the time."""
    rng = np.random.default_rng(2)
    hits, n, rounds, a = 0, 400, 300, 0.4
    for _ in range(rounds):
        len_a, len_b = rng.normal(600, 150, n), rng.normal(450, 150, n)
        x, _ = pw.length_features(len_a, len_b)
        y = (rng.random(n) < 1 / (1 + np.exp(-(a + 2.0 * x)))).astype(float)
        lc = pw.length_controlled(y, len_a, len_b)
        hits += lc["lc_ci_low"] <= 1 / (1 + np.exp(-a)) <= lc["lc_ci_high"]
    assert 0.91 <= hits / rounds <= 0.98


def test_a_judge_that_prefers_longer_answers_is_length_controlled():
    """A judge that always picks the longer answer, with A longer in 80% of the examples: the raw
    win rate is 80%, the length-controlled one about 50% (length explains every verdict)."""
    n = 200
    rng = np.random.default_rng(3)
    deltas = np.concatenate([np.arange(1, 161), -np.arange(1, 41)]) * 3
    rng.shuffle(deltas)
    exs = examples(n)
    rb = ["x" * 300 for _ in range(n)]
    ra = ["y" * (300 + int(d)) for d in deltas]
    records = pw.judge_pairwise(exs, ra, rb, longer_judge, concurrency=4, progress=False)
    s = pw.summarize(records, ra, rb, ["verbose", "terse"])
    assert s["win_rate"] == pytest.approx(0.8) and s["ci_low"] > 0.7
    assert abs(s["lc_win_rate"] - 0.5) < 0.05, s
    assert s["length_model"]["slope"] > 5 and s["mean_length_a"] > s["mean_length_b"]
    # A judge that ignores length: the LC win rate stays near the raw one.
    quality = pw.summarize(pw.judge_pairwise(exs, ra, rb, lambda m: "A" if "y" in _responses(m)[0] else "B",
                                             progress=False), ra, rb, ["verbose", "terse"])
    assert quality["win_rate"] == 1.0 and quality["lc_win_rate"] == 1.0
    all_ties = pw.length_controlled([0.5] * 5, [1, 2, 3, 4, 5], [1, 1, 1, 1, 1])
    assert all_ties["lc_win_rate"] == pytest.approx(0.5, abs=1e-9)


# --- references ----------------------------------------------------------------------------------
def test_reference_shown_only_when_asked_and_present(tmp_path):
    data = tmp_path / "mixed.jsonl"
    data.write_text(json.dumps(ALPACA[0]) + "\n" + json.dumps({"instruction": "Write a haiku."}) + "\n"
                    + json.dumps({"messages": [{"role": "user", "content": "Hello?"}]}) + "\n")
    exs = pw.load_instructions(data)
    assert [e["output"] for e in exs] == ["Paris", None, None]
    assert exs[2]["instruction"] == "Hello?" and exs[2]["messages"] == [{"role": "user", "content": "Hello?"}]
    prompts = []

    def judge(messages):
        prompts.append(messages[-1]["content"])
        return "tie"

    records = pw.judge_pairwise(exs, ["r1"] * 3, ["r2"] * 3, judge, concurrency=1, progress=False)
    assert ["### Reference answer:\nParis" in p for p in prompts] == [True, False, False]
    assert [r["reference"] for r in records] == [True, False, False]
    prompts.clear()
    pw.judge_pairwise(exs, ["r1"] * 3, ["r2"] * 3, judge, judge_reference=False, concurrency=1, progress=False)
    assert not any("Reference" in p for p in prompts) and all("### Response B:\nr" in p for p in prompts)


# --- votes -> ratings -----------------------------------------------------------------------------
def _write_responses(path: Path, exs, responses, model=None):
    path.write_text("".join(json.dumps({**{k: e[k] for k in ("instruction", "input", "output")}, "response": r,
                                        **({"model": model} if model else {})}) + "\n"
                            for e, r in zip(exs, responses)))
    return path


def test_votes_feed_the_arena_ratings(tmp_path, capsys):
    from llmkit.arena.ratings import ratings
    from llmkit.arena.votes import load_votes

    exs = examples(40)
    ra = [("a strong answer " if i % 4 else "weak ") + str(i) for i in range(40)]  # A better in 30 of 40
    rb = [("weak " if i % 4 else "a strong answer ") + str(i) for i in range(40)]
    for i in (5, 6):
        ra[i] = rb[i] = f"the same {i}"
    run_a = tmp_path / "run-a"
    run_a.mkdir()
    fa = _write_responses(run_a / "responses.jsonl", exs, ra)
    fb = _write_responses(tmp_path / "base.jsonl", list(reversed(exs)), list(reversed(rb)))  # other order

    def judge(messages):
        a, b = _responses(messages)
        return "tie" if a == b else "A" if "strong" in a else "B"

    section = pw.run_pairwise([str(fa), str(fb)], None, judge, seed=5, judge_concurrency=3, out=str(tmp_path / "o"),
                              progress=False)
    assert (section["model_a"], section["model_b"]) == ("run-a", "base")
    assert (section["wins"], section["ties"], section["losses"]) == (28, 2, 10)
    assert section["win_rate"] == pytest.approx(29 / 40)
    votes = load_votes(tmp_path / "o" / "votes.jsonl")
    assert len(votes) == 40 and len({v["battle"] for v in votes}) == 40
    judged = [json.loads(x) for x in (tmp_path / "o" / "judgments.jsonl").read_text().splitlines()]
    for v, j in zip(votes, judged):
        assert v["source"] == "judge" and v["prompt"] == j["instruction"]
        first = "run-a" if j["order"] == "AB" else "base"
        assert v["model_a"] == first and v["reply_a"] == (j["response_a"] if first == "run-a" else j["response_b"])
        assert v["winner"] == ("tie" if j["winner"] == "tie" else "a" if j["winner"] == first else "b")
        assert j["judgments"][0]["reply"] in ("A", "B", "tie")
    result = ratings(str(tmp_path / "o" / "votes.jsonl"), out=str(tmp_path / "r"), bootstrap_rounds=0)
    rows = {r["model"]: r for r in result["rows"]}
    assert result["rows"][0]["model"] == "run-a" and rows["run-a"]["rating"] > rows["base"]["rating"]
    assert rows["run-a"]["win_rate"] == pytest.approx(section["win_rate"])
    assert (rows["run-a"]["wins"], rows["run-a"]["ties"], rows["run-a"]["losses"]) == (28, 2, 10)
    # The files written for the two sides are responses files in their own right.
    ex_a, resp_a, name_a = pw.read_responses(tmp_path / "o" / "responses_a.jsonl")
    assert name_a == "run-a" and resp_a == ra and [e["instruction"] for e in ex_a] == [e["instruction"] for e in exs]


def test_responses_are_matched_by_instruction(tmp_path):
    exs = examples(4)
    f = _write_responses(tmp_path / "r.jsonl", exs[:3], ["x", "y", "z"])
    other, responses, _ = pw.read_responses(f)
    assert pw.match_responses(list(reversed(exs[:3])), other, responses, str(f)) == ["z", "y", "x"]
    with pytest.raises(LLMKitError, match=r"r.jsonl: no response to example 4 \('Question number 3\?'\)"):
        pw.match_responses(exs, other, responses, str(f))
    (tmp_path / "bad.jsonl").write_text('{"instruction": "q"}\n')
    with pytest.raises(LLMKitError, match="bad.jsonl: line 1: expected instruction and response fields"):
        pw.read_responses(tmp_path / "bad.jsonl")


# --- the CLI --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fake_judge():
    """An OpenAI-compatible judge on 127.0.0.1 that prefers the longer response."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def _send(self, payload: dict):
            body = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._send({"object": "list", "data": [{"id": "fake-judge", "object": "model"}]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            verdict = longer_judge(body["messages"])
            self._send({"choices": [{"index": 0, "message": {"role": "assistant", "content": f"[[{verdict}]]"}}]})

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1", seen
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from tests.helpers import make_model_dir

    root = tmp_path_factory.mktemp("pairwise")
    data = root / "alpaca.json"
    data.write_text(json.dumps(ALPACA))
    return {"root": root, "data": data, "m1": make_model_dir(root, "llama", seed=0, context=1024),
            "m2": make_model_dir(root, "llama", seed=1, context=1024)}


def test_cli_end_to_end(models, fake_judge, tmp_path, capsys):
    from llmkit.arena.votes import load_votes

    url, seen = fake_judge
    out = tmp_path / "pair"
    seen.clear()
    code, stdout, err = cli_run(capsys, ["evaluate", "--pairwise", models["m1"], models["m2"], "--data",
                                         models["data"], "--judge-url", url, "--both-orders", "--max-new-tokens", "8",
                                         "--limit", "4", "--batch-size", "2", "--seed", "11", "--out", out])
    assert code == 0, err
    result = json.loads((out / "results.json").read_text())
    s = result["pairwise"]
    assert (s["model_a"], s["model_b"]) == (models["m1"].name, models["m2"].name)
    assert s["examples"] == 4 and s["both_orders"] and len(seen) == 8  # two orders per example
    assert s["wins"] + s["ties"] + s["losses"] + s["failures"] == 4 and s["failures"] == 0
    assert s["consistency"]["pairs"] == 4 and s["judged_with_reference"] == 4
    assert result["settings"]["judge"] == f"fake-judge at {url}" and result["settings"]["seed"] == 11
    judged = [json.loads(x) for x in (out / "judgments.jsonl").read_text().splitlines()]
    assert [j["order"] for j in judged] == ["AB" if f else "BA" for f in pw.assign_orders(4, 11)]
    for j in judged:  # the longer answer wins in both orders (equal lengths: a tie)
        la, lb = len(j["response_a"]), len(j["response_b"])
        assert j["winner"] == (j["model_a"] if la > lb else j["model_b"] if lb > la else "tie")
        assert j["consistent"] is True
    assert s["mean_length_a"] == pytest.approx(np.mean([len(j["response_a"]) for j in judged]))
    assert len(load_votes(out / "votes.jsonl")) == 4
    assert "## Pairwise" in stdout and "win rate of A" in stdout and "length-controlled" in stdout
    assert "## Pairwise" in (out / "results.md").read_text() and "| pair:alpaca.json" in stdout

    # The two sides' responses again, without generating or --data: the same verdicts.
    code, _, err = cli_run(capsys, ["evaluate", "--pairwise", out / "responses_a.jsonl", out / "responses_b.jsonl",
                                    "--judge-url", url, "--both-orders", "--seed", "11", "--judge-reference", "false",
                                    "--out", tmp_path / "again"])
    assert code == 0, err
    again = json.loads((tmp_path / "again" / "results.json").read_text())["pairwise"]
    assert (again["wins"], again["ties"], again["losses"]) == (s["wins"], s["ties"], s["losses"])
    assert again["judged_with_reference"] == 0 and "Reference" not in seen[-1]["messages"][-1]["content"]


@pytest.mark.parametrize("case,needles", [
    ("one", ["--pairwise takes exactly two models", "got 1"]),
    ("three", ["--pairwise takes exactly two models", "got 3"]),
    ("no_judge", ["--pairwise needs a judge: give --judge-url"]),
    ("no_data", ["--pairwise with a model needs --data"]),
    ("missing_data", ["nope.json: no such file"]),
    ("model_too", ["--pairwise compares the two models it names; it takes no MODEL"]),
    ("two_data", ["--data and --generate-data name the same file"]),
    ("missing_model", ["no_such_model: no such model directory"]),
    ("missing_responses", ["gone.jsonl: no such responses file"]),
    ("same_twice", ["the same model twice"]),
])
def test_bad_input_is_one_clear_line(case, needles, models, tmp_path, capsys, monkeypatch):
    import llmkit.checkpoint as checkpoint

    # Every one of these is refused before a model loads (or a judge is asked).
    monkeypatch.setattr(checkpoint, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    m1, m2, data = str(models["m1"]), str(models["m2"]), str(models["data"])
    judge = ["--judge-url", "http://127.0.0.1:9/v1"]
    args = {
        "one": ["--pairwise", m1, "--data", data] + judge,
        "three": ["--pairwise", m1, m2, m1, "--data", data] + judge,
        "no_judge": ["--pairwise", m1, m2, "--data", data],
        "no_data": ["--pairwise", m1, m2] + judge,
        "missing_data": ["--pairwise", m1, m2, "--data", str(tmp_path / "nope.json")] + judge,
        "model_too": [m1, "--pairwise", m1, m2, "--data", data] + judge,
        "two_data": ["--pairwise", m1, m2, "--data", data, "--generate-data", str(tmp_path / "x.json")] + judge,
        "missing_model": ["--pairwise", m1, str(tmp_path / "no_such_model"), "--data", data] + judge,
        "missing_responses": ["--pairwise", m1, str(tmp_path / "gone.jsonl"), "--data", data] + judge,
        "same_twice": ["--pairwise", m1, m1, "--data", data] + judge,
    }[case]
    cli_error(capsys, ["evaluate"] + args, *needles)
