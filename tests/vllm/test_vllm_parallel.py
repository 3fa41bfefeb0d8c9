"""Tensor parallelism on the real vLLM engine (its CPU build here: one worker process per rank, each
bound to a core of its own): the same rows as one rank, killed and resumed, a worker lost, on Ray."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from vllm_helpers import cli, engine_processes, kill_all, rows, wait_for_rows, wait_gone, write_dataset

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

N = 64
# float32: the ranks' partial sums then round alike, so 2 ranks give 1 rank's greedy tokens exactly
# (in bf16, vLLM's default on CPU, a third of the tiny model's records part somewhere: docs/scaling.md).
CONFIG = """\
[engine]
enforce_eager = true
dtype = "float32"
tensor_parallel_size = {tp}
[sampling]
temperature = 0
max_tokens = {max_tokens}
ignore_eos = true
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model):
    folder = tmp_path_factory.mktemp("vllm-tp")
    audio, subs = write_dataset(folder, N)
    for tp in (1, 2):
        (folder / f"tp{tp}.toml").write_text(CONFIG.format(tp=tp, max_tokens=24))
    (folder / "tp2-long.toml").write_text(CONFIG.format(tp=2, max_tokens=400))
    inputs = ["run", "--model", str(tiny_model), "--audio", str(audio), "--subtitles", str(subs), "--no-progress"]
    return folder, inputs


@pytest.fixture(scope="module")
def one_rank(setup):
    folder, inputs = setup
    out = folder / "tp1.jsonl"
    process = cli(*inputs, "--config", str(folder / "tp1.toml"), "-o", str(out))
    _, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stderr.decode()[-3000:]
    return {r["file_id"]: r for r in rows(out)}


def _names(pids) -> set[str]:
    """The process titles vLLM sets (VLLM::EngineCore, VLLM::Worker_TP0, …; comm cuts them at 15 characters)."""
    names = set()
    for pid in pids:
        try:
            names.add(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace").strip())
        except OSError:
            pass
    return names


def _start(args, out, after: int = 6):
    """A run on `out`, once `after` more rows are written: (process, the vLLM processes below it)."""
    before = len(rows(out)) if out.exists() else 0
    process = cli(*args, "-o", str(out), start_new_session=True)
    assert wait_for_rows(out, before + after, process), process.communicate()[1].decode()[-3000:]
    return process, engine_processes(process.pid)


def test_two_ranks_write_one_ranks_rows_through_kill_term_and_resume(setup, one_rank):
    folder, inputs = setup
    args, out = [*inputs, "--config", str(folder / "tp2.toml"), "--in-flight", "4"], folder / "tp2.jsonl"

    process, engines = _start(args, out)
    assert {"VLLM::EngineCore", "VLLM::Worker_TP0", "VLLM::Worker_TP1"} <= _names(engines)
    process.send_signal(signal.SIGKILL)  # the main process alone, as the OOM killer does
    process.communicate(timeout=60)
    left = wait_gone(engines, 10)
    kill_all(left)
    assert not left, f"still running 10 s after the run was killed: {sorted(_names(left))}"

    process, engines = _start(args, out)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = (b.decode() for b in process.communicate(timeout=120))
    assert process.returncode == 130, stderr[-3000:]
    assert "threads bound rank by rank, to cores " in stdout and "KV cache: 1 GiB per rank" in stdout
    left = wait_gone(engines, 10)
    kill_all(left)
    assert not left, f"still running after exit 130: {sorted(_names(left))}"

    process = cli(*args, "-o", str(out))
    _, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stderr.decode()[-3000:]
    got = rows(out)
    assert len(got) == len({r["file_id"] for r in got}) == N
    assert {r["file_id"]: r for r in got} == one_rank


def test_a_killed_rank_stops_the_run_in_one_line_and_the_resume_loses_nothing(setup):
    folder, inputs = setup
    args, out = [*inputs, "--config", str(folder / "tp2-long.toml"), "--in-flight", "2"], folder / "worker.jsonl"
    process, engines = _start(args, out, after=2)
    worker = next(pid for pid in engines if _names([pid]) == {"VLLM::Worker_TP1"})
    os.kill(worker, signal.SIGKILL)
    _, stderr = (b.decode() for b in process.communicate(timeout=120))
    assert process.returncode == 3, stderr[-3000:]
    assert stderr.startswith("Error: vLLM engine died: ") and stderr.count("\n") == 1, stderr[-3000:]
    left = wait_gone(engines, 10)
    kill_all(left)
    assert not left, f"still running after the rank died: {sorted(_names(left))}"

    written = len(rows(out))
    process = cli(*args, "-o", str(out))
    stdout, stderr = (b.decode() for b in process.communicate(timeout=900))
    assert process.returncode == 0, stderr[-3000:]
    assert f"resuming {out}: {written} of {N} records already done" in stdout
    got = rows(out)
    assert len(got) == len({r["file_id"] for r in got}) == N and {r["status"] for r in got} == {"length"}


def test_more_ranks_than_cores_is_refused_before_an_engine_starts(setup, tmp_path):
    folder, inputs = setup
    cores = len(os.sched_getaffinity(0))
    process = cli(*inputs, "--config", str(folder / "tp2.toml"), "--replicas", str(cores), "-o",
                  str(tmp_path / "x.jsonl"))
    _, stderr = (b.decode() for b in process.communicate(timeout=300))
    assert process.returncode == 2, stderr
    assert stderr == (f"Error: tensor_parallel_size 2 x pipeline_parallel_size 1 x {cores} replica(s) = {2 * cores} "
                      f"CPU worker processes, but {cores} cores are free for them: each rank needs a core of its own "
                      f"on vLLM's CPU build; at most {cores} ranks x replicas, e.g. tensor_parallel_size 2 x "
                      f"pipeline_parallel_size 1 with {cores // 2} replica(s)\n")


def test_a_ray_actor_runs_two_ranks(setup, one_rank, tmp_path):
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e '.[ray]'")
    folder, inputs = setup
    out = tmp_path / "ray.jsonl"
    process = cli(*inputs, "--config", str(folder / "tp2.toml"), "--ray-address", "local", "--replicas", "1",
                  "-o", str(out))
    stdout, stderr = (b.decode() for b in process.communicate(timeout=900))
    assert process.returncode == 0, stderr[-3000:]
    log = (tmp_path / "ray.jsonl.engine.log").read_text(errors="replace")
    assert "Worker_TP1" in log and "VLLM_CPU_OMP_THREADS_BIND=" in log
    assert {r["file_id"]: r for r in rows(out)} == one_rank
