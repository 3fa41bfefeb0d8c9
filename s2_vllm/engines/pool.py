"""Data parallelism as one Engine: N engine replicas behind the interface the runner drives.

`ReplicaPool` starts N worker processes (spawned, so `if __name__ == "__main__"`-guarded
scripts are safe); each builds its engine with the `EngineFactory` the pool is handed and runs
its own add/step loop (`serve`, in replica.py). The pool is an `Engine`: `add` hands each
request to the replica with the most room, `step` returns what any replica finished,
`in_flight` is the sum of theirs. The runner in this process stays the single writer of the
checkpoint. Pool and replicas talk in the dataclasses of messages.py.

A replica that dies (killed, out of memory, engine error) gives its unfinished requests back
to the pool, which hands them to the others; a record whose replica died `max_attempts`
times comes back as an error row. When every replica is dead, `step` raises EngineError and
the run stops with everything finished so far in the checkpoint, resumable. The pool writes
nothing to the console: a replica's death is reported through `notify`.

`RayReplicaPool` (ray_pool.py) differs only in how a replica starts and how its messages
travel; `serve` and all the bookkeeping here are shared.
"""

from __future__ import annotations

import multiprocessing
import signal
import time
import weakref
from abc import abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from s2_vllm.config import Config
from s2_vllm.engines.base import Completion, Engine, GenerationRequest
from s2_vllm.engines.messages import (Abort, Add, Dead, Done, Failed, FromReplica, Lost, Ready, Stop, Tokens,
                                      ToReplica)
from s2_vllm.engines.replica import IDLE_SECONDS, process_main, replica_envs
from s2_vllm.errors import EngineError, one_line, plural

POLL_SECONDS = 0.2  # longest a pool step waits for a replica's message
STOP_SECONDS = 15.0  # grace for replicas to close their engines before they are killed

Factory = Callable[[int], Engine]  # builds replica i's engine, inside the replica


@dataclass(eq=False)
class Replica:
    """The pool's view of one replica."""

    index: int
    env: dict[str, str]
    handle: Any = None  # the transport's: (process, connection) or a Ray actor
    pid: int | None = None
    place: str = ""
    in_flight: int = 0  # how many requests it keeps in flight (its Ready said)
    notes: list[str] = field(default_factory=list)
    ready: bool = False
    alive: bool = True
    reason: str | None = None  # why it died
    running: dict[str, GenerationRequest] = field(default_factory=dict)  # given to it, unfinished
    outbox: list[GenerationRequest] = field(default_factory=list)  # given to it, not sent yet
    records: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    tokens_in_flight: int = 0  # as it last reported


