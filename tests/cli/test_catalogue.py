"""The bad-input catalogue (docs/errors.md): every case is one line on stderr and a non-zero exit,
or a documented outcome (a skipped row, a cut prompt), and nothing that existed is changed.

Each case runs the real command in-process (CliRunner) in its own folder holding two good inputs
(`audio.json`, `subtitles.json`, ids "a" and "b"), the case's own files and an unrelated file;
every file's bytes are compared before and after. Messages are asserted exactly as printed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import orjson
from helpers import rows
import pytest
from click.testing import CliRunner

from s2_vllm.cli import cli

AUDIO = [{"file_id": "a", "generated_text": "A calm, low voice with long pauses."},
         {"file_id": "b", "generated_text": "Loud and fast, the pitch rising at the end."}]
SUBTITLES = [{"file_id": "a", "english_transcription": "It's fine. Really."},
             {"file_id": "b", "english_transcription": "Get out of my room!"}]
OVERWRITE = "run with --overwrite to start over (the old file is kept as a backup) or choose another --output"
JSON_ROWS = orjson.dumps(AUDIO).decode()


def j(value) -> bytes:
    return orjson.dumps(value)


def audio_with(**fields) -> bytes:
    """The good audio file with the first row changed (a None value drops nothing: it writes null)."""
    return j([{**AUDIO[0], **fields}, AUDIO[1]])


# (case, files written beside the good inputs, arguments, the exact stderr; {d} is the case's folder)
# "--audio X" replaces the good audio file with X; every run also gets the model and -o {d}/out.jsonl.
ERRORS = [
    ("missing file", {}, ["--audio", "nope.json"], "Error: {d}/nope.json: file not found"),
    ("a folder where a file should be", {"folder.json/": b""}, ["--audio", "folder.json"],
     "Error: {d}/folder.json is a directory, not a data file"),
    ("unreadable file (symlink loop)", {"loop.json": "->loop.json"}, ["--audio", "loop.json"],
     "Error: cannot read {d}/loop.json: Too many levels of symbolic links"),
    ("empty file", {"empty.json": b""}, ["--audio", "empty.json"], "Error: {d}/empty.json is empty"),
    ("only whitespace", {"blank.json": b" \n\n\t"}, ["--audio", "blank.json"],
     "Error: {d}/blank.json contains only whitespace"),
    ("not JSON", {"text.json": b"hello world"}, ["--audio", "text.json"],
     "Error: {d}/text.json is not valid JSON: unexpected character, expected a JSON value: line 1 column 1 (char 0)"),
    ("trailing comma", {"comma.json": b'[{"file_id": "a", "generated_text": "x"},]'}, ["--audio", "comma.json"],
     "Error: {d}/comma.json is not valid JSON: trailing comma is not allowed: line 1 column 41 (char 40)"),
    ("a JSON object instead of an array", {"object.json": j(AUDIO[0])}, ["--audio", "object.json"],
     "Error: {d}/object.json must hold a JSON array of objects, but it holds a single object "
     "(keys: file_id, generated_text)"),
    ("an array of strings", {"strings.json": b'["a", "b"]'}, ["--audio", "strings.json"],
     "Error: {d}/strings.json: row 1 is a string, not an object"),
    ("an empty array", {"none.json": b"[]"}, ["--audio", "none.json"], "Error: {d}/none.json has no rows"),
    ("JSONL with one broken line", {"broken.jsonl": b"".join(j(r) + b"\n" for r in AUDIO)[:-2] + b"\n"
                                    + b'{"file_id": "c", "generated_text": "z"}\n'}, ["--audio", "broken.jsonl"],
     "Error: {d}/broken.jsonl line 2 is not valid JSON: unexpected end of data"),
    ("JSONL with an array line", {"array.jsonl": j(AUDIO[0]) + b"\n[1, 2]\n"}, ["--audio", "array.jsonl"],
     "Error: {d}/array.jsonl: line 2 is an array, not an object"),
    ("CSV row with an extra field", {"extra.csv": b"file_id,generated_text\na,x,y\n"}, ["--audio", "extra.csv"],
     "Error: {d}/extra.csv: line 2 has 3 fields but the header has 2"),
    ("misspelt text key", {"typo.json": j([{"file_id": "a", "generated_txt": "x"}])}, ["--audio", "typo.json"],
     "Error: {d}/typo.json: no row has the text key 'generated_text' (keys seen: file_id, generated_txt; "
     "did you mean 'generated_txt'?)"),
    ("misspelt id key", {"typo.json": j([{"fileid": "a", "generated_text": "x"}])}, ["--audio", "typo.json"],
     "Error: {d}/typo.json: no row has the id key 'file_id' (keys seen: fileid, generated_text; "
     "did you mean 'fileid'?)"),
    ("id key in another case", {"case.json": j([{"File_ID": "a", "generated_text": "x"}])}, ["--audio", "case.json"],
     "Error: {d}/case.json: no row has the id key 'file_id' (keys seen: File_ID, generated_text; "
     "did you mean 'File_ID'?)"),
    ("CSV without a header", {"noheader.csv": b"a,x\nb,y\n"}, ["--audio", "noheader.csv"],
     "Error: {d}/noheader.csv: no row has the id key 'file_id' (keys seen: a, x)"),
    ("a number as text", {"number.json": audio_with(generated_text=5)}, ["--audio", "number.json"],
     "Error: {d}/number.json: row 1: 'generated_text' must be a string, not a number"),
    ("a null id", {"nullid.json": audio_with(file_id=None)}, ["--audio", "nullid.json"],
     "Error: {d}/nullid.json: row 1: 'file_id' is null"),
    ("an empty id", {"emptyid.json": audio_with(file_id="  ")}, ["--audio", "emptyid.json"],
     "Error: {d}/emptyid.json: row 1 has an empty 'file_id'"),
    ("a float id", {"floatid.json": audio_with(file_id=12.0)}, ["--audio", "floatid.json"],
     "Error: {d}/floatid.json: row 1: 'file_id' must be a string or an integer, not a number (12.0)"),
    ("duplicate ids", {"dup.json": j(AUDIO + [AUDIO[0]])}, ["--audio", "dup.json"],
     "Error: {d}/dup.json: 1 id occurs more than once ('a'); pass --on-duplicate first|last to keep one occurrence"),
    ("12 and \"12\" in one file are one id", {"mixed.json": j([{"file_id": 12, "generated_text": "x"},
                                                              {"file_id": "12", "generated_text": "y"}])},
     ["--audio", "mixed.json"],
     "Error: {d}/mixed.json: 1 id occurs more than once ('12'); pass --on-duplicate first|last to keep one occurrence"),
    ("non-UTF-8 JSON", {"latin1.json": '[{"file_id": "a", "generated_text": "café"}]'.encode("latin-1")},
     ["--audio", "latin1.json"],
     "Error: {d}/latin1.json is not valid UTF-8: byte 0xe9 at offset 40 (line 1); save it as UTF-8"),
    ("non-UTF-8 CSV", {"latin1.csv": "file_id,generated_text\na,café\n".encode("latin-1")}, ["--audio", "latin1.csv"],
     "Error: {d}/latin1.csv is not valid UTF-8: byte 0xe9 at offset 28 (line 2); save it as UTF-8"),
    ("zero matched records", {"other.json": j([{"file_id": "x", "generated_text": "x"},
                                               {"file_id": "y", "generated_text": "y"}])}, ["--audio", "other.json"],
     "Error: none of the 2 ids in subtitle ({d}/subtitles.json) matched the 2 ids in audio ({d}/other.json): "
     "e.g. 'a', 'b' vs 'x', 'y'"),
    ("template with an unknown placeholder", {"c.toml": b'[prompt]\ntemplate = "{foo} {subtitle} {audio_description}"\n'},
     ["--config", "c.toml"],
     "Error: prompt template uses unknown placeholder {foo}; the declared sources give {audio_description}, {subtitle}"),
    ("template without a source's placeholder", {"c.toml": b'[prompt]\ntemplate = "Subtitle: {subtitle}"\n'},
     ["--config", "c.toml"],
     "Error: prompt template never uses {audio_description}, so its source would be read for nothing"),
    ("config with an unknown key", {"c.toml": b"[sampling]\ntemprature = 0.5\n"}, ["--config", "c.toml"],
     "Error: unknown key 'temprature' in [sampling] (did you mean 'temperature'?)"),
    ("config with an unknown table", {"c.toml": b"[sampler]\ntemperature = 0.5\n"}, ["--config", "c.toml"],
     "Error: unknown key 'sampler' in {d}/c.toml (did you mean 'sampling'?)"),
    ("config value of the wrong type", {"c.toml": b'[sampling]\ntemperature = "hot"\n'}, ["--config", "c.toml"],
     "Error: sampling.temperature must be float, not str ('hot')"),
    ("config list of the wrong type", {"c.toml": b"[sampling]\nstop = [1, 2]\n"}, ["--config", "c.toml"],
     "Error: sampling.stop must be a list of strings, not [1, 2]"),
    ("config that is not TOML", {"c.toml": b"[sampling\n"}, ["--config", "c.toml"],
     "Error: config {d}/c.toml is not valid TOML: Expected ']' at the end of a table declaration (at line 1, column 10)"),
    ("config file missing", {}, ["--config", "nope.toml"], "Error: config file not found: {d}/nope.toml"),
    ("unknown hf device", {"c.toml": b'[hf]\ndevice = "gpu"\n'}, ["--config", "c.toml"],
     "Error: hf.device must be auto, cpu, cuda or cuda:N, not 'gpu'"),
    # the same slips in every table: a wrong type, a value out of range or not among the choices
    ("[engine] value of the wrong type", {"c.toml": b'[engine]\nmax_model_len = "8192"\n'}, ["--config", "c.toml"],
     "Error: engine.max_model_len must be int, not str ('8192')"),
    ("[engine] value not among the choices", {"c.toml": b'[engine]\ndtype = "bf16"\n'}, ["--config", "c.toml"],
     "Error: engine.dtype must be one of auto, half, float16, bfloat16, float, float32, not 'bf16'"),
    ("[engine] value out of range", {"c.toml": b"[engine]\ngpu_memory_utilization = 1.5\n"}, ["--config", "c.toml"],
     "Error: engine.gpu_memory_utilization must be in (0, 1]"),
    ("[engine.extra] that is not a table", {"c.toml": b"[engine]\nextra = 5\n"}, ["--config", "c.toml"],
     "Error: engine.extra must be a table, not int (5)"),
    ("[prompt] value of the wrong type", {"c.toml": b'[prompt]\nenable_thinking = "no"\n'}, ["--config", "c.toml"],
     "Error: prompt.enable_thinking must be bool, not str ('no')"),
    ("[prompt] value not among the choices", {"c.toml": b'[prompt]\ntoo_long = "cut"\n'}, ["--config", "c.toml"],
     "Error: prompt.too_long must be one of truncate, error, not 'cut'"),
    ("[sampling] value out of range", {"c.toml": b"[sampling]\ntop_p = 0\n"}, ["--config", "c.toml"],
     "Error: sampling.top_p must be in (0, 1]"),
    ("[sampling] negative temperature", {"c.toml": b"[sampling]\ntemperature = -0.5\n"}, ["--config", "c.toml"],
     "Error: sampling.temperature must be >= 0"),
    ("[hf] value of the wrong type", {"c.toml": b'[hf]\nbatch_size = "8"\n'}, ["--config", "c.toml"],
     "Error: hf.batch_size must be int, not str ('8')"),
    ("[hf] value out of range", {"c.toml": b"[hf]\nbatch_size = 0\n"}, ["--config", "c.toml"],
     "Error: hf.batch_size must be at least 1"),
    ("[run] value of the wrong type", {"c.toml": b'[run]\nin_flight = "many"\n'}, ["--config", "c.toml"],
     "Error: run.in_flight must be int, not str ('many')"),
    ("[run] value out of range", {"c.toml": b"[run]\nin_flight = 0\n"}, ["--config", "c.toml"],
     "Error: run.in_flight must be at least 1"),
    ("[run] value not among the choices", {"c.toml": b'[run]\non_duplicate = "keep"\n'}, ["--config", "c.toml"],
     "Error: run.on_duplicate must be one of error, first, last, not 'keep'"),
    ("[parallel] value of the wrong type", {"c.toml": b'[parallel]\nreplicas = "2"\n'}, ["--config", "c.toml"],
     "Error: parallel.replicas must be int, not str ('2')"),
    ("[parallel] value out of range", {"c.toml": b"[parallel]\nmax_attempts = 0\n"}, ["--config", "c.toml"],
     "Error: parallel.max_attempts must be at least 1"),
    ("[sources.NAME] value of the wrong type", {"c.toml": b"[sources.audio]\nid_key = 5\n"}, ["--config", "c.toml"],
     "Error: sources.audio.id_key must be str, not int (5)"),
    ("[sources.NAME] value not among the choices", {"c.toml": b'[sources.audio]\nformat = "xml"\n'},
     ["--config", "c.toml"], "Error: sources.audio.format must be one of json, jsonl, csv, not 'xml'"),
    ("[sources.NAME] placeholder that is not a name", {"c.toml": b'[sources.audio]\nplaceholder = "audio desc"\n'},
     ["--config", "c.toml"],
     "Error: sources.audio.placeholder must be an identifier (letters, digits and _), not 'audio desc'"),
    ("a table that is a value", {"c.toml": b"sampling = 5\n"}, ["--config", "c.toml"],
     "Error: [sampling] in {d}/c.toml must be a table"),
    ("flag out of range", {}, ["--top-p", "0"], "Error: sampling.top_p must be in (0, 1]"),
    ("flag out of range (in flight)", {}, ["--in-flight", "0"], "Error: run.in_flight must be at least 1"),
    ("unknown source name", {}, ["--source", "video=audio.json"],
     "Error: no source named 'video' in the config (have: subtitle, audio)"),
    ("context length zero", {}, ["--max-model-len", "0"], "Error: engine.max_model_len must be at least 1"),
    ("max tokens fill the context", {}, ["--max-model-len", "8"],
     "Error: sampling.max_tokens (8) leaves no room for a prompt in max_model_len (8)"),
    ("output in a missing folder", {}, ["-o", "missing/out.jsonl"],
     "Error: folder {d}/missing does not exist; create it or choose another --output"),
    ("output is one of the inputs", {}, ["-o", "audio.json"],
     "Error: {d}/audio.json has no manifest (audio.json.manifest.json), so the config it was written with cannot be "
     "checked; " + OVERWRITE),
]


def write_files(d: Path, files: dict) -> None:
    (d / "audio.json").write_bytes(j(AUDIO))
    (d / "subtitles.json").write_bytes(j(SUBTITLES))
    (d / "notes.txt").write_text("not ours\n")
    for name, data in files.items():
        if name.endswith("/"):
            (d / name).mkdir()
        elif isinstance(data, str) and data.startswith("->"):
            os.symlink(d / data[2:], d / name)
        else:
            (d / name).write_bytes(data)


def command(model: Path, d: Path, args: list[str], *, cmd: str = "run") -> list[str]:
    """The case's arguments (file names relative to d) after the defaults, which they override."""
    paths = {"--audio", "--subtitles", "--config", "-o"}
    given = [str(d / a) if i and args[i - 1] in paths else a for i, a in enumerate(args)]
    given = [a.replace("=", f"={d}/", 1) if i and args[i - 1] == "--source" else a for i, a in enumerate(given)]
    defaults = {"--audio": str(d / "audio.json"), "--subtitles": str(d / "subtitles.json"), "--model": str(model),
                "-o": str(d / ("out.jsonl" if cmd == "run" else "prompts.jsonl")), "--max-tokens": "8"}
    argv = [cmd, *given]
    for flag, value in defaults.items():
        if flag not in args:
            argv += [flag, value]
    if cmd == "run":
        argv += ["--engine", "hf", "--temperature", "0", "--no-progress"]
    return argv


