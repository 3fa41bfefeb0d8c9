"""Shared pieces of the real-engine tests: data sets, the CLI in a subprocess, process checks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from helpers import rows
from s2_vllm.reaper import alive, descendants

# Greedy, every record exactly MAX_TOKENS long (ignore_eos), no compile step (enforce_eager):
# rows arrive at an even pace, so a signal lands mid-run, and a start takes seconds, not a minute.
FAST_CONFIG = """\
[engine]
enforce_eager = true
max_model_len = 1024

[sampling]
temperature = 0
max_tokens = {max_tokens}
ignore_eos = {ignore_eos}
"""


def write_config(path: Path, *, max_tokens: int = 24, ignore_eos: bool = True, extra: str = "") -> Path:
    path.write_text(FAST_CONFIG.format(max_tokens=max_tokens, ignore_eos=str(ignore_eos).lower()) + extra)
    return path


def write_dataset(folder: Path, n: int) -> tuple[Path, Path]:
    """n joined records: audio descriptions and subtitles of different lengths."""
    words = "calm voice trembling pitch sigh laughter quiet sharp slow rising falling breath".split()
    audio = [{"file_id": f"s{i:04d}", "generated_text": " ".join(words[(i + k) % len(words)] for k in range(5 + i % 23))}
             for i in range(n)]
    subs = [{"file_id": f"s{i:04d}", "english_transcription": f"Line {i}: " + " ".join(words[: 3 + i % 7])}
            for i in range(n)]
    a, s = folder / "audio.json", folder / "subs.json"
    a.write_bytes(orjson.dumps(audio))
    s.write_bytes(orjson.dumps(subs))
    return a, s


def cli(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    """`python -m s2_vllm ARGS` with this environment plus `env`."""
    env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "s2_vllm", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, **kw)


def wait_for_rows(path: Path, n: int, process: subprocess.Popen, timeout: float = 600) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return True
        time.sleep(0.02)
    return False


def engine_processes(pid: int) -> dict[int, int]:
    """The processes below `pid` that are not s2-vllm's own watchdog: vLLM's engine and workers."""
    found = descendants([pid])
    return {p: s for p, s in found.items() if b"s2_vllm.reaper" not in _cmdline(p)}


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def wait_gone(processes: dict[int, int], timeout: float) -> dict[int, int]:
    """Waits until none of `processes` runs, up to `timeout` s; returns those still running."""
    deadline = time.monotonic() + timeout
    while (left := alive(processes)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def kill_all(processes: dict[int, int]) -> None:
    for pid in alive(processes):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def kill_mid_run(args: list[str], out: Path, after_rows: int = 4) -> dict:
    """`s2-vllm ARGS` in a subprocess, SIGKILLed (the main process alone) once `out` has `after_rows` rows; the
    engine processes it had, those still running 10 s later (then killed), and how many rows it left."""
    process = cli(*args, start_new_session=True)
    assert wait_for_rows(out, after_rows, process), process.communicate()[1].decode()[-3000:]
    engines = engine_processes(process.pid)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    left = wait_gone(engines, 10)
    kill_all(left)
    return {"engines": engines, "left": left, "killed_at": len(rows(out)), "kill_code": process.returncode}
