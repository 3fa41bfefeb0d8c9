"""One clip file → mono float32 samples at the model's rate, or the reason it cannot be had.

soundfile (libsndfile) reads WAV, FLAC and OGG fast; PyAV (FFmpeg) reads the rest, audio tracks of
videos included, and does all resampling (libswresample). soundfile reads a file in one call without
the GIL; PyAV decodes frame by frame and holds it between frames, which is why the feed's workers are
processes by default (docs/BENCHMARKS.md). A problem with one file is a `ClipError` with a short reason that
becomes that record's error row; a missing library is a `UserError` for the whole run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from s2_vllm.clips.modality import ClipError, check_file, too_long
from s2_vllm.clips.pyav import guessed_length, reason, stream_seconds
from s2_vllm.errors import UserError, one_line

__all__ = ["ClipError", "Decoded", "check_decoders", "decode"]

SOUNDFILE_SUFFIXES = (".wav", ".flac", ".ogg", ".oga")
DECODER_VERSION = 1  # in a describe checkpoint's fingerprint: a change that alters samples means a new checkpoint
_MISSING = ("describe decodes audio with soundfile and PyAV, which are not installed: "
            "bash scripts/install.sh (or pip install soundfile av)")


# Whisper-style feature extractors (Qwen2-Audio, Qwen2.5-Omni) need one 25 ms window (400 samples at 16 kHz);
# vLLM refuses shorter clips, measured on its CPU build with the tiny Omni thinker (320 refused, 441 taken).
MIN_SECONDS = 0.025


@dataclass(frozen=True)
class Decoded:
    samples: Any  # numpy float32, mono, at `rate`
    rate: int
    seconds: float  # the clip's whole length (before any cut)
    cut: bool  # cut to max_seconds

    @property
    def data(self) -> tuple[Any, int]:
        """What vLLM's `multi_modal_data["audio"]` takes: (samples, sample rate)."""
        return self.samples, self.rate

    @property
    def nbytes(self) -> int:
        return int(self.samples.nbytes)


def check_decoders() -> None:
    """Both decoding libraries import, or one line saying how to get them."""
    try:
        import av  # noqa: F401
        import soundfile  # noqa: F401
    except ImportError:
        raise UserError(_MISSING) from None
    except OSError as exc:  # soundfile without its libsndfile
        raise UserError(f"soundfile cannot load libsndfile ({one_line(exc)}): pip install --force-reinstall soundfile") from None


def decode(path: str, rate: int, max_seconds: float, *, cut: bool = True) -> Decoded:
    """The clip at `path` as mono float32 at `rate`. Longer than `max_seconds`: cut there when `cut`, else a
    ClipError (the `too_long = "error"` policy)."""
    check_file(path)
    decoded = None
    if path.lower().endswith(SOUNDFILE_SUFFIXES):
        decoded = _with_soundfile(path, rate, max_seconds, cut)
    if decoded is None:
        decoded = _with_av(path, rate, max_seconds, cut)
    if decoded.samples.size == 0:
        raise ClipError("the clip has no audio samples (0 s)")
    if decoded.samples.size < MIN_SECONDS * rate:
        raise ClipError(f"the clip is {decoded.samples.size / rate * 1000:.1f} ms; too short for the model "
                        f"(at least {MIN_SECONDS * 1000:g} ms)")
    return decoded


def _with_soundfile(path: str, rate: int, max_seconds: float, cut: bool) -> Decoded | None:
    """None when libsndfile cannot read the file (PyAV then tries)."""
    import numpy as np
    import soundfile

    _check_riff_size(path)
    try:
        with soundfile.SoundFile(path) as f:
            native, frames = f.samplerate, f.frames
            seconds = frames / native if native else 0.0
            if seconds > max_seconds and not cut:
                raise too_long(seconds, max_seconds)
            wanted = min(frames, int(max_seconds * native))
            data = f.read(wanted, dtype="float32", always_2d=True)
        if len(data) < wanted:
            raise ClipError(f"the file is truncated: {len(data) / native:.1f} s of its {seconds:.1f} s decode")
    except ClipError:
        raise
    except Exception:
        return None
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    samples = mono if native == rate else _resample(mono, native, rate)
    return Decoded(np.ascontiguousarray(samples, dtype=np.float32), rate, seconds, seconds > max_seconds)


def _check_riff_size(path: str) -> None:
    """A WAV cut short still opens (libsndfile reads what is there): its RIFF header says how long it was."""
    with open(path, "rb") as f:
        head = f.read(12)
    if len(head) == 12 and head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        field = int.from_bytes(head[4:8], "little")
        declared, size = field + 8, os.path.getsize(path)
        if field not in (0, 0xFFFFFFFF) and size < declared - 1:  # 0 / FFFFFFFF: written to a pipe, size unknown
            raise ClipError(f"the file is truncated: its header says {declared} bytes, it has {size}")


def _resample(mono: Any, native: int, rate: int) -> Any:
    import av
    import numpy as np

    frame = av.AudioFrame.from_ndarray(mono.reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate = native
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    parts = [f.to_ndarray()[0] for f in resampler.resample(frame)] + [f.to_ndarray()[0] for f in resampler.resample(None)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def _with_av(path: str, rate: int, max_seconds: float, cut: bool) -> Decoded:
    import av
    import numpy as np

    try:
        container = av.open(path)
    except Exception as exc:  # av.error.InvalidDataError and friends
        raise ClipError(f"FFmpeg cannot read it ({reason(exc)}): not audio or video, or damaged") from None
    with container:
        streams = container.streams.audio
        if not streams:
            if container.streams.video:
                raise ClipError("the video has no audio track")
            raise ClipError("no audio stream in the file: not an audio file")
        stream = streams[0]
        known = stream_seconds(container, stream)
        if known is not None and known > max_seconds and not cut:
            raise too_long(known, max_seconds)
        estimated = guessed_length(container)
        limit = int(max_seconds * rate)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        parts, kept, whole, stopped = [], 0, 0, False

        def keep(out: Any) -> None:
            nonlocal kept, whole
            if kept <= limit:  # past the limit only the length counts: memory stays at max_seconds
                parts.append(out.to_ndarray()[0])
                kept += out.samples
            whole += out.samples

        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    keep(out)
                if whole > limit and known is not None and not estimated:
                    stopped = True
                    break  # the rest would be cut anyway, and its length is known
            for out in resampler.resample(None):
                keep(out)
        except Exception as exc:  # a damaged or cut file: half a clip would be described as if it were whole
            raise ClipError(f"the audio track is damaged after {whole / rate:.1f} s ({reason(exc)})") from None
        samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    if known is not None and not estimated and whole < (min(known, max_seconds) - 0.1) * rate:
        raise ClipError(f"the file is truncated: {whole / rate:.1f} s of its {known:.1f} s decode")
    seconds = known if stopped else whole / rate
    if seconds > max_seconds and not cut:
        raise too_long(seconds, max_seconds)
    return Decoded(np.ascontiguousarray(samples[:limit], dtype=np.float32), rate, seconds, seconds > max_seconds)
