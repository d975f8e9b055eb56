"""Pairwise judge evaluation: two models answer the same instructions, a judge picks the better
answer, and the report gives the win rate of A over B with a confidence interval and its
length-controlled counterpart.

    llmkit evaluate --pairwise MODEL_A MODEL_B --data FILE --judge-url URL [--both-orders]

* **Sides.** Each of the two specs is a model (generated with `generate_responses`) or an earlier
  run's responses file (a .jsonl with instruction / output / response records: compared without
  generating again). Examples are matched to a responses file by (instruction, input).
* **Order.** LLM judges favour a position (Zheng et al. 2023, "Judging LLM-as-a-Judge with
  MT-Bench and Chatbot Arena", sec. 3.3), so which model is shown as "Response A" is drawn per
  example from a seeded RNG, balanced (half the examples each way, shuffled), and recorded.
  `both_orders` judges every example twice, once each way: a verdict that holds in both orders
  counts, an inconsistent pair counts as a tie (the same paper's convention), and the report
  gives the consistency rate.
* **Win rate.** Per example the outcome is 1 (A better), 0.5 (tie) or 0 (B better); the win
  rate is their mean, with a 95% interval by the normal approximation on those outcomes
  (mean +- z * s / sqrt(n), s the sample standard deviation: the standard error AlpacaEval
  reports). Failures (no verdict in the reply, a request that kept failing) are counted and
  reported, never averaged in nor silently dropped.
* **Length control.** AlpacaEval 2.0 (Dubois et al. 2024, "Length-Controlled AlpacaEval",
  sec. 3; alpaca_eval/metrics/glm_winrate.py) fits a logistic regression of the judge's
  preference on tanh(length difference / its standard deviation) and predicts the win rate at
  zero length difference. Without AlpacaEval's per-instruction difficulty terms (fitted on
  their leaderboard's models) that prediction is sigmoid(intercept). Lengths are in characters,
  as AlpacaEval's `str.len()`.
* **Votes.** One vote per judged example in the arena's schema (`votes.jsonl`), so the same
  judgments feed `llmkit arena ratings`.
"""

from __future__ import annotations

import gc
import math
import random
import statistics
import time
import uuid
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from llmkit.errors import LLMKitError

VOTES_FILE = "votes.jsonl"
JUDGMENTS_FILE = "judgments.jsonl"
RESPONSES_FILES = ("responses_a.jsonl", "responses_b.jsonl")
RESPONSE_SUFFIXES = (".jsonl", ".ndjson")
LENGTH_UNIT = "characters"
CI_METHOD = "normal approximation on per-example outcomes (1 / 0.5 / 0)"
# L2 weight on the length slope only (the intercept is the estimate, so it stays unpenalised):
# it keeps the fit finite when the length difference separates the verdicts perfectly (a judge
# that always prefers the longer answer), where the maximum-likelihood slope is infinite.
# AlpacaEval regularises too (an L1 penalty chosen by cross-validation); on a few hundred
# examples that are not separable, 0.01 moves the fit by far less than its standard error.
LC_RIDGE = 1e-2


# --- the two sides ---------------------------------------------------------------------------------
def is_responses_file(spec: str) -> bool:
    """A spec names an earlier run's responses (a .jsonl file) rather than a model."""
    return Path(spec).suffix.lower() in RESPONSE_SUFFIXES


def _responses_name(path: Path, records: Sequence[dict]) -> str:
    """A responses file's model name: the "model" its records carry (written by a pairwise
    run), else its run folder for a responses.jsonl (eval/run1/responses.jsonl -> run1), else
    the file's stem."""
    names = {r.get("model") for r in records}
    if len(names) == 1 and isinstance(next(iter(names)), str) and next(iter(names)):
        return str(next(iter(names)))
    if path.stem == "responses" and path.parent.name:
        return path.parent.name
    return path.stem