def snapshot(d: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(d)): (None if p.is_dir() or p.is_symlink() else p.read_bytes())
            for p in sorted(d.rglob("*"))}


def invoke(argv: list[str]):
    return CliRunner().invoke(cli, argv)


@pytest.mark.parametrize("case, files, args, message", ERRORS, ids=[e[0] for e in ERRORS])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(tiny_model, tmp_path, case, files, args, message):
    write_files(tmp_path, files)
    before = snapshot(tmp_path)
    result = invoke(command(tiny_model, tmp_path, args))
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    assert (result.exit_code, result.stderr) == (2, message.replace("{d}", str(tmp_path)) + "\n")
    after = snapshot(tmp_path)
    assert {k: after.get(k) for k in before} == before  # every file as it was
    assert {k for k in after if k not in before} <= {"out.jsonl.lock", "audio.json.lock"}  # at most a lock


def test_output_written_with_another_config_is_refused_and_kept(tiny_model, tmp_path):
    write_files(tmp_path, {})
    assert invoke(command(tiny_model, tmp_path, [])).exit_code == 0
    before = snapshot(tmp_path)
    result = invoke(command(tiny_model, tmp_path, ["--max-tokens", "9"]))
    assert (result.exit_code, result.stderr) == (
        2, f"Error: {tmp_path}/out.jsonl was written with another config (changed: sampling.max_tokens 8 -> 9) "
               "(--retry-cut takes a larger max_tokens); "
           f"{OVERWRITE}\n")
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# documented outcomes: the run goes on and the row says what happened


