"""What both decoders ask of PyAV (FFmpeg): a stream's length, and a short reason for its errors."""

from __future__ import annotations

from typing import Any

from s2_vllm.errors import one_line


def stream_seconds(container: Any, stream: Any) -> float | None:
    """The stream's length as its container declares it; None when it does not."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # av.time_base
    return None


def guessed_length(container: Any) -> bool:
    """Whether FFmpeg guessed the length from the bitrate (raw AAC and MP3): a truncated file is not told apart."""
    return container.format.name in ("aac", "mp3")


def reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or one_line(exc, 160)
    return str(text).rstrip(".")
