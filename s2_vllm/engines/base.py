"""What the runner needs from an engine, and nothing more.

An engine takes pre-tokenized requests one at a time (`add`) and hands back the ones
that finished whenever it is stepped (`step`), in whatever order they finish. The
runner keeps `capacity()` requests in flight and writes each completion at once.
Engines know nothing of checkpoints, files or records.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class GenerationRequest:
    key: str  # the record's file_id; completions carry it back
    prompt_token_ids: list[int]
    seed: int  # per-record seed, so results do not depend on order or resuming


@dataclass(frozen=True)
class Completion:
    key: str
    text: str
    finish_reason: str  # stop | length | error
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


class Engine(Protocol):
    """Optional members the runner looks for: `interruptible_step` (True when a step can run
    long and a Ctrl-C may end it by raising inside it) and `tokens_in_flight()` (output tokens
    of unfinished requests so far, for the progress bar)."""

    name: str

    def capacity(self) -> int:
        """How many requests the runner should keep added and unfinished."""
        ...

    def add(self, request: GenerationRequest) -> None:
        """Queue one request. Raising here fails that request alone."""
        ...

    def step(self) -> list[Completion]:
        """Advance generation; return the requests that finished (maybe none)."""
        ...

    def has_unfinished(self) -> bool: ...

    def abort(self) -> None:
        """Drop every unfinished request (on Ctrl-C); their results are never written."""
        ...

    def close(self) -> None: ...


def record_seed(base_seed: int, key: str) -> int:
    """A stable 31-bit seed from the run's seed and the record id."""
    digest = hashlib.sha256(f"{base_seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