def read_responses(path: str | Path) -> tuple[list[dict], list[str], str]:
    """(examples, responses, model name) of a responses file; reference "" means none."""
    from llmkit.data import read_records
    from llmkit.evaluate.generative import RESPONSES_FILE

    p = Path(path)
    if not p.is_file():
        raise LLMKitError(f"{path}: no such responses file")
    records, examples, responses = [], [], []
    for where, rec in read_records(p):
        if not isinstance(rec, dict) or not all(isinstance(rec.get(k), str) for k in ("instruction", "response")):
            raise LLMKitError(f"{where}: expected instruction and response fields (an earlier run's "
                              f"{RESPONSES_FILE} or {RESPONSES_FILES[0]})")
        records.append(rec)
        ref = rec.get("output")
        examples.append({"instruction": rec["instruction"], "input": rec.get("input") or "",
                         "output": ref if isinstance(ref, str) and ref.strip() else None})
        responses.append(rec["response"])
    if not examples:
        raise LLMKitError(f"{path}: no responses")
    return examples, responses, _responses_name(p, records)


def load_instructions(path: str | Path, limit: Optional[float] = None) -> list[dict]:
    """The instructions to answer: the records `--generate-data` reads (Alpaca or chat), where
    the reference is optional here: an Alpaca record without "output" or a chat record that
    ends with the user's turn has none (output None) and is judged without one."""
    from llmkit.data import read_records
    from llmkit.data.instruct import parse_record
    from llmkit.evaluate.generative import _apply_limit

    examples = []
    for where, rec in read_records(path):
        no_reference = False
        if isinstance(rec, dict) and "messages" not in rec and "instruction" in rec and rec.get("output") is None:
            rec, no_reference = {**rec, "output": ""}, True
        elif isinstance(rec, dict) and isinstance(rec.get("messages"), list) and rec["messages"] \
                and isinstance(rec["messages"][-1], dict) and rec["messages"][-1].get("role") == "user":
            rec, no_reference = {**rec, "messages": rec["messages"] + [{"role": "assistant", "content": ""}]}, True
        ex = parse_record(rec, where)  # the finetuning reader's checks and messages
        instruction, inp = ex.alpaca if ex.alpaca is not None else (ex.prompt, "")
        reference = None if no_reference or not ex.reference.strip() else ex.reference
        examples.append({"instruction": instruction, "input": inp, "output": reference,
                         "messages": [dict(m) for m in ex.context]})
    if not examples:
        raise LLMKitError(f"{path}: no records")
    return _apply_limit(examples, limit)


def match_responses(examples: Sequence[dict], other: Sequence[dict], responses: Sequence[str],
                    source: str) -> list[str]:
    """The responses of `source` to `examples`, matched by (instruction, input); duplicates are
    taken in file order. A missing one is an error: that file answered other instructions."""
    queue: dict[tuple[str, str], list[str]] = {}
    for ex, r in zip(other, responses):
        queue.setdefault((ex["instruction"], ex.get("input") or ""), []).append(r)
    out = []
    for i, ex in enumerate(examples):
        left = queue.get((ex["instruction"], ex.get("input") or ""))
        if not left:
            short = " ".join(ex["instruction"].split())[:60]
            raise LLMKitError(f"{source}: no response to example {i + 1} ('{short}'): "
                              f"it holds responses to other instructions")
        out.append(left.pop(0))
    return out


def model_name(spec: str) -> str:
    return Path(str(spec).rstrip("/")).name or str(spec)


def check_model_spec(spec: str) -> None:
    """A model spec that cannot load fails now, before the other model spends its time
    generating: a local directory must hold a (decoder) model, else it must look like a hub id."""
    from llmkit.checkpoint import _REPO_ID, read_config, resolve_model_dir

    p = Path(spec).expanduser()
    if p.exists():
        d = resolve_model_dir(spec)
        if (d / "adapter_config.json").exists() or (d / "adapter.json").exists():
            return  # a LoRA checkpoint: its base is resolved when it loads
        cfg, _ = read_config(d)
        if cfg.is_seq2seq:
            raise LLMKitError(f"{spec}: an encoder-decoder model; --pairwise compares instruction-following "
                              f"(decoder) models")
    elif not (_REPO_ID.match(spec) and not spec.startswith((".", "/"))):
        raise LLMKitError(f"{spec}: no such model directory or responses file (and not a Hugging Face repo id "
                          f"like 'org/name')")


