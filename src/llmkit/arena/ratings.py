"""Ratings from pairwise votes, the way Chatbot Arena computes its leaderboard.

Chiang et al. 2024 ("Chatbot Arena", sec. 4) and the LMSYS notebook
(colab "Chatbot Arena: MLE Elo", functions `compute_mle_elo`, `compute_online_elo`,
`get_bootstrap_result`) rate models with a Bradley-Terry model: P(i beats j) =
1 / (1 + base^((R_j - R_i) / scale)), fitted by maximum likelihood, shown on an Elo-like scale
(R = scale * theta / ln(base) + init_rating), with 95% intervals from a bootstrap over the
votes. The classic online Elo is kept as a second, order-dependent column.

    votes = load_votes("out/arena/votes.db")
    rows = leaderboard(votes, rounds=1000)   # [{"model", "rating", "ci_low", "ci_high", "elo", ...}]

A vote's winner is "a", "b", "tie" or "both_bad"; both kinds of tie count as half a win for
each side (LMSYS: a tie is one win each way with weight 1/2 of a decisive vote).
"""

from __future__ import annotations

import io
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from llmkit.arena.votes import WINNERS, load_votes
from llmkit.errors import LLMKitError
from llmkit.fileio import atomic_write, atomic_write_json, atomic_write_text
from llmkit.progress import progress

RIDGE = 1e-3  # L2 weight on theta (natural log-odds units); see bradley_terry
_SCORE = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}  # model_a's share of the vote


def _outcomes(votes: Sequence[Mapping]) -> list[tuple[str, str, float]]:
    """(model_a, model_b, model_a's score) per vote, checked."""
    out = []
    for n, v in enumerate(votes):
        try:
            a, b, w = v["model_a"], v["model_b"], v["winner"]
        except (KeyError, TypeError):
            raise LLMKitError(f"vote {n}: needs model_a, model_b and winner") from None
        if w not in _SCORE:
            raise LLMKitError(f"vote {n}: winner must be one of {', '.join(WINNERS)}, got {w!r}")
        if not isinstance(a, str) or not isinstance(b, str) or not a or not b or a == b:
            raise LLMKitError(f"vote {n}: model_a and model_b must be two different names, got {a!r} and {b!r}")
        out.append((a, b, _SCORE[w]))
    return out


# --- Bradley-Terry ---------------------------------------------------------------------------------
def _pair_table(outcomes: list[tuple[str, str, float]]):
    """models (sorted), and per unordered pair (i < j): i's wins (ties half) and the votes."""
    models = sorted({m for a, b, _ in outcomes for m in (a, b)})
    index = {m: k for k, m in enumerate(models)}
    wins: dict[tuple[int, int], float] = defaultdict(float)
    total: dict[tuple[int, int], float] = defaultdict(float)
    for a, b, s in outcomes:
        i, j = index[a], index[b]
        if i > j:
            i, j, s = j, i, 1.0 - s
        wins[(i, j)] += s
        total[(i, j)] += 1.0
    pairs = sorted(total)
    return (models, np.array([p[0] for p in pairs], dtype=np.int64), np.array([p[1] for p in pairs], dtype=np.int64),
            np.array([wins[p] for p in pairs]), np.array([total[p] for p in pairs]))


