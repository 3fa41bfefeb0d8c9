"""The stage registry: what each pass's checkpoint is, and who may read it.

Every pass over the engine (`run`, `describe`, `extract-labels`) is one `StageEntry` in `STAGES`. The
entry says what its checkpoint holds (for messages), which commands take that checkpoint as input,
which sources of step 2 may not read it, and what `export` writes from it by default. Commands ask
the registry (`written_by`, `check_inputs`, `check_output`, `read_checkpoint_source`) and never compare
stage names themselves; the pass itself (records, prompt, feed) is the `Stage` its module builds.
"""

from __future__ import annotations

import glob
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from s2_vllm.checkpoint.rows import USABLE
from s2_vllm.errors import InputError, UserError


@dataclass(frozen=True)
class StageEntry:
    command: str  # the CLI command that writes it
    mark: str | None  # the fingerprint's stage name; None for the fusion pass, whose checkpoints predate stages
    holds: str  # what its checkpoint holds, in messages
    export_key: str  # the text field of `export`'s JSON list
    read_by: tuple[str, ...] = ()  # commands that take its checkpoint as input
    not_as: tuple[str, ...] = ()  # step 2 sources it may not be given as
    as_hint: str = ""  # how it is given instead, in that refusal

    def describe(self) -> str:
        return f"{self.holds} (s2-vllm {self.command})"


STAGES: tuple[StageEntry, ...] = (
    StageEntry("run", None, "fused descriptions", "final_description", read_by=("extract-labels",)),
    StageEntry("describe", "describe", "clip descriptions", "generated_text", read_by=("run",),
               not_as=("subtitle",), as_hint="give it as --audio or --visual"),
    StageEntry("extract-labels", "extract-labels", "emotion labels", "final_description", read_by=("evaluate",)),
)


def entry(command: str) -> StageEntry:
    for stage in STAGES:
        if stage.command == command:
            return stage
    raise KeyError(f"no stage is written by `{command}`")


def by_mark(mark: str | None) -> StageEntry | None:
    return next((stage for stage in STAGES if stage.mark == mark), None)


def written_by(path: str | Path) -> StageEntry | None:
    """The stage that wrote the checkpoint at `path`; None when it is not a checkpoint (no manifest)."""
    from s2_vllm.checkpoint import read_manifest
    from s2_vllm.config.fingerprint import stage_of

    path = Path(path)
    manifest = read_manifest(path) if path.is_file() and path.stat().st_size else None
    return None if manifest is None else by_mark(stage_of(manifest.get("fingerprint")))


def check_output(path: Path, stage: StageEntry) -> None:
    """The checkpoint to resume was written by this command, not another one's pass."""
    old = written_by(path)
    if old is not None and old != stage:
        raise UserError(f"{path} holds {old.describe()}, not {stage.describe()}: choose another -o, "
                        "or --overwrite to start over (the old file is kept as a backup)")


def check_inputs(paths: Sequence[Path], command: str) -> None:
    """Each checkpoint among `paths` is one `command` reads (files without a manifest are left to the reader)."""
    wanted = " or ".join(f"the checkpoint written by `s2-vllm {s.command}`" for s in STAGES if command in s.read_by)
    for path in paths:
        stage = written_by(path)
        if stage is not None and command not in stage.read_by:
            raise UserError(f"{path} holds {stage.holds}; give {wanted}")


@dataclass
class CheckpointSource:
    """A checkpoint read as a source: (id, text) of the rows with a wanted status, and every row's status."""

    pairs: list[tuple[str, str]]
    statuses: Counter[str] = field(default_factory=Counter)
    stage: StageEntry | None = None
    used: tuple[str, ...] = USABLE  # the statuses `pairs` were taken from

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    def counts(self) -> str:
        """`10 length, 3 error`: the statuses it holds, most first."""
        return ", ".join(f"{n} {status}" for status, n in self.statuses.most_common()) or "no rows"

    def held(self) -> str:
        """`10 length, 3 ok; left out: 3 error`: what was read, by status, and what was not."""
        used = [f"{n} {s}" for s, n in self.statuses.most_common() if s in self.used]
        left = [f"{n} {s}" for s, n in self.statuses.most_common() if s not in self.used]
        return ", ".join(used or ["none"]) + ("; left out: " + ", ".join(left) if left else "")


def expand(pattern: str) -> list[Path]:
    """A path, or a glob for the shards of one run (a file whose name holds glob characters is itself)."""
    if glob.has_magic(pattern) and not Path(pattern).exists():
        paths = sorted(glob.glob(pattern))
        if not paths:
            raise InputError(f"no file matches {pattern}")
        return [Path(p) for p in paths]
    return [Path(pattern)]


def usable_statuses(cut_rows: str = "use") -> tuple[str, ...]:
    """The row statuses a checkpoint read as a source gives text from: a row cut at `max_tokens` is a result."""
    return USABLE if cut_rows == "use" else ("ok",)


def read_checkpoint_source(paths: Sequence[Path], statuses: tuple[str, ...] = USABLE) -> CheckpointSource:
    """The rows of one run's checkpoints (shards merged, the last row of an id wins) as (id, description)
    pairs, those with a status in `statuses`; every status is counted."""
    from s2_vllm.checkpoint import check_one_run, merge_rows

    check_one_run(list(paths))
    rows, _ = merge_rows(list(paths))
    pairs = [(row.file_id, row.final_description or "") for row in rows if row.status in statuses]
    return CheckpointSource(pairs, Counter(row.status for row in rows), written_by(paths[0]), tuple(statuses))
