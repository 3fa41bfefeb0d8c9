from pathlib import Path

import pytest

from s2_vllm.config import Config, config_from_dict, load_config
from s2_vllm.errors import ConfigError

CONFIGS = sorted(Path(__file__).parent.parent.glob("configs/*.toml"))


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
