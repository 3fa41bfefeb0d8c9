import pytest

from s2_vllm.errors import ConfigError
from s2_vllm.template import DEFAULT_TEMPLATE, PromptTemplate


def test_default_template_is_the_tutorials_s2_prompt():
    t = PromptTemplate.parse(DEFAULT_TEMPLATE, {"audio_description", "subtitle"})
    assert t.placeholders == ("audio_description", "subtitle")
    text = t.render({"audio_description": "A trembling voice.", "subtitle": "I can't."})
    assert text.startswith("Please act as an expert in the field of emotions.")
    assert "Acoustic Clues:\nA trembling voice.\n\nOriginal Subtitle:\nI can't.\n\nIntegrated Analysis:" in text


def test_braces_in_data_are_never_interpreted():
    t = PromptTemplate.parse("A: {a}\nB: {b}", {"a", "b"})
    out = t.render({"a": "{b} {0} {{x}} {", "b": '{"pitch": "high"}'})
    assert out == 'A: {b} {0} {{x}} {\nB: {"pitch": "high"}'


def test_json_examples_and_escaped_braces_in_the_template_stay_literal():
    t = PromptTemplate.parse('Answer like {"labels": ["happy"]} or {{x}}: {a}', {"a"})
    assert t.placeholders == ("a",)
    assert t.render({"a": "text"}) == 'Answer like {"labels": ["happy"]} or {x}: text'


def test_unknown_placeholder_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^prompt template uses unknown placeholder \{video\}; "
                                          r"the declared sources give \{audio_description\}, \{subtitle\}$"):
        PromptTemplate.parse("{video} {subtitle}", {"audio_description", "subtitle"})


def test_repeated_placeholder_renders_each_time():
    t = PromptTemplate.parse("{a}-{a}", {"a"})
    assert t.placeholders == ("a",)
    assert t.render({"a": "x"}) == "x-x"
