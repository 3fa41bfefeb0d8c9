"""Tensor and pipeline parallel shapes: whether the model splits that way, and where each rank runs on CPU.

vLLM shards every layer's attention heads over `tensor_parallel_size` ranks and the layers over
`pipeline_parallel_size` stages; a shape the model cannot take fails deep inside the engine's
start. `check_shape` refuses it first, in one line that says which sizes fit. On vLLM's CPU
build every rank is a worker process whose OpenMP threads are bound to cores of their own
(`VLLM_CPU_OMP_THREADS_BIND`, one core list per rank, separated by `|`); vLLM's automatic
binding wants a NUMA node per rank, which a workstation does not have, so `rank_binding` splits
a replica's cores between its ranks itself.
"""

from __future__ import annotations

from typing import Any

from s2_vllm.config import EngineConfig
from s2_vllm.errors import ConfigError
from s2_vllm.model_config import text_config


def sizes(cfg: EngineConfig) -> tuple[int, int]:
    """(tensor_parallel_size, pipeline_parallel_size), 1 where unset."""
    return cfg.tensor_parallel_size or 1, cfg.pipeline_parallel_size or 1


def ranks(cfg: EngineConfig) -> int:
    """The worker processes (CPU) or GPUs one engine uses: tensor x pipeline parallel size."""
    tp, pp = sizes(cfg)
    return tp * pp


def check_shape(cfg: EngineConfig, model_config: Any | None) -> None:
    """Refuse a tensor/pipeline split the model cannot take (None: its config could not be read: vLLM decides)."""
    tp, pp = sizes(cfg)
    if model_config is None or tp * pp == 1:
        return
    text = text_config(model_config)
    heads = getattr(text, "num_attention_heads", None)
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    layers = getattr(text, "num_hidden_layers", None)
    if isinstance(heads, int) and tp > 1:
        fits = [n for n in range(1, heads + 1) if heads % n == 0 and _kv_fits(kv_heads, n)]
        if heads % tp or not _kv_fits(kv_heads, tp):
            raise ConfigError(f"engine.tensor_parallel_size = {tp} does not split {cfg.model}'s {heads} attention "
                              f"heads ({kv_heads} key/value heads) evenly: use one of "
                              f"{', '.join(map(str, fits[:8]))}")
    if isinstance(layers, int) and pp > layers:
        raise ConfigError(f"engine.pipeline_parallel_size = {pp} is more than {cfg.model}'s {layers} layers: use at "
                          f"most {layers}")


def _kv_fits(kv_heads: Any, tp: int) -> bool:
    """vLLM splits the key/value heads over the ranks, or repeats them when there are fewer heads than ranks."""
    return not isinstance(kv_heads, int) or kv_heads % tp == 0 or tp % kv_heads == 0


def rank_binding(cores: list[int], per_rank: int) -> list[list[int]]:
    """A replica's `cores` split into `per_rank` contiguous, disjoint lists, one per rank (as even as can be);
    with fewer cores than ranks (only where nothing refused it: a Ray actor), the ranks share them."""
    if len(cores) < per_rank:
        return [[cores[i % len(cores)]] for i in range(per_rank)]
    size, extra = divmod(len(cores), per_rank)
    out, start = [], 0
    for i in range(per_rank):
        end = start + size + (i < extra)
        out.append(cores[start:end])
        start = end
    return out


def check_placement(cfg: EngineConfig, replicas: int, cores: int) -> None:
    """On vLLM's CPU build: every rank of every replica needs a core of its own."""
    needed = ranks(cfg) * replicas
    if needed <= cores:
        return
    tp, pp = sizes(cfg)
    shape = f"tensor_parallel_size {tp} x pipeline_parallel_size {pp}"
    fits = f"at most {cores} ranks x replicas, e.g. {shape} with {cores // ranks(cfg)} replica(s)" \
        if ranks(cfg) <= cores else f"at most {cores} ranks in all (tensor_parallel_size x pipeline_parallel_size)"
    raise ConfigError(f"{shape} x {replicas} replica(s) = {needed} CPU worker processes, but {cores} cores are "
                      f"free for them: each rank needs a core of its own on vLLM's CPU build; {fits}")
