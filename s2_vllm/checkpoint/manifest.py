"""The manifest beside a checkpoint: the fingerprint its rows were made with, and how two compare."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from s2_vllm.checkpoint.files import SideFiles
from s2_vllm.errors import CheckpointError

MANIFEST_VERSION = 1
OVERWRITE = "run with --overwrite to start over (the old file is kept as a backup) or choose another --output"
_MISSING = object()


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
    mpath = SideFiles.of(path).manifest
    try:
        manifest = orjson.loads(mpath.read_bytes())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CheckpointError(f"cannot read {mpath}: {exc.strerror}") from None
    except orjson.JSONDecodeError:
        manifest = None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("fingerprint"), dict):
        raise CheckpointError(f"{mpath} is damaged, so the config {path} was written with cannot be checked; {OVERWRITE}")
    if manifest.get("version") != MANIFEST_VERSION:
        raise CheckpointError(f"{mpath} has version {manifest.get('version')!r}, which this s2-vllm cannot read; "
                              "upgrade s2-vllm or choose another --output")
    return manifest


def new_manifest(fingerprint: dict) -> bytes:
    sha = hashlib.sha256(orjson.dumps(fingerprint, option=orjson.OPT_SORT_KEYS)).hexdigest()
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest = {"version": MANIFEST_VERSION, "created": created, "fingerprint": fingerprint, "fingerprint_sha": sha}
    return orjson.dumps(manifest, option=orjson.OPT_INDENT_2)
