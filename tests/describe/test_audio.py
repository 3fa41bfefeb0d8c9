"""describe's audio side without an engine: decoding real files, finding clips, manifests, the bounded feed."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from s2_vllm.audio.decode import ClipError, decode
from s2_vllm.audio.modality import MODALITY as AUDIO
from s2_vllm.audio.synth import write_clip, write_silent_video
from s2_vllm.clips.feed import ClipFeed
from s2_vllm.clips.listing import Clip, check_unique, find_clips, read_manifest
from s2_vllm.errors import InputError
from s2_vllm.prompts import Prompt


def audio_feed(rate=16000, max_seconds=30, *, cut=True, cls=ClipFeed, **kwargs):
    """The feed describe builds for audio: `decode` at this rate and limit on the pool."""
    return cls("audio", functools.partial(decode, rate=rate, max_seconds=max_seconds, cut=cut), **kwargs)


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize("name, rate, channels", [
    ("a.wav", 16000, 1), ("b.flac", 44100, 2), ("c.mp4", 44100, 2), ("d.m4a", 22050, 1), ("e.wav", 48000, 2),
])
def test_a_clip_becomes_mono_float32_at_16_khz_with_its_pitch(tmp_path, name, rate, channels):
    path = write_clip(tmp_path / name, 440, 3.0, rate, channels)
    clip = decode(str(path), 16000, 30)
    assert clip.samples.dtype == np.float32 and clip.samples.ndim == 1 and clip.rate == 16000
    assert abs(len(clip.samples) - 48000) < 1200  # AAC pads a frame or so
    assert clip.seconds == pytest.approx(3.0, abs=0.05) and not clip.cut
    assert peak_hz(clip.samples, 16000) == pytest.approx(440, abs=3)  # resampled, not sped up or slowed down
    assert 0.2 < float(np.abs(clip.samples).max()) < 0.5


def test_a_long_clip_is_cut_and_marked_or_refused(tmp_path):
    for name in ("long.wav", "long.mp4"):
        path = str(write_clip(tmp_path / name, 300, 35.0))
        clip = decode(path, 16000, 30)
        assert clip.cut and len(clip.samples) == 30 * 16000 and clip.seconds == pytest.approx(35.0, abs=0.1)
        with pytest.raises(ClipError) as refused:
            decode(path, 16000, 30, cut=False)
        assert str(refused.value) == ('the clip is 35.0 s; the model takes at most 30 s (too_long = "error"; '
                                      '"truncate" cuts it)')
    assert not decode(str(write_clip(tmp_path / "short.wav", 300, 5.0)), 16000, 30, cut=False).cut


def _bad_clips(folder: Path) -> dict[str, str | tuple[str, ...]]:
    """Each kind of bad clip, and the start of the reason its row gives."""
    write_clip(folder / "whole.wav", 220, 2.0)
    write_clip(folder / "whole.flac", 220, 4.0)
    write_clip(folder / "whole.mp4", 220, 2.0)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "text.mp3").write_text("this is not audio\n")
    (folder / "noise.wav").write_bytes(np.random.default_rng(0).bytes(4000))
    (folder / "cut.wav").write_bytes((folder / "whole.wav").read_bytes()[:30000])
    (folder / "cut.flac").write_bytes((folder / "whole.flac").read_bytes()[:20000])
    (folder / "cut.mp4").write_bytes((folder / "whole.mp4").read_bytes()[:5000])
    write_clip(folder / "zero.wav", 220, 0.0)
    write_clip(folder / "tiny.wav", 220, 0.01)  # vLLM refuses it with the samples' repr in its message
    write_silent_video(folder / "silent.mp4")
    return {
        "missing.wav": "no such file: ",
        "empty.wav": "the file is empty (0 bytes)",
        "text.mp3": "FFmpeg cannot read it (",
        "noise.wav": ("FFmpeg cannot read it (", "no audio stream in the file: not an audio file"),  # by the bytes
        "cut.wav": "the file is truncated: its header says 64044 bytes, it has 30000",
        "cut.flac": ("the file is truncated: ", "the audio track is damaged after "),
        "cut.mp4": "FFmpeg cannot read it (",
        "zero.wav": "the clip has no audio samples (0 s)",
        "tiny.wav": "the clip is 10.0 ms; too short for the model (at least 25 ms)",
        "silent.mp4": "the video has no audio track",
    }


def test_every_kind_of_bad_clip_has_its_reason(tmp_path):
    for name, reason in _bad_clips(tmp_path).items():
        with pytest.raises(ClipError) as caught:
            decode(str(tmp_path / name), 16000, 30)
        assert str(caught.value).startswith(reason), name
    with pytest.raises(ClipError, match="^not a file: "):
        decode(str(tmp_path), 16000, 30)


def test_the_decoders_missing_is_one_line():
    code = ("import sys; sys.modules['av'] = None\n"
            "from s2_vllm.audio.decode import check_decoders\n"
            "try:\n    check_decoders()\nexcept Exception as e:\n    print(type(e).__name__, e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out == ("UserError describe decodes audio with soundfile and PyAV, which are not installed: "
                   "bash scripts/install.sh (or pip install soundfile av)\n")


def test_folders_are_searched_for_audio_and_video_files(tmp_path):
    (tmp_path / "clips" / "sub" / ".hidden").mkdir(parents=True)
    for name in ("b.wav", "a.MP4", "sub/c.flac", "sub/.hidden/x.wav", ".y.wav", "notes.txt", "sub/d.json"):
        (tmp_path / "clips" / name).write_bytes(b"x")
    clips = find_clips([tmp_path / "clips", tmp_path / "extra.ogg"], AUDIO.suffixes, AUDIO.files)
    base = str(tmp_path / "clips")
    assert clips == [Clip("a", f"{base}/a.MP4"), Clip("b", f"{base}/b.wav"), Clip("c", f"{base}/sub/c.flac"),
                     Clip("extra", str(tmp_path / "extra.ogg"))]  # a missing file is its clip's error row
    with pytest.raises(InputError, match=r"^no audio or video files in .*empty \(looked for wav, flac, "):
        (tmp_path / "empty").mkdir()
        find_clips([tmp_path / "empty"], AUDIO.suffixes, AUDIO.files)
    with pytest.raises(InputError, match=r"nowhere does not exist$"):
        find_clips([tmp_path / "nowhere"], AUDIO.suffixes)


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl"])
def test_a_manifest_lists_ids_and_paths_relative_to_itself(tmp_path, fmt):
    (tmp_path / "lists").mkdir()
    entries = [("s1", "../clips/one.wav"), ("s2", "/data/two.mp4"), (3, "three.flac")]
    path = tmp_path / "lists" / f"m.{fmt}"
    if fmt == "csv":
        path.write_text("name,file\n" + "".join(f"{i},{p}\n" for i, p in entries))
    else:
        import json

        items = [{"name": i, "file": p} for i, p in entries]
        path.write_text(json.dumps(items) if fmt == "json" else "\n".join(json.dumps(x) for x in items))
    clips = read_manifest(path, "name", "file")
    assert clips == [Clip("s1", str(tmp_path / "lists" / "../clips/one.wav")), Clip("s2", "/data/two.mp4"),
                     Clip("3", str(tmp_path / "lists" / "three.flac"))]
    with pytest.raises(InputError) as caught:
        read_manifest(path)
    assert str(caught.value) == (f"{path}: entry 1 has no 'file_id' (have: name, file); --id-key and --path-key "
                                 "name the columns")


def test_one_clip_per_id():
    clips = [Clip("a", "x/a.wav"), Clip("b", "x/b.wav"), Clip("a", "y/a.mp4")]
    with pytest.raises(InputError) as caught:
        check_unique(clips, "error")
    assert str(caught.value) == ("1 clip id given twice: 'a' is x/a.wav and y/a.mp4; rename them or use "
                                 "--on-duplicate first|last")
    assert check_unique(clips, "first") == clips[:2]
    assert check_unique(clips, "last") == [Clip("a", "y/a.mp4"), Clip("b", "x/b.wav")]  # as join orders ids


class CountingFeed(ClipFeed):
    """The real feed on threads, counting the decodes running at once (each made slow enough to overlap)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, processes=False, **kwargs)
        self.lock, self.now, self.most, self.started = threading.Lock(), 0, 0, 0

    def _decode(self, pool, path):
        return pool.submit(self._counted, path)

    def _counted(self, path):
        with self.lock:
            self.now += 1
            self.started += 1
            self.most = max(self.most, self.now)
        time.sleep(0.02)
        try:
            return self.decoder(path)
        finally:
            with self.lock:
                self.now -= 1


