"""LLM-as-a-judge: an OpenAI-compatible chat endpoint grades responses.

Two modes, after Zheng et al. 2023 ("Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena"):

* single-answer grading: the judge scores each response 0-100 against the reference answer;
* pairwise comparison: the judge says which of two responses is better (or a tie). Position
  bias is real (the same paper, sec. 3.3), so the order alternates from one example to the
  next: half the time model 1 is "A", half the time "B".

The judge is any callable `messages -> reply text`; `OpenAIJudge` is the HTTP one (a hosted API,
or a second `llmkit serve`), fakes stand in for it in tests. Requests run on a thread pool
(they spend their time waiting on the network), each retried with exponential backoff on
connection errors, timeouts, HTTP 429 and 5xx. A reply that holds no usable score is a
*failure*: counted and reported, never silently dropped from the mean.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from llmkit.errors import LLMKitError

Messages = list[dict[str, str]]
JudgeFn = Callable[[Messages], str]

SYSTEM = "You are a careful, impartial grader of answers written by AI assistants."

SCORE_PROMPT = """Grade the response to the instruction below, using the reference answer as the standard.

### Instruction:
{instruction}
{input_block}
### Reference answer:
{reference}

### Response to grade:
{response}

Give a score from 0 to 100: 0 for a wrong, irrelevant or empty response, 100 for one as correct
and complete as the reference. Judge correctness first, then completeness and clarity.
Reply with the score only, an integer from 0 to 100."""

PAIR_PROMPT = """Compare two responses to the instruction below, using the reference answer as the standard.

### Instruction:
{instruction}
{input_block}
### Reference answer:
{reference}

### Response A:
{a}

### Response B:
{b}

Which response is better: more correct first, then more complete and clear? Their order says
nothing about their quality, and length alone is no merit.
Reply with exactly one word: A, B, or tie."""

PAIR_PROMPT_NO_REFERENCE = """Compare two responses to the instruction below.

### Instruction:
{instruction}
{input_block}
### Response A:
{a}

### Response B:
{b}

Which response follows the instruction better: more correct and helpful first, then more
complete and clear? Their order says nothing about their quality, and length alone is no merit.
Reply with exactly one word: A, B, or tie."""


def _input_block(inp: str) -> str:
    return f"\n### Input:\n{inp}\n" if inp and inp.strip() else ""


def score_messages(instruction: str, inp: str, reference: str, response: str) -> Messages:
    user = SCORE_PROMPT.format(instruction=instruction, input_block=_input_block(inp),
                               reference=reference, response=response)
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def pair_messages(instruction: str, inp: str, reference: Optional[str], a: str, b: str) -> Messages:
    """The pairwise prompt; `reference` None (or blank) asks without a reference answer, as
    AlpacaEval's judges compare two outputs on the instruction alone."""
    if reference is None or not reference.strip():
        user = PAIR_PROMPT_NO_REFERENCE.format(instruction=instruction, input_block=_input_block(inp), a=a, b=b)
    else:
        user = PAIR_PROMPT.format(instruction=instruction, input_block=_input_block(inp), reference=reference,
                                  a=a, b=b)
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


# --- parsing the judge's replies -----------------------------------------------------------------
_NUMBER = r"[-+]?\d+(?:\.\d+)?"
_SCORE_PATTERNS = [
    # "Score: 85", "score = 85", "Rating: **85**", "Final score is 85"
    re.compile(rf"\b(?:final\s+)?(?:score|rating|grade)\b[^\d\n+-]{{0,12}}({_NUMBER})", re.I),
    # "85/100", "85 / 100", "85 out of 100"
    re.compile(rf"({_NUMBER})\s*(?:/|out\s+of)\s*100\b", re.I),
]


