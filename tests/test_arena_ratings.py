"""Arena ratings against independent computations: simulated votes with known strengths, a
reference logistic-regression fit (scipy), hand-computed Elo and win rates, the bootstrap, and
the `llmkit arena ratings` command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.optimize import minimize

from llmkit.arena.ratings import (
    battle_counts,
    bootstrap,
    bradley_terry,
    heatmap_png,
    leaderboard,
    online_elo,
    ratings,
    win_rates,
)
from llmkit.arena.votes import VoteStore
from llmkit.errors import LLMKitError
from tests.helpers import cli_error, cli_run

TRUE = {"strong": 1250.0, "good": 1100.0, "mid": 1000.0, "fair": 950.0, "weak": 700.0}


def simulate(n: int, seed: int, true=TRUE, tie_share: float = 0.3) -> list[dict]:
    """Votes from Bradley-Terry strengths with ties: a pair's expected score for model_a is
    P = 1 / (1 + 10^((R_b - R_a) / 400)); a tie comes with probability tie_share * 2 min(P, 1-P)
    and takes the same share from each side, so the expected score stays P (ties as half a win
    is then an unbiased estimating equation and the MLE recovers R)."""
    rng = np.random.default_rng(seed)
    names = list(true)
    votes = []
    for _ in range(n):
        a, b = rng.choice(len(names), 2, replace=False)
        p = 1.0 / (1.0 + 10 ** ((true[names[b]] - true[names[a]]) / 400))
        tie = tie_share * 2 * min(p, 1 - p)
        u = rng.random()
        winner = "a" if u < p - tie / 2 else "b" if u < 1 - tie else ("tie" if rng.random() < 0.5 else "both_bad")
        votes.append({"model_a": names[a], "model_b": names[b], "winner": winner})
    return votes


@pytest.fixture(scope="module")
def sim():
    return simulate(4000, seed=0)


def test_simulated_strengths_are_recovered(sim):
    bt = bradley_terry(sim)
    ci = bootstrap(sim, rounds=100, seed=1)
    assert sorted(bt, key=bt.get, reverse=True) == list(TRUE)  # the true order
    # The fit averages 1000 (the ridge centres it); the truth is compared on the same footing.
    shift = 1000.0 - np.mean(list(TRUE.values()))
    assert abs(np.mean(list(bt.values())) - 1000.0) < 1e-6
    inside = 0
    for m, r in TRUE.items():
        assert abs(bt[m] - (r + shift)) < 30, (m, bt[m], r + shift)
        low, high = ci[m]
        assert high - low < 60  # 4000 votes pin each rating to a few tens of points
        inside += low <= r + shift <= high
    assert inside >= 4  # 95% intervals: at most one of five misses the truth


def reference_lmsys(votes, scale=400.0, base=10.0, init=1000.0, ridge=0.0):
    """Chatbot Arena's fit written out independently: rows X = +ln(base) for model_a, -ln(base)
    for model_b; a decisive vote is a row with weight 2 for its winner's side, a tie one row each
    way with weight 1 (LMSYS `compute_mle_elo`); no intercept; ratings = scale * beta + init.
    `ridge` is bradley_terry's L2 on theta = beta * ln(base), per unit of vote weight (the
    rows' weights are twice a vote's, hence ridge on the half-sum). Minimised with BFGS."""
    models = sorted({v[k] for v in votes for k in ("model_a", "model_b")})
    idx = {m: i for i, m in enumerate(models)}
    rows, ys, ws = [], [], []
    for v in votes:
        x = np.zeros(len(models))
        x[idx[v["model_a"]]], x[idx[v["model_b"]]] = math.log(base), -math.log(base)
        if v["winner"] in ("tie", "both_bad"):
            rows += [x, x]
            ys += [1.0, 0.0]
            ws += [1.0, 1.0]
        else:
            rows.append(x)
            ys.append(1.0 if v["winner"] == "a" else 0.0)
            ws.append(2.0)
    X, y, w = np.array(rows), np.array(ys), np.array(ws)

    def nll(beta):
        z = X @ beta
        loss = np.sum(w * (np.logaddexp(0, z) - y * z))
        theta = beta * math.log(base)
        return 0.5 * loss + 0.5 * ridge * theta @ theta

    def grad(beta):
        z = X @ beta
        p = 1 / (1 + np.exp(-z))
        return 0.5 * X.T @ (w * (p - y)) + ridge * math.log(base) ** 2 * beta

    res = minimize(nll, np.zeros(len(models)), jac=grad, method="BFGS", options={"gtol": 1e-10, "maxiter": 10_000})
    beta = res.x - (res.x.mean() if ridge == 0 else 0.0)  # unpenalised: the mean is free; centre it
    return {m: float(scale * b + init) for m, b in zip(models, beta)}


@pytest.mark.parametrize("scale, base, init", [(400.0, 10.0, 1000.0), (1.0, math.e, 0.0), (173.7, 2.0, 1500.0)])
def test_bradley_terry_equals_a_reference_logistic_regression(scale, base, init):
    votes = simulate(800, seed=3, tie_share=0.4)
    ours = bradley_terry(votes, scale=scale, base=base, init_rating=init)
    ref = reference_lmsys(votes, scale, base, init, ridge=1e-3)
    unit = scale / 400  # tolerance 1e-4 points on the 400-point scale
    assert ours.keys() == ref.keys()
    for m in ours:
        assert abs(ours[m] - ref[m]) < 1e-4 * unit, (m, ours[m], ref[m])
    # With the ridge all but gone, the fit is LMSYS's unpenalised one (centred).
    free = bradley_terry(votes, scale=scale, base=base, init_rating=init, ridge=1e-12)
    ref0 = reference_lmsys(votes, scale, base, init)
    for m in free:
        assert abs(free[m] - ref0[m]) < 1e-4 * unit
    # and the default ridge moves it by well under a rating point
    assert max(abs(ours[m] - free[m]) for m in ours) < 0.05 * unit


def test_anchor_pins_one_model_and_keeps_the_gaps(sim):
    bt = bradley_terry(sim)
    pinned = bradley_terry(sim, anchor="mid", init_rating=1114)
    assert pinned["mid"] == pytest.approx(1114)
    for m in bt:
        assert pinned[m] - pinned["mid"] == pytest.approx(bt[m] - bt["mid"], abs=1e-9)
    with pytest.raises(LLMKitError, match="anchor model 'nobody' has no votes"):
        bradley_terry(sim, anchor="nobody")


def test_a_model_that_always_wins_stays_finite():
    votes = [{"model_a": "champ", "model_b": "other", "winner": "a"}] * 10
    votes += [{"model_a": m, "model_b": "champ", "winner": "b"} for m in ("x", "y", "other")] * 5
    votes += [{"model_a": "x", "model_b": "y", "winner": "tie"}] * 3
    bt = bradley_terry(votes)
    assert all(math.isfinite(r) for r in bt.values())
    assert max(bt, key=bt.get) == "champ" and bt["champ"] - max(bt[m] for m in ("x", "y", "other")) > 500
    assert bt["champ"] < 5000  # large, as the data say, but not the divergence of an unpenalised fit
    rows = leaderboard(votes, rounds=20)
    assert all(math.isfinite(r["ci_low"]) and math.isfinite(r["ci_high"]) for r in rows)
    assert rows[0]["model"] == "champ" and rows[0]["wins"] == 25 and rows[0]["losses"] == 0
    with pytest.raises(LLMKitError, match="ridge must be positive"):
        bradley_terry(votes, ridge=0)
    assert bradley_terry([]) == {} and bootstrap([]) == {}


def test_online_elo_by_hand():
    votes = [{"model_a": "x", "model_b": "y", "winner": "a"},
             {"model_a": "y", "model_b": "z", "winner": "tie"},
             {"model_a": "x", "model_b": "z", "winner": "b"}]
    elo = online_elo(votes, k=32)
    # 1) x 1000 vs y 1000: E = 0.5 -> x 1016, y 984.
    # 2) y 984 vs z 1000, tie: E_y = 1 / (1 + 10^(16/400)) = 0.476981 -> y += 32 * 0.023019 = 984.7363,
    #    z = 999.2637.
    # 3) x 1016 vs z 999.2637, z wins: E_x = 1 / (1 + 10^(-16.7363/400)) = 0.524066 -> x = 999.2299,
    #    z = 1016.0338.
    assert elo == pytest.approx({"x": 999.22986, "y": 984.73631, "z": 1016.03383}, abs=1e-4)
    assert sum(elo.values()) == pytest.approx(3000)  # Elo moves points, it does not make them
    assert online_elo(votes[:1], k=4, init_rating=1500) == {"x": 1502.0, "y": 1498.0}
    with pytest.raises(LLMKitError, match="winner must be one of"):
        online_elo([{"model_a": "x", "model_b": "y", "winner": "x"}])


def test_win_rates_and_counts_by_hand(tmp_path):
    votes = [{"model_a": "x", "model_b": "y", "winner": "a"},
             {"model_a": "y", "model_b": "x", "winner": "a"},
             {"model_a": "x", "model_b": "y", "winner": "tie"},
             {"model_a": "x", "model_b": "z", "winner": "a"},
             {"model_a": "z", "model_b": "y", "winner": "both_bad"}]
    models, m = win_rates(votes, order=["x", "y", "z"])
    nan = float("nan")
    # x-y: x won 1, y won 1, 1 tie -> 0.5 each; x-z: x won the only vote; y-z: one both_bad -> 0.5
    np.testing.assert_equal(m, np.array([[nan, 0.5, 1.0], [0.5, nan, 0.5], [0.0, 0.5, nan]]))
    assert models == ["x", "y", "z"]
    assert battle_counts(votes) == {"x": {"y": 3, "z": 1}, "y": {"x": 3, "z": 1}, "z": {"x": 1, "y": 1}}
    # by default the rows go strongest first
    assert win_rates(votes)[0][0] == "x"
    with pytest.raises(LLMKitError, match="order lacks z"):
        win_rates(votes, order=["x", "y"])
    path = heatmap_png(models, m, battle_counts(votes), tmp_path / "sub" / "h.png", title="t")
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    heatmap_png(models, m, np.ones((3, 3)), tmp_path / "h2.png")  # counts as a matrix too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h2.png", "sub"]  # no temp files left
    with pytest.raises(LLMKitError, match="expected"):
        heatmap_png(models, m[:2], battle_counts(votes), tmp_path / "bad.png")


def test_bootstrap_contains_the_estimate_narrows_and_is_seeded(sim):
    small = sim[:400]
    bt_small, bt_big = bradley_terry(small), bradley_terry(sim)
    ci_small = bootstrap(small, rounds=100, seed=0)
    ci_big = bootstrap(sim, rounds=100, seed=0)
    for m in TRUE:
        assert ci_small[m][0] <= bt_small[m] <= ci_small[m][1]
        assert ci_big[m][0] <= bt_big[m] <= ci_big[m][1]
    width = lambda ci: np.mean([h - lo for lo, h in ci.values()])  # noqa: E731
    # 10x the votes: about sqrt(10) = 3.2x narrower
    assert 2.0 < width(ci_small) / width(ci_big) < 5.0
    assert bootstrap(small, rounds=100, seed=0) == ci_small
    assert bootstrap(small, rounds=100, seed=1) != ci_small
    assert bootstrap(small, rounds=0) == {}
    with pytest.raises(LLMKitError, match="rounds must be 0 or more"):
        bootstrap(small, rounds=-1)


def test_leaderboard_rows():
    votes = simulate(300, seed=5)
    rows = leaderboard(votes, rounds=30, seed=0)
    assert [r["model"] for r in rows] == sorted((r["model"] for r in rows), key=lambda m: -bradley_terry(votes)[m])
    elo = online_elo(votes)
    for r in rows:
        assert r["battles"] == r["wins"] + r["ties"] + r["losses"] == sum(
            r["model"] in (v["model_a"], v["model_b"]) for v in votes)
        assert r["win_rate"] == pytest.approx((r["wins"] + r["ties"] / 2) / r["battles"])
        assert r["ci_low"] <= r["rating"] <= r["ci_high"] and r["elo"] == elo[r["model"]]
    assert sum(r["wins"] for r in rows) == sum(v["winner"] in ("a", "b") for v in votes)
    json.dumps(rows, allow_nan=False)  # the server serves it as JSON
    assert all(r["ci_low"] is None for r in leaderboard(votes, rounds=0))


def test_ratings_command_writes_its_files(tmp_path, capsys):
    db = tmp_path / "arena" / "votes.db"
    with VoteStore(db) as store:
        for v in simulate(300, seed=7):
            store.add({**v, "prompt": "p", "reply_a": "x", "reply_b": "y"})
        store.add({"model_a": "rare", "model_b": "weak", "winner": "a", "prompt": "", "reply_a": "", "reply_b": ""})
    result = ratings(str(db), bootstrap_rounds=20, min_battles=5)
    out = tmp_path / "arena" / "votes-ratings"  # the default: beside the votes
    assert sorted(p.name for p in out.iterdir()) == ["ratings.json", "ratings.md", "winrates.png"]
    assert json.loads((out / "ratings.json").read_text()) == json.loads(json.dumps(result))
    assert (out / "winrates.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert result["dropped"] == ["rare"] and result["votes"] == 300
    assert [r["model"] for r in result["rows"]] == result["models"] and "rare" not in result["models"]
    printed = capsys.readouterr()
    assert "| rank | model | rating |" in printed.out and "| 1 | strong |" in printed.out
    assert "| 1 | strong |" in (out / "ratings.md").read_text()
    assert "winrates.png" in printed.err
    # An export rates the same; through the CLI, into a chosen folder.
    with VoteStore(db) as store:
        store.export_jsonl(tmp_path / "votes.jsonl")
    code, stdout, _ = cli_run(capsys, ["arena", "ratings", tmp_path / "votes.jsonl", "--out", tmp_path / "r",
                                       "--bootstrap_rounds", "20", "--min_battles", "5"])
    assert code == 0 and "| 1 | strong |" in stdout
    assert json.loads((tmp_path / "r" / "ratings.json").read_text())["rows"] == json.loads(json.dumps(result["rows"]))


def test_ratings_command_errors(tmp_path, capsys):
    with VoteStore(tmp_path / "empty.db"):
        pass
    (tmp_path / "empty.jsonl").write_text("\n")
    cli_error(capsys, ["arena", "ratings", tmp_path / "empty.db"], "no votes to rate")
    cli_error(capsys, ["arena", "ratings", tmp_path / "empty.jsonl"], "no votes to rate")
    cli_error(capsys, ["arena", "ratings", tmp_path / "missing.db"], "missing.db: no such file")
    with pytest.raises(LLMKitError, match="no model has 10 votes"):
        (tmp_path / "one.jsonl").write_text(json.dumps(
            {"model_a": "a", "model_b": "b", "winner": "a", "prompt": "", "reply_a": "", "reply_b": ""}) + "\n")
        ratings(str(tmp_path / "one.jsonl"), min_battles=10)
    with pytest.raises(LLMKitError, match="bootstrap_rounds must be 0 or more"):
        ratings(str(tmp_path / "one.jsonl"), bootstrap_rounds=-5)
    assert not (tmp_path / "empty-ratings").exists() and not (tmp_path / "missing-ratings").exists()
