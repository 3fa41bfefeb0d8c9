"""describe's video side without an engine: real MP4/MKV files written here, sampled, resized, refused; the feed's
byte budget; the modality seam; video describe through the CLI on the package's fake engine."""

from __future__ import annotations

import functools

import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from helpers import rows
from s2_vllm.audio.synth import write_clip
from s2_vllm.cli import cli
from s2_vllm.clips.feed import ClipFeed, clips_ahead
from s2_vllm.clips.modality import NAMES, ClipError, get
from s2_vllm.config import Config
from s2_vllm.prompts import Prompt
from s2_vllm.video.decode import PATCH, decode, frame_size
from s2_vllm.video.modality import MODALITY as VIDEO
from s2_vllm.video.synth import frames, write_video


def test_frames_are_sampled_at_fps_with_their_metadata(tmp_path):
    path = write_video(tmp_path / "a.mp4", 1, 3.0, size=(64, 48), fps=10)
    clip = decode(str(path), fps=2.0, max_frames=32, max_pixels=200704, max_seconds=60)
    assert clip.frames.dtype == np.uint8 and clip.frames.shape == (6, 56, 56, 3)  # 3 s at 2 fps; sides of 28
    assert clip.metadata == {"fps": 10.0, "duration": 3.0, "total_num_frames": 30, "frames_indices": [0, 5, 10, 15, 20, 25],
                             "video_backend": "pyav", "do_sample_frames": False}
    assert (clip.seconds, clip.cut) == (3.0, False) and clip.nbytes == 6 * 56 * 56 * 3
    assert clip.data[0] is clip.frames and clip.data[1] is clip.metadata  # what multi_modal_data["video"] takes
    other = decode(str(write_video(tmp_path / "b.mp4", 2, 3.0, size=(64, 48))), 2.0, 32, 200704, 60)
    assert not np.array_equal(clip.frames, other.frames)  # another seed: other colours, another path


def test_a_long_clip_is_sampled_more_sparsely_never_over_max_frames(tmp_path):
    path = write_video(tmp_path / "long.mp4", 3, 12.0, size=(32, 32), fps=10)
    clip = decode(str(path), fps=2.0, max_frames=8, max_pixels=200704, max_seconds=60)
    indices = clip.metadata["frames_indices"]
    assert len(indices) == 8 and indices[0] == 0 and indices[-1] >= 100  # spread over the whole 12 s
    assert len(set(np.diff(indices))) <= 2  # evenly, to a frame
    assert decode(str(path), fps=0.5, max_frames=8, max_pixels=200704, max_seconds=60).frames.shape[0] == 6


def test_a_large_frame_is_scaled_down_on_the_worker_keeping_its_aspect(tmp_path):
    path = write_video(tmp_path / "4k.mp4", 5, 1.0, size=(3840, 2160), fps=4)
    clip = decode(str(path), fps=2.0, max_frames=32, max_pixels=200704, max_seconds=60)
    _, height, width, _ = clip.frames.shape
    assert (width, height) == (588, 336) and width * height <= 200704 and width % PATCH == height % PATCH == 0
    assert frame_size(1920, 1080, 200704) == (588, 336) and frame_size(1080, 1920, 50176) == (168, 280)
    assert frame_size(20, 10, 200704) == (PATCH, PATCH)  # never below one patch


def test_a_clip_over_max_seconds_is_cut_and_marked_or_refused(tmp_path):
    path = write_video(tmp_path / "long.mp4", 4, 5.0, size=(32, 32), fps=10)
    cut = decode(str(path), fps=2.0, max_frames=32, max_pixels=200704, max_seconds=2.0)
    assert cut.cut and cut.seconds == 5.0 and cut.metadata["frames_indices"] == [0, 5, 10, 15, 20]
    with pytest.raises(ClipError, match=r'^the clip is 5\.0 s; the model takes at most 2 s \(too_long = "error"; '):
        decode(str(path), fps=2.0, max_frames=32, max_pixels=200704, max_seconds=2.0, cut=False)


def _bad_videos(folder):
    """Every kind of bad video, and the reason its row gives."""
    import av

    folder.mkdir(exist_ok=True)
    good = write_video(folder / "good.mkv", 6, 4.0, size=(64, 48))
    (folder / "cut.mkv").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    damaged = bytearray(write_video(folder / "d.mp4", 7, 4.0, size=(64, 48)).read_bytes())
    start = damaged.find(b"mdat") + 200
    damaged[start:-2000] = bytes((b * 7 + 13) % 256 for b in damaged[start:-2000])
    (folder / "damaged.mp4").write_bytes(bytes(damaged))
    (folder / "d.mp4").unlink()
    with av.open(str(folder / "noframes.avi"), "w") as out:  # a video stream that holds no frame
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        out.start_encoding()
    write_clip(folder / "voice.m4a", 300, 1.0)
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.mp4").write_text("not a video\n")
    return {
        "cut.mkv": "the file is truncated: ",
        "damaged.mp4": "the video track is damaged after 0.0 s (",
        "noframes.avi": "no frame of the video could be decoded",
        "voice.m4a": "no video stream in the file (an audio file)",
        "empty.mp4": "the file is empty (0 bytes)",
        "notes.mp4": "FFmpeg cannot read it (",
        "gone.mp4": f"no such file: {folder / 'gone.mp4'}",
    }


