"""Turn checkpoints into the files people use: the tutorial's JSON list, JSONL or CSV.

`export` writes rows (from `checkpoint.merge_rows`) atomically.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import orjson

from s2_vllm.checkpoint import ROW_FIELDS, USABLE, Row, atomic_write
from s2_vllm.errors import CheckpointError, UserError

FORMATS = ("json", "jsonl", "csv")


def text_key_of(checkpoints: list[Path]) -> str:
    """The JSON export's text field: what the registry says for the stage that wrote the checkpoints
    (`generated_text` for step 1, which step 2 reads; else the tutorial's `final_description`)."""
    from s2_vllm.stages import entry, written_by

    stage = written_by(checkpoints[0]) if checkpoints else None
    return (stage or entry("run")).export_key


def _write_json(rows: Iterable[Row], f: IO[bytes], statuses: tuple[str, ...], text_key: str) -> int:
    """A JSON list of {file_id, text_key}, the same bytes as json.dumps(indent=2, ensure_ascii=False)."""
    n = 0
    for row in rows:
        if row.status in statuses:
            item = orjson.dumps({"file_id": row.file_id, text_key: row.final_description},
                               option=orjson.OPT_INDENT_2)
            f.write((b",\n  " if n else b"[\n  ") + item.replace(b"\n", b"\n  "))  # newlines in text are escaped
            n += 1
    f.write(b"\n]\n" if n else b"[]\n")
    return n


def _write_jsonl(rows: Iterable[Row], f: IO[bytes]) -> int:
    n = 0
    for row in rows:
        f.write(row.to_line())
        n += 1
    return n


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    return orjson.dumps(value).decode() if isinstance(value, list) else value


def _write_csv(rows: Iterable[Row], f: IO[bytes]) -> int:
    text = io.TextIOWrapper(f, encoding="utf-8", newline="")
    writer = csv.writer(text)
    writer.writerow(ROW_FIELDS)
    n = 0
    for row in rows:
        writer.writerow([_cell(getattr(row, name)) for name in ROW_FIELDS])
        n += 1
    text.flush()
    text.detach()  # leave the binary file open for atomic_write's fsync
    return n


def export(rows: Iterable[Row], out: Path, fmt: str, *, force: bool = False, cut_rows: str = "use",
           text_key: str = "final_description") -> int:
    """Write `rows` to `out` atomically in checkpoint order; returns how many were written.

    json: the tutorial's list of {file_id, final_description} of the "ok" rows and, unless `cut_rows` is
    "skip", the "length" rows (a description cut at max_tokens is still a description). jsonl, csv: every row.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown export format '{fmt}'; use one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and not force:
        raise CheckpointError(f"{out} exists; use --force to replace it")
    if not out.parent.is_dir():
        raise CheckpointError(f"folder {out.parent} does not exist; create it or choose another output")
    statuses = USABLE if cut_rows == "use" else ("ok",)
    count = 0

    def write(f: IO[bytes]) -> None:
        nonlocal count
        if fmt == "json":
            count = _write_json(rows, f, statuses, text_key)
        else:
            count = (_write_jsonl if fmt == "jsonl" else _write_csv)(rows, f)

    try:
        atomic_write(out, write)
    except OSError as exc:
        raise CheckpointError(f"cannot write {out}: {exc.strerror or exc}") from None
    return count
