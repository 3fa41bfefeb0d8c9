"""The replica side of the pool: the loop one replica runs, and what each replica sees:
its engine (built by the factory it is handed), its GPUs and its environment.

The messages it exchanges with the pool are the dataclasses of messages.py.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from s2_vllm.config import Config, ParallelConfig
from s2_vllm.engines.base import Completion, Engine, refusal
from s2_vllm.engines.messages import Abort, Add, Dead, Done, Failed, Fault, FromReplica, Ready, Stop, Tokens
from s2_vllm.errors import ConfigError, EngineError

IDLE_SECONDS = 0.5  # longest an idle replica waits for work before looking again
TOKENS_EVERY = 0.5  # how often a replica reports the output tokens of its unfinished requests

# Every replica gets these: only the parent draws a progress bar, vLLM's lines say whose they are,
# and an engine core started by a replica does not inherit the replica's pipe (no fork).
QUIET_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "VLLM_WORKER_MULTIPROC_METHOD": "spawn"}


def serve(factory: Callable[[int], Engine], index: int, env: dict[str, str], receive: Callable[[float], Any],
          send: Callable[[FromReplica], None]) -> None:
    """One replica: build its engine, then add what arrives, step it, send back what finished.

    `receive(timeout)` returns the pool's next message or None; `send(message)` answers it.
    The same loop runs in a worker process and in a Ray actor.
    """
    os.environ.update(env)
    try:
        engine = factory(index)
    except Exception as exc:
        send(Failed(Fault.of(exc)))
        return
    devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    place = f"{socket.gethostname()} {'GPU ' + devices if devices else 'CPU'}"
    send(Ready(engine.in_flight(), os.getpid(), place, engine.notes()))
    last_count = 0.0
    try:
        done: list[Completion] = []
        while True:
            message = receive(0 if done or engine.has_unfinished() else IDLE_SECONDS)
            while message is not None:
                if isinstance(message, Stop):
                    return
                if isinstance(message, Abort):
                    engine.abort()
                    done = []
                elif isinstance(message, Add):
                    for request in message.requests:
                        try:
                            engine.add(request)
                        except EngineError:
                            raise  # the engine is gone: this replica is dead, not the request
                        except Exception as exc:  # this request alone, as the runner does in-process
                            done.append(Completion(request.key, "", "error", len(request.prompt_token_ids), 0,
                                                   refusal(exc)))
                message = receive(0)
            if engine.has_unfinished():
                done += engine.step()
            if done:
                send(Done(done))
                done = []
            if time.monotonic() - last_count > TOKENS_EVERY:
                last_count = time.monotonic()
                send(Tokens(engine.tokens_in_flight()))
    except Exception as exc:
        send(Dead(Fault.of(exc)))
    finally:
        engine.close()


def process_main(factory: Callable[[int], Engine], index: int, env: dict[str, str], conn: Any) -> None:
    """A worker process: a reader thread keeps the pipe drained, the main thread serves."""
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops us
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # close the engine on the way out
    inbox: queue.Queue[Any] = queue.Queue()

    def read() -> None:
        try:
            while True:
                inbox.put(conn.recv())
        except (EOFError, OSError):
            inbox.put(Stop())  # the pool is gone

    threading.Thread(target=read, name="s2-vllm-replica-reader", daemon=True).start()

    def send(message: FromReplica) -> None:
        try:
            conn.send(message)
        except OSError:
            raise SystemExit(0) from None  # the pool is gone: nobody to work for

    serve(factory, index, env, lambda timeout: get_message(inbox, timeout), send)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # the engine is closed; skip the slow interpreter teardown (torch, CUDA)


def get_message(inbox: queue.Queue[Any], timeout: float) -> Any:
    try:
        return inbox.get(timeout=timeout) if timeout > 0 else inbox.get_nowait()
    except queue.Empty:
        return None


# ---------------------------------------------------------------- placement


def replica_config(config: Config) -> Config:
    """The config one replica runs: one engine, with its share of `run.in_flight`."""
    n = config.parallel.replicas
    in_flight = config.run.in_flight
    run = dataclasses.replace(config.run, in_flight=None if in_flight is None else -(-in_flight // n))
    return dataclasses.replace(config, run=run, parallel=ParallelConfig())


def gpus_per_replica(config: Config) -> int:
    if config.run.engine != "vllm":
        return 0 if config.run.engine == "fake" or config.hf.device == "cpu" else 1
    e = config.engine
    return (e.tensor_parallel_size or 1) * (e.pipeline_parallel_size or 1)


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as CUDA_VISIBLE_DEVICES names them."""
    try:
        import torch

        count = torch.cuda.device_count()  # does not create a CUDA context
    except Exception:
        return []
    names = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in names.split(",") if d.strip()] if names is not None else [str(i) for i in range(count)]
    return ids[:count]


def gpu_slices(config: Config, gpus: list[str]) -> list[list[str]] | None:
    """Each replica's GPUs: disjoint slices of tp x pp while they last, then shared round-robin."""
    per, n = gpus_per_replica(config), config.parallel.replicas
    if per == 0 or not gpus:
        return None
    if config.run.engine == "hf" and config.hf.device.startswith("cuda:"):
        raise ConfigError(f"hf.device = '{config.hf.device}' names one GPU; with replicas use 'auto' or 'cuda' "
                          "(each replica gets its own GPU)")
    if per > len(gpus):
        raise ConfigError(f"each replica needs {per} GPUs (tensor_parallel_size x pipeline_parallel_size) "
                          f"but {len(gpus)} are visible")
    groups = len(gpus) // per
    share = -(-n // groups)
    if share > 1 and config.run.engine == "vllm":
        util = config.engine.gpu_memory_utilization or 0.9
        if util * share > 1.0 + 1e-9:
            raise ConfigError(f"{n} replicas on {groups * per} GPUs put {share} on each GPU: set [engine] "
                              f"gpu_memory_utilization to at most {int(100 / share) / 100:.2f} (it is {util})")
    return [gpus[(i % groups) * per : (i % groups + 1) * per] for i in range(n)]


def replica_env(index: int) -> dict[str, str]:
    """What every replica's environment gets, local or on Ray."""
    return {**QUIET_ENV, "VLLM_LOGGING_PREFIX": f"[replica {index}] "}


def replica_envs(config: Config, gpus: list[str] | None = None) -> list[dict[str, str]]:
    """The environment of each local replica: its GPUs, or its share of the CPU threads (hf; vLLM's CPU
    build gets its share through the platform settings the factory hands its engine)."""
    n = config.parallel.replicas
    envs = [replica_env(i) for i in range(n)]
    if gpus is None:
        gpus = visible_gpus() if gpus_per_replica(config) else []
    slices = gpu_slices(config, gpus)
    if slices is not None:
        for env, devices in zip(envs, slices):
            env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    elif config.run.engine == "hf" and "OMP_NUM_THREADS" not in os.environ:
        # CPU: N torch thread pools must not fight over the cores
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = str(max(1, cores // n))
        for env in envs:
            env["OMP_NUM_THREADS"] = threads
    return envs
