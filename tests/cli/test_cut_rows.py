"""Rows cut at max_tokens are results: read as sources, labelled, not called failures; --retry-cut redoes them."""

from __future__ import annotations

import orjson
from click.testing import CliRunner
from helpers import rows

from s2_vllm import stages
from s2_vllm.checkpoint import CheckpointStore, Row, read_manifest
from s2_vllm.cli import cli

IDS = ["a", "b", "c", "d"]


def invoke(args: list[str]):
    return CliRunner().invoke(cli, [str(a) for a in args])


def inputs(tmp_path):
    audio, subtitles, config = tmp_path / "audio.json", tmp_path / "subtitles.json", tmp_path / "fake.toml"
    audio.write_bytes(orjson.dumps([{"file_id": i, "generated_text": f"voice {i}"} for i in IDS]))
    subtitles.write_bytes(orjson.dumps([{"file_id": i, "english_transcription": f"said {i}"} for i in IDS]))
    config.write_text('[fake]\nwords = 12\nfail_ids = ["c"]\n', "utf-8")
    return audio, subtitles, config


def test_cut_rows_are_results_and_retry_cut_redoes_them_with_a_larger_max_tokens(tiny_model, tmp_path):
    audio, subtitles, config = inputs(tmp_path)
    out = tmp_path / "fused.jsonl"
    base = ["run", "--engine", "fake", "--config", config, "--model", tiny_model, "--audio", audio,
            "--subtitles", subtitles, "--no-progress", "-o", out]
    first = invoke([*base, "--max-tokens", "8"])
    assert first.exit_code == 0, first.output
    assert {r["file_id"]: r["status"] for r in rows(out)} == {"a": "length", "b": "length", "c": "error", "d": "length"}
    lines = first.output.splitlines()
    assert "1 record failed: `s2-vllm status` counts them, --retry-failed runs them again" in lines
    assert ("3 records stopped at max_tokens (status length, kept as results): --retry-cut with a larger "
            "--max-tokens runs them again") in lines

    labels = tmp_path / "labels.jsonl"
    labelled = invoke(["extract-labels", out, "--engine", "fake", "--model", tiny_model, "--no-progress", "-o", labels])
    assert labelled.exit_code == 0, labelled.output
    assert labelled.output.startswith(f"read 4 rows from {out}: 3 descriptions to label (3 length; left out: 1 error)\n")
    assert sorted(r["file_id"] for r in rows(labels)) == ["a", "b", "d"]

    retried = invoke([*base, "--max-tokens", "8", "--retry-failed"])
    assert "removed 1 error row from" in retried.output and {r["status"] for r in rows(out)} == {"length", "error"}
    assert len(rows(out)) == 4  # c failed again (a fail id); the cut rows were kept

    smaller = invoke([*base, "--max-tokens", "4", "--retry-cut"])
    assert smaller.exit_code == 2 and "(changed: sampling.max_tokens 8 -> 4); run with --overwrite" in smaller.stderr
    redone = invoke([*base, "--max-tokens", "16", "--retry-cut"])
    assert redone.exit_code == 0, redone.output
    assert f"removed 3 length rows from {out}; their records run again" in redone.output
    assert f"raised {out}'s max_tokens from 8 to 16" in redone.output
    assert {r["file_id"]: r["status"] for r in rows(out)} == {"c": "error", "a": "ok", "b": "ok", "d": "ok"}
    assert read_manifest(out)["fingerprint"]["sampling"]["max_tokens"] == 16
    status = invoke(["status", out])
    assert status.output.splitlines()[:2] == [f"{out}: 4 records done (ok 3, length 0, error 1, skipped 0)",
                                              "failed: 1; run the same command with --retry-failed to run them again"]


def test_a_describe_checkpoint_gives_its_cut_rows_unless_told_to_skip_them(tiny_model, tmp_path):
    _, subtitles, _ = inputs(tmp_path)
    described = tmp_path / "audio_descriptions.jsonl"
    with CheckpointStore(described) as store:
        store.open({"model": "m", "stage": stages.entry("describe").mark})
        for row in [Row("a", "calm", status="length"), Row("b", "tense"), Row("c", None, status="error", error="x"),
                    Row("d", "flat", status="length")]:
            store.append(row)
    render = ["render", "--model", tiny_model, "--audio", described, "--subtitles", subtitles]
    used = invoke([*render, "-o", tmp_path / "p1.jsonl"])
    assert used.exit_code == 0, used.output
    assert used.output.splitlines()[0] == ("joined 3 records from subtitle (4 rows) and audio (3 rows of a "
                                           "checkpoint: 2 length, 1 ok; left out: 1 error)")
    assert [r["file_id"] for r in rows(tmp_path / "p1.jsonl")] == ["a", "b", "d"]
    skipped = invoke([*render, "--cut-rows", "skip", "-o", tmp_path / "p2.jsonl"])
    assert skipped.output.splitlines()[0] == ("joined 1 record from subtitle (4 rows) and audio (1 row of a "
                                              "checkpoint: 1 ok; left out: 2 length, 1 error)")
    with CheckpointStore(described) as store:
        store.open({"model": "m", "stage": stages.entry("describe").mark}, overwrite=True)
        store.append(Row("a", "calm", status="length"))
    none_ok = invoke([*render, "--cut-rows", "skip", "-o", tmp_path / "p3.jsonl"])
    assert none_ok.exit_code == 2
    assert none_ok.stderr == f"Error: {described} has no ok rows to read (it holds 1 length)\n"