def test_the_feed_keeps_order_attaches_samples_and_turns_bad_clips_into_errors(tmp_path):
    reasons = _bad_clips(tmp_path)
    names = ["whole.wav", *reasons, "whole.mp4"]
    prompts = [Prompt(n, "text", [1, 2, 3], clip=str(tmp_path / n)) for n in names]
    prompts.insert(3, Prompt("skipped", None, None, skip_reason="empty text in subtitle", clip=str(tmp_path / "x")))
    feed = audio_feed(cls=CountingFeed, workers=3, ahead=5)
    out = list(feed(prompts))
    assert [p.file_id for p in out] == [p.file_id for p in prompts]
    assert feed.most <= 3 and feed.started == len(names)  # never more than the workers; the skipped one not at all
    by_id = {p.file_id: p for p in out}
    for name, reason in reasons.items():
        assert by_id[name].token_ids is None and by_id[name].error.startswith(reason), name
    for name in ("whole.wav", "whole.mp4"):
        samples, rate = by_id[name].media["audio"]
        assert rate == 16000 and len(samples) > 30000 and by_id[name].token_ids == [1, 2, 3]
    assert by_id["skipped"].skip_reason == "empty text in subtitle" and by_id["skipped"].media is None


def test_the_feed_runs_at_most_ahead_clips_before_the_consumer(tmp_path):
    for i in range(20):
        write_clip(tmp_path / f"c{i}.wav", 200 + 10 * i, 0.5)
    prompts = [Prompt(f"c{i}", "t", [1], clip=str(tmp_path / f"c{i}.wav")) for i in range(20)]
    feed = audio_feed(cls=CountingFeed, workers=2, ahead=6)
    taken = feed(prompts)
    first = next(taken)
    time.sleep(0.3)  # the pool would decode everything by now if it were not bounded
    assert first.file_id == "c0" and feed.started <= 7
    taken.close()  # a consumer that stops early (Ctrl-C) leaves no decoding behind
    assert feed.started <= 8


