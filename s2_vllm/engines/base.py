"""What the runner needs from an engine, and nothing more.

An engine takes pre-tokenized requests one at a time (`add`) and hands back the ones
that finished whenever it is stepped (`step`), in whatever order they finish. The
runner keeps `in_flight()` requests added and unfinished and writes each completion at once.
Engines know nothing of checkpoints, files or records.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from s2_vllm.errors import one_line


@dataclass(frozen=True)
class GenerationRequest:
    key: str  # the record's file_id; completions carry it back
    prompt_token_ids: list[int]
    seed: int  # per-record seed, so results do not depend on order or resuming
    # vLLM's multi_modal_data for the prompt's placeholders (modality → decoded clip), handed on unchanged
    multi_modal_data: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Completion:
    key: str
    text: str
    finish_reason: str  # stop | length | error
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


_ARRAY = re.compile(r"\s*\[[\s\d.eE+\-;]*(?:\.\.\.[\s\d.eE+\-;]*)?\]")  # numpy's repr of the input


def refusal(exc: BaseException) -> str:
    """The error of a request the engine would not take (a row's `error`, in-process or in a replica); an array
    vLLM printed into its message (a decoded clip) is left out."""
    return f"engine refused the request: {_ARRAY.sub('', one_line(exc, whole=True))}"


class Engine(ABC):
    """An engine the runner drives. The members with a body are optional: engines override them as they can."""

    name: str
    interruptible_step: bool = False  # True when one step can run long and a Ctrl-C may end it by raising inside it

    @abstractmethod
    def in_flight(self) -> int:
        """How many requests the runner should keep added and unfinished."""

    @abstractmethod
    def add(self, request: GenerationRequest) -> None:
        """Queue one request. Raising here fails that request alone; EngineError means the engine is gone."""

    @abstractmethod
    def step(self) -> list[Completion]:
        """Advance generation; return the requests that finished (maybe none)."""

    @abstractmethod
    def has_unfinished(self) -> bool: ...

    @abstractmethod
    def abort(self) -> None:
        """Drop every unfinished request (on Ctrl-C); their results are never written."""

    @abstractmethod
    def close(self) -> None: ...

    def tokens_in_flight(self) -> int:
        """Output tokens generated so far by unfinished requests, for the progress bar."""
        return 0

    def notes(self) -> list[str]:
        """Lines for the run's header once the engine has started (its version, what is off and why)."""
        return []

    def summary_details(self) -> dict[str, Any]:
        """More keys for the run's summary (a replica pool's per-replica numbers)."""
        return {}


def record_seed(base_seed: int, key: str) -> int:
    """A stable 31-bit seed from the run's seed and the record id."""
    digest = hashlib.sha256(f"{base_seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
