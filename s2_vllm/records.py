"""Input files (JSON array, JSONL, CSV) → (id, text) per source → records inner-joined on id.

The first source's file gives the order. Every problem with a file is one `InputError` line naming it.
"""

from __future__ import annotations

import csv
import difflib
import gc
import io
import re
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import orjson

from s2_vllm.config import ON_DUPLICATE, SOURCE_FORMATS, SourceSpec
from s2_vllm.checkpoint.rows import USABLE
from s2_vllm.errors import InputError, plural

_EXTENSIONS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "csv"}
_BOM = b"\xef\xbb\xbf"
_FIRST = re.compile(rb"[ \t\r\n]*([^ \t\r\n])")
_FIRST_LINE = re.compile(rb"[ \t\r\n]*([^\n]*)")
_MISSING: Any = object()
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Record:
    file_id: str  # ids are compared and stored as strings ("12" == 12)
    texts: dict[str, str]  # source name -> text ("" when missing/null/whitespace-only)
    skip_reason: str | None = None  # e.g. "empty text in subtitle": not sent to the model
    clip: str | None = None  # describe: the path of the record's clip


@dataclass
class JoinReport:
    sources: list[str]
    rows: dict[str, int]  # rows read per source
    matched: int  # ids present in every source
    only_in: dict[str, int]  # ids present in a source but missing from at least one other
    duplicates: dict[str, int]  # ids occurring more than once in a source
    empty: dict[str, int]  # matched ids whose text is empty / missing / null / whitespace-only
    skipped: int = 0  # records with a skip_reason
    on_duplicate: str = "error"
    held: dict[str, str] = field(default_factory=dict)  # checkpoint sources: rows read and left out, by status

    def lines(self) -> list[str]:
        froms = [f"{name} ({plural(self.rows.get(name, 0), 'row')}"
                 + (f" of a checkpoint: {self.held[name]})" if name in self.held else ")") for name in self.sources]
        joined = froms[0] if len(froms) == 1 else ", ".join(froms[:-1]) + " and " + froms[-1]
        keep = {"first": " (kept first)", "last": " (kept last)"}.get(self.on_duplicate, "")
        return [
            f"joined {plural(self.matched, 'record')} from {joined}",
            "not in every source: " + self._counts(self.only_in, " (dropped)"),
            "duplicates: " + self._counts(self.duplicates, keep),
            "empty text: " + self._counts(self.empty, " (skipped)"),
            f"to fuse: {plural(self.matched - self.skipped, 'record')}"
            + (f" ({self.skipped} skipped)" if self.skipped else ""),
        ]

    def _counts(self, counts: dict[str, int], suffix: str) -> str:
        parts = [f"{name} {counts[name]}" for name in self.sources if counts.get(name)]
        return ", ".join(parts) + suffix if parts else "none"


@dataclass
class _Rows:
    rows: list[Any]
    where: Callable[[int], str]  # row index -> "row 3" / "line 4", for messages
    held: str | None = None  # a checkpoint read as a source: its rows by status (`CheckpointSource.held`)


def read_rows(path: str | Path, fmt: str | None = None) -> list[dict[str, Any]]:
    """Parse a JSON array, JSONL or CSV file into a list of objects (checked to be dicts)."""
    return _read(Path(path), fmt).rows


def _read(path: Path, fmt: str | None) -> _Rows:
    if fmt is not None and fmt not in SOURCE_FORMATS:  # the schema checks a config's; this guards other callers
        formats = f"{', '.join(SOURCE_FORMATS[:-1])} or {SOURCE_FORMATS[-1]}"
        raise InputError(f"{path}: unknown format '{fmt}' (use {formats})")
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
            skip = 3 if head.startswith(_BOM) else 0
            while not (match := _FIRST.match(head, skip)) and (more := f.read(1 << 20)):
                head += more  # only whitespace so far
            if match is None:
                raise InputError(f"{path} is empty" if not head else f"{path} contains only whitespace")
            first = match.group(1)
            fmt = fmt or _EXTENSIONS.get(path.suffix.lower()) or {b"[": "json", b"{": "jsonl"}.get(first, "csv")
            f.seek(0)
            if fmt == "csv":
                table = _read_csv(path, f, "\t" if path.suffix.lower() == ".tsv" else ",")
            else:
                table = _read_json(path, f.read(), fmt, first)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a directory, not a data file") from None
    except UnicodeDecodeError:
        _check_utf8(path)
        raise
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    for i, row in enumerate(table.rows):
        if type(row) is not dict:
            raise InputError(f"{path}: {table.where(i)} is {_kind(row)}, not an object")
    return table