def run_ok(model: Path, d: Path, files: dict, args: list[str], **kw):
    write_files(d, files)
    before = snapshot(d)
    result = invoke(command(model, d, args, **kw))
    assert result.exit_code == 0, (result.output, result.exception)
    after = snapshot(d)
    assert {k: after.get(k) for k in before} == before
    return result


@pytest.mark.parametrize("text", [None, "", " \n\t "], ids=["null", "empty", "whitespace"])
def test_missing_text_gets_a_skipped_row(tiny_model, tmp_path, text):
    result = run_ok(tiny_model, tmp_path, {"a.json": audio_with(generated_text=text)}, ["--audio", "a.json"])
    assert "empty text: audio 1 (skipped)\nto fuse: 1 record (1 skipped)\n" in result.stdout
    skipped = [r for r in rows(tmp_path / "out.jsonl") if r["file_id"] == "a"]
    assert skipped == [{**skipped[0], "status": "skipped", "final_description": None, "finish_reason": None,
                        "error": "empty text in audio"}]


def test_a_missing_text_key_in_some_rows_is_a_skipped_row(tiny_model, tmp_path):
    result = run_ok(tiny_model, tmp_path, {"a.json": j([{"file_id": "a"}, AUDIO[1]])}, ["--audio", "a.json"])
    assert "empty text: audio 1 (skipped)\n" in result.stdout