def parse_score(reply: str) -> tuple[Optional[float], Optional[str]]:
    """(score, None) or (None, reason). Accepts "85", "Score: 85", "85/100", "**85**",
    '{"score": 85}' and the like; a number outside 0-100 or no clear number is a failure."""
    text = (reply or "").strip()
    if not text:
        return None, "empty reply"
    value: Optional[float] = None
    for obj in re.findall(r"\{[^{}]*\}", text):  # JSON, possibly inside a ```json fence
        try:
            data = json.loads(obj)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict):
            for key in ("score", "rating", "grade"):
                v = data.get(key)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    value = float(v)
                elif isinstance(v, str) and re.fullmatch(_NUMBER, v.strip()):
                    value = float(v)
                if value is not None:
                    break
        if value is not None:
            break
    if value is None:
        for pattern in _SCORE_PATTERNS:
            m = pattern.search(text)
            if m:
                scale = re.match(r"\s*(?:/|out\s+of)\s*(\d+)", text[m.end():], re.I)
                if scale and scale.group(1) != "100":  # "Score: 8/10" is on another scale
                    return None, "score not out of 100"
                value = float(m.group(1))
                break
    if value is None:
        # The whole reply is one number, perhaps in markdown bold or followed by a full stop.
        bare = re.sub(r"[*_`\"'\s]", "", text).rstrip(".")
        if re.fullmatch(_NUMBER, bare):
            value = float(bare)
    if value is None:
        return None, "no score in reply"
    if not 0 <= value <= 100 or math.isnan(value):
        return None, "score out of range"
    return value, None


_VERDICT_WORDS = {"a": "A", "b": "B", "tie": "tie", "c": "tie", "draw": "tie", "equal": "tie", "neither": "tie"}


def parse_verdict(reply: str) -> tuple[Optional[str], Optional[str]]:
    """("A" | "B" | "tie", None) or (None, reason). Accepts "A", "Response B", "[[A]]" (MT-bench),
    "Winner: B", "Tie." and '{"winner": "A"}'."""
    text = (reply or "").strip()
    if not text:
        return None, "empty reply"
    for obj in re.findall(r"\{[^{}]*\}", text):
        try:
            data = json.loads(obj)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict):
            for key in ("winner", "verdict", "better", "answer"):
                v = data.get(key)
                if isinstance(v, str) and v.strip().lower() in _VERDICT_WORDS:
                    return _VERDICT_WORDS[v.strip().lower()], None
    m = re.search(r"\[\[\s*(A|B|C|tie)\s*\]\]", text, re.I)
    if m:
        return _VERDICT_WORDS[m.group(1).lower()], None
    # Keywords in any case, but "A"/"B" upper case only: "the answer is a bit vague" is no verdict.
    m = re.search(r"(?i:\b(?:winner|verdict|better(?:\s+response)?|answer)\s*(?:is|:)\s*)\**\s*"
                  r"(?i:response\s+)?(A|B|(?i:tie))\b", text)
    if m:
        return _VERDICT_WORDS[m.group(1).lower()], None
    bare = re.sub(r"[*_`\"'.!\s]", " ", text).strip().lower()
    bare = re.sub(r"^(?:response|answer|assistant)\s+", "", bare)
    if bare in _VERDICT_WORDS and bare != "c":
        return _VERDICT_WORDS[bare], None
    if bare in ("both are equal", "it is a tie", "it's a tie", "a tie"):
        return "tie", None
    return None, "no verdict in reply"


# --- the HTTP judge ------------------------------------------------------------------------------
class JudgeUnavailable(Exception):
    """The judge could not be reached or kept failing after all retries."""


