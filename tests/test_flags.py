"""The flags run, render and extract-labels share come from one table (s2_vllm/flags.py)."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from s2_vllm.cli import cli
from s2_vllm.flags import FLAGS, config_from, shard_output

COMMANDS = ("run", "render", "extract-labels")


def params(command: str) -> dict[str, click.Parameter]:
    return {p.name: p for p in cli.commands[command].params}


def test_a_shared_flag_has_one_name_and_one_help_everywhere():
    for command in COMMANDS:
        for name, param in params(command).items():
            if name in FLAGS:
                assert (param.opts + param.secondary_opts, param.help) == \
                    ([d for d in FLAGS[name].decls[0].split("/")], FLAGS[name].help), (command, name)


def test_each_command_takes_what_applies_to_it():
    run, render, labels = (set(params(c)) & set(FLAGS) for c in COMMANDS)
    assert run == set(FLAGS)
    assert render == set(FLAGS) - {"engine", "temperature", "top_p", "top_k", "seed", "batch_size", "in_flight",
                                   "replicas", "ray_address", "overwrite", "retry_failed", "repair", "no_progress",
                                   "show_engine_log"}
    assert labels == set(FLAGS) - {"audio", "subtitles", "extra_sources", "on_duplicate"}
    assert (params("extract-labels")["max_tokens"].default, params("extract-labels")["temperature"].default) == (64, 0.0)


@pytest.mark.parametrize("flag, key, given, stored", [
    ("top_k", ("sampling", "top_k"), 3, 3), ("max_model_len", ("engine", "max_model_len"), 64, 64),
    ("enable_thinking", ("prompt", "enable_thinking"), True, True), ("in_flight", ("run", "in_flight"), 5, 5),
    ("replicas", ("parallel", "replicas"), 2, 2), ("temperature", ("sampling", "temperature"), 1, 1.0),
])
def test_a_keyed_flag_sets_its_config_key_and_leaves_the_rest(flag, key, given, stored):
    rest = {"limit": 3, "shard": None}
    config = config_from({flag: given, "model": None, **rest})
    assert getattr(getattr(config, key[0]), key[1]) == stored
    assert config.engine.model == "Qwen/Qwen3-8B"  # None: not given, the file's (here the default) stays
    assert rest == {"limit": 3, "shard": None}


def test_a_shard_names_the_default_output():
    assert shard_output("emotion_labels.jsonl", (1, 4)) == "emotion_labels.shard-1-of-4.jsonl"
    assert shard_output("out.jsonl", None) == "out.jsonl"


def test_the_readme_flag_table_matches_the_commands():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    table = readme.split("| option | commands | meaning |", 1)[1].split("\n\n", 1)[0]
    listed: dict[str, set[str]] = {c: set() for c in COMMANDS}
    for line in table.splitlines()[2:]:
        option, commands, _ = line.strip("|").split(" | ", 2)
        names = set(re.findall(r"--[\w-]+", option))
        where = set(COMMANDS) if commands == "all three" else set(commands.split(", "))
        for command in where:
            listed[command] |= names
    for command in COMMANDS:
        actual = {o for p in cli.commands[command].params for o in p.opts + p.secondary_opts if o.startswith("--")}
        assert listed[command] == actual, command
