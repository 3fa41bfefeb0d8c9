"""records.py: reading JSON / JSONL / CSV sources and joining them on id."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from s2_vllm.config import SourceSpec
from s2_vllm.errors import InputError
from s2_vllm.records import JoinReport, Record, join, load_source, read_rows


def write_json(path: Path, rows: object) -> Path:
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def sub(path: Path, id_key: str = "file_id", text_key: str = "english_transcription", fmt: str | None = None) -> SourceSpec:
    return SourceSpec("subtitle", "subtitle", id_key, text_key, str(path), fmt)


def aud(path: Path, id_key: str = "file_id", text_key: str = "generated_text", fmt: str | None = None) -> SourceSpec:
    return SourceSpec("audio", "audio_description", id_key, text_key, str(path), fmt)


def subs(path: Path, ids: list[object], name: str = "subs.json") -> Path:
    return write_json(path / name, [{"file_id": i, "english_transcription": f"sub {i}"} for i in ids])


def auds(path: Path, ids: list[object], name: str = "audio.json") -> Path:
    return write_json(path / name, [{"file_id": i, "generated_text": f"aud {i}"} for i in ids])


def msg(text: str) -> str:
    return "^" + re.escape(text) + "$"


# ---------------------------------------------------------------- formats


def test_json_array(tmp_path: Path) -> None:
    p = write_json(tmp_path / "a.json", [{"file_id": "s1", "generated_text": "calm"}, {"file_id": "s2", "generated_text": "angry"}])
    assert read_rows(p) == [{"file_id": "s1", "generated_text": "calm"}, {"file_id": "s2", "generated_text": "angry"}]
    assert load_source(aud(p)) == [("s1", "calm"), ("s2", "angry")]


def test_jsonl_with_blank_lines(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    p.write_text('{"file_id": "s1", "generated_text": "calm"}\n\n{"file_id": "s2", "generated_text": "sad"}\r\n\n', encoding="utf-8")
    assert load_source(aud(p)) == [("s1", "calm"), ("s2", "sad")]


def test_csv_name_chinese_english(tmp_path: Path) -> None:
    p = tmp_path / "subtitle_chieng.csv"
    p.write_text('name,chinese,english\nsample_00000001,你好,"Hello, there"\nsample_00000002,再见,"He said ""bye""\nand left"\n', encoding="utf-8")
    assert read_rows(p) == [
        {"name": "sample_00000001", "chinese": "你好", "english": "Hello, there"},
        {"name": "sample_00000002", "chinese": "再见", "english": 'He said "bye"\nand left'},
    ]
    assert load_source(sub(p, id_key="name", text_key="english")) == [
        ("sample_00000001", "Hello, there"),
        ("sample_00000002", 'He said "bye"\nand left'),
    ]


def test_csv_short_row_is_missing_text_and_long_row_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "s.csv"
    p.write_text("name,english\n\na\nb,hi\n", encoding="utf-8")
    assert load_source(sub(p, id_key="name", text_key="english")) == [("a", None), ("b", "hi")]
    p.write_text("name,english\na,hi\nb,hi,extra\n", encoding="utf-8")
    with pytest.raises(InputError, match=msg(f"{p}: line 3 has 3 fields but the header has 2")):
        read_rows(p)


def test_tsv(tmp_path: Path) -> None:
    p = tmp_path / "s.tsv"
    p.write_text("name\tenglish\na\thello, world\n", encoding="utf-8")
    assert read_rows(p) == [{"name": "a", "english": "hello, world"}]


def test_json_file_that_is_really_jsonl(tmp_path: Path) -> None:
    rows = [{"file_id": "s1", "generated_text": "他很生气 😡"}, {"file_id": "s2", "generated_text": "y"}]
    p = write_jsonl(tmp_path / "a.json", rows)
    p.write_text("\n  " + p.read_text(encoding="utf-8"), encoding="utf-8")
    assert load_source(aud(p)) == [("s1", "他很生气 😡"), ("s2", "y")]


def test_jsonl_file_that_is_really_an_array(tmp_path: Path) -> None:
    p = write_json(tmp_path / "a.jsonl", [{"file_id": "s1", "generated_text": "x"}])
    assert load_source(aud(p)) == [("s1", "x")]


def test_sniffs_content_without_known_extension(tmp_path: Path) -> None:
    rows = [{"file_id": "s1", "generated_text": "x"}]
    assert read_rows(write_json(tmp_path / "a.txt", rows)) == rows
    assert read_rows(write_jsonl(tmp_path / "b.data", rows)) == rows
    (tmp_path / "c").write_text("file_id,generated_text\ns1,x\n", encoding="utf-8")
    assert read_rows(tmp_path / "c") == rows


def test_explicit_format_beats_extension(tmp_path: Path) -> None:
    p = tmp_path / "a.json"
    p.write_text("file_id,generated_text\ns1,x\n", encoding="utf-8")
    assert load_source(aud(p, fmt="csv")) == [("s1", "x")]


def test_bom_is_stripped(tmp_path: Path) -> None:
    rows = [{"file_id": "s1", "generated_text": "x"}]
    for name, body in [("a.json", json.dumps(rows)), ("a.jsonl", json.dumps(rows[0]) + "\n"), ("a.csv", "file_id,generated_text\ns1,x\n")]:
        (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + body.encode())
        assert read_rows(tmp_path / name) == rows, name


def test_unicode_and_braces_preserved(tmp_path: Path) -> None:
    text = "他很生气 😡 {subtitle} {{x}} }{ \n  trailing  "
    p = write_json(tmp_path / "a.json", [{"file_id": "s1", "generated_text": text}])
    c = tmp_path / "a.csv"
    c.write_text(f'file_id,generated_text\ns1,"{text}"\n', encoding="utf-8")
    assert load_source(aud(p)) == [("s1", text)]
    assert load_source(aud(c)) == [("s1", text)]


# ---------------------------------------------------------------- file errors


def test_non_utf8(tmp_path: Path) -> None:
    for name, body in [("a.json", b'[{"file_id": "s1", "generated_text": "caf\xe9"}]'), ("a.jsonl", b'{"file_id": "s1"}\n{"file_id": "\xe9"}\n'), ("a.csv", b"file_id,generated_text\ns1,caf\xe9\n")]:
        p = tmp_path / name
        p.write_bytes(body)
        offset = body.index(b"\xe9")
        line = body[:offset].count(b"\n") + 1
        with pytest.raises(InputError, match=msg(f"{p} is not valid UTF-8: byte 0xe9 at offset {offset} (line {line}); save it as UTF-8")):
            read_rows(p)


def test_empty_and_whitespace_files(tmp_path: Path) -> None:
    for name in ["a.json", "a.jsonl", "a.csv"]:
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(InputError, match=msg(f"{tmp_path / name} is empty")):
            read_rows(tmp_path / name)
    (tmp_path / "w.json").write_text(" \n\t\n")
    with pytest.raises(InputError, match=msg(f"{tmp_path / 'w.json'} contains only whitespace")):
        read_rows(tmp_path / "w.json")


def test_empty_array_has_no_rows(tmp_path: Path) -> None:
    p = write_json(tmp_path / "a.json", [])
    assert read_rows(p) == []
    with pytest.raises(InputError, match=msg(f"{p} has no rows")):
        load_source(aud(p))


def test_json_object_not_array(tmp_path: Path) -> None:
    p = tmp_path / "a.json"
    p.write_text('{\n  "s1": "calm",\n  "s2": "sad"\n}\n')
    with pytest.raises(InputError, match=msg(f"{p} must hold a JSON array of objects, but it holds a single object (keys: s1, s2)")):
        read_rows(p)
    p.write_text("42")
    with pytest.raises(InputError, match=msg(f"{p} must hold a JSON array of objects, but it holds a number")):
        read_rows(p)


def test_not_json(tmp_path: Path) -> None:
    p = tmp_path / "a.json"
    p.write_text('[{"file_id": "s1",]')
    with pytest.raises(InputError, match=rf"^{re.escape(str(p))} is not valid JSON: .*line 1 column \d+"):
        read_rows(p)


def test_broken_jsonl_line(tmp_path: Path) -> None:
    for name in ["a.jsonl", "a.json"]:
        p = tmp_path / name
        p.write_text('{"file_id": "s1"}\n\n{"file_id": "s2"}\n{"file_id": "s3",\n{"file_id": "s4"}\n')
        with pytest.raises(InputError, match=rf"^{re.escape(str(p))} line 4 is not valid JSON: \S"):
            read_rows(p)


def test_row_not_object(tmp_path: Path) -> None:
    p = write_json(tmp_path / "a.json", [{"file_id": "s1"}, ["s2", "x"]])
    with pytest.raises(InputError, match=msg(f"{p}: row 2 is an array, not an object")):
        read_rows(p)
    p = tmp_path / "a.jsonl"
    p.write_text('{"file_id": "s1"}\n\n"s2"\n')
    with pytest.raises(InputError, match=msg(f"{p}: line 3 is a string, not an object")):
        read_rows(p)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=msg(f"{tmp_path / 'nope.json'}: file not found")):
        read_rows(tmp_path / "nope.json")
    with pytest.raises(InputError, match=msg(f"{tmp_path} is a directory, not a data file")):
        read_rows(tmp_path)
    with pytest.raises(InputError, match=msg("no file given for source 'audio'")):
        load_source(SourceSpec("audio", "audio_description"))


def test_unknown_format(tmp_path: Path) -> None:
    p = subs(tmp_path, ["a"])
    with pytest.raises(InputError, match=msg(f"{p}: unknown format 'xml' (use json, jsonl or csv)")):
        read_rows(p, "xml")


# ---------------------------------------------------------------- keys and values


def test_wrong_id_key_suggests(tmp_path: Path) -> None:
    p = write_json(tmp_path / "audio.json", [{"id": "s1", "generated_text": "x"}])
    with pytest.raises(InputError, match=msg(f"{p}: no row has the id key 'file_id' (keys seen: id, generated_text; did you mean 'id'?)")):
        load_source(aud(p))
    c = tmp_path / "subtitle_chieng.csv"
    c.write_text("name,chinese,english\na,你,you\n", encoding="utf-8")
    with pytest.raises(InputError, match=msg(f"{c}: no row has the id key 'names' (keys seen: name, chinese, english; did you mean 'name'?)")):
        load_source(sub(c, id_key="names", text_key="english"))


def test_wrong_text_key_suggests(tmp_path: Path) -> None:
    p = write_json(tmp_path / "audio.json", [{"file_id": "s1", "generated_txt": "x"}])
    with pytest.raises(InputError, match=msg(f"{p}: no row has the text key 'generated_text' (keys seen: file_id, generated_txt; did you mean 'generated_txt'?)")):
        load_source(aud(p))
    p = write_json(tmp_path / "audio.json", [{"file_id": "s1", "zzz": "x"}])
    with pytest.raises(InputError, match=msg(f"{p}: no row has the text key 'generated_text' (keys seen: file_id, zzz)")):
        load_source(aud(p))


def test_id_missing_from_one_row(tmp_path: Path) -> None:
    p = write_json(tmp_path / "a.json", [{"file_id": "s1", "generated_text": "x"}, {"generated_text": "y"}])
    with pytest.raises(InputError, match=msg(f"{p}: row 2 has no id key 'file_id'")):
        load_source(aud(p))
    p = tmp_path / "a.jsonl"
    p.write_text('{"file_id": "s1", "generated_text": "x"}\n\n{"id": "s2", "generated_text": "y"}\n')
    with pytest.raises(InputError, match=msg(f"{p}: line 3 has no id key 'file_id'")):
        load_source(aud(p))


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (1.5, "'file_id' must be a string or an integer, not a number (1.5)"),
        (True, "'file_id' must be a string or an integer, not a boolean (True)"),
        (["s"], "'file_id' must be a string or an integer, not an array (['s'])"),
        (None, "'file_id' is null"),
    ],
)
def test_bad_id_types(tmp_path: Path, value: object, error: str) -> None:
    p = write_json(tmp_path / "a.json", [{"file_id": "s1", "generated_text": "x"}, {"file_id": value, "generated_text": "y"}])
    with pytest.raises(InputError, match=msg(f"{p}: row 2: {error}")):
        load_source(aud(p))


def test_empty_id(tmp_path: Path) -> None:
    p = write_json(tmp_path / "a.json", [{"file_id": "  ", "generated_text": "x"}])
    with pytest.raises(InputError, match=msg(f"{p}: row 1 has an empty 'file_id'")):
        load_source(aud(p))


@pytest.mark.parametrize(("value", "kind"), [(3, "a number"), (["a"], "an array"), ({"t": "a"}, "an object"), (False, "a boolean")])
def test_non_string_text(tmp_path: Path, value: object, kind: str) -> None:
    p = write_json(tmp_path / "a.json", [{"file_id": "s1", "generated_text": "x"}, {"file_id": "s2", "generated_text": value}])
    with pytest.raises(InputError, match=msg(f"{p}: row 2: 'generated_text' must be a string, not {kind}")):
        load_source(aud(p))


def test_ids_are_stripped_strings(tmp_path: Path) -> None:
    p = write_json(tmp_path / "a.json", [{"file_id": 12, "generated_text": "x"}, {"file_id": " s2\t", "generated_text": "y"}])
    assert load_source(aud(p)) == [("12", "x"), ("s2", "y")]


# ---------------------------------------------------------------- the join


def test_join_two_sources(tmp_path: Path) -> None:
    records, report = join([sub(subs(tmp_path, ["a", "b", "c"])), aud(auds(tmp_path, ["b", "a", "d", "e"]))])
    assert records == [
        Record("a", {"subtitle": "sub a", "audio": "aud a"}),
        Record("b", {"subtitle": "sub b", "audio": "aud b"}),
    ]
    assert report == JoinReport(
        sources=["subtitle", "audio"],
        rows={"subtitle": 3, "audio": 4},
        matched=2,
        only_in={"subtitle": 1, "audio": 2},
        duplicates={"subtitle": 0, "audio": 0},
        empty={"subtitle": 0, "audio": 0},
        skipped=0,
        on_duplicate="error",
    )
    assert report.lines() == [
        "joined 2 records from subtitle (3 rows) and audio (4 rows)",
        "not in every source: subtitle 1, audio 2 (dropped)",
        "duplicates: none",
        "empty text: none",
        "to fuse: 2 records",
    ]


def test_order_follows_first_spec(tmp_path: Path) -> None:
    s, a = subs(tmp_path, ["c", "a", "b"]), auds(tmp_path, ["a", "b", "c"])
    assert [r.file_id for r in join([sub(s), aud(a)])[0]] == ["c", "a", "b"]
    assert [r.file_id for r in join([aud(a), sub(s)])[0]] == ["a", "b", "c"]


def test_int_and_string_ids_join(tmp_path: Path) -> None:
    records, report = join([sub(subs(tmp_path, [1, "2", 3])), aud(auds(tmp_path, ["1", 2, " 3 "]))])
    assert [(r.file_id, r.texts["audio"]) for r in records] == [("1", "aud 1"), ("2", "aud 2"), ("3", "aud  3 ")]
    assert report.matched == 3


def test_empty_texts_are_skipped(tmp_path: Path) -> None:
    s = write_json(tmp_path / "subs.json", [
        {"file_id": "a", "english_transcription": None},
        {"file_id": "b", "english_transcription": "  \n"},
        {"file_id": "c"},
        {"file_id": "d", "english_transcription": ""},
        {"file_id": "e", "english_transcription": " ok "},
    ])
    a = write_json(tmp_path / "audio.json", [{"file_id": i, "generated_text": None if i == "d" else f"aud {i}"} for i in "abcde"])
    records, report = join([sub(s), aud(a)])
    assert records == [
        Record("a", {"subtitle": "", "audio": "aud a"}, "empty text in subtitle"),
        Record("b", {"subtitle": "", "audio": "aud b"}, "empty text in subtitle"),
        Record("c", {"subtitle": "", "audio": "aud c"}, "empty text in subtitle"),
        Record("d", {"subtitle": "", "audio": ""}, "empty text in subtitle, audio"),
        Record("e", {"subtitle": " ok ", "audio": "aud e"}),
    ]
    assert report.empty == {"subtitle": 4, "audio": 1}
    assert report.skipped == 4
    assert report.lines()[3:] == ["empty text: subtitle 4, audio 1 (skipped)", "to fuse: 1 record (4 skipped)"]


def test_three_sources(tmp_path: Path) -> None:
    v = write_jsonl(tmp_path / "video.jsonl", [{"file_id": i, "caption": f"vid {i}"} for i in ["x", "b", "a"]])
    specs = [sub(subs(tmp_path, ["a", "b", "c"])), aud(auds(tmp_path, ["a", "b", "x"])), SourceSpec("video", "video", "file_id", "caption", str(v))]
    records, report = join(specs)
    assert records == [
        Record("a", {"subtitle": "sub a", "audio": "aud a", "video": "vid a"}),
        Record("b", {"subtitle": "sub b", "audio": "aud b", "video": "vid b"}),
    ]
    assert report.only_in == {"subtitle": 1, "audio": 1, "video": 1}
    assert report.lines()[0] == "joined 2 records from subtitle (3 rows), audio (3 rows) and video (3 rows)"


def test_duplicates_error(tmp_path: Path) -> None:
    a = auds(tmp_path, ["a", "b", "a", "c", "c", "d", "d", "e", "e", "b"])
    s = subs(tmp_path, ["a"])
    with pytest.raises(InputError, match=msg(f"{a}: 5 ids occur more than once ('a', 'b', 'c', ...); pass --on-duplicate first|last to keep one occurrence")):
        join([sub(s), aud(a)])
    a = auds(tmp_path, ["a", "a"])
    with pytest.raises(InputError, match=msg(f"{a}: 1 id occurs more than once ('a'); pass --on-duplicate first|last to keep one occurrence")):
        join([sub(s), aud(a)])


@pytest.mark.parametrize(("mode", "kept"), [("first", "one"), ("last", "three")])
def test_duplicates_first_last(tmp_path: Path, mode: str, kept: str) -> None:
    a = write_json(tmp_path / "audio.json", [
        {"file_id": "b", "generated_text": "bee"},
        {"file_id": "a", "generated_text": "one"},
        {"file_id": "a", "generated_text": "two"},
        {"file_id": 1, "generated_text": "x"},
        {"file_id": "a", "generated_text": "three"},
    ])
    records, report = join([aud(a), sub(subs(tmp_path, ["a", "b"]))], on_duplicate=mode)
    assert [(r.file_id, r.texts["audio"]) for r in records] == [("b", "bee"), ("a", kept)]
    assert report.duplicates == {"audio": 1, "subtitle": 0}
    assert report.rows == {"audio": 5, "subtitle": 2}
    assert report.only_in == {"audio": 1, "subtitle": 0}
    assert report.lines()[2] == f"duplicates: audio 1 (kept {mode})"


def test_zero_matches(tmp_path: Path) -> None:
    s, a = subs(tmp_path, ["sample_1", "sample_2", "sample_3"]), auds(tmp_path, [1, 2])
    with pytest.raises(InputError, match=msg(f"none of the 3 ids in subtitle ({s}) matched the 2 ids in audio ({a}): e.g. 'sample_1', 'sample_2' vs '1', '2'")):
        join([sub(s), aud(a)])


def test_zero_matches_across_three(tmp_path: Path) -> None:
    v = write_json(tmp_path / "v.json", [{"file_id": "b", "caption": "x"}])
    specs = [sub(subs(tmp_path, ["a", "b"])), aud(auds(tmp_path, ["a"])), SourceSpec("video", "video", "file_id", "caption", str(v))]
    with pytest.raises(InputError, match=msg("no id is present in all 3 sources (subtitle shares 1 with audio, 1 with video)")):
        join(specs)


def test_single_source_and_bad_arguments(tmp_path: Path) -> None:
    records, report = join([aud(auds(tmp_path, ["a"]))])
    assert records == [Record("a", {"audio": "aud a"})]
    assert report.lines()[0] == "joined 1 record from audio (1 row)"
    with pytest.raises(ValueError, match="on_duplicate"):
        join([aud(auds(tmp_path, ["a"]))], on_duplicate="keep")


def test_join_csv_with_json(tmp_path: Path) -> None:
    c = tmp_path / "subtitle_chieng.csv"
    c.write_text("name,chinese,english\nsample_1,我很好,I'm fine 🙂\nsample_2,,\n", encoding="utf-8")
    a = auds(tmp_path, ["sample_2", "sample_1"])
    records, report = join([sub(c, id_key="name", text_key="english"), aud(a)])
    assert records == [
        Record("sample_1", {"subtitle": "I'm fine 🙂", "audio": "aud sample_1"}),
        Record("sample_2", {"subtitle": "", "audio": "aud sample_2"}, "empty text in subtitle"),
    ]
    assert report.empty == {"subtitle": 1, "audio": 0}


def test_broken_json_is_not_mistaken_for_jsonl(tmp_path: Path) -> None:
    p = tmp_path / "a.json"
    p.write_text('{\n  "file_id": "s1",\n  "generated_text": "x",\n}\n')
    with pytest.raises(InputError, match=rf"^{re.escape(str(p))} is not valid JSON: trailing comma is not allowed: line 3 column 24"):
        read_rows(p)
    p.write_text('[{"file_id": "s1"}]\n[{"file_id": "s2"}]\n')
    with pytest.raises(InputError, match=rf"^{re.escape(str(p))} is not valid JSON: .*line 2 column 1"):
        read_rows(p)


def test_csv_header_only_and_duplicate_columns(tmp_path: Path) -> None:
    p = tmp_path / "s.csv"
    p.write_text("\nname,english\n", encoding="utf-8")
    assert read_rows(p) == []
    with pytest.raises(InputError, match=msg(f"{p} has no rows")):
        load_source(sub(p, id_key="name", text_key="english"))
    p.write_text("name,english,name\na,b,c\n", encoding="utf-8")
    with pytest.raises(InputError, match=msg(f"{p}: the header names column 'name' more than once")):
        read_rows(p)


def test_csv_missing_id_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "s.csv"
    p.write_text('name,english\na,"two\nlines"\n,x\n', encoding="utf-8")
    with pytest.raises(InputError, match=msg(f"{p}: line 4 has an empty 'name'")):
        load_source(sub(p, id_key="name", text_key="english"))


def test_join_restores_garbage_collection(tmp_path: Path) -> None:
    import gc

    assert gc.isenabled()
    join([aud(auds(tmp_path, ["a"]))])
    assert gc.isenabled()
    with pytest.raises(InputError):
        join([aud(auds(tmp_path, ["a", "a"]))])
    assert gc.isenabled()


def test_record_is_frozen() -> None:
    record = Record("a", {"audio": "x"})
    with pytest.raises(AttributeError):
        record.file_id = "b"  # type: ignore[misc]
