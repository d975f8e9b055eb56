"""The serving engine: one thread owns the model and decodes every request in one batch.

Continuous batching (Yu et al., "Orca", OSDI 2022): the engine keeps a `DecodeBatch` with a KV
cache of `max_batch_size` rows. Between two decode steps it drops finished and cancelled
requests and prefills waiting ones into the free rows; each step then decodes one token for
every running request at its own position. A new request never waits for the batch to drain,
and a step costs about the same for 16 rows as for 1 while decoding is bound by reading the
weights, hence the throughput gain.

HTTP handlers run on the asyncio loop; they `submit` an `EngineRequest` and read its events
from an asyncio queue that the engine thread feeds through `loop.call_soon_threadsafe`.

Other work on the model (embedding a batch of texts) is a job: `call(fn)` queues it and
returns a `concurrent.futures.Future`; the engine thread runs one job between two decode
steps, so the model has one owner, decoding goes on while a large embedding request is served
in pieces, and the event loop never computes. A model that cannot generate (an encoder, a
classifier) gets an engine with no decode batch that only runs jobs.
"""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
import traceback
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Optional

from llmkit.errors import LLMKitError
from llmkit.generate import Completion, DecodeBatch, Sequence, TokenLogprob


@dataclass
class TokenEvent:
    text: str  # text let out by this token ("" while held back or a special token)
    token_id: int
    logprob: Optional[TokenLogprob]


@dataclass
class DoneEvent:
    completion: Completion


@dataclass
class ErrorEvent:
    message: str
    status: int = 500  # 400 when the request itself was at fault


class EngineRequest:
    """A sequence handed to the engine, and the asyncio queue its events arrive on, as
    (request, event) pairs: several requests (the prompts of one API call) may share a queue."""

    def __init__(self, seq: Sequence, loop: asyncio.AbstractEventLoop, events: Optional[asyncio.Queue] = None,
                 index: int = 0, stream: bool = True):
        self.seq = seq
        self.loop = loop
        self.events: asyncio.Queue = events if events is not None else asyncio.Queue()
        self.index = index  # position among the prompts of its API call
        # Without streaming only the final event is sent: waking the event loop for every
        # token of every row would compete with the engine thread for the GIL.
        self.stream = stream

    def emit(self, event) -> None:  # engine thread -> event loop
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (self, event))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def cancel(self) -> None:
        """Stop generating (client gone); the engine frees the row before its next step."""
        self.seq.cancelled = True


_WAKE = object()  # put on the request queue so that an idle engine sees a new job at once


def can_generate(model) -> bool:
    """Whether `model` decodes text: causal, with its language-model head (not an encoder, not a
    classifier whose head replaced it)."""
    from llmkit.model import TaskHead

    return bool(model.cfg.causal) and not isinstance(model.lm_head, TaskHead)


