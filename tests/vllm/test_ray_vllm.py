"""Ray replicas on the real vLLM engine (its CPU build here): each actor asks for its share of the
CPUs and binds its engine's threads to its share of the cores; every id comes back once, and an
actor killed mid-run hands its records to the other."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import orjson
import pytest

from s2_vllm.reaper import descendants
from vllm_helpers import cli, rows, write_config, write_dataset

pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e '.[ray]'")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

N = 48
# each replica holds 4 records at a time, so after the first 6 rows both still have several rounds to go: the
# victim is killed holding work, which the driver must notice (an actor killed idle at the end goes unnoticed)


def _ray_replicas() -> dict[int, bytes]:
    """pid -> command line of the processes Ray runs our replica actor in."""
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"ray::RayReplica"):
                found[int(name)] = cmdline
    return found


def test_two_ray_actors_on_the_real_engine_lose_nothing_when_one_is_killed(tiny_model, tmp_path):
    audio, subs = write_dataset(tmp_path, N)
    config = write_config(tmp_path / "fast.toml", max_tokens=32)
    out = tmp_path / "ray.jsonl"
    env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": ""}
    process = cli("run", "--engine", "vllm", "--model", str(tiny_model), "--audio", str(audio), "--subtitles",
                  str(subs), "--config", str(config), "--no-progress", "--in-flight", "4", "--replicas", "2",
                  "--ray-address", "local", "-o", str(out), env=env, start_new_session=True)
    victim = None
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and process.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 6:
                actors = _ray_replicas()
                if len(actors) == 2:
                    victim = max(actors)
                    killed = {victim: 0, **descendants([victim])}  # the actor and its EngineCore: a node dying
                    for pid in killed:
                        os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        stdout, stderr = (b.decode() for b in process.communicate(timeout=600))
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert victim is not None, "the run never had two Ray actors and six rows"
    assert process.returncode == 0, stderr[-3000:]
    got = rows(out)
    assert len(got) == len({r["file_id"] for r in got}) == N  # every id once
    assert {r["status"] for r in got} == {"length"}
    summary = orjson.loads((tmp_path / "ray.jsonl.summary.json").read_bytes())
    replicas = summary["replicas"]
    assert sorted(r["alive"] for r in replicas) == [False, True]
    dead = next(r for r in replicas if not r["alive"])
    assert dead["error"].startswith("its Ray actor died"), dead
    assert all(" CPU" in r["place"] for r in replicas)
    assert f"s2-vllm: replica {dead['replica']} died (its Ray actor died" in stderr
