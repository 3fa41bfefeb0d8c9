"""`s2-vllm demo`: the real pipeline on a tiny random model and bundled data, interrupted and resumed."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from s2_vllm.errors import one_line
from s2_vllm.tiny import build_tiny_model, demo_paths

INTERRUPT_AFTER = 15  # rows; then SIGINT, as a scheduler or Ctrl-C would
DEMO_OUTPUTS = ("s2_final_descriptions.jsonl", "s2_final_descriptions.json")


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


def choose_engine() -> tuple[str, str]:
    """The engine the demo runs on, and why: vLLM wherever it can start, else transformers."""
    try:
        from s2_vllm.engines.vllm import _import_vllm
        from s2_vllm.engines.vllm_api import platform_kind

        vllm = _import_vllm()
        kind = platform_kind()
    except Exception as exc:
        return "hf", f"vLLM cannot be imported here ({one_line(exc)})"
    if kind == "cuda":
        return "vllm", f"vLLM {vllm.__version__} sees a CUDA GPU"
    if kind == "cpu":
        return "vllm", f"vLLM {vllm.__version__} is its CPU build; its engine starts in about a minute on 2 cores"
    return "hf", (f"vLLM {vllm.__version__} is the CUDA build and sees no GPU "
                  "(scripts/install.sh --cpu installs its CPU build)")


def run_demo(directory: Path, *, max_tokens: int, echo: Callable[[str], None], engine: str | None = None) -> None:
    echo("s2-vllm demo: a tiny Qwen3-style model with RANDOM weights. Its text is noise;")
    echo("the join, prompts, checkpoint, resume and export around it are the real pipeline.\n")
    started = time.monotonic()
    if engine is None:
        engine, why = choose_engine()
    else:
        why = "--engine says so"
    echo(f"engine: {'vLLM' if engine == 'vllm' else 'transformers (hf)'}, because {why}")
    model = build_tiny_model()
    echo(f"model and tokenizer: {model} (built once, then cached; {time.monotonic() - started:.1f}s)")
    directory.mkdir(parents=True, exist_ok=True)
    audio_src, subtitles_src = demo_paths()
    audio, subtitles = directory / audio_src.name, directory / subtitles_src.name
    shutil.copyfile(audio_src, audio)
    shutil.copyfile(subtitles_src, subtitles)
    checkpoint, exported = (directory / name for name in DEMO_OUTPUTS)
    for old in directory.glob("s2_final_descriptions.*"):  # the demo's own files from an earlier demo
        old.unlink()
    echo(f"inputs: {audio} and {subtitles}\n")

    run = ["run", "--engine", engine, "--model", str(model), "--audio", str(audio), "--subtitles", str(subtitles),
           "-o", str(checkpoint), "--max-tokens", str(max_tokens), "--temperature", "0"]
    # Few requests in flight, so rows arrive one after another and the interrupt lands mid-run.
    run += ["--batch-size", "4"] if engine == "hf" else ["--in-flight", "8"]
    echo("$ s2-vllm " + " ".join(run))
    process = subprocess.Popen([sys.executable, "-m", "s2_vllm", *run])
    while process.poll() is None and _lines(checkpoint) < INTERRUPT_AFTER:
        time.sleep(0.02)
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        echo(f"\n(the demo sent SIGINT after {_lines(checkpoint)} rows, as Ctrl-C or a scheduler would)")
    process.wait()
    echo(f"exit code {process.returncode}\n")

    _cli(echo, "status", str(checkpoint))
    echo("\n# the same command again resumes where it stopped:")
    _cli(echo, *run)
    _cli(echo, "status", str(checkpoint))
    rows = [orjson.loads(line) for line in checkpoint.read_bytes().splitlines()]
    example = next((r for r in rows if r["status"] == "ok"), rows[0])
    echo("\none checkpoint row (noise from random weights):\n" + orjson.dumps(example, option=orjson.OPT_INDENT_2).decode())
    _cli(echo, "export", str(checkpoint), "-o", str(exported))
    echo(f"\n{exported} is the tutorial's list of {{file_id, final_description}}. Done in "
         f"{time.monotonic() - started:.0f}s.")


DEMO_CLIPS = 8  # the first ids of the bundled subtitles get a generated clip each
CLIPS_MARKER = ".s2-vllm-demo"  # a hidden file: the clip search skips it


def run_clips_demo(directory: Path, *, max_tokens: int, echo: Callable[[str], None], engine: str | None = None) -> None:
    """The whole S2 flow from clips: describe their audio (the tiny Omni thinker) and their frames (the tiny
    Qwen2.5-VL) on vLLM → run (step 2) with three sources → export."""
    from s2_vllm.errors import UserError
    from s2_vllm.tiny_omni import build_tiny_omni
    from s2_vllm.tiny_vl import build_tiny_vl
    from s2_vllm.video.synth import write_video

    echo("s2-vllm demo --from-clips: tiny models with RANDOM weights (a Qwen2.5-Omni thinker for the audio, a")
    echo("Qwen2.5-VL for the frames, a Qwen3-style model for step 2). Their text is noise; the clips, decoding,")
    echo("prompts, checkpoints and the hand-over between the steps are the real pipeline.\n")
    started = time.monotonic()
    describe_engine, why = choose_engine()
    if describe_engine != "vllm":
        raise UserError(f"demo --from-clips needs vLLM, the engine that takes audio and video: {why}")
    engine = engine or describe_engine
    echo(f"describe on vLLM, because {why}; step 2 on {'vLLM' if engine == 'vllm' else 'transformers (hf)'}")
    omni, vl, model = build_tiny_omni(), build_tiny_vl(), build_tiny_model()
    echo(f"models: {omni}, {vl} and {model} (built once, then cached; {time.monotonic() - started:.1f}s)")
    directory.mkdir(parents=True, exist_ok=True)
    subtitles = directory / "subtitles.json"
    shutil.copyfile(demo_paths()[1], subtitles)
    clips = directory / "demo-clips"
    if clips.exists() and not (clips / CLIPS_MARKER).exists():
        raise UserError(f"{clips} exists and was not made by the demo; choose another --dir")
    shutil.rmtree(clips, ignore_errors=True)
    clips.mkdir()
    (clips / CLIPS_MARKER).write_text("generated by s2-vllm demo --from-clips; the demo replaces this folder\n")
    ids = [r["file_id"] for r in orjson.loads(subtitles.read_bytes())[:DEMO_CLIPS]]
    for i, file_id in enumerate(ids):  # moving shapes over a tone, of different colours, pitch and length
        write_video(clips / f"{file_id}.mp4", i, 1.5 + (i % 4) * 0.75, audio_hz=180 + 45 * i)
    acoustic, visual = directory / "audio_descriptions.jsonl", directory / "visual_descriptions.jsonl"
    fused = directory / "s2_final_descriptions.jsonl"
    for old in [*directory.glob("audio_descriptions.*"), *directory.glob("visual_descriptions.*"),
                *directory.glob("s2_final_descriptions.*")]:
        old.unlink()
    echo(f"clips: {len(ids)} generated MP4s in {clips} (moving shapes, an AAC tone each)\n")
    common = ["--max-tokens", str(max_tokens), "--temperature", "0"]
    _cli(echo, "describe", str(clips), "--model", str(omni), "-o", str(acoustic), *common)
    _cli(echo, "describe", "--modality", "video", str(clips), "--model", str(vl), "--max-frames", "8",
         "-o", str(visual), *common)
    for checkpoint in (acoustic, visual):
        _cli(echo, "export", str(checkpoint), "-o", str(checkpoint.with_suffix(".json")))
    echo("\n# step 2 reads both describe checkpoints as its clue sources:")
    _cli(echo, "run", "--engine", engine, "--model", str(model), "--audio", str(acoustic), "--visual", str(visual),
         "--subtitles", str(subtitles), "-o", str(fused), *common)
    _cli(echo, "export", str(fused), "-o", str(directory / "s2_final_descriptions.json"))
    echo(f"\n{acoustic.with_suffix('.json')} and {visual.with_suffix('.json')} are step 1's "
         f"[{{file_id, generated_text}}]; {directory / 's2_final_descriptions.json'} the tutorial's "
         f"[{{file_id, final_description}}]. Done in {time.monotonic() - started:.0f}s.")


def _cli(echo: Callable[[str], None], *args: str) -> None:
    echo("$ s2-vllm " + " ".join(args))
    result = subprocess.run([sys.executable, "-m", "s2_vllm", *args])
    if result.returncode not in (0, 130):
        raise SystemExit(result.returncode)
