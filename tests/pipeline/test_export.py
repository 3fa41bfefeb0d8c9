"""Exporting checkpoints: the tutorial's JSON list, JSONL, CSV, and merging the shards of one run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import orjson
import pytest

from s2_vllm.checkpoint import ROW_FIELDS, CheckpointStore, Row, iter_rows
from s2_vllm.config import Config
from s2_vllm.errors import CheckpointError
from s2_vllm.checkpoint import merge_rows
from s2_vllm.export import export

FP = Config().fingerprint()
ROWS = [
    Row("sample_00000007", "He sounds tense,\n \"angry\" — 生气.", prompt_tokens=120, completion_tokens=30),
    Row("sample_00000011", None, status="error", error="engine died"),
    Row("sample_00000012", "Cut off mid-", status="length", finish_reason="length", truncated=["subtitle"]),
    Row("sample_00000013", None, status="skipped", error="no subtitle"),
    Row("sample_00000002", "Calm and neutral."),
]


def checkpoint(path: Path, rows: list[Row], fingerprint: dict = FP) -> Path:
    with CheckpointStore(path) as store:
        store.open(fingerprint)
        for row in rows:
            store.append(row)
    return path


def test_json_is_the_tutorials_list_of_ok_rows_with_cut_rows_skip(tmp_path):
    out = tmp_path / "s2_final_descriptions.json"
    assert export(ROWS, out, "json", cut_rows="skip") == 2
    expected = [{"file_id": r.file_id, "final_description": r.final_description} for r in ROWS if r.status == "ok"]
    assert json.loads(out.read_text(encoding="utf-8")) == expected
    assert out.read_text(encoding="utf-8") == json.dumps(expected, indent=2, ensure_ascii=False) + "\n"
    assert "生气" in out.read_text(encoding="utf-8")  # UTF-8, not \u escapes


def test_json_takes_length_rows_by_default_and_never_errors(tmp_path):
    out = tmp_path / "all.json"
    assert export(ROWS, out, "json") == 3
    assert [d["file_id"] for d in json.loads(out.read_bytes())] == [
        "sample_00000007", "sample_00000012", "sample_00000002",
    ]


def test_json_of_nothing_is_an_empty_list(tmp_path):
    out = tmp_path / "none.json"
    assert export([], out, "json") == 0
    assert json.loads(out.read_bytes()) == []


def test_jsonl_has_every_row_in_checkpoint_order(tmp_path):
    path = checkpoint(tmp_path / "out.jsonl", ROWS)
    out = tmp_path / "copy.jsonl"
    assert export(iter_rows(path), out, "jsonl") == 5
    assert out.read_bytes() == path.read_bytes()
    assert [Row.from_dict(orjson.loads(x)) for x in out.read_bytes().splitlines()] == ROWS


def test_csv_has_a_header_and_every_row(tmp_path):
    out = tmp_path / "out.csv"
    assert export(ROWS, out, "csv") == 5
    with open(out, newline="", encoding="utf-8") as f:
        table = list(csv.reader(f))
    assert table[0] == list(ROW_FIELDS)
    assert [r[0] for r in table[1:]] == [r.file_id for r in ROWS]
    first = dict(zip(table[0], table[1]))
    assert first["final_description"] == ROWS[0].final_description  # newline and quotes survive
    assert first["prompt_tokens"] == "120" and first["reasoning"] == ""
    assert dict(zip(table[0], table[3]))["truncated"] == '["subtitle"]'


def test_existing_output_is_refused_without_force(tmp_path):
    out = tmp_path / "out.json"
    out.write_text("keep me")
    with pytest.raises(CheckpointError) as err:
        export(ROWS, out, "json")
    assert str(err.value) == f"{out} exists; use --force to replace it"
    assert out.read_text() == "keep me"
    assert export(ROWS, out, "json", force=True) == 3
    assert len(json.loads(out.read_bytes())) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(Exception, match="unknown export format 'xml'; use one of json, jsonl, csv"):
        export(ROWS, tmp_path / "out.xml", "xml")


def test_merge_reports_ids_in_more_than_one_file(tmp_path):
    a = checkpoint(tmp_path / "shard0.jsonl", [Row("a", "1"), Row("b", None, status="error", error="x")])
    b = checkpoint(tmp_path / "shard1.jsonl", [Row("c", "3"), Row("b", "2 again")])
    rows, info = merge_rows([a, b])
    assert [(r.file_id, r.final_description) for r in rows] == [("a", "1"), ("b", "2 again"), ("c", "3")]
    assert info == {"duplicates": 1, "files": 2}
    rows, info = merge_rows([a])
    assert [r.file_id for r in rows] == ["a", "b"] and info == {"duplicates": 0, "files": 1}


def test_merge_refuses_checkpoints_of_different_configs(tmp_path):
    other = orjson.loads(orjson.dumps(FP))
    other["sampling"]["temperature"] = 0.0
    a = checkpoint(tmp_path / "shard0.jsonl", [Row("a", "1")])
    b = checkpoint(tmp_path / "shard1.jsonl", [Row("b", "2")], fingerprint=other)
    with pytest.raises(CheckpointError) as err:
        merge_rows([a, b])
    assert str(err.value) == (
        f"{a} and {b} were written with different configs (changed: sampling.temperature 0.7 -> 0.0); "
        "merge only the checkpoints of one run"
    )


def test_merge_then_export_the_tutorial_json(tmp_path):
    a = checkpoint(tmp_path / "shard0.jsonl", ROWS[:2])
    b = checkpoint(tmp_path / "shard1.jsonl", ROWS[2:])
    rows, _ = merge_rows([a, b])
    out = tmp_path / "s2_final_descriptions.json"
    assert export(rows, out, "json", cut_rows="skip") == 2
    assert [d["file_id"] for d in json.loads(out.read_bytes())] == ["sample_00000007", "sample_00000002"]
