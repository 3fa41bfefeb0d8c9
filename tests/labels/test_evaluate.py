"""evaluate: OV-MER's set-level precision/recall/F on hand-made cases, the input files and the command."""

import pytest
from click.testing import CliRunner

from s2_vllm.checkpoint import CheckpointStore, Row
from s2_vllm.cli import cli
from s2_vllm.errors import InputError, UserError
from s2_vllm.evaluate import demo_gold_path, evaluate, read_gold, read_predictions, read_synonyms


def test_perfect_match():
    result = evaluate({"a": ["happy", "sad"], "b": ["angry"]}, {"a": ["sad", "happy"], "b": ["angry"]})
    assert (result.precision, result.recall, result.fscore) == (1.0, 1.0, 1.0)


def test_partial_empty_prediction_empty_gold_and_missing_samples():
    gold = {"a": ["happy", "sad"], "b": ["happy", "sad"], "c": ["angry"], "d": [], "e": ["calm"]}
    predicted = {"a": ["happy", "sad"], "b": ["happy", "angry"], "c": [], "d": ["happy"], "f": ["sad"]}
    result = evaluate(gold, predicted)
    assert [(s.name, s.precision, s.recall) for s in result.samples] == [
        ("a", 1.0, 1.0), ("b", 0.5, 0.5), ("c", 0.0, 0.0)]
    assert (result.precision, result.recall, result.fscore) == (0.5, 0.5, 0.5)
    assert (result.empty_gold, result.gold_only, result.predicted_only) == (1, ["e"], ["f"])


def test_precision_and_recall_differ():
    # P = (1/4 + 1) / 2 = 5/8, R = (1/2 + 1/4) / 2 = 3/8, F = 2PR/(P+R) = 2 * 15/64 / 1 = 15/32
    gold = {"a": ["happy", "sad"], "b": ["happy", "sad", "angry", "calm"]}
    predicted = {"a": ["happy", "x", "y", "z"], "b": ["calm"]}
    result = evaluate(gold, predicted)
    assert (result.precision, result.recall, result.fscore) == (5 / 8, 3 / 8, 15 / 32)


def test_nothing_scored_is_zero_not_a_division_error():
    result = evaluate({"a": []}, {"a": ["happy"], "b": ["sad"]})
    assert (result.samples, result.precision, result.recall, result.fscore) == ([], 0.0, 0.0, 0.0)


def test_synonym_groups_merge_labels_and_raise_scores():
    gold = {"a": ["happy", "sad"]}
    predicted = {"a": ["joyful", "glad", "sad", "sorrowful"]}
    plain = evaluate(gold, predicted)
    assert (plain.precision, plain.recall) == (0.25, 0.5)
    merged = evaluate(gold, predicted, {"joyful": "happy", "glad": "happy", "sorrowful": "sad"})
    assert merged.samples[0].predicted == {"happy", "sad"}
    assert (merged.precision, merged.recall, merged.fscore) == (1.0, 1.0, 1.0)
    both = evaluate({"a": ["happy", "joyful"]}, {"a": ["glad"]}, {"joyful": "pos", "glad": "pos", "happy": "pos"})
    assert (both.samples[0].gold, both.precision, both.recall) == ({"pos"}, 1.0, 1.0)


def test_read_gold_formats(tmp_path):
    path = tmp_path / "gold.csv"
    path.write_text("\ufeffname,openset,extra\n"
                    "s1,\"['Happy', 'relaxed ']\",x\n"
                    "s2,\"[\"\"sad\"\"]\",x\n"
                    "s3,\"[worried, tense]\",x\n"
                    "s4,[],x\n"
                    "s5,,x\n"
                    "s6,\"开心，放松\",x\n", encoding="utf-8")
    assert read_gold(path) == {"s1": ["happy", "relaxed"], "s2": ["sad"], "s3": ["worried", "tense"], "s4": [],
                               "s5": [], "s6": ["开心", "放松"]}
    assert read_gold(path, "name", "extra")["s1"] == ["x"]
    with pytest.raises(InputError, match=r"has no column 'labels' \(columns: name, openset, extra\); see --gold-key"):
        read_gold(path, label_key="labels")
    path.write_text("name,openset\ns1,[a]\ns1,[b]\n")
    with pytest.raises(InputError, match="name 's1' appears twice"):
        read_gold(path)


def test_demo_gold_covers_the_demo_ids():
    gold = read_gold(demo_gold_path())
    assert list(gold) == [f"sample_{i:08d}" for i in range(1, 51)]
    assert gold["sample_00000001"] == ["excited", "delighted", "happy"] and gold["sample_00000033"] == []