def _fit_theta(k: int, i: np.ndarray, j: np.ndarray, w: np.ndarray, n: np.ndarray, ridge: float,
               theta0: Optional[np.ndarray] = None) -> np.ndarray:
    """Maximise sum_pairs [w log s(ti - tj) + (n - w) log s(tj - ti)] - ridge/2 |t|^2 by Newton's
    method with a backtracking line search (the objective is strictly concave, so this converges
    from anywhere; a logistic regression fitted by IRLS takes the same steps).

    i, j: pair indices; w: i's wins (ties half); n: votes of the pair (all float weights)."""
    theta = np.zeros(k) if theta0 is None else theta0.copy()

    def objective(t):
        d = t[i] - t[j]
        # log s(d) = -log(1 + e^-d), computed stably with logaddexp
        return float(-(w * np.logaddexp(0.0, -d) + (n - w) * np.logaddexp(0.0, d)).sum() - 0.5 * ridge * t @ t)

    f = objective(theta)
    for _ in range(200):
        d = theta[i] - theta[j]
        p = 0.5 * (1.0 + np.tanh(0.5 * d))  # s(d), without overflow
        r = w - n * p  # d(loglik)/d(d) for each pair
        grad = np.bincount(i, r, k) - np.bincount(j, r, k) - ridge * theta
        c = n * p * (1.0 - p)  # curvature of each pair
        # -Hessian = the comparison graph's weighted Laplacian + ridge * I (positive definite)
        h = (np.bincount(i * k + i, c, k * k) + np.bincount(j * k + j, c, k * k)
             - np.bincount(i * k + j, c, k * k) - np.bincount(j * k + i, c, k * k)).reshape(k, k)
        h[np.diag_indices(k)] += ridge
        step = np.linalg.solve(h, grad)
        decrease = float(grad @ step)  # the Newton decrement squared: 2x the predicted gain
        if decrease < 1e-20:
            break
        t = 1.0
        while True:
            new = theta + t * step
            f_new = objective(new)
            if f_new >= f + 0.25 * t * decrease or t < 1e-10:  # Armijo condition
                break
            t *= 0.5
        theta, f = new, f_new
    return theta


def _to_ratings(models: list[str], theta: np.ndarray, scale: float, base: float, init_rating: float,
                anchor: Optional[str]) -> dict[str, float]:
    ratings = scale * theta / math.log(base) + init_rating
    if anchor is not None:
        if anchor not in models:
            raise LLMKitError(f"anchor model '{anchor}' has no votes (models: {', '.join(models)})")
        ratings = ratings + (init_rating - ratings[models.index(anchor)])
    return {m: float(r) for m, r in zip(models, ratings)}


def _check_scale(scale: float, base: float) -> None:
    if not scale > 0:
        raise LLMKitError(f"scale must be positive, got {scale}")
    if not base > 1:
        raise LLMKitError(f"base must be above 1, got {base}")


def bradley_terry(votes: Sequence[Mapping], scale: float = 400, base: float = 10, init_rating: float = 1000,
                  anchor: Optional[str] = None, ridge: float = RIDGE) -> dict[str, float]:
    """Maximum-likelihood Bradley-Terry ratings on an Elo-like scale, as Chatbot Arena's MLE Elo.

    LMSYS fit a logistic regression without intercept on rows with +ln(base) for model_a and
    -ln(base) for model_b (a tie: one row each way, half weight); the coefficients times `scale`
    plus `init_rating` are the ratings. This is the same likelihood maximised directly by
    Newton's method over theta_i (the log-odds strengths), R_i = scale * theta_i / ln(base) +
    init_rating.

    Identifiability: the likelihood depends on differences only, and a model that wins (or
    loses) every vote has its MLE at infinity. A tiny ridge, `ridge`/2 * |theta|^2, fixes both:
    the fit is unique and finite, and the ratings average `init_rating` (sklearn's unpenalised
    fit from zero lands on the same mean, since its gradient never leaves the zero-sum subspace).
    At the default 1e-3 (a Gaussian prior of sd ~30 log-odds) it moves ratings by under 0.01
    points (measured: 0.007 on 300 simulated votes of 5 models, 0.0006 on 4,000, against a
    ridge of 1e-9); a model with 10 wins out of 10 against one opponent sits ~1,360 points above
    it instead of at infinity. Models in separate groups that
    never met each other are each centred on `init_rating`: compare ratings within a group only.

    Args:
        votes: vote dicts with model_a, model_b and winner (a, b, tie, both_bad).
        scale: rating points per factor `base` in the odds (400: a 400-point gap is 10:1 odds).
        base: the odds base (10, as Elo).
        init_rating: the ratings' mean (or the anchor's rating).
        anchor: a model to pin at `init_rating` (LMSYS pins one model to keep the scale stable
            as models come and go); None: the ratings average `init_rating`.
        ridge: the L2 weight on theta (must be positive).

    Returns {model: rating} for the models that have votes.
    """
    _check_scale(scale, base)
    if not ridge > 0:
        raise LLMKitError(f"ridge must be positive (it keeps the fit unique and finite), got {ridge}")
    outcomes = _outcomes(votes)
    if not outcomes:
        return {}
    models, i, j, w, n = _pair_table(outcomes)
    theta = _fit_theta(len(models), i, j, w, n, ridge)
    return _to_ratings(models, theta, scale, base, init_rating, anchor)


