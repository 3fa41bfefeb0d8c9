"""Append-only JSONL checkpoint: one row per finished record, safe to kill and resume.

Beside `out.jsonl` sit `.manifest.json` (the config fingerprint), `.lock` (flock + pid) and
`.summary.json`. The store knows nothing of models or engines: the runner opens it with a
fingerprint, skips the ids it returns, appends one `Row` per finished record and closes it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import orjson

from s2_vllm.errors import CheckpointError

STATUSES = ("ok", "length", "error", "skipped")
FAILED = ("error", "length")
MANIFEST_VERSION = 1
_STATUS = {s: s for s in STATUSES}  # validates and interns statuses while scanning
_OVERWRITE = "run with --overwrite to start over (the old file is kept as a backup) or choose another --output"
_MISSING = object()


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


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | Callable[[IO[bytes]], None]) -> None:
    """Write bytes (or let `data(file)` write) to a temp file in the same folder, fsync, os.replace,
    fsync the folder. Raises OSError and leaves the old file untouched on failure."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, os.stat(path).st_mode & 0o777 if path.exists() else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data) if isinstance(data, bytes) else data(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _diff(old: Any, new: Any, name: str) -> list[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [*new, *(k for k in old if k not in new)]
        return [d for k in keys for d in _diff(old.get(k, _MISSING), new.get(k, _MISSING), f"{name}.{k}".lstrip("."))]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (o, n) in enumerate(zip(old, new)) for d in _diff(o, n, f"{name}[{i}]")]
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (old, new))
    return [] if (type(old) is type(new) or numbers) and old == new else [(name, old, new)]


def fingerprint_diff(old: dict, new: dict) -> list[str]:
    """Dotted names of what differs between two fingerprints, e.g. ["sampling.max_tokens", "model"]."""
    return [name for name, _, _ in _diff(_json(old), _json(new), "")]


def _json(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value))  # tuples -> lists, as stored in the manifest


def _show(value: Any) -> str | None:
    if isinstance(value, str) and re.fullmatch(r"[\w./:@+-]{1,40}", value):
        return value
    text = orjson.dumps(value).decode() if value is None or isinstance(value, (bool, int, float, str)) else ""
    return text if 0 < len(text) <= 40 and "\\n" not in text else None


def describe_changes(old: dict, new: dict, limit: int = 6) -> str:
    """`sampling.max_tokens 512 -> 1024, prompt_template`: values for short scalars, names otherwise."""
    parts = [f"{name} {_show(o)} -> {_show(n)}" if _show(o) and _show(n) else name
             for name, o, n in _diff(_json(old), _json(new), "")]
    return ", ".join(parts[:limit]) + (f" and {len(parts) - limit} more" if len(parts) > limit else "")


def read_manifest(path: str | Path) -> dict | None:
    """The manifest of checkpoint `path` (the .jsonl), or None when there is none."""
    mpath = Path(f"{path}.manifest.json")
    try:
        manifest = orjson.loads(mpath.read_bytes())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CheckpointError(f"cannot read {mpath}: {exc.strerror}") from None
    except orjson.JSONDecodeError:
        manifest = None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("fingerprint"), dict):
        raise CheckpointError(f"{mpath} is damaged, so the config {path} was written with cannot be checked; {_OVERWRITE}")
    if manifest.get("version") != MANIFEST_VERSION:
        raise CheckpointError(f"{mpath} has version {manifest.get('version')!r}, which this s2-vllm cannot read; "
                              "upgrade s2-vllm or choose another --output")
    return manifest


def _damaged(path: Path, bad: list[int]) -> CheckpointError:
    where = f"line {bad[0]} is" if len(bad) == 1 else f"line {bad[0]} and {len(bad) - 1} more are"
    return CheckpointError(f"{path} {where} damaged; run with --repair to move damaged lines to "
                           f"{path}.rejected and re-run those records")


def _parse(line: bytes) -> tuple[str, str] | None:
    """(file_id, status) of a checkpoint line, or None when it is not a valid row."""
    try:
        d = orjson.loads(line)
        fid, status = d["file_id"], _STATUS.get(d.get("status", "ok"))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return (fid, status) if type(fid) is str and fid and status else None


def _scan(path: Path) -> tuple[dict[str, str], list[int], int, int, int, int]:
    """(file_id -> status of its last row, damaged line numbers, duplicates, file size, good lines, their end);
    a last line that lacks its newline or does not parse is torn and left out of the good lines."""
    seen: dict[str, str] = {}
    bad: list[int] = []
    dups = lineno = 0
    with open(path, "rb", buffering=1 << 20) as f:
        size = os.fstat(f.fileno()).st_size
        keep = size
        for line in f:  # a million lines in about two seconds: lines are split in C, parsed by orjson
            if not line.endswith(b"\n"):
                keep -= len(line)
                break
            lineno += 1
            if (parsed := _parse(line)) is None:
                if line.strip():
                    bad.append(lineno)
                continue
            dups += parsed[0] in seen
            seen[parsed[0]] = parsed[1]
    if keep == size and bad and bad[-1] == lineno:
        keep, lineno = keep - len(line), bad.pop() - 1
    return seen, bad, dups, size, lineno, keep


