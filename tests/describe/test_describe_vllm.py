"""describe on the real vLLM engine (its CPU build here) with the tiny Qwen2.5-Omni thinker, in subprocesses.

One folder of generated clips (WAV, FLAC, MP4 with an audio track, M4A), with every kind of bad clip
and one longer than the model takes. The module's one run is SIGKILLed mid-way and resumed; the tests
read what it left: each clip once, an error row per bad clip, the long clip cut and marked, and a
checkpoint that goes through step 2 (`run`), `extract-labels` and `evaluate`.
"""

from __future__ import annotations

import signal

import orjson
import pytest
from click.testing import CliRunner

from s2_vllm.audio.synth import write_clip, write_silent_video
from s2_vllm.cli import cli as s2_cli
from s2_vllm.stages import read_checkpoint_source
from vllm_helpers import cli, kill_mid_run, rows

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

GOOD = {  # name: (pitch in Hz, seconds, sample rate, channels)
    **{f"c{i:02d}.wav": (180 + 40 * i, 1.0 + i % 4, 16000, 1) for i in range(8)},
    "f1.flac": (330, 2.0, 44100, 2), "f2.flac": (990, 2.0, 22050, 1),  # one length, two pitches
    "v1.mp4": (260, 3.0, 44100, 2), "v2.m4a": (520, 1.5, 16000, 1),
    "long.wav": (300, 33.0, 16000, 1),
}
BAD = {
    "empty.wav": "the file is empty (0 bytes)",
    "notes.mp3": "FFmpeg cannot read it (",
    "cut.wav": "the file is truncated: its header says",
    "zero.wav": "the clip has no audio samples (0 s)",
    "silent.mp4": "the video has no audio track",
}
CONFIG = """\
[engine]
enforce_eager = true
max_model_len = 1536

[sampling]
temperature = 0
max_tokens = 48
"""


@pytest.fixture(scope="module")
def described(tmp_path_factory, tiny_omni):
    """The describe run: killed (SIGKILL, the main process alone) after a few rows, then resumed to the end."""
    folder = tmp_path_factory.mktemp("describe")
    clips = folder / "clips"
    (clips / "more").mkdir(parents=True)
    for name, (hz, seconds, rate, channels) in GOOD.items():
        write_clip(clips / ("more" if name.startswith("v") else "") / name, hz, seconds, rate, channels)
    (clips / "empty.wav").write_bytes(b"")
    (clips / "notes.mp3").write_text("not audio\n")
    (clips / "cut.wav").write_bytes((clips / "c07.wav").read_bytes()[:20000])
    write_clip(clips / "zero.wav", 300, 0.0)
    write_silent_video(clips / "more" / "silent.mp4")
    (folder / "describe.toml").write_text(CONFIG)
    out = folder / "audio_descriptions.jsonl"
    # One clip in flight at a time: rows arrive at a steady pace, so the kill lands mid-run. Two clips decoded
    # ahead: all but the first two go through the pool of worker processes and the runner's wait for them.
    args = ["describe", str(clips), "--model", str(tiny_omni), "--config", str(folder / "describe.toml"),
            "--no-progress", "--decode-ahead", "2", "--in-flight", "1", "-o", str(out)]
    killed = kill_mid_run(args, out)
    # The same command, every clip in flight, on two engine replicas: the samples travel to them with each request.
    resumed = cli(*args[:-4], "--replicas", "2", "-o", str(out))
    stdout, stderr = (b.decode() for b in resumed.communicate(timeout=900))
    assert resumed.returncode == 0, stderr[-3000:]
    return {"folder": folder, "out": out, **killed,
            "stdout": stdout, "stderr": stderr}


def test_killed_and_resumed_every_clip_is_written_once(described):
    assert described["kill_code"] == -signal.SIGKILL and described["engines"], "the kill did not land mid-run"
    assert not described["left"], f"engine processes still running 10 s after the kill: {sorted(described['left'])}"
    total = len(GOOD) + len(BAD)
    assert 4 <= described["killed_at"] < total
    got = rows(described["out"])
    assert sorted(r["file_id"] for r in got) == sorted(n.rsplit(".", 1)[0] for n in (*GOOD, *BAD))
    assert f"resuming {described['out']}: {described['killed_at']} of {total} records already done" in \
        described["stdout"]
    assert "found 18 clips in " in described["stdout"]
    summary = orjson.loads((described["folder"] / "audio_descriptions.jsonl.summary.json").read_bytes())
    done_before = {r["file_id"] for r in rows(described["out"])[: described["killed_at"]]}
    good_left = [n for n in GOOD if n.rsplit(".", 1)[0] not in done_before]
    assert [r["alive"] for r in summary["replicas"]] == [True, True]
    assert sum(r["records"] for r in summary["replicas"]) == len(good_left)  # bad clips never reach an engine
    assert all(r["records"] > 0 for r in summary["replicas"]), summary["replicas"]


