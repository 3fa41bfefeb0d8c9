"""extract-labels: the answer parser, the stage's config and records, and the stage on the tiny model."""

from helpers import rows
import pytest
from click.testing import CliRunner

from s2_vllm.checkpoint import CheckpointStore, Row, read_manifest
from s2_vllm.cli import cli
from s2_vllm.config import Config, PromptConfig
from s2_vllm.errors import UserError
from s2_vllm.evaluate import demo_gold_path
from s2_vllm.stage import shard_of
from s2_vllm.labels import LABEL_TEMPLATE, add_labels, description_records, label_stage, parse_labels
from s2_vllm.tiny import demo_paths

AUDIO, SUBTITLES = (str(p) for p in demo_paths())


@pytest.mark.parametrize("text, labels", [
    ("['happy', 'relaxed']", ["happy", "relaxed"]),
    ('["Happy", "Relaxed"]', ["happy", "relaxed"]),
    ("[happy, relaxed]", ["happy", "relaxed"]),
    ("happy, relaxed", ["happy", "relaxed"]),
    ("开心，放松、平静", ["开心", "放松", "平静"]),
    ("【开心，放松】", ["开心", "放松"]),
    ("Output: [Sad, anxious, and desperate.]", ["sad", "anxious", "desperate"]),
    ("Based on the clues, the emotions are: worried; tense", ["worried", "tense"]),
    ("[happy, HAPPY, 'happy', sad]", ["happy", "sad"]),
    ("[1. surprised, 2. curious (slightly)]", ["surprised", "curious"]),
    ("[ light-hearted ,  mildly   amused ]", ["light-hearted", "mildly amused"]),
    ("[]", []),
    ("Output: []", []),
    ("none", []),
    ("[None]", []),
    ("", []),
    (None, []),
    ("[happy, sad]\n\nDescription: another made-up example\nOutput: [angry]", ["happy", "sad"]),
    ("[happy, sad, ang", ["happy", "sad", "ang"]),
    ("<think>maybe angry?</think>\n\n[calm]", ["calm"]),
    ("[happy, the speaker seems to be rather upset now]", ["happy"]),
])
def test_parse_labels(text, labels):
    assert parse_labels(text) == labels


def test_add_labels_only_parses_ok_rows():
    assert add_labels(Row("a", "[Happy, sad]")).labels == ["happy", "sad"]
    assert add_labels(Row("a", "[happy", status="length")).labels is None
    assert add_labels(Row("a", None, status="skipped")).labels is None


def label_config(config, echo):
    return label_stage([]).configure(config, echo)


def test_label_config_replaces_a_fusion_template_and_keeps_a_description_one():
    echoed = []
    stage = label_config(Config(), echoed.append)
    assert stage.prompt.template == LABEL_TEMPLATE and echoed == []
    assert [(s.name, s.placeholder) for s in stage.sources] == [("description", "description")]
    stage.validate()

    fusion = Config(prompt=PromptConfig(template="Clues: {audio_description} {subtitle}", system="Be brief."))
    stage = label_config(fusion, echoed.append)
    assert stage.prompt.template == LABEL_TEMPLATE and stage.prompt.system == "Be brief."
    assert echoed == ["the config's [prompt] template has no {description}: using the built-in label prompt"]

    custom = Config(prompt=PromptConfig(template="Emotions in: {description}\nList:"))
    assert label_config(custom, echoed.append).prompt.template == "Emotions in: {description}\nList:"


def test_label_fingerprint_differs_from_fusion():
    fusion = Config().fingerprint()
    stage = label_stage([]).fingerprint(label_config(Config(), print), "")
    assert stage["stage"] == "extract-labels" and "stage" not in fusion
    assert stage["prompt_template"] != fusion["prompt_template"] and stage["sources"] != fusion["sources"]


def write_checkpoint(path, rows, fingerprint=None):
    with CheckpointStore(path) as store:
        store.open(fingerprint or {"model": "m"})
        for row in rows:
            store.append(row)
    return path


