"""The stage registry: who wrote a checkpoint, who may read it, and one reader of checkpoints as sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from s2_vllm import stages
from s2_vllm.checkpoint import CheckpointStore, Row
from s2_vllm.errors import UserError
from s2_vllm.records import one_per_id


def checkpoint(path: Path, rows: list[Row], mark: str | None) -> Path:
    with CheckpointStore(path) as store:
        store.open({"model": "m", **({"stage": mark} if mark else {})})
        for row in rows:
            store.append(row)
    return path


def test_every_stage_is_known_by_its_fingerprint_mark(tmp_path):
    for stage in stages.STAGES:
        path = checkpoint(tmp_path / f"{stage.command}.jsonl", [Row("a", "x")], stage.mark)
        assert stages.written_by(path) is stage is stages.entry(stage.command)
    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"file_id": "a"}\n', "utf-8")
    assert stages.written_by(plain) is None and stages.written_by(tmp_path / "missing.jsonl") is None
    with pytest.raises(KeyError):
        stages.entry("nothing")


def test_each_command_takes_only_the_checkpoints_that_feed_it(tmp_path):
    described = checkpoint(tmp_path / "d.jsonl", [Row("a", "x")], "describe")
    fused = checkpoint(tmp_path / "f.jsonl", [Row("a", "x")], None)
    stages.check_inputs([fused], "extract-labels")
    with pytest.raises(UserError) as caught:
        stages.check_inputs([fused, described], "extract-labels")
    assert str(caught.value) == f"{described} holds clip descriptions; give the checkpoint written by `s2-vllm run`"
    with pytest.raises(UserError, match="holds fused descriptions; give the checkpoint written by `s2-vllm extract"):
        stages.check_inputs([fused], "evaluate")
    assert [s.command for s in stages.STAGES if "run" in s.read_by] == ["describe"]
    assert {s.command: s.export_key for s in stages.STAGES} == {
        "run": "final_description", "describe": "generated_text", "extract-labels": "final_description"}


def test_a_checkpoint_read_as_a_source_merges_shards_and_counts_statuses(tmp_path):
    one = checkpoint(tmp_path / "d.shard-0-of-2.jsonl", [Row("a", "calm"), Row("b", None, status="error")], "describe")
    checkpoint(tmp_path / "d.shard-1-of-2.jsonl", [Row("c", "cut", status="length"), Row("d", "warm")], "describe")
    paths = stages.expand(str(tmp_path / "d.shard-*.jsonl"))
    assert paths == sorted(tmp_path.glob("d.shard-*.jsonl"))
    source = stages.read_checkpoint_source(paths)  # a row cut at max_tokens is a result
    assert source.pairs == [("a", "calm"), ("c", "cut"), ("d", "warm")]
    assert (source.total, source.counts(), source.stage) == (4, "2 ok, 1 error, 1 length", stages.entry("describe"))
    assert source.held() == "2 ok, 1 length; left out: 1 error"
    only_ok = stages.read_checkpoint_source(paths, stages.usable_statuses("skip"))
    assert (only_ok.pairs, only_ok.held()) == ([("a", "calm"), ("d", "warm")], "2 ok; left out: 1 error, 1 length")
    assert stages.expand(str(one)) == [one]


def test_one_value_per_id_the_first_or_the_last():
    pairs = [("b", 1), ("a", 2), ("b", 3), ("c", 4), ("b", 5), ("a", 6)]
    assert one_per_id(pairs, "first") == ({"b": 1, "a": 2, "c": 4}, {"b": [1, 3, 5], "a": [2, 6]})
    assert one_per_id(pairs, "last")[0] == {"b": 5, "a": 6, "c": 4}
