"""What s2-vllm sets when vLLM runs on its CPU build, and why; nothing here applies on CUDA.

Each rule gives way to the user: a key set in `[engine]`/`[engine.extra]` or a variable already
in the environment is left as it is. `cpu_settings` is pure (it is handed the environment and
the memory size), so the rules are tested without an engine. `settings_here` is called once per
run (`engines.platform_settings`); `VLLMEngine` applies what it is handed, a replica its share,
and the pipeline prints the notes in the run's header.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from s2_vllm.config import EngineConfig
from s2_vllm.engines.parallel import check_placement, rank_binding, ranks
from s2_vllm.engines.vllm_api import DEFAULT_MAX_NUM_SEQS, is_cpu_platform
from s2_vllm.model_config import read_model_config, text_config

GiB = 1 << 30
KV_CACHE_SHARE = 4  # a quarter of the memory available at start goes to the KV cache(s)
KV_CACHE_MAX_GIB = 32


@dataclass
class PlatformSettings:
    engine_args: dict[str, Any] = field(default_factory=dict)  # added to vllm.LLM's arguments
    env: dict[str, str] = field(default_factory=dict)  # set before the engine starts its processes
    notes: list[str] = field(default_factory=list)  # one line each, for the run's header


def available_memory() -> int:
    """MemAvailable in bytes (the kernel's estimate of what can be had without swapping)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * GiB


def cpu_settings(cfg: EngineConfig, environ: Mapping[str, str], *, available: int, cores: list[int],
                 needed: int | None = None, replicas: int = 1, replica: int = 0,
                 refuse_overcommit: bool = True) -> PlatformSettings:
    """`needed`: the bytes of KV cache one rank of the engine could fill at most (None: unknown).
    `refuse_overcommit`: refuse more tensor/pipeline ranks x replicas than `cores` (off in a Ray actor, whose
    CPUs the pool asked Ray for: the replicas may be on other nodes)."""
    out = PlatformSettings()
    if "enable_chunked_prefill" not in cfg.extra:
        # vLLM's CPU model runner moves each seeded request's generator back after a partial
        # prefill (gen.set_offset), which CPU torch generators do not support: the engine dies at
        # the first prompt split over two steps. s2-vllm seeds every record.
        out.engine_args["enable_chunked_prefill"] = False
        out.notes.append("chunked prefill off: vLLM's CPU sampler cannot resume a seeded request split over "
                         "steps ([engine.extra] enable_chunked_prefill = true overrides)")
    elif cfg.extra["enable_chunked_prefill"]:
        out.notes.append("chunked prefill on, as [engine.extra] says: vLLM's CPU engine can die on seeded "
                         "sampling with it")

    each = "engine" if ranks(cfg) == 1 else "rank"
    if "VLLM_CPU_KVCACHE_SPACE" in environ:
        out.notes.append(f"KV cache: {environ['VLLM_CPU_KVCACHE_SPACE']} GiB per {each} "
                         "(VLLM_CPU_KVCACHE_SPACE, as set)")
    elif cfg.gpu_memory_utilization is None and "kv_cache_memory_bytes" not in cfg.extra:
        # Without either, vLLM's CPU worker reserves gpu_memory_utilization (0.92) of the whole
        # NUMA node and refuses to start when less than that is free, which is the usual case.
        # What the engine can fill at most is enough; more only costs start-up time (zeroing).
        # Each rank of a tensor/pipeline-parallel engine holds a cache of this size of its own.
        share = max(1, min(KV_CACHE_MAX_GIB, available // (KV_CACHE_SHARE * replicas * ranks(cfg)) // GiB))
        gib = share if needed is None else max(1, min(share, -(-needed // GiB)))
        out.env["VLLM_CPU_KVCACHE_SPACE"] = str(gib)
        why = ("a quarter of the free memory" if gib == share and (needed is None or needed > share * GiB)
               else "all that max_num_seqs sequences of max_model_len tokens can fill")
        out.notes.append(f"KV cache: {gib} GiB per {each}, {why} (VLLM_CPU_KVCACHE_SPACE overrides)")

    if "VLLM_USE_AOT_COMPILE" not in environ:
        # vLLM 0.26's CPU build cannot load the AOT-compiled model it saved ("'function' object has
        # no attribute 'finalize_loading'") and compiles again at every start; the plain compile
        # cache works: on the tiny model, 2 cores, a start takes ~37 s instead of ~60 s.
        out.env["VLLM_USE_AOT_COMPILE"] = "0"
        out.notes.append("AOT compile cache off: this vLLM cannot reload it on CPU (VLLM_USE_AOT_COMPILE overrides)")

    if "VLLM_CPU_OMP_THREADS_BIND" in environ:
        out.notes.append(f"threads bound as VLLM_CPU_OMP_THREADS_BIND={environ['VLLM_CPU_OMP_THREADS_BIND']} says")
    elif cores:
        # vLLM's "auto" binding keeps one core free for its scheduler process, which on a small machine
        # halves the compute, and with tensor/pipeline parallelism it wants a NUMA node per rank: every
        # core (or, with replicas, an even share), split between the ranks, is faster and always starts.
        per_rank = ranks(cfg)
        if per_rank > 1 and refuse_overcommit:
            check_placement(cfg, replicas, len(cores))
        shares = [_share(cores, replicas, i) for i in range(replicas)]
        bind = [_binding(share if len(share) >= per_rank else cores, per_rank) for share in shares]
        out.env["VLLM_CPU_OMP_THREADS_BIND"] = bind[replica]
        if per_rank == 1:
            where = f"replica by replica, to cores {' | '.join(bind)}" if replicas > 1 else f"to cores {bind[0]}"
        else:  # '|' separates the ranks of one engine, as in the variable itself
            where = (f"replica by replica and rank by rank, to cores {' ; '.join(bind)}" if replicas > 1
                     else f"rank by rank, to cores {bind[0]}")
        out.notes.append(f"threads bound {where} (VLLM_CPU_OMP_THREADS_BIND overrides)")
    return out


def _binding(cores: list[int], per_rank: int) -> str:
    """VLLM_CPU_OMP_THREADS_BIND's value for one engine: its cores, split between its ranks by `|`."""
    return "|".join(_ranges(part) for part in rank_binding(cores, per_rank))


def _share(cores: list[int], n: int, i: int) -> list[int]:
    """Replica i's contiguous share of the cores (all of them when there are fewer cores than replicas)."""
    if n <= 1 or len(cores) < n:
        return cores
    size, extra = divmod(len(cores), n)
    start = i * size + min(i, extra)
    return cores[start:start + size + (i < extra)]


def _ranges(cores: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5' (the form VLLM_CPU_OMP_THREADS_BIND takes)."""
    parts, start = [], None
    for a, b in zip(cores, cores[1:] + [None]):
        start = a if start is None else start
        if b != a + 1:
            parts.append(f"{start}-{a}" if a != start else str(a))
            start = None
    return ",".join(parts)


def kv_cache_ceiling(cfg: EngineConfig, model_config: Any | None = None) -> int | None:
    """Bytes of KV cache one rank of the engine can fill at most: max_num_seqs sequences of max_model_len
    tokens, at 2 bytes a value (vLLM's CPU backend runs bf16). `model_config`: the run's, when
    read already; None when the model's config cannot be read."""
    model = read_model_config(cfg) if model_config is None else model_config
    try:
        text = text_config(model)
        heads = text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        kv_heads = getattr(text, "num_key_value_heads", None) or heads
        tokens = (cfg.max_model_len or text.max_position_embeddings) * (cfg.max_num_seqs or DEFAULT_MAX_NUM_SEQS)
        # one rank's part: its pipeline stage's layers, and its share of the KV heads (vLLM repeats a head on
        # each rank when there are more tensor-parallel ranks than KV heads)
        layers = -(-text.num_hidden_layers // (cfg.pipeline_parallel_size or 1))
        kv_heads = max(1, kv_heads // (cfg.tensor_parallel_size or 1))
        return 2 * layers * kv_heads * head_dim * 2 * tokens
    except Exception:
        return None


def settings_here(cfg: EngineConfig, replicas: int = 1, replica: int = 0, model_config: Any | None = None,
                  refuse_overcommit: bool = True) -> PlatformSettings:
    """The settings of one engine (replica `replica` of `replicas`) on this machine: empty unless vLLM runs
    on the CPU."""
    return replica_settings(cfg, replicas, model_config, refuse_overcommit)[replica]


def replica_settings(cfg: EngineConfig, replicas: int, model_config: Any | None = None,
                     refuse_overcommit: bool = True) -> list[PlatformSettings]:
    """Each replica's settings, computed once: on CPU, disjoint core shares and split KV caches."""
    if not is_cpu_platform():
        return [PlatformSettings() for _ in range(replicas)]
    needed = kv_cache_ceiling(cfg, model_config)
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    available = available_memory()
    return [cpu_settings(cfg, os.environ, available=available, cores=cores, needed=needed, replicas=replicas,
                         replica=i, refuse_overcommit=refuse_overcommit) for i in range(replicas)]
