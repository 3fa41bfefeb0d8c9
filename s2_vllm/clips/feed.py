"""Clips decoded ahead of the engine: a bounded pool of workers between the rendered prompts and the runner.

The runner takes prompts in order; each prompt with a clip comes out with its decoded clip attached as
`multi_modal_data[modality]`, or without token ids and with the reason as its error (an error row, the run
goes on). At most `ahead` clips are decoded or decoding at once, and `ahead` is set so that that many of the
largest clips the modality can decode fit the byte budget: memory stays flat for any number and size of
clips, and the engine finds the next clips ready instead of waiting on a file. The workers are processes (started with
`spawn`: the engine's process has threads, which a fork would copy mid-lock) or threads.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from s2_vllm.clips.modality import ClipError, Decoded
from s2_vllm.errors import one_line
from s2_vllm.prompts import Prompt


def clips_ahead(ahead: int, budget_bytes: int, clip_bytes: int) -> int:
    """How many clips may be decoded ahead: `ahead`, or fewer when that many of the largest clips would pass the
    byte budget; at least one."""
    return max(1, min(ahead, budget_bytes // max(1, clip_bytes)))


class ClipFeed:
    def __init__(self, name: str, decoder: Callable[[str], Decoded], *, workers: int | Callable[[], int] = 2,
                 ahead: int = 64, processes: bool = True):
        """`name`: the modality (the key of multi_modal_data); `decoder`: path → Decoded (picklable, for worker
        processes); `workers`: a number, or a function that gives it when the pool starts (after the engine's
        checks)."""
        self.name, self.decoder = name, decoder
        self._workers, self.ahead, self.processes = workers, ahead, processes

    @property
    def workers(self) -> int:
        return self._workers() if callable(self._workers) else self._workers

    def _decode(self, pool: Executor, path: str) -> Future[Decoded]:
        return pool.submit(self.decoder, path)

    def _pool(self) -> Executor:
        workers = self.workers
        if not self.processes:
            return ThreadPoolExecutor(workers, thread_name_prefix="s2-vllm-decode")
        import multiprocessing

        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker, initargs=(os.getpid(),))

    def prepare(self, prompts: list[Prompt]) -> list[Prompt]:
        """The first `ahead` clips of `prompts` decoded in this thread (before the engine starts: no pool yet, and
        the engine finds work the moment it is up); the rest are left to the stream."""
        out, left = [], self.ahead
        for prompt in prompts:
            if left and self._wants(prompt):
                prompt, left = self._attach(prompt, self._decode_here(prompt.clip)), left - 1
            out.append(prompt)
        return out

    def _decode_here(self, path: str | None) -> Future[Decoded]:
        future: Future[Decoded] = Future()
        try:
            future.set_result(self.decoder(str(path)))
        except Exception as exc:
            future.set_exception(exc)
        return future

    @staticmethod
    def _wants(prompt: Prompt) -> bool:
        """A prompt whose clip is still to decode (not skipped, not too long, not decoded already)."""
        return prompt.clip is not None and prompt.token_ids is not None and prompt.media is None

    def stream(self, prompts: Iterable[Prompt]) -> ClipStream:
        return ClipStream(self, iter(prompts))

    def __call__(self, prompts: Iterable[Prompt]) -> Iterator[Prompt]:
        """The prompts in their order, each clip decoded (or failed) by the pool."""
        with self.stream(prompts) as stream:
            yield from stream

    def _attach(self, prompt: Prompt, future: Future[Decoded]) -> Prompt:
        try:
            clip = future.result()
        except ClipError as exc:
            return dataclasses.replace(prompt, token_ids=None, error=str(exc))
        except Exception as exc:  # a decoder bug must not stop the other clips either
            return dataclasses.replace(prompt, token_ids=None, error=f"cannot decode the clip: {one_line(exc)}")
        truncated = prompt.truncated + (self.name,) if clip.cut else prompt.truncated
        return dataclasses.replace(prompt, media={self.name: clip.data}, truncated=truncated)


class ClipStream(Iterator[Prompt]):
    """The prompts with their clips decoded by the pool, in order; `ready()` says whether the next one is there,
    so the runner can step the engine instead of waiting on a clip. A context manager: leaving it stops the pool."""

    def __init__(self, feed: ClipFeed, source: Iterator[Prompt]):
        self.feed, self.source = feed, source
        self.pending: deque[tuple[Prompt, Future[Decoded] | None]] = deque()
        self.pool: Executor | None = None
        self.exhausted = False

    def _top_up(self) -> None:
        while not self.exhausted and len(self.pending) < self.feed.ahead:
            prompt = next(self.source, None)
            if prompt is None:
                self.exhausted = True
            elif not self.feed._wants(prompt):
                self.pending.append((prompt, None))  # nothing to decode: skipped, too long, decoded already
            else:
                self.pending.append((prompt, self._submit(prompt)))

    def _submit(self, prompt: Prompt) -> Future[Decoded]:
        if self.pool is None:
            self.pool = self.feed._pool()
        try:
            return self.feed._decode(self.pool, str(prompt.clip))
        except BrokenProcessPool as exc:  # a worker died since the last look: __next__ rebuilds the pool
            broken: Future[Decoded] = Future()
            broken.set_exception(exc)
            return broken

    def ready(self) -> bool:
        """True when next() will not wait on a clip (it may still say the prompts are used up)."""
        self._top_up()
        return not self.pending or self.pending[0][1] is None or self.pending[0][1].done()

    def __next__(self) -> Prompt:
        self._top_up()
        if not self.pending:
            raise StopIteration
        prompt, future = self.pending.popleft()
        if future is not None and _broke(future):
            future = self._after_crash(prompt)
        return prompt if future is None else self.feed._attach(prompt, future)

    def _after_crash(self, prompt: Prompt) -> Future[Decoded]:
        """A worker process died (a decoder crash, the OOM killer): every queued decode failed with it. A new pool
        decodes this clip alone; only if it dies again is the clip to blame. The other clips go again."""
        assert self.pool is not None
        self._renew_pool()
        future = self._submit(prompt)
        if _broke(future):
            future = Future()
            future.set_exception(ClipError("the decoder's process died on this clip (a crash in FFmpeg or "
                                           "libsndfile, or out of memory)"))
            self._renew_pool()
        self.pending = deque((p, f if f is None or _decoded(f) else self._submit(p)) for p, f in self.pending)
        return future

    def _renew_pool(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
        self.pool = self.feed._pool()

    def __enter__(self) -> ClipStream:
        return self

    def __exit__(self, *exc: object) -> None:
        for _, future in self.pending:
            if future is not None:
                future.cancel()
        self.pending.clear()
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


def _decoded(future: Future[Decoded]) -> bool:
    """Done in a pool that was still whole: its result (or the clip's own error) stands."""
    return future.done() and not future.cancelled() and not isinstance(future.exception(), BrokenProcessPool)


def _broke(future: Future[Decoded]) -> bool:
    """Waits for `future`; True when its worker process died under it."""
    try:
        future.result()
    except BrokenProcessPool:
        return True
    except Exception:
        pass
    return False


def _start_worker(run: int) -> None:
    """A worker leaves Ctrl-C and SIGTERM (sent to the whole process group, or by scancel to every process of the
    job) to the run, which stops its pool. It dies with the run: a worker holds both ends of its task queue, so a
    run killed outright (SIGKILL, the OOM killer) would leave it waiting there forever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        threading.Thread(target=_exit_when_orphaned, args=(run,), daemon=True).start()
    if os.getppid() != run:  # the run died before the line above
        os._exit(0)


def _exit_when_orphaned(run: int) -> None:
    while os.getppid() == run:
        time.sleep(1.0)
    os._exit(0)
