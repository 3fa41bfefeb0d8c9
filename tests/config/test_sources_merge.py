"""A `[sources.NAME]` table changes one source; the default sources the prompt still uses stay."""

import re
import tomllib

import orjson
from click.testing import CliRunner

from s2_vllm.cli import cli
from s2_vllm.config import config_from_dict, load_config
from helpers import REPO

README = REPO / "README.md"


def sources(config) -> list[tuple[str, str, str, str]]:
    return [(s.name, s.placeholder, s.id_key, s.text_key) for s in config.sources]


def mer_toml() -> str:
    """The TOML the README's "Input formats" section gives for MER's subtitle_chieng.csv."""
    section = re.search(r"^## Input formats\n(.*?)^## ", README.read_text(encoding="utf-8"), re.DOTALL | re.MULTILINE)[1]
    before, toml = re.search(r"(.*)```toml\n(.*?)```", section, re.DOTALL).groups()
    assert "subtitle_chieng.csv" in before.rstrip().split("\n\n")[-1]  # the fence is the MER paragraph's
    return toml


def test_the_readme_mer_config_renders_with_the_default_audio_source(tiny_model, tmp_path):
    (tmp_path / "mer.toml").write_text(mer_toml(), encoding="utf-8")
    (tmp_path / "subtitle_chieng.csv").write_text(
        "name,chinese,english\n"
        "sample_00000001,我很高兴,I am so happy today\n"
        "sample_00000002,别碰我,Do not touch me\n"
        "sample_00000003,只在字幕里,only in the subtitles\n", encoding="utf-8")
    (tmp_path / "audio.json").write_bytes(orjson.dumps([
        {"file_id": "sample_00000001", "generated_text": "A bright, rising voice."},
        {"file_id": "sample_00000002", "generated_text": "A loud, trembling shout."},
    ]))
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(cli, [
        "render", "--config", str(tmp_path / "mer.toml"), "--audio", str(tmp_path / "audio.json"),
        "--subtitles", str(tmp_path / "subtitle_chieng.csv"), "-o", str(out), "--model", str(tiny_model)])
    assert result.exit_code == 0, result.output
    rows = {row["file_id"]: row for row in map(orjson.loads, out.read_bytes().splitlines())}
    assert sorted(rows) == ["sample_00000001", "sample_00000002"]
    for file_id, subtitle, description in [("sample_00000001", "I am so happy today", "A bright, rising voice."),
                                           ("sample_00000002", "Do not touch me", "A loud, trembling shout.")]:
        prompt = rows[file_id]["prompt"]
        assert f"Acoustic Clues:\n{description}\n" in prompt and f"Original Subtitle:\n{subtitle}\n" in prompt
        assert "我" not in prompt and "别" not in prompt


def test_a_default_source_table_starts_from_that_default():
    config = config_from_dict({"sources": {"audio": {"text_key": "x"}}})
    config.validate()
    assert sources(config) == [("subtitle", "subtitle", "file_id", "english_transcription"),
                               ("audio", "audio_description", "file_id", "x")]
    assert sources(config_from_dict(tomllib.loads(mer_toml()))) == [
        ("audio", "audio_description", "file_id", "generated_text"), ("subtitle", "subtitle", "name", "english")]


def test_defaults_the_template_does_not_use_are_dropped(tmp_path):
    # [prompt] after [sources]: the template that decides is the file's, not the default one
    (tmp_path / "c.toml").write_text('[sources.description]\ntext_key = "t"\n\n[prompt]\ntemplate = "{description}"\n')
    config = load_config(tmp_path / "c.toml")
    config.validate()
    assert sources(config) == [("description", "description", "file_id", "t")]


def test_a_new_source_joins_the_defaults_the_template_uses():
    config = config_from_dict({"sources": {"video": {"text_key": "caption"}},
                               "prompt": {"template": "{audio_description} {subtitle} {video}"}})
    config.validate()
    assert sources(config) == [("subtitle", "subtitle", "file_id", "english_transcription"),
                               ("audio", "audio_description", "file_id", "generated_text"),
                               ("video", "video", "file_id", "caption")]


def test_a_declared_source_that_fills_a_default_placeholder_replaces_that_default():
    config = config_from_dict({"sources": {"subs": {"placeholder": "subtitle", "text_key": "english"}}})
    config.validate()
    assert [s.name for s in config.sources] == ["audio", "subs"]
