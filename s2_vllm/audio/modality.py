"""Audio as a modality of `describe`: clips decoded to mono samples at the model's rate ([audio] table)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

from s2_vllm.clips.modality import Decoded, Modality
from s2_vllm.config import Config
from s2_vllm.video import modality as video

SUFFIXES = (".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".oga", ".opus", ".wma", ".aiff", ".aif")
TOKENS_PER_SECOND = 25  # Qwen2.5-Omni and Qwen2-Audio: 100 mel frames/s, pooled 4:1
WHISPER_SECONDS = 30  # what their feature extractor reads of a clip
PLACEHOLDER = "<|AUDIO|>"  # Qwen2-Audio's and Qwen2.5-Omni's, when the tokenizer does not name its own

# Our wording, after the paper's acoustic-clue prompts: the cues in the voice, then what they suggest.
TEMPLATE = """\
Please act as an expert in the field of emotions. Listen to the speaker in this audio clip and describe \
the emotional cues in the voice: tone, pitch, speaking rate, volume and intensity, and how they change \
over the clip. Then say which emotional state these acoustic cues suggest, and how clearly. Describe \
only what can be heard."""
TEMPLATE_WITH_SUBTITLE = TEMPLATE + """

The subtitle of the clip is: {subtitle}
Use the subtitle as context, but base the description on the acoustic cues."""


class Audio(Modality):
    name = "audio"
    suffixes = SUFFIXES + video.SUFFIXES  # videos' audio tracks too
    default_model = "Qwen/Qwen2.5-Omni-7B"  # its thinker: vLLM loads no talker for text output
    default_output = "audio_descriptions.jsonl"
    clues = "acoustic clues"
    files = "audio or video files"

    def template(self, with_subtitle: bool) -> str:
        return TEMPLATE_WITH_SUBTITLE if with_subtitle else TEMPLATE

    def content_part(self) -> dict[str, Any]:
        # the "audio" key is what Qwen2-Audio's template looks for, "type" what Qwen2.5-Omni's does
        return {"type": "audio", "audio": "clip"}

    def placeholders(self, tokenizer: Any) -> tuple[str, ...]:
        return (getattr(tokenizer, "audio_token", None) or PLACEHOLDER,)

    def max_tokens(self, config: Config) -> int:
        return math.ceil(config.audio.max_seconds * TOKENS_PER_SECOND) + 2

    def fingerprint(self, config: Config) -> dict[str, Any]:
        from s2_vllm.audio.decode import DECODER_VERSION

        return {"sample_rate": config.audio.sample_rate, "max_seconds": config.audio.max_seconds,
                "decoder": DECODER_VERSION}

    def decoder(self, config: Config) -> Callable[[str], Decoded]:
        from s2_vllm.audio.decode import decode

        return functools.partial(decode, rate=config.audio.sample_rate, max_seconds=config.audio.max_seconds,
                                 cut=config.prompt.too_long == "truncate")

    def clip_bytes(self, config: Config) -> int:
        return int(config.audio.max_seconds * config.audio.sample_rate) * 4  # float32 mono

    def max_seconds(self, config: Config) -> float:
        return config.audio.max_seconds

    def takes(self, model_config: Any) -> bool:
        """An audio encoder: Qwen2.5-Omni's thinker, Qwen2-Audio, Qwen3-Omni, …"""
        outer = getattr(model_config, "thinker_config", None) or model_config
        return getattr(outer, "audio_config", None) is not None

    def check_decoders(self) -> None:
        from s2_vllm.audio.decode import check_decoders

        check_decoders()

    def notes(self, config: Config) -> list[str]:
        if config.audio.max_seconds <= WHISPER_SECONDS:
            return []
        return [f"warning: max_seconds is {config.audio.max_seconds:g}, but vLLM's Whisper-style feature extractor "
                f"(Qwen2.5-Omni, Qwen2-Audio) reads {WHISPER_SECONDS} s: those models drop the rest of a longer clip, "
                "and its row is not marked"]

    def decoding(self, config: Config) -> str:
        return f"decoded to {config.audio.sample_rate} Hz mono"


MODALITY = Audio()
