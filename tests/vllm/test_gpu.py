"""End to end on a real vLLM engine: needs CUDA, skipped cleanly without it.

The model is a small Qwen3-shaped config (4 layers, hidden 256) over the tiny tokenizer,
loaded with `load_format = "dummy"` (random weights, seeded by vLLM), so nothing is
downloaded. The text is noise; the engine, the step loop and the checkpoint are real.

    pytest -m gpu tests/test_gpu.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers import REPO

pytestmark = pytest.mark.gpu

N_RECORDS = 200
RUN_TIMEOUT = 540  # seconds per CLI run; engine start with enforce_eager takes well under a minute

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)

ENGINE_TOML = """\
[engine]
load_format = "dummy"          # random weights: no download, no weight files
gpu_memory_utilization = 0.3
enforce_eager = true           # no CUDA graph capture: faster start
max_model_len = 2048
max_num_seqs = 8

[run]
in_flight = 8                  # completions trickle in 8 at a time, so a kill lands mid-run
"""


@pytest.fixture(scope="session")
def cuda():
    """Skips every test here when there is no usable CUDA device (the only skip)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is False)")
    pytest.importorskip("vllm")


@pytest.fixture(scope="session")
def vllm_model_dir(cuda, request, tmp_path_factory) -> Path:
    """A weightless Qwen3-shaped model directory with the tiny tokenizer."""
    tiny = Path(request.getfixturevalue("tiny_model"))  # session fixture from conftest.py
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    dest = tmp_path_factory.mktemp("qwen3-dummy")
    for name in TOKENIZER_FILES:
        if (tiny / name).exists():
            shutil.copy2(tiny / name, dest / name)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": len(tokenizer),  # every id the model can sample decodes
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "max_position_embeddings": 4096,
        "max_window_layers": 4,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "bos_token_id": pad,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "torch_dtype": "bfloat16",
        "use_cache": True,
    }
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n", "utf-8")
    return dest


@pytest.fixture()
def inputs(tmp_path) -> tuple[Path, Path, Path]:
    """(audio descriptions, subtitles, config TOML) for N_RECORDS records."""
    moods = ["a trembling voice", "a long sigh", "a sudden shout", "a soft chuckle", "a flat, slow tone"]
    lines = ["I'm fine, really.", "Get out of here!", "We won the game!", "I don't know what to say.", "Okay."]
    audio, subtitles = [], []
    for i in range(1, N_RECORDS + 1):
        fid = f"g{i:04d}"
        clue = " ".join(f"The speaker has {moods[(i + k) % len(moods)]}." for k in range(1 + i % 4))
        audio.append({"file_id": fid, "generated_text": clue})
        subtitles.append({"file_id": fid, "english_transcription": lines[i % len(lines)] * (1 + i % 3)})
    a, s, c = tmp_path / "audio.json", tmp_path / "subtitles.json", tmp_path / "engine.toml"
    a.write_text(json.dumps(audio, ensure_ascii=False), "utf-8")
    s.write_text(json.dumps(subtitles, ensure_ascii=False), "utf-8")
    c.write_text(ENGINE_TOML, "utf-8")
    return a, s, c


def run_args(model: Path, inputs: tuple[Path, Path, Path], output: Path) -> list[str]:
    audio, subtitles, config = inputs
    return [
        sys.executable, "-m", "s2_vllm", "run",
        "--engine", "vllm",
        "--config", str(config),
        "--model", str(model),
        "--audio", str(audio),
        "--subtitles", str(subtitles),
        "--output", str(output),
        "--max-tokens", "64",
        "--temperature", "0",
        "--no-progress",
    ]  # fmt: skip


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO), **extra)
    env.pop("S2_VLLM_DEBUG", None)
    return env


def run_cli(args: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("ab") as out:
        proc = subprocess.run(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, f"s2-vllm run exited {proc.returncode}:\n{tail(log)}"


def tail(log: Path, n: int = 4000) -> str:
    return log.read_text("utf-8", errors="replace")[-n:] if log.exists() else "(no log)"


def complete_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def read_rows(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text("utf-8").splitlines(), start=1):
        assert line.strip(), f"blank line {n} in {path}"
        rows.append(json.loads(line))  # every row parses
    return rows


def expected_ids() -> set[str]:
    return {f"g{i:04d}" for i in range(1, N_RECORDS + 1)}


@pytest.mark.slow
def test_sigkill_then_resume_writes_every_record_once(cuda, vllm_model_dir, inputs, tmp_path):
    output, log = tmp_path / "out.jsonl", tmp_path / "run.log"
    args, env = run_args(vllm_model_dir, inputs, output), cli_env()

    # First run: SIGKILL (the whole process group, engine core included) once rows appear.
    with log.open("ab") as out:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while complete_lines(output) < 5:
            assert proc.poll() is None, f"first run ended (rc {proc.returncode}) before it could be killed:\n{tail(log)}"
            assert time.monotonic() < deadline, f"no rows after {RUN_TIMEOUT}s:\n{tail(log)}"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = complete_lines(output)
    assert 0 < killed_at < N_RECORDS, f"the kill landed after {killed_at} rows; it should land mid-run"

    # Second run: the same command finishes the rest.
    run_cli(args, env, log)
    rows = read_rows(output)
    counts = Counter(row["file_id"] for row in rows)
    assert set(counts) == expected_ids()
    assert [fid for fid, n in counts.items() if n != 1] == []
    for row in rows:
        assert row["status"] in ("ok", "length"), row
        assert isinstance(row["final_description"], str)
        assert row["prompt_tokens"] > 0 and 0 < row["completion_tokens"] <= 64


@pytest.mark.slow
def test_two_greedy_runs_give_identical_rows(cuda, vllm_model_dir, inputs, tmp_path):
    # The engine core runs in-process so batch composition (and with it the numerics)
    # follows the runner's deterministic add/step order rather than process timing.
    env = cli_env(VLLM_ENABLE_V1_MULTIPROCESSING="0")
    results = []
    for name in ("first", "second"):
        output, log = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.log"
        run_cli(run_args(vllm_model_dir, inputs, output), env, log)
        rows = read_rows(output)
        assert Counter(row["file_id"] for row in rows) == Counter(expected_ids())
        results.append({row["file_id"]: row for row in rows})
    first, second = results
    differing = [fid for fid in sorted(first) if first[fid] != second[fid]]
    assert differing == [], f"{len(differing)} rows differ, e.g. {first[differing[0]]} vs {second[differing[0]]}"
