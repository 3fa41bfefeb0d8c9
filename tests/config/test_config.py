import dataclasses
from hashlib import sha256

import pytest

from s2_vllm.config import TABLES, Config, SourceSpec, config_from_dict, load_config
from s2_vllm.config.schema import specs
from s2_vllm.errors import ConfigError
from s2_vllm.template import DEFAULT_TEMPLATE
from helpers import REPO

CONFIGS = sorted(REPO.glob("configs/*.toml"))


def test_defaults_reproduce_the_tutorial():
    config = Config()
    config.validate()
    assert [(s.name, s.placeholder, s.id_key, s.text_key) for s in config.sources] == [
        ("subtitle", "subtitle", "file_id", "english_transcription"),
        ("audio", "audio_description", "file_id", "generated_text"),
    ]
    assert config.engine.model == "Qwen/Qwen3-8B"
    assert config.prompt.enable_thinking is False
    assert (config.sampling.temperature, config.sampling.top_p, config.sampling.top_k) == (0.7, 0.8, 20)


def test_unknown_keys_name_the_key_and_a_close_match():
    with pytest.raises(ConfigError, match=r"^unknown key 'max_token' in \[sampling\] \(did you mean 'max_tokens'\?\)$"):
        config_from_dict({"sampling": {"max_token": 5}})
    with pytest.raises(ConfigError, match=r"^unknown key 'sampler' in cfg.toml \(did you mean 'sampling'\?\)$"):
        config_from_dict({"sampler": {}}, "cfg.toml")
    with pytest.raises(ConfigError, match=r"^unknown key 'txt_key' in \[sources.audio\] \(did you mean 'text_key'\?\)$"):
        config_from_dict({"sources": {"audio": {"txt_key": "x"}}})


def test_wrong_types_are_rejected():
    with pytest.raises(ConfigError, match=r"^sampling.max_tokens must be int, not str \('512'\)$"):
        config_from_dict({"sampling": {"max_tokens": "512"}})
    with pytest.raises(ConfigError, match=r"^prompt.enable_thinking must be bool, not int \(1\)$"):
        config_from_dict({"prompt": {"enable_thinking": 1}})
    assert config_from_dict({"sampling": {"temperature": 1}}).sampling.temperature == 1


def test_sources_and_template_must_agree():
    config = config_from_dict({
        "sources": {"video": {"text_key": "caption"}, "subtitle": {"text_key": "english"}},
        "prompt": {"template": "Video: {video}\nSubtitle: {subtitle}"},
    })
    config.validate()
    assert config.sources[0].placeholder == "video"
    unused = config_from_dict({"sources": {"video": {}, "subtitle": {}}, "prompt": {"template": "{subtitle}"}})
    with pytest.raises(ConfigError, match=r"never uses \{video\}"):
        unused.validate()


def test_fingerprint_ignores_speed_knobs():
    a, b = Config(), Config()
    b.engine.gpu_memory_utilization = 0.5
    b.engine.tensor_parallel_size = 4
    b.hf.batch_size = 1
    b.run.in_flight = 7
    assert a.fingerprint() == b.fingerprint()
    b.sampling.max_tokens = 10
    assert a.fingerprint() != b.fingerprint()


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="^config file not found: nope.toml$"):
        load_config("nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[sampling\n")
    with pytest.raises(ConfigError, match=r"is not valid TOML"):
        load_config(bad)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_validate(path):
    load_config(path).validate()


# The default fingerprint as s2-vllm wrote it before the schema existed: checkpoints made then still resume.
BEFORE_THE_SCHEMA = {
    "model": "Qwen/Qwen3-8B", "tokenizer": None, "revision": None, "dtype": "auto", "quantization": None,
    "max_model_len": None, "prompt_template": DEFAULT_TEMPLATE, "system_prompt": None, "enable_thinking": False,
    "too_long": "truncate",
    "sampling": {"max_tokens": 1024, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.0,
                 "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "stop": [], "seed": 0,
                 "ignore_eos": False},
    "sources": [{"name": "subtitle", "placeholder": "subtitle", "id_key": "file_id", "text_key": "english_transcription"},
                {"name": "audio", "placeholder": "audio_description", "id_key": "file_id",
                 "text_key": "generated_text"}],
}


def test_the_fingerprint_is_the_one_written_before_the_schema():
    assert Config().fingerprint() == BEFORE_THE_SCHEMA
    marked = Config().fingerprint(stage="x", marks={"v": 1}, chat_template="{{ messages }}")
    assert marked == {**BEFORE_THE_SCHEMA, "stage": "x", "v": 1,
                      "chat_template_sha": sha256(b"{{ messages }}").hexdigest()}
    with pytest.raises(ValueError, match="may not replace what the fingerprint holds: model"):
        Config().fingerprint(stage="x", marks={"model": "other"})


def _other(spec):
    """A valid value other than the key's default."""
    m, default = spec.meta, spec.default
    if m.choices is not None:
        return next(c for c in m.choices if c != default)
    if spec.base is bool:
        return not default
    if spec.base is list:
        return ["x"]
    if spec.base is dict:
        return {"block_size": 16}
    if spec.base is str:
        return "cuda:1" if m.pattern and "cuda" in m.pattern else "other"
    if spec.base is int:
        return (default or m.min or 1) + 1
    return 0.5 if default != 0.5 else 0.25


@pytest.mark.parametrize("table, spec", [(t, s) for t, c in TABLES.items() for s in specs(c, t).values()],
                         ids=lambda x: x if isinstance(x, str) else x.name)
def test_a_key_changes_the_fingerprint_exactly_when_the_schema_marks_it(table, spec):
    changed = Config()
    setattr(changed, table, dataclasses.replace(getattr(changed, table), **{spec.name: _other(spec)}))
    assert (changed.fingerprint() != Config().fingerprint()) == (spec.meta.fp is not None)


def test_a_source_key_changes_the_fingerprint_exactly_when_the_schema_marks_it():
    for spec in specs(SourceSpec, "sources").values():
        changed = Config()
        changed.sources = [dataclasses.replace(changed.sources[0], **{spec.name: "other"}), changed.sources[1]]
        assert (changed.fingerprint() != Config().fingerprint()) == (spec.meta.fp is not None), spec.name
