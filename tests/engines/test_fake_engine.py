"""The shipped fake engine (`--engine fake`): deterministic answers, failures and refusals by id, through the CLI."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from helpers import rows

from s2_vllm.cli import cli
from s2_vllm.config import SamplingConfig
from s2_vllm.engines.base import GenerationRequest
from s2_vllm.engines.testing import FakeEngine, answer_words
from s2_vllm.tiny import demo_paths

AUDIO, SUBTITLES = (str(p) for p in demo_paths())


def finish(engine: FakeEngine) -> dict:
    done = {}
    while engine.has_unfinished():
        done.update({c.key: c for c in engine.step()})
    return done


def test_answers_are_a_function_of_the_prompt_and_its_clip():
    import numpy as np

    engine = FakeEngine(words=5)
    clip_a, clip_b = (np.full(160, v, np.float32) for v in (0.1, 0.2))
    for key, ids, audio in [("a", [1, 2, 3], None), ("b", [1, 2, 3], None), ("c", [1, 2, 4], None),
                            ("d", [1, 2, 3], (clip_a, 16000)), ("e", [1, 2, 3], (clip_b, 16000))]:
        engine.add(GenerationRequest(key, ids, seed=0, multi_modal_data=audio and {"audio": audio}))
    done = finish(engine)
    assert done["a"].text == done["b"].text  # same prompt, same answer, whatever the id
    assert len({done[k].text for k in "acde"}) == 4  # another prompt or another clip: another answer
    words = answer_words([1, 2, 3], b"", 5)
    assert done["a"].text == f"[{words[0]}, {words[1]}] {' '.join(words[2:])}"
    assert (done["a"].finish_reason, done["a"].completion_tokens, done["a"].prompt_tokens) == ("stop", 5, 3)


def test_out_of_order_cut_failed_and_refused():
    engine = FakeEngine(sampling=SamplingConfig(max_tokens=3), words=5, per_step=2, fail_ids=["f"],
                        refuse_ids=["r"])
    for key in "abcf":
        engine.add(GenerationRequest(key, [ord(key)], seed=0))
    try:
        engine.add(GenerationRequest("r", [1], seed=0))
    except ValueError as exc:
        refused = str(exc)
    assert refused == "the fake engine refuses r ([fake] refuse_ids)"
    assert [c.key for c in engine.step()] == ["f", "c"]  # newest first
    done = {"f": None, "c": None, **finish(engine)}
    assert list(done) == ["f", "c", "b", "a"]
    assert (done["a"].finish_reason, done["a"].completion_tokens) == ("length", 3)
    assert engine.peak_in_flight == 4 and engine.steps == 2


def test_run_on_the_fake_engine_from_the_command_line(tiny_model: Path, tmp_path: Path):
    config = tmp_path / "fake.toml"
    config.write_text('[fake]\nfail_ids = ["sample_00000002"]\nrefuse_ids = ["sample_00000003"]\n', "utf-8")
    out = tmp_path / "out.jsonl"
    args = ["run", "--config", str(config), "--engine", "fake", "--model", str(tiny_model), "--audio", AUDIO,
            "--subtitles", SUBTITLES, "--no-progress", "-o", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "wrote 47 rows (error 2, ok 44, skipped 1); 0 already done, 0 remain" in result.output
    by_id = {r["file_id"]: r for r in rows(out)}
    assert by_id["sample_00000002"]["error"] == "the fake engine failed it ([fake] fail_ids)"
    assert by_id["sample_00000003"]["error"] == "engine refused the request: the fake engine refuses " \
                                                "sample_00000003 ([fake] refuse_ids)"
    first = {k: r["final_description"] for k, r in by_id.items()}
    again = CliRunner().invoke(cli, [*args, "--overwrite"])
    assert again.exit_code == 0, again.output
    assert {r["file_id"]: r["final_description"] for r in rows(out)} == first  # deterministic


def test_a_refusal_never_holds_an_array_repr():
    from s2_vllm.engines.base import refusal

    vllm_said = ValueError("The audio [ 0.23312378 -0.06677246 -0.22073364\n  0.04678345 ... -0.12814331] (len=320) "
                           "is too short to be represented inside the model")
    assert refusal(vllm_said) == ("engine refused the request: The audio (len=320) is too short to be represented "
                                  "inside the model")
