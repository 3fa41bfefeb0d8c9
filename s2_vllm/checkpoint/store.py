"""The append-only store: one row per finished record, safe to kill and resume.

The store knows nothing of models or engines: the runner opens it with a fingerprint, skips the
ids it returns, appends one `Row` per finished record and closes it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import time
from collections import Counter
from pathlib import Path
from typing import IO

import orjson

from s2_vllm.checkpoint.files import SideFiles, atomic_write, fsync_dir
from s2_vllm.checkpoint.manifest import OVERWRITE, describe_changes, fingerprint_diff, new_manifest, read_manifest
from s2_vllm.checkpoint.rows import CUT, FAILED, STATUS, STATUSES, Row, damaged, parse_line
from s2_vllm.errors import CheckpointError


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
            if (parsed := parse_line(line)) is None:
                if line.strip():
                    bad.append(lineno)
                continue
            dups += parsed[0] in seen
            seen[parsed[0]] = parsed[1]
    if keep == size and bad and bad[-1] == lineno:
        keep, lineno = keep - len(line), bad.pop() - 1
    return seen, bad, dups, size, lineno, keep


def _raises_max_tokens(diff: list[str], old: dict, new: dict) -> bool:
    if diff != ["sampling.max_tokens"]:
        return False
    before, after = old["sampling"]["max_tokens"], new["sampling"]["max_tokens"]
    return isinstance(before, int) and isinstance(after, int) and after >= before


class CheckpointStore:
    """Append-only JSONL checkpoint with its side files (`SideFiles`): manifest, lock, summary."""

    def __init__(self, path: str | Path, fsync_interval: float = 2.0):
        self.path = Path(path)
        self.files = SideFiles.of(self.path)
        self.manifest_path = self.files.manifest
        self.lock_path = self.files.lock
        self.summary_path = self.files.summary
        self.rejected_path = self.files.rejected
        self.fsync_interval = fsync_interval
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._reset()

    def _reset(self) -> None:
        self.counts: dict[str, int] = dict.fromkeys(STATUSES, 0)  # rows by status (the last row per id)
        self.resumed = 0  # rows found at open that count as done
        self.duplicates = 0  # rows superseded by a later row for the same file_id
        self.torn = self.rejected = 0  # at open: torn bytes cut, damaged lines moved
        self.retried: Counter[str] = Counter()  # at open: rows dropped to run again, by status
        self.raised_from: int | None = None  # at open: the max_tokens a --retry-cut raised
        self.backup: Path | None = None  # where overwrite moved the old files
        self._seen: dict[str, str] = {}
        self._size = 0  # end of the last whole line written
        self._last_sync = 0.0
        self._broken: str | None = None

    def open(self, fingerprint: dict, *, overwrite: bool = False, retry_failed: bool = False,
             retry_cut: bool = False, repair: bool = False) -> set[str]:
        """Lock, check fingerprint, scan, and return the file_ids already done. `retry_failed` drops the error
        rows, `retry_cut` the length rows, and lets `sampling.max_tokens` be raised (the one change of config
        a resume takes: rows that ended before the old limit end the same way under a larger one)."""
        if self._lock_fd is not None:
            raise RuntimeError(f"checkpoint {self.path} is already open")
        if not self.path.parent.is_dir():
            raise CheckpointError(f"folder {self.path.parent} does not exist; create it or choose another --output")
        if self.path.is_dir():
            raise CheckpointError(f"{self.path} is a folder, not a file; choose another --output")
        self._reset()
        try:
            self._lock()  # before anything else is touched
            retry = (FAILED if retry_failed else ()) + (CUT if retry_cut else ())
            done = self._check_and_scan(fingerprint, overwrite, retry, repair)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._size = os.fstat(self._fd).st_size
            fsync_dir(self.path.parent)
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

    def _check_and_scan(self, fingerprint: dict, overwrite: bool, retry: tuple[str, ...], repair: bool) -> set[str]:
        if self.path.exists() and self.path.stat().st_size > 0:  # an empty file has nothing to protect
            if overwrite:
                self._move_to_backup()
            elif (manifest := read_manifest(self.path)) is None:
                raise CheckpointError(f"{self.path} has no manifest ({self.manifest_path.name}), so the config it "
                                      f"was written with cannot be checked; {OVERWRITE}")
            elif diff := fingerprint_diff(manifest["fingerprint"], fingerprint):
                raised = _raises_max_tokens(diff, manifest["fingerprint"], fingerprint)
                if not (raised and CUT[0] in retry):
                    changes = describe_changes(manifest["fingerprint"], fingerprint)
                    hint = " (--retry-cut takes a larger max_tokens)" if raised else ""
                    raise CheckpointError(f"{self.path} was written with another config (changed: {changes}){hint}; "
                                          f"{OVERWRITE}")
                done = self._resume(retry, repair)
                self.raised_from = manifest["fingerprint"]["sampling"]["max_tokens"]
                atomic_write(self.manifest_path, new_manifest(fingerprint))
                return done
            else:
                return self._resume(retry, repair)
        atomic_write(self.manifest_path, new_manifest(fingerprint))
        return set()

    def _move_to_backup(self) -> None:
        parts = self.files.backed_up()
        stamp = f"{self.path}.bak-{time.strftime('%Y%m%d-%H%M%S')}"
        names = (stamp + (f"-{n}" if n else "") for n in itertools.count())
        base = next(b for b in names if not any(os.path.lexists(b + s) for s in parts))  # never overwrite a backup
        for suffix, src in parts.items():
            if src.exists():
                os.rename(src, base + suffix)
        fsync_dir(self.path.parent)
        self.backup = Path(base)

    def _resume(self, retry: tuple[str, ...], repair: bool) -> set[str]:
        seen, bad, dups, size, lines, keep = _scan(self.path)
        if bad and not repair:
            raise damaged(self.path, bad)
        drop = {fid for fid, st in seen.items() if st in retry}
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
        self.retried = Counter(seen[fid] for fid in drop)
        for fid in drop:
            del seen[fid]
        self.torn, self.rejected = size - keep, len(bad)
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
                    elif not drop or (p := parse_line(line)) is None or p[0] not in drop:
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
        if row.status not in STATUS or type(row.file_id) is not str or not row.file_id:
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
