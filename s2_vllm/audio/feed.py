"""Clips decoded ahead of the engine: a bounded pool of workers between the rendered prompts and the runner.

The runner takes prompts in order; each prompt with a clip comes out with its samples attached, or
without token ids and with the reason as its error (an error row, the run goes on). At most `ahead`
clips are decoded or decoding at once, so memory stays flat for any number of clips, and the engine
finds the next clips ready instead of waiting on a file. The workers are processes (started with
`spawn`: the engine's process has threads, which a fork would copy mid-lock) or threads.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterable, Iterator
import signal
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor

from s2_vllm.audio.decode import ClipError, Decoded, decode
from s2_vllm.errors import one_line
from s2_vllm.prompts import Prompt


class ClipFeed:
    def __init__(self, rate: int, max_seconds: float, *, cut: bool, workers: int = 2, ahead: int = 64,
                 processes: bool = True):
        self.rate, self.max_seconds, self.cut = rate, max_seconds, cut
        self.workers, self.ahead, self.processes = workers, max(ahead, workers), processes

    def _decode(self, pool: Executor, path: str) -> Future[Decoded]:
        return pool.submit(decode, path, self.rate, self.max_seconds, cut=self.cut)

    def _pool(self) -> Executor:
        if not self.processes:
            return ThreadPoolExecutor(self.workers, thread_name_prefix="s2-vllm-decode")
        import multiprocessing

        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_ignore_interrupts)

    def __call__(self, prompts: Iterable[Prompt]) -> Iterator[Prompt]:
        """The prompts in their order, each clip decoded (or failed) by the pool."""
        source = iter(prompts)
        pending: deque[tuple[Prompt, Future[Decoded] | None]] = deque()
        pool = self._pool()
        try:
            exhausted = False
            while True:
                while not exhausted and len(pending) < self.ahead:
                    prompt = next(source, None)
                    if prompt is None:
                        exhausted = True
                    elif prompt.clip is None or prompt.token_ids is None:
                        pending.append((prompt, None))  # nothing to decode: skipped, too long, or text only
                    else:
                        pending.append((prompt, self._decode(pool, prompt.clip)))
                if not pending:
                    return
                prompt, future = pending.popleft()
                yield prompt if future is None else self._attach(prompt, future)
        finally:
            for _, future in pending:
                if future is not None:
                    future.cancel()
            pool.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _attach(prompt: Prompt, future: Future[Decoded]) -> Prompt:
        try:
            clip = future.result()
        except ClipError as exc:
            return dataclasses.replace(prompt, token_ids=None, error=str(exc))
        except Exception as exc:  # a decoder bug must not stop the other clips either
            return dataclasses.replace(prompt, token_ids=None, error=f"cannot decode the clip: {one_line(exc)}")
        truncated = prompt.truncated + ("audio",) if clip.cut else prompt.truncated
        return dataclasses.replace(prompt, audio=clip.as_input(), truncated=truncated)


def _ignore_interrupts() -> None:
    """A worker leaves Ctrl-C (sent to the whole process group) to the run, which stops it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
