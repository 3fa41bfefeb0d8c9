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
    results = [r for r in map(orjson.loads, (tmp_path / "d" / "s2_final_descriptions.jsonl").read_bytes().splitlines())
               if r["status"] in ("ok", "length")]  # a description cut at max_tokens is exported too
    assert sorted(r["file_id"] for r in exported) == sorted(r["file_id"] for r in results) and exported
    assert set(exported[0]) == {"file_id", "final_description"}
    assert f"wrote {len(exported)} records to " in text


def test_the_demo_says_which_engine_and_why():
    engine, why = choose_engine()
    assert engine in ("vllm", "hf") and why
    if engine == "vllm":
        assert why.startswith("vLLM ") and ("CPU build" in why or "CUDA GPU" in why)


@pytest.mark.vllm
def test_demo_from_clips_describes_both_modalities_fuses_and_exports(tiny_model, tiny_omni, tiny_vl, tmp_path):
    """describe on vLLM (the tiny Omni thinker, then the tiny Qwen2.5-VL), step 2 on transformers."""
    cache = tmp_path / "cache"
    cache.mkdir()
    for built in (tiny_model, tiny_omni, tiny_vl):  # the session's builds, where the demo looks for them
        (cache / built.name).symlink_to(built)
    env = {**os.environ, "S2_VLLM_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    out = subprocess.run([sys.executable, "-m", "s2_vllm", "demo", "--from-clips", "--engine", "hf", "--dir",
                          str(tmp_path / "d"), "--max-tokens", "48"], capture_output=True, text=True, env=env,
                         timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    d = tmp_path / "d"
    assert sorted(p.suffix for p in (d / "demo-clips").iterdir()) == [""] + [".mp4"] * 8
    read = {name: [orjson.loads(line) for line in (d / f"{name}_descriptions.jsonl").read_bytes().splitlines()]
            for name in ("audio", "visual")}
    for name, described in read.items():
        exported = orjson.loads((d / f"{name}_descriptions.json").read_bytes())
        assert exported and set(exported[0]) == {"file_id", "generated_text"}
        assert {r["file_id"] for r in exported} == {r["file_id"] for r in described if r["status"] in ("ok", "length")}
    usable = [{r["file_id"] for r in rows if r["status"] in ("ok", "length")} for rows in read.values()]
    fused = [orjson.loads(line) for line in (d / "s2_final_descriptions.jsonl").read_bytes().splitlines()]
    assert sorted(r["file_id"] for r in fused) == sorted(usable[0] & usable[1])  # in both steps 1, each once
    step2 = orjson.loads((d / "s2_final_descriptions.json").read_bytes())
    assert [r["file_id"] for r in step2] == [r["file_id"] for r in fused if r["status"] in ("ok", "length")]
    assert out.stdout.count("found 8 clips in ") == 2
    assert "prompt: the built-in fusion of acoustic and visual clues with the subtitle" in out.stdout
