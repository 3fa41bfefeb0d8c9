"""One video file → frames sampled at `fps`, resized, as the Qwen-VL processors in vLLM take them.

PyAV (FFmpeg) decodes the video track in order on the feed's workers; a frame is kept when its time
reaches the next sample point, scaled down there (libswscale) so that it holds at most `max_pixels`,
and converted to RGB. A clip longer than `max_frames / fps` seconds is sampled more sparsely: the
sample interval doubles and every other kept frame goes, so memory never holds more than
`max_frames` frames of a clip, known length or not. The frames travel with their metadata (the
source fps, the indices of the kept frames), which Qwen3-VL turns into timestamps; vLLM is told they
are sampled already. A problem with one file is a `ClipError`, that clip's error row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from s2_vllm.clips.modality import ClipError, check_file, too_long
from s2_vllm.clips.pyav import reason, stream_seconds

DECODER_VERSION = 1  # in a video describe checkpoint's fingerprint
PATCH = 28  # Qwen-VL's 14-pixel patches, merged 2 x 2: frame sides are multiples of this
_SLACK = 1.0  # seconds a decoded track may fall short of its declared length before it counts as truncated


@dataclass(frozen=True)
class Frames:
    frames: Any  # numpy uint8, (T, H, W, 3), RGB
    metadata: dict[str, Any]
    seconds: float  # the clip's whole length (before any cut)
    cut: bool  # cut to max_seconds

    @property
    def data(self) -> tuple[Any, dict[str, Any]]:
        """What vLLM's `multi_modal_data["video"]` takes: (frames, metadata)."""
        return self.frames, self.metadata

    @property
    def nbytes(self) -> int:
        return int(self.frames.nbytes)


def frame_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """(width, height) with sides that are multiples of PATCH, the aspect kept, at most `max_pixels`."""
    scale = min(1.0, math.sqrt(max_pixels / max(1, width * height)))
    w, h = max(PATCH, round(width * scale / PATCH) * PATCH), max(PATCH, round(height * scale / PATCH) * PATCH)
    while w * h > max_pixels and (w > PATCH or h > PATCH):
        if w >= h:
            w -= PATCH
        else:
            h -= PATCH
    return w, h


def decode(path: str, fps: float, max_frames: int, max_pixels: int, max_seconds: float, *,
           cut: bool = True) -> Frames:
    """Frames of the video at `path`. Longer than `max_seconds`: cut there when `cut`, else a ClipError."""
    import av

    check_file(path)
    try:
        container = av.open(path)
    except Exception as exc:  # av.error.InvalidDataError and friends
        raise ClipError(f"FFmpeg cannot read it ({reason(exc)}): not a video, or damaged") from None
    with container:
        if not container.streams.video:
            what = "an audio file" if container.streams.audio else "no audio either"
            raise ClipError(f"no video stream in the file ({what})")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        known = stream_seconds(container, stream)
        if known is not None and known > max_seconds and not cut:
            raise too_long(known, max_seconds)
        source_fps = float(stream.average_rate or stream.guessed_rate or 0) or None
        span = min(known, max_seconds) if known else max_seconds
        sampler = _Sampler(1 / fps if known is None else max(1 / fps, span / (max_frames - 0.5)), max_frames)
        size = None
        last = index = -1
        declared = stream.frames
        try:
            for index, frame in enumerate(container.decode(stream)):
                t = frame.time if frame.time is not None else index / (source_fps or fps)
                if t > max_seconds:
                    break
                last = t
                if sampler.wants(t):
                    size = size or frame_size(frame.width, frame.height, max_pixels)
                    image = frame.reformat(width=size[0], height=size[1], format="rgb24").to_ndarray()
                    sampler.keep(t, index, image)
        except Exception as exc:  # a damaged or cut file: half a clip would be described as if it were whole
            raise ClipError(f"the video track is damaged after {max(last, 0):.1f} s ({reason(exc)})") from None
    if not sampler.kept:
        raise ClipError("no frame of the video could be decoded")
    if known is not None and last < min(known, max_seconds) - _SLACK:
        raise ClipError(f"the file is truncated: {last:.1f} s of its {known:.1f} s decode")
    seconds = known if known is not None else last
    if seconds > max_seconds and not cut:
        raise too_long(seconds, max_seconds)
    return sampler.frames(source_fps or fps, seconds, declared or index + 1, max_seconds)


class _Sampler:
    """Keeps a frame at each `interval`; past `max_frames` kept, every other one goes and the interval doubles."""

    def __init__(self, interval: float, max_frames: int):
        self.interval, self.max_frames = interval, max_frames
        self.next = 0.0
        self.kept: list[tuple[float, int, Any]] = []

    def wants(self, t: float) -> bool:
        return t + 1e-6 >= self.next

    def keep(self, t: float, index: int, image: Any) -> None:
        self.kept.append((t, index, image))
        if len(self.kept) > self.max_frames:
            self.kept = self.kept[::2]
            self.interval *= 2
        self.next = self.kept[-1][0] + self.interval

    def frames(self, fps: float, seconds: float, total: int, max_seconds: float) -> Frames:
        import numpy as np

        stack = np.stack([image for _, _, image in self.kept])
        metadata = {"fps": fps, "duration": min(seconds, max_seconds), "total_num_frames": total,
                    "frames_indices": [index for _, index, _ in self.kept], "video_backend": "pyav",
                    "do_sample_frames": False}
        return Frames(stack, metadata, seconds, seconds > max_seconds)