def test_integer_and_string_ids_are_the_same_id(tiny_model, tmp_path):
    files = {"a.json": j([{"file_id": 12, "generated_text": "x"}]),
             "s.json": j([{"file_id": "12", "english_transcription": "y"}])}
    result = run_ok(tiny_model, tmp_path, files, ["--audio", "a.json", "--subtitles", "s.json"])
    assert result.stdout.startswith("joined 1 record from subtitle (1 row) and audio (1 row)\n")
    assert [r["file_id"] for r in rows(tmp_path / "out.jsonl")] == ["12"]  # ids are written as strings


@pytest.mark.parametrize("keep, text", [("first", AUDIO[0]["generated_text"]), ("last", "again")])
def test_duplicates_can_keep_one_occurrence(tiny_model, tmp_path, keep, text):
    files = {"dup.json": j(AUDIO + [{"file_id": "a", "generated_text": "again"}])}
    result = run_ok(tiny_model, tmp_path, files, ["--audio", "dup.json", "--on-duplicate", keep], cmd="render")
    assert f"duplicates: audio 1 (kept {keep})\n" in result.stdout
    assert text in rows(tmp_path / "prompts.jsonl")[0]["prompt"]


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv"])
def test_a_byte_order_mark_is_ignored(tiny_model, tmp_path, fmt):
    data = {"json": j(AUDIO), "jsonl": b"".join(j(r) + b"\n" for r in AUDIO),
            "csv": b"file_id,generated_text\n" + b"".join(f'{r["file_id"]},"{r["generated_text"]}"\n'.encode()
                                                          for r in AUDIO)}[fmt]
    result = run_ok(tiny_model, tmp_path, {f"bom.{fmt}": b"\xef\xbb\xbf" + data}, ["--audio", f"bom.{fmt}"],
                    cmd="render")
    assert result.stdout.startswith("joined 2 records from subtitle (2 rows) and audio (2 rows)\n")