def test_worker_processes_give_what_threads_give(tmp_path):
    reasons = _bad_clips(tmp_path)
    prompts = [Prompt(n, "t", [1], clip=str(tmp_path / n)) for n in ["whole.mp4", *reasons, "whole.flac"]]
    by_process = list(audio_feed(cut=True, workers=2, processes=True)(prompts))
    by_thread = list(audio_feed(cut=True, workers=2, processes=False)(prompts))
    assert [(p.file_id, p.error, p.truncated) for p in by_process] == [(p.file_id, p.error, p.truncated) for p in by_thread]
    for a, b in zip(by_process, by_thread):
        assert (a.media is None) == (b.media is None)
        assert a.media is None or (a.media["audio"][1] == b.media["audio"][1]
                                   and np.array_equal(a.media["audio"][0], b.media["audio"][0]))
    assert sum(p.media is not None for p in by_process) == 2


def test_a_long_clip_under_the_error_policy_is_an_error_row(tmp_path):
    write_clip(tmp_path / "long.flac", 300, 31.0)
    (prompt,) = audio_feed(cut=False)([Prompt("long", "t", [1], clip=str(tmp_path / "long.flac"))])
    assert prompt.token_ids is None and prompt.error.startswith("the clip is 31.0 s; the model takes at most 30 s")
    (cut,) = audio_feed(cut=True)([Prompt("long", "t", [1], clip=str(tmp_path / "long.flac"))])
    assert cut.truncated == ("audio",) and len(cut.media["audio"][0]) == 480000


