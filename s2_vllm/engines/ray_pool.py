"""The replica pool on a Ray cluster: each replica is a Ray actor, the driver writes the checkpoint.

Everything but the transport is `PoolBase` (pool.py): routing, retries, statistics, and the
replica loop `serve`, which here runs on a thread inside the actor. The driver sends
messages with `actor.send.remote(...)` and keeps one `actor.receive.remote(...)` call
outstanding per replica; a dead actor shows up as a failed call and its unfinished
requests go to the other replicas.

Ray places each actor (num_gpus = tensor_parallel_size x pipeline_parallel_size for vLLM)
and sets its CUDA_VISIBLE_DEVICES. Where vLLM runs on its CPU build, an actor asks for its share
of the cluster's CPUs instead, and its engine binds its threads to that share of its node's
cores, as local replicas do. Ray is imported only here, and only when asked for.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from s2_vllm.config import Config
from s2_vllm.engines.parallel import ranks
from s2_vllm.engines.messages import Dead, Fault, FromReplica, Lost, ToReplica
from s2_vllm.engines.pool import STOP_SECONDS, Factory, PoolBase, Replica
from s2_vllm.engines.replica import IDLE_SECONDS, get_message, gpus_per_replica, replica_env, serve
from s2_vllm.engines.vllm_api import is_cpu_platform
from s2_vllm.errors import ConfigError, EngineError, one_line

INSTALL_HINT = "pip install -e '.[ray]'"


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--ray-address needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


class RayReplica:
    """The actor: `serve` on a thread, fed and drained through two local queues."""

    def __init__(self, factory: Factory, index: int, env: dict[str, str]):
        self.inbox: queue.Queue[ToReplica] = queue.Queue()
        self.outbox: queue.Queue[FromReplica] = queue.Queue()
        self.thread = threading.Thread(target=self._serve, args=(factory, index, env), name="s2-vllm-replica",
                                       daemon=True)
        self.thread.start()

    def _serve(self, factory: Factory, index: int, env: dict[str, str]) -> None:
        try:
            serve(factory, index, env, lambda timeout: get_message(self.inbox, timeout), self.outbox.put)
        except BaseException as exc:  # noqa: BLE001 - reported to the driver, which retries elsewhere
            self.outbox.put(Dead(Fault.of(exc)))

    def send(self, message: ToReplica) -> None:
        self.inbox.put(message)

    def receive(self, timeout: float) -> list[FromReplica]:
        messages = [get_message(self.outbox, timeout)]
        if messages[0] is None:
            return []
        while (more := get_message(self.outbox, 0)) is not None:
            messages.append(more)
        return messages

    def join(self, timeout: float) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()


class RayReplicaPool(PoolBase):
    """Replicas as Ray actors, on this machine or across a cluster."""

    def __init__(self, config: Config, factory: Factory, notify: Callable[[str], None] | None = None):
        self.ray = import_ray()
        self._owns_ray = False
        self._connect(config.parallel.ray_address or "auto")
        self._cpus, self._gpus = self._placement(config)
        self._actor = self.ray.remote(RayReplica)
        self._pending: dict[int, Any] = {}  # replica index -> its outstanding receive() call
        n = config.parallel.replicas
        super().__init__(config, [replica_env(i) for i in range(n)], factory, notify)

    def _connect(self, address: str) -> None:
        ray = self.ray
        if ray.is_initialized():
            return  # the caller's Ray session (a test, a notebook): use it, leave it running
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING}
        try:
            if address == "local":
                ray.init(include_dashboard=False, **kwargs)
            else:
                ray.init(address=address, **kwargs)
        except Exception as exc:
            raise EngineError(f"cannot connect to the Ray cluster at '{address}': {one_line(exc)}") from exc
        self._owns_ray = True

    def _placement(self, config: Config) -> tuple[float, float]:
        """(CPUs, GPUs) per actor; refuses a cluster too small for the replicas (they would wait forever)."""
        resources = self.ray.cluster_resources()
        cpus_there, gpus_there, n = resources.get("CPU", 0), resources.get("GPU", 0), config.parallel.replicas
        gpus, cpus = gpus_per_replica(config), 1.0
        if config.run.engine == "hf" and not gpus_there:
            gpus = 0  # the transformers engine runs on CPU where the cluster has no GPU
        if config.run.engine == "vllm" and is_cpu_platform():
            # vLLM's CPU build: an engine computes on cores, not GPUs; each actor gets an even share, at most
            # the smallest node's CPUs (an actor asking for more than any node has would wait forever)
            nodes = [node.get("Resources", {}).get("CPU", 0) for node in self.ray.nodes() if node.get("Alive")]
            smallest = min((c for c in nodes if c), default=cpus_there)
            per = ranks(config.engine)  # each tensor/pipeline rank is a worker process bound to a core of its own
            if per > smallest:
                raise ConfigError(f"each replica's {per} ranks (tensor_parallel_size x pipeline_parallel_size) need "
                                  f"{per} CPUs on one node; the smallest Ray node has {smallest:g}")
            gpus, cpus = 0, max(float(per), float(int(min(cpus_there // n, smallest))))
        if cpus_there < n * cpus or gpus_there < n * gpus:
            need = f"{n * cpus:g} CPUs" + (f" and {n * gpus} GPUs" if gpus else "")
            raise ConfigError(f"the Ray cluster has {cpus_there:g} CPUs and {gpus_there:g} "
                              f"GPUs; {n} replicas need {need}")
        return cpus, gpus

    def _launch(self, replica: Replica) -> None:
        actor = self._actor.options(num_cpus=self._cpus, num_gpus=self._gpus, max_concurrency=4).remote(
            self.factory, replica.index, replica.env)
        replica.handle = actor
        self._pending[replica.index] = actor.receive.remote(IDLE_SECONDS)

    def _post(self, replica: Replica, message: ToReplica) -> None:
        replica.handle.send.remote(message)  # a dead actor answers through its receive() call

    def _collect(self, timeout: float) -> list[tuple[Replica, FromReplica]]:
        ray = self.ray
        by_ref = {self._pending[r.index]: r for r in self._live()}
        if not by_ref:
            return []
        ready, rest = ray.wait(list(by_ref), num_returns=1, timeout=timeout)
        if ready and rest:
            ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        messages: list[tuple[Replica, FromReplica]] = []
        for ref in ready:
            replica = by_ref[ref]
            try:
                messages += [(replica, m) for m in ray.get(ref)]
            except ray.exceptions.RayError as exc:
                messages.append((replica, Lost(f"its Ray actor died: {one_line(exc)}")))
                continue
            self._pending[replica.index] = replica.handle.receive.remote(IDLE_SECONDS)
        return messages

    def _shutdown(self) -> None:
        ray = self.ray
        actors = [r.handle for r in self.replicas if r.handle is not None]
        if actors:
            try:  # let each replica close its engine (vLLM frees its GPU memory), then kill the actor
                ray.wait([a.join.remote(STOP_SECONDS) for a in actors], num_returns=len(actors),
                         timeout=STOP_SECONDS + 5)
            except Exception:
                pass
        for actor in actors:
            try:
                ray.kill(actor)
            except Exception:
                pass
        if self._owns_ray:
            ray.shutdown()