def test_read_synonyms_json_and_csv(tmp_path):
    js = tmp_path / "syn.json"
    js.write_text('{"Joyful": "happy", "glad": "Happy"}')
    assert read_synonyms(js) == {"joyful": "happy", "glad": "happy"}
    js.write_text('{"joyful": ["happy"]}')
    with pytest.raises(InputError, match="must be a JSON object mapping each label to its group name"):
        read_synonyms(js)
    for header in ("label,group\n", ""):
        cs = tmp_path / "syn.csv"
        cs.write_text(header + "joyful,happy\nsorrowful,sad\n")
        assert read_synonyms(cs) == {"joyful": "happy", "sorrowful": "sad"}
    cs.write_text("joyful,happy,extra\n")
    with pytest.raises(InputError, match="row 1 has 3 fields; a synonym map has two: label,group"):
        read_synonyms(cs)


@pytest.fixture
def labels(tmp_path):
    path = tmp_path / "labels.jsonl"
    with CheckpointStore(path) as store:
        store.open({"stage": "extract-labels"})
        store.append(Row("a", "[happy, sad]", labels=["happy", "sad"]))
        store.append(Row("b", "[joyful, angry]", labels=["joyful", "angry"]))
        store.append(Row("c", "[]", labels=[]))
        store.append(Row("e", "cut", status="length"))
        store.append(Row("z", "[calm]", labels=["calm"]))
    gold = tmp_path / "gold.csv"
    gold.write_text("name,openset\na,\"['happy', 'sad']\"\nb,\"['happy', 'sad']\"\nc,['angry']\nd,[]\n"
                    "e,['calm']\nf,['calm']\n")
    synonyms = tmp_path / "syn.json"
    synonyms.write_text('{"joyful": "happy"}')
    return path, gold, synonyms


def test_evaluate_command_output_and_scores_file(labels):
    path, gold, synonyms = labels
    result = CliRunner().invoke(cli, ["evaluate", str(path), "--gold", str(gold)])
    assert result.exit_code == 0, result.output
    assert result.output == (
        "scored samples: 3\n"
        "missing predictions: 3 gold samples have no labels (not scored; 1 of them failed or were skipped), "
        "e.g. d, e, f\n"
        "missing gold: 1 labelled samples are not in the gold file (not scored), e.g. z\n"
        "precision  0.3333\n"
        "recall     0.3333\n"
        "F-score    0.3333\n"
        f"per-sample scores: {path}.scores.csv\n"
    )
    assert (path.parent / "labels.jsonl.scores.csv").read_bytes().decode() == (
        "name,gold,predicted,matched,precision,recall\r\n"
        'a,"[""happy"",""sad""]","[""happy"",""sad""]","[""happy"",""sad""]",1,1\r\n'
        'b,"[""happy"",""sad""]","[""angry"",""joyful""]",[],0,0\r\n'
        'c,"[""angry""]",[],[],0,0\r\n'
    )
    again = CliRunner().invoke(cli, ["evaluate", str(path), "--gold", str(gold)])
    assert (again.exit_code, again.stderr) == (2, f"Error: {path}.scores.csv exists; use --force to replace it\n")

    out = path.parent / "merged.csv"
    merged = CliRunner().invoke(cli, ["evaluate", str(path), "--gold", str(gold), "--synonyms", str(synonyms),
                                      "--scores", str(out)])
    assert merged.exit_code == 0, merged.output
    # b's {joyful, angry} becomes {happy, angry}: 1/2, 1/2, so P = R = (1 + 1/2 + 0) / 3 = 1/2 (from 1/3)
    assert merged.output.splitlines()[3:6] == ["precision  0.5000", "recall     0.5000", "F-score    0.5000"]
    assert 'b,"[""happy"",""sad""]","[""angry"",""happy""]","[""happy""]",0.5,0.5' in out.read_bytes().decode()


def test_evaluate_refuses_a_fusion_checkpoint(tmp_path):
    path = tmp_path / "fused.jsonl"
    with CheckpointStore(path) as store:
        store.open({"model": "m"})
        store.append(Row("a", "A happy voice."))
    gold = demo_gold_path()
    result = CliRunner().invoke(cli, ["evaluate", str(path), "--gold", str(gold)])
    assert (result.exit_code, result.stderr) == (
        2, f"Error: {path} is not an extract-labels checkpoint; run `s2-vllm extract-labels` on it first\n")
    with pytest.raises(UserError, match="not an extract-labels checkpoint"):
        read_predictions(path)
