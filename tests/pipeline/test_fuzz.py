"""Issue 6, "prove nothing is lost or mixed up": every joined record ends with exactly one row,
produced under one configuration, whatever happened in between.

Everything here runs the real command line on the tiny random Qwen3 (tests/conftest.py): in a
subprocess where signals, locks and kills need a process of their own, else in-process with
CliRunner. Greedy decoding (`--temperature 0`) makes every result reproducible, so "nothing mixed
up" is checked byte for byte against a run nobody interrupted.
"""

from __future__ import annotations

import ast
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import orjson
from helpers import REPO
import pytest
from click.testing import CliRunner

from s2_vllm.checkpoint import atomic_write
from s2_vllm.cli import cli
from s2_vllm.config import Config, EngineConfig
from s2_vllm.tiny import demo_paths

PACKAGE = REPO / "s2_vllm"
OVERWRITE = "run with --overwrite to start over (the old file is kept as a backup) or choose another --output"
# One torch thread per process: with the default (a thread per core) a CPU shared with another
# process (the reference run below, or anything else on a 2-core box) runs ~10x slower.
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
FUZZ_RECORDS = 300
FUZZ_SEED = 6


# ---------------------------------------------------------------------------------------------
# inputs and helpers


def make_inputs(folder: Path, n: int) -> tuple[Path, Path]:
    """n joined records with new ids, cycling the demo texts in varied pairs (one demo subtitle is
    empty, so some records are skipped rows). Every row also carries its id under "clip" and its
    text under a second key, for the config-drift cases that change the key names."""
    audio_path, subtitles_path = demo_paths()
    audio = [r["generated_text"] for r in json.loads(audio_path.read_text("utf-8"))]
    subtitles = [r["english_transcription"] for r in json.loads(subtitles_path.read_text("utf-8"))]
    ids = [f"fz_{k:04d}" for k in range(n)]
    a = [{"file_id": fid, "clip": fid, "generated_text": audio[k % len(audio)],
          "description": audio[k % len(audio)]} for k, fid in enumerate(ids)]
    s = [{"file_id": fid, "clip": fid, "english_transcription": subtitles[(7 * k + k // len(subtitles)) % len(subtitles)],
          "line": subtitles[(7 * k + k // len(subtitles)) % len(subtitles)]} for k, fid in enumerate(ids)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "audio.json").write_bytes(orjson.dumps(a))
    (folder / "subtitles.json").write_bytes(orjson.dumps(s))
    return folder / "audio.json", folder / "subtitles.json"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    return make_inputs(tmp_path_factory.mktemp("inputs"), FUZZ_RECORDS)


def run_args(model: Path, inputs: tuple[Path, Path], out: Path, *extra: str, max_tokens: int = 16) -> list[str]:
    return ["run", "--engine", "hf", "--model", str(model), "--audio", str(inputs[0]), "--subtitles", str(inputs[1]),
            "--max-tokens", str(max_tokens), "--temperature", "0", "--no-progress", "-o", str(out), *extra]


def invoke(args: list[str]):
    return CliRunner().invoke(cli, [str(a) for a in args])


def spawn(args: list[str], logs: Path) -> subprocess.Popen:
    """The real `python -m s2_vllm …`, stdout and stderr to logs.out / logs.err."""
    return subprocess.Popen([sys.executable, "-m", "s2_vllm", *map(str, args)], env=ENV,
                            stdout=open(f"{logs}.out", "wb"), stderr=open(f"{logs}.err", "wb"))


def whole_lines(path: Path) -> tuple[list[bytes], bytes]:
    """(the whole lines, the torn rest after the last newline)."""
    data = path.read_bytes() if path.exists() else b""
    *lines, rest = data.split(b"\n")
    return [line + b"\n" for line in lines], rest


def rows_by_id(path: Path) -> dict[str, dict]:
    lines, rest = whole_lines(path)
    assert rest == b"", f"{path} ends with a torn line"
    rows = [orjson.loads(line) for line in lines]
    ids = [r["file_id"] for r in rows]
    assert len(ids) == len(set(ids)), f"{path} has ids twice: {sorted(i for i in ids if ids.count(i) > 1)[:5]}"
    return {r["file_id"]: r for r in rows}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def wait_until(condition, process: subprocess.Popen, timeout: float = 180.0) -> bool:
    """True once condition() holds; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return condition()
        time.sleep(0.005)
    process.kill()
    raise AssertionError(f"nothing happened in {timeout}s")


# ---------------------------------------------------------------------------------------------
# 1. interruption fuzz


@pytest.mark.slow
def test_twelve_random_interruptions_lose_nothing_and_mix_nothing(tiny_model, inputs, tmp_path):
    started = time.monotonic()
    clean, out = tmp_path / "clean.jsonl", tmp_path / "fuzz.jsonl"
    # The reference nobody interrupts, batch size 1, on the other core while the fuzz runs.
    reference = spawn(run_args(tiny_model, inputs, clean, "--batch-size", "1"), tmp_path / "clean")
    args = run_args(tiny_model, inputs, out, "--batch-size", "4")

    rng = random.Random(FUZZ_SEED)
    plan = [signal.SIGKILL] * 4 + [signal.SIGTERM] * 4 + [signal.SIGINT] * 4
    rng.shuffle(plan)
    kept: dict[str, bytes] = {}  # every whole line seen so far: it must stay, byte for byte
    tail = b""  # a torn last line left by SIGKILL
    manifest: bytes | None = None
    log = []
    for cycle, sig in enumerate(plan):
        before = len(whole_lines(out)[0])
        had_rows = out.exists() and out.stat().st_size > 0
        logs = tmp_path / f"cycle{cycle:02d}"
        process = spawn(args, logs)
        # Where the signal lands: "launch" any time from the start (SIGKILL only: SIGINT and SIGTERM
        # before Python and the command are up kill the interpreter itself, as for any program),
        # "startup" after the join (tokenizer, torch import, model load, first batches), "rows"
        # after a few more rows were written (mid-generation, maybe mid-write).
        mode = rng.choice(["launch", "startup", "rows", "rows"] if sig == signal.SIGKILL else ["startup", "rows", "rows"])
        if mode == "launch":
            time.sleep(rng.uniform(0.05, 4.0))
        elif mode == "startup":
            assert wait_until(lambda: b"joined " in Path(f"{logs}.out").read_bytes(), process)
            time.sleep(rng.uniform(0.0, 3.0))
        else:
            k = rng.randint(1, 6)
            assert wait_until(lambda: len(whole_lines(out)[0]) >= before + k, process), "the run ended early"
            time.sleep(rng.uniform(0.0, 0.2))
        assert process.poll() is None, f"cycle {cycle}: the run finished before it could be interrupted"
        process.send_signal(sig)
        code = process.wait(timeout=120)
        stdout, stderr = (Path(f"{logs}.{s}").read_text("utf-8") for s in ("out", "err"))
        if sig == signal.SIGKILL:
            assert code == -signal.SIGKILL
        else:
            assert code == 130, f"cycle {cycle}: {sig.name} gave {code}: {stderr}"
            assert stderr.rstrip("\n").splitlines()[-1].endswith("run the same command to resume"), stderr
            assert "Traceback" not in stderr, stderr

        if m := re.search(r"resuming \S+: (\d+) of (\d+) records already done", stdout):
            assert int(m.group(1)) == before and int(m.group(2)) == FUZZ_RECORDS  # exactly the rows on disk
        lines, rest = whole_lines(out)
        assert sig == signal.SIGKILL or rest in (b"", tail), f"cycle {cycle}: {sig.name} left a torn line"
        tail = rest
        ids = [orjson.loads(line)["file_id"] for line in lines]  # every whole line parses
        assert len(ids) == len(set(ids)), f"cycle {cycle}: an id has two rows"
        by_id = dict(zip(ids, lines))
        assert all(by_id.get(fid) == line for fid, line in kept.items()), f"cycle {cycle}: a row was lost or changed"
        kept = by_id
        mpath = Path(f"{out}.manifest.json")
        if manifest is not None and had_rows:
            assert mpath.read_bytes() == manifest, f"cycle {cycle}: the manifest was rewritten"
        manifest = mpath.read_bytes() if mpath.exists() else None
        log.append(f"{sig.name}/{mode}: {before}->{len(lines)}" + (f" +{len(rest)}B torn" if rest else ""))

    final = spawn(args, tmp_path / "final")
    assert final.wait(timeout=300) == 0, (tmp_path / "final.err").read_text()
    final_out = (tmp_path / "final.out").read_text()
    assert f"resuming {out}: {len(kept)} of {FUZZ_RECORDS} records already done\n" in final_out
    if tail:
        assert f"cut a torn last line ({len(tail)} bytes) from {out}; its record runs again\n" in final_out
    assert reference.wait(timeout=300) == 0, (tmp_path / "clean.err").read_text()

    fuzzed, reference_rows = rows_by_id(out), rows_by_id(clean)
    assert set(reference_rows) == {f"fz_{k:04d}" for k in range(FUZZ_RECORDS)}
    assert fuzzed.keys() == reference_rows.keys()  # every joined id, exactly once
    assert fuzzed == reference_rows  # batch size 4 + 12 interruptions == batch size 1, uninterrupted
    fingerprints = [orjson.loads(Path(f"{p}.manifest.json").read_bytes())["fingerprint"] for p in (out, clean)]
    assert fingerprints[0] == fingerprints[1]  # one configuration (batch size is not part of it)
    assert manifest is None or Path(f"{out}.manifest.json").read_bytes() == manifest

    for fmt in ("jsonl", "json"):  # what downstream code reads is the same too
        exports = [tmp_path / f"{name}.{fmt}" for name in ("fuzz-export", "clean-export")]
        for checkpoint, export in zip((out, clean), exports):
            result = invoke(["export", checkpoint, "-o", export, "--format", fmt])
            assert result.exit_code == 0, result.output
        a, b = (orjson.loads(e.read_bytes()) if fmt == "json" else [orjson.loads(x) for x in e.read_bytes().splitlines()]
                for e in exports)
        assert sorted(a, key=lambda r: r["file_id"]) == sorted(b, key=lambda r: r["file_id"])
    statuses = {s: sum(r["status"] == s for r in fuzzed.values()) for s in ("ok", "length", "skipped")}
    print(f"\nfuzz: {len(plan)} interruptions in {time.monotonic() - started:.0f}s; {statuses}\n" + "\n".join(log))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_starting_exits_130_and_says_how_to_resume(tiny_model, inputs, tmp_path, sig):
    """Right after the join the tokenizer, torch and the model are still loading: the runner's own
    handlers are not in place yet, and the command still stops the same way."""
    out = tmp_path / "out.jsonl"
    process = spawn(run_args(tiny_model, inputs, out), tmp_path / "run")
    assert wait_until(lambda: b"joined " in (tmp_path / "run.out").read_bytes(), process)
    process.send_signal(sig)
    assert process.wait(timeout=120) == 130
    assert (tmp_path / "run.err").read_text() == "interrupted; run the same command to resume\n"
    assert not out.exists() or out.read_bytes() == b""


# ---------------------------------------------------------------------------------------------
# 2. checkpoint damage, through the command line


@pytest.fixture
def six(tiny_model, inputs, tmp_path) -> tuple[list[str], Path, list[bytes]]:
    """A finished 6-record checkpoint: (the command, its path, its lines)."""
    out = tmp_path / "out.jsonl"
    args = run_args(tiny_model, inputs, out, "--batch-size", "4", "--limit", "6", max_tokens=8)
    result = invoke(args)
    assert result.exit_code == 0, result.output
    lines = whole_lines(out)[0]
    assert len(lines) == 6
    return args, out, lines


def test_torn_last_line_is_cut_and_run_again(six):
    args, out, lines = six
    cut = len(lines[-1]) // 2
    with open(out, "r+b") as f:
        f.truncate(out.stat().st_size - cut)  # what a kill in the middle of a write leaves
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert f"cut a torn last line ({len(lines[-1]) - cut} bytes) from {out}; its record runs again\n" in result.output
    assert f"resuming {out}: 5 of 6 records already done\n" in result.output
    assert whole_lines(out) == (lines, b"")  # the same row again, byte for byte


def test_damaged_middle_line_is_refused_then_repaired(six):
    args, out, lines = six
    damaged = b'{"file_id": "fz_0002", "final_descr\x00\x00\n'
    out.write_bytes(b"".join(lines[:2] + [damaged] + lines[3:]))
    before = snapshot(out.parent)

    result = invoke(args)
    assert result.exit_code == 2
    assert result.stderr == (f"Error: {out} line 3 is damaged; run with --repair to move damaged lines to "
                             f"{out}.rejected and re-run those records\n")
    assert snapshot(out.parent) == before | {"out.jsonl.lock": snapshot(out.parent)["out.jsonl.lock"]}

    result = invoke(args + ["--repair"])
    assert result.exit_code == 0, result.output
    assert f"moved 1 damaged line to {out}.rejected; their records run again\n" in result.output
    assert f"resuming {out}: 5 of 6 records already done\n" in result.output
    assert Path(f"{out}.rejected").read_bytes() == damaged
    assert whole_lines(out) == (lines[:2] + lines[3:] + [lines[2]], b"")  # redone, identical, appended


def test_checkpoint_without_manifest_is_refused(six):
    args, out, lines = six
    Path(f"{out}.manifest.json").unlink()
    result = invoke(args)
    assert result.exit_code == 2
    assert result.stderr == (f"Error: {out} has no manifest (out.jsonl.manifest.json), so the config it was "
                             f"written with cannot be checked; {OVERWRITE}\n")
    assert whole_lines(out) == (lines, b"")


# ---------------------------------------------------------------------------------------------
# 3. a full disk


def mount_tmpfs(folder: Path, size: str = "64k") -> bool:
    """A real small filesystem (tmpfs; these tests run as root): True when mounted."""
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if done.returncode:
        warnings.warn(f"cannot mount a tmpfs ({done.stderr.decode().strip()}); using RLIMIT_FSIZE instead")
    return done.returncode == 0


def limited(args: list, max_bytes: int) -> subprocess.CompletedProcess:
    """The CLI in a child whose files may not grow past max_bytes: the kernel refuses the write that
    would (EFBIG, "File too large"), as a full disk refuses it with ENOSPC."""
    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return subprocess.run([sys.executable, "-m", "s2_vllm", *map(str, args)], env=ENV, capture_output=True, text=True,
                          preexec_fn=limit, timeout=300)


@pytest.fixture
def disk(request, tmp_path):
    """(folder, mounted): a 64 KiB tmpfs for "tmpfs" (RLIMIT_FSIZE where mounting is impossible), a plain
    folder for "file size limit"."""
    folder = tmp_path / "small"
    mounted = request.param == "tmpfs" and mount_tmpfs(folder)
    folder.mkdir(exist_ok=True)
    yield folder, mounted
    if mounted:
        subprocess.run(["umount", str(folder)], check=True)


FULL = ("everything up to the last whole line is kept, {what} and run the same command to resume")


@pytest.mark.slow
@pytest.mark.parametrize("disk", ["tmpfs", "file size limit"], indirect=True)
def test_disk_full_stops_with_one_line_and_resumes_after_space_is_freed(tiny_model, inputs, disk, tmp_path):
    folder, mounted = disk
    out = folder / "out.jsonl"
    args = run_args(tiny_model, inputs, out, "--batch-size", "4", "--limit", "40", max_tokens=8)
    if mounted:
        filler = folder / "filler"
        filler.write_bytes(b"f" * 44 * 1024)  # leaves 5 pages: lock, manifest, summary and 2 for rows
        result = invoke(args)
        # Whichever write finds the disk full first stops the run: a row, or the summary's periodic rewrite.
        assert result.exit_code == 2, result.output
        assert result.stderr in (
            f"Error: cannot write {out}: No space left on device; " + FULL.format(what="free some space") + "\n",
            f"Error: cannot write {out}.summary.json: No space left on device; the checkpoint is intact, "
            "free some space and run the same command to resume\n",
        ), result.stderr
    else:
        result = limited(args, 8192)
        assert (result.returncode, result.stderr) == (2, f"Error: cannot write {out}: File too large; "
                                                         + FULL.format(what="fix that") + "\n")
    lines, rest = whole_lines(out)
    assert rest == b"" and 0 < len(lines) < 40  # valid up to its last whole line, nothing torn
    assert all(orjson.loads(line)["file_id"] for line in lines)

    if mounted:
        filler.unlink()  # free some space, run the same command
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert f"resuming {out}: {len(lines)} of 40 records already done\n" in result.output
    assert whole_lines(out)[0][: len(lines)] == lines
    complete = rows_by_id(out)

    reference = tmp_path / "reference.jsonl"  # batch size 8, never interrupted
    assert invoke(run_args(tiny_model, inputs, reference, "--limit", "40", max_tokens=8)).exit_code == 0
    assert complete == rows_by_id(reference)


@pytest.mark.parametrize("disk", ["tmpfs"], indirect=True)
def test_export_to_a_full_disk_keeps_the_old_export(six, disk):
    args, out, lines = six
    folder, mounted = disk
    export = folder / "export.jsonl"
    assert invoke(["export", out, "-o", export, "--format", "jsonl"]).exit_code == 0
    old = export.read_bytes()
    replace = ["export", out, "-o", export, "--format", "csv", "--force"]
    if mounted:
        (folder / "filler").write_bytes(b"f" * (64 * 1024 - 4096 * -(-len(old) // 4096)))  # no page left
        result = invoke(replace)
        assert (result.exit_code, result.stderr) == (2, f"Error: cannot write {export}: No space left on device\n")
    else:
        result = limited(replace, 256)  # far smaller than the CSV
        assert (result.returncode, result.stderr) == (2, f"Error: cannot write {export}: File too large\n")
    assert export.read_bytes() == old  # atomic: the old file is whole and no temp file is left
    assert sorted(p.name for p in folder.iterdir()) == ["export.jsonl"] + (["filler"] if mounted else [])


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "out.jsonl.manifest.json"
    path.write_bytes(b"old")

    def fail(f) -> None:
        f.write(b"half of the new conte")
        raise KeyboardInterrupt  # a Ctrl-C in the middle of the write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == [path.name]


# ---------------------------------------------------------------------------------------------
# 4. two runs on one checkpoint


@pytest.mark.slow
def test_second_run_is_refused_while_the_first_holds_the_checkpoint(tiny_model, inputs, tmp_path):
    out = tmp_path / "out.jsonl"
    args = run_args(tiny_model, inputs, out, "--batch-size", "1", "--limit", "40", max_tokens=8)
    first = spawn(args, tmp_path / "first")
    try:
        assert wait_until(lambda: len(whole_lines(out)[0]) >= 1, first), (tmp_path / "first.err").read_text()
        result = invoke(args)
        assert result.exit_code == 2
        assert result.stderr == (f"Error: checkpoint {out} is in use by another run (pid {first.pid}); "
                                 "wait for it or choose another --output\n")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert first.returncode == -signal.SIGKILL
    result = invoke(args)  # the lock died with its process
    assert result.exit_code == 0, result.output
    assert len(rows_by_id(out)) == 40


# ---------------------------------------------------------------------------------------------
# 5. config drift


def toml(tables: dict) -> str:
    """A TOML file from {table: {key: value}} (nested tables as "a.b" keys)."""
    text = []
    for table, values in tables.items():
        text.append(f"[{table}]")
        text += [f"{key} = {json.dumps(value)}" for key, value in values.items()]  # JSON scalars are TOML
    return "\n".join(text) + "\n"


SOURCES = {"sources.subtitle": {"placeholder": "subtitle", "id_key": "file_id", "text_key": "english_transcription"},
           "sources.audio": {"placeholder": "audio_description", "id_key": "file_id", "text_key": "generated_text"}}


@pytest.fixture(scope="module")
def base(tiny_model, inputs, tmp_path_factory) -> dict:
    """A 1-row checkpoint from a config file, and a copy of the tiny model to edit."""
    folder = tmp_path_factory.mktemp("drift")
    model = folder / "model"
    shutil.copytree(tiny_model, model)
    tables = {"engine": {"model": str(model)}, "run": {"engine": "hf"}, "hf": {"batch_size": 4},
              "sampling": {"max_tokens": 4, "temperature": 0.0}}
    out = folder / "out.jsonl"
    (folder / "base.toml").write_text(toml(tables))
    args = ["run", "--config", folder / "base.toml", "--audio", inputs[0], "--subtitles", inputs[1], "--limit", "1",
            "--no-progress", "-o", out]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    return {"folder": folder, "model": model, "tables": tables, "args": args, "out": out}


def changed(tables: dict, **changes) -> dict:
    """tables with table__key=value changes; value None deletes the key."""
    new = {t: dict(v) for t, v in tables.items()}
    for dotted, value in changes.items():
        table, key = dotted.rsplit("__", 1)
        new.setdefault(table.replace("__", "."), {})[key] = value
    return new


TEMPLATE = Config().prompt.template
DRIFT = [  # (what changes, the change, how the message names it)
    ("revision", {"engine__revision": "main"}, "revision null -> main"),
    ("dtype", {"engine__dtype": "float32"}, "dtype auto -> float32"),
    ("quantization", {"engine__quantization": "fp8"}, "quantization null -> fp8"),
    ("max_model_len", {"engine__max_model_len": 2048}, "max_model_len null -> 2048"),
    ("kv_cache_dtype", {"engine__kv_cache_dtype": "fp8"}, "kv_cache_dtype"),
    ("load_format", {"engine__load_format": "dummy"}, "load_format"),
    ("prompt template", {"prompt__template": TEMPLATE + " Be brief."}, "prompt_template"),
    ("system prompt", {"prompt__system": "You are terse."}, 'system_prompt null -> "You are terse."'),
    ("enable_thinking", {"prompt__enable_thinking": True}, "enable_thinking false -> true"),
    ("too_long", {"prompt__too_long": "error"}, "too_long truncate -> error"),
    ("max_tokens", {"sampling__max_tokens": 5}, "sampling.max_tokens 4 -> 5) (--retry-cut takes a larger max_tokens"),
    ("temperature", {"sampling__temperature": 0.5}, "sampling.temperature 0.0 -> 0.5"),
    ("top_p", {"sampling__top_p": 0.9}, "sampling.top_p 0.8 -> 0.9"),
    ("top_k", {"sampling__top_k": 5}, "sampling.top_k 20 -> 5"),
    ("min_p", {"sampling__min_p": 0.1}, "sampling.min_p 0.0 -> 0.1"),
    ("repetition_penalty", {"sampling__repetition_penalty": 1.1}, "sampling.repetition_penalty 1.0 -> 1.1"),
    ("presence_penalty", {"sampling__presence_penalty": 0.5}, "sampling.presence_penalty 0.0 -> 0.5"),
    ("frequency_penalty", {"sampling__frequency_penalty": 0.5}, "sampling.frequency_penalty 0.0 -> 0.5"),
    ("stop", {"sampling__stop": ["END"]}, "sampling.stop"),
    ("seed", {"sampling__seed": 1}, "sampling.seed 0 -> 1"),
    ("ignore_eos", {"sampling__ignore_eos": True}, "sampling.ignore_eos false -> true"),
    ("source id_key", {"sources__subtitle__id_key": "clip"}, "sources[0].id_key file_id -> clip"),
    ("source text_key", {"sources__audio__text_key": "description"}, "sources[1].text_key generated_text -> description"),
    ("source placeholder", {"sources__subtitle__placeholder": "line",
                            "prompt__template": TEMPLATE.replace("{subtitle}", "{line}")},
     "prompt_template, sources[0].placeholder subtitle -> line"),
]


@pytest.mark.parametrize("what, change, named", DRIFT, ids=[d[0] for d in DRIFT])
def test_each_fingerprinted_setting_changed_alone_is_refused_naming_it(base, tmp_path, what, change, named):
    tables = changed(base["tables"] | (SOURCES if what.startswith("source") else {}), **change)
    (tmp_path / "changed.toml").write_text(toml(tables))
    args = [a if a != base["folder"] / "base.toml" else tmp_path / "changed.toml" for a in base["args"]]
    before = snapshot(base["folder"])
    result = invoke(args)
    assert result.exit_code == 2, result.output
    assert result.stderr == f"Error: {base['out']} was written with another config (changed: {named}); {OVERWRITE}\n"
    after = snapshot(base["folder"])
    assert after == before | {"out.jsonl.lock": after["out.jsonl.lock"]}  # nothing but the lock's pid touched


def test_the_sources_as_declared_by_default_are_no_change(base, tmp_path):
    (tmp_path / "same.toml").write_text(toml(base["tables"] | SOURCES))  # the drift cases' starting point
    args = [a if a != base["folder"] / "base.toml" else tmp_path / "same.toml" for a in base["args"]]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output and "0 remain" in result.output


def test_a_renamed_source_is_refused(base, tmp_path):
    tables = base["tables"] | {"sources.subs": SOURCES["sources.subtitle"], "sources.audio": SOURCES["sources.audio"]}
    (tmp_path / "renamed.toml").write_text(toml(tables))
    inputs = base["args"][base["args"].index("--audio") + 1], base["args"][base["args"].index("--subtitles") + 1]
    result = invoke(["run", "--config", tmp_path / "renamed.toml", "--audio", inputs[0], "--source",
                     f"subs={inputs[1]}", "--limit", "1", "--no-progress", "-o", base["out"]])
    assert result.exit_code == 2, result.output
    assert result.stderr == (f"Error: {base['out']} was written with another config "
                             f"(changed: sources[0].name subtitle -> subs); {OVERWRITE}\n")


@pytest.mark.parametrize("what", ["model", "tokenizer", "chat template"])
def test_model_tokenizer_and_chat_template_changes_are_refused(base, tiny_model, tmp_path, what):
    # A copy of the drift fixture's checkpoint, so editing its model's chat template stays here.
    model = tmp_path / "model"
    shutil.copytree(base["model"], model)
    tables = changed(base["tables"], engine__model=str(model))
    (tmp_path / "base.toml").write_text(toml(tables))
    out = tmp_path / "out.jsonl"
    args = [tmp_path / "base.toml" if a == base["folder"] / "base.toml" else out if a == base["out"] else a
            for a in base["args"]]
    assert invoke(args).exit_code == 0
    if what == "model":
        tables = changed(tables, engine__model=str(tiny_model))
    elif what == "tokenizer":
        tables = changed(tables, engine__tokenizer=str(tiny_model))
    else:
        config = orjson.loads((model / "tokenizer_config.json").read_bytes())
        if (model / "chat_template.jinja").exists():
            jinja = model / "chat_template.jinja"
            jinja.write_text(jinja.read_text() + "{#- edited -#}")
        else:
            config["chat_template"] += "{#- edited -#}"
            (model / "tokenizer_config.json").write_bytes(orjson.dumps(config))
    (tmp_path / "base.toml").write_text(toml(tables))
    before = out.read_bytes()
    result = invoke(args)
    assert result.exit_code == 2, result.output
    field = {"model": "model", "tokenizer": "tokenizer", "chat template": "chat_template_sha"}[what]
    assert re.fullmatch(rf"Error: {re.escape(str(out))} was written with another config \(changed: {field}"
                        rf"( [^,]*)?\); {re.escape(OVERWRITE)}\n", result.stderr), result.stderr
    assert out.read_bytes() == before


SPEED = [("hf batch size", {"hf__batch_size": 1}), ("in-flight window", {"run__in_flight": 3}),
         ("gpu_memory_utilization", {"engine__gpu_memory_utilization": 0.5}),
         ("tensor_parallel_size", {"engine__tensor_parallel_size": 2})]


@pytest.mark.parametrize("what, change", SPEED, ids=[s[0] for s in SPEED])
def test_speed_knobs_change_nothing_and_the_run_resumes(base, tmp_path, what, change):
    for name in ("out.jsonl", "out.jsonl.manifest.json"):
        shutil.copy2(base["folder"] / name, tmp_path / name)
    out = tmp_path / "out.jsonl"
    first = out.read_bytes()
    (tmp_path / "speed.toml").write_text(toml(changed(base["tables"], **change)))
    args = [tmp_path / "speed.toml" if a == base["folder"] / "base.toml" else out if a == base["out"] else a
            for a in base["args"]]
    result = invoke([a if a != "1" else "2" for a in args])  # --limit 2: one more record
    assert result.exit_code == 0, result.output
    assert f"resuming {out}: 1 of 2 records already done\n" in result.output
    assert out.read_bytes().startswith(first) and len(rows_by_id(out)) == 2


def test_overwrite_starts_over_and_keeps_a_backup(base, tmp_path):
    for name in ("out.jsonl", "out.jsonl.manifest.json"):
        shutil.copy2(base["folder"] / name, tmp_path / name)
    out = tmp_path / "out.jsonl"
    old = {name: (tmp_path / name).read_bytes() for name in ("out.jsonl", "out.jsonl.manifest.json")}
    (tmp_path / "changed.toml").write_text(toml(changed(base["tables"], sampling__max_tokens=5)))
    args = [tmp_path / "changed.toml" if a == base["folder"] / "base.toml" else out if a == base["out"] else a
            for a in base["args"]]
    assert invoke(args).exit_code == 2
    result = invoke(args + ["--overwrite"])
    assert result.exit_code == 0, result.output
    backup = re.search(r"moved the old checkpoint to (\S+)\n", result.output).group(1)
    assert Path(backup).read_bytes() == old["out.jsonl"]
    assert Path(f"{backup}.manifest.json").read_bytes() == old["out.jsonl.manifest.json"]
    manifest = orjson.loads(Path(f"{out}.manifest.json").read_bytes())
    assert manifest["fingerprint"]["sampling"]["max_tokens"] == 5
    assert len(rows_by_id(out)) == 1 and invoke(args).exit_code == 0  # and the new config now resumes


# ---------------------------------------------------------------------------------------------
# 7. safety


def test_remote_code_is_off_unless_asked():
    assert Config().engine.trust_remote_code is False
    from s2_vllm.engines.vllm import engine_kwargs

    assert engine_kwargs(EngineConfig(model="some/model"))["trust_remote_code"] is False
    assert engine_kwargs(EngineConfig(model="some/model", trust_remote_code=True))["trust_remote_code"] is True


CUSTOM_CODE = """\
import pathlib
pathlib.Path({marker!r}).write_text("ran")
from transformers import {base}
class {name}({base}):
    pass
"""


def test_a_models_own_code_never_runs_unless_asked(tiny_model, inputs, tmp_path):
    """A model folder that ships code (auto_map) for its tokenizer and model: the default run loads the
    built-in classes and never imports that code; trust_remote_code = true does."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    markers = {kind: tmp_path / f"{kind}-code-ran" for kind in ("tokenizer", "model")}
    (model / "custom_tok.py").write_text(CUSTOM_CODE.format(marker=str(markers["tokenizer"]),
                                                            base="PreTrainedTokenizerFast", name="CustomTokenizer"))
    (model / "custom_model.py").write_text(CUSTOM_CODE.format(marker=str(markers["model"]),
                                                              base="Qwen3ForCausalLM", name="CustomModel"))
    for name, key, value in (("tokenizer_config.json", "AutoTokenizer", [None, "custom_tok.CustomTokenizer"]),
                             ("config.json", "AutoModelForCausalLM", "custom_model.CustomModel")):
        data = orjson.loads((model / name).read_bytes())
        data["auto_map"] = {key: value}
        (model / name).write_bytes(orjson.dumps(data))

    result = invoke(run_args(model, inputs, tmp_path / "out.jsonl", "--limit", "2", max_tokens=4))
    assert result.exit_code == 0, result.output
    assert not any(m.exists() for m in markers.values())

    (tmp_path / "trust.toml").write_text(toml({"engine": {"trust_remote_code": True}}))
    proc = subprocess.run([sys.executable, "-m", "s2_vllm", "render", "--config", str(tmp_path / "trust.toml"),
                           "--model", str(model), "--audio", str(inputs[0]), "--subtitles", str(inputs[1]),
                           "--limit", "1", "-o", str(tmp_path / "prompts.jsonl")],
                          env={**ENV, "HF_MODULES_CACHE": str(tmp_path / "modules")}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert markers["tokenizer"].read_text() == "ran"  # so the check above would have seen it


def test_no_shell_is_ever_started():
    """No module runs a shell: no shell=True, os.system, os.popen, os.exec*/spawn*, pty or commands."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
            where = f"{path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.keyword) and node.arg == "shell" and not (
                    isinstance(node.value, ast.Constant) and node.value.value is False):
                offenders.append(f"{where} shell=")
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and (
                    (node.value.id == "os" and re.fullmatch(r"system|popen|exec\w*|spawn\w*|posix_spawn\w*", node.attr))
                    or (node.value.id == "subprocess" and node.attr in ("getoutput", "getstatusoutput"))):
                offenders.append(f"{where} {node.value.id}.{node.attr}")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                if any(n in ("pty", "commands") or (isinstance(node, ast.ImportFrom) and node.module == "os"
                                                    and n in ("system", "popen")) for n in names):
                    offenders.append(f"{where} import {names}")
    assert offenders == []
