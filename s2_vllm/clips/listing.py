"""Which clips a `describe` run reads: files and folders on the command line, or a manifest.

A clip's id is its file name without the extension (MER's `sample_00000001.mp4` → `sample_00000001`),
the `file_id` step 2 joins on. In a manifest the id and the path are columns (CSV) or fields (JSON,
JSONL); relative paths are relative to the manifest's folder. Nothing here opens a clip: a missing or
unreadable file is found by the decoder and becomes that clip's error row.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from s2_vllm.errors import InputError



@dataclass(frozen=True)
class Clip:
    file_id: str
    path: str


def find_clips(paths: Iterable[str | Path], suffixes: tuple[str, ...], kind: str = "clip") -> list[Clip]:
    """Files as given (any extension), folders searched recursively for files with one of `suffixes` (the
    modality's); sorted by path within a folder, folders and files in the order given. `kind` names the
    files in the message of a folder without any ("audio or video files")."""
    clips: list[Clip] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in _walk(path) if p.suffix.lower() in suffixes)
            if not found:
                raise InputError(f"no {kind} in {path} (looked for {', '.join(s.lstrip('.') for s in suffixes)})")
            clips += [Clip(p.stem, str(p)) for p in found]
        elif path.exists() or path.suffix:
            clips.append(Clip(path.stem, str(path)))  # a missing file is that clip's error row, not the run's end
        else:
            raise InputError(f"{path} does not exist")
    return clips


def _walk(folder: Path) -> Iterable[Path]:
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith("."):
                yield Path(root) / name


def read_manifest(path: str | Path, id_key: str = "file_id", path_key: str = "path",
                  fmt: str | None = None) -> list[Clip]:
    """Clips listed in a CSV / JSON / JSONL manifest, in its order."""
    from s2_vllm.records import read_rows

    path = Path(path)
    clips = []
    for n, item in enumerate(read_rows(path, fmt), 1):
        if id_key not in item or path_key not in item:
            missing = id_key if id_key not in item else path_key
            raise InputError(f"{path}: entry {n} has no '{missing}' (have: {', '.join(map(str, item)) or 'nothing'}); "
                             "--id-key and --path-key name the columns")
        file_id, clip = item[id_key], item[path_key]
        if file_id is None or str(file_id).strip() == "" or not clip:
            raise InputError(f"{path}: entry {n} has an empty '{id_key if not str(file_id or '').strip() else path_key}'")
        clip_path = Path(str(clip)).expanduser()
        clips.append(Clip(str(file_id).strip(), str(clip_path if clip_path.is_absolute() else path.parent / clip_path)))
    if not clips:
        raise InputError(f"{path} lists no clips")
    return clips


def check_unique(clips: list[Clip], on_duplicate: str) -> list[Clip]:
    """One clip per id (in the order ids first occur): `error` names the clash, `first`/`last` keep one."""
    from s2_vllm.records import one_per_id

    kept, clashes = one_per_id(((clip.file_id, clip) for clip in clips), on_duplicate)
    if clashes and on_duplicate == "error":
        file_id, where = next(iter(clashes.items()))
        more = f" (and {len(clashes) - 1} more ids)" if len(clashes) > 1 else ""
        raise InputError(f"{len(clashes)} clip id{'s' * (len(clashes) > 1)} given twice: '{file_id}' is "
                         f"{' and '.join(c.path for c in where)}{more}; rename them or use --on-duplicate first|last")
    return list(kept.values())