def check_arguments(specs: Optional[Sequence[str]], data: Optional[str], judge_url: Optional[str],
                    prompt_style: str, max_new_tokens: int, judge_concurrency: int) -> None:
    """Everything `--pairwise` needs that can be checked without loading a model."""
    specs = list(specs or [])
    if len(specs) != 2:
        raise LLMKitError(f"--pairwise takes exactly two models (or responses files), got {len(specs)}"
                          + (f": {' '.join(specs)}" if specs else ""))
    if not judge_url:
        raise LLMKitError("--pairwise needs a judge: give --judge-url (an OpenAI-compatible endpoint)")
    if judge_concurrency < 1:
        raise LLMKitError(f"--judge-concurrency must be >= 1, got {judge_concurrency}")
    files = [is_responses_file(s) for s in specs]
    if not data and not all(files):
        raise LLMKitError("--pairwise with a model needs --data, the instructions to answer "
                          "(a JSON/JSONL file of Alpaca or chat records)")
    if data:
        load_instructions(data)
    for spec, is_file in zip(specs, files):
        if is_file:
            read_responses(spec)
        else:
            check_model_spec(spec)
    if not all(files):
        if max_new_tokens < 1:
            raise LLMKitError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
        if prompt_style not in ("alpaca", "chat", "auto"):
            from llmkit.prompts import PromptStyle

            PromptStyle.from_name(prompt_style)
    names = side_names(specs)
    if names[0] == names[1]:
        raise LLMKitError(f"--pairwise got the same model twice ({specs[0]}): compare two different ones")


def side_names(specs: Sequence[str]) -> list[str]:
    """Names for the two sides (the votes' model_a / model_b): the folder or file names, or the
    specs as given where those are equal."""
    names = [read_responses(s)[2] if is_responses_file(s) and Path(s).is_file() else model_name(s) for s in specs]
    if names[0] == names[1]:
        names = [str(s) for s in specs]
    return names