def _read_json(path: Path, data: bytes, fmt: str, first: bytes) -> _Rows:
    start = 3 if data.startswith(_BOM) else 0
    if fmt == "jsonl" and first != b"[":
        return _read_jsonl(path, data, start)
    try:
        value = orjson.loads(memoryview(data)[start:] if start else data)
    except orjson.JSONDecodeError as exc:
        _check_utf8(path, data)
        if fmt == "jsonl" or (first == b"{" and _is_json_line(data, start)):  # JSON Lines
            return _read_jsonl(path, data, start)
        raise InputError(f"{path} is not valid JSON: {exc}") from None
    if type(value) is not list:
        if type(value) is dict:
            keys = ", ".join(islice(value, 5)) + (", ..." if len(value) > 5 else "")
            raise InputError(f"{path} must hold a JSON array of objects, but it holds a single object (keys: {keys})")
        raise InputError(f"{path} must hold a JSON array of objects, but it holds {_kind(value)}")
    return _Rows(value, lambda i: f"row {i + 1}")


def _is_json_line(data: bytes, start: int) -> bool:
    """Whether the first non-blank line is a whole JSON document by itself."""
    line = _FIRST_LINE.match(data, start)
    with suppress(orjson.JSONDecodeError):
        return line is not None and orjson.loads(line.group(1)) is not _MISSING
    return False


def _read_jsonl(path: Path, data: bytes, start: int) -> _Rows:
    rows: list[Any] = []
    append = rows.append
    loads = orjson.loads
    blanks: list[int] = []  # line numbers of blank lines, to map row index -> line
    buf = io.BytesIO(data)
    buf.seek(start)
    for number, line in enumerate(buf, 1):
        try:
            append(loads(line))
        except orjson.JSONDecodeError as exc:
            if not line.strip():
                blanks.append(number)
                continue
            _check_utf8(path, data)
            raise InputError(f"{path} line {number} is not valid JSON: {exc.msg}") from None

    def where(i: int) -> str:
        line = i + 1
        for blank in blanks:
            line += blank <= line
        return f"line {line}"

    return _Rows(rows, where)


def _read_csv(path: Path, f: BinaryIO, delimiter: str) -> _Rows:
    text = io.TextIOWrapper(f, encoding="utf-8-sig", newline="")
    reader = csv.reader(text, delimiter=delimiter)
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # long descriptions; the default stops at 128 KiB
    try:
        header = [name.strip() for name in next(row for row in reader if row)]  # blank lines before it: skipped
        if twice := [name for name, n in Counter(header).items() if n > 1]:
            raise InputError(f"{path}: the header names column '{twice[0]}' more than once")
        width = len(header)
        rows: list[dict[str, str]] = []
        append = rows.append
        lines = array("L")
        for row in reader:
            if len(row) > width:
                raise InputError(f"{path}: line {reader.line_num} has {len(row)} fields but the header has {width}")
            if row:
                append(dict(zip(header, row)))
                lines.append(reader.line_num)
    except csv.Error as exc:
        raise InputError(f"{path}: line {reader.line_num} is not valid CSV: {exc}") from None
    finally:
        text.detach()
    return _Rows(rows, lambda i: f"line {lines[i]}")


def _check_utf8(path: Path, data: bytes | None = None) -> None:
    """Raise a one-line error if the file is not UTF-8 (only called when parsing failed)."""
    if data is None:
        data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        bad = f"byte 0x{data[exc.start]:02x} at offset {exc.start} (line {line})"
        raise InputError(f"{path} is not valid UTF-8: {bad}; save it as UTF-8") from None


def _kind(value: Any) -> str:
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")


def load_source(spec: SourceSpec, statuses: tuple[str, ...] = USABLE) -> list[tuple[str, str | None]]:
    """(id, text) per row in file order; text is None when missing, null, empty or whitespace-only. A step 1
    checkpoint gives the rows whose status is in `statuses`."""
    return list(_pairs(spec, _open_source(spec, statuses)))