def bootstrap(votes: Sequence[Mapping], rounds: int = 1000, seed: int = 0, scale: float = 400, base: float = 10,
              init_rating: float = 1000, anchor: Optional[str] = None, ridge: float = RIDGE,
              show_progress: bool = False) -> dict[str, tuple[float, float]]:
    """95% percentile intervals of the Bradley-Terry ratings from `rounds` bootstrap resamples
    of the votes (each round draws len(votes) votes with replacement and refits), as LMSYS's
    `get_bootstrap_result`.

    Resampling votes with replacement gives each distinct (pair, outcome) cell a multinomial
    count, so a round draws those counts directly (the same distribution, without building
    the resampled list). A model that drew no votes in a round has no rating in it; its interval
    comes from the rounds where it has one.

    Args:
        votes: vote dicts (model_a, model_b, winner).
        rounds: resamples (0: no intervals, an empty dict).
        seed: the random seed (the same seed gives the same intervals).
        scale: as bradley_terry.
        base: as bradley_terry.
        init_rating: as bradley_terry.
        anchor: as bradley_terry (a round without the anchor is skipped).
        ridge: as bradley_terry.
        show_progress: show a progress bar (llmkit.progress) over the rounds.

    Returns {model: (low, high)}.
    """
    _check_scale(scale, base)
    if rounds < 0:
        raise LLMKitError(f"rounds must be 0 or more, got {rounds}")
    outcomes = _outcomes(votes)
    if not outcomes or rounds == 0:
        return {}
    models = sorted({m for a, b, _ in outcomes for m in (a, b)})
    index = {m: k for k, m in enumerate(models)}
    cells: dict[tuple[int, int, float], int] = defaultdict(int)
    for a, b, s in outcomes:
        i, j = index[a], index[b]
        if i > j:
            i, j, s = j, i, 1.0 - s
        cells[(i, j, s)] += 1
    keys = sorted(cells)
    ci = np.array([c[0] for c in keys], dtype=np.int64)
    cj = np.array([c[1] for c in keys], dtype=np.int64)
    cs = np.array([c[2] for c in keys])
    prob = np.array([cells[c] for c in keys], dtype=float) / len(outcomes)
    rng = np.random.default_rng(seed)
    k = len(models)
    _, i, j, w, n = _pair_table(outcomes)
    start = _fit_theta(k, i, j, w, n, ridge)  # each round starts from the full fit: fewer Newton steps
    samples: list[list[float]] = [[] for _ in models]
    with progress(total=rounds, desc="bootstrap", unit="round", enabled=show_progress) as bar:
        for _ in range(rounds):
            counts = rng.multinomial(len(outcomes), prob).astype(float)
            keep = counts > 0
            # Merge the cells of each pair: i's wins (ties half) and the pair's votes.
            pair = ci[keep] * k + cj[keep]
            uniq, inv = np.unique(pair, return_inverse=True)
            w = np.bincount(inv, counts[keep] * cs[keep])
            n = np.bincount(inv, counts[keep])
            i, j = uniq // k, uniq % k
            present = np.zeros(k, dtype=bool)
            present[i] = present[j] = True
            if anchor is not None and anchor in index and not present[index[anchor]]:
                bar.update(1)
                continue
            theta = _fit_theta(k, i, j, w, n, ridge, theta0=np.where(present, start, 0.0))
            # A model absent from this round has no data: the ridge leaves it at theta 0, and it
            # does not move the others; it is left out of the round.
            names = [m for m, p in zip(models, present) if p]
            r = _to_ratings(names, theta[present], scale, base, init_rating, anchor)
            for m, value in r.items():
                samples[index[m]].append(value)
            bar.update(1)
    return {m: (float(np.percentile(s, 2.5)), float(np.percentile(s, 97.5)))
            for m, s in zip(models, samples) if s}