class PoolBase(Engine):
    """Routing, retries and statistics over replicas; subclasses say how replicas start and talk."""

    def __init__(self, config: Config, envs: list[dict[str, str]], factory: Factory,
                 notify: Callable[[str], None] | None = None):
        self.name = config.run.engine
        self.factory = factory
        self.notify = notify or (lambda line: None)
        self.max_attempts = config.parallel.max_attempts
        self.attempts: dict[str, int] = {}  # key -> times its replica died under it
        self.backlog: deque[GenerationRequest] = deque()  # added or given back, not yet routed
        self.finished: list[Completion] = []  # to return from the next step
        self.closed = False
        self.ended: float | None = None
        self.replicas = [Replica(i, env) for i, env in enumerate(envs)]
        devices = [env["CUDA_VISIBLE_DEVICES"] for env in envs if "CUDA_VISIBLE_DEVICES" in env]
        # Replicas sharing a GPU start one after the other: vLLM sizes its KV cache from the memory
        # it sees while profiling, which another engine loading at the same time would skew.
        one_by_one = len(set(devices)) < len(devices)
        try:
            for replica in self.replicas:
                self._launch(replica)
                if one_by_one:
                    self._wait_ready()
            self._wait_ready()
        except BaseException:
            self.close()
            raise
        self.started = time.monotonic()

    # -- what a transport provides

    @abstractmethod
    def _launch(self, replica: Replica) -> None:
        """Start the replica, which builds its engine with `self.factory(replica.index)`."""

    @abstractmethod
    def _post(self, replica: Replica, message: ToReplica) -> None:
        """Send one message; raising means the replica cannot be reached."""

    @abstractmethod
    def _collect(self, timeout: float) -> list[tuple[Replica, FromReplica]]:
        """Messages from live replicas, waiting up to `timeout` for the first; `Lost` for a dead one."""

    def _exit_reason(self, replica: Replica) -> str | None:
        """Why a replica is gone (None while it lives), for deaths its channel does not report."""
        return None

    def _drain(self, replica: Replica) -> list[FromReplica]:
        """Messages a replica that just exited left unread."""
        return []

    def _shutdown(self) -> None:
        """Stop every replica (each was sent `Stop`), killing what does not exit in time."""

    # -- the Engine interface

    def in_flight(self) -> int:
        return sum(r.in_flight for r in self._live())

    def add(self, request: GenerationRequest) -> None:
        self.backlog.append(request)  # never raises: a failure here would fail the record, not the replica
        self._route()

    def step(self) -> list[Completion]:
        self._route()
        self._flush()
        for replica, message in self._collect(POLL_SECONDS):
            self._receive(replica, message)
        for replica in self._live():
            reason = self._exit_reason(replica)
            if reason is not None:
                for message in self._drain(replica):
                    self._receive(replica, message)
                self._lose(replica, reason)
        if not self._live():
            reasons = "; ".join(f"replica {r.index}: {r.reason}" for r in self.replicas)
            raise EngineError(f"all {len(self.replicas)} replicas died ({reasons})")
        self._route()
        self._flush()
        done, self.finished = self.finished, []
        return done

    def has_unfinished(self) -> bool:
        return bool(self.backlog or self.finished or any(r.running for r in self._live()))

    def tokens_in_flight(self) -> int:
        return sum(r.tokens_in_flight for r in self._live())

    def notes(self) -> list[str]:
        """The replicas' engine header lines, each once."""
        return list(dict.fromkeys(note for r in self.replicas for note in r.notes))

    def abort(self) -> None:
        self.backlog.clear()
        self.finished.clear()
        for replica in self._live():
            replica.running.clear()
            replica.outbox.clear()
            try:
                self._post(replica, Abort())
            except Exception:
                pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.ended = time.monotonic()
        for replica in self.replicas:
            if replica.handle is not None and replica.alive:
                try:
                    self._post(replica, Stop())
                except Exception:
                    pass
        self._shutdown()

    # -- for the summary and for tests

    def pids(self) -> list[int | None]:
        return [r.pid for r in self.replicas]

    def summary_details(self) -> dict[str, Any]:
        """Per-replica counts and output tokens/s, merged into the run's summary."""
        seconds = max(1e-9, (self.ended or time.monotonic()) - getattr(self, "started", time.monotonic()))
        return {"replicas": [
            {
                "replica": r.index,
                "place": r.place,
                "pid": r.pid,
                "records": r.records,
                "prompt_tokens": r.prompt_tokens,
                "output_tokens": r.output_tokens,
                "output_tokens_per_second": round(r.output_tokens / seconds, 1),
                "alive": r.alive,
                "error": r.reason,
            }
            for r in self.replicas
        ]}

    # -- internals

    def _live(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive and r.handle is not None]

    def _wait_ready(self) -> None:
        """Until every launched replica has said it is ready; raises if one cannot start."""
        while not all(r.ready for r in self._live()):
            for replica, message in self._collect(IDLE_SECONDS):
                if isinstance(message, Ready):
                    replica.in_flight, replica.pid, replica.place = message.in_flight, message.pid, message.place
                    replica.notes, replica.ready = message.notes, True
                elif isinstance(message, Failed):
                    raise message.fault.user_exception() or EngineError(
                        f"replica {replica.index} could not start: {message.fault}")
                elif isinstance(message, (Dead, Lost)):
                    raise EngineError(f"replica {replica.index} could not start: {_why(message)}")
            for replica in self._live():
                reason = self._exit_reason(replica)
                if reason is not None and not replica.ready:
                    raise EngineError(f"replica {replica.index} could not start: {reason}")

    def _route(self) -> None:
        """Hand backlog requests to the replicas with the most room."""
        live = [r for r in self._live() if r.ready]
        while self.backlog and live:
            replica = max(live, key=lambda r: r.in_flight - len(r.running))
            if replica.in_flight - len(replica.running) <= 0:
                return
            request = self.backlog.popleft()
            replica.running[request.key] = request
            replica.outbox.append(request)

    def _flush(self) -> None:
        for replica in self._live():
            if replica.outbox:
                try:
                    self._post(replica, Add(replica.outbox))
                except Exception as exc:
                    self._lose(replica, f"cannot reach it: {one_line(exc)}")
                else:
                    replica.outbox = []

    def _receive(self, replica: Replica, message: FromReplica) -> None:
        if isinstance(message, Done):
            for completion in message.completions:
                if replica.running.pop(completion.key, None) is None:
                    continue  # aborted, or given to another replica meanwhile
                self.attempts.pop(completion.key, None)
                replica.records += 1
                replica.prompt_tokens += completion.prompt_tokens
                replica.output_tokens += completion.completion_tokens
                self.finished.append(completion)
        elif isinstance(message, Tokens):
            replica.tokens_in_flight = message.count
        elif isinstance(message, (Dead, Lost)):
            self._lose(replica, _why(message))

    def _lose(self, replica: Replica, reason: str) -> None:
        """A replica died: its unfinished requests go back to the others, or fail after max_attempts."""
        if not replica.alive:
            return
        replica.alive, replica.reason = False, reason
        lost = list(replica.running.values())
        unsent = {request.key for request in replica.outbox}  # never reached it: not an attempt
        replica.running.clear()
        replica.outbox.clear()
        retry = []
        for request in lost:
            if request.key in unsent:
                retry.append(request)
                continue
            n = self.attempts[request.key] = self.attempts.get(request.key, 0) + 1
            if n >= self.max_attempts:
                self.finished.append(Completion(
                    request.key, "", "error", len(request.prompt_token_ids), 0,
                    f"the replica running it died {n} times (last: replica {replica.index}, {reason})",
                ))
            else:
                retry.append(request)
        self.backlog.extendleft(reversed(retry))
        left = len(self._live())
        self.notify(f"s2-vllm: replica {replica.index} died ({reason}); {len(retry)} unfinished records go back "
                    f"to the queue, {plural(left, 'replica')} left")


