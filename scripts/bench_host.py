"""Host-side throughput: join + render + tokenize, and the resume scan of a large checkpoint.

No GPU and no model weights are needed: the prompts go through the real PromptBuilder with
a tokenizer (the tiny demo tokenizer by default, or --tokenizer DIR for a real one).

    python scripts/bench_host.py --records 100000
    python scripts/bench_host.py --records 1000000 --scan-lines 1000000
"""

from __future__ import annotations

import argparse
import random
import resource
import tempfile
import time
from pathlib import Path

import orjson

from s2_vllm.checkpoint import CheckpointStore, Row
from s2_vllm.config import Config
from s2_vllm.prompts import PromptBuilder, iter_prompts, load_tokenizer
from s2_vllm.records import join

WORDS = ("the speaker's voice is low and trembling with a slow tempo and long pauses suggesting sadness "
         "pitch rises sharply loud fast laughter breathy sigh tense clipped syllables warm relaxed steady "
         "quiet hesitant nervous excited angry shouting soft calm flat monotone shaky cracking").split()


def synthetic(n: int, folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Audio descriptions of 150-300 words and subtitles of 10-40 words, as OV-MER's are."""
    rng = random.Random(seed)
    audio, subtitles = [], []
    for i in range(n):
        fid = f"sample_{i:08d}"
        audio.append({"file_id": fid, "generated_text": " ".join(rng.choices(WORDS, k=rng.randint(150, 300)))})
        subtitles.append({"file_id": fid, "english_transcription": " ".join(rng.choices(WORDS, k=rng.randint(10, 40)))})
    rng.shuffle(audio)
    paths = folder / "audio.json", folder / "subtitles.json"
    for path, data in zip(paths, (audio, subtitles)):
        path.write_bytes(orjson.dumps(data))
    return paths


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_prompts(n: int, tokenizer_path: str, folder: Path) -> None:
    audio, subtitles = synthetic(n, folder)
    config = Config()
    config.engine.model = tokenizer_path
    config.with_source_path("audio", str(audio))
    config.with_source_path("subtitle", str(subtitles))
    builder = PromptBuilder(config, load_tokenizer(config), max_model_len=8192)  # loaded once, not timed
    start = time.perf_counter()
    records, _ = join(config.sources)
    joined = time.perf_counter()
    tokens = sum(len(p.token_ids or ()) for p in iter_prompts(builder, records))
    done = time.perf_counter()
    print(f"records: {n}")
    print(f"join: {joined - start:.2f}s ({n / (joined - start):,.0f} records/s)")
    print(f"render + tokenize: {done - joined:.2f}s ({n / (done - joined):,.0f} records/s, "
          f"{tokens / n:.0f} tokens/prompt)")
    print(f"join + render + tokenize: {done - start:.2f}s ({n / (done - start):,.0f} records/s)")
    print(f"peak RSS: {peak_rss_mb():,.0f} MB")


def bench_scan(lines: int, folder: Path) -> None:
    path = folder / "scan.jsonl"
    fingerprint = {"bench": True}
    with CheckpointStore(path) as store:
        store.open(fingerprint)
    text = "The speaker sounds tense; the subtitle confirms frustration. " * 6
    with open(path, "ab") as f:  # written directly: only the timed reopen matters here
        for i in range(lines):
            f.write(Row(f"sample_{i:08d}", text, status="ok", finish_reason="stop", prompt_tokens=420,
                        completion_tokens=180, prompt_sha="0123456789abcdef").to_line())
    start = time.perf_counter()
    with CheckpointStore(path) as store:
        done = store.open(fingerprint)
    seconds = time.perf_counter() - start
    print(f"resume scan: {lines:,} lines ({path.stat().st_size / 2**20:,.0f} MiB) in {seconds:.2f}s, "
          f"{len(done):,} ids done")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--scan-lines", type=int, default=0, help="also time the resume scan of N lines")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the tiny demo tokenizer)")
    args = parser.parse_args()
    if args.tokenizer is None:
        from s2_vllm.tiny import build_tiny_model

        args.tokenizer = str(build_tiny_model())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.records:
            bench_prompts(args.records, args.tokenizer, folder)
        if args.scan_lines:
            bench_scan(args.scan_lines, folder)


if __name__ == "__main__":
    main()
