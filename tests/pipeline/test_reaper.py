"""The watchdog on real processes: kill the run, and what it started must be gone."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

from s2_vllm.reaper import Watchdog, alive, descendants, read_list, stop, stop_leftovers


def sleeper(**kw) -> subprocess.Popen:
    return subprocess.Popen(["sleep", "300"], **kw)


def start_of(pid: int) -> int:
    data = open(f"/proc/{pid}/stat", "rb").read()
    return int(data[data.rindex(b")") + 2:].split()[19])


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_descendants_alive_and_stop():
    child = sleeper()
    try:
        found = descendants([__import__("os").getpid()])
        assert found[child.pid] == start_of(child.pid)
        assert alive({child.pid: start_of(child.pid)}) == {child.pid: start_of(child.pid)}
        assert alive({child.pid: start_of(child.pid) + 1}) == {}  # same pid, another process: never touched
        assert stop({child.pid: start_of(child.pid)}, grace=2) == [child.pid]
        assert child.wait(5) == -signal.SIGTERM
    finally:
        child.kill()


def test_stop_kills_what_ignores_sigterm():
    child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                              "signal.SIG_IGN); print('ok', flush=True); time.sleep(300)"], stdout=subprocess.PIPE)
    assert child.stdout.readline() == b"ok\n"
    stop({child.pid: start_of(child.pid)}, grace=0.5)
    assert child.wait(5) == -signal.SIGKILL


RUN = textwrap.dedent("""
    import subprocess, sys, time
    from pathlib import Path
    from s2_vllm.reaper import Watchdog
    dog = Watchdog(Path(sys.argv[1]))
    engine = subprocess.Popen(["sleep", "300"])                  # the engine's process
    worker = subprocess.Popen(["sh", "-c", "sleep 300 & wait"])  # one with a child of its own
    print(engine.pid, worker.pid, dog.process.pid, flush=True)
    time.sleep(300)
""")


def test_sigkill_of_the_run_leaves_nothing_it_started(tmp_path):
    pids = tmp_path / "out.jsonl.engine.pids"
    run = subprocess.Popen([sys.executable, "-c", RUN, str(pids)], stdout=subprocess.PIPE)
    engine, worker, dog = map(int, run.stdout.readline().split())
    started, dog_start = {p: start_of(p) for p in (engine, worker)}, start_of(dog)
    assert wait_until(lambda: set(read_list(pids)) >= {engine, worker}, 5), read_list(pids)
    grandchild = next(p for p in descendants([worker]))
    started[grandchild] = start_of(grandchild)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert wait_until(lambda: not alive(started), 10), alive(started)
    assert wait_until(lambda: not alive({dog: dog_start}), 10)  # the watchdog leaves once it is done
    assert not pids.exists()


def test_closing_stops_only_what_started_after_the_watchdog(tmp_path):
    before = sleeper()  # a process of the caller's own, e.g. an engine a test shares
    try:
        dog = Watchdog(tmp_path / "x.engine.pids")
        after = sleeper()
        assert wait_until(lambda: after.pid in read_list(tmp_path / "x.engine.pids"), 5)
        dog.close()
        assert after.wait(10) == -signal.SIGTERM
        assert before.poll() is None
        assert dog.process.poll() == 0 and not (tmp_path / "x.engine.pids").exists()
    finally:
        before.kill()


def test_a_resume_stops_what_an_earlier_run_left(tmp_path):
    left = sleeper(start_new_session=True)
    path = tmp_path / "out.jsonl.engine.pids"
    path.write_text(json.dumps([{"pid": left.pid, "start": start_of(left.pid)}, {"pid": 1, "start": 12345}]))
    said = []
    assert stop_leftovers(path, said.append) == [left.pid]
    assert said == [f"an earlier run's engine processes are still running (pid {left.pid}); stopping them"]
    assert left.wait(10) == -signal.SIGTERM
    assert not path.exists()
    assert stop_leftovers(path, said.append) == [] and len(said) == 1  # nothing found: nothing said
