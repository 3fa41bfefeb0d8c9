"""The feeding loop: keep the engine full from the rendered prompts, write each result at once.

The runner is the only piece that sees both sides: prompts and engine on one hand, the
checkpoint store on the other. Neither side knows about the other.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from s2_vllm.checkpoint import Row
from s2_vllm.engines.base import Engine, GenerationRequest, record_seed
from s2_vllm.progress import ProgressBar, RunStats
from s2_vllm.prompts import Prompt
from s2_vllm.results import row_for_completion, row_without_model
from s2_vllm.errors import EngineError, one_line


class RowSink(Protocol):
    def append(self, row: Row) -> None: ...

    def write_summary(self, summary: dict[str, Any]) -> None: ...


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived: stop feeding, keep what is written."""


class Runner:
    SUMMARY_EVERY = 15.0  # seconds between summary snapshots, for `status` during a run

    def __init__(self, engine: Engine, sink: RowSink, stats: RunStats, *, seed: int, thinking: bool,
                 window: int | None = None, progress: ProgressBar | None = None,
                 postprocess: Callable[[Row], Row] | None = None):
        self.engine = engine
        self.sink = sink
        self.stats = stats
        self.seed = seed
        self.thinking = thinking
        self.window = window or engine.capacity()
        self.progress = progress
        self.postprocess = postprocess
        self.in_flight: dict[str, Prompt] = {}
        self.stopping = threading.Event()
        self.in_step = False

    def run(self, prompts: Iterable[Prompt]) -> RunStats:
        """Feed every prompt; returns when all are written or a signal stopped it."""
        source: Iterator[Prompt] = iter(prompts)
        exhausted = False
        last_summary = time.monotonic()
        with self._signals():
            try:
                while not self.stopping.is_set():
                    if not exhausted:
                        exhausted = self._fill(source)
                    if not self.in_flight:
                        if exhausted:
                            break
                        continue
                    self.in_step = True
                    try:
                        completions = self.engine.step()
                    except Exception:
                        # A signal to the whole process group (Ctrl-C, scancel) also stops vLLM's
                        # engine process, so a step after it may fail: that is the stop, not a crash.
                        if self.stopping.is_set():
                            break
                        raise
                    finally:
                        self.in_step = False
                    for completion in completions:
                        prompt = self.in_flight.pop(completion.key)
                        row = row_for_completion(prompt, completion, self.thinking)
                        self._write(self.postprocess(row) if self.postprocess else row)
                    if self.progress is not None:
                        self.progress.tick(self._tokens_in_flight)
                    if time.monotonic() - last_summary > self.SUMMARY_EVERY:
                        last_summary = time.monotonic()
                        self.sink.write_summary(self.stats.summary(self.engine.name))
            except Interrupted:
                pass
            self.stats.finished = time.monotonic()  # throughput ends here, not after the engine's shutdown
            if self.stopping.is_set():
                self.stats.interrupted = True
                self._abort()
        return self.stats

    def _fill(self, source: Iterator[Prompt]) -> bool:
        """Top the engine up to the window; True once the prompts are used up."""
        while len(self.in_flight) < self.window and not self.stopping.is_set():
            prompt = next(source, None)
            if prompt is None:
                return True
            if prompt.token_ids is None:
                self._write(row_without_model(prompt))
                continue
            if prompt.file_id in self.in_flight:
                raise RuntimeError(f"record {prompt.file_id} fed twice")
            request = GenerationRequest(prompt.file_id, prompt.token_ids, record_seed(self.seed, prompt.file_id))
            try:
                self.engine.add(request)
            except EngineError:
                raise  # the engine is gone: no record is to blame
            except Exception as exc:  # one bad request must not stop the others
                self._write(row_without_model(prompt, error=f"engine refused the request: {one_line(exc)}"))
            else:
                self.in_flight[prompt.file_id] = prompt
        return False

    def _tokens_in_flight(self) -> int:
        count = getattr(self.engine, "tokens_in_flight", None)
        return count() if count is not None else 0

    def _write(self, row: Row) -> None:
        self.sink.append(row)
        self.stats.add(row)
        if self.progress is not None:
            self.progress.update(row)

    def _abort(self) -> None:
        try:
            self.engine.abort()
        except Exception:
            pass  # we are leaving anyway; nothing unfinished is written
        self.in_flight.clear()

    @contextmanager
    def _signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        # Only an engine whose step can run long (a whole HF batch) is left by raising inside it;
        # a vLLM step is short, and an exception inside it would leave vLLM's client half-updated.
        interruptible = getattr(self.engine, "interruptible_step", False)

        def handle(signum: int, frame: Any) -> None:
            self.stopping.set()
            if self.in_step and interruptible:
                raise Interrupted()

        previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

