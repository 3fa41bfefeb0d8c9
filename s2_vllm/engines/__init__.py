"""Engines turn token ids into text. `create_engine` picks one by name; imports stay lazy."""

from __future__ import annotations

from typing import Any

from s2_vllm.config import Config
from s2_vllm.engines.base import Completion, Engine, GenerationRequest, record_seed

__all__ = ["Completion", "Engine", "GenerationRequest", "check_engine_config", "create_engine", "platform_notes",
           "record_seed"]


def check_engine_config(config: Config) -> None:
    """Reject engine and sampling settings the chosen engine would refuse, before anything loads."""
    if config.run.engine == "vllm":
        from s2_vllm.engines.vllm import engine_kwargs, sampling_params

        engine_kwargs(config.engine)
        sampling_params(config.sampling, 0)


def platform_notes(config: Config) -> list[str]:
    """Lines for the run's header: what s2-vllm sets for the platform the engine runs on, and why."""
    if config.run.engine != "vllm" or config.parallel.ray_address:
        return []  # Ray replicas run elsewhere; their platform is not this machine's
    from s2_vllm.engines.vllm_cpu import settings_here

    return [f"vLLM on CPU: {note}" for note in settings_here(config.engine, replicas=config.parallel.replicas).notes]


def create_engine(config: Config, tokenizer: Any) -> Engine:
    if config.parallel.ray_address:
        from s2_vllm.engines.ray_pool import RayReplicaPool

        return RayReplicaPool(config)
    if config.parallel.replicas > 1:
        from s2_vllm.engines.pool import ReplicaPool

        return ReplicaPool(config)
    if config.run.engine == "hf":
        from s2_vllm.engines.hf import HFEngine

        return HFEngine(config.engine, config.sampling, config.hf, tokenizer)
    from s2_vllm.engines.vllm import VLLMEngine

    return VLLMEngine(config.engine, config.sampling, config.run.in_flight)