def test_describe_refuses_what_it_cannot_use(tmp_path, tiny_model, tiny_omni):
    from click.testing import CliRunner

    from s2_vllm.cli import cli

    write_clip(tmp_path / "a.wav", 300, 1.0)
    runner = CliRunner()
    text_model = runner.invoke(cli, ["describe", str(tmp_path), "--model", str(tiny_model)])
    assert (text_model.exit_code, text_model.stderr) == (2, (
        f"Error: {tiny_model} takes no audio (Qwen3ForCausalLM); describe --modality audio needs a model such as "
        "Qwen/Qwen2.5-Omni-7B\n"))
    nothing = runner.invoke(cli, ["describe", "--model", str(tiny_omni)])
    assert (nothing.exit_code, nothing.stderr) == (2, "Error: no clips given: name files or folders, or --manifest "
                                                      "FILE\n")
    (tmp_path / "hf.toml").write_text('[run]\nengine = "hf"\n')
    hf = runner.invoke(cli, ["describe", str(tmp_path / "a.wav"), "--config", str(tmp_path / "hf.toml")])
    assert (hf.exit_code, hf.stderr) == (2, "Error: describe runs on vLLM only: the hf engine takes text only "
                                            "(the config says [run] engine = \"hf\")\n")
    clip = str(tmp_path / "a.wav")
    inside = runner.invoke(cli, ["describe", clip, "--model", str(tiny_omni), "-o", clip])
    assert (inside.exit_code, inside.stderr) == (2, f"Error: the output {clip} is one of the inputs; choose another -o\n")



def test_the_first_clips_decode_before_the_engine_and_the_stream_says_when_the_next_is_ready(tmp_path):
    for i in range(6):
        write_clip(tmp_path / f"c{i}.wav", 200 + 50 * i, 0.5)
    prompts = [Prompt(f"c{i}", "t", [1], clip=str(tmp_path / f"c{i}.wav")) for i in range(6)]
    prompts.insert(2, Prompt("gone", "t", [1], clip=str(tmp_path / "gone.wav")))
    feed = audio_feed(cut=True, workers=1, ahead=3, processes=False)
    head = feed.prepare(prompts)
    assert [p.media is not None for p in head] == [True, True, False, False, False, False, False]
    assert head[2].error == f"no such file: {tmp_path / 'gone.wav'}"  # the third clip: tried here too, and failed
    with feed.stream(head) as stream:
        assert stream.ready()  # decoded already: no pool needed for it
        first = next(stream)
        assert first.media is not None and stream.pool is None
        got = [first]
        while True:
            while not stream.ready():
                time.sleep(0.001)
            try:
                got.append(next(stream))
            except StopIteration:
                break
    assert [p.file_id for p in got] == [p.file_id for p in prompts]
    assert sum(p.media is not None for p in got) == 6 and stream.pool is not None


def _decode_or_die(path, rate, max_seconds, cut):
    """In a worker process: the crash.wav clip kills it, as a crash inside FFmpeg would."""
    if path.endswith("crash.wav"):
        os._exit(3)
    return decode(path, rate, max_seconds, cut=cut)


class CrashingFeed(ClipFeed):
    def _decode(self, pool, path):
        return pool.submit(_decode_or_die, path, 16000, 30, True)


@pytest.mark.parametrize("ahead", [1, 2, 4])  # 1 and 2: clips are submitted to the pool after it broke
def test_a_worker_that_dies_fails_its_clip_alone(tmp_path, ahead):
    for name in ("a", "b", "c", "d", "crash"):
        write_clip(tmp_path / f"{name}.wav", 300, 0.5)
    prompts = [Prompt(n, "t", [1], clip=str(tmp_path / f"{n}.wav")) for n in ("a", "crash", "b", "c", "d")]
    with audio_feed(cls=CrashingFeed, workers=2, ahead=ahead, processes=True).stream(prompts) as stream:
        got = list(stream)
    assert [p.file_id for p in got] == ["a", "crash", "b", "c", "d"]
    assert [p.error for p in got] == [None, "the decoder's process died on this clip (a crash in FFmpeg or "
                                            "libsndfile, or out of memory)", None, None, None]
    assert all(p.media is not None for p in got if p.file_id != "crash")


def test_a_wav_written_to_a_pipe_is_not_truncated(tmp_path):
    path = write_clip(tmp_path / "piped.wav", 440, 1.0)
    data = bytearray(path.read_bytes())
    data[4:8] = (0xFFFFFFFF).to_bytes(4, "little")  # what a streaming writer puts there: size unknown
    path.write_bytes(bytes(data))
    assert len(decode(str(path), 16000, 30).samples) == 16000
