"""The tiny offline Qwen3 model, its tokenizer and chat template, and the packaged demo data."""

import hashlib
import json
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from s2_vllm import tiny
from s2_vllm.template import DEFAULT_TEMPLATE, PromptTemplate

USER = [{"role": "user", "content": "How does she sound?"}]
SYSTEM = [{"role": "system", "content": "You are an emotion analyst."}] + USER


def digest(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def demo():
    audio, subtitles = tiny.demo_paths()
    return json.loads(audio.read_text("utf-8")), json.loads(subtitles.read_text("utf-8"))


def test_build_writes_a_loadable_model_directory(tiny_model, tokenizer):
    assert (tiny_model / tiny.MARKER).exists()
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= set(digest(tiny_model))
    config = json.loads((tiny_model / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"] and config["tie_word_embeddings"] is False
    assert config["vocab_size"] == len(tokenizer) and 2000 <= len(tokenizer) <= 4000
    assert config["eos_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>") == tokenizer.eos_token_id
    assert config["pad_token_id"] == tokenizer.convert_tokens_to_ids("<|endoftext|>") == tokenizer.pad_token_id
    generation = json.loads((tiny_model / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.eos_token_id
    assert tokenizer.padding_side == "left"
    assert not list(tiny_model.parent.glob(".tiny-qwen3-*")), "the temporary build directory was left behind"


def test_tokenizer_round_trips_chinese_emoji_and_braces(tokenizer):
    text = "她的声音有点发抖，但还是笑着说：“没关系。” 😂🎉❤️ {laughs} café\n\ttabs  and  spaces"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text.encode("utf-8"))  # merges were learned, not just raw bytes


def test_think_tags_are_plain_added_tokens_and_chatml_tokens_are_special(tokenizer):
    ids = tokenizer.encode("<think>\nhmm\n</think>\n\nCalm.<|im_end|>", add_special_tokens=False)
    assert {tokenizer.convert_tokens_to_ids("<think>"), tokenizer.convert_tokens_to_ids("</think>")} <= set(ids)
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<think>\nhmm\n</think>\n\nCalm."
    assert tokenizer.decode(ids) == "<think>\nhmm\n</think>\n\nCalm.<|im_end|>"
    assert {"<|im_start|>", "<|im_end|>", "<|endoftext|>"} <= set(tokenizer.all_special_tokens)


@pytest.mark.parametrize(
    ("messages", "kwargs", "expected"),
    [
        (USER, {}, "<|im_start|>user\nHow does she sound?<|im_end|>\n<|im_start|>assistant\n"),
        (USER, {"enable_thinking": True}, "<|im_start|>user\nHow does she sound?<|im_end|>\n<|im_start|>assistant\n"),
        (
            USER,
            {"enable_thinking": False},
            "<|im_start|>user\nHow does she sound?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
        ),
        (
            SYSTEM,
            {"enable_thinking": False},
            "<|im_start|>system\nYou are an emotion analyst.<|im_end|>\n"
            "<|im_start|>user\nHow does she sound?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
        ),
    ],
)
def test_chat_template_is_qwen3_style(tokenizer, messages, kwargs, expected):
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs) == expected


def test_chat_template_without_generation_prompt_drops_old_reasoning(tokenizer):
    history = USER + [{"role": "assistant", "content": "<think>\nsighs, slow\n</think>\n\nSad."}]
    rendered = tokenizer.apply_chat_template(history, tokenize=False, enable_thinking=False)
    assert rendered == "<|im_start|>user\nHow does she sound?<|im_end|>\n<|im_start|>assistant\nSad.<|im_end|>\n"


def test_greedy_outputs_end_in_eos_after_varied_lengths(tiny_model, tokenizer, demo):
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    assert model.dtype == torch.float32
    audio, subtitles = demo
    subtitle = {r["file_id"]: r["english_transcription"] for r in subtitles}
    template = PromptTemplate.parse(DEFAULT_TEMPLATE)
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": template.render({"audio_description": r["generated_text"],
                                                          "subtitle": subtitle[r["file_id"]]})}],
            tokenize=False, add_generation_prompt=True, enable_thinking=False,
        )
        for r in audio if subtitle.get(r["file_id"])
    ][:10]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**batch, do_sample=False, max_new_tokens=96)
    rows = out[:, batch["input_ids"].shape[1]:].tolist()
    eos = tokenizer.eos_token_id
    lengths = [row.index(eos) + 1 if eos in row else None for row in rows]
    ended = [n for n in lengths if n is not None]
    assert len(ended) >= 7, lengths
    assert len(set(ended)) >= 5, lengths
    assert sum(3 <= n <= 60 for n in ended) >= 6, lengths
    # Left padding does not change a greedy continuation.
    alone = tokenizer(prompts[:1], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        single = model.generate(**alone, do_sample=False, max_new_tokens=96)[0, alone["input_ids"].shape[1]:]
    assert single.tolist()[: lengths[0] or 96] == rows[0][: lengths[0] or 96]


def test_second_call_reuses_the_cache(tiny_model):
    before = digest(tiny_model)
    mtime = (tiny_model / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert tiny.build_tiny_model(tiny_model) == tiny_model
    assert time.perf_counter() - start < 0.5
    assert digest(tiny_model) == before and (tiny_model / "model.safetensors").stat().st_mtime_ns == mtime


def test_forced_rebuild_is_byte_identical(tiny_model, tmp_path):
    again = tiny.build_tiny_model(tmp_path / "copy", force=True)
    assert digest(again) == digest(tiny_model)
    rebuilt = tiny.build_tiny_model(again, force=True)
    assert rebuilt == again and digest(rebuilt) == digest(tiny_model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]


def test_an_older_build_is_replaced(tiny_model, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / ".s2-tiny-v0").write_text("")
    (old / "model.safetensors").write_bytes(b"stale")
    assert digest(tiny.build_tiny_model(old)) == digest(tiny_model)
    assert not (old / ".s2-tiny-v0").exists()


def test_refuses_to_replace_a_foreign_directory(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        tiny.build_tiny_model(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_default_destination_follows_the_cache_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("S2_VLLM_CACHE", str(tmp_path))
    assert tiny.build_tiny_model() == tmp_path / "tiny-qwen3"
    assert (tmp_path / "tiny-qwen3" / tiny.MARKER).exists()


def test_qwen3_8b_config_directory(tiny_model, tokenizer, tmp_path):
    dest = tiny.write_qwen3_8b_config(tmp_path / "qwen3-8b-dummy", tiny_model)
    config = AutoConfig.from_pretrained(dest)
    assert config.architectures == ["Qwen3ForCausalLM"]
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (36, 4096, 12288)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (32, 8, 128)
    assert config.vocab_size == 151936 and config.max_position_embeddings == 40960
    assert config.tie_word_embeddings is False
    assert config.eos_token_id == tokenizer.eos_token_id
    raw = json.loads((dest / "config.json").read_text())
    assert (raw["torch_dtype"], raw["rope_theta"], raw["rms_norm_eps"]) == ("bfloat16", 1000000, 1e-06)
    assert not [p for p in dest.iterdir() if p.suffix in (".safetensors", ".bin", ".pt")]
    copied = AutoTokenizer.from_pretrained(dest)
    assert copied.encode("你好 😊") == tokenizer.encode("你好 😊") and copied.chat_template == tokenizer.chat_template


def test_demo_files_are_packaged_utf8_json_with_the_promised_quirks(demo):
    audio_path, subtitles_path = tiny.demo_paths()
    assert "\\u" not in subtitles_path.read_text("utf-8")  # written with ensure_ascii=False
    audio, subtitles = demo
    audio_ids = [r["file_id"] for r in audio]
    subtitle_ids = [r["file_id"] for r in subtitles]
    assert len(set(audio_ids)) == len(audio_ids) == 49 and len(set(subtitle_ids)) == len(subtitle_ids) == 48
    assert len(set(audio_ids) - set(subtitle_ids)) == 2 and len(set(subtitle_ids) - set(audio_ids)) == 1
    assert audio_ids != [i for i in subtitle_ids if i in set(audio_ids)]  # a different order
    words = [len(r["generated_text"].split()) for r in audio]
    assert min(words) >= 50 and max(words) <= 160
    lines = [r["english_transcription"] for r in subtitles]
    assert Counter(line == "" for line in lines)[True] == 1
    assert all(len(line.split()) <= 30 for line in lines)
    assert any("{laughs}" in line for line in lines)
    assert any('{"pitch": "high"' in r["generated_text"] for r in audio)
    assert sum(any("\u4e00" <= ch <= "\u9fff" for ch in line) for line in lines) >= 3
    assert sum(any(ord(ch) >= 0x1F300 for ch in line) for line in lines) >= 3
    assert any("chinese_transcription" in r for r in subtitles)