def test_description_records_take_ok_and_cut_rows_and_refuse_labels(tmp_path):
    path = write_checkpoint(tmp_path / "fused.jsonl", [
        Row("a", "  Happy voice. "), Row("b", "cut", status="length"), Row("c", None, status="skipped"),
        Row("d", ""), Row("e", "Sad."),
    ])
    echoed = []
    records = description_records([path], echoed.append)
    assert [(r.file_id, r.texts, r.skip_reason) for r in records] == [
        ("a", {"description": "Happy voice."}, None), ("b", {"description": "cut"}, None),
        ("d", {"description": ""}, "empty final_description"), ("e", {"description": "Sad."}, None),
    ]
    assert echoed == [f"read 5 rows from {path}: 4 descriptions to label (3 ok, 1 length; left out: 1 skipped)"]
    only_ok = description_records([path], echoed.append, ("ok",))
    assert [r.file_id for r in only_ok] == ["a", "d", "e"]
    assert echoed[-1] == f"read 5 rows from {path}: 3 descriptions to label (3 ok; left out: 1 length, 1 skipped)"

    labelled = write_checkpoint(tmp_path / "labels.jsonl", [Row("a", "[x]", labels=["x"])], {"stage": "extract-labels"})
    with pytest.raises(UserError, match="holds emotion labels"):
        description_records([labelled], echoed.append)


@pytest.fixture(scope="module")
def flow(tiny_model, tmp_path_factory):
    """The three commands on the demo data: run (12 records), extract-labels, evaluate."""
    tmp = tmp_path_factory.mktemp("flow")
    model = ["--engine", "hf", "--model", str(tiny_model), "--max-tokens", "16", "--no-progress"]
    fused, labels = tmp / "fused.jsonl", tmp / "labels.jsonl"
    results = [CliRunner().invoke(cli, ["run", *model, "--audio", AUDIO, "--subtitles", SUBTITLES,
                                        "--temperature", "0", "--limit", "12", "-o", str(fused)])]
    results.append(CliRunner().invoke(cli, ["extract-labels", str(fused), *model, "-o", str(labels)]))
    results.append(CliRunner().invoke(cli, ["evaluate", str(labels), "--gold", str(demo_gold_path())]))
    return fused, labels, model, results


def test_three_commands_end_to_end(flow):
    fused, labels, _, (run, extract, evaluate) = flow
    assert run.exit_code == 0, run.output
    assert extract.exit_code == 0, extract.output
    assert evaluate.exit_code == 0, evaluate.output
    usable = [r["file_id"] for r in rows(fused) if r["status"] in ("ok", "length")]
    assert extract.output.startswith(f"read 12 rows from {fused}: {len(usable)} descriptions to label (")
    lines = evaluate.output.splitlines()
    assert lines[0].startswith("scored samples: ")
    assert [line.split()[0] for line in lines[-4:-1]] == ["precision", "recall", "F-score"]
    assert all(len(line.split()[1]) == 6 for line in lines[-4:-1])  # 4 decimals
    assert lines[-1] == f"per-sample scores: {labels}.scores.csv"
    assert any(line.startswith("missing predictions: ") for line in lines)  # only 12 of the 50 gold samples


def test_stage_writes_one_labels_row_per_ok_or_cut_description(flow):
    fused, labels, _, _ = flow
    usable = [r["file_id"] for r in rows(fused) if r["status"] in ("ok", "length")]
    out = rows(labels)
    assert sorted(r["file_id"] for r in out) == sorted(usable)
    for row in out:
        if row["status"] == "ok":
            assert isinstance(row["labels"], list) and all(isinstance(x, str) for x in row["labels"])
            assert row["labels"] == parse_labels(row["final_description"])
        else:
            assert row["labels"] is None
    fingerprints = [read_manifest(p)["fingerprint"] for p in (fused, labels)]
    assert fingerprints[1]["stage"] == "extract-labels" and fingerprints[0] != fingerprints[1]


