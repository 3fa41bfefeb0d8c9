"""The checkpoint store on real files: resume, torn and damaged lines, config changes, locks, a full disk."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
from helpers import REPO
import pytest

from s2_vllm.checkpoint import (
    CheckpointStore,
    Row,
    fingerprint_diff,
    iter_rows,
    read_manifest,
)
from s2_vllm.config import Config
from s2_vllm.errors import CheckpointError

FP = Config().fingerprint()
OVERWRITE = "run with --overwrite to start over (the old file is kept as a backup) or choose another --output"


def fp(**changes) -> dict:
    new = orjson.loads(orjson.dumps(FP))
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        target = new
        for p in parents:
            target = target[p]
        target[last] = value
    return new


def line(fid: str, status: str = "ok", text: str | None = None) -> bytes:
    desc = None if status in ("error", "skipped") else (text or f"description of {fid}")
    return Row(fid, desc, status=status).to_line()


def make(path: Path, *rows: Row | bytes, fingerprint: dict = FP) -> None:
    """A checkpoint written by a store, then raw bytes appended as a crash or a bad disk would leave them."""
    with CheckpointStore(path) as store:
        store.open(fingerprint)
        for row in rows:
            if isinstance(row, Row):
                store.append(row)
    with open(path, "ab") as f:
        for row in rows:
            if isinstance(row, bytes):
                f.write(row)


def reopen(path: Path, **kwargs) -> tuple[set[str], CheckpointStore]:
    store = CheckpointStore(path)
    try:
        done = store.open(FP, **kwargs)
    finally:
        store.close()
    return done, store


def test_row_line_keeps_field_order_and_from_dict_ignores_unknown_keys():
    row = Row("a", "text é", status="length", finish_reason="length", truncated=["subtitle"])
    data = row.to_line()
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert list(orjson.loads(data)) == [
        "file_id", "final_description", "reasoning", "status", "finish_reason", "prompt_tokens",
        "completion_tokens", "error", "prompt_sha", "truncated", "labels",
    ]
    assert Row.from_dict({**orjson.loads(data), "future_field": 1}) == row
    assert Row.from_dict({"file_id": "b"}) == Row("b", None)


def test_fresh_append_close_reopen_resumes(tmp_path):
    path = tmp_path / "out.jsonl"
    store = CheckpointStore(path)
    assert store.open(FP) == set()
    manifest = read_manifest(path)
    assert manifest["version"] == 1 and manifest["fingerprint"] == FP and manifest["created"]
    assert manifest["fingerprint_sha"] == hashlib.sha256(orjson.dumps(FP, option=orjson.OPT_SORT_KEYS)).hexdigest()
    store.append(Row("a", "one"))
    store.append(Row("b", None, status="error", error="boom"))
    store.append(Row("c", "cut", status="length"))
    store.close()
    store.close()  # idempotent
    assert [r.file_id for r in iter_rows(path)] == ["a", "b", "c"]

    with CheckpointStore(path) as again:
        assert again.open(FP) == {"a", "b", "c"}
        assert again.resumed == 3
        assert again.counts == {"ok": 1, "length": 1, "error": 1, "skipped": 0}
        again.append(Row("d", None, status="skipped"))
        assert again.counts["skipped"] == 1
    assert reopen(path)[0] == {"a", "b", "c", "d"}
    assert not list(tmp_path.glob("*.tmp"))


def test_fingerprint_with_tuples_and_int_floats_matches_the_stored_one(tmp_path):
    path = tmp_path / "out.jsonl"
    make(path, Row("a", "x"), fingerprint=fp(sampling__temperature=1.0, sampling__stop=["</s>"]))
    with CheckpointStore(path) as store:
        assert store.open(fp(sampling__temperature=1, sampling__stop=("</s>",))) == {"a"}


@pytest.mark.parametrize("tail", [
    b'{"file_id": "c", "final_descrip',  # killed mid-write, no newline
    line("c").rstrip(b"\n"),  # a whole object whose newline never made it
    b'{"file_id": "c", "final_descrip\n',  # half an object, then a newline
    b"\x00" * 300,  # a block of zeros after a power cut
])
def test_torn_last_line_is_cut_and_its_id_is_not_done(tmp_path, tail):
    path = tmp_path / "out.jsonl"
    make(path, Row("a", "x"), Row("b", "y"), tail)
    size = len(line("a", text="x")) + len(line("b", text="y"))
    assert [r.file_id for r in iter_rows(path)] == ["a", "b"]  # readers skip it too
    done, store = reopen(path)
    assert done == {"a", "b"}
    assert store.torn == len(tail)
    assert path.stat().st_size == size
    assert path.read_bytes().endswith(b"\n")


def test_damaged_middle_line_is_refused_with_its_number(tmp_path):
    path = tmp_path / "out.jsonl"
    make(path, Row("a", "x"), b'{"file_id": "b", "final_desc\n', line("c"), line("d"))
    before = path.read_bytes()
    with pytest.raises(CheckpointError) as err:
        reopen(path)
    assert str(err.value) == (
        f"{path} line 2 is damaged; run with --repair to move damaged lines to {path}.rejected and re-run those records"
    )
    assert path.read_bytes() == before  # nothing touched
    with pytest.raises(CheckpointError, match=r"line 2 is damaged"):
        list(iter_rows(path))


def test_several_damaged_lines_are_counted(tmp_path):
    path = tmp_path / "out.jsonl"
    make(path, Row("a", "x"), b"garbage\n", line("c"), b"[1, 2]\n", line("e"))
    with pytest.raises(CheckpointError, match=r"out.jsonl line 2 and 1 more are damaged; run with --repair"):
        reopen(path)


def test_repair_moves_damaged_lines_to_rejected_and_reruns_them(tmp_path):
    path = tmp_path / "out.jsonl"
    bad_b = b'{"file_id": "b", "status": "ok", "final_description": "tru\n'
    bad_x = b"\xff\xfe not json\n"
    make(path, Row("a", "x"), bad_b, line("c"), bad_x, line("d"), b'{"file_id": "e", "fin')
    done, store = reopen(path, repair=True)
    assert done == {"a", "c", "d"}
    assert store.rejected == 2 and store.torn > 0
    assert Path(f"{path}.rejected").read_bytes() == bad_b + bad_x
    assert path.read_bytes() == line("a", text="x") + line("c") + line("d")
    assert reopen(path)[0] == {"a", "c", "d"}  # clean now, no --repair needed


def test_duplicate_ids_keep_the_last_row(tmp_path):
    path = tmp_path / "out.jsonl"
    make(path, Row("a", None, status="error", error="x"), Row("b", "y"), Row("a", "fixed"))
    with CheckpointStore(path) as store:
        assert store.open(FP) == {"a", "b"}
        assert store.duplicates == 1
        assert store.counts == {"ok": 2, "length": 0, "error": 0, "skipped": 0}


def test_changed_fingerprint_is_refused_naming_the_fields(tmp_path):
    path = tmp_path / "out.jsonl"
    make(path, Row("a", "x"), fingerprint=fp(sampling__max_tokens=512))
    new = fp(sampling__max_tokens=1024, model="Qwen/Qwen3-4B", prompt_template="Long\ntemplate {subtitle}")
    before = path.read_bytes()
    with pytest.raises(CheckpointError) as err:
        CheckpointStore(path).open(new)
    assert str(err.value) == (
        f"{path} was written with another config (changed: model Qwen/Qwen3-8B -> Qwen/Qwen3-4B, prompt_template, "
        f"sampling.max_tokens 512 -> 1024); {OVERWRITE}"
    )
    assert path.read_bytes() == before
    with CheckpointStore(path) as store:  # the refused open released its lock
        assert store.open(new, overwrite=True) == set()


def test_fingerprint_diff_names_nested_fields():
    old = {"model": "m", "sampling": {"max_tokens": 1, "temperature": 1.0, "stop": []}, "sources": [{"a": 1}]}
    new = {"model": "m", "sampling": {"max_tokens": 2, "temperature": 1, "stop": ()}, "sources": [{"a": 2}], "x": 1}
    assert fingerprint_diff(old, new) == ["sampling.max_tokens", "sources[0].a", "x"]
    assert fingerprint_diff(old, old) == []
    assert fingerprint_diff({"flag": True}, {"flag": 1}) == ["flag"]


def test_overwrite_keeps_a_backup_and_never_replaces_an_older_one(tmp_path):
    path = tmp_path / "out.jsonl"
    make(path, Row("a", "first"))
    CheckpointStore(path).write_summary({"total": 1})
    # every backup name of the seconds around now is taken already (the C clock can lag time.time())
    now = time.time()
    taken = {f"{path}.bak-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now + s))}" for s in range(-2, 6)}
    for name in taken:
        Path(name).write_text("older backup")

    with CheckpointStore(path) as store:
        assert store.open(fp(model="other"), overwrite=True) == set()
        first = store.backup
        store.append(Row("b", "second"))
    assert str(first) not in taken and str(first)[:-2] in taken and str(first).endswith("-1")
    assert first.read_bytes() == line("a", text="first")
    assert read_manifest(first)["fingerprint"] == FP
    assert orjson.loads(Path(f"{first}.summary.json").read_bytes()) == {"total": 1}
    assert not Path(f"{path}.summary.json").exists()
    assert read_manifest(path)["fingerprint"]["model"] == "other"

    with CheckpointStore(path) as store:
        store.open(FP, overwrite=True)
        second = store.backup
    assert second != first and second.read_bytes() == line("b", text="second")
    assert first.read_bytes() == line("a", text="first")
    assert all(Path(name).read_text() == "older backup" for name in taken)
    assert path.read_bytes() == b""


def test_checkpoint_without_manifest_is_refused(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(line("a"))
    with pytest.raises(CheckpointError) as err:
        reopen(path)
    assert str(err.value) == (
        f"{path} has no manifest (out.jsonl.manifest.json), so the config it was written with cannot be checked; "
        f"{OVERWRITE}"
    )
    done, store = reopen(path, overwrite=True)
    assert done == set() and store.backup.read_bytes() == line("a")


def test_empty_checkpoint_without_manifest_starts_fresh(tmp_path):
    path = tmp_path / "out.jsonl"
    path.touch()
    assert reopen(path)[0] == set()
    assert read_manifest(path)["fingerprint"] == FP


def test_damaged_manifest_is_refused(tmp_path):
    path = tmp_path / "out.jsonl"
    make(path, Row("a", "x"))
    Path(f"{path}.manifest.json").write_text('{"version": 1, "fingerp')
    with pytest.raises(CheckpointError) as err:
        reopen(path)
    assert str(err.value) == (
        f"{path}.manifest.json is damaged, so the config {path} was written with cannot be checked; {OVERWRITE}"
    )
    done, store = reopen(path, overwrite=True)
    assert done == set() and store.backup.read_bytes() == line("a", text="x")
    assert read_manifest(path)["fingerprint"] == FP


def test_reading_a_missing_checkpoint_says_so(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint .*nothing.jsonl does not exist"):
        list(iter_rows(tmp_path / "nothing.jsonl"))


def test_missing_folder_is_refused(tmp_path):
    path = tmp_path / "nowhere" / "out.jsonl"
    with pytest.raises(CheckpointError) as err:
        CheckpointStore(path).open(FP)
    assert str(err.value) == f"folder {tmp_path / 'nowhere'} does not exist; create it or choose another --output"
    assert not path.parent.exists()


def test_second_store_in_the_same_process_is_refused(tmp_path):
    path = tmp_path / "out.jsonl"
    with CheckpointStore(path) as store:
        store.open(FP)
        with pytest.raises(CheckpointError, match=rf"in use by another run \(pid {os.getpid()}\)"):
            CheckpointStore(path).open(FP)
    assert reopen(path)[0] == set()


HOLDER = """
import sys, time
from s2_vllm.checkpoint import CheckpointStore
from s2_vllm.config import Config
store = CheckpointStore(sys.argv[1])
store.open(Config().fingerprint())
print("locked", flush=True)
time.sleep(120)
"""


def test_lock_held_by_a_live_process_blocks_and_a_killed_one_does_not(tmp_path):
    path = tmp_path / "out.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline() == b"locked\n"
        with pytest.raises(CheckpointError) as err:
            reopen(path)
        assert str(err.value) == (
            f"checkpoint {path} is in use by another run (pid {proc.pid}); wait for it or choose another --output"
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert Path(f"{path}.lock").exists()  # left behind by the killed run
    assert reopen(path)[0] == set()
    assert Path(f"{path}.lock").read_text() == f"{os.getpid()}\n"


def test_retry_failed_drops_error_rows_only(tmp_path):
    path = tmp_path / "out.jsonl"
    make(path, Row("a", "x"), Row("b", None, status="error", error="boom"), Row("c", "cu", status="length"),
         Row("d", None, status="skipped"))
    assert reopen(path)[0] == {"a", "b", "c", "d"}  # without it, every row is done
    done, store = reopen(path, retry_failed=True)
    assert done == {"a", "c", "d"}  # a row cut at max_tokens is a result
    assert store.retried == {"error": 1} and store.resumed == 3
    assert store.counts == {"ok": 1, "length": 1, "error": 0, "skipped": 1}
    assert [r.file_id for r in iter_rows(path)] == ["a", "c", "d"]


def _max_tokens(fingerprint: dict, n: int) -> dict:
    changed = orjson.loads(orjson.dumps(fingerprint))
    changed["sampling"]["max_tokens"] = n
    return changed


def test_retry_cut_drops_length_rows_and_takes_a_larger_max_tokens(tmp_path):
    path = tmp_path / "out.jsonl"
    make(path, Row("a", "x"), Row("b", None, status="error", error="boom"), Row("c", "cu", status="length"))
    larger, smaller = _max_tokens(FP, FP["sampling"]["max_tokens"] * 2), _max_tokens(FP, 8)
    with pytest.raises(CheckpointError, match=r"changed: sampling.max_tokens 1024 -> 2048\) \(--retry-cut takes a larger"):
        CheckpointStore(path).open(larger)
    with CheckpointStore(path) as store:
        assert store.open(larger, retry_cut=True) == {"a", "b"}
        assert (store.retried, store.raised_from) == ({"length": 1}, 1024)
    assert orjson.loads(Path(f"{path}.manifest.json").read_bytes())["fingerprint"] == orjson.loads(orjson.dumps(larger))
    with CheckpointStore(path) as store:  # the checkpoint now has the larger max_tokens
        assert store.open(larger) == {"a", "b"} and store.raised_from is None
    with pytest.raises(CheckpointError, match="another config"):  # never lowered, nothing else changed with it
        CheckpointStore(path).open(smaller, retry_cut=True)
    with CheckpointStore(path) as store:
        assert store.open(larger, retry_cut=True, retry_failed=True) == {"a"}
        assert store.retried == {"error": 1}


def _fill(store: CheckpointStore) -> list[str]:
    written = []
    with pytest.raises(CheckpointError) as err:
        for i in range(100_000):
            store.append(Row(f"id{i}", "x" * 1000))
            written.append(f"id{i}")
    assert str(err.value) == (
        f"cannot write {store.path}: No space left on device; everything up to the last whole line is kept, "
        "free some space and run the same command to resume"
    )
    with pytest.raises(CheckpointError, match="No space left on device"):  # and it stays failed
        store.append(Row("late", "x"))
    store.close()
    return written


def test_disk_full_through_dev_full(tmp_path):
    path = tmp_path / "out.jsonl"
    make(path, Row("a", "x"))
    store = CheckpointStore(path)
    assert store.open(FP) == {"a"}
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, store.fileno())  # the store's descriptor now writes to a full device
    os.close(full)
    assert _fill(store) == []
    assert reopen(path)[0] == {"a"}


def test_partly_written_line_after_disk_full_is_cut_on_next_open(tmp_path):
    path = tmp_path / "out.jsonl"
    make(path, Row("a", "x"), line("b")[:17])  # what a write cut short by ENOSPC leaves
    done, store = reopen(path)
    assert done == {"a"} and store.torn == 17


def test_write_summary_is_atomic_json(tmp_path):
    path = tmp_path / "out.jsonl"
    with CheckpointStore(path) as store:
        store.open(FP)
        store.write_summary({"written": 1, "model": "é"})
        store.write_summary({"written": 2})
    assert orjson.loads(Path(f"{path}.summary.json").read_bytes()) == {"written": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "out.jsonl", "out.jsonl.lock", "out.jsonl.manifest.json", "out.jsonl.summary.json",
    ]


def test_scan_of_many_lines(tmp_path):
    path = tmp_path / "out.jsonl"
    make(path)
    n = 20_000
    with open(path, "ab") as f:
        f.writelines(line(f"clip_{i:07d}", "error" if i % 100 == 0 else "ok") for i in range(n))
    start = time.perf_counter()
    done, store = reopen(path)
    elapsed = time.perf_counter() - start
    print(f"scanned {n} lines in {elapsed:.3f}s")
    assert len(done) == n and store.counts["error"] == n // 100