def test_bad_clips_are_error_rows_and_the_others_finish(described):
    by_id = {r["file_id"]: r for r in rows(described["out"])}
    for name, reason in BAD.items():
        row = by_id[name.rsplit(".", 1)[0]]
        assert (row["status"], row["final_description"]) == ("error", None) and row["error"].startswith(reason), row
    for name in GOOD:
        row = by_id[name.rsplit(".", 1)[0]]
        assert row["status"] in ("ok", "length") and row["final_description"] is not None, row
    status = CliRunner().invoke(s2_cli, ["status", str(described["out"])])
    assert status.exit_code == 0 and f"error {len(BAD)}" in status.output, status.output


def test_the_long_clip_is_cut_to_30_s_and_marked(described):
    by_id = {r["file_id"]: r for r in rows(described["out"])}
    assert by_id["long"]["truncated"] == ["audio"]
    assert all(r["truncated"] is None for k, r in by_id.items() if k != "long")
    # 30 s at 25 audio tokens a second, beside the prompt's text: the clip was cut, not refused
    text_tokens = by_id["c00"]["prompt_tokens"] - 25
    assert by_id["long"]["prompt_tokens"] - text_tokens == pytest.approx(750, abs=3)
    assert "a clip over 30 s: cut to 30 s and marked truncated" in described["stdout"]


def test_the_audio_reaches_the_model(described):
    by_id = {r["file_id"]: r for r in rows(described["out"])}
    # vLLM widens the one placeholder to the clip's length: 25 tokens a second
    assert by_id["c01"]["prompt_tokens"] - by_id["c00"]["prompt_tokens"] == pytest.approx(25, abs=1)
    assert by_id["c03"]["prompt_tokens"] - by_id["c00"]["prompt_tokens"] == pytest.approx(75, abs=1)
    # same length, other pitch (and rate): another answer
    assert by_id["f1"]["prompt_tokens"] == by_id["f2"]["prompt_tokens"]
    assert by_id["f1"]["final_description"] != by_id["f2"]["final_description"]


def test_the_checkpoint_goes_through_step_two_labels_and_scores(described, tiny_model, tmp_path):
    out = described["out"]
    ok = [r["file_id"] for r in rows(out) if r["status"] == "ok"]
    assert len(ok) >= 3
    subs = tmp_path / "subs.json"
    subs.write_bytes(orjson.dumps([{"file_id": i, "english_transcription": f"Line {i}."} for i in [*ok, "x"]]))
    runner = CliRunner()
    exported = runner.invoke(s2_cli, ["export", str(out), "-o", str(tmp_path / "audio.json")])
    assert exported.exit_code == 0 and set(orjson.loads((tmp_path / "audio.json").read_bytes())[0]) == \
        {"file_id", "generated_text"}
    hf = ["--engine", "hf", "--model", str(tiny_model), "--temperature", "0", "--max-tokens", "24", "--no-progress"]
    fused = tmp_path / "fused.jsonl"
    run = runner.invoke(s2_cli, ["run", "--audio", str(out), "--subtitles", str(subs), *hf, "-o", str(fused)])
    assert run.exit_code == 0, run.output + run.stderr
    usable = [r["file_id"] for r in rows(out) if r["status"] in ("ok", "length")]
    held = read_checkpoint_source([out]).held()  # e.g. "13 ok; left out: 5 error"
    assert (f"joined {len(ok)} records from subtitle ({len(ok) + 1} rows) and audio ({len(usable)} rows of a "
            f"checkpoint: {held})") in run.output
    assert sorted(r["file_id"] for r in rows(fused)) == sorted(ok)
    texts = {r["file_id"]: r["final_description"] for r in rows(out)}
    prompts = runner.invoke(s2_cli, ["render", "--audio", str(out), "--subtitles", str(subs), "--model",
                                     str(tiny_model), "-o", str(tmp_path / "p.jsonl")])
    assert prompts.exit_code == 0
    for line in (tmp_path / "p.jsonl").read_bytes().splitlines():
        prompt = orjson.loads(line)
        assert texts[prompt["file_id"]] in prompt["prompt"] and f"Line {prompt['file_id']}." in prompt["prompt"]
    labels = tmp_path / "labels.jsonl"
    extracted = runner.invoke(s2_cli, ["extract-labels", str(fused), *hf, "-o", str(labels)])
    assert extracted.exit_code == 0, extracted.output + extracted.stderr
    gold = tmp_path / "gold.csv"
    gold.write_text("name,openset\n" + "".join(f"{i},\"['calm']\"\n" for i in ok))
    scored = runner.invoke(s2_cli, ["evaluate", str(labels), "--gold", str(gold)])
    assert scored.exit_code == 0, scored.output
    assert f"per-sample scores: {labels}.scores.csv" in scored.output
    assert len((tmp_path / "labels.jsonl.scores.csv").read_text().splitlines()) >= 2
