"""describe --modality video on the real vLLM engine (its CPU build here) with the tiny Qwen2.5-VL, in subprocesses.

One folder of generated MP4s (moving shapes, different per clip, some with an audio track), a 4K clip, one
longer than max_seconds, and every kind of bad video. The module's one run is SIGKILLed mid-way and resumed;
the tests read what it left, then describe the same folder's audio with the tiny Omni thinker and take both
checkpoints with subtitles through a three-source `run`, `extract-labels` and `evaluate`.
"""

from __future__ import annotations

import signal

import orjson
import pytest
from click.testing import CliRunner

from s2_vllm.cli import cli as s2_cli
from s2_vllm.video.synth import write_video
from vllm_helpers import cli, kill_mid_run, rows

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

GOOD = {f"v{i:02d}": {"seconds": 1.0 + i % 3, "audio_hz": 200 + 60 * i if i % 2 else None} for i in range(8)}
CONFIG = """\
[engine]
enforce_eager = true
max_model_len = 2048

[sampling]
temperature = 0
max_tokens = 32

[video]
fps = 2.0
max_frames = 4
max_pixels = 12544
max_seconds = 20.0
"""


def _write_clips(clips):
    for name, spec in GOOD.items():
        write_video(clips / f"{name}.mp4", int(name[1:]), spec["seconds"], audio_hz=spec["audio_hz"])
    write_video(clips / "big.mp4", 40, 1.0, size=(3840, 2160), fps=2)  # 4K: scaled down on the worker
    write_video(clips / "long.mp4", 41, 24.0, size=(32, 32), fps=5)  # over max_seconds: cut and marked
    (clips / "empty.mp4").write_bytes(b"")
    (clips / "notes.mp4").write_text("not a video\n")
    whole = write_video(clips / "whole.mkv", 42, 4.0)
    (clips / "cut.mkv").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()


BAD = {"empty": "the file is empty (0 bytes)", "notes": "FFmpeg cannot read it (", "cut": "the file is truncated: "}


@pytest.fixture(scope="module")
def described(tmp_path_factory, tiny_vl):
    """The video describe run: killed (SIGKILL, the main process alone) after a few rows, resumed to the end."""
    folder = tmp_path_factory.mktemp("describe-video")
    clips = folder / "clips"
    clips.mkdir()
    _write_clips(clips)
    (folder / "describe.toml").write_text(CONFIG)
    out = folder / "visual_descriptions.jsonl"
    args = ["describe", "--modality", "video", str(clips), "--model", str(tiny_vl), "--config",
            str(folder / "describe.toml"), "--no-progress", "--decode-ahead", "2", "--in-flight", "1", "-o", str(out)]
    killed = kill_mid_run(args, out)
    resumed = cli(*args[:-4], "-o", str(out))
    stdout, stderr = (b.decode() for b in resumed.communicate(timeout=900))
    assert resumed.returncode == 0, stderr[-3000:]
    return {"folder": folder, "clips": clips, "out": out, **killed,
            "stdout": stdout}


def test_killed_and_resumed_every_video_is_written_once(described):
    assert described["kill_code"] == -signal.SIGKILL and described["engines"], "the kill did not land mid-run"
    assert not described["left"], f"engine processes still running 10 s after the kill: {sorted(described['left'])}"
    names = [*GOOD, "big", "long", *BAD]
    assert 4 <= described["killed_at"] < len(names)
    assert sorted(r["file_id"] for r in rows(described["out"])) == sorted(names)
    assert f"resuming {described['out']}: {described['killed_at']} of {len(names)} records already done" in \
        described["stdout"]


def test_bad_videos_are_error_rows_and_the_others_finish(described):
    by_id = {r["file_id"]: r for r in rows(described["out"])}
    for name, reason in BAD.items():
        assert by_id[name]["status"] == "error" and by_id[name]["error"].startswith(reason), by_id[name]
    for name in [*GOOD, "big", "long"]:
        assert by_id[name]["status"] in ("ok", "length") and by_id[name]["final_description"], by_id[name]


