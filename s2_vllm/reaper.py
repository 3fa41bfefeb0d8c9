"""Nothing a run starts outlives it: a watchdog process that stops the engine's processes.

vLLM runs its EngineCore (and, with tensor parallelism, its workers) in child processes. The
workers watch their EngineCore, but nothing makes the EngineCore leave when the `s2-vllm`
process itself is killed by SIGKILL (the OOM killer, a node watchdog): it goes on generating,
holding the GPU, and the resumed run cannot start its own engine.

`Watchdog` starts a small separate process (its own session, so Ctrl-C to the terminal does
not reach it) that, while the run lives, keeps the list of the processes the run started
below it, each with its start time so a reused pid is never hit, and writes it beside the
checkpoint. It holds the read end of a pipe whose only write end is in the run's process:
when that process closes it (its engine is closed) or dies, by any signal, the pipe closes,
and the watchdog gives what is left a second, then SIGTERM, SIGKILL 3 s later, removes the
list and exits.

`stop_leftovers` is the resume side: a list found beside a checkpoint means an earlier run's
watchdog could not finish (it was killed too); processes on it that still run are stopped.

Only the standard library is imported here: the watchdog starts in a fraction of a second.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

POLL_SECONDS = 0.5  # how often the list of descendants is refreshed
TERM_GRACE_SECONDS = 3.0  # between SIGTERM and SIGKILL
SETTLE_SECONDS = 1.0  # what the run left gets this long to exit by itself before SIGTERM


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()  # the command name in parentheses may hold spaces
    if fields[0] in (b"Z", b"X"):  # a zombie is already dead; only its parent can reap it
        return None
    return int(fields[1]), int(fields[19])


def _process_table() -> dict[int, tuple[int, int]]:
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (info := _stat(int(name))) is not None:
            table[int(name)] = info
    return table


def descendants(roots: Iterable[int], table: dict[int, tuple[int, int]] | None = None) -> dict[int, int]:
    """Every live process below `roots` (not the roots themselves): pid -> start time."""
    table = _process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, int] = {}
    stack = list(roots)
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found:
                found[child] = table[child][1]
                stack.append(child)
    return found


def alive(processes: dict[int, int]) -> dict[int, int]:
    """Those of `processes` (pid -> start time) that still run as the same process."""
    return {pid: start for pid, start in processes.items() if (info := _stat(pid)) is not None and info[1] == start}


def stop(processes: dict[int, int], grace: float = TERM_GRACE_SECONDS, settle: float = 0.0) -> list[int]:
    """SIGTERM, then SIGKILL after `grace` seconds, to the processes still running; their pids.

    With `settle`, they first get that long to exit by themselves (an engine closing normally).
    """
    deadline = time.monotonic() + settle
    while (left := alive(processes)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not left:
        return []
    # Their own children too: after the parent's death they hang below init, not below the run.
    left.update(alive(descendants(left)))
    stopped = sorted(left)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        for pid in left:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + wait
        while (left := alive(left)) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not left:
            break
    return stopped


def _write_list(path: Path, processes: dict[int, int]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps([{"pid": p, "start": s} for p, s in sorted(processes.items())]))
    os.replace(tmp, path)


def read_list(path: Path) -> dict[int, int]:
    try:
        entries = json.loads(path.read_text())
        return {int(e["pid"]): int(e["start"]) for e in entries}
    except (OSError, ValueError, TypeError, KeyError):
        return {}


def stop_leftovers(path: Path, echo: Callable[[str], None]) -> list[int]:
    """Stop the processes an earlier run of this checkpoint left running (its list is at `path`)."""
    left = alive(read_list(path))
    stopped = []
    if left:
        echo(f"an earlier run's engine processes are still running (pid {', '.join(map(str, sorted(left)))}); "
             "stopping them")
        stopped = stop(left)
    try:
        path.unlink()
    except OSError:
        pass
    return stopped


def _is_resource_tracker(pid: int) -> bool:
    """multiprocessing's resource tracker: it leaves by itself once its users are gone, and it is
    what unlinks the shared memory they leaked, so it is never stopped."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"multiprocessing.resource_tracker" in f.read()
    except OSError:
        return False


def watch(parent: int, fd: int, path: Path) -> None:
    """The watchdog's loop: follow what `parent` starts until `fd` closes, then stop what is left.

    Processes that were already below `parent` when the watchdog started are not the run's
    (a caller's own children, an engine a test shares) and are left alone.
    """
    me = os.getpid()
    before = set(descendants([parent]).items())
    print("ready", flush=True)  # the run starts its engine only after this
    known: dict[int, int] = {}
    written: dict[int, int] | None = None
    skip: set[int] = set()
    while True:
        ready, _, _ = select.select([fd], [], [], POLL_SECONDS)
        if ready and not os.read(fd, 64):
            break  # the run's process is gone, or has closed its engine and said so
        current = {}
        for pid, start in descendants([parent]).items():
            if pid == me or (pid, start) in before or pid in skip:
                continue
            if pid not in known and _is_resource_tracker(pid):
                skip.add(pid)
                continue
            current[pid] = start
        known = {**alive(known), **current}
        if known != written:
            _write_list(path, known)
            written = dict(known)
    stop(known, settle=SETTLE_SECONDS)
    try:
        path.unlink()
    except OSError:
        pass


class Watchdog:
    """The run's side: start the watchdog before the engine; `close()` once the engine is closed."""

    def __init__(self, path: Path):
        self.path = path
        read_end, self._write_end = os.pipe()  # both not inheritable: no engine process gets the write end
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "s2_vllm.reaper", str(os.getpid()), str(read_end), str(path)],
                pass_fds=(read_end,), start_new_session=True,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )
        finally:
            os.close(read_end)
        # Wait for its first look at this process's children, so the engine's are never among them.
        ready, _, _ = select.select([self.process.stdout], [], [], 10.0)
        if ready:
            self.process.stdout.readline()
        self.process.stdout.close()

    def close(self, timeout: float = SETTLE_SECONDS + 2 * TERM_GRACE_SECONDS + 2) -> None:
        """Let the watchdog stop what the engine left (nothing, normally) and wait for it."""
        if self._write_end is not None:
            os.close(self._write_end)
            self._write_end = None
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a group-wide SIGTERM is exactly when it is needed
    watch(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
