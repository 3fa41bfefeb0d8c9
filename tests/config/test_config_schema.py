"""The config schema: every key of every table, from a file, a flag or code, is judged by one validator.

Each case runs the real command (CliRunner) with a model path that does not exist: a slip the
schema missed would end in a tokenizer error instead of the expected line.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from s2_vllm.cli import cli
from s2_vllm.config import TABLES, Config, SourceSpec, config_from_dict
from s2_vllm.config.schema import specs
from s2_vllm.errors import ConfigError

KEYS = [(t, s) for t, cls in TABLES.items() for s in specs(cls, t).values()]
KEYS += [("sources.audio", s) for s in specs(SourceSpec, "sources.audio").values()]
WRONG = {int: ('"x"', "str ('x')"), float: ('"x"', "str ('x')"), str: ("5", "int (5)"), bool: ('"yes"', "str ('yes')"),
         list: ("5", None), dict: ("5", "int (5)")}
TYPE_WORD = {int: "int", float: "float", str: "str", bool: "bool", dict: "a table"}


def run_with(tmp_path: Path, toml: str, *args: str, command: str = "run"):
    config = tmp_path / "c.toml"
    config.write_text(toml)
    audio, subtitles = tmp_path / "a.json", tmp_path / "s.json"
    audio.write_bytes(orjson.dumps([{"file_id": "a", "generated_text": "calm"}]))
    subtitles.write_bytes(orjson.dumps([{"file_id": "a", "english_transcription": "hi"}]))
    inputs = [] if command == "extract-labels" else ["--audio", str(audio), "--subtitles", str(subtitles)]
    head = [command, str(tmp_path / "fused.jsonl")] if command == "extract-labels" else [command]
    return CliRunner().invoke(cli, [*head, "--config", str(config), "--model", str(tmp_path / "no-model"),
                                    *inputs, "-o", str(tmp_path / "out.jsonl"), *args])


def error_line(result) -> tuple[int, str]:
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    return result.exit_code, result.stderr


@pytest.mark.parametrize("table, spec", KEYS, ids=[f"{t}.{s.name}" for t, s in KEYS])
def test_every_key_refuses_a_wrong_type_in_one_line(tmp_path, table, spec):
    value, shown = WRONG[spec.base]
    if spec.base is list:
        expected = f"{table}.{spec.name} must be a list of strings, not 5"
    elif spec.base is dict:
        expected = f"{table}.{spec.name} must be a table, not {shown}"
    else:
        expected = f"{table}.{spec.name} must be {TYPE_WORD[spec.base]}, not {shown}"
    result = run_with(tmp_path, f"[{table}]\n{spec.name} = {value}\n")
    assert error_line(result) == (2, f"Error: {expected}\n")


def _outside(spec) -> list[tuple[str, str]]:
    """TOML values the key refuses for its range or choices (each side of a range), with the line for each."""
    m, path = spec.meta, spec.path
    if m.choices is not None:
        return [('"nope"', f"{path} must be one of {', '.join(m.choices)}, not 'nope'")]
    if m.pattern is not None:
        bad = "" if m.expect == "a non-empty string" else "no such thing!"
        return [(f'"{bad}"', f"{path} must be {m.expect}, not '{bad}'")]
    if m.min is not None and m.max is not None:
        words = f"in {'(' if m.above else '['}{m.min:g}, {m.max:g}]"
    elif m.min is not None:
        words = f"at least {m.min:g}" if spec.base is int else f"{'>' if m.above else '>='} {m.min:g}"
    else:
        return []
    values = [m.min if m.above else m.min - 1] + ([m.max + 1] if m.max is not None else [])
    return [(str(int(v)) if spec.base is int else repr(float(v)), f"{path} must be {words}") for v in values]


BOUNDED = [(t, s, value, line) for t, s in KEYS for value, line in _outside(s)]


@pytest.mark.parametrize("table, spec, value, expected", BOUNDED, ids=[f"{t}.{s.name}={v}" for t, s, v, _ in BOUNDED])
def test_every_range_and_choice_is_enforced_in_one_line(tmp_path, table, spec, value, expected):
    result = run_with(tmp_path, f"[{table}]\n{spec.name} = {value}\n")
    assert error_line(result) == (2, f"Error: {expected}\n")


@pytest.mark.parametrize("toml, expected", [  # the same rules, spelled out by hand
    ("[sampling]\ntop_p = 0.0", "sampling.top_p must be in (0, 1]"),
    ("[sampling]\ntop_p = 1.5", "sampling.top_p must be in (0, 1]"),
    ("[sampling]\nmin_p = -0.1", "sampling.min_p must be in [0, 1]"),
    ("[sampling]\npresence_penalty = -3", "sampling.presence_penalty must be in [-2, 2]"),
    ("[sampling]\nrepetition_penalty = 0", "sampling.repetition_penalty must be > 0"),
    ("[sampling]\ntop_k = -2", "sampling.top_k must be at least -1"),
    ("[sampling]\nmax_tokens = 0", "sampling.max_tokens must be at least 1"),
    ("[engine]\ngpu_memory_utilization = 0", "engine.gpu_memory_utilization must be in (0, 1]"),
    ("[engine]\nseed = -1", "engine.seed must be at least 0"),
    ("[engine]\nmodel = \"\"", "engine.model must be a non-empty string, not ''"),
    ("[engine]\ndistributed_executor_backend = \"slurm\"",
     "engine.distributed_executor_backend must be one of mp, ray, uni, external_launcher, not 'slurm'"),
    ("[hf]\ndevice = \"cuda:x\"", "hf.device must be auto, cpu, cuda or cuda:N, not 'cuda:x'"),
])
def test_some_refusals_word_for_word(tmp_path, toml, expected):
    assert error_line(run_with(tmp_path, toml + "\n")) == (2, f"Error: {expected}\n")


@pytest.mark.parametrize("table", [*TABLES, "sources.audio"])
def test_every_table_refuses_an_unknown_key_in_one_line(tmp_path, table):
    result = run_with(tmp_path, f"[{table}]\nno_such_key = 1\n")
    assert error_line(result) == (2, f"Error: unknown key 'no_such_key' in [{table}]\n")


def test_the_slips_the_issue_found():
    with pytest.raises(ConfigError, match=r"^engine.max_model_len must be int, not str \('8192'\)$"):
        config_from_dict({"engine": {"max_model_len": "8192"}})
    with pytest.raises(ConfigError, match=r"^run.in_flight must be int, not str \('many'\)$"):
        config_from_dict({"run": {"in_flight": "many"}})


def test_a_config_changed_in_code_is_checked_by_validate():
    config = Config()
    config.run.in_flight = "many"
    with pytest.raises(ConfigError, match=r"^run.in_flight must be int, not str \('many'\)$"):
        config.validate()
    config = Config()
    config.sources[0] = SourceSpec("subtitle", "subtitle", "file_id", "english_transcription", format="xml")
    with pytest.raises(ConfigError, match="^sources.subtitle.format must be one of json, jsonl, csv, not 'xml'$"):
        config.validate()


def test_an_int_for_a_float_is_stored_as_a_float():
    sampling = config_from_dict({"sampling": {"temperature": 1, "top_p": 1}}).sampling
    assert (sampling.temperature, sampling.top_p) == (1.0, 1.0) and isinstance(sampling.temperature, float)


@pytest.mark.parametrize("command", ["run", "render", "extract-labels"])
def test_every_command_refuses_the_same_slip_with_the_same_line(tmp_path, command):
    result = run_with(tmp_path, '[sampling]\nmax_tokens = "many"\n', command=command)
    assert error_line(result) == (2, "Error: sampling.max_tokens must be int, not str ('many')\n")
    result = run_with(tmp_path, "", "--max-tokens", "0", command=command)
    assert error_line(result) == (2, "Error: sampling.max_tokens must be at least 1\n")


def test_a_bad_config_stops_before_vllm_or_torch_is_imported(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[engine]\nmax_model_len = "8192"\n')
    code = ("import sys; from s2_vllm.cli import cli\n"
            "try:\n    cli(['run', '--config', sys.argv[1], '--audio', 'a', '--subtitles', 's'])\n"
            "except SystemExit as e:\n    print(e.code, 'vllm' in sys.modules, 'torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True, text=True, timeout=60)
    assert done.stderr == "Error: engine.max_model_len must be int, not str ('8192')\n"
    assert done.stdout == "2 False False\n"
