"""SIGINT and SIGTERM, handled the same way in every command: stop, keep what is written, exit 130.

One handler serves the whole command. Where the program is not looking (reading inputs, importing
vLLM, loading the model) a signal raises `Interrupted` on the spot. Inside the runner's loop it
only raises the `requested` flag, which the loop checks between engine steps, so a vLLM step
finishes and its rows are written; an engine whose step can run long (a whole transformers
batch) lets it raise inside the step instead (`raising()`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

RESUME_HINT = "interrupted; run the same command to resume"


class Interrupted(KeyboardInterrupt):
    """A signal stopped the command; what was finished is kept.

    A KeyboardInterrupt subclass, so no `except Exception` on the way up turns it into an error,
    yet not KeyboardInterrupt itself: CPython remembers a bare KeyboardInterrupt that escaped
    Python code run from C (PyRun_*, which some extension modules call) and then ends the process
    by SIGINT at exit, whatever exit code the command chose (seen once as exit -2).
    """

    def __init__(self, message: str = RESUME_HINT):
        super().__init__(message)


class StopHandler:
    """The installed handler and its state: `requested` once a signal came, `raise_now` where it raises."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.raise_now = True

    def __call__(self, signum: int, frame: Any) -> None:
        self.requested.set()
        if self.raise_now:
            raise Interrupted()

    @contextlib.contextmanager
    def polled(self) -> Iterator[None]:
        """Inside: a signal only sets `requested` (the caller checks it)."""
        saved, self.raise_now = self.raise_now, False
        try:
            yield
        finally:
            self.raise_now = saved

    @contextlib.contextmanager
    def raising(self, really: bool = True) -> Iterator[None]:
        """Inside `polled`: a signal raises again (a long engine step it may cut short), when `really`."""
        saved, self.raise_now = self.raise_now, really or self.raise_now
        try:
            yield
        finally:
            self.raise_now = saved


_installed: list[StopHandler] = []


@contextlib.contextmanager
def handled() -> Iterator[StopHandler]:
    """SIGINT and SIGTERM go to one StopHandler while inside; nested calls share the outermost one.

    Outside the main thread signals are not ours: the handler is returned but never called.
    """
    if _installed:
        yield _installed[-1]
        return
    handler = StopHandler()
    if threading.current_thread() is not threading.main_thread():
        yield handler
        return
    previous: dict[int, Any] = {}
    _installed.append(handler)
    try:
        for s in (signal.SIGINT, signal.SIGTERM):
            previous[s] = signal.signal(s, handler)
        yield handler
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _installed.remove(handler)
