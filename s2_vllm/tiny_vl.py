"""A tiny, random-weight Qwen2.5-VL (video in, text out), built offline in seconds.

It lets `describe --modality video` run end to end on vLLM's CPU build with no download: the real
architecture (`Qwen2_5_VLForConditionalGeneration`: a one-block windowed vision tower, multimodal RoPE,
the text model), the real processor (frames resized to multiples of 28, two frames per token group) and
a chat template that renders a video part as `<|vision_start|><|video_pad|><|vision_end|>`. The weights
are noise, so the text is too; different videos still give different text. The tokenizer and text shape
are the tiny Omni thinker's (`tiny_omni.py`), with Qwen2.5-VL's special tokens.

`write_vl_7b_config` writes a config-only folder of Qwen2.5-VL-7B-Instruct's shape for vLLM's
`load_format="dummy"` on a GPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from s2_vllm import tiny
from s2_vllm.tiny_omni import EOS_WEIGHT, SEED, TEXT_SHAPE, tokenizer_with

MARKER = ".s2-tiny-qwen2.5-vl-v1"  # bump when anything below changes the built files
VL_TOKENS = {  # the processor's names for Qwen2.5-VL's special tokens, and the tokens
    "image_token": "<|image_pad|>", "video_token": "<|video_pad|>", "vision_bos_token": "<|vision_start|>",
    "vision_eos_token": "<|vision_end|>",
}
# Written for this project: ChatML turns whose content is text or a list of parts; a video part (type
# "video", or a "video" key) becomes the video placeholder between the vision markers.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'video' or 'video' in part -%}{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'image' or 'image' in part -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
VISION_SHAPE: dict[str, Any] = {
    "depth": 1, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2, "fullatt_block_indexes": [0],
    "window_size": 112, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "tokens_per_second": 2,
    "initializer_range": 0.2,  # as the text model's: at 0.02 different frames would read alike
}
# Qwen2.5-VL-7B-Instruct's shape, for load_format="dummy".
VL_7B_TEXT = {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
              "num_key_value_heads": 4, "max_position_embeddings": 128000, "vocab_size": 152064,
              "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}}
VL_7B_VISION = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                "fullatt_block_indexes": [7, 15, 23, 31], "window_size": 112, "patch_size": 14,
                "spatial_merge_size": 2, "temporal_patch_size": 2, "tokens_per_second": 2}


def _tokenizer() -> Any:
    return tokenizer_with(VL_TOKENS, CHAT_TEMPLATE)


def _config(tokenizer: Any, text: dict[str, Any], vision: dict[str, Any]) -> Any:
    from transformers import Qwen2_5_VLConfig

    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in VL_TOKENS.items()}
    eos, pad = tokenizer.convert_tokens_to_ids(tiny.IM_END), tokenizer.convert_tokens_to_ids(tiny.PAD)
    text = {"vocab_size": len(tokenizer), "tie_word_embeddings": False, "eos_token_id": eos, "pad_token_id": pad,
            "bos_token_id": None,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]},
            **text}
    config = Qwen2_5_VLConfig(
        text_config=text, vision_config={**vision, "out_hidden_size": text["hidden_size"]},
        image_token_id=ids["image_token"], video_token_id=ids["video_token"],
        vision_start_token_id=ids["vision_bos_token"], vision_end_token_id=ids["vision_eos_token"],
        eos_token_id=eos, pad_token_id=pad, bos_token_id=None, tie_word_embeddings=False,
    )
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    return config


def _processor(tokenizer: Any) -> Any:
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    return Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer,
                               video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE)


def _write(out: Path) -> None:
    import torch
    from huggingface_hub.utils import disable_progress_bars
    from transformers import Qwen2_5_VLForConditionalGeneration

    disable_progress_bars()  # "Writing model shards" on the console of every first test run

    tokenizer = _tokenizer()
    config = _config(tokenizer, TEXT_SHAPE, VISION_SHAPE)
    torch.manual_seed(SEED)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32).eval()
    text = model.model.language_model  # tiny.py's eos trick, on the text model
    tiny.tilt_towards_eos(text.layers, text.embed_tokens, model.lm_head, tokenizer.convert_tokens_to_ids(tiny.IM_END),
                          EOS_WEIGHT)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _processor(tokenizer).save_pretrained(out)
    out.chmod(0o755)  # mkdtemp made it 0700
    (out / MARKER).write_text("tiny random Qwen2.5-VL for s2-vllm; its weights are noise\n", "utf-8")


def build_tiny_vl(dest: str | Path | None = None, *, force: bool = False) -> Path:
    """Build (once) the tiny Qwen2.5-VL at `dest` (default: the cache's `tiny-qwen2.5-vl`); reuse it when built."""
    dest = Path(dest) if dest is not None else tiny.default_cache_dir() / "tiny-qwen2.5-vl"
    return tiny.build_once(dest, MARKER, _write, force=force)


def write_vl_7b_config(dest: str | Path) -> Path:
    """A weightless folder of Qwen2.5-VL-7B-Instruct's shape for `load_format="dummy"`, with the tiny tokenizer
    padded to the model's 152,064 ids (so every id random weights sample decodes), our template and the processor."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer_with(VL_TOKENS, CHAT_TEMPLATE, rows=VL_7B_TEXT["vocab_size"])
    tokenizer.save_pretrained(dest)
    _processor(tokenizer).save_pretrained(dest)
    config = _config(tokenizer, {**VL_7B_TEXT, "initializer_range": 0.02}, VL_7B_VISION).to_dict()
    config["torch_dtype"] = "bfloat16"
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n", "utf-8")
    return dest
