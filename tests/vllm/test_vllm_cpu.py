"""What s2-vllm sets for vLLM's CPU build: each rule, and the user's setting winning over it."""

from __future__ import annotations

import pytest

from s2_vllm.config import EngineConfig
from s2_vllm.engines.vllm_cpu import GiB, cpu_settings, kv_cache_ceiling
from s2_vllm.errors import ConfigError

FREE = 20 * GiB


def settings(cfg=None, environ=None, **kw):
    kw.setdefault("available", FREE)
    kw.setdefault("cores", [0, 1])
    return cpu_settings(cfg or EngineConfig(), environ or {}, **kw)


def test_defaults_on_two_cores():
    s = settings(needed=GiB // 4)
    assert s.engine_args == {"enable_chunked_prefill": False}
    assert s.env == {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_USE_AOT_COMPILE": "0", "VLLM_CPU_OMP_THREADS_BIND": "0-1"}
    assert s.notes == [
        "chunked prefill off: vLLM's CPU sampler cannot resume a seeded request split over steps "
        "([engine.extra] enable_chunked_prefill = true overrides)",
        "KV cache: 1 GiB per engine, all that max_num_seqs sequences of max_model_len tokens can fill "
        "(VLLM_CPU_KVCACHE_SPACE overrides)",
        "AOT compile cache off: this vLLM cannot reload it on CPU (VLLM_USE_AOT_COMPILE overrides)",
        "threads bound to cores 0-1 (VLLM_CPU_OMP_THREADS_BIND overrides)",
    ]


def test_the_users_settings_win():
    cfg = EngineConfig(extra={"enable_chunked_prefill": True})
    s = settings(cfg, {"VLLM_CPU_KVCACHE_SPACE": "3", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_USE_AOT_COMPILE": "1"})
    assert s.engine_args == {} and s.env == {}
    assert s.notes == [
        "chunked prefill on, as [engine.extra] says: vLLM's CPU engine can die on seeded sampling with it",
        "KV cache: 3 GiB per engine (VLLM_CPU_KVCACHE_SPACE, as set)",
        "threads bound as VLLM_CPU_OMP_THREADS_BIND=nobind says",
    ]
    assert settings(EngineConfig(extra={"enable_chunked_prefill": False})).engine_args == {}
    # vLLM's own ways of sizing the CPU KV cache: s2-vllm then leaves it alone.
    assert "VLLM_CPU_KVCACHE_SPACE" not in settings(EngineConfig(gpu_memory_utilization=0.3)).env
    assert "VLLM_CPU_KVCACHE_SPACE" not in settings(EngineConfig(extra={"kv_cache_memory_bytes": 2**30})).env


def test_kv_cache_is_what_the_engine_can_fill_capped_by_a_quarter_of_free_memory():
    assert settings(needed=int(2.5 * GiB)).env["VLLM_CPU_KVCACHE_SPACE"] == "3"
    big = settings(needed=100 * GiB)  # Qwen3-8B at 40960 tokens x 256 sequences
    assert big.env["VLLM_CPU_KVCACHE_SPACE"] == "5" and "a quarter of the free memory" in big.notes[1]
    assert settings(needed=None).env["VLLM_CPU_KVCACHE_SPACE"] == "5"  # model config unreadable
    assert settings(needed=100 * GiB, replicas=2).env["VLLM_CPU_KVCACHE_SPACE"] == "2"  # each replica its share
    assert settings(needed=100 * GiB, available=GiB).env["VLLM_CPU_KVCACHE_SPACE"] == "1"  # never below 1 GiB


def test_replicas_get_disjoint_cores():
    cores = list(range(8))
    binds = [settings(cores=cores, replicas=3, replica=i).env["VLLM_CPU_OMP_THREADS_BIND"] for i in range(3)]
    assert binds == ["0-2", "3-5", "6-7"]
    assert settings(cores=cores, replicas=3).notes[-1] == (
        "threads bound replica by replica, to cores 0-2 | 3-5 | 6-7 (VLLM_CPU_OMP_THREADS_BIND overrides)")
    assert settings(cores=[0, 2, 3, 4, 9]).env["VLLM_CPU_OMP_THREADS_BIND"] == "0,2-4,9"
    assert settings(cores=[0], replicas=2, replica=1).env["VLLM_CPU_OMP_THREADS_BIND"] == "0"  # fewer cores than replicas


def test_tensor_and_pipeline_ranks_get_cores_of_their_own():
    tp2 = settings(EngineConfig(tensor_parallel_size=2), needed=3 * GiB)
    assert tp2.env["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"
    assert tp2.notes[-1] == "threads bound rank by rank, to cores 0|1 (VLLM_CPU_OMP_THREADS_BIND overrides)"
    # each rank a cache of its own: the quarter of the free memory is split between the ranks (20 / 4 / 2)
    assert tp2.env["VLLM_CPU_KVCACHE_SPACE"] == "2" and "2 GiB per rank, a quarter of the free memory" in tp2.notes[1]
    pp2 = settings(EngineConfig(pipeline_parallel_size=2), cores=[0, 1, 2, 3, 4])
    assert pp2.env["VLLM_CPU_OMP_THREADS_BIND"] == "0-2|3-4"
    cores = list(range(8))  # 2 replicas of TP 2: each replica half the cores, each rank half of those
    binds = [settings(EngineConfig(tensor_parallel_size=2), cores=cores, replicas=2, replica=i)
             .env["VLLM_CPU_OMP_THREADS_BIND"] for i in range(2)]
    assert binds == ["0-1|2-3", "4-5|6-7"]
    assert settings(EngineConfig(tensor_parallel_size=2), cores=cores, replicas=2).notes[-1] == (
        "threads bound replica by replica and rank by rank, to cores 0-1|2-3 ; 4-5|6-7 "
        "(VLLM_CPU_OMP_THREADS_BIND overrides)")
    given = settings(EngineConfig(tensor_parallel_size=2), {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}, cores=[0])
    assert "VLLM_CPU_OMP_THREADS_BIND" not in given.env  # the user's binding: not checked, not replaced
    # A Ray actor (placed by the pool's check of the cluster): no refusal, and a share too small for its ranks
    # gives way to the node's cores.
    ray = settings(EngineConfig(tensor_parallel_size=2), replicas=2, replica=1, refuse_overcommit=False)
    assert ray.env["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"


def test_more_ranks_than_cores_is_refused_with_what_fits():
    with pytest.raises(ConfigError) as err:
        settings(EngineConfig(tensor_parallel_size=2), replicas=2)
    assert str(err.value) == (
        "tensor_parallel_size 2 x pipeline_parallel_size 1 x 2 replica(s) = 4 CPU worker processes, but 2 cores "
        "are free for them: each rank needs a core of its own on vLLM's CPU build; at most 2 ranks x replicas, "
        "e.g. tensor_parallel_size 2 x pipeline_parallel_size 1 with 1 replica(s)")
    with pytest.raises(ConfigError, match=r"= 4 CPU worker processes, but 2 cores .*; at most 2 ranks in all"):
        settings(EngineConfig(tensor_parallel_size=2, pipeline_parallel_size=2))


def test_kv_cache_ceiling_reads_the_model_config(tiny_model):
    # 2 layers x 2 KV heads x head_dim 64 x (K, V) x 2 bytes = 1 KiB a token; 256 sequences.
    assert kv_cache_ceiling(EngineConfig(model=str(tiny_model), max_model_len=1024)) == 1024 * 1024 * 256
    assert kv_cache_ceiling(EngineConfig(model=str(tiny_model))) == 1024 * 4096 * 256
    assert kv_cache_ceiling(EngineConfig(model=str(tiny_model), max_num_seqs=8, max_model_len=512)) == 1024 * 512 * 8
    assert kv_cache_ceiling(EngineConfig(model="/nonexistent/model")) is None
    # One rank's part: TP 2 holds one of the 2 KV heads, TP 4 still one (repeated), PP 2 one of the 2 layers.
    tiny = {"model": str(tiny_model), "max_model_len": 1024}
    assert kv_cache_ceiling(EngineConfig(**tiny, tensor_parallel_size=2)) == 512 * 1024 * 256
    assert kv_cache_ceiling(EngineConfig(**tiny, tensor_parallel_size=4)) == 512 * 1024 * 256
    assert kv_cache_ceiling(EngineConfig(**tiny, pipeline_parallel_size=2)) == 512 * 1024 * 256


def test_both_vllm_builds_installed_is_refused(tmp_path, tiny_model):
    import os
    import subprocess
    import sys

    from s2_vllm.tiny import demo_paths

    for name in ("vllm", "vllm_cpu"):  # what each distribution leaves in site-packages
        info = tmp_path / f"{name}-0.26.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 0.26.0\n")
    audio, subs = demo_paths()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "s2_vllm", "run", "--model", str(tiny_model), "--audio", str(audio),
                          "--subtitles", str(subs), "-o", str(tmp_path / "out.jsonl")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 3
    assert out.stderr == ("Error: both vllm (CUDA) and vllm-cpu are installed; keep one: "
                          "scripts/install.sh --cuda or --cpu\n")