def test_stage_resumes_and_refuses_confusions(flow):
    fused, labels, model, _ = flow
    before = labels.read_bytes()
    again = CliRunner().invoke(cli, ["extract-labels", str(fused), *model, "-o", str(labels)])
    assert again.exit_code == 0, again.output
    n = len(rows(labels))
    assert f"resuming {labels}: {n} of {n} records already done\n" in again.output
    assert labels.read_bytes() == before

    changed = CliRunner().invoke(cli, ["extract-labels", str(fused), *model, "--max-tokens", "8", "-o", str(labels)])
    assert changed.exit_code == 2 and "was written with another config (changed: sampling.max_tokens 16 -> 8)" in \
        changed.stderr
    into_fusion = CliRunner().invoke(cli, ["run", "--engine", "hf", "--model", model[3], "--audio", AUDIO,
                                           "--subtitles", SUBTITLES, "--max-tokens", "16", "-o", str(labels)])
    assert into_fusion.exit_code == 2 and into_fusion.stderr == (
        f"Error: {labels} holds emotion labels (s2-vllm extract-labels), not fused descriptions (s2-vllm run): "
        "choose another -o, or --overwrite to start over (the old file is kept as a backup)\n")
    same = CliRunner().invoke(cli, ["extract-labels", str(fused), *model, "-o", str(fused)])
    assert same.stderr == f"Error: the output {fused} is also an input; choose another -o\n"
    chained = CliRunner().invoke(cli, ["extract-labels", str(labels), *model, "-o", str(labels) + ".2"])
    assert chained.stderr == f"Error: {labels} holds emotion labels; give the checkpoint written by `s2-vllm run`\n"


def test_stage_shards_and_limits_like_run(flow, tmp_path, monkeypatch):
    fused, _, model, _ = flow
    usable = [r["file_id"] for r in rows(fused) if r["status"] in ("ok", "length")]
    monkeypatch.chdir(tmp_path)
    shards = []
    for index in (0, 1):
        result = CliRunner().invoke(cli, ["extract-labels", str(fused), *model, "--shard", f"{index}/2"])
        assert result.exit_code == 0, result.output
        mine = [i for i in usable if shard_of(i, 2) == index]
        assert f"shard {index}/2: {len(mine)} records\n" in result.output
        shards.append(tmp_path / f"emotion_labels.shard-{index}-of-2.jsonl")
        assert sorted(r["file_id"] for r in rows(shards[-1])) == sorted(mine)  # rows land as they finish
    status = CliRunner().invoke(cli, ["status", *map(str, shards)])
    assert status.output.startswith(f"2 checkpoints: {len(usable)} records done")
    ok = [r["file_id"] for r in rows(fused) if r["status"] == "ok"]
    limited = CliRunner().invoke(cli, ["extract-labels", str(fused), *model, "--limit", "2", "--cut-rows", "skip",
                                       "-o", "two.jsonl"])
    assert limited.exit_code == 0, limited.output
    assert sorted(r["file_id"] for r in rows(tmp_path / "two.jsonl")) == sorted(ok[:2])


def test_stage_repairs_a_damaged_labels_checkpoint(flow, tmp_path):
    fused, labels, model, _ = flow
    copy = tmp_path / "labels.jsonl"
    lines = labels.read_bytes().splitlines(keepends=True)
    copy.write_bytes(lines[0] + b'{"file_id": \n' + b"".join(lines[2:]))
    (tmp_path / "labels.jsonl.manifest.json").write_bytes((labels.parent / "labels.jsonl.manifest.json").read_bytes())
    refused = CliRunner().invoke(cli, ["extract-labels", str(fused), *model, "-o", str(copy)])
    assert refused.exit_code == 2
    assert refused.stderr == (f"Error: {copy} line 2 is damaged; run with --repair to move damaged lines to "
                              f"{copy}.rejected and re-run those records\n")
    repaired = CliRunner().invoke(cli, ["extract-labels", str(fused), *model, "-o", str(copy), "--repair"])
    assert repaired.exit_code == 0, repaired.output
    assert f"moved 1 damaged line to {copy}.rejected; their records run again\n" in repaired.output
    assert sorted(r["file_id"] for r in rows(copy)) == sorted(r["file_id"] for r in rows(labels))
    assert (tmp_path / "labels.jsonl.rejected").read_bytes() == b'{"file_id": \n'
