"""The host side of `describe`, no engine: how fast clips are decoded, and how much memory decode-ahead holds.

Rows (clips/s, the first few clips of each row warm the pool and are not counted):
  audio   decode + resample to 16 kHz mono: 5 s and 15 s WAV and MP4/AAC, worker threads and processes;
          the model's processor (Whisper features) on 5, 15 and 30 s
  video   decode + sample (2 fps, at most 32 frames) + resize (at most 448 x 448) of 15 s H.264 MP4 at
          720p and 1080p, 25 fps, worker processes; the VL processor (patches) on the decoded frames
  rss     peak RSS of this process and its workers while --rss-clips generated videos (every tenth at 720p,
          the rest 2 s at 160 x 120) go through ClipFeed to a consumer slower than the workers, read at 10 %, 50 % and
          100 % of the clips: flat means decode-ahead holds memory, not clips
--model gives the processor rows (a folder with the model's processor; bench_describe.py passes its own).

    python scripts/bench_clips_host.py --modality video --out video-host.json
    python scripts/bench_clips_host.py --modality video --rss-clips 1000 --out video-rss.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]


def _rate(feed_factory: Callable[[int], object], paths: list[str], workers: int) -> float:
    """Clips/s of `paths` through a ClipFeed, after 2 × workers warm-up clips."""
    from s2_vllm.prompts import Prompt

    feed, warm, start = feed_factory(workers), 2 * workers, time.perf_counter()
    for k, prompt in enumerate(feed(Prompt(f"h{i}", "t", [1], clip=p) for i, p in enumerate(paths))):
        if prompt.error:
            raise SystemExit(f"{prompt.clip}: {prompt.error}")
        if k == warm - 1:
            start = time.perf_counter()
    return round((len(paths) - warm) / (time.perf_counter() - start), 2)


def audio_rows(work: Path, n: int, model: str | None) -> list[dict]:
    from functools import partial

    from s2_vllm.audio.decode import decode
    from s2_vllm.audio.synth import write_clip
    from s2_vllm.clips.feed import ClipFeed

    rows = []
    for seconds in (5, 15):
        for suffix in (".wav", ".mp4"):
            folder = work / f"host-{seconds}s{suffix}"
            folder.mkdir(parents=True, exist_ok=True)
            paths = [str(folder / f"h{i}{suffix}") for i in range(n)]
            for i, path in enumerate(paths):
                if not Path(path).exists():
                    write_clip(path, 200 + i, seconds, 44100, 2)
            decoder = partial(decode, rate=16000, max_seconds=30, cut=True)
            for processes in (False, True):
                for workers in (1, 2, 4):
                    rate = _rate(lambda w: ClipFeed("audio", decoder, workers=w, ahead=2 * w, processes=processes),
                                 paths, workers)
                    rows.append(_row(f"decode {seconds} s {suffix[1:].upper()} (44.1 kHz stereo) -> 16 kHz mono",
                                     f"{workers} {'processes' if processes else 'threads'}", rate))
    if model:
        import numpy as np
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(model)
        text = "<|audio_bos|><|AUDIO|><|audio_eos|>"
        for seconds in (5, 15, 30):
            samples = np.concatenate([decode(str(work / "host-15s.wav" / "h0.wav"), 16000, 30).samples] * 2)
            samples = samples[: seconds * 16000]
            rows.append(_row(f"processor (Whisper features + prompt expansion), {seconds} s clip", "1 thread",
                             _calls(lambda: processor(text=text, audio=[samples], sampling_rate=16000,
                                                      return_tensors="pt"), n)))
    return rows


def video_rows(work: Path, n: int, model: str | None) -> list[dict]:
    from s2_vllm.clips.feed import ClipFeed
    from s2_vllm.config import Config
    from s2_vllm.clips.modality import get

    decoder = get("video").decoder(Config())  # the defaults: 2 fps, 32 frames, 448 x 448, 60 s
    rows, decoded = [], None
    for label, size in (("720p", (1280, 720)), ("1080p", (1920, 1080))):
        paths = _videos(work / f"host-15s-{label}", n, 15.0, size, 25)
        decoded = decoded or decoder(paths[0])
        frames = decoder(paths[0]).data[0]
        for workers in (1, 2):
            rate = _rate(lambda w: ClipFeed("video", decoder, workers=w, ahead=2 * w, processes=True), paths, workers)
            rows.append(_row(f"decode + sample + resize 15 s {label} H.264 MP4 (25 fps) -> {len(frames)} frames "
                             f"of {frames.shape[2]} x {frames.shape[1]}", f"{workers} processes", rate))
    if model and decoded is not None:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(model)
        frames, metadata = decoded.data
        call = (lambda: processor(text="<|vision_start|><|video_pad|><|vision_end|>", videos=[frames],
                                  videos_kwargs={"do_sample_frames": False}, return_tensors="pt"))
        rows.append(_row(f"VL processor (patches + prompt expansion), {len(frames)} frames of "
                         f"{frames.shape[2]} x {frames.shape[1]}", "1 thread", _calls(call, max(4, n // 4))))
    return rows


def rss_rows(work: Path, n: int, consumer_seconds: float) -> list[dict]:
    """Peak RSS (this process + its decode workers) at 10 %, 50 % and 100 % of n videos through ClipFeed."""
    from s2_vllm.clips.feed import ClipFeed, clips_ahead
    from s2_vllm.clips.modality import get
    from s2_vllm.config import Config
    from s2_vllm.prompts import Prompt

    small = _videos(work / "rss-small", n - n // 10, 2.0, (160, 120), 10, distinct=n)
    large = _videos(work / "rss-720p", n // 10, 10.0, (1280, 720), 25, distinct=10)
    paths = [large[i // 10] if i % 10 == 9 else small[i - i // 10] for i in range(n)]
    config = Config()
    modality = get("video")
    rows = []
    for bound, ahead in (("clips (ahead 64)", 64),
                         ("bytes (ahead_mb 256)", clips_ahead(64, 256_000_000, modality.clip_bytes(config)))):
        feed = ClipFeed("video", modality.decoder(config), workers=2, ahead=ahead, processes=True)
        peak, marks, start = 0, {}, time.perf_counter()
        for k, prompt in enumerate(feed(Prompt(f"r{i}", "t", [1], clip=p) for i, p in enumerate(paths)), 1):
            assert prompt.error is None, prompt.error
            del prompt
            time.sleep(consumer_seconds)  # the engine, slower than the decoders: the queue stays full
            peak = max(peak, _tree_rss_mb())
            if k in (n // 10, n // 2, n):
                marks[k] = round(peak)
        rows.append({"what": f"peak RSS over {n} videos, decode-ahead bound by {bound}, {ahead} clips ahead",
                     "workers": "2 processes", "rss_mb": marks, "seconds": round(time.perf_counter() - start, 1)})
        print(rows[-1], flush=True)
    return rows


def _videos(folder: Path, n: int, seconds: float, size: tuple[int, int], fps: int, distinct: int = 4) -> list[str]:
    """n paths to H.264 MP4s, `distinct` different files among them (writing a 1080p one takes seconds)."""
    from s2_vllm.video.synth import write_video

    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"v{i}.mp4" for i in range(min(n, distinct))]
    for i, path in enumerate(files):
        if not path.exists():
            write_video(path, seed=300 + i, seconds=seconds, size=size, fps=fps, codec="h264")
    return [str(files[i % len(files)]) for i in range(n)]


def _tree_rss_mb() -> float:
    """Resident MB of this process and every process below it (/proc: Linux)."""
    from s2_vllm.reaper import descendants

    total = 0
    for pid in (os.getpid(), *descendants([os.getpid()])):
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total / 1024


def _calls(call: Callable[[], object], n: int) -> float:
    call()  # warm
    start = time.perf_counter()
    for _ in range(n):
        call()
    return round(n / (time.perf_counter() - start), 2)


def _row(what: str, workers: str, clips_per_s: float) -> dict:
    row = {"what": what, "workers": workers, "clips_per_s": clips_per_s}
    print(row, flush=True)
    return row


def host_rows(modality: str, work: Path, n: int, model: str | None) -> list[dict]:
    return (audio_rows if modality == "audio" else video_rows)(work, n, model)


def markdown(rows: Iterable[dict]) -> str:
    lines = ["| host side | workers | clips/s | peak RSS MB (at clips) |", "|---|---|---:|---|"]
    for r in rows:
        rss = ", ".join(f"{v} ({k})" for k, v in r.get("rss_mb", {}).items())
        lines.append(f"| {r['what']} | {r['workers']} | {r.get('clips_per_s', '')} | {rss} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modality", choices=["audio", "video"], default="video")
    p.add_argument("--clips", type=int, default=16, help="clips per decoding row")
    p.add_argument("--rss-clips", type=int, default=0, help="videos of the RSS rows (0: no RSS rows)")
    p.add_argument("--consumer-seconds", type=float, default=0.05, help="the RSS rows' consumer: seconds per clip")
    p.add_argument("--model", help="a model folder whose processor the processor rows time")
    p.add_argument("--work", default=".bench-clips-host", help="where the generated clips are kept (reused)")
    p.add_argument("--out", default="bench-clips-host.json")
    args = p.parse_args()
    work = Path(args.work)
    rows = host_rows(args.modality, work, args.clips, args.model) if args.clips else []
    if args.rss_clips:
        rows += rss_rows(work, args.rss_clips, args.consumer_seconds)
    Path(args.out).write_text(json.dumps({"rows": rows, "args": vars(args)}, indent=1))
    Path(args.out).with_suffix(".md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":  # the decode workers are spawned: they import this file again
    main()
