"""A tiny, random-weight Qwen3 model and a Qwen-style tokenizer, built offline in seconds.

It lets the whole pipeline (tokenizer, chat template, batching, generation, resume) run
on a laptop CPU with no download. The generated text is noise; only its shape is
realistic: ChatML prompts, `<think>` tags, an `<|im_end|>` eos and varied output lengths.

`write_qwen3_8b_config` writes a config-only directory of Qwen3-8B's shape for starting
vLLM with `load_format="dummy"` on a GPU (throughput checks without downloading weights).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

MARKER = ".s2-tiny-v2"  # bump when anything below changes the built files (v1: older weights)
SEED = 38  # picked with EOS_WEIGHT (below): of seeds 0..39, the best spread of greedy lengths
VOCAB_SIZE = 2560
PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, IM_START, IM_END]
THINK_TOKENS = ["<think>", "</think>"]
# Qwen2/Qwen3's pre-tokenizer split: contractions, letter runs, single digits, punctuation, spaces.
PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Written for this project (not Qwen's file): ChatML turns; earlier assistant turns lose their
# <think> block; a generation prompt opens the assistant turn and, when the caller passes
# enable_thinking=false, pre-fills an empty think block as Qwen3 does.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- set content = message['content'] if message['content'] is string else '' -%}"
    "{%- if message['role'] == 'assistant' and '</think>' in content -%}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') -%}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)

MODEL_SHAPE: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,  # 64, not 16: every vLLM attention backend (FlashInfer, CPU) supports it
    "max_position_embeddings": 4096,
    # 10x the usual 0.02: attention then mixes the prompt into every position, so different
    # prompts give different continuations instead of one token chain keyed on the last token.
    "initializer_range": 0.2,
}
# The eos trick (see _tilt_towards_eos). Tuned by greedy decoding (max 96 new tokens) of the
# 47 demo S2 prompts plus system-message, thinking-on and short chat prompts: any weight in
# 129..131 ends ~85% of them after 5..60 tokens, a few after 1..4, and ~4% run to 96.
EOS_DIM, EOS_SHIFT, EOS_WEIGHT = 0, 0.2, 130.0

QWEN3_8B: dict[str, Any] = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 12288,
    "max_position_embeddings": 40960,
    "max_window_layers": 36,
    "num_attention_heads": 32,
    "num_hidden_layers": 36,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

PROSE = """\
The rain had stopped by the time the last train left the station, and the platform smelled of wet iron.
She laughed, then caught herself, as if laughter were something she had to ask permission for.
Listening closely to a voice tells you more than the words: pitch, tempo, breath and silence all carry feeling.
A trembling voice, a long sigh, a sudden shout or a soft chuckle can change the meaning of the same sentence.
The analyst compared the subtitle with the acoustic clues and wrote a short explanation of the emotional state.
Happiness, sadness, anger, fear, surprise, disgust, contempt, worry, relief, pride and shame.
In the morning the market was crowded; by noon only the fishmonger and a sleepy cat remained.
Numbers such as 3, 14, 2024 and 0.75 appear in reports, along with dates like 12/05 and times like 18:30.
他站在窗前，看着外面的雨，很久没有说话。
她的声音有点发抖，但还是努力笑着说：“没关系，我很好。”
音调、语速、音量和停顿都可以反映说话人的情绪状态。
今天天气很好，我们一起去公园散步吧。
Emoji show up in subtitles too: 😂 🙄 🎉 😊 😢 😡 🤫 ❤️ 👍
Please act as an expert in the field of emotions and integrate the textual and audio clues.
Acoustic Clues: Original Subtitle: Integrated Analysis: analyze which parts can infer the emotional state.
"""


def default_cache_dir() -> Path:
    root = os.environ.get("S2_VLLM_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "s2-vllm"


def demo_paths() -> tuple[Path, Path]:
    """The packaged demo inputs: (audio descriptions, subtitles)."""
    base = resources.files("s2_vllm") / "demo_data"
    return Path(str(base / "audio_descriptions.json")), Path(str(base / "subtitles.json"))


def _corpus() -> list[str]:
    # Only this module's prose and the demo data: editing either changes the vocabulary and
    # so the tuned eos behaviour (re-tune EOS_WEIGHT/SEED and bump MARKER).
    audio, subtitles = demo_paths()
    lines = PROSE.splitlines()
    for record in json.loads(audio.read_text("utf-8")) + json.loads(subtitles.read_text("utf-8")):
        lines += [str(v) for k, v in record.items() if k != "file_id" and v]
    return lines


def _train_tokenizer() -> Any:
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    return tok


def _wrap_tokenizer(raw: Any) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token=IM_END,
        pad_token=PAD,
        unk_token=None,
        extra_special_tokens=[IM_START, IM_END],
        padding_side="left",
        model_max_length=MODEL_SHAPE["max_position_embeddings"],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def _tilt_towards_eos(model: Any, eos_id: int) -> None:
    tilt_towards_eos(model.model.layers, model.model.embed_tokens, model.lm_head, eos_id, EOS_WEIGHT)


def tilt_towards_eos(layers: Any, embed_tokens: Any, lm_head: Any, eos_id: int, weight: float) -> None:
    """Make greedy decoding end with <|im_end|> after a varied number of tokens.

    Random weights almost never pick eos, so every output would run to max_tokens. Every
    embedding gets the same constant in one hidden dimension, which no layer writes to, so
    the residual stream keeps exactly that constant there; after the final RMSNorm it reads
    as constant / |hidden|, and only the eos row of lm_head looks at it. The eos logit thus
    peaks where the hidden state happens to be short, so eos wins at some positions and not
    at others, after a prompt-dependent number of tokens. The text itself stays noise.
    """
    import torch

    with torch.no_grad():
        for layer in layers:
            layer.self_attn.o_proj.weight[EOS_DIM, :] = 0.0
            layer.mlp.down_proj.weight[EOS_DIM, :] = 0.0
        embed_tokens.weight[:, EOS_DIM] = EOS_SHIFT
        lm_head.weight[:, EOS_DIM] = 0.0
        lm_head.weight[eos_id, :] = 0.0
        lm_head.weight[eos_id, EOS_DIM] = weight


def _build_model(tokenizer: Any, vocab_size: int | None = None) -> Any:
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (PAD, IM_END)}
    config = Qwen3Config(
        vocab_size=vocab_size or len(tokenizer),
        tie_word_embeddings=False,
        bos_token_id=ids[PAD],
        eos_token_id=ids[IM_END],
        pad_token_id=ids[PAD],
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        **MODEL_SHAPE,
    )
    torch.manual_seed(SEED)
    model = Qwen3ForCausalLM(config).to(torch.float32).eval()
    _tilt_towards_eos(model, ids[IM_END])
    model.generation_config = GenerationConfig(
        bos_token_id=ids[PAD], eos_token_id=ids[IM_END], pad_token_id=ids[PAD], do_sample=False
    )
    return model


def build_tiny_model(dest: str | Path | None = None, *, force: bool = False) -> Path:
    """Build (once) a tiny random Qwen3 + tokenizer at `dest`; reuse it when already built.

    Loads with `AutoTokenizer.from_pretrained(dest)` / `AutoModelForCausalLM.from_pretrained(dest)`.
    The build goes to a temporary sibling directory that is renamed into place at the end, so
    an interrupted build never leaves a half-written model behind.
    """
    dest = Path(dest) if dest is not None else default_cache_dir() / "tiny-qwen3"
    return build_once(dest, MARKER, _write_model, force=force)


def build_once(dest: Path, marker: str, write: Any, *, force: bool = False) -> Path:
    """`write(folder)` into a temporary sibling of `dest`, renamed into place when done; nothing when `dest`
    holds `marker` already (unless `force`). A folder with other files and no marker of ours is never replaced."""
    if (dest / marker).exists() and not force:
        return dest
    family = marker.rsplit("-v", 1)[0]
    if dest.exists() and any(dest.iterdir()) and not any(dest.glob(f"{family}-v*")):
        raise FileExistsError(f"{dest} exists and is not a tiny model built here; refusing to replace it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        write(tmp)
        if (dest / marker).exists() and not force:
            return dest  # a concurrent build finished first; keep its copy
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _write_model(out: Path) -> None:
    tokenizer = _wrap_tokenizer(_train_tokenizer())
    tokenizer.save_pretrained(out)
    _build_model(tokenizer).save_pretrained(out, safe_serialization=True)
    out.chmod(0o755)  # mkdtemp made it 0700
    (out / MARKER).write_text("tiny random Qwen3 for s2-vllm tests; its weights are noise\n", "utf-8")


def build_tiny_model_for_tokenizer(tokenizer_dir: str | Path, dest: str | Path) -> Path:
    """The tiny architecture, random weights, over another tokenizer (e.g. Qwen3's real one).

    The embedding has Qwen3's 151,936 rows when the tokenizer is that large, so the chat
    template, special tokens and token counts are the real model's; only the weights are noise.
    """
    from transformers import AutoTokenizer

    dest = Path(dest)
    if (dest / MARKER).exists():
        return dest
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    vocab = max(len(tokenizer), QWEN3_8B["vocab_size"]) if len(tokenizer) > VOCAB_SIZE else len(tokenizer)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        tokenizer.save_pretrained(tmp)
        _build_model(tokenizer, vocab).save_pretrained(tmp, safe_serialization=True)
        (tmp / MARKER).write_text(f"tiny random Qwen3 over the tokenizer of {tokenizer_dir}\n", "utf-8")
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def write_qwen3_8b_config(dest: Path, tokenizer_dir: Path) -> Path:
    """Write a weightless model directory of Qwen3-8B's shape, for vLLM `load_format="dummy"`.

    `config.json` matches Qwen3-8B (36 layers, hidden 4096, 32/8 heads, head_dim 128, bf16);
    the tokenizer files are copied from `tokenizer_dir` (e.g. the tiny model's). That
    tokenizer's vocabulary is far smaller than the config's 151936 rows, so dummy weights
    can sample ids the tokenizer cannot decode: the caller must handle those (clamp,
    drop or detokenize=False). No weights are written.
    """
    dest, tokenizer_dir = Path(dest), Path(tokenizer_dir)
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (tokenizer_dir / name).exists():
            shutil.copy2(tokenizer_dir / name, dest / name)
    config = dict(QWEN3_8B)
    # Keep the config's special ids consistent with the tokenizer that ships beside it.
    added = json.loads((tokenizer_dir / "tokenizer.json").read_text("utf-8")).get("added_tokens", [])
    ids = {t["content"]: t["id"] for t in added}
    if PAD in ids and IM_END in ids:
        config.update(bos_token_id=ids[PAD], eos_token_id=ids[IM_END])
    if (dest / "tokenizer_config.json").exists():
        tok_config = json.loads((dest / "tokenizer_config.json").read_text("utf-8"))
        tok_config["model_max_length"] = config["max_position_embeddings"]
        (dest / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n", "utf-8")
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n", "utf-8")
    return dest
