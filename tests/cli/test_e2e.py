"""The real CLI in a subprocess on the tiny model: kill it, resume it, compare with a clean run."""

import os
import signal
import subprocess
import sys

import orjson
import pytest

from s2_vllm.tiny import demo_paths
from vllm_helpers import rows, wait_for_rows

pytestmark = pytest.mark.slow


def run_cli(*args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "s2_vllm", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, **kw)


@pytest.fixture
def args(tiny_model):
    audio, subtitles = demo_paths()
    return ["run", "--engine", "hf", "--model", str(tiny_model), "--audio", str(audio), "--subtitles",
            str(subtitles), "--max-tokens", "32", "--temperature", "0", "--batch-size", "1", "--no-progress"]


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, args):
    clean = tmp_path / "clean.jsonl"
    out, err = run_cli(*args, "-o", str(clean)).communicate(timeout=300)
    assert b"joined 47 records" in out, err

    killed = tmp_path / "killed.jsonl"
    process = run_cli(*args, "-o", str(killed))
    assert wait_for_rows(killed, 10, process), "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    partial = len(rows(killed))
    assert 10 <= partial < 47

    process = run_cli(*args, "-o", str(killed))
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert f"resuming {killed}: {partial} of 47 records already done".encode() in out

    ids = [r["file_id"] for r in rows(killed)]
    assert len(ids) == len(set(ids)) == 47
    by_id = {r["file_id"]: r for r in rows(clean)}
    assert {r["file_id"]: r for r in rows(killed)} == by_id


def test_sigint_exits_130_and_says_how_to_resume(tmp_path, args):
    out_path = tmp_path / "out.jsonl"
    process = run_cli(*args, "-o", str(out_path))
    assert wait_for_rows(out_path, 5, process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert err.decode().strip().endswith("run the same command to resume")
    written = rows(out_path)
    assert len({r["file_id"] for r in written}) == len(written)
    summary = orjson.loads((tmp_path / "out.jsonl.summary.json").read_bytes())
    assert summary["interrupted"] is True