class JudgeRejected(Exception):
    """The judge refused the request (HTTP 4xx other than 429): retrying will not help."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def chat_completions_url(url: str) -> str:
    """The chat completions endpoint for a base URL: ".../v1" gets "/chat/completions", a bare
    host gets "/v1/chat/completions", a full endpoint URL is kept."""
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if re.search(r"/v\d+[a-z]*$", url):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


@dataclass
class OpenAIJudge:
    """`messages -> reply` over an OpenAI-compatible `/v1/chat/completions` endpoint (stdlib HTTP)."""

    url: str
    model: Optional[str] = None
    api_key: Optional[str] = None
    temperature: float = 0.0
    max_tokens: int = 128
    timeout: float = 120.0
    max_retries: int = 4
    backoff: float = 1.0  # seconds before the first retry, doubled each time (plus jitter)

    def __post_init__(self) -> None:
        if not re.match(r"^https?://", self.url):
            raise LLMKitError(f"--judge-url must start with http:// or https://, got '{self.url}'")
        self.endpoint = chat_completions_url(self.url)

    def _post(self, url: str, body: Optional[dict]) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, headers=headers, method="POST" if body is not None else "GET")
        last = ""
        for attempt in range(self.max_retries + 1):
            wait = self.backoff * 2**attempt * (1 + 0.25 * random.random())
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as e:
                detail = e.read().decode("utf-8", "replace")[:300].replace("\n", " ")
                if e.code != 429 and e.code < 500:
                    raise JudgeRejected(e.code, f"HTTP {e.code} from {url}: {detail}") from None
                last = f"HTTP {e.code}: {detail}"
                retry_after = e.headers.get("Retry-After") if e.headers else None
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    wait = min(float(retry_after), 60.0)
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last = str(getattr(e, "reason", e))
            except json.JSONDecodeError as e:
                last = f"not JSON ({e})"
            if attempt < self.max_retries:
                time.sleep(wait)
        raise JudgeUnavailable(f"{url}: {last} (after {self.max_retries + 1} attempts)")

    def check(self) -> None:
        """Ask the endpoint's /models before any work: a wrong URL or API key fails here, not
        after an hour of generation. Picks the model when none was given."""
        models_url = self.endpoint[: -len("/chat/completions")] + "/models"
        try:
            listing = self._post(models_url, None)
        except JudgeRejected as e:
            if e.status in (404, 405) and self.model:  # an endpoint without /models: fine if named
                return
            raise LLMKitError(f"the judge rejected the request: {e}") from None
        except JudgeUnavailable as e:
            raise LLMKitError(f"cannot reach the judge: {e}") from None
        if not self.model:
            try:
                self.model = str(listing["data"][0]["id"])
            except (KeyError, IndexError, TypeError):
                raise LLMKitError(f"no --judge-model given and {models_url} lists no models") from None

    def resolve_model(self) -> str:
        """The model to ask for: the one given, else the first the server lists at /models."""
        if not self.model:
            self.check()
        return self.model  # type: ignore[return-value]

    def __call__(self, messages: Messages) -> str:
        body = {"model": self.resolve_model(), "messages": messages, "temperature": self.temperature,
                "max_tokens": self.max_tokens}
        reply = self._post(self.endpoint, body)
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise JudgeUnavailable(f"{self.endpoint}: unexpected reply {str(reply)[:200]}") from None


# --- running the judge over a data set -----------------------------------------------------------
def _run(jobs: Sequence[Messages], judge: JudgeFn, concurrency: int, desc: str, progress: bool) -> list[dict]:
    """Send every job to the judge: [{"reply": str} or {"error": str}] in job order.

    The first job runs alone: a wrong URL, key or model name then fails once, with a clear
    error, instead of once per example after every retry.
    """
    from tqdm import tqdm

    if concurrency < 1:
        raise LLMKitError(f"judge concurrency must be >= 1, got {concurrency}")

    def one(messages: Messages) -> dict:
        try:
            return {"reply": judge(messages)}
        except JudgeRejected as e:
            raise LLMKitError(f"the judge rejected the request: {e}") from None
        except JudgeUnavailable as e:
            return {"error": str(e)}

    out: list[dict] = []
    with tqdm(total=len(jobs), desc=desc, unit="req", disable=None if progress else True) as bar:
        if jobs:
            first = one(jobs[0])
            if "error" in first:
                raise LLMKitError(f"cannot reach the judge: {first['error']}")
            out.append(first)
            bar.update(1)
        pool = ThreadPoolExecutor(max_workers=concurrency)
        try:
            for res in pool.map(one, jobs[1:]):
                out.append(res)
                bar.update(1)
        finally:  # on an error or Ctrl-C, drop the queued requests instead of sending them all
            pool.shutdown(wait=True, cancel_futures=True)
    return out


def judge_scores(examples: Sequence[dict], responses: Sequence[str], judge: JudgeFn, concurrency: int = 8,
                 progress: bool = True) -> list[dict]:
    """Score each response 0-100 against its example's reference ("output").

    Returns one record per example: {"score": float | None, "reply": str, "failure": reason | None}.
    """
    jobs = [score_messages(ex["instruction"], ex.get("input", ""), ex["output"], resp)
            for ex, resp in zip(examples, responses)]
    records = []
    for res in _run(jobs, judge, concurrency, "judging", progress):
        if "error" in res:
            records.append({"score": None, "reply": None, "failure": f"request failed: {res['error']}"})
        else:
            score, why = parse_score(res["reply"])
            records.append({"score": score, "reply": res["reply"], "failure": why})
    return records


def judge_pairs(examples: Sequence[dict], first: Sequence[str], second: Sequence[str], judge: JudgeFn,
                concurrency: int = 8, progress: bool = True) -> list[dict]:
    """Ask which of two responses is better. Returns per example {"winner": "first" | "second" |
    "tie" | None, "reply", "first_is": "A" | "B", "failure"}; the order alternates per example."""
    jobs, order = [], []
    for i, (ex, r1, r2) in enumerate(zip(examples, first, second)):
        swap = i % 2 == 1
        a, b = (r2, r1) if swap else (r1, r2)
        jobs.append(pair_messages(ex["instruction"], ex.get("input", ""), ex["output"], a, b))
        order.append("B" if swap else "A")
    records = []
    for res, first_is in zip(_run(jobs, judge, concurrency, "comparing", progress), order):
        if "error" in res:
            records.append({"winner": None, "reply": None, "first_is": first_is,
                            "failure": f"request failed: {res['error']}"})
            continue
        verdict, why = parse_verdict(res["reply"])
        if verdict is None or verdict == "tie":
            winner = verdict
        else:
            winner = "first" if verdict == first_is else "second"
        records.append({"winner": winner, "reply": res["reply"], "first_is": first_is, "failure": why})
    return records


# --- summaries -----------------------------------------------------------------------------------
DECILES = [f"{10 * i}-{10 * i + 9}" for i in range(9)] + ["90-100"]


def summarize_scores(records: Sequence[dict]) -> dict:
    """Mean (and its standard error), median, decile histogram, and failures by reason."""
    scores = [r["score"] for r in records if r.get("score") is not None]
    failures: dict[str, int] = {}
    for r in records:
        if r.get("score") is None:
            reason = (r.get("failure") or "no score").split(":")[0]
            failures[reason] = failures.get(reason, 0) + 1
    hist = {label: 0 for label in DECILES}
    for s in scores:
        hist[DECILES[min(int(s // 10), 9)]] += 1
    n = len(scores)
    mean = sum(scores) / n if n else float("nan")
    var = sum((s - mean) ** 2 for s in scores) / (n - 1) if n > 1 else float("nan")
    ordered = sorted(scores)
    median = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2 if n else float("nan")
    return {"examples": len(records), "scored": n, "failures": len(records) - n, "failure_reasons": failures,
            "mean": mean, "stderr": math.sqrt(var / n) if n > 1 else float("nan"), "median": median,
            "min": ordered[0] if n else float("nan"), "max": ordered[-1] if n else float("nan"), "histogram": hist}


def summarize_pairs(records: Sequence[dict], against: str) -> dict:
    """Wins / ties / losses of the first model, failures, and its win rate (ties count half)."""
    wins = sum(r["winner"] == "first" for r in records)
    ties = sum(r["winner"] == "tie" for r in records)
    losses = sum(r["winner"] == "second" for r in records)
    decided = wins + ties + losses
    return {"against": against, "examples": len(records), "wins": wins, "ties": ties, "losses": losses,
            "failures": len(records) - decided,
            "win_rate": (wins + 0.5 * ties) / decided if decided else float("nan")}