class CheckpointStore:
    """Append-only JSONL checkpoint + manifest (fingerprint) + lock, beside each other:
    out.jsonl, out.jsonl.manifest.json, out.jsonl.lock, out.jsonl.summary.json"""

    def __init__(self, path: str | Path, fsync_interval: float = 2.0):
        self.path = Path(path)
        self.manifest_path = Path(f"{self.path}.manifest.json")
        self.lock_path = Path(f"{self.path}.lock")
        self.summary_path = Path(f"{self.path}.summary.json")
        self.rejected_path = Path(f"{self.path}.rejected")
        self.fsync_interval = fsync_interval
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._reset()

    def _reset(self) -> None:
        self.counts: dict[str, int] = dict.fromkeys(STATUSES, 0)  # rows by status (the last row per id)
        self.resumed = 0  # rows found at open that count as done
        self.duplicates = 0  # rows superseded by a later row for the same file_id
        self.torn = self.rejected = self.retried = 0  # at open: torn bytes cut, damaged lines moved, failed rows dropped
        self.backup: Path | None = None  # where overwrite moved the old files
        self._seen: dict[str, str] = {}
        self._size = 0  # end of the last whole line written
        self._last_sync = 0.0
        self._broken: str | None = None

    def open(self, fingerprint: dict, *, overwrite: bool = False, retry_failed: bool = False,
             repair: bool = False) -> set[str]:
        """Lock, check fingerprint, scan, and return the file_ids already done."""
        if self._lock_fd is not None:
            raise RuntimeError(f"checkpoint {self.path} is already open")
        if not self.path.parent.is_dir():
            raise CheckpointError(f"folder {self.path.parent} does not exist; create it or choose another --output")
        if self.path.is_dir():
            raise CheckpointError(f"{self.path} is a folder, not a file; choose another --output")
        self._reset()
        try:
            self._lock()  # before anything else is touched
            done = self._check_and_scan(fingerprint, overwrite, retry_failed, repair)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._size = os.fstat(self._fd).st_size
            _fsync_dir(self.path.parent)
        except BaseException as exc:
            self.close()
            if isinstance(exc, OSError):  # the lock, manifest, backup or checkpoint cannot be read or written
                raise CheckpointError(f"cannot use {exc.filename or self.path}: {exc.strerror}") from None
            raise
        self._last_sync = time.monotonic()
        return done

    def _lock(self) -> None:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # dies with its process: a killed run never blocks
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f" (pid {pid})" if pid.isdigit() else ""
            raise CheckpointError(f"checkpoint {self.path} is in use by another run{who}; "
                                  "wait for it or choose another --output") from None
        self._lock_fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    def _check_and_scan(self, fingerprint: dict, overwrite: bool, retry_failed: bool, repair: bool) -> set[str]:
        if self.path.exists() and self.path.stat().st_size > 0:  # an empty file has nothing to protect
            if overwrite:
                self._move_to_backup()
            elif (manifest := read_manifest(self.path)) is None:
                raise CheckpointError(f"{self.path} has no manifest ({self.manifest_path.name}), so the config it "
                                      f"was written with cannot be checked; {_OVERWRITE}")
            elif fingerprint_diff(manifest["fingerprint"], fingerprint):
                changes = describe_changes(manifest["fingerprint"], fingerprint)
                raise CheckpointError(f"{self.path} was written with another config (changed: {changes}); {_OVERWRITE}")
            else:
                return self._resume(retry_failed, repair)
        sha = hashlib.sha256(orjson.dumps(fingerprint, option=orjson.OPT_SORT_KEYS)).hexdigest()
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        manifest = {"version": MANIFEST_VERSION, "created": created, "fingerprint": fingerprint, "fingerprint_sha": sha}
        atomic_write(self.manifest_path, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        return set()

    def _move_to_backup(self) -> None:
        parts = {"": self.path, ".manifest.json": self.manifest_path, ".summary.json": self.summary_path,
                 ".rejected": self.rejected_path}
        stamp = f"{self.path}.bak-{time.strftime('%Y%m%d-%H%M%S')}"
        names = (stamp + (f"-{n}" if n else "") for n in itertools.count())
        base = next(b for b in names if not any(os.path.lexists(b + s) for s in parts))  # never overwrite a backup
        for suffix, src in parts.items():
            if src.exists():
                os.rename(src, base + suffix)
        _fsync_dir(self.path.parent)
        self.backup = Path(base)

    def _resume(self, retry_failed: bool, repair: bool) -> set[str]:
        seen, bad, dups, size, lines, keep = _scan(self.path)
        if bad and not repair:
            raise _damaged(self.path, bad)
        drop = {fid for fid, st in seen.items() if st in FAILED} if retry_failed else set()
        try:
            if bad or drop:
                self._compact(set(bad), drop, lines)
            elif keep < size:  # cut the torn last line
                with open(self.path, "r+b") as f:
                    f.truncate(keep)
                    os.fsync(f.fileno())
        except OSError as exc:
            raise CheckpointError(f"cannot rewrite {self.path}: {exc.strerror}; nothing was lost, "
                                  "fix that and run the same command") from None
        for fid in drop:
            del seen[fid]
        self.torn, self.rejected, self.retried = size - keep, len(bad), len(drop)
        self.duplicates, self.resumed, self._seen = dups, len(seen), seen
        self.counts.update(Counter(seen.values()))
        return set(seen)

    def _compact(self, bad: set[int], drop: set[str], lines: int) -> None:
        """Rewrite the first `lines` lines without the `bad` ones (appended to .rejected first) and `drop` ids."""
        rejected: list[bytes] = []

        def write(out: IO[bytes]) -> None:
            with open(self.path, "rb", buffering=1 << 20) as f:
                for lineno, line in enumerate(itertools.islice(f, lines), 1):
                    if lineno in bad:
                        rejected.append(line)
                    elif not drop or (p := _parse(line)) is None or p[0] not in drop:
                        out.write(line)
            if rejected:
                with open(self.rejected_path, "ab") as r:
                    r.writelines(rejected)
                    r.flush()
                    os.fsync(r.fileno())

        atomic_write(self.path, write)

    def fileno(self) -> int:
        if self._fd is None:
            raise RuntimeError(f"checkpoint {self.path} is not open")
        return self._fd

    def append(self, row: Row) -> None:
        """Write one row as one whole line; fsync when `fsync_interval` seconds have passed since the last."""
        if row.status not in _STATUS or type(row.file_id) is not str or not row.file_id:
            raise ValueError(f"not a valid row: file_id {row.file_id!r}, status {row.status!r}")
        fd = self.fileno()
        if self._broken:
            raise CheckpointError(self._broken)
        data = row.to_line()
        try:
            view = memoryview(data)
            while view:  # os.write may write less than asked; a partial line is cut below or at the next open
                view = view[os.write(fd, view):]
            self._size += len(data)
        except OSError as exc:
            raise self._fail(exc) from None
        if (old := self._seen.get(row.file_id)) is not None:
            self.duplicates += 1
            self.counts[old] -= 1
        self._seen[row.file_id] = row.status
        self.counts[row.status] += 1
        if time.monotonic() - self._last_sync > self.fsync_interval:
            self.sync()

    def _fail(self, exc: OSError) -> CheckpointError:
        with contextlib.suppress(OSError):  # cut a partly written line now; the next open would cut it anyway
            os.ftruncate(self._fd, self._size)  # type: ignore[arg-type]
        what = "free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "fix that"
        self._broken = (f"cannot write {self.path}: {exc.strerror or exc}; everything up to the last whole line "
                        f"is kept, {what} and run the same command to resume")
        return CheckpointError(self._broken)

    def sync(self) -> None:
        """fsync the rows written so far."""
        try:
            os.fsync(self.fileno())
        except OSError as exc:
            raise self._fail(exc) from None
        self._last_sync = time.monotonic()

    def write_summary(self, summary: dict) -> None:
        """Atomic JSON beside the checkpoint."""
        data = orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
        try:
            atomic_write(self.summary_path, data)
        except OSError as exc:
            what = "free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "fix that"
            raise CheckpointError(f"cannot write {self.summary_path}: {exc.strerror or exc}; the checkpoint is "
                                  f"intact, {what} and run the same command to resume") from None

    def close(self) -> None:
        """fsync and release the lock; idempotent. The lock file stays (removing it would race)."""
        try:
            if self._fd is not None and not self._broken:
                self.sync()
        finally:
            for fd in {self._fd, self._lock_fd} - {None}:
                os.close(fd)  # type: ignore[arg-type]
            self._fd = self._lock_fd = None

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_rows(path: str | Path) -> Iterator[Row]:
    """Rows in file order; a torn last line is skipped, a damaged middle line raises CheckpointError."""
    if not (path := Path(path)).exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    with open(path, "rb", buffering=1 << 20) as f:
        held: tuple[int, bytes] | None = None  # one line held back: a bad last line is torn, not damaged
        for lineno, line in enumerate(f, 1):
            if held is not None:
                if _parse(held[1]) is None:
                    raise _damaged(path, [held[0]])
                yield Row.from_dict(orjson.loads(held[1]))
            held = (lineno, line) if line.strip() else None
        if held is not None and held[1].endswith(b"\n") and _parse(held[1]) is not None:
            yield Row.from_dict(orjson.loads(held[1]))
