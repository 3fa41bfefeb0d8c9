"""End-to-end throughput: the tutorial loop, transformers, the paper's loop, plain vLLM and s2-vllm.

Every row: the same synthetic records (scripts/bench_host.py) rendered with the default S2 template, the
same stand-in model (Qwen3-8B's shape, random weights) and the same sampling (ignore_eos, --max-tokens,
seed 0). Each mode runs in its own process (scripts/bench_harness.py); OUT and OUT.md are written after
every mode. --help lists the modes. See docs/BENCHMARKS.md.

    python scripts/bench.py --out results.json --records 2000            # GPU node: every default mode
    python scripts/bench.py --device cpu --tiny --records 600 --max-tokens 64 --out cpu.json  # vLLM's CPU build
    python scripts/bench.py --device cpu --tiny --records 600 --max-tokens 64 \
        --modes plain,plain-unseeded,s2 --repeat 2 --out seeds.json          # alternating, fastest trial kept
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]  # s2_vllm from this checkout; bench_host, bench_harness beside us

import bench_harness as harness  # noqa: E402

MODES = harness.Registry()  # the rows, registered below in the order they run
SETUP = harness.Registry()  # run before the rows, not rows themselves
SAMPLING = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "seed": 0}  # s2-vllm's defaults, fixed seed
KV_LOG = re.compile(r"GPU KV cache size: ([\d,]+) tokens")
ATTENTION_LOG = re.compile(r"Using (\S+) attention backend")
BASELINES = ("plain", "plain-unseeded", "tutorial")  # the x_... ratio columns, of output tokens/s
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, epilog=MODES.help(), formatter_class=harness.HelpFormatter)
    harness.add_arguments(p, MODES, out="bench-results.json")
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
    args = p.parse_args()
    args.modes = harness.chosen(p, MODES, args.modes, args.device)
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


@MODES.add("tutorial", "transformers generate, batch 1, one record after another", repeat=False)
def run_tutorial(spec: dict) -> dict:
    """The tutorial: tokenize one record, generate, decode, then the next record."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig

    model, tok, t = load_model(spec), AutoTokenizer.from_pretrained(spec["model"]), spec["max_tokens"]
    n = spec["records"]["tutorial"]
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