def test_the_frames_reach_the_model_and_the_long_clip_is_marked(described):
    by_id = {r["file_id"]: r for r in rows(described["out"])}
    assert by_id["long"]["truncated"] == ["video"]
    assert all(r["truncated"] is None for k, r in by_id.items() if k != "long")
    texts = {by_id[name]["final_description"] for name in GOOD}
    assert len(texts) == len(GOOD)  # other shapes and colours: other answers
    # 1 s, 2 s and 3 s at 2 fps are 2, 4 and 6 frames, at most 4 kept: two groups of tokens or one
    assert by_id["v01"]["prompt_tokens"] > by_id["v00"]["prompt_tokens"] == by_id["v03"]["prompt_tokens"]
    assert by_id["v01"]["prompt_tokens"] == by_id["v02"]["prompt_tokens"]
    assert by_id["big"]["prompt_tokens"] < 2048  # the 4K frames were scaled down, not sent whole


def test_audio_and_video_checkpoints_fuse_with_subtitles_label_and_score(described, tiny_omni, tiny_model, tmp_path):
    clips, visual = described["clips"], described["out"]
    audio = tmp_path / "audio_descriptions.jsonl"
    config = tmp_path / "audio.toml"
    config.write_text("[engine]\nenforce_eager = true\nmax_model_len = 1536\n\n[sampling]\ntemperature = 0\n"
                      "max_tokens = 24\n")
    step1 = cli("describe", str(clips), "--model", str(tiny_omni), "--config", str(config), "--no-progress",
                "-o", str(audio))
    stdout, stderr = (b.decode() for b in step1.communicate(timeout=900))
    assert step1.returncode == 0, stderr[-3000:]
    heard = {r["file_id"]: r for r in rows(audio)}
    with_audio = [n for n, spec in GOOD.items() if spec["audio_hz"]]
    assert all(heard[n]["status"] in ("ok", "length") for n in with_audio)
    assert heard["v00"]["error"] == "the video has no audio track"
    subs = tmp_path / "subs.json"
    subs.write_bytes(orjson.dumps([{"file_id": n, "english_transcription": f"Line {n}."} for n in GOOD]))
    runner = CliRunner()
    hf = ["--engine", "hf", "--model", str(tiny_model), "--temperature", "0", "--max-tokens", "16", "--no-progress"]
    fused = tmp_path / "fused.jsonl"
    run = runner.invoke(s2_cli, ["run", "--audio", str(audio), "--visual", str(visual), "--subtitles", str(subs),
                                 *hf, "-o", str(fused)])
    assert run.exit_code == 0, run.output + run.stderr
    assert "prompt: the built-in fusion of acoustic and visual clues with the subtitle" in run.output
    assert f"joined {len(with_audio)} records from subtitle (8 rows), audio (" in run.output
    assert sorted(r["file_id"] for r in rows(fused)) == sorted(with_audio)
    prompts = tmp_path / "p.jsonl"
    assert runner.invoke(s2_cli, ["render", "--audio", str(audio), "--visual", str(visual), "--subtitles", str(subs),
                                  "--model", str(tiny_model), "-o", str(prompts)]).exit_code == 0
    seen = {r["file_id"]: r["final_description"] for r in rows(visual)}
    for prompt in rows(prompts):
        assert f"Visual Clues:\n{seen[prompt['file_id']]}\n" in prompt["prompt"]
        assert f"Acoustic Clues:\n{heard[prompt['file_id']]['final_description']}\n" in prompt["prompt"]
    labels = tmp_path / "labels.jsonl"
    extracted = runner.invoke(s2_cli, ["extract-labels", str(fused), *hf, "-o", str(labels)])
    assert extracted.exit_code == 0, extracted.output + extracted.stderr
    gold = tmp_path / "gold.csv"
    gold.write_text("name,openset\n" + "".join(f"{n},\"['calm']\"\n" for n in with_audio))
    scored = runner.invoke(s2_cli, ["evaluate", str(labels), "--gold", str(gold)])
    assert scored.exit_code == 0, scored.output
    assert len((tmp_path / "labels.jsonl.scores.csv").read_text().splitlines()) >= 2
