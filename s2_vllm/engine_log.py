"""The engine's output goes to a file beside the checkpoint; the console keeps s2-vllm's own lines.

vLLM logs dozens of INFO lines per engine start (more per replica), its processes print
warnings of their own, and all of it would bury the run's report and progress bar. While an
engine runs, file descriptors 1 and 2 point at `CHECKPOINT.engine.log`: every process the
engine starts inherits them, and everything in this process that writes to stdout or stderr
(vLLM's logger among them) writes there too. s2-vllm's own lines during that time (the
progress bar, a replica's death) go to `console()`, the terminal's stderr, saved before.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# What importing the engine printed before any log was open; the next EngineLog writes it first.
_pending: list[bytes] = []


@contextlib.contextmanager
def held_back() -> Iterator[None]:
    """Hold back what fds 1 and 2 get (e.g. vLLM's import-time INFO lines) for the next engine log."""
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as held:
        saved = [os.dup(1), os.dup(2)]
        os.dup2(held.fileno(), 1)
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            held.seek(0)
            _pending.append(held.read())


def _fd_backed(stream: Any, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError):
        return False  # an in-memory stream (click's CliRunner): fd changes do not touch it


_console: list[Any] = []  # the terminal's stderr while an EngineLog is open (innermost last)


def console() -> Any:
    """Where s2-vllm's own messages go while an engine runs: the terminal, not the engine log."""
    return _console[-1] if _console else sys.stderr


class EngineLog:
    """Context manager: redirect fds 1 and 2 to `path` (appending) unless `live`.

    `sys.stdout` and `sys.stderr` keep pointing at fds 1 and 2, so whatever writes to them,
    vLLM's logger included (whenever it binds its stream), lands in the log. s2-vllm's own
    output during the run (the progress bar, a replica's death) goes to `console()`, a stream on
    the terminal's saved stderr.
    """

    def __init__(self, path: Path, live: bool = False):
        self.path = path
        self.live = live
        self._saved: list[tuple[int, int]] = []
        self._console: Any = None

    def __enter__(self) -> EngineLog:
        if self.live:
            return self
        sys.stdout.flush()
        sys.stderr.flush()
        log = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(log, f"\n===== s2-vllm pid {os.getpid()} starts an engine, "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')} =====\n".encode() + b"".join(_pending))
        _pending.clear()
        for fd in (1, 2):
            self._saved.append((fd, os.dup(fd)))  # not inheritable: engine processes never see the terminal
        if _fd_backed(sys.stderr, 2):
            self._console = io.TextIOWrapper(io.FileIO(self._saved[1][1], "w", closefd=False),
                                             encoding=sys.stderr.encoding, errors="backslashreplace",
                                             line_buffering=True)
        else:  # an in-memory stderr (click's CliRunner): fd changes do not touch it
            self._console = sys.stderr
        _console.append(self._console)
        for fd in (1, 2):
            os.dup2(log, fd)  # inheritable: every process started from here writes to the log
        os.close(log)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._console is not None:
            self._console.flush()
            _console.remove(self._console)
            self._console = None
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in reversed(self._saved):
            os.dup2(saved, fd)
            os.close(saved)
        self._saved.clear()
