"""The replica pool on Ray: a private local Ray instance, two CPU actors, the rows of one engine."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import scaling_helpers as h

pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e '.[ray]'")


@pytest.mark.slow
def test_two_ray_actors_write_the_rows_of_one_engine(tiny_model, tmp_path):
    inputs = h.small_inputs(tmp_path)
    clean = tmp_path / "clean.jsonl"
    h.run(h.config(tiny_model, inputs), clean)

    out = tmp_path / "ray.jsonl"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "s2_vllm", *h.cli_args(tiny_model, inputs), "--ray-address", "local",
         "--replicas", "2", "-o", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert h.by_id(out) == h.by_id(clean)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("replica ")]
    assert len(lines) == 2 and all(" 0 records" not in line for line in lines), proc.stdout