def test_each_bad_video_is_its_own_error_and_the_others_decode(tmp_path):
    reasons = _bad_videos(tmp_path)
    for name, reason in reasons.items():
        with pytest.raises(ClipError) as caught:
            decode(str(tmp_path / name), fps=2.0, max_frames=32, max_pixels=200704, max_seconds=60)
        assert str(caught.value).startswith(reason), (name, str(caught.value))
    feed = ClipFeed("video", VIDEO.decoder(Config()), workers=2, ahead=3, processes=True)
    names = ["good.mkv", *reasons]
    out = list(feed([Prompt(n, "t", [1], clip=str(tmp_path / n)) for n in names]))
    assert [p.file_id for p in out] == names
    assert out[0].error is None and out[0].media["video"][0].shape[0] == 8  # 4 s at 2 fps
    assert all(p.token_ids is None and p.error.startswith(reasons[p.file_id]) for p in out[1:])


def test_the_decode_ahead_budget_counts_the_largest_clip_the_settings_allow():
    config = Config()
    assert VIDEO.clip_bytes(config) == 32 * 200704 * 3  # 19 MB
    assert clips_ahead(64, 1024 * 1_000_000, VIDEO.clip_bytes(config)) == 53
    assert clips_ahead(64, 100 * 1_000_000, VIDEO.clip_bytes(config)) == 5
    assert clips_ahead(64, 1, VIDEO.clip_bytes(config)) == 1  # never none
    assert clips_ahead(64, 1024 * 1_000_000, get("audio").clip_bytes(config)) == 64  # 30 s at 16 kHz: 1.9 MB


def test_the_modalities_differ_only_through_the_seam():
    config = Config()
    audio, video = get("audio"), get("video")
    assert NAMES == ("audio", "video") and (audio.name, video.name) == NAMES
    assert audio.limits() == {"image": 0, "audio": 1, "video": 0} and video.limits() == {"image": 0, "audio": 0, "video": 1}
    assert set(video.suffixes) < set(audio.suffixes)  # audio reads the audio tracks of videos too
    assert video.content_part() == {"type": "video", "video": "clip"}
    assert video.max_tokens(config) == 16 * (256 + 8) + 2  # 16 groups of two frames of 448 x 448, timestamps
    assert audio.fingerprint(config) != video.fingerprint(config)
    with pytest.raises(KeyError, match="no modality 'image'"):
        get("image")


def test_listing_clips_and_help_import_no_engine(tmp_path):
    import subprocess
    import sys

    code = ("import sys\nfrom s2_vllm.clips.listing import find_clips\nfrom s2_vllm.clips.modality import get\n"
            "from s2_vllm.cli import cli\n"
            f"find_clips([{str(tmp_path)!r}], get('video').suffixes, 'video files')\n"
            "print(sorted(m for m in ('vllm', 'torch', 'transformers', 'av', 'numpy') if m in sys.modules))\n")
    write_video(tmp_path / "a.mp4", 1, 0.5)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "[]\n"


FAKE = """\
[run]
engine = "fake"

[fake]
words = 6
"""