def _open_source(spec: SourceSpec, statuses: tuple[str, ...]) -> _Rows:
    if not spec.path:
        raise InputError(f"no file given for source '{spec.name}'")
    table = _describe_rows(spec, statuses) or _read(Path(spec.path), spec.format)
    if not table.rows:
        raise InputError(f"{spec.path} has no rows")
    return table


def _describe_rows(spec: SourceSpec, statuses: tuple[str, ...]) -> _Rows | None:
    """A step 1 checkpoint given as a source (a glob for its shards): its rows with a status in `statuses`, the
    description as the source's text. None when the path is not a checkpoint some stage feeds to `run`."""
    from s2_vllm import stages

    assert spec.path is not None
    paths = stages.expand(spec.path)
    written = [stages.written_by(p) for p in paths]
    if not all(stage is not None and "run" in stage.read_by for stage in written):
        if len(paths) > 1:
            raise InputError(f"{spec.path} matches {len(paths)} files; only the shards of one step 1 run are merged")
        return None if str(paths[0]) == spec.path else _read(paths[0], spec.format)
    stage = written[0]
    assert stage is not None
    if spec.name in stage.not_as:
        raise InputError(f"{spec.path} holds {stage.describe()}, not {spec.name}s: {stage.as_hint}")
    source = stages.read_checkpoint_source(paths, statuses)
    rows = [{spec.id_key: fid, spec.text_key: text} for fid, text in source.pairs]
    if not rows:
        wanted = " or ".join(statuses)
        raise InputError(f"{spec.path} has no {wanted} rows to read (it holds {source.counts()})")
    return _Rows(rows, lambda i: f"row {i + 1} read", source.held())


def _pairs(spec: SourceSpec, table: _Rows) -> Iterator[tuple[str, str | None]]:
    path, rows, id_key, text_key = spec.path, table.rows, spec.id_key, spec.text_key
    nulls = 0
    for i, row in enumerate(rows):
        fid = row.get(id_key, _MISSING)
        if (kind := type(fid)) is str:
            fid = fid.strip()
            if not fid:
                raise InputError(f"{path}: {table.where(i)} has an empty '{id_key}'")
        elif kind is int:
            fid = str(fid)
        else:
            _bad_id(path, table, i, id_key, fid)
        text = row.get(text_key)
        if text is None:
            nulls += 1
        elif type(text) is not str:
            raise InputError(f"{path}: {table.where(i)}: '{text_key}' must be a string, not {_kind(text)}")
        elif not text or text.isspace():
            text = None
        yield fid, text
    if nulls == len(rows) and not any(text_key in row for row in rows):
        raise InputError(f"{path}: no row has the text key '{text_key}'{_keys_hint(rows, text_key)}")


def _bad_id(path: str | None, table: _Rows, i: int, id_key: str, value: Any) -> None:
    where = table.where(i)
    if value is _MISSING:
        if not any(id_key in row for row in table.rows):
            raise InputError(f"{path}: no row has the id key '{id_key}'{_keys_hint(table.rows, id_key)}")
        raise InputError(f"{path}: {where} has no id key '{id_key}'")
    if value is None:
        raise InputError(f"{path}: {where}: '{id_key}' is null")
    raise InputError(f"{path}: {where}: '{id_key}' must be a string or an integer, not {_kind(value)} ({value!r})")


def _keys_hint(rows: list[dict[str, Any]], key: str) -> str:
    seen = list(dict.fromkeys(k for row in islice(rows, 1000) for k in row))
    if not seen:
        return " (the rows have no keys)"
    lower = {k.lower(): k for k in seen}
    close = [lower[key.lower()]] if key.lower() in lower else difflib.get_close_matches(key, seen, n=1, cutoff=0.4)
    close = close or [k for k in seen if k and (k.lower() in key.lower() or key.lower() in k.lower())]
    shown = ", ".join(seen[:10]) + (", ..." if len(seen) > 10 else "")
    return f" (keys seen: {shown}" + (f"; did you mean '{close[0]}'?)" if close else ")")