def _why(message: Dead | Lost) -> str:
    return str(message.fault) if isinstance(message, Dead) else message.reason


class ReplicaPool(PoolBase):
    """Replicas as worker processes on this machine, one pipe each."""

    def __init__(self, config: Config, factory: Factory, notify: Callable[[str], None] | None = None):
        self._context = multiprocessing.get_context("spawn")
        self._processes: list[Any] = []
        weakref.finalize(self, _kill_all, self._processes)  # never leave workers behind
        super().__init__(config, replica_envs(config), factory, notify)

    def _launch(self, replica: Replica) -> None:
        parent, child = self._context.Pipe(duplex=True)
        process = self._context.Process(target=process_main, args=(self.factory, replica.index, replica.env, child),
                                        name=f"s2-vllm-replica-{replica.index}")
        process.start()
        child.close()  # so the parent's end reads EOF once the worker is gone
        self._processes.append(process)
        replica.handle, replica.pid = (process, parent), process.pid

    def _post(self, replica: Replica, message: ToReplica) -> None:
        replica.handle[1].send(message)

    def _collect(self, timeout: float) -> list[tuple[Replica, FromReplica]]:
        from multiprocessing.connection import wait

        by_conn = {r.handle[1]: r for r in self._live()}
        messages: list[tuple[Replica, FromReplica]] = []
        for conn in wait(list(by_conn), timeout):
            replica = by_conn[conn]
            try:
                while conn.poll():
                    messages.append((replica, conn.recv()))
            except (EOFError, OSError):
                process = replica.handle[0]
                process.join(1.0)
                messages.append((replica, Lost(_exit_text(process.exitcode))))
        return messages

    def _exit_reason(self, replica: Replica) -> str | None:
        code = replica.handle[0].exitcode
        return None if code is None else _exit_text(code)

    def _drain(self, replica: Replica) -> list[FromReplica]:
        conn, messages = replica.handle[1], []
        try:
            while conn.poll():
                messages.append(conn.recv())
        except (EOFError, OSError):
            pass
        return messages

    def _shutdown(self) -> None:
        deadline = time.monotonic() + STOP_SECONDS
        for process in self._processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in self._processes:
            if process.is_alive():
                process.terminate()
                process.join(5.0)
            if process.is_alive():
                process.kill()
                process.join()
        for replica in self.replicas:
            if replica.handle is not None:
                replica.handle[1].close()


def _exit_text(code: int | None) -> str:
    if code is None:
        return "its connection closed"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def _kill_all(processes: list[Any]) -> None:
    for process in processes:
        if process.is_alive():
            process.kill()
