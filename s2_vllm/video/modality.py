"""Video as a modality of `describe`: frames sampled, resized and stacked on the decode workers ([video] table)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

from s2_vllm.clips.modality import Decoded, Modality
from s2_vllm.config import Config

SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".flv", ".mpg", ".mpeg", ".m4v", ".wmv")
# The video placeholders of the chat templates: Qwen2.5-VL's and Qwen3-VL's, Qwen2.5-Omni's
PLACEHOLDERS = ("<|video_pad|>", "<|VIDEO|>")
TEMPORAL_PATCH = 2  # Qwen-VL's encoders take frames in pairs: one group of tokens per two frames
TIME_TOKENS = 8  # Qwen3-VL writes a timestamp ("<1.5 seconds>") before each group
PROCESSOR_MIN_PIXELS = 128 * 28 * 28  # Qwen2-VL's video processor scales a smaller frame up to this

# Our wording, after the paper's visual-clue prompts: what can be seen of the person, then what it suggests.
TEMPLATE = """\
Please act as an expert in the field of emotions. Watch the person in this video clip and describe the \
visual cues of their emotional state: facial expression, gaze, head and body movement, gestures and \
posture, how these change over the clip, and the scene around them. Then say which emotional state these \
visual cues suggest, and how clearly. Describe only what can be seen."""
TEMPLATE_WITH_SUBTITLE = TEMPLATE + """

The subtitle of the clip is: {subtitle}
Use the subtitle as context, but base the description on the visual cues."""


class Video(Modality):
    name = "video"
    suffixes = SUFFIXES
    default_model = "Qwen/Qwen2.5-VL-7B-Instruct"
    default_output = "visual_descriptions.jsonl"
    clues = "visual clues"
    files = "video files"

    def template(self, with_subtitle: bool) -> str:
        return TEMPLATE_WITH_SUBTITLE if with_subtitle else TEMPLATE

    def content_part(self) -> dict[str, Any]:
        return {"type": "video", "video": "clip"}

    def placeholders(self, tokenizer: Any) -> tuple[str, ...]:
        named = getattr(tokenizer, "video_token", None)
        return tuple(dict.fromkeys((*([named] if named else []), *PLACEHOLDERS)))

    def max_tokens(self, config: Config) -> int:
        from s2_vllm.video.decode import PATCH

        groups = math.ceil(config.video.max_frames / TEMPORAL_PATCH)
        pixels = max(config.video.max_pixels, PROCESSOR_MIN_PIXELS)
        return groups * (pixels // (PATCH * PATCH) + TIME_TOKENS) + 2

    def fingerprint(self, config: Config) -> dict[str, Any]:
        from s2_vllm.video.decode import DECODER_VERSION

        v = config.video
        return {"fps": v.fps, "max_frames": v.max_frames, "max_pixels": v.max_pixels, "max_seconds": v.max_seconds,
                "decoder": DECODER_VERSION}

    def decoder(self, config: Config) -> Callable[[str], Decoded]:
        from s2_vllm.video.decode import decode

        v = config.video
        return functools.partial(decode, fps=v.fps, max_frames=v.max_frames, max_pixels=v.max_pixels,
                                 max_seconds=v.max_seconds, cut=config.prompt.too_long == "truncate")

    def clip_bytes(self, config: Config) -> int:
        return config.video.max_frames * config.video.max_pixels * 3  # RGB, uint8

    def max_seconds(self, config: Config) -> float:
        return config.video.max_seconds

    def takes(self, model_config: Any) -> bool:
        """A vision encoder: Qwen2.5-VL, Qwen3-VL, Qwen2.5-Omni's thinker, …"""
        outer = getattr(model_config, "thinker_config", None) or model_config
        return getattr(outer, "vision_config", None) is not None

    def check_decoders(self) -> None:
        from s2_vllm.errors import UserError

        try:
            import av  # noqa: F401
        except ImportError:
            raise UserError("describe --modality video decodes with PyAV, which is not installed: "
                            "bash scripts/install.sh (or pip install av)") from None

    def decoding(self, config: Config) -> str:
        v = config.video
        return f"sampled at {v.fps:g} fps (at most {v.max_frames} frames of at most {v.max_pixels} pixels)"


MODALITY = Video()