# --- online Elo, win rates -------------------------------------------------------------------------
def online_elo(votes: Sequence[Mapping], k: float = 4, scale: float = 400, base: float = 10,
               init_rating: float = 1000) -> dict[str, float]:
    """The classic Elo update applied to the votes in their order (LMSYS `compute_online_elo`):
    E_a = 1 / (1 + base^((R_b - R_a) / scale)), R_a += k (S_a - E_a), R_b += k (1 - S_a - E_b),
    with S_a = 1, 0 or 1/2 (tie, both bad). Order-dependent, unlike bradley_terry; a small k
    (LMSYS: 4) keeps it steady.

    Args:
        votes: vote dicts, oldest first.
        k: the update step, in rating points.
        scale: rating points per factor `base` in the odds.
        base: the odds base.
        init_rating: every model's starting rating.

    Returns {model: rating}.
    """
    _check_scale(scale, base)
    if k < 0:
        raise LLMKitError(f"k must be 0 or more, got {k}")
    rating: dict[str, float] = {}
    for a, b, s in _outcomes(votes):
        ra, rb = rating.setdefault(a, float(init_rating)), rating.setdefault(b, float(init_rating))
        ea = 1.0 / (1.0 + base ** ((rb - ra) / scale))
        eb = 1.0 / (1.0 + base ** ((ra - rb) / scale))
        rating[a] = ra + k * (s - ea)
        rating[b] = rb + k * (1.0 - s - eb)
    return rating


