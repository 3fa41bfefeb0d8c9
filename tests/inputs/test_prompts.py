"""Chat template, thinking split and the length policy, on the tiny model's real tokenizer."""

import pytest

from s2_vllm.config import Config
from s2_vllm.engines.base import Completion
from s2_vllm.errors import ConfigError
from s2_vllm.prompts import PromptBuilder, iter_prompts
from s2_vllm.records import Record
from s2_vllm.results import row_for_completion, split_thinking


def record(audio="A shaky, quiet voice {\"pitch\": \"high\"}.", subtitle="我没事 😢 {laughs}", rid="r1"):
    return Record(rid, {"audio": audio, "subtitle": subtitle})


def test_fast_path_equals_the_chat_template(tokenizer):
    config = Config()
    config.prompt.system = "You are careful."
    builder = PromptBuilder(config, tokenizer, max_model_len=4096)
    assert builder.prefix is not None
    [prompt] = builder.build([record()])
    content = config.template().render({"audio_description": record().texts["audio"],
                                        "subtitle": record().texts["subtitle"]})
    expected = tokenizer.apply_chat_template(
        [{"role": "system", "content": "You are careful."}, {"role": "user", "content": content}],
        tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert prompt.text == expected
    assert prompt.token_ids == tokenizer(expected, add_special_tokens=False)["input_ids"]
    assert '{"pitch": "high"}' in prompt.text and "我没事 😢 {laughs}" in prompt.text
    assert prompt.text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_enable_thinking_leaves_the_think_block_to_the_model(tokenizer):
    config = Config()
    config.prompt.enable_thinking = True
    [prompt] = PromptBuilder(config, tokenizer, 4096).build([record()])
    assert prompt.text.endswith("<|im_start|>assistant\n")


def test_skipped_records_are_not_rendered(tokenizer):
    builder = PromptBuilder(Config(), tokenizer, 4096)
    [prompt] = builder.build([Record("x", {"audio": "a", "subtitle": ""}, "empty text in subtitle")])
    assert (prompt.token_ids, prompt.skip_reason) == (None, "empty text in subtitle")


def test_too_long_truncates_the_longest_clue_and_keeps_the_template(tokenizer):
    config = Config()
    config.sampling.max_tokens = 100
    long_audio = "The voice trembles and rises. " * 200
    builder = PromptBuilder(config, tokenizer, max_model_len=400)
    [prompt] = builder.build([record(audio=long_audio)])
    assert prompt.truncated == ("audio",)
    assert len(prompt.token_ids) <= 300
    assert "Integrated Analysis:" in prompt.text and "我没事 😢 {laughs}" in prompt.text
    short = builder.build([record()])[0]
    assert short.truncated == ()


def test_too_long_error_policy_writes_an_error_instead(tokenizer):
    config = Config()
    config.sampling.max_tokens = 100
    config.prompt.too_long = "error"
    [prompt] = PromptBuilder(config, tokenizer, 400).build([record(audio="loud " * 2000)])
    assert prompt.token_ids is None
    assert prompt.error.startswith("prompt has ") and prompt.error.endswith("tokens; the limit is 300")


def test_max_tokens_must_leave_room(tokenizer):
    config = Config()
    config.sampling.max_tokens = 4096
    with pytest.raises(ConfigError, match=r"^sampling.max_tokens \(4096\) leaves no room for a prompt in "
                                          r"max_model_len \(4096\)$"):
        PromptBuilder(config, tokenizer, 4096)


def test_iter_prompts_keeps_order_across_chunks(tokenizer):
    builder = PromptBuilder(Config(), tokenizer, 4096)
    records = [record(rid=f"r{i}") for i in range(7)]
    assert [p.file_id for p in iter_prompts(builder, records, chunk=3)] == [f"r{i}" for i in range(7)]


@pytest.mark.parametrize("text, expected", [
    ("<think>\nhmm\n</think>\n\nSad.", ("hmm", "Sad.", True)),
    ("Sad.", (None, "Sad.", False)),
    ("\n\n</think>\n\nAngry", ("", "Angry", True)),
])
def test_split_thinking(text, expected):
    assert split_thinking(text) == expected


def test_rows_from_completions():
    from s2_vllm.prompts import Prompt

    prompt = Prompt("id1", "text", [1, 2, 3], truncated=("audio",))
    ok = row_for_completion(prompt, Completion("id1", "<think>a</think> Calm.", "stop", 3, 9), thinking=True)
    assert (ok.status, ok.reasoning, ok.final_description, ok.truncated) == ("ok", "a", "Calm.", ["audio"])
    cut = row_for_completion(prompt, Completion("id1", "<think>still thinking", "length", 3, 9), thinking=True)
    assert (cut.status, cut.reasoning, cut.final_description) == ("length", "still thinking", "")
    plain = row_for_completion(prompt, Completion("id1", "Calm.", "length", 3, 9), thinking=False)
    assert (plain.status, plain.final_description, plain.reasoning) == ("length", "Calm.", None)
    assert ok.prompt_sha == prompt.sha and len(ok.prompt_sha) == 16
