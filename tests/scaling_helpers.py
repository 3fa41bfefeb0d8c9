"""Shared by test_replicas.py and test_ray.py: small inputs, the config, reading rows back."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import rows
from s2_vllm import pipeline
from s2_vllm.config import Config
from s2_vllm.tiny import demo_paths

N_SUBTITLES = 24  # the first 24 demo subtitles: 23 records for the model, one skipped (empty text)
MAX_TOKENS = 16


def small_inputs(folder: Path) -> tuple[Path, Path]:
    """The first N_SUBTITLES demo records, so no run needs --limit (which would cut shards differently)."""
    audio_src, subtitles_src = demo_paths()
    subtitles = json.loads(subtitles_src.read_text("utf-8"))[:N_SUBTITLES]
    ids = {s["file_id"] for s in subtitles}
    audio = [a for a in json.loads(audio_src.read_text("utf-8")) if a["file_id"] in ids]
    folder.mkdir(parents=True, exist_ok=True)
    a, s = folder / "audio.json", folder / "subtitles.json"
    a.write_text(json.dumps(audio, ensure_ascii=False), "utf-8")
    s.write_text(json.dumps(subtitles, ensure_ascii=False), "utf-8")
    return a, s


def config(model: Path, inputs: tuple[Path, Path], **parallel: object) -> Config:
    """Greedy, batch size 1 on the hf engine: a record's text does not depend on its neighbours."""
    c = Config()
    c.engine.model = str(model)
    c.run.engine = "hf"
    c.hf.batch_size = 1
    c.hf.device = "cpu"
    c.sampling.temperature = 0.0
    c.sampling.max_tokens = MAX_TOKENS
    c.with_source_path("audio", str(inputs[0]))
    c.with_source_path("subtitle", str(inputs[1]))
    for key, value in parallel.items():
        setattr(c.parallel, key, value)
    return c


def run(c: Config, output: Path, **options: object) -> dict:
    return pipeline.run(c, pipeline.RunOptions(output, progress=False, **options), lambda line: None)


def cli_args(model: Path, inputs: tuple[Path, Path]) -> list[str]:
    return ["run", "--engine", "hf", "--model", str(model), "--audio", str(inputs[0]), "--subtitles", str(inputs[1]),
            "--max-tokens", str(MAX_TOKENS), "--temperature", "0", "--batch-size", "1", "--no-progress"]


def by_id(path: Path) -> dict[str, dict]:
    """Rows by id, asserting each id appears once."""
    found = rows(path)
    table = {r["file_id"]: r for r in found}
    assert len(table) == len(found), "an id appears twice"
    return table
