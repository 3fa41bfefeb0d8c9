"""The real vLLM engine under the real CLI, in subprocesses: kill it, stop it, resume it.

These start vLLM itself (its CPU build here, CUDA on a GPU node), so they are slow: a start
takes about a minute on 2 cores. The chain below shares one clean run and reuses one
checkpoint across four interruptions.
"""

from __future__ import annotations

import os
import signal
import time

import orjson
import pytest

from s2_vllm.engines.vllm_api import is_cpu_platform
from vllm_helpers import cli, engine_processes, kill_all, rows, wait_for_rows, wait_gone, write_dataset

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

N = 160
# Greedy, every record exactly 24 tokens (ignore_eos): rows arrive at an even pace with a small
# window, so a signal lands mid-run, and a resumed run must give exactly the clean run's rows.
# enforce_eager: no compile step, so each of the many engine starts here is shorter.
GREEDY = "[engine]\nenforce_eager = true\n[sampling]\ntemperature = 0\nmax_tokens = 24\nignore_eos = true\n"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model):
    folder = tmp_path_factory.mktemp("vllm-cli")
    audio, subs = write_dataset(folder, N)
    config = folder / "greedy.toml"
    config.write_text(GREEDY)
    inputs = ["--model", str(tiny_model), "--audio", str(audio), "--subtitles", str(subs), "--no-progress"]
    return folder, inputs, ["run", *inputs, "--config", str(config), "--in-flight", "8"]


@pytest.fixture(scope="module")
def clean(setup):
    folder, _, args = setup
    out = folder / "clean.jsonl"
    process = cli(*args, "-o", str(out))
    stdout, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stderr.decode()[-3000:]
    return out


def test_default_settings_complete_and_the_console_stays_clean(setup, tmp_path):
    """The qwen3-8b defaults (temperature 0.7, a seed per record) and vLLM's own engine defaults, all
    160 prompts in flight at once: the setting in which vLLM's CPU engine used to die (chunked
    prefill splits a seeded prompt)."""
    _, inputs, _ = setup
    out = tmp_path / "defaults.jsonl"
    process = cli("run", *inputs, "--max-tokens", "16", "-o", str(out))
    stdout, stderr = (b.decode() for b in process.communicate(timeout=900))
    assert process.returncode == 0, stderr[-3000:]
    got = rows(out)
    assert len(got) == len({r["file_id"] for r in got}) == N
    assert {r["status"] for r in got} <= {"ok", "length"}
    if is_cpu_platform():
        assert "vLLM on CPU: chunked prefill off" in stdout
    assert f"engine log: {out}.engine.log (--show-engine-log shows it here)" in stdout
    # vLLM's own lines went to the log, not to the console.
    assert "INFO" not in stdout + stderr and "EngineCore" not in stdout + stderr, stdout + stderr
    log = (tmp_path / "defaults.jsonl.engine.log").read_text(errors="replace")
    assert "Triton" in log and "EngineCore" in log  # import-time lines and the engine process's lines
    summary = orjson.loads((tmp_path / "defaults.jsonl.summary.json").read_bytes())
    assert summary["completion_tokens"] == sum(r["completion_tokens"] for r in got)
    assert not (tmp_path / "defaults.jsonl.engine.pids").exists()


def _interrupted(args, out, how):
    """Start a run on `out`, interrupt it after a few new rows; returns (process, its engine processes)."""
    before = len(rows(out)) if out.exists() else 0
    process = cli(*args, "-o", str(out), start_new_session=True)
    assert wait_for_rows(out, before + 12, process), process.communicate()[1].decode()[-3000:]
    engines = engine_processes(process.pid)
    assert engines, "no engine process found below the run"
    if how == "kill":
        process.send_signal(signal.SIGKILL)  # the main process alone, as the OOM killer does
    elif how == "term":
        process.send_signal(signal.SIGTERM)  # `kill PID`
    else:
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the whole process group, engine included
    stdout, stderr = process.communicate(timeout=120)
    return process, engines, stdout.decode(), stderr.decode()


def test_kill_term_and_ctrl_c_then_resume_equal_an_uninterrupted_run(setup, clean):
    folder, _, args = setup
    out = folder / "interrupted.jsonl"

    process, engines, _, _ = _interrupted(args, out, "kill")
    assert process.returncode == -signal.SIGKILL
    left = wait_gone(engines, 10)
    kill_all(left)
    assert not left, f"engine processes still running 10 s after the run was killed: {sorted(left)}"
    pids = folder / "interrupted.jsonl.engine.pids"  # the watchdog removes its list once they are gone: a moment later
    deadline = time.monotonic() + 5
    while pids.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pids.exists()

    for how in ("term", "int"):
        done_before = len(rows(out))
        process, engines, stdout, stderr = _interrupted(args, out, how)
        assert process.returncode == 130, stderr[-3000:]
        assert stderr.strip().endswith("run the same command to resume"), stderr[-3000:]
        assert f"resuming {out}: {done_before} of {N} records already done" in stdout
        left = wait_gone(engines, 10)
        kill_all(left)
        assert not left, f"engine processes still running after exit 130 ({how}): {sorted(left)}"

    process = cli(*args, "-o", str(out))
    stdout, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stderr[-3000:]
    ids = [r["file_id"] for r in rows(out)]
    assert len(ids) == len(set(ids)) == N
    expected = {r["file_id"]: r for r in rows(clean)}
    assert {r["file_id"]: r for r in rows(out)} == expected


def test_a_dead_replica_engine_loses_nothing(setup, tmp_path):
    _, _, args = setup
    out = tmp_path / "replicas.jsonl"
    process = cli(*args, "--replicas", "2", "--temperature", "0.7", "-o", str(out))
    assert wait_for_rows(out, 12, process), process.communicate()[1].decode()[-3000:]
    below = engine_processes(process.pid)
    # The replicas are the run's children; each has its own vLLM EngineCore below it.
    replicas = sorted(p for p in below if _parent(p) == process.pid and any(_parent(q) == p for q in below))
    assert len(replicas) == 2, below
    core = next(q for q in below if _parent(q) == replicas[0])
    os.kill(core, signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stderr.decode()[-3000:]
    got = rows(out)
    assert len(got) == len({r["file_id"] for r in got}) == N
    assert {r["status"] for r in got} == {"length"}
    summary = orjson.loads((tmp_path / "replicas.jsonl.summary.json").read_bytes())
    assert sorted(r["alive"] for r in summary["replicas"]) == [False, True]
    assert "s2-vllm: replica 0 died" in stderr.decode()
    assert "leaked" not in stderr.decode()  # multiprocessing's resource tracker found nothing left behind


def _parent(pid: int) -> int | None:
    try:
        data = open(f"/proc/{pid}/stat", "rb").read()
    except OSError:
        return None
    return int(data[data.rindex(b")") + 2:].split()[1])
