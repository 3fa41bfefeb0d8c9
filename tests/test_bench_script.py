"""scripts/bench.py where there is no GPU: the tutorial and hf rows on the tiny model, and the roofline sums."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "scripts" / "bench.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_rows_json_and_table(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(BENCH), "--device", "cpu", "--tiny", "--records", "8", "--tutorial-records", "2",
           "--max-tokens", "4", "--modes", "tutorial,hf", "--out", str(out)]
    env = dict(os.environ, S2_VLLM_CACHE=str(tiny_model.parent), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    results = json.loads(out.read_text("utf-8"))
    rows = results["rows"]
    assert list(rows) == ["tutorial", "hf"]
    assert (rows["tutorial"]["records"], rows["tutorial"]["output_tokens"]) == (2, 2 * 4)  # ignore_eos: all 4 tokens
    assert (rows["hf"]["records"], rows["hf"]["output_tokens"]) == (8, 8 * 4)
    for row in rows.values():
        assert row["seconds"] > 0 and row["prompt_tokens"] > 300  # rendered S2 prompts of 150-300 word descriptions
        assert row["requests_per_s"] == pytest.approx(row["records"] / row["seconds"])
        assert row["output_tok_s"] == pytest.approx(row["output_tokens"] / row["seconds"])
        assert row["total_tok_s"] == pytest.approx((row["prompt_tokens"] + row["output_tokens"]) / row["seconds"])
        assert row["x_plain"] is None  # no plain vLLM row to compare with
        assert row["torch_peak_mib"] is None  # CPU: no CUDA allocator
    assert rows["tutorial"]["x_tutorial"] == 1.0
    assert rows["hf"]["x_tutorial"] == pytest.approx(rows["hf"]["output_tok_s"] / rows["tutorial"]["output_tok_s"])
    assert results["spec"]["host"]["records"] == 8 and results["spec"]["host"]["records_per_s"] > 0
    assert "roofline" not in results and "micro" not in results  # both need a GPU

    table = Path(f"{out}.md").read_text("utf-8").splitlines()
    assert table[0].startswith("| mode | what | records | wall s | req/s | output tok/s | total tok/s |")
    assert [line.split(" | ")[0] for line in table[2:4]] == ["| tutorial", "| hf"]
    assert all(line.count("|") == 14 for line in table[:4])
    assert table[4] == "" and table[5].startswith("Host (join + render + tokenize")


def test_roofline_of_qwen3_8b() -> None:
    from s2_vllm.tiny import QWEN3_8B

    bench = load_bench()
    micro = {"bf16_tflops": 800.0, "copy_bandwidth_gbs": 3000.0, "gpu_memory_bytes": 80 * 2**30}
    rl = bench.roofline(QWEN3_8B, 400, 300, micro, 400_000, 0.9)
    norms = 36 * (2 * 4096 + 2 * 128) + 4096  # RMSNorm weights, left out of the sums
    assert rl["non_embedding_params"] + 2 * rl["lm_head_params"] + norms == 8_190_735_360  # Qwen3-8B's count
    assert rl["kv_bytes_per_token"] == 2 * 36 * 8 * 128 * 2  # K and V, 36 layers, 8 KV heads of 128, bf16
    assert rl["batch"] == 400_000 // 700  # the KV pool holds fewer than max_num_seqs sequences of 700 tokens
    assert rl["total_tok_s"] == pytest.approx(min(rl["compute_bound_tok_s"], rl["memory_bound_tok_s"]))
    per_token = rl["flops_per_request"] / 700 / 1e9
    assert 13.9 < per_token < 15.0  # ~2 x 6.95 B non-embedding params per token, plus lm_head and attention


@pytest.mark.vllm
def test_cpu_vllm_rows(tiny_model: Path, tmp_path: Path) -> None:
    """The vLLM rows on vLLM's CPU build: plain LLM.generate with and without seeds and s2-vllm run, same
    engine settings, each row with the sampler its log says ran."""
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(BENCH), "--device", "cpu", "--tiny", "--records", "12", "--max-tokens", "4",
           "--modes", "plain,plain-unseeded,s2", "--out", str(out), "--max-model-len", "1024", "--enforce-eager"]
    env = dict(os.environ, S2_VLLM_CACHE=str(tiny_model.parent), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = json.loads(out.read_text("utf-8"))["rows"]
    assert list(rows) == ["plain", "plain-unseeded", "s2"], rows
    for row in rows.values():
        assert "error" not in row, row
        assert (row["records"], row["output_tokens"], row["attention"]) == (12, 12 * 4, "CPU_ATTN")
    assert [rows[m]["sampler"] for m in rows] == ["vLLM PyTorch, per-request generators", "vLLM PyTorch (CPU)",
                                                  "s2-vllm SeededSampler"]
    assert rows["plain"]["x_plain"] == 1.0 and rows["plain-unseeded"]["x_plain-unseeded"] == 1.0
    assert rows["s2"]["x_plain"] == pytest.approx(rows["s2"]["output_tok_s"] / rows["plain"]["output_tok_s"])
    assert rows["s2"]["x_plain-unseeded"] == pytest.approx(
        rows["s2"]["output_tok_s"] / rows["plain-unseeded"]["output_tok_s"])
