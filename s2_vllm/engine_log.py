"""The engine's output goes to a file beside the checkpoint; the console keeps s2-vllm's own lines.

vLLM logs dozens of INFO lines per engine start (more per replica), its processes print
warnings of their own, and all of it would bury the run's report and progress bar. While an
engine runs, file descriptors 1 and 2 point at `CHECKPOINT.engine.log`: every process the
engine starts inherits them, and so does vLLM's logger in this process, which writes to the
stream it found at import. This process's `sys.stdout`/`sys.stderr` are re-pointed at the
terminal, so `echo`, the progress bar and error messages still reach the user.
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


class EngineLog:
    """Context manager: redirect fds 1 and 2 to `path` (appending) unless `live`."""

    def __init__(self, path: Path, live: bool = False):
        self.path = path
        self.live = live
        self._saved: list[tuple[int, int, str, Any]] = []

    def __enter__(self) -> EngineLog:
        if self.live:
            return self
        sys.stdout.flush()
        sys.stderr.flush()
        log = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(log, f"\n===== s2-vllm pid {os.getpid()} starts an engine, "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')} =====\n".encode() + b"".join(_pending))
        _pending.clear()
        for fd, name in ((1, "stdout"), (2, "stderr")):
            saved = os.dup(fd)  # not inheritable: engine processes never see the terminal
            old = getattr(sys, name)
            if _fd_backed(old, fd):
                console = io.TextIOWrapper(io.FileIO(saved, "w", closefd=False), encoding=old.encoding,
                                           errors="backslashreplace", line_buffering=True)
                setattr(sys, name, console)
            self._saved.append((fd, saved, name, old))
            os.dup2(log, fd)  # inheritable: every process started from here writes to the log
        os.close(log)
        return self

    def __exit__(self, *exc: object) -> None:
        for fd, saved, name, old in reversed(self._saved):
            current = getattr(sys, name)
            if current is not old:
                current.flush()
                setattr(sys, name, old)
            old.flush()
            os.dup2(saved, fd)
            os.close(saved)
        self._saved.clear()
