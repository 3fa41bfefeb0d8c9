"""Generated clips for the demo, the tests and the benchmark: tones written as real audio and video files.

A clip is a tone with a slow vibrato and a fade, so clips of different pitch are different inputs to
the model. WAV and FLAC go through soundfile; MP4 (AAC audio, optionally an MPEG-4 video track) and
a video without any audio track through PyAV.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tone(hz: float, seconds: float, rate: int = 16000, channels: int = 1) -> Any:
    """float32 samples, shape (n,) or (n, channels)."""
    import numpy as np

    t = np.arange(int(round(seconds * rate))) / rate
    wave = 0.3 * np.sin(2 * np.pi * hz * t + 0.5 * np.sin(2 * np.pi * 3 * t))
    fade = np.minimum(1.0, np.minimum(t, seconds - t) / 0.05) if seconds > 0.1 else 1.0
    mono = (wave * fade).astype(np.float32)
    return mono if channels == 1 else np.repeat(mono[:, None], channels, axis=1)


def write_clip(path: str | Path, hz: float, seconds: float, rate: int = 16000, channels: int = 1) -> Path:
    """A tone clip; the format follows the suffix: .wav, .flac (soundfile) or .mp4/.m4a (AAC via PyAV)."""
    path = Path(path)
    samples = tone(hz, seconds, rate, channels)
    if path.suffix.lower() in (".wav", ".flac"):
        import soundfile

        soundfile.write(str(path), samples, rate, subtype="PCM_16")
    else:
        _write_av(path, samples, rate, video=path.suffix.lower() == ".mp4")
    return path


def write_silent_video(path: str | Path, seconds: float = 1.0) -> Path:
    """An MP4 with a video track and no audio track."""
    import av
    import numpy as np

    path = Path(path)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(max(1, int(seconds * 10))):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 20 % 255, np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def _write_av(path: Path, samples: Any, rate: int, video: bool) -> None:
    import av
    import numpy as np

    planar = samples.reshape(1, -1) if samples.ndim == 1 else samples.T.copy()
    layout = "mono" if planar.shape[0] == 1 else "stereo"
    with av.open(str(path), "w") as out:
        vstream = None
        if video:
            vstream = out.add_stream("mpeg4", rate=5)
            vstream.width, vstream.height, vstream.pix_fmt = 32, 32, "yuv420p"
        astream = out.add_stream("aac", rate=rate, layout=layout)
        step = 1024
        for start in range(0, planar.shape[1], step):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planar[:, start:start + step]),
                                               format="fltp", layout=layout)
            frame.sample_rate = rate
            frame.pts = start
            out.mux(astream.encode(frame))
        out.mux(astream.encode(None))
        if vstream is not None:
            seconds = planar.shape[1] / rate
            for i in range(max(1, int(seconds * 5))):
                image = np.full((32, 32, 3), (i * 37) % 255, np.uint8)
                out.mux(vstream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            out.mux(vstream.encode(None))
