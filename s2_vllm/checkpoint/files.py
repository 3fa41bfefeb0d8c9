"""The files beside a checkpoint, and how they are written."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson


SUFFIXES = {"manifest": ".manifest.json", "lock": ".lock", "summary": ".summary.json", "rejected": ".rejected",
            "engine_log": ".engine.log", "engine_pids": ".engine.pids"}
BACKED_UP = ("manifest", "summary", "rejected")  # what --overwrite moves aside with the checkpoint


@dataclass(frozen=True)
class SideFiles:
    """Beside checkpoint `out.jsonl`: `out.jsonl.manifest.json` (the fingerprint), `.lock` (flock + pid),
    `.summary.json` (the last run's numbers), `.rejected` (lines --repair moved out), `.engine.log`
    (the engine's output) and `.engine.pids` (the processes the run started, for the watchdog)."""

    path: Path
    manifest: Path
    lock: Path
    summary: Path
    rejected: Path
    engine_log: Path
    engine_pids: Path

    @classmethod
    def of(cls, checkpoint: str | Path) -> SideFiles:
        return cls(Path(checkpoint), **{name: Path(f"{checkpoint}{suffix}") for name, suffix in SUFFIXES.items()})

    def backed_up(self) -> dict[str, Path]:
        """What `--overwrite` moves to `out.jsonl.bak-DATE…`: suffix -> current path."""
        return {"": self.path, **{SUFFIXES[name]: getattr(self, name) for name in BACKED_UP}}


def read_summary(checkpoint: str | Path) -> dict[str, Any] | None:
    """The summary the last run wrote beside `checkpoint`, or None."""
    try:
        return orjson.loads(SideFiles.of(checkpoint).summary.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None


def fsync_dir(folder: Path) -> None:
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
    fsync_dir(path.parent)
