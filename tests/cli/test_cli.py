"""The command line, in-process with CliRunner, on the tiny model and the bundled demo data."""

import orjson
import pytest
from click.testing import CliRunner

from s2_vllm import __version__
from s2_vllm.cli import cli
from s2_vllm.tiny import demo_paths

AUDIO, SUBTITLES = (str(p) for p in demo_paths())
REPORT = (
    "joined 47 records from subtitle (48 rows) and audio (49 rows)\n"
    "not in every source: subtitle 1, audio 2 (dropped)\n"
    "duplicates: none\n"
    "empty text: subtitle 1 (skipped)\n"
    "to fuse: 46 records (1 skipped)\n"
)


@pytest.fixture
def run_args(tiny_model, tmp_path):
    return ["run", "--engine", "hf", "--model", str(tiny_model), "--audio", AUDIO, "--subtitles", SUBTITLES,
            "--max-tokens", "8", "--temperature", "0", "--no-progress", "-o", str(tmp_path / "out.jsonl")]


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert (result.exit_code, result.output) == (0, f"s2-vllm, version {__version__}\n")


def test_run_needs_every_source_file():
    result = CliRunner().invoke(cli, ["run", "--audio", AUDIO])
    assert result.exit_code == 2
    assert result.stderr == "Error: no input file for source 'subtitle' (give --subtitles or sources.subtitle.path)\n"


def test_bad_shard_is_a_usage_error():
    result = CliRunner().invoke(cli, ["run", "--shard", "4/4"])
    assert result.exit_code == 2
    assert result.stderr.endswith("Error: Invalid value for --shard: '4/4' is not I/N with 0 <= I < N, e.g. 0/4\n")


def test_unknown_model_is_one_line(tmp_path):
    missing = tmp_path / "no-such-model"
    result = CliRunner().invoke(cli, ["run", "--engine", "hf", "--model", str(missing), "--audio", AUDIO,
                                      "--subtitles", SUBTITLES, "-o", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: cannot load the tokenizer '{missing}': ")
    assert result.stderr.count("\n") == 1


def test_run_resume_status_export(run_args, tmp_path):
    first = CliRunner().invoke(cli, run_args + ["--limit", "10"])
    assert first.exit_code == 0, first.output
    assert first.output.startswith(REPORT)
    assert "wrote 10 rows (" in first.output and "0 already done, 0 remain" in first.output

    second = CliRunner().invoke(cli, run_args)
    assert second.exit_code == 0, second.output
    assert f"resuming {tmp_path / 'out.jsonl'}: 10 of 47 records already done\n" in second.output
    assert "wrote 37 rows (" in second.output and "10 already done, 0 remain" in second.output

    rows = [orjson.loads(line) for line in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    assert len(rows) == len({r["file_id"] for r in rows}) == 47
    assert [r["file_id"] for r in rows if r["status"] == "skipped"] == ["sample_00000023"]
    ok = sum(r["status"] == "ok" for r in rows)
    length = sum(r["status"] == "length" for r in rows)

    status = CliRunner().invoke(cli, ["status", str(tmp_path / "out.jsonl")])
    assert status.exit_code == 0
    lines = status.output.splitlines()
    assert lines[0] == f"{tmp_path / 'out.jsonl'}: 47 records done (ok {ok}, length {length}, error 0, skipped 1)"
    assert "remaining: 0 of 47 joined records (as of the last run)" in lines

    out = tmp_path / "final.json"
    exported = CliRunner().invoke(cli, ["export", str(tmp_path / "out.jsonl"), "-o", str(out)])
    assert (exported.exit_code, exported.output) == (0, f"wrote {ok + length} records to {out}\n")
    data = orjson.loads(out.read_bytes())
    assert all(set(item) == {"file_id", "final_description"} for item in data) and len(data) == ok + length
    only_ok = CliRunner().invoke(cli, ["export", str(tmp_path / "out.jsonl"), "--cut-rows", "skip", "-o",
                                       str(tmp_path / "ok.json")])
    assert (only_ok.exit_code, only_ok.output) == (0, f"wrote {ok} records to {tmp_path / 'ok.json'}\n")
    again = CliRunner().invoke(cli, ["export", str(tmp_path / "out.jsonl"), "-o", str(out)])
    assert again.exit_code == 2 and "exists; use --force to replace it" in again.stderr


def test_changed_config_is_refused_and_names_the_field(run_args, tmp_path):
    assert CliRunner().invoke(cli, run_args + ["--limit", "2"]).exit_code == 0
    changed = [a if a != "8" else "9" for a in run_args]
    result = CliRunner().invoke(cli, changed + ["--limit", "2"])
    assert result.exit_code == 2
    assert "changed: sampling.max_tokens 8 -> 9" in result.stderr
    assert result.stderr.count("\n") == 1


def test_render_writes_prompts_and_statistics(tiny_model, tmp_path):
    out = tmp_path / "prompts.jsonl"
    result = CliRunner().invoke(cli, ["render", "--model", str(tiny_model), "--audio", AUDIO, "--subtitles",
                                      SUBTITLES, "--max-tokens", "64", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(REPORT)
    assert f"wrote 47 prompts to {out} (limit 4032 tokens; 0 truncated, 0 too long, 1 skipped)\n" in result.output
    assert result.output.splitlines()[-1].startswith("prompt tokens: min ")
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(rows) == 47 and rows[0]["prompt"].startswith("<|im_start|>user\nPlease act as an expert")
