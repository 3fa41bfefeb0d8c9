"""What the replica pool and its replicas say to each other (over a pipe, or through Ray).

Pool -> replica: `Add`, `Abort`, `Stop`. Replica -> pool: `Ready` once its engine has started
(or `Failed` when it cannot start), then `Done` and `Tokens` while it serves, and `Dead` when
its engine dies. `Lost` never crosses: the pool makes it when a replica's channel says it is gone.
An exception crosses as a `Fault`, its type and message kept, and is raised again on the pool's side.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from s2_vllm import errors
from s2_vllm.engines.base import Completion, GenerationRequest
from s2_vllm.errors import one_line


@dataclass(frozen=True)
class Fault:
    """An exception on the replica's side: its class name, its message, and whether it is the user's to fix."""

    type: str
    message: str
    user_error: bool = False

    @classmethod
    def of(cls, exc: BaseException) -> Fault:
        return cls(type(exc).__name__, one_line(exc), isinstance(exc, errors.UserError))

    def __str__(self) -> str:
        """The message, with the type where it says something (not for s2-vllm's own one-line errors)."""
        return self.message if self.type in _OURS else f"{self.type}: {self.message}"

    def user_exception(self) -> errors.UserError | None:
        """The user's error again, same class, same message; None when the fault is not the user's."""
        if not self.user_error:
            return None
        return _OURS.get(self.type, errors.UserError)(self.message)


_OURS: dict[str, type] = {c.__name__: c for c in (errors.ConfigError, errors.InputError, errors.CheckpointError,
                                                   errors.UserError, errors.EngineError)}


@dataclass(frozen=True)
class Add:
    requests: list[GenerationRequest]


@dataclass(frozen=True)
class Abort:
    pass


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class Ready:
    in_flight: int  # how many requests it keeps in flight
    pid: int
    place: str  # host and devices, for the summary
    notes: list[str] = field(default_factory=list)  # its engine's header lines


@dataclass(frozen=True)
class Failed:
    """The engine could not start."""

    fault: Fault


@dataclass(frozen=True)
class Done:
    completions: list[Completion]


@dataclass(frozen=True)
class Tokens:
    count: int  # output tokens of its unfinished requests, for the progress bar


@dataclass(frozen=True)
class Dead:
    """The engine died while serving."""

    fault: Fault


@dataclass(frozen=True)
class Lost:
    reason: str


ToReplica = Add | Abort | Stop
FromReplica = Ready | Failed | Done | Tokens | Dead | Lost
