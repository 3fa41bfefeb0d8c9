"""Nothing a test started outlives the test session, and the session's exit is bounded.

Tests start real engines, kill real processes and run Ray; a process one of them leaves behind, even one
orphaned by a SIGKILL and reparented away from pytest, would hold CI's output open after the last test and
CI would wait on it until its own timeout. Every process started below the session carries MARKER in its
environment; at the end of the session those still running are named in the summary and killed. And if the
interpreter's exit then waits (a thread or a pool that does not end), the stacks are printed and the session
ends with the tests' own exit status after EXIT_GRACE_SECONDS.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
import time
import uuid

MARKER = "S2_VLLM_TEST_SESSION"
EXIT_GRACE_SECONDS = 120.0


def start() -> None:
    os.environ[MARKER] = uuid.uuid4().hex


def _marked(token: str) -> list[tuple[int, str]]:
    """(pid, command line) of the processes other than this one whose environment holds the session's token."""
    needle = f"{MARKER}={token}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    continue  # a zombie holds nothing open
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                found.append((int(entry), f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:160]))
        except (OSError, IndexError):
            continue
    return found


def stop_leftovers() -> list[str]:
    """Kill the session's processes still running; the lines that name them."""
    token = os.environ.get(MARKER)
    if not token or not os.path.isdir("/proc"):
        return []
    left = [(pid, cmd) for pid, cmd in _marked(token) if "multiprocessing.resource_tracker" not in cmd]
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return [f"pid {pid}: {cmd}" for pid, cmd in left]


def bound_exit(status: int) -> None:
    """After EXIT_GRACE_SECONDS of the interpreter's shutdown, print every thread's stack and exit with `status`."""

    def expire() -> None:
        time.sleep(EXIT_GRACE_SECONDS)
        print(f"\nsession_guard: the exit waited {EXIT_GRACE_SECONDS:g} s; the threads still running:",
              file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        os._exit(status)

    threading.Thread(target=expire, name="session-guard-exit", daemon=True).start()
