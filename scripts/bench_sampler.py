"""The sampling step alone: vLLM's own sampler with and without per-request seeds, against s2-vllm's.

Each row times one decode step's sampling on random logits of [batch, vocab] with s2-vllm's default
settings (temperature 0.7, top-p 0.8, top-k 20), on the device vLLM runs on here:

- vllm-unseeded: vLLM's TopKTopPSampler as this platform picks it, no request seeded;
- vllm-seeded: the same with a torch.Generator per request (what `SamplingParams(seed=...)` makes);
- vllm-v2 (CUDA only): the V2 GPU model runner's path, vLLM 0.26's default for dense models there:
  top-k/top-p, then one Triton Gumbel pass keyed on each request's (seed, position), seeded or not;
- s2: s2-vllm's SeededSampler work (choose_tokens, then every other logit set to -inf) plus
  vLLM's greedy argmax, which is what the engine then runs for those requests.

    python scripts/bench_sampler.py --out docs/bench-sampler-cpu.json             # CPU: batches 32..256
    python scripts/bench_sampler.py --device cuda --batches 64,256,512,1024 --out sampler-gpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--batches", default="32,128,256", help="comma-separated batch sizes")
    p.add_argument("--vocabs", default="2565,151936", help="comma-separated vocabulary sizes (tiny model, Qwen3)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per row (after 3 warm-up steps)")
    p.add_argument("--out", default="bench-sampler.json", help="JSON results; the table goes to OUT.md")
    return p.parse_args()


def timed(fn, steps: int, sync) -> float:
    for _ in range(3):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    args = parse_args()
    import torch
    from vllm.v1.sample.ops.topk_topp_sampler import TopKTopPSampler

    from s2_vllm.engines.seeded_sampling import choose_tokens

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    vllm_sampler = TopKTopPSampler()
    rows = []
    for vocab in map(int, args.vocabs.split(",")):
        for batch in map(int, args.batches.split(",")):
            torch.manual_seed(0)
            logits = torch.randn(batch, vocab, device=device)
            k = torch.full((batch,), 20, dtype=torch.int32, device=device)
            p = torch.full((batch,), 0.8, device=device)
            temp = torch.full((batch,), 0.7, device=device)
            generators = {i: torch.Generator(device=device).manual_seed(i) for i in range(batch)}
            seeds = torch.arange(batch, dtype=torch.int64, device=device)
            positions = torch.full((batch,), 7, dtype=torch.int64, device=device)
            min_p = torch.zeros(batch, device=device)

            def vllm_step(gens: dict) -> None:
                scaled = logits.clone().div_(temp[:, None])  # vLLM's Sampler applies temperature first
                vllm_sampler.forward(scaled, gens, k, p)

            def s2_step() -> None:
                out = logits.clone()
                tokens = choose_tokens(out, seeds, positions, temp, k.long(), p, min_p, k_max=20, use_min_p=False)
                out.fill_(float("-inf"))
                out.scatter_(1, tokens[:, None], 0.0)
                out.argmax(dim=-1)

            row = {"vocab": vocab, "batch": batch,
                   "vllm_unseeded_ms": timed(lambda: vllm_step({}), args.steps, sync),
                   "vllm_seeded_ms": timed(lambda: vllm_step(generators), args.steps, sync),
                   "s2_ms": timed(s2_step, args.steps, sync)}
            if args.device == "cuda":
                from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p
                from vllm.v1.worker.gpu.sample.gumbel import gumbel_sample

                rows_idx = torch.arange(batch, dtype=torch.int32, device=device)

                def v2_step() -> None:
                    scaled = apply_top_k_top_p(logits.clone().div_(temp[:, None]), k, p)
                    gumbel_sample(scaled, rows_idx, temp, seeds, positions, apply_temperature=False)

                try:  # an internal of vLLM's: if it moved, the other columns still stand
                    row["vllm_v2_ms"] = timed(v2_step, args.steps, sync)
                except Exception as exc:
                    row["vllm_v2_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            print(row, flush=True)
            rows.append(row)
    results = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
               "threads": torch.get_num_threads(), "vllm_forward": vllm_sampler.forward.__name__, "rows": rows}
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n", "utf-8")
    lines = [f"Sampling one step on {results['device']} ({results['threads']} threads; vLLM's "
             f"`TopKTopPSampler.{results['vllm_forward']}`), ms per step:", "",
             "| vocab | batch | vLLM V1 unseeded | vLLM V1 seeded | vLLM V2 (seeded) | s2 | V1 seeded ÷ unseeded "
             "| s2 ÷ V1 unseeded |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        v2 = f"{r['vllm_v2_ms']:.2f}" if "vllm_v2_ms" in r else "–"
        lines.append(f"| {r['vocab']:,} | {r['batch']} | {r['vllm_unseeded_ms']:.2f} | {r['vllm_seeded_ms']:.2f} | "
                     f"{v2} | {r['s2_ms']:.2f} | {r['vllm_seeded_ms'] / r['vllm_unseeded_ms']:.2f} | "
                     f"{r['s2_ms'] / r['vllm_unseeded_ms']:.2f} |")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n", "utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