def test_json_lines_in_a_json_file_are_read_as_json_lines(tiny_model, tmp_path):
    result = run_ok(tiny_model, tmp_path, {"lines.json": b"".join(j(r) + b"\n" for r in AUDIO)},
                    ["--audio", "lines.json"], cmd="render")
    assert result.stdout.startswith("joined 2 records from subtitle (2 rows) and audio (2 rows)\n")


def test_braces_in_data_stay_as_they_are(tiny_model, tmp_path):
    text = 'He said "{subtitle}" and {{x}}, then {"json": [1, 2]} and a lone } or {'
    run_ok(tiny_model, tmp_path, {"a.json": audio_with(generated_text=text)}, ["--audio", "a.json"], cmd="render")
    prompt = rows(tmp_path / "prompts.jsonl")[0]["prompt"]
    assert f"Acoustic Clues:\n{text}\n\nOriginal Subtitle:\n{SUBTITLES[0]['english_transcription']}\n" in prompt


def test_chinese_and_emoji_text_reach_the_model_and_the_checkpoint_intact(tiny_model, tmp_path):
    audio, subtitle = "她的声音有点发抖，但还是努力笑着 😢🎉 ❤️", "没关系，我很好。👍"
    files = {"a.json": audio_with(generated_text=audio),
             "s.json": j([{**SUBTITLES[0], "english_transcription": subtitle}, SUBTITLES[1]])}
    run_ok(tiny_model, tmp_path, files, ["--audio", "a.json", "--subtitles", "s.json"], cmd="render")
    prompt = rows(tmp_path / "prompts.jsonl")[0]["prompt"]
    assert f"Acoustic Clues:\n{audio}\n\nOriginal Subtitle:\n{subtitle}\n" in prompt
    (tmp_path / "run").mkdir()
    run_ok(tiny_model, tmp_path / "run", files, ["--audio", "a.json", "--subtitles", "s.json"])
    out = rows(tmp_path / "run" / "out.jsonl")
    assert [r["status"] in ("ok", "length") for r in out] == [True, True]


LONG = " ".join(["The voice trembles, rises and falls."] * 200)


def test_a_prompt_over_the_context_is_cut_by_default(tiny_model, tmp_path):
    result = run_ok(tiny_model, tmp_path, {"a.json": audio_with(generated_text=LONG)},
                    ["--audio", "a.json", "--max-model-len", "256"])
    assert result.stderr == ""
    row = rows(tmp_path / "out.jsonl")[0]
    assert row["truncated"] == ["audio"] and row["status"] in ("ok", "length")
    assert row["prompt_tokens"] <= 256 - 8


def test_a_prompt_over_the_context_is_an_error_row_with_too_long_error(tiny_model, tmp_path):
    result = run_ok(tiny_model, tmp_path, {"a.json": audio_with(generated_text=LONG)},
                    ["--audio", "a.json", "--max-model-len", "256", "--too-long", "error"])
    row = rows(tmp_path / "out.jsonl")[0]
    assert (row["status"], row["final_description"], row["finish_reason"]) == ("error", None, None)
    assert re.fullmatch(r"prompt has \d{4} tokens; the limit is 248", row["error"]), row["error"]
    assert re.search(r"\n\d records? failed: `s2-vllm status` counts them, --retry-failed runs them again\n",
                     result.stdout)
