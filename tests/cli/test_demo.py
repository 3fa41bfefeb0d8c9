"""`s2-vllm demo` end to end, as the README runs it (here on the hf engine: the vLLM path is the same
`run` command, tested on the real engine in test_vllm_cli.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from s2_vllm.demo import choose_engine

pytestmark = pytest.mark.slow


def test_demo_interrupts_resumes_and_exports(tiny_model, tmp_path):
    env = {**os.environ, "S2_VLLM_CACHE": str(tiny_model.parent), "PYTHONUNBUFFERED": "1"}
    out = subprocess.run([sys.executable, "-m", "s2_vllm", "demo", "--engine", "hf", "--dir", str(tmp_path / "d"),
                          "--max-tokens", "16"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "engine: transformers (hf), because --engine says so" in text
    assert "(the demo sent SIGINT after" in text and "exit code 130" in text
    assert "resuming " in text and "records already done" in text
    exported = orjson.loads((tmp_path / "d" / "s2_final_descriptions.json").read_bytes())
    ok = [r for r in map(orjson.loads, (tmp_path / "d" / "s2_final_descriptions.jsonl").read_bytes().splitlines())
          if r["status"] == "ok"]
    assert sorted(r["file_id"] for r in exported) == sorted(r["file_id"] for r in ok) and exported
    assert set(exported[0]) == {"file_id", "final_description"}
    assert f"wrote {len(exported)} records to " in text


def test_the_demo_says_which_engine_and_why():
    engine, why = choose_engine()
    assert engine in ("vllm", "hf") and why
    if engine == "vllm":
        assert why.startswith("vLLM ") and ("CPU build" in why or "CUDA GPU" in why)


@pytest.mark.vllm
def test_demo_from_audio_describes_fuses_and_exports(tiny_model, tiny_omni, tmp_path):
    """describe on vLLM (the tiny Omni thinker), step 2 on transformers: one engine start."""
    assert tiny_model.parent != tiny_omni.parent
    cache = tmp_path / "cache"
    cache.mkdir()
    for built in (tiny_model, tiny_omni):  # the session's builds, where the demo looks for them
        (cache / built.name).symlink_to(built)
    env = {**os.environ, "S2_VLLM_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    out = subprocess.run([sys.executable, "-m", "s2_vllm", "demo", "--from-audio", "--engine", "hf", "--dir",
                          str(tmp_path / "d"), "--max-tokens", "96"], capture_output=True, text=True, env=env,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    d = tmp_path / "d"
    assert sorted(p.suffix for p in (d / "demo-clips").iterdir()) == [""] + [".flac"] * 3 + [".mp4"] * 2 + [".wav"] * 3
    step1 = orjson.loads((d / "audio_descriptions.json").read_bytes())
    assert step1 and set(step1[0]) == {"file_id", "generated_text"}
    fused = [orjson.loads(line) for line in (d / "s2_final_descriptions.jsonl").read_bytes().splitlines()]
    described = [orjson.loads(line) for line in (d / "audio_descriptions.jsonl").read_bytes().splitlines()]
    assert {r["file_id"] for r in step1} == {r["file_id"] for r in described if r["status"] == "ok"}
    usable = [r["file_id"] for r in described if r["status"] in ("ok", "length")]
    assert sorted(r["file_id"] for r in fused) == sorted(usable)  # step 1's ok and cut rows, each once
    step2 = orjson.loads((d / "s2_final_descriptions.json").read_bytes())
    assert [r["file_id"] for r in step2] == [r["file_id"] for r in fused if r["status"] == "ok"]
    assert "found 8 clips in " in out.stdout and "# step 2 reads the describe checkpoint" in out.stdout
