"""scripts/bench.py where there is no GPU: the tutorial and hf rows on the tiny model, and the roofline sums."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO

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


# The harness itself (scripts/bench_harness.py), on a toy benchmark: no model, no engine.
TOY = '''
import os, subprocess, sys, time
from pathlib import Path
sys.path.insert(0, {scripts!r})
import bench_harness as harness

MODES = harness.Registry()


@MODES.add("countdown", "3 s, then 1 s, then 2 s")
def countdown(spec):
    trials = Path(spec["work"]) / "countdown.trials"
    n = len(trials.read_text()) if trials.exists() else 0
    trials.write_text("x" * (n + 1))
    return {{"seconds": [3.0, 1.0, 2.0][n], "items": 6, "trial": n + 1}}


@MODES.add("once", "runs once however many trials", repeat=False)
def once(spec):
    return {{"seconds": 2.0, "items": 2}}


@MODES.add("fails", "raises")
def fails(spec):
    raise ValueError("no such input")


@MODES.add("hangs", "starts a grandchild, then sleeps")
def hangs(spec):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    (Path(spec["work"]) / "pids").write_text(f"{{os.getpid()}} {{sleeper.pid}}")
    time.sleep(600)


if __name__ == "__main__":
    harness.worker(MODES, sys.argv[2], sys.argv[3])
'''


def toy_bench(tmp_path: Path, timeout: float = 120):
    harness = load_bench().harness
    script = tmp_path / "toy.py"
    script.write_text(TOY.format(scripts=str(REPO / "scripts")), "utf-8")
    columns = [harness.Column("items", "items"), harness.Column("items/s", "items_per_s", ".1f"),
               harness.Column("× once", "x_once", ".2f")]

    def finish(results: dict) -> None:
        results["rows"] = harness.with_rates(results["rows"], {"items_per_s": ("items",)}, "items_per_s", ["once"])

    def render(results: dict) -> str:
        return harness.table(results["rows"].items(), columns) + "\n\n" + harness.trials_note(results["rows"]) + "\n"

    bench = harness.Bench(script, tmp_path, tmp_path / "toy.json", tmp_path / "toy.json.md", {"rows": {}}, render,
                          finish=finish, timeout=timeout)
    bench.write_spec({"work": str(tmp_path)})
    return harness, bench


def test_harness_registry_and_default_set() -> None:
    harness = load_bench().harness
    modes = harness.Registry()
    modes.add("a", "first")(lambda spec: {})
    modes.add("b", "two GPUs", opt_in=True)(lambda spec: {})
    modes.add("c", "long outputs", devices=("cuda",), repeat=False)(lambda spec: {})
    assert list(modes) == ["a", "b", "c"] and modes["c"].what == "long outputs" and not modes["c"].repeat
    assert (modes.default("cpu"), modes.default("cuda"), modes.default(None)) == (["a"], ["a", "c"], ["a"])
    assert modes.help().splitlines()[1:] == ["  a                first", "  b                two GPUs [opt-in]",
                                             "  c                long outputs [default on cuda only, run once]"]
    with pytest.raises(ValueError, match="registered twice"):
        modes.add("a", "again")(lambda spec: {})

    import argparse

    parser = argparse.ArgumentParser()
    assert harness.chosen(parser, modes, "c,b", "cpu") == ["c", "b"]  # named: opt-in and other devices' too
    with pytest.raises(SystemExit):
        harness.chosen(parser, modes, "a,z", "cpu")


def test_harness_rates_table_and_fastest_trial() -> None:
    harness = load_bench().harness
    kept = harness.keep_fastest(None, {"seconds": 4.0, "n": 8})
    kept = harness.keep_fastest(kept, {"error": "RuntimeError: exit 1"})
    kept = harness.keep_fastest(kept, {"seconds": 2.0, "n": 8})
    kept = harness.keep_fastest(kept, {"seconds": 3.0, "n": 8})
    assert kept == {"seconds": 2.0, "n": 8, "trials": [4.0, None, 2.0, 3.0]}

    rows = harness.with_rates({"base": {"seconds": 4.0, "n": 8}, "fast": kept, "broken": {"error": "boom\nmore"}},
                              {"n_per_s": ("n",)}, "n_per_s", ["base", "absent"])
    assert (rows["base"]["n_per_s"], rows["fast"]["n_per_s"], rows["fast"]["x_base"]) == (2.0, 4.0, 2.0)
    assert rows["fast"]["x_absent"] is None and rows["broken"]["x_base"] is None and "n_per_s" not in rows["broken"]
    columns = [harness.Column("what", lambda name, row: name.upper(), keep=True), harness.Column("n", "n"),
               harness.Column("n/s", "n_per_s", ",.2f"), harness.Column("× base", "x_base", ".3g"),
               harness.Column("peak", "peak")]
    assert harness.table(rows.items(), columns).splitlines() == [
        "| mode | what | n | n/s | × base | peak |", "| --- | --- | --- | --- | --- | --- |",
        "| base | BASE | 8 | 2.00 | 1 | – |", "| fast | FAST | 8 | 4.00 | 2 | – |",
        "| broken | BROKEN | failed: boom |  |  |  |"]
    assert harness.trials_note(rows) == "Each row is the fastest of its trials (seconds, in the order run): " \
                                        "fast 4.00, failed, 2.00, 3.00."


def test_harness_repeat_keeps_the_fastest_trial_and_writes_after_every_mode(tmp_path: Path) -> None:
    _, bench = toy_bench(tmp_path)
    modes = [mode for name, mode in load_toy_modes(tmp_path).items() if name != "hangs"]
    bench.run(modes, repeat=2)

    results = json.loads((tmp_path / "toy.json").read_text("utf-8"))
    rows = results["rows"]
    assert list(rows) == ["countdown", "once", "fails"]
    assert rows["countdown"] == {"seconds": 1.0, "items": 6, "trial": 2, "trials": [3.0, 1.0], "items_per_s": 6.0,
                                 "x_once": 6.0}  # the second trial's row, the first's seconds kept
    assert rows["once"]["trials"] == [2.0]  # repeat=False: one trial however many are asked for
    assert rows["fails"]["trials"] == [None, None]
    assert rows["fails"]["error"].startswith("RuntimeError: exit 1") and "ValueError: no such input" in rows[
        "fails"]["error"]  # the end of the child's log
    assert "ValueError: no such input" in (tmp_path / "fails.log").read_text("utf-8")
    table = (tmp_path / "toy.json.md").read_text("utf-8").splitlines()
    assert table[2:4] == ["| countdown | 6 | 6.0 | 6.00 |", "| once | 2 | 1.0 | 1.00 |"]
    assert table[4].startswith("| fails | failed: RuntimeError: exit 1; the end of ") and table[4].endswith(" |  |  |")
    assert table[6] == "Each row is the fastest of its trials (seconds, in the order run): countdown 3.00, 1.00; " \
                       "fails failed, failed."


def load_toy_modes(tmp_path: Path) -> dict:
    spec = importlib.util.spec_from_file_location("toy", tmp_path / "toy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MODES


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie is dead, waiting for whoever inherited it to reap it


def test_harness_kills_a_mode_that_runs_past_its_timeout_with_what_it_started(tmp_path: Path) -> None:
    _, bench = toy_bench(tmp_path, timeout=8)  # long enough for the child to start and write its pids
    with pytest.raises(RuntimeError, match="exit killed after 8s"):
        bench.child("hangs")
    pids = [int(pid) for pid in (tmp_path / "pids").read_text().split()]
    for _ in range(200):  # SIGKILL is sent to the whole group; the kernel takes a moment to finish them
        if not any(alive(pid) for pid in pids):
            break
        time.sleep(0.05)
    assert [alive(pid) for pid in pids] == [False, False]  # the mode's process and its grandchild