def battle_counts(votes: Sequence[Mapping]) -> dict[str, dict[str, int]]:
    """{a: {b: votes between a and b}} (either side, symmetric; pairs that never met are absent)."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for a, b, _ in _outcomes(votes):
        counts[a][b] += 1
        counts[b][a] += 1
    return {m: dict(row) for m, row in counts.items()}


def win_rates(votes: Sequence[Mapping], order: Optional[Sequence[str]] = None) -> tuple[list[str], np.ndarray]:
    """The pairwise win-rate matrix: matrix[r, c] = the share of the votes between models r and
    c that r won, ties counting half (so matrix[r, c] + matrix[c, r] = 1); NaN where the two
    never met and on the diagonal.

    Args:
        votes: vote dicts (model_a, model_b, winner).
        order: the models' order (default: strongest first, by bradley_terry; then by name).

    Returns (models, matrix) with matrix of shape (len(models), len(models)).
    """
    outcomes = _outcomes(votes)
    present = {m for a, b, _ in outcomes for m in (a, b)}
    if order is None:
        bt = bradley_terry(votes) if outcomes else {}
        models = sorted(present, key=lambda m: (-bt[m], m))
    else:
        models = list(order)
        missing = present - set(models)
        if missing:
            raise LLMKitError(f"order lacks {', '.join(sorted(missing))}")
    index = {m: k for k, m in enumerate(models)}
    won = np.zeros((len(models), len(models)))
    met = np.zeros((len(models), len(models)))
    for a, b, s in outcomes:
        i, j = index[a], index[b]
        won[i, j] += s
        won[j, i] += 1.0 - s
        met[i, j] += 1
        met[j, i] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = np.where(met > 0, won / np.maximum(met, 1), np.nan)
    return models, matrix


def heatmap_png(models: Sequence[str], matrix, counts, path: str | Path,
                title: str = "win rate (row beats column)") -> Path:
    """Draw the win-rate matrix as an annotated heatmap (rate and number of votes per cell) and
    write it as a PNG, atomically.

    Args:
        models: the rows' and columns' names (win_rates' order).
        matrix: the win-rate matrix (win_rates), NaN where two models never met.
        counts: votes per pair: battle_counts' {a: {b: n}}, or a matrix in the order of `models`.
        path: the PNG file to write.
        title: the figure's title.

    Returns the path.
    """
    # The object-oriented API with the Agg canvas, not pyplot: no global figure state, so the
    # arena server may render from several threads at once.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = list(models)
    m = np.asarray(matrix, dtype=float)
    k = len(models)
    if m.shape != (k, k):
        raise LLMKitError(f"the win-rate matrix is {m.shape}, expected {(k, k)} for {k} models")
    if isinstance(counts, Mapping):
        n = np.array([[counts.get(a, {}).get(b, 0) for b in models] for a in models], dtype=float)
    else:
        n = np.asarray(counts, dtype=float)
        if n.shape != (k, k):
            raise LLMKitError(f"the counts matrix is {n.shape}, expected {(k, k)} for {k} models")
    side = max(3.5, 1.0 + 0.9 * k)
    fig = Figure(figsize=(side + 1.5, side), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(m), cmap="RdBu", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="win rate")
    ax.set_xticks(range(k), labels=models, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(k), labels=models)
    ax.set_xlabel("opponent (column)")
    ax.set_ylabel("model (row)")
    ax.set_title(title)
    for r in range(k):
        for c in range(k):
            if np.isfinite(m[r, c]):
                dark = abs(m[r, c] - 0.5) > 0.3  # white text on the saturated ends of the colour map
                ax.text(c, r, f"{m[r, c]:.2f}\nn={int(n[r, c])}", ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    path = Path(path)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return path


# --- the leaderboard -------------------------------------------------------------------------------
def leaderboard(votes: Sequence[Mapping], rounds: int = 1000, seed: int = 0, k: float = 4.0,
                show_progress: bool = False) -> list[dict]:
    """One row per model, strongest first: Bradley-Terry rating, its bootstrap interval, online
    Elo and the model's record. What the arena's leaderboard page and `llmkit arena ratings` show.

    Args:
        votes: vote dicts in vote order (model_a, model_b, winner).
        rounds: bootstrap rounds for the intervals (0: ci_low and ci_high are None).
        seed: the bootstrap's seed.
        k: the online Elo's step.
        show_progress: show a progress bar over the bootstrap rounds.

    Returns [{"model", "rating", "ci_low", "ci_high", "elo", "battles", "wins", "ties", "losses",
    "win_rate"}], win_rate = (wins + ties / 2) / battles; "ties" counts both_bad too.
    """
    outcomes = _outcomes(votes)
    bt = bradley_terry(votes)
    ci = bootstrap(votes, rounds=rounds, seed=seed, show_progress=show_progress)
    elo = online_elo(votes, k=k)
    record = {m: [0, 0, 0] for m in bt}  # wins, ties, losses
    for a, b, s in outcomes:
        if s == 0.5:
            record[a][1] += 1
            record[b][1] += 1
        else:
            winner, loser = (a, b) if s == 1.0 else (b, a)
            record[winner][0] += 1
            record[loser][2] += 1
    rows = []
    for m in sorted(bt, key=lambda m: (-bt[m], m)):
        wins, ties, losses = record[m]
        battles = wins + ties + losses
        low, high = ci.get(m, (None, None))
        rows.append({"model": m, "rating": bt[m], "ci_low": low, "ci_high": high, "elo": elo[m], "battles": battles,
                     "wins": wins, "ties": ties, "losses": losses, "win_rate": (wins + 0.5 * ties) / battles})
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The leaderboard as a markdown table."""
    lines = ["| rank | model | rating | 95% CI | online Elo | battles | W / T / L | win rate |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for rank, r in enumerate(rows, 1):
        ci = "" if r["ci_low"] is None else f"{r['ci_low']:.0f} to {r['ci_high']:.0f}"
        lines.append(f"| {rank} | {r['model']} | {r['rating']:.1f} | {ci} | {r['elo']:.1f} | {r['battles']} | "
                     f"{r['wins']} / {r['ties']} / {r['losses']} | {r['win_rate']:.3f} |")
    return "\n".join(lines) + "\n"


def ratings(votes: str, out: Optional[str] = None, bootstrap_rounds: int = 1000, seed: int = 0,
            min_battles: int = 0, k: float = 4.0) -> dict:
    """Rate the arena's models from their votes: Bradley-Terry ratings with bootstrap intervals,
    online Elo, and the pairwise win rates.

    Prints the leaderboard as a markdown table and writes OUT/ratings.json, OUT/ratings.md and
    OUT/winrates.png (the win-rate heatmap).

    Args:
        votes: the votes: an arena's SQLite store (.db, read-only) or a JSONL file of vote
            records (an export, the LLM judge's votes).
        out: the folder to write (default: beside the votes file, "<name>-ratings").
        bootstrap_rounds: resamples for the 95% intervals (0: none).
        seed: the bootstrap's seed.
        min_battles: leave out models with fewer votes than this (with their votes), as the
            Chatbot Arena leaderboard does for models still new.
        k: the online Elo's step, in rating points.

    Returns {"votes", "models", "rows", "dropped", "settings"} (also written as ratings.json).
    """
    if bootstrap_rounds < 0:
        raise LLMKitError(f"bootstrap_rounds must be 0 or more, got {bootstrap_rounds}")
    if min_battles < 0:
        raise LLMKitError(f"min_battles must be 0 or more, got {min_battles}")
    if k < 0:
        raise LLMKitError(f"k must be 0 or more, got {k}")
    path = Path(votes)
    all_votes = load_votes(path)
    if not all_votes:
        raise LLMKitError(f"{path}: no votes to rate")
    counts: dict[str, int] = defaultdict(int)
    for v in all_votes:
        counts[v["model_a"]] += 1
        counts[v["model_b"]] += 1
    dropped = sorted(m for m, n in counts.items() if n < min_battles)
    kept = [v for v in all_votes if v["model_a"] not in dropped and v["model_b"] not in dropped]
    if not kept:
        raise LLMKitError(f"{path}: no model has {min_battles} votes or more ({len(all_votes)} votes in all)")
    rows = leaderboard(kept, rounds=bootstrap_rounds, seed=seed, k=k, show_progress=bootstrap_rounds >= 200)
    models, matrix = win_rates(kept, order=[r["model"] for r in rows])
    out_dir = Path(out) if out is not None else path.parent / f"{path.stem}-ratings"
    result = {"votes": len(kept), "models": models, "rows": rows, "dropped": dropped,
              "win_rates": [[None if math.isnan(x) else float(x) for x in row] for row in matrix],
              "settings": {"source": str(path), "bootstrap_rounds": bootstrap_rounds, "seed": seed,
                           "min_battles": min_battles, "k": k}}
    table = markdown_table(rows)
    note = f"{len(kept)} votes" + (f"; left out (under {min_battles} votes): {', '.join(dropped)}" if dropped else "")
    print(table, end="")
    print(note)
    try:
        atomic_write_json(out_dir / "ratings.json", result)
        atomic_write_text(out_dir / "ratings.md", f"# Arena ratings\n\n{note}\n\n{table}")
        heatmap_png(models, matrix, battle_counts(kept), out_dir / "winrates.png",
                    title=f"win rate (row beats column), {len(kept)} votes")
    except OSError as e:
        raise LLMKitError(f"cannot write to {out_dir}: {e.strerror or e}") from None
    print(f"wrote {out_dir}/ratings.json, ratings.md, winrates.png", file=sys.stderr)
    return result