def join(specs: list[SourceSpec], on_duplicate: str = "error",
         statuses: tuple[str, ...] = USABLE) -> tuple[list[Record], JoinReport]:
    """Inner join of every source on id, in the first source's order (first occurrence of each id); a step 1
    checkpoint given as a source gives its rows whose status is in `statuses`."""
    names = [spec.name for spec in specs]
    if on_duplicate not in ON_DUPLICATE or not names or len(set(names)) != len(names):
        raise ValueError(f"join needs uniquely named sources and on_duplicate in {ON_DUPLICATE}, not {on_duplicate!r}")
    tables: list[dict[str, str | None]] = []
    rows: dict[str, int] = {}
    duplicates: dict[str, int] = {}
    held: dict[str, str] = {}
    collecting = gc.isenabled()
    gc.disable()  # millions of new objects: the collector would rescan them all, for nothing
    try:
        for spec in specs:
            table = _open_source(spec, statuses)
            rows[spec.name] = len(table.rows)
            if table.held is not None:
                held[spec.name] = table.held
            ids = dict(_pairs(spec, table))  # last occurrence wins, in the order of first occurrence
            del table
            duplicates[spec.name] = 0 if len(ids) == rows[spec.name] else _duplicates(spec, on_duplicate, ids)
            tables.append(ids)
        records, empty = _match(names, tables)
    finally:
        gc.enable() if collecting else None
    if not records:
        _no_match(specs, tables)
    matched = len(records)
    only_in = {name: len(table) - matched for name, table in zip(names, tables)}
    skipped = sum(1 for record in records if record.skip_reason is not None) if any(empty.values()) else 0
    return records, JoinReport(names, rows, matched, only_in, duplicates, empty, skipped, on_duplicate, held)


def _match(names: list[str], tables: list[dict[str, str | None]]) -> tuple[list[Record], dict[str, int]]:
    first, name0, rest = tables[0], names[0], list(zip(names[1:], tables[1:]))
    records: list[Record] = []
    append = records.append
    empty = dict.fromkeys(names, 0)
    for fid, text in first.items():  # one lookup per other source: the tables are too big for the caches
        texts = {name0: text}
        for name, table in rest:
            text = table.get(fid, _MISSING)
            if text is _MISSING:
                break
            texts[name] = text
        else:
            if None not in texts.values():
                append(Record(fid, texts))
                continue
            missing = [name for name, text in texts.items() if text is None]
            for name in missing:
                empty[name] += 1
                texts[name] = ""
            append(Record(fid, texts, "empty text in " + ", ".join(missing)))
    return records, empty


def one_per_id(pairs: Iterable[tuple[str, T]], keep: str) -> tuple[dict[str, T], dict[str, list[T]]]:
    """One value per id, in the order the ids first occur: the first or the last (`keep`; "error" keeps the last
    and leaves the refusal to the caller, which names things its own way). Also every value of each id seen twice."""
    kept: dict[str, T] = {}
    repeated: dict[str, list[T]] = {}
    for fid, value in pairs:
        if fid in kept:
            repeated.setdefault(fid, [kept[fid]] if fid not in repeated else []).append(value)
            if keep == "first":
                continue
        kept[fid] = value
    return kept, {fid: repeated[fid] for fid in kept if fid in repeated}


def _duplicates(spec: SourceSpec, on_duplicate: str, ids: dict[str, str | None]) -> int:
    """Rare, so the file is read again for the details; "first" replaces the texts in `ids`."""
    kept, repeated = one_per_id(load_source(spec), on_duplicate)
    if on_duplicate == "error":
        shown = ", ".join(repr(fid) for fid in list(repeated)[:3]) + (", ..." if len(repeated) > 3 else "")
        what = "id occurs" if len(repeated) == 1 else "ids occur"
        hint = "pass --on-duplicate first|last to keep one occurrence"
        raise InputError(f"{spec.path}: {len(repeated)} {what} more than once ({shown}); {hint}")
    ids.update(kept)
    return len(repeated)


def _no_match(specs: list[SourceSpec], tables: list[dict[str, str | None]]) -> None:
    ids = [f"{len(table)} ids in {spec.name} ({spec.path})" for spec, table in zip(specs, tables)]
    examples = [", ".join(repr(fid) for fid in islice(table, 2)) for table in tables]
    for k in range(1, len(tables)):
        if tables[0].keys().isdisjoint(tables[k].keys()):
            raise InputError(f"none of the {ids[0]} matched the {ids[k]}: e.g. {examples[0]} vs {examples[k]}")
    shared = ", ".join(f"{sum(fid in t for fid in tables[0])} with {s.name}" for s, t in zip(specs[1:], tables[1:]))
    raise InputError(f"no id is present in all {len(tables)} sources ({specs[0].name} shares {shared})")