def test_video_describe_on_the_fake_engine_writes_one_row_per_clip(tmp_path, tiny_vl, tiny_omni):
    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(4):
        write_video(clips / f"v{i}.mp4", i, 1.0 + i % 2, audio_hz=200 + 50 * i if i % 2 else None)
    reasons = _bad_videos(tmp_path / "bad")  # in their own folder: bad.cut, bad.damaged, …
    write_clip(clips / "speech.wav", 300, 1.0)  # not listed: a folder is searched for video files only
    (tmp_path / "fake.toml").write_text(FAKE)
    out = tmp_path / "visual_descriptions.jsonl"
    args = ["describe", "--modality", "video", str(clips), str(tmp_path / "bad"), "--model", str(tiny_vl),
            "--config", str(tmp_path / "fake.toml"), "--max-frames", "8", "--max-tokens", "32", "--no-progress",
            "--decode-workers", "1", "-o", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output + result.stderr
    got = {r["file_id"]: r for r in rows(out)}
    good = [f"v{i}" for i in range(4)] + ["good"]
    bad = [n.rsplit(".", 1)[0] for n in reasons if n not in ("gone.mp4", "voice.m4a")]  # those two are not listed
    assert sorted(got) == sorted(good + bad)
    assert all(got[i]["status"] in ("ok", "length") for i in good)
    assert len({got[i]["final_description"] for i in good}) == 5  # each clip's frames reach the engine
    assert all(got[n.rsplit(".", 1)[0]]["error"].startswith(r) for n, r in reasons.items() if n.rsplit(".", 1)[0] in bad)
    assert "found 10 clips in 2 paths" in result.output
    assert ("clips are sampled at 2 fps (at most 8 frames of at most 200704 pixels) by 1 process, at most 64 ahead of "
            "the engine; a clip over 60 s: cut to 60 s and marked truncated") in result.output
    manifest = orjson.loads((tmp_path / "visual_descriptions.jsonl.manifest.json").read_bytes())
    settings = Config()
    settings.video.max_frames = 8
    assert manifest["fingerprint"]["video"] == VIDEO.fingerprint(settings)
    # the same checkpoint resumed as audio (with an audio model): another pass, refused
    again = CliRunner().invoke(cli, ["describe", "--modality", "audio", str(clips), "--model", str(tiny_omni),
                                     *args[7:]])
    assert again.exit_code == 2 and "was written with another config (changed: " in again.stderr, again.stderr
    assert "audio, video); run with --overwrite" in again.stderr


def test_a_text_model_and_an_audio_model_are_refused_for_video(tmp_path, tiny_model):
    write_video(tmp_path / "a.mp4", 1, 0.5)
    result = CliRunner().invoke(cli, ["describe", "--modality", "video", str(tmp_path), "--model", str(tiny_model)])
    assert (result.exit_code, result.stderr) == (2, (
        f"Error: {tiny_model} takes no video (Qwen3ForCausalLM); describe --modality video needs a model such as "
        "Qwen/Qwen2.5-VL-7B-Instruct\n"))


def test_generated_frames_move_and_differ_by_seed():
    a, b = frames(1, 1.0), frames(2, 1.0)
    assert a.shape == (10, 48, 64, 3) and not np.array_equal(a[0], a[-1]) and not np.array_equal(a, b)


def test_three_sources_join_into_the_built_in_fusion_prompt(tmp_path, tiny_model):
    ids = ["s1", "s2", "s3"]
    (tmp_path / "a.json").write_bytes(orjson.dumps([{"file_id": i, "generated_text": f"voice {i}"} for i in ids]))
    (tmp_path / "v.json").write_bytes(orjson.dumps([{"file_id": i, "generated_text": f"face {i}"} for i in ids[:2]]))
    (tmp_path / "s.json").write_bytes(orjson.dumps([{"file_id": i, "english_transcription": f"line {i}"} for i in ids]))
    render = functools.partial(CliRunner().invoke, cli)
    three = render(["render", "--audio", str(tmp_path / "a.json"), "--visual", str(tmp_path / "v.json"), "--subtitles",
                    str(tmp_path / "s.json"), "--model", str(tiny_model), "-o", str(tmp_path / "p3.jsonl")])
    assert three.exit_code == 0, three.output + three.stderr
    assert three.output.splitlines()[:2] == [
        "prompt: the built-in fusion of acoustic and visual clues with the subtitle",
        "joined 2 records from subtitle (3 rows), audio (3 rows) and visual (2 rows)"]
    prompt = rows(tmp_path / "p3.jsonl")[0]["prompt"]
    assert "Acoustic Clues:\nvoice s1\n\nVisual Clues:\nface s1\n\nOriginal Subtitle:\nline s1" in prompt
    alone = render(["render", "--visual", str(tmp_path / "v.json"), "--subtitles", str(tmp_path / "s.json"),
                    "--model", str(tiny_model), "-o", str(tmp_path / "p2.jsonl")])
    assert alone.exit_code == 0, alone.output + alone.stderr
    assert alone.output.startswith("prompt: the built-in fusion of visual clues with the subtitle\n")
    prompt = rows(tmp_path / "p2.jsonl")[0]["prompt"]
    assert "Visual Clues:\nface s1\n\nOriginal Subtitle:\nline s1" in prompt and "Acoustic" not in prompt


def test_the_vl_7b_stand_in_has_its_shape_and_a_token_for_every_row(tmp_path):
    """scripts/bench_describe.py --modality video --stand-in vl-7b (the GPU plan): built and checked here."""
    from transformers import AutoConfig

    from s2_vllm.describe import ClipInputs, describe_stage
    from s2_vllm.engines import check_engine_config
    from s2_vllm.prompts import PromptBuilder, load_tokenizer
    from s2_vllm.records import Record
    from s2_vllm.tiny_vl import write_vl_7b_config

    folder = write_vl_7b_config(tmp_path / "vl-7b")
    shape = AutoConfig.from_pretrained(folder)
    text, vision = shape.text_config, shape.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_key_value_heads, text.vocab_size) == (3584, 28, 4, 152064)
    assert (vision.depth, vision.hidden_size, vision.out_hidden_size) == (32, 1280, 3584)
    config = Config()
    config.engine.model, config.engine.load_format, config.engine.max_model_len = str(folder), "dummy", 8192
    config = describe_stage(config, ClipInputs(("c",), modality="video")).configure(config, print)
    tokenizer = load_tokenizer(config)
    assert len(tokenizer) == 152064  # random weights may sample any row: every one decodes
    (prompt,) = PromptBuilder(config, tokenizer, 8192, modality=VIDEO).build([Record("x", {}, clip="x.mp4")])
    assert prompt.token_ids.count(shape.video_token_id) == 1
    assert check_engine_config(config)["load_format"] == "dummy"
