"""Engines turn token ids into text. `create_engine` builds one, or a pool of replicas; imports stay lazy.

`EngineFactory` is the one place an engine is built: in this process for a single engine, in
each replica (a worker process or a Ray actor) for a pool, which is handed the factory and
never builds engines itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from s2_vllm.config import Config
from s2_vllm.engines.base import Completion, Engine, GenerationRequest, record_seed

if TYPE_CHECKING:
    from s2_vllm.engines.vllm_cpu import PlatformSettings

__all__ = ["Completion", "Engine", "EngineFactory", "GenerationRequest", "check_engine_config", "create_engine",
           "on_vllm_cpu", "platform_settings", "record_seed"]


@functools.cache
def on_vllm_cpu() -> bool:
    """Whether the installed vLLM is its CPU build (imported once per process; its import-time lines go to the
    engine log). An EngineError saying how to install it when it cannot be imported."""
    from s2_vllm.engines.vllm import _import_vllm
    from s2_vllm.engines.vllm_api import is_cpu_platform
    from s2_vllm.errors import EngineError, cause_line

    try:
        _import_vllm()
    except EngineError as exc:
        raise EngineError(f"vLLM cannot be imported here ({cause_line(exc.__cause__ or exc)}); "
                          "bash scripts/install.sh installs it") from None
    return is_cpu_platform()


def check_engine_config(config: Config) -> dict[str, Any] | None:
    """Reject engine and sampling settings the chosen engine would refuse, before anything loads.

    Returns vLLM's checked keyword arguments (None for the hf engine), for `create_engine`.
    """
    if config.run.engine != "vllm":
        return None
    from s2_vllm.engines.vllm import engine_kwargs, sampling_params

    sampling_params(config.sampling, 0)
    return engine_kwargs(config.engine)


def platform_settings(config: Config, model_config: Any | None) -> list[PlatformSettings] | None:
    """What s2-vllm sets for the platform each local engine runs on (vLLM's CPU build: threads, KV cache),
    computed once per run; None where the engines compute their own (hf, or Ray replicas on other nodes)."""
    if config.run.engine != "vllm" or config.parallel.ray_address:
        return None
    from s2_vllm.engines.vllm_cpu import replica_settings

    return replica_settings(config.engine, config.parallel.replicas, model_config)


@dataclass(frozen=True)
class EngineFactory:
    """Builds the one engine of replica `index` (0 without replicas). Picklable: it travels to replicas."""

    config: Config  # one engine's config (a replica's: its share of run.in_flight)
    kwargs: dict[str, Any] | None = None  # vLLM's arguments, checked already (None: check them here)
    platforms: list[PlatformSettings] | None = None  # per replica (None: computed where the engine starts)
    replicas: int = 1

    def __call__(self, index: int = 0, tokenizer: Any = None) -> Engine:
        config = self.config
        if config.run.engine == "fake":
            from s2_vllm.engines.testing import FakeEngine

            return FakeEngine(config.fake, config.sampling)
        if config.run.engine == "hf":
            from s2_vllm.engines.hf import HFEngine
            from s2_vllm.prompts import load_tokenizer

            return HFEngine(config.engine, config.sampling, config.hf, tokenizer or load_tokenizer(config))
        from s2_vllm.engines.vllm import VLLMEngine
        from s2_vllm.engines.vllm_cpu import settings_here

        # No platforms: a Ray actor, placed by the pool's own check of the cluster's CPUs (RayReplicaPool)
        platform = (self.platforms[index] if self.platforms is not None
                    else settings_here(config.engine, self.replicas, index, refuse_overcommit=False))
        return VLLMEngine(config.engine, config.sampling, config.run.in_flight, platform=platform,
                          kwargs=self.kwargs)


def create_engine(config: Config, tokenizer: Any = None, *, kwargs: dict[str, Any] | None = None,
                  platforms: list[PlatformSettings] | None = None,
                  notify: Callable[[str], None] | None = None) -> Engine:
    """One engine, or a pool of `parallel.replicas` (local processes, or Ray actors with `ray_address`).

    `kwargs` and `platforms` come from `check_engine_config` and `platform_settings` (computed once per
    run); `notify` gets the pool's one-line events (a replica died) for the console.
    """
    if config.parallel.ray_address or config.parallel.replicas > 1:
        from s2_vllm.engines.replica import replica_config

        factory = EngineFactory(replica_config(config), kwargs, platforms, config.parallel.replicas)
        if config.parallel.ray_address:
            from s2_vllm.engines.ray_pool import RayReplicaPool

            return RayReplicaPool(config, factory, notify=notify)
        from s2_vllm.engines.pool import ReplicaPool

        return ReplicaPool(config, factory, notify=notify)
    return EngineFactory(config, kwargs, platforms)(0, tokenizer)