def _generate(spec: str, examples: list[dict], prompt_style: str, max_new_tokens: int, batch_size: int,
              device: str, dtype: Optional[str], progress: bool) -> list[str]:
    from llmkit.checkpoint import load_model
    from llmkit.evaluate.generative import generate_responses

    loaded = load_model(spec, device=device, dtype=dtype)
    model = loaded.model
    try:
        print(f"generating {len(examples)} responses with {spec}")
        return generate_responses(model, loaded.tokenizer, examples, prompt_style, max_new_tokens, batch_size,
                                  progress)
    finally:  # one model in memory at a time
        del model, loaded
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# --- order and judging -----------------------------------------------------------------------------
def assign_orders(n: int, seed: int) -> list[bool]:
    """Per example, True when model A is shown first ("Response A"): exactly half the examples
    each way (the odd one by a coin), in an order shuffled by `seed` (Python's Mersenne
    Twister: the same list on every platform)."""
    rng = random.Random(seed)
    flags = [True] * (n // 2) + [False] * (n // 2)
    if n % 2:
        flags.append(rng.random() < 0.5)
    rng.shuffle(flags)
    return flags


def _side(verdict: Optional[str], a_first: bool) -> Optional[str]:
    """A verdict on positions ("A", "B", "tie") as the model that won: "a", "b" or "tie"."""
    if verdict is None or verdict == "tie":
        return verdict
    return "a" if (verdict == "A") == a_first else "b"


def combine(first: Optional[str], second: Optional[str]) -> tuple[Optional[str], Optional[bool]]:
    """(winner, consistent) from the model-winners of the two orders ("a" / "b" / "tie", None
    for a failure). Zheng et al. 2023 (sec. 3.3): a win counts only when the same answer wins in
    both orders; otherwise (a win and a loss, or a win and a tie) it is a tie. A failure in
    either order leaves the example undecided (None), counted as a failure."""
    if first is None or second is None:
        return None, None
    if first == second:
        return first, True
    return "tie", False


def judge_pairwise(examples: Sequence[dict], responses_a: Sequence[str], responses_b: Sequence[str], judge,
                   seed: int = 1234, both_orders: bool = False, judge_reference: bool = True,
                   concurrency: int = 8, progress: bool = True) -> list[dict]:
    """Ask the judge which of the two responses is better, per example.

    Returns one record per example: {"order": "AB" (model A shown first) | "BA", "reference":
    whether the judge saw one, "judgments": [{"order", "reply", "verdict" ("A" / "B" / "tie" on
    positions, or None), "winner" ("a" / "b" / "tie" on models, or None), "failure"}, ...] (two
    with both_orders), "winner": "a" | "b" | "tie" | None, "consistent": bool | None, "failure"}.
    """
    from llmkit.evaluate.judge import _run, pair_messages, parse_verdict

    if not (len(examples) == len(responses_a) == len(responses_b)):
        raise LLMKitError(f"{len(examples)} examples but {len(responses_a)} and {len(responses_b)} responses")
    a_first = assign_orders(len(examples), seed)
    jobs, plan = [], []
    for i, (ex, ra, rb) in enumerate(zip(examples, responses_a, responses_b)):
        reference = ex.get("output") if judge_reference else None
        orders = [a_first[i], not a_first[i]] if both_orders else [a_first[i]]
        for af in orders:
            first, second = (ra, rb) if af else (rb, ra)
            jobs.append(pair_messages(ex["instruction"], ex.get("input", ""), reference, first, second))
            plan.append((i, af))
    results = _run(jobs, judge, concurrency, "judging pairs", progress)
    records: list[dict] = [{"order": "AB" if a_first[i] else "BA",
                            "reference": bool(judge_reference and (ex.get("output") or "").strip()),
                            "judgments": []} for i, ex in enumerate(examples)]
    for (i, af), res in zip(plan, results):
        if "error" in res:
            verdict, reply, failure = None, None, f"request failed: {res['error']}"
        else:
            reply = res["reply"]
            verdict, failure = parse_verdict(reply)
        records[i]["judgments"].append({"order": "AB" if af else "BA", "reply": reply, "verdict": verdict,
                                        "winner": _side(verdict, af), "failure": failure})
    for rec in records:
        js = rec["judgments"]
        if both_orders:
            rec["winner"], rec["consistent"] = combine(js[0]["winner"], js[1]["winner"])
        else:
            rec["winner"], rec["consistent"] = js[0]["winner"], None
        rec["failure"] = None if rec["winner"] is not None else "; ".join(j["failure"] for j in js if j["failure"])
    return records


# --- statistics ----------------------------------------------------------------------------------
def win_rate_interval(outcomes: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean of per-example outcomes (1 / 0.5 / 0) with a normal-approximation interval:
    mean +- z * s / sqrt(n), s the sample standard deviation (n - 1), clipped to [0, 1]."""
    y = np.asarray(outcomes, dtype=np.float64)
    n = len(y)
    if n == 0:
        return {"win_rate": float("nan"), "stderr": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    mean = float(y.mean())
    if n < 2:
        return {"win_rate": mean, "stderr": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    se = float(y.std(ddof=1) / math.sqrt(n))
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    return {"win_rate": mean, "stderr": se, "ci_low": max(0.0, mean - z * se), "ci_high": min(1.0, mean + z * se)}


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))  # stable for any z


def lc_objective(theta: Sequence[float], x: np.ndarray, y: np.ndarray, ridge: float = LC_RIDGE) -> float:
    """The penalised log-loss the length-controlled fit minimises: sum over examples of
    log(1 + e^z) - y z with z = intercept + slope * x (y may be 0.5: a tie is a fractional
    target, as AlpacaEval fits its "preference" in [0, 1]), plus ridge / 2 * slope^2."""
    z = theta[0] + theta[1] * np.asarray(x, dtype=np.float64)
    return float(np.sum(np.logaddexp(0.0, z) - np.asarray(y) * z) + 0.5 * ridge * theta[1] ** 2)


def fit_length_logit(x: Sequence[float], y: Sequence[float], ridge: float = LC_RIDGE, tol: float = 1e-10,
                     max_iter: int = 100) -> tuple[np.ndarray, np.ndarray, int]:
    """(theta = [intercept, slope], covariance, iterations): Newton's method on `lc_objective`
    (convex), with step halving so that every step lowers it. The covariance is the inverse
    Hessian at the optimum (for a Wald interval)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    X = np.stack([np.ones_like(x), x], axis=1)  # (n, 2)
    penalty = np.diag([0.0, ridge])
    p0 = min(max(float(y.mean()), 1e-6), 1 - 1e-6)
    theta = np.array([math.log(p0 / (1 - p0)), 0.0])  # the intercept-only fit: a close start
    loss = lc_objective(theta, x, y, ridge)
    for it in range(1, max_iter + 1):
        p = _sigmoid(X @ theta)
        grad = X.T @ (p - y) + penalty @ theta
        hess = (X * (p * (1 - p))[:, None]).T @ X + penalty
        if np.max(np.abs(grad)) < tol * max(1.0, len(y)):
            return theta, np.linalg.inv(hess), it - 1
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while True:
            candidate = theta - t * step
            new = lc_objective(candidate, x, y, ridge)
            if new <= loss + 1e-12 * abs(loss) or t < 1e-8:
                break
            t *= 0.5
        theta, loss = candidate, new
    p = _sigmoid(X @ theta)
    hess = (X * (p * (1 - p))[:, None]).T @ X + penalty
    return theta, np.linalg.inv(hess), max_iter


def length_features(len_a: Sequence[float], len_b: Sequence[float]) -> tuple[np.ndarray, float]:
    """(tanh(delta / std(delta)), std(delta)), delta = len_a - len_b; std with n - 1, as pandas'
    `.std()` in AlpacaEval. All-equal differences carry no length information: x = 0."""
    delta = np.asarray(len_a, dtype=np.float64) - np.asarray(len_b, dtype=np.float64)
    sd = float(delta.std(ddof=1)) if len(delta) > 1 else 0.0
    if not sd > 0:
        return np.zeros_like(delta), sd
    return np.tanh(delta / sd), sd


def length_controlled(outcomes: Sequence[float], len_a: Sequence[float], len_b: Sequence[float],
                      ridge: float = LC_RIDGE, confidence: float = 0.95) -> dict:
    """AlpacaEval 2.0's length-controlled win rate of A over B: fit P(A preferred) =
    sigmoid(intercept + slope * tanh(delta / std(delta))), report sigmoid(intercept), the
    prediction at zero length difference, with a Wald interval on the intercept."""
    y = np.asarray(outcomes, dtype=np.float64)
    nan = float("nan")
    out = {"lc_win_rate": nan, "lc_ci_low": nan, "lc_ci_high": nan, "intercept": nan, "slope": nan,
           "std_length_difference": nan, "ridge": ridge, "iterations": 0}
    if len(y) < 2:
        return out
    x, sd = length_features(len_a, len_b)
    out["std_length_difference"] = sd
    if np.all(y == y[0]) and y[0] in (0.0, 1.0):  # the maximum-likelihood intercept is +-infinity
        return {**out, "lc_win_rate": float(y[0]), "lc_ci_low": float(y[0]), "lc_ci_high": float(y[0])}
    theta, cov, iterations = fit_length_logit(x, y, ridge)
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    se = math.sqrt(max(float(cov[0, 0]), 0.0))
    return {**out, "lc_win_rate": float(_sigmoid(theta[0])), "lc_ci_low": float(_sigmoid(theta[0] - z * se)),
            "lc_ci_high": float(_sigmoid(theta[0] + z * se)), "intercept": float(theta[0]),
            "slope": float(theta[1]), "iterations": iterations}


_SCORE = {"a": 1.0, "tie": 0.5, "b": 0.0}


def summarize(records: Sequence[dict], responses_a: Sequence[str], responses_b: Sequence[str],
              names: Sequence[str]) -> dict:
    """The report's numbers: wins / ties / losses of A, failures by reason, the win rate with its
    interval, the length-controlled win rate, mean lengths, position statistics."""
    decided = [i for i, r in enumerate(records) if r["winner"] is not None]
    outcomes = [_SCORE[records[i]["winner"]] for i in decided]
    failures: dict[str, int] = {}
    for r in records:
        if r["winner"] is None:
            for reason in (r["failure"] or "no verdict").split("; "):
                key = reason.split(":")[0]
                failures[key] = failures.get(key, 0) + 1
    verdicts = [j["verdict"] for r in records for j in r["judgments"] if j["verdict"] in ("A", "B")]
    len_a = [len(s) for s in responses_a]
    len_b = [len(s) for s in responses_b]
    section: dict = {
        "model_a": names[0], "model_b": names[1], "examples": len(records),
        "wins": sum(records[i]["winner"] == "a" for i in decided),
        "ties": sum(records[i]["winner"] == "tie" for i in decided),
        "losses": sum(records[i]["winner"] == "b" for i in decided),
        "failures": len(records) - len(decided), "failure_reasons": failures,
        **win_rate_interval(outcomes), "ci_method": CI_METHOD,
        "mean_length_a": float(np.mean(len_a)) if len_a else float("nan"),
        "mean_length_b": float(np.mean(len_b)) if len_b else float("nan"), "length_unit": LENGTH_UNIT,
        # Of the verdicts that named a position, the share that named the first ("Response A"):
        # 0.5 for a judge without position bias (on balanced orders).
        "first_position_share": sum(v == "A" for v in verdicts) / len(verdicts) if verdicts else float("nan"),
        "shown_first": {"a": sum(r["order"] == "AB" for r in records), "b": sum(r["order"] == "BA" for r in records)},
        "judged_with_reference": sum(r["reference"] for r in records),
    }
    lc = length_controlled(outcomes, [len_a[i] for i in decided], [len_b[i] for i in decided])
    section["lc_win_rate"] = lc.pop("lc_win_rate")
    section["lc_ci_low"], section["lc_ci_high"] = lc.pop("lc_ci_low"), lc.pop("lc_ci_high")
    section["length_model"] = lc
    if records and len(records[0]["judgments"]) == 2:
        pairs = [r for r in records if r["consistent"] is not None]
        consistent = sum(bool(r["consistent"]) for r in pairs)
        section["both_orders"] = True
        section["consistency"] = {"pairs": len(pairs), "consistent": consistent,
                                  "rate": consistent / len(pairs) if pairs else float("nan")}
    else:
        section["both_orders"] = False
    return section


# --- votes ---------------------------------------------------------------------------------------
def to_votes(examples: Sequence[dict], records: Sequence[dict], responses_a: Sequence[str],
             responses_b: Sequence[str], names: Sequence[str], run_id: Optional[str] = None,
             judge_name: Optional[str] = None, when: Optional[float] = None) -> list[dict]:
    """One arena vote per decided example (a failure has no winner to vote for), with model_a /
    model_b as the judge saw them in the (first) order, and a battle id unique to this run and
    example (so votes of several runs can go into one store)."""
    from llmkit.arena.votes import validate_vote
    from llmkit.data.instruct import alpaca_user_message

    run_id = run_id or uuid.uuid4().hex[:12]
    when = time.time() if when is None else when
    votes = []
    for i, (ex, rec, ra, rb) in enumerate(zip(examples, records, responses_a, responses_b)):
        if rec["winner"] is None:
            continue
        a_first = rec["order"] == "AB"
        shown = (names[0], names[1], ra, rb) if a_first else (names[1], names[0], rb, ra)
        winner = rec["winner"] if rec["winner"] == "tie" or a_first else {"a": "b", "b": "a"}[rec["winner"]]
        vote = {"time": when, "model_a": shown[0], "model_b": shown[1], "winner": winner,
                "prompt": alpaca_user_message(ex["instruction"], ex.get("input") or ""),
                "reply_a": shown[2], "reply_b": shown[3], "battle": f"pairwise-{run_id}-{i + 1}",
                "source": "judge", "example": i + 1, "judge": judge_name}
        if rec["consistent"] is not None:
            vote["consistent"] = rec["consistent"]
        votes.append(validate_vote(vote, max_chars=None))
    return votes


# --- the whole run -------------------------------------------------------------------------------
def run_pairwise(specs: Sequence[str], data: Optional[str], judge, *, prompt_style: str = "alpaca",
                 max_new_tokens: int = 256, batch_size: int = 16, limit: Optional[float] = None, seed: int = 1234,
                 both_orders: bool = False, judge_reference: bool = True, judge_concurrency: int = 8,
                 device: str = "auto", dtype: Optional[str] = None, out: Optional[str] = None,
                 progress: bool = True) -> dict:
    """Get both sides' responses (generated or read), judge them, and return the "pairwise"
    section; with `out`, write responses_a.jsonl, responses_b.jsonl, judgments.jsonl and
    votes.jsonl there."""
    from llmkit.evaluate.generative import _apply_limit, write_jsonl

    specs = list(specs)
    names = side_names(specs)
    files = [read_responses(s) if is_responses_file(s) else None for s in specs]
    if data:
        examples = load_instructions(data, limit)
        source = str(data)
    else:  # two responses files: the first one's instructions (and references)
        examples = _apply_limit(list(files[0][0]), limit)  # type: ignore[index]
        source = str(specs[0])
    sides: list[list[str]] = []
    for spec, f in zip(specs, files):
        if f is not None:
            sides.append(match_responses(examples, f[0], f[1], spec))
        else:
            sides.append(_generate(spec, examples, prompt_style, max_new_tokens, batch_size, device, dtype,
                                   progress))
    ra, rb = sides
    records = judge_pairwise(examples, ra, rb, judge, seed=seed, both_orders=both_orders,
                             judge_reference=judge_reference, concurrency=judge_concurrency, progress=progress)
    section = {"data": source, "spec_a": str(specs[0]), "spec_b": str(specs[1]),
               **summarize(records, ra, rb, names), "seed": seed, "judge_reference": judge_reference}
    if out:
        outdir = Path(out)
        outdir.mkdir(parents=True, exist_ok=True)
        for path, name, responses in zip(RESPONSES_FILES, names, sides):
            # The responses.jsonl schema (plus the model's name): a later run can take this file
            # as one side of another comparison.
            write_jsonl(outdir / path, [{"instruction": ex["instruction"], "input": ex.get("input") or "",
                                         "output": ex.get("output") or "", "response": r, "model": name}
                                        for ex, r in zip(examples, responses)])
        judged = [{"example": i + 1, "instruction": ex["instruction"], "input": ex.get("input") or "",
                   "reference": ex.get("output"), "response_a": a, "response_b": b, "model_a": names[0],
                   "model_b": names[1], "order": rec["order"], "judged_with_reference": rec["reference"],
                   "judgments": rec["judgments"], "consistent": rec["consistent"], "failure": rec["failure"],
                   "winner": {"a": names[0], "b": names[1], "tie": "tie", None: None}[rec["winner"]]}
                  for i, (ex, a, b, rec) in enumerate(zip(examples, ra, rb, records))]
        write_jsonl(outdir / JUDGMENTS_FILE, judged)
        votes = to_votes(examples, records, ra, rb, names, judge_name=getattr(judge, "model", None))
        write_jsonl(outdir / VOTES_FILE, votes)
        section["votes"] = str(outdir / VOTES_FILE)
    return section


def pairwise_markdown(section: dict) -> str:
    """The pairwise section as a few lines of Markdown (results.md and the terminal)."""
    a, b = section["model_a"], section["model_b"]

    def pct(v):
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"

    def num(v):
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.0f}"

    orders = "in both orders" if section.get("both_orders") else "in one order"
    lines = [f"## Pairwise: {a} (A) vs {b} (B)", "",
             f"{section['examples']} examples, judged {orders}"
             f" (A shown first in {section['shown_first']['a']}), {section['judged_with_reference']} with a "
             f"reference answer.", "",
             f"- A wins / ties / B wins: {section['wins']} / {section['ties']} / {section['losses']}; "
             f"failures: {section['failures']}"
             + (" (" + ", ".join(f"{k}: {v}" for k, v in section["failure_reasons"].items()) + ")"
                if section["failure_reasons"] else ""),
             f"- win rate of A (ties count half): {pct(section['win_rate'])} "
             f"(95% CI {pct(section['ci_low'])} to {pct(section['ci_high'])}, {section['ci_method']})",
             f"- length-controlled win rate (AlpacaEval 2.0): {pct(section['lc_win_rate'])} "
             f"(95% CI {pct(section['lc_ci_low'])} to {pct(section['lc_ci_high'])})",
             f"- mean length, in {section['length_unit']}: A {num(section['mean_length_a'])}, "
             f"B {num(section['mean_length_b'])}",
             f"- judge's verdicts naming the first position: {pct(section['first_position_share'])}"]
    cons = section.get("consistency")
    if cons:
        lines.append(f"- consistent in both orders: {cons['consistent']} of {cons['pairs']} "
                     f"({pct(cons['rate'])}); inconsistent pairs count as ties")
    return "\n".join(lines)
