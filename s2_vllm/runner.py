"""The feeding loop: keep the engine full from the rendered prompts, write each result at once.

The runner is the only piece that sees both sides: prompts and engine on one hand, the
checkpoint store on the other. Neither side knows about the other.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from s2_vllm import signals
from s2_vllm.checkpoint import Row
from s2_vllm.engines.base import Engine, GenerationRequest, record_seed, refusal
from s2_vllm.errors import EngineError
from s2_vllm.progress import ProgressBar, RunStats
from s2_vllm.prompts import Prompt
from s2_vllm.results import row_for_completion, row_without_model


class RowSink(Protocol):
    def append(self, row: Row) -> None: ...

    def write_summary(self, summary: dict[str, Any]) -> None: ...


class Runner:
    SUMMARY_EVERY = 15.0  # seconds between summary snapshots, for `status` during a run

    def __init__(self, engine: Engine, sink: RowSink, stats: RunStats, *, seed: int, thinking: bool,
                 in_flight: int | None = None, progress: ProgressBar | None = None,
                 postprocess: Callable[[Row], Row] | None = None):
        self.engine = engine
        self.sink = sink
        self.stats = stats
        self.seed = seed
        self.thinking = thinking
        self.in_flight = in_flight or engine.in_flight()
        self.progress = progress
        self.postprocess = postprocess
        self.running: dict[str, Prompt] = {}  # added to the engine, not finished
        self.ready: Callable[[], bool] | None = None

    def run(self, prompts: Iterable[Prompt], ready: Callable[[], bool] | None = None) -> RunStats:
        """Feed every prompt; returns when all are written or a signal stopped it. `ready`: whether the next
        prompt is there without waiting (clips being decoded); while it is not, the engine steps what it has."""
        self.ready = ready
        source: Iterator[Prompt] = iter(prompts)
        exhausted = False
        last_summary = time.monotonic()
        with signals.handled() as stop:
            try:
                with stop.polled():
                    while not stop.requested.is_set():
                        if not exhausted:
                            exhausted = self._fill(source, stop.requested)
                        if not self.running:
                            if exhausted:
                                break
                            continue
                        try:
                            with stop.raising(self.engine.interruptible_step):
                                completions = self.engine.step()
                        except Exception:
                            # A signal to the whole process group (Ctrl-C, scancel) also stops vLLM's
                            # engine process, so a step after it may fail: that is the stop, not a crash.
                            if stop.requested.is_set():
                                break
                            raise
                        for completion in completions:
                            prompt = self.running.pop(completion.key)
                            row = row_for_completion(prompt, completion, self.thinking)
                            self._write(self.postprocess(row) if self.postprocess else row)
                        if self.progress is not None:
                            self.progress.tick(self.engine.tokens_in_flight)
                        if time.monotonic() - last_summary > self.SUMMARY_EVERY:
                            last_summary = time.monotonic()
                            self.sink.write_summary(self.stats.summary(self.engine.name))
            except signals.Interrupted:
                pass  # raised inside an interruptible step: that step's results are dropped
            with stop.polled():  # a second Ctrl-C must not cut the abort short
                self.stats.finished = time.monotonic()  # throughput ends here, not after the engine's shutdown
                if stop.requested.is_set():
                    self.stats.interrupted = True
                    self._abort()
        return self.stats

    def _fill(self, source: Iterator[Prompt], stopping: Any) -> bool:
        """Top the engine up to the in-flight bound; True once the prompts are used up."""
        while len(self.running) < self.in_flight and not stopping.is_set():
            if self.running and self.ready is not None and not self.ready():
                return False
            prompt = next(source, None)
            if prompt is None:
                return True
            if prompt.token_ids is None:
                self._write(row_without_model(prompt))
                continue
            if prompt.file_id in self.running:
                raise RuntimeError(f"record {prompt.file_id} fed twice")
            request = GenerationRequest(prompt.file_id, prompt.token_ids, record_seed(self.seed, prompt.file_id),
                                        prompt.media)
            try:
                self.engine.add(request)
            except EngineError:
                raise  # the engine is gone: no record is to blame
            except Exception as exc:  # one bad request must not stop the others
                self._write(row_without_model(prompt, error=refusal(exc)))
            else:  # the engine has the clip now; holding it until the row is written would cost memory
                self.running[prompt.file_id] = prompt if prompt.media is None else dataclasses.replace(prompt, media=None)
        return False

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
        self.running.clear()
