"""The docs' config reference is generated from the schema and cannot drift from it."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import pytest

from s2_vllm.config import TABLES, SourceSpec, config_from_dict
from s2_vllm.config.docs import DOCS, block, blocks
from s2_vllm.config.schema import specs
from helpers import REPO

ROOT = REPO


@pytest.mark.parametrize("name", DOCS)
def test_every_generated_block_matches_the_schema(name):
    found = blocks((ROOT / name).read_text(encoding="utf-8"))
    assert found, f"{name} has no generated config block"
    for block_name, body in found.items():
        assert body == block(block_name), f"{name}: [{block_name}] is stale; run python -m s2_vllm.config.docs --write"


def test_every_table_and_the_fingerprint_are_documented_once():
    names = [n for doc in DOCS for n in blocks((ROOT / doc).read_text(encoding="utf-8"))]
    assert sorted(names) == sorted([*TABLES, "sources", "fingerprinted"])


def test_every_documented_key_and_default_is_accepted_by_the_loader():
    """The rows as a reader sees them: each key is one `config_from_dict` takes, with the default shown."""
    for table in [*TABLES, "sources"]:
        keys = specs(TABLES.get(table, SourceSpec), table)
        shown = re.findall(r"^\| `(\w+)` \| (?:\\\||[^|])+ \| `([^`]+)` \|", block(table), re.M)
        assert {k for k, spec in keys.items() if spec.meta.default_doc is None} <= {k for k, _ in shown}, table
        for key, default in shown:
            value = tomllib.loads(f"v = {default}")["v"]
            config_from_dict({"sources": {"audio": {key: value}}} if table == "sources" else {table: {key: value}})
        assert all(spec.meta.doc for spec in keys.values()), table


def test_the_readme_config_example_is_a_valid_config():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    example = re.search(r"## Config\n.*?```toml\n(.*?)```", readme, re.S)[1]
    config = config_from_dict(tomllib.loads(example), "the README's example")
    config.validate()
    assert [s.name for s in config.sources] == ["subtitle", "audio"]


def test_the_docs_script_says_the_docs_are_up_to_date():
    done = subprocess.run([sys.executable, "-m", "s2_vllm.config.docs"], capture_output=True, text=True, cwd=ROOT)
    assert (done.returncode, done.stdout) == (0, "the config reference is up to date\n")
