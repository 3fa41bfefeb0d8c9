"""Generated videos for the demo, the tests and the benchmark: coloured shapes moving over a background.

Each `seed` picks the colours, the shape's size and its path, so clips of different seeds are different
inputs to the model. Written as MPEG-4 part 2 video in MP4 by PyAV (any FFmpeg build has that encoder),
optionally with an AAC tone as the audio track, so one file serves both modalities.
"""

from __future__ import annotations

import random
from pathlib import Path
from collections.abc import Iterator
from typing import Any


def frames(seed: int, seconds: float, size: tuple[int, int] = (64, 48), fps: int = 10) -> Any:
    """uint8 RGB frames, shape (T, height, width, 3)."""
    import numpy as np

    return np.stack(list(each_frame(seed, seconds, size, fps)))


def each_frame(seed: int, seconds: float, size: tuple[int, int] = (64, 48), fps: int = 10) -> Iterator[Any]:
    """The frames of `frames` one at a time (15 s of 1080p at 25 fps is 2.3 GB at once)."""
    import numpy as np

    rng = random.Random(seed)
    width, height = size
    background = np.array([rng.randrange(256) for _ in range(3)], np.uint8)
    colour = np.array([rng.randrange(256) for _ in range(3)], np.uint8)
    side = max(4, int(min(width, height) * rng.uniform(0.2, 0.45)))
    speed = (rng.uniform(-1, 1) * width / 2, rng.uniform(-1, 1) * height / 2)  # pixels per second
    x0, y0 = rng.uniform(0, width - side), rng.uniform(0, height - side)
    count = max(1, int(round(seconds * fps)))
    ys, xs = np.mgrid[0:height, 0:width]
    for i in range(count):
        t = i / fps
        x = (x0 + speed[0] * t) % (width - side)
        y = (y0 + speed[1] * t) % (height - side)
        image = np.empty((height, width, 3), np.uint8)
        image[:] = background
        if seed % 2:  # a disc
            mask = (xs - x - side / 2) ** 2 + (ys - y - side / 2) ** 2 <= (side / 2) ** 2
        else:  # a square
            mask = (xs >= x) & (xs < x + side) & (ys >= y) & (ys < y + side)
        image[mask] = colour
        yield image


def write_video(path: str | Path, seed: int, seconds: float = 2.0, *, size: tuple[int, int] = (64, 48),
                fps: int = 10, audio_hz: float | None = None, rate: int = 16000, codec: str = "mpeg4") -> Path:
    """An MP4 of `frames(seed, …)`; with `audio_hz`, an AAC tone of that pitch as its audio track. `codec`:
    "h264" (libx264, where this FFmpeg build has it) for what datasets hold; the benchmark decodes those."""
    import av
    import numpy as np

    path = Path(path)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.bit_rate = max(200_000, size[0] * size[1] * fps // 4)
        audio = None
        if audio_hz is not None:
            audio = out.add_stream("aac", rate=rate, layout="mono")
        for image in each_frame(seed, seconds, size, fps):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode(None))
        if audio is not None:
            from s2_vllm.audio.synth import tone

            samples = tone(audio_hz, seconds, rate).reshape(1, -1)
            for start in range(0, samples.shape[1], 1024):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + 1024]),
                                                   format="fltp", layout="mono")
                frame.sample_rate, frame.pts = rate, start
                out.mux(audio.encode(frame))
            out.mux(audio.encode(None))
    return path
