"""Helpers shared by the whole suite (fixtures are in conftest.py): the repository's root, reading rows back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]


def rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a checkpoint (or any JSONL file), in file order."""
    return [orjson.loads(line) for line in Path(path).read_bytes().splitlines()]