@MODES.add("hf", "s2-vllm hf engine (transformers, batched)", repeat=False)
def run_hf(spec: dict) -> dict:
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
    model, output = load_model(spec), harness.fresh(Path(spec["work"]) / "hf.jsonl")
    with mock.patch.object(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: model):
        run(config, RunOptions(output, overwrite=True, limit=spec["records"]["hf"], progress=False), lambda _: None)
    return harness.summary_row(output) | {"torch_peak_mib": torch.cuda.max_memory_allocated() // 2**20 or None}


def run_vllm(spec: dict, mode: str, paper: bool = False, seeded: bool = True) -> dict:
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
    prompts = read_prompts(spec, spec["records"][mode])
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


def run_s2(spec: dict, mode: str) -> dict:
    """`s2-vllm run` on the mode's generated config."""
    toml = Path(spec["work"]) / f"{mode}.toml"
    toml.write_text(s2_toml(spec, mode), "utf-8")
    return harness.s2_vllm(["run", "--engine", "vllm", "--config", str(toml), "--audio", spec["audio"], "--subtitles",
                            spec["subtitles"], "--limit", str(spec["records"][mode]), "--no-progress",
                            "--show-engine-log", *(["--replicas", "2"] if mode == "s2-replicas2" else [])],
                           Path(spec["work"]) / f"{mode}.jsonl", cwd=ROOT)


for _mode in [  # the rows after tutorial and hf, in the order they run
        harness.Mode("paper", partial(run_vllm, mode="paper", paper=True),
                     "vLLM generate over chunks of 8 prompts, saved at the end (OV-MER merge.py)"),
        harness.Mode("plain", partial(run_vllm, mode="plain"),
                     "vLLM: one LLM.generate over all prompts (per-record seeds), no checkpoint"),
        harness.Mode("plain-unseeded", partial(run_vllm, mode="plain-unseeded", seeded=False),
                     "vLLM: one LLM.generate over all prompts, one SamplingParams without a seed (what users run)"),
        *(harness.Mode(name, partial(run_s2, mode=name), what, **options) for name, what, options in [
            ("s2", "s2-vllm run: checkpoint, continuous feeding, prefix caching, per-record seeds "
                   "(sampler = \"auto\")", {}),
            ("s2-vllm-sampler", "s2-vllm run with [sampling] sampler = \"vllm\" (vLLM's own seeded sampling)", {}),
            ("s2-own-sampler", "s2-vllm run with [sampling] sampler = \"s2\" (s2-vllm's SeededSampler, on CUDA too)",
             {}),
            ("s2-noprefix", "s2-vllm run, prefix caching off", {}),
            ("s2-tp2", "s2-vllm run, tensor_parallel_size = 2 (one engine over two GPUs, or two CPU worker "
                       "processes)", {"opt_in": True}),  # two GPUs (or cores)
            ("s2-replicas2", "s2-vllm run --replicas 2 (two engines, each with half the GPUs or cores)",
             {"opt_in": True}),
            ("s2-thinking", "s2-vllm run, thinking on, thinking-length outputs", {"devices": ("cuda",)})])]:
    MODES.register(_mode)


@SETUP.add("micro", "bf16 matmul rate and copy bandwidth, the roofline's two rates", devices=("cuda",))
def run_micro(spec: dict) -> dict:
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


def mode_row(bench: harness.Bench, mode: harness.Mode) -> dict:
    """The mode's row, with the peak GPU memory while it ran and what its log says vLLM ran with."""
    child = bench.child(mode.name)
    kv = [int(x.replace(",", "")) for x in KV_LOG.findall(child.log)]
    return child.row | {"peak_gpu_mib": child.peak_gpu_mib, "kv_cache_tokens": kv[-1] if kv else None,
                        **backends(child.log, bench.results["spec"]["device"], mode.name)}


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
    """Rates and ratios per row (of output tokens/s: subsets of different sizes compare per token), the roofline."""
    rows, micro, spec = results["rows"], results.get("micro") or {}, results["spec"]
    rows = results["rows"] = harness.with_rates(rows, RATES, "output_tok_s", BASELINES)
    if "bf16_tflops" in micro:
        kv = next((r["kv_cache_tokens"] for r in rows.values() if r.get("kv_cache_tokens")), None)
        args = (spec["host"]["mean_prompt_tokens"], spec["max_tokens"], micro, kv, spec["gpu_memory_utilization"])
        rl = results["roofline"] = roofline(spec["shape"], *args)
        results["roofline_qwen3_8b_vocab"] = roofline(spec["shape"] | {"vocab_size": 151936}, *args)
        results["roofline_thinking"] = roofline(spec["shape"], args[0], spec["thinking_tokens"], *args[2:])
        rl["s2_fraction"] = rows.get("s2", {}).get("total_tok_s", 0) / rl["total_tok_s"] or None  # None: no s2 row


RATES = {"requests_per_s": ("records",), "output_tok_s": ("output_tokens",),
         "total_tok_s": ("prompt_tokens", "output_tokens")}
COLUMNS = [harness.Column("what", lambda name, r: MODES[name].what, keep=True), harness.Column("records", "records"),
           harness.Column("wall s", "seconds", ",.1f"), harness.Column("req/s", "requests_per_s", ",.2f"),
           harness.Column("output tok/s", "output_tok_s", ",.1f"), harness.Column("total tok/s", "total_tok_s", ",.1f"),
           harness.Column("peak GPU MiB (nvidia-smi)", "peak_gpu_mib", ",.0f"),
           harness.Column("peak torch MiB", "torch_peak_mib", ",.0f"),
           *(harness.Column(f"× {base}", f"x_{base}", ",.4g") for base in BASELINES),
           harness.Column("attention / runner / sampler", lambda name, r: " / ".join(
               filter(None, (r.get("attention"), r.get("runner"), r.get("sampler")))) or "–")]


def markdown(results: dict) -> str:
    spec, micro, rl = results["spec"], results.get("micro") or {}, results.get("roofline")
    host = spec["host"]
    lines = [harness.table(results["rows"].items(), COLUMNS)]
    if note := harness.trials_note(results["rows"], "generation seconds"):
        lines += ["", note]
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
                  f"{format(rl['s2_fraction'] * 100, ',.1f') if rl['s2_fraction'] else '–'}% of it. With Qwen3-8B's "
                  f"151936-row lm_head the bound is {results['roofline_qwen3_8b_vocab']['total_tok_s']:,.0f} "
                  "total tok/s."]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    if args.worker:  # one mode, in the process the harness started for it
        return harness.worker(MODES | SETUP, *args.worker)
    work = harness.workdir(args)
    spec = prepare(args, work)
    print(f"work folder {work}; host: {spec['host']}", flush=True)
    out = Path(args.out).resolve()
    results = {"out": str(out), "argv": sys.argv[1:], "spec": spec,
               "versions": harness.versions(ROOT, ("torch", "transformers", "tokenizers")), "rows": {}}
    bench = harness.Bench(Path(__file__), work, out, Path(f"{out}.md"), results, render=markdown, finish=finish,
                          timeout=args.mode_timeout, root=ROOT, env=ENV, gpu=args.device == "cuda")
    bench.write_spec(spec)
    if args.device == "cuda":
        results["gpu_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,uuid",
                                             "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
        try:
            results["micro"] = bench.child("micro").row
        except Exception as exc:
            results["micro"] = {"error": f"microbenchmarks failed: {exc}".splitlines()[0]}  # the rest: in the log
        print(f"micro: {results['micro']}", flush=True)
    bench.run([MODES[m] for m in args.modes], args.repeat, row=partial(mode_row, bench))
    print(bench.md.read_text("utf-8"))


if __name__ == "__main__":  # vLLM's engine processes are spawned: they import this file again
    main()
