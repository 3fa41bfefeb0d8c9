"""Append-only JSONL checkpoint: one row per finished record, safe to kill and resume.

`rows.py` (the row, reading one checkpoint or the shards of a run), `manifest.py` (the
fingerprint beside it), `store.py` (the writer: lock, resume, repair), `files.py` (the side
files' names and atomic writes). Nothing here imports a model or an engine.
"""

from s2_vllm.checkpoint.files import SideFiles, atomic_write, read_summary
from s2_vllm.checkpoint.manifest import MANIFEST_VERSION, describe_changes, fingerprint_diff, read_manifest
from s2_vllm.checkpoint.rows import (CUT, FAILED, ROW_FIELDS, STATUSES, USABLE, Row, check_one_run, iter_rows,
                                     merge_rows)
from s2_vllm.checkpoint.store import CheckpointStore

__all__ = [
    "CUT", "FAILED", "MANIFEST_VERSION", "ROW_FIELDS", "STATUSES", "USABLE", "CheckpointStore",
    "Row", "SideFiles", "atomic_write",
    "check_one_run", "describe_changes", "fingerprint_diff", "iter_rows", "merge_rows", "read_manifest",
    "read_summary",
]
