"""Checkpoint rows: the dataclass, one line each, and reading them back (one file or the shards of a run)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import orjson

from s2_vllm.checkpoint.files import SideFiles
from s2_vllm.checkpoint.manifest import describe_changes, read_manifest
from s2_vllm.errors import CheckpointError

STATUSES = ("ok", "length", "error", "skipped")
FAILED = ("error",)  # what --retry-failed runs again
CUT = ("length",)  # results cut at max_tokens: what --retry-cut runs again
USABLE = ("ok", *CUT)  # the rows a checkpoint read as a source gives text from, unless cut_rows = "skip"
STATUS = {s: s for s in STATUSES}  # validates and interns statuses while scanning


@dataclass
class Row:
    file_id: str
    final_description: str | None
    reasoning: str | None = None
    status: str = "ok"
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None
    prompt_sha: str | None = None
    truncated: list[str] | None = None  # sources whose text was cut to fit the context
    labels: list[str] | None = None  # extract-labels: emotion labels parsed from final_description

    def to_line(self) -> bytes:
        """One JSON line ending in b"\\n", keys in field order."""
        return orjson.dumps(self, option=orjson.OPT_APPEND_NEWLINE)

    @classmethod
    def from_dict(cls, d: dict) -> Row:
        """A row from a parsed line; unknown keys are ignored."""
        return cls(**{"final_description": None, **{k: d[k] for k in ROW_FIELDS if k in d}})


ROW_FIELDS = tuple(f.name for f in fields(Row))


def damaged(path: Path, bad: list[int]) -> CheckpointError:
    where = f"line {bad[0]} is" if len(bad) == 1 else f"line {bad[0]} and {len(bad) - 1} more are"
    return CheckpointError(f"{path} {where} damaged; run with --repair to move damaged lines to "
                           f"{SideFiles.of(path).rejected} and re-run those records")


def parse_line(line: bytes) -> tuple[str, str] | None:
    """(file_id, status) of a checkpoint line, or None when it is not a valid row."""
    try:
        d = orjson.loads(line)
        fid, status = d["file_id"], STATUS.get(d.get("status", "ok"))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return (fid, status) if type(fid) is str and fid and status else None


def iter_rows(path: str | Path) -> Iterator[Row]:
    """Rows in file order; a torn last line is skipped, a damaged middle line raises CheckpointError."""
    if not (path := Path(path)).exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    with open(path, "rb", buffering=1 << 20) as f:
        held: tuple[int, bytes] | None = None  # one line held back: a bad last line is torn, not damaged
        for lineno, line in enumerate(f, 1):
            if held is not None:
                if parse_line(held[1]) is None:
                    raise damaged(path, [held[0]])
                yield Row.from_dict(orjson.loads(held[1]))
            held = (lineno, line) if line.strip() else None
        if held is not None and held[1].endswith(b"\n") and parse_line(held[1]) is not None:
            yield Row.from_dict(orjson.loads(held[1]))


def check_one_run(paths: list[Path]) -> None:
    """Refuse checkpoints that do not exist or were written with different configs (cheap: manifests only)."""
    first: tuple[Path, dict] | None = None
    for path in map(Path, paths):
        if not path.exists():
            raise CheckpointError(f"checkpoint {path} does not exist")
        manifest = read_manifest(path)
        if manifest is None:
            continue  # nothing to compare; its rows are still worth reading
        if first is None:
            first = (path, manifest["fingerprint"])
        elif changes := describe_changes(first[1], manifest["fingerprint"]):
            raise CheckpointError(
                f"{first[0]} and {path} were written with different configs (changed: {changes}); "
                "merge only the checkpoints of one run"
            )


def merge_rows(paths: list[Path]) -> tuple[list[Row], dict[str, int]]:
    """The rows of several checkpoints of one run, in file order; for an id seen twice the last row is kept.

    Returns (rows, {"duplicates": ids found in more than one file, "files": number of files}).
    Refuses checkpoints written with different configs.
    """
    check_one_run(paths)
    rows: dict[str, Row] = {}
    owner: dict[str, int] = {}
    shared: set[str] = set()
    for index, path in enumerate(paths):
        for row in iter_rows(path):
            if owner.setdefault(row.file_id, index) != index:
                shared.add(row.file_id)
            rows[row.file_id] = row  # a dict keeps the first position and takes the last row
    return list(rows.values()), {"duplicates": len(shared), "files": len(paths)}