class Engine:
    """Owns the model and its KV cache; serves `EngineRequest`s and jobs from one thread.

    `generate=False` (default: whether the model can generate): no KV cache, jobs only."""

    def __init__(self, model, max_batch_size: int = 16, max_len: Optional[int] = None,
                 generate: Optional[bool] = None):
        if max_batch_size < 1:
            raise LLMKitError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model = model
        self.generates = can_generate(model) if generate is None else generate
        self.batch: Optional[DecodeBatch] = DecodeBatch(model, max_batch_size, max_len) if self.generates else None
        self.max_len = self.batch.max_len if self.batch is not None else min(max_len or model.max_seq_len,
                                                                             model.max_seq_len)
        self._jobs: queue.Queue[tuple[Callable[[], Any], Future]] = queue.Queue()
        self._pending: queue.Queue[EngineRequest] = queue.Queue()
        self._running: dict[Sequence, EngineRequest] = {}
        self._lock = threading.Lock()
        self._n_pending = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.stats = {"completed": 0, "cancelled": 0, "failed": 0, "steps": 0, "max_rows": 0, "jobs": 0}

    # --- control (any thread) -----------------------------------------------------------------
    def start(self) -> None:
        """Run the engine in a background thread (tests, embedding in another app).

        `llmkit serve` runs it in the main thread instead (`run`): bfloat16 matrix products
        were measured ~1.7x slower in a thread other than the one that first ran torch
        operations (the model was loaded there), float32 ones equally fast.
        """
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self.run, name="llmkit-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Ask the loop to end (from any thread); joins the background thread if there is one."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
            self._thread = None

    def submit(self, request: EngineRequest) -> None:
        """Queue a request; raises LLMKitError when it can never run (prompt too long...)."""
        if self.batch is None:
            raise LLMKitError("this model cannot generate text")
        self.batch.check(request.seq)
        with self._lock:
            self._n_pending += 1
        self._pending.put(request)

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run `fn()` in the engine thread, between two decode steps; its result (or exception)
        arrives on the returned Future. A job cancelled before it starts does not run."""
        fut: Future = Future()
        self._jobs.put((fn, fut))
        if self.batch is not None:
            self._pending.put(_WAKE)  # type: ignore[arg-type]
        return fut

    @property
    def active_count(self) -> int:
        """Requests waiting or running (cancelled ones included until the engine drops them)."""
        with self._lock:
            return self._n_pending + len(self._running)

    # --- the engine thread --------------------------------------------------------------------
    def run(self) -> None:
        """Serve requests in the calling thread until `stop()`."""
        self._stop.clear()
        while not self._stop.is_set():
            try:
                if self.batch is None:
                    self._run_job(block=True)
                    continue
                ran = self._run_job(block=False)  # one job per step: decoding goes on meanwhile
                self._drop_cancelled()
                self._admit(block=not self._running and not ran and self._jobs.empty())
                if self._running:
                    self._step()
            except Exception:  # a bug, not a bad request: fail what is running, keep serving
                traceback.print_exc(file=sys.stderr)
                self._fail_all("internal error while generating")

    def _run_job(self, block: bool) -> bool:
        """Run the next job, if any (waiting briefly for one when `block`): whether one ran."""
        try:
            fn, fut = self._jobs.get(timeout=0.05) if block else self._jobs.get_nowait()
        except queue.Empty:
            return False
        if not fut.set_running_or_notify_cancel():  # cancelled while queued: the client left
            return False
        self.stats["jobs"] += 1
        try:
            fut.set_result(fn())
        except Exception as e:  # the job's own error, for its caller; the engine goes on
            fut.set_exception(e)
        except BaseException as e:  # Ctrl-C (serve runs the engine in the main thread): stop
            fut.set_exception(e)
            raise
        return True

    def _take_pending(self, block: bool) -> Optional[EngineRequest]:
        while True:
            try:
                req = self._pending.get(timeout=0.05) if block else self._pending.get_nowait()
            except queue.Empty:
                return None
            if req is not _WAKE:
                break
            if not self._jobs.empty():
                return None  # a job waits: back to the loop, which runs it
        with self._lock:
            self._n_pending -= 1
        return req

    def _admit(self, block: bool) -> None:
        """Prefill waiting requests into free rows (waits briefly for one when idle)."""
        new: list[EngineRequest] = []
        while self.batch.free > len(new):
            req = self._take_pending(block=block and not new)
            if req is None:
                break
            if req.seq.cancelled:
                self.stats["cancelled"] += 1
                continue
            new.append(req)
        if not new:
            return
        try:
            self.batch.add([r.seq for r in new])
        except Exception as e:  # e.g. out of memory for a huge prompt: only these requests fail
            if not isinstance(e, LLMKitError):
                traceback.print_exc(file=sys.stderr)
            for r in new:  # `add` joins sequences to the batch only once all prefills succeeded
                self.stats["failed"] += 1
                if isinstance(e, LLMKitError):
                    r.emit(ErrorEvent(str(e), status=400))
                else:
                    r.emit(ErrorEvent("internal error during prefill"))
            return
        with self._lock:
            for r in new:
                self._running[r.seq] = r
        for r in new:
            if r.seq.finished:  # nothing to generate (max_new_tokens=0): done after prefill
                self._finish(r)

    def _step(self) -> None:
        self.stats["steps"] += 1
        self.stats["max_rows"] = max(self.stats["max_rows"], len(self.batch.seqs))
        for seq, text in self.batch.step():
            req = self._running[seq]
            if req.stream:
                info = seq.logprobs[-1] if seq.logprobs else None
                req.emit(TokenEvent(text, seq.token_ids[-1], info))
            if seq.finished:
                self._finish(req)

    def _finish(self, req: EngineRequest) -> None:
        with self._lock:
            self._running.pop(req.seq, None)
        self.stats["completed"] += 1
        req.emit(DoneEvent(req.seq.result()))

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self._running if s.cancelled]:
            self.batch.remove(seq)
            with self._lock:
                self._running.pop(seq, None)
            self.stats["cancelled"] += 1

    def _fail_all(self, message: str) -> None:
        with self._lock:
            running = list(self._running.values())
            self._running.clear()
        if self.batch is not None:
            self.batch.clear()
        for r in running:
            self.stats["failed"] += 1
            r.emit(ErrorEvent(message))
