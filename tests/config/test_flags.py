"""The flags run, render, extract-labels and describe share come from one table (s2_vllm/flags.py)."""

from __future__ import annotations

import dataclasses
import re

import click
import pytest

from s2_vllm.cli import cli
from s2_vllm.config import Config
from s2_vllm.flags import FLAGS, config_from, shard_output
from helpers import REPO

COMMANDS = ("run", "render", "extract-labels", "describe")
AUDIO = {"max_seconds", "fps", "max_frames", "max_pixels", "decode_workers", "decode_in", "decode_ahead",
         "decode_ahead_mb"}


def params(command: str) -> dict[str, click.Parameter]:
    return {p.name: p for p in cli.commands[command].params}


def test_a_shared_flag_has_one_name_and_one_help_everywhere():
    for command in COMMANDS:
        for name, param in params(command).items():
            if name in FLAGS:
                assert (param.opts + param.secondary_opts, param.help) == \
                    ([d for d in FLAGS[name].decls[0].split("/")], FLAGS[name].help), (command, name)


def test_each_command_takes_what_applies_to_it():
    run, render, labels, describe = (set(params(c)) & set(FLAGS) for c in COMMANDS)
    assert run == set(FLAGS) - AUDIO
    assert describe == set(FLAGS) - {"audio", "visual", "extra_sources", "engine", "batch_size", "cut_rows"}
    assert render == set(FLAGS) - AUDIO - {"engine", "temperature", "top_p", "top_k", "seed", "batch_size", "in_flight",
                                   "replicas", "ray_address", "overwrite", "retry_failed", "retry_cut", "repair", "no_progress",
                                   "show_engine_log"}
    assert labels == set(FLAGS) - AUDIO - {"audio", "visual", "subtitles", "extra_sources", "on_duplicate"}
    assert (params("extract-labels")["max_tokens"].default, params("extract-labels")["temperature"].default) == (64, 0.0)


# every flag that sets a config key, the key it sets (as the README and the old cli.py had them), a value to give
KEYED = {
    "model": ("engine", "model", "m"), "tokenizer": ("engine", "tokenizer", "t"),
    "max_model_len": ("engine", "max_model_len", 64), "max_tokens": ("sampling", "max_tokens", 7),
    "enable_thinking": ("prompt", "enable_thinking", True), "too_long": ("prompt", "too_long", "error"),
    "on_duplicate": ("run", "on_duplicate", "last"), "engine": ("run", "engine", "hf"),
    "temperature": ("sampling", "temperature", 0.5), "top_p": ("sampling", "top_p", 0.5),
    "top_k": ("sampling", "top_k", 3), "seed": ("sampling", "seed", 11), "batch_size": ("hf", "batch_size", 2),
    "in_flight": ("run", "in_flight", 5), "replicas": ("parallel", "replicas", 2),
    "ray_address": ("parallel", "ray_address", "auto"),
    "decode_workers": ("decode", "workers", 3), "decode_ahead": ("decode", "ahead", 8),
    "decode_in": ("decode", "pool", "threads"), "decode_ahead_mb": ("decode", "ahead_mb", 100),
    "fps": ("video", "fps", 1.0), "max_frames": ("video", "max_frames", 8), "max_pixels": ("video", "max_pixels", 50176),
    "cut_rows": ("run", "cut_rows", "skip"),
}


def test_every_keyed_flag_is_listed_here():
    assert {name for name, flag in FLAGS.items() if flag.key} == set(KEYED)


@pytest.mark.parametrize("flag", sorted(KEYED))
def test_a_keyed_flag_sets_its_config_key_and_leaves_the_rest(flag):
    table, key, value = KEYED[flag]
    given = {flag: value, "model" if flag != "model" else "tokenizer": None, "limit": 3, "shard": None}
    config = config_from(given)
    assert getattr(getattr(config, table), key) == value
    untouched = Config()
    setattr(untouched, table, dataclasses.replace(getattr(untouched, table), **{key: value}))
    assert config == untouched  # nothing else changed; a None flag (not given) leaves the default
    assert given == {"limit": 3, "shard": None}  # the command's own flags stay for it


def test_a_shard_names_the_default_output():
    assert shard_output("emotion_labels.jsonl", (1, 4)) == "emotion_labels.shard-1-of-4.jsonl"
    assert shard_output("out.jsonl", None) == "out.jsonl"


def test_the_readme_flag_table_matches_the_commands():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme.split("| option | commands | meaning |", 1)[1].split("\n\n", 1)[0]
    listed: dict[str, set[str]] = {c: set() for c in COMMANDS}
    for line in table.splitlines()[2:]:
        option, commands, _ = line.strip("|").split(" | ", 2)
        names = set(re.findall(r"--[\w-]+", option))
        where = set(COMMANDS) if commands == "all four" else set(commands.split(", "))
        for command in where:
            listed[command] |= names
    for command in COMMANDS:
        actual = {o for p in cli.commands[command].params for o in p.opts + p.secondary_opts if o.startswith("--")}
        assert listed[command] == actual, command
