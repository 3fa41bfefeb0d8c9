"""pipeline.run over a Stage: its records, marks and postprocess are used, and shard/limit apply to any stage."""

from __future__ import annotations

import dataclasses

import orjson

from s2_vllm.checkpoint import read_manifest
from s2_vllm.config import Config, SourceSpec
from s2_vllm.pipeline import RunOptions, run
from s2_vllm.records import Record
from s2_vllm.stage import FUSION, Stage, shard_of
from s2_vllm.stages import StageEntry

IDS = [f"r{i}" for i in range(12)]
SHOUT = StageEntry("shout", "shout", "shouts", "final_description")  # a stage of the test's own


def tiny_config(model) -> Config:
    config = Config()
    config.engine.model = str(model)
    config.run.engine = "fake"  # the engine is not the point here
    config.sampling.max_tokens, config.sampling.temperature = 4, 0.0
    return config


def test_a_stage_brings_its_records_sources_prompt_marks_and_postprocess(tiny_model, tmp_path):
    echoed = []
    stage = Stage(
        SHOUT, read=lambda config, echo: [Record(i, {"clue": f"clue {i}"}) for i in IDS],
        marks={"version": 3}, postprocess=lambda row: dataclasses.replace(row, labels=["seen"]),
        sources=(SourceSpec("clue", "clue", "file_id", "text"),), template="Clue: {clue}\nEmotion:", prompt_name="shout",
    )
    out = tmp_path / "shout.jsonl"
    summary = run(tiny_config(tiny_model), RunOptions(out, shard=(1, 3), limit=3, progress=False), echoed.append,
                  stage=stage)
    mine = [i for i in IDS if shard_of(i, 3) == 1][:3]
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert sorted(r["file_id"] for r in rows) == sorted(mine) and summary["written"] == len(mine)
    assert all(r["labels"] == ["seen"] for r in rows)
    fingerprint = read_manifest(out)["fingerprint"]
    assert (fingerprint["stage"], fingerprint["version"]) == ("shout", 3)
    assert fingerprint["prompt_template"] == "Clue: {clue}\nEmotion:"
    assert fingerprint["sources"] == [{"name": "clue", "placeholder": "clue", "id_key": "file_id", "text_key": "text"}]
    assert not any("built-in" in line for line in echoed)  # the config's template was the default: no note
    assert f"shard 1/3: {len([i for i in IDS if shard_of(i, 3) == 1])} records" in echoed


def test_a_custom_template_without_the_stage_placeholder_is_replaced_with_a_note():
    stage = Stage(SHOUT, read=lambda c, e: [], sources=(SourceSpec("clue", "clue"),), template="{clue}",
                  prompt_name="shout")
    config, echoed = Config(), []
    config.prompt.template = "Only {subtitle}"
    assert stage.configure(config, echoed.append).prompt.template == "{clue}"
    assert echoed == ["the config's [prompt] template has no {clue}: using the built-in shout prompt"]
    config.prompt.template = "Shout about {clue}!"
    assert stage.configure(config, echoed.append).prompt.template == "Shout about {clue}!" and len(echoed) == 1


def test_the_fusion_stage_keeps_the_config_as_it_is():
    config = Config()
    assert FUSION.configure(config, print) is config and FUSION.marks == {} and FUSION.postprocess is None
