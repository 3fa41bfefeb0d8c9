"""The config reference in the docs, generated from the schema.

README.md and docs/engine.md hold blocks between `<!-- config: NAME -->` and `<!-- end config -->`;
each is the output of `block(NAME)`. `python -m s2_vllm.config.docs` says which blocks are out of
date, `--write` rewrites them; tests/test_config_docs.py fails when one is stale.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from s2_vllm.config.schema import Spec, describe_type, specs
from s2_vllm.config.tables import TABLES, SourceSpec

DOCS = ("README.md", "docs/engine.md")
_BLOCK = re.compile(r"(<!-- config: (?P<name>[\w.]+) -->\n)(?P<body>.*?)(<!-- end config -->)", re.S)


def table_specs(table: str) -> list[Spec]:
    if table == "sources":
        return list(specs(SourceSpec, "sources.NAME").values())
    return list(specs(TABLES[table], table).values())


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "false" if not value else "true"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[]" if not value else "[" + ", ".join(map(_literal, value)) + "]"
    return repr(value) if isinstance(value, float) else str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _row(spec: Spec) -> str:
    meta = spec.meta
    default = meta.default_doc if meta.default_doc is not None else f"`{_literal(spec.default)}`"
    fp = "" if meta.fp is None else ("fp if not default" if meta.fp_if_set else "fp")
    kind = describe_type(spec)
    if spec.optional:
        kind += " (optional)"
    return f"| `{spec.name}` | {_cell(kind)} | {_cell(default)} | {fp} | {_cell(meta.doc)} |"


def table_block(table: str) -> str:
    rows = [_row(spec) for spec in table_specs(table)]
    return "\n".join(["| key | accepts | default | fp | what it does |", "| --- | --- | --- | --- | --- |", *rows])


def fingerprinted_block() -> str:
    parts, when_set = [], []
    for table in ("engine", "prompt", "sampling", "sources"):
        keys = table_specs(table)
        marked = [s for s in keys if s.meta.fp and not s.meta.fp_if_set]
        when_set += [f"`{table}.{s.name}`" for s in keys if s.meta.fp_if_set]
        if table == "sources":
            names = ", ".join(f"`{s.name}`" for s in marked)
            parts.append(f"each source's `name`, {names}")
        elif len(marked) == len(keys):
            parts.append(f"every key of `[{table}]`")
        else:
            parts += [f"`{table}.{s.name}`" for s in marked]
    return (f"Fingerprinted: {', '.join(parts)}; {', '.join(when_set)} when not at their default; and the "
            "SHA-256 of the "
            "tokenizer's chat template. Every other key is a speed or plumbing knob and may change between a "
            "run and its resume.")


def block(name: str) -> str:
    return fingerprinted_block() if name == "fingerprinted" else table_block(name)


def blocks(text: str) -> dict[str, str]:
    """The generated blocks a document holds: name -> body (without its trailing newline)."""
    return {m["name"]: m["body"].removesuffix("\n") for m in _BLOCK.finditer(text)}


def rewrite(text: str) -> str:
    return _BLOCK.sub(lambda m: f"{m[1]}{block(m['name'])}\n{m[4]}", text)


def main(argv: list[str]) -> int:
    root = Path(__file__).resolve().parents[2]
    stale = []
    for name in DOCS:
        path = root / name
        text = path.read_text(encoding="utf-8")
        if rewrite(text) != text:
            stale.append(name)
            if "--write" in argv:
                path.write_text(rewrite(text), encoding="utf-8")
    verb = "rewrote" if "--write" in argv else "out of date (run with --write)"
    print(f"{verb}: {', '.join(stale)}" if stale else "the config reference is up to date")
    return 1 if stale and "--write" not in argv else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
