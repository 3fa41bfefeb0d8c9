"""The one adapter over vLLM's internals, against the installed vLLM.

A vLLM release that moves or drops an internal s2-vllm reads fails here, in CI, instead of
silently turning the progress count or the dead-engine guard off in a user's run.
"""

from __future__ import annotations

import ast
import threading
from types import SimpleNamespace

import pytest

from s2_vllm.engines import vllm_api
from helpers import REPO

pytest.importorskip("vllm")
PACKAGE = REPO / "s2_vllm"


def test_every_internal_is_in_the_installed_vllm():
    assert vllm_api.static_problems() == {}


def test_the_installed_vllm_is_a_version_the_adapter_was_written_for():
    assert vllm_api.written_for(vllm_api.version()), vllm_api.version()


def test_a_moved_internal_is_reported_with_what_is_off(monkeypatch):
    from vllm.v1.engine import output_processor

    monkeypatch.setattr(output_processor.OutputProcessor, "__init__", lambda self: None)
    problems = vllm_api.static_problems()
    assert list(problems) == ["tokens"]


def test_an_engine_without_the_internals_says_so_in_one_header_line():
    bare = SimpleNamespace(vllm_config=SimpleNamespace(scheduler_config=SimpleNamespace(max_num_seqs=8)))
    internals = vllm_api.Internals(bare, problems={})
    assert set(internals.missing) == {"tokens", "death", "shutdown"}
    assert internals.max_num_seqs == 8 and internals.tokens_in_flight() == 0 and not internals.core_dead()
    [line] = internals.header_lines()
    assert line.startswith(f"vLLM {vllm_api.version()}; off: the progress bar counts the tokens of finished "
                           "requests only (LLMEngine.output_processor.request_states")
    assert "a killed EngineCore process may hang the run instead of stopping it" in line


def test_an_unknown_version_is_said_even_when_everything_is_there(monkeypatch):
    states = {"a": SimpleNamespace(detokenizer=SimpleNamespace(num_output_tokens=lambda: 5))}
    resources, outputs = SimpleNamespace(engine_dead=False), SimpleNamespace(put_nowait=lambda item: None)
    engine = SimpleNamespace(
        output_processor=SimpleNamespace(request_states=states),
        engine_core=SimpleNamespace(resources=resources, outputs_queue=outputs, shutdown=lambda: None),
        vllm_config=SimpleNamespace(scheduler_config=SimpleNamespace(max_num_seqs=4)))
    internals = vllm_api.Internals(engine, problems={})
    assert internals.missing == {} and internals.header_lines() == [] and internals.tokens_in_flight() == 5
    internals.version = "9.1.0"
    assert internals.header_lines() == ["vLLM 9.1.0 is not a version s2-vllm was tested with (0.26); "
                                        "every vLLM internal it uses is there"]


def test_a_dead_core_wakes_the_blocked_step():
    import queue

    resources, outputs = SimpleNamespace(engine_dead=False), queue.Queue()
    engine = SimpleNamespace(engine_core=SimpleNamespace(resources=resources, outputs_queue=outputs))
    internals, closed = vllm_api.Internals(engine, problems={}), threading.Event()
    internals.wake_step_on_core_death(closed)
    resources.engine_dead = True
    woken = outputs.get(timeout=5)
    closed.set()
    assert isinstance(woken, RuntimeError) and internals.core_dead()


def test_no_module_but_the_adapter_reaches_into_vllm_internals():
    """Only documented names are imported from vllm outside vllm_api.py: LLM, SamplingParams, inputs."""
    documented = {"vllm", "vllm.inputs", "vllm.outputs"}
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "vllm_api.py":
            continue
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vllm":
                if node.module not in documented:
                    offenders.append(f"{path.name}: from {node.module} import ...")
            elif isinstance(node, ast.Import):
                offenders += [f"{path.name}: import {a.name}" for a in node.names if a.name.startswith("vllm.")]
            elif isinstance(node, ast.Attribute) and node.attr in ("output_processor", "engine_core", "resources",
                                                                    "outputs_queue", "scheduler_config"):
                offenders.append(f"{path.name}:{node.lineno}: .{node.attr}")
    assert offenders == []


def test_an_engine_core_in_this_process_has_no_process_to_watch():
    """VLLM_ENABLE_V1_MULTIPROCESSING=0: the core client holds the EngineCore itself; nothing is off."""
    inproc = SimpleNamespace(engine_core=object(), shutdown=lambda: None)
    engine = SimpleNamespace(output_processor=SimpleNamespace(request_states={}), engine_core=inproc,
                             vllm_config=SimpleNamespace(scheduler_config=SimpleNamespace(max_num_seqs=4)))
    internals = vllm_api.Internals(engine, problems={})
    assert internals.missing == {} and not internals.core_dead()


def test_the_seeded_sampler_follows_the_batch_and_draws_each_managed_row():
    """vLLM's BatchUpdate (removed, added, moved) kept row by row; rows without s2-vllm's extra_args untouched."""
    import torch
    from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

    from s2_vllm.config import SamplingConfig
    from s2_vllm.engines.seeded_sampling import choose_tokens
    from s2_vllm.engines.vllm import sampling_params

    assert vllm_api.sampler_ready() == (True, "")
    sampler = vllm_api.SeededSampler(None, torch.device("cpu"), False)
    s = SamplingConfig(temperature=0.9, top_k=7, top_p=0.9)
    ours = {seed: sampling_params(s, seed, "s2") for seed in (11, 22, 33)}
    theirs = sampling_params(s, 44, "vllm")
    outputs = {11: [1, 2], 22: [], 33: [5]}
    sampler.update_state(BatchUpdate(4, [], [(0, ours[11], None, outputs[11]), (1, theirs, None, []),
                                             (2, ours[22], None, outputs[22]), (3, ours[33], None, outputs[33])], []))

    def expect(seed, row):
        one = lambda v, dtype: torch.tensor([v], dtype=dtype)  # noqa: E731
        return int(choose_tokens(row[None], one(seed, torch.int64), one(len(outputs[seed]), torch.int64),
                                 one(0.9, torch.float32), one(7, torch.int64), one(0.9, torch.float32),
                                 one(0.0, torch.float32), k_max=7))

    torch.manual_seed(0)
    logits = torch.randn(4, 300)
    out = sampler.apply(logits.clone())
    assert torch.equal(out[1], logits[1])  # vLLM's own seeded request
    for row, seed in ((0, 11), (2, 22), (3, 33)):
        assert out[row].argmax() == expect(seed, logits[row]) and torch.isfinite(out[row]).sum() == 1
    outputs[22].append(9)  # a step later: the position moves on, so does the draw
    sampler.update_state(BatchUpdate(3, [1], [], [(3, 1, MoveDirectionality.UNIDIRECTIONAL),
                                                  (0, 2, MoveDirectionality.SWAP)]))
    assert {i: r[0] for i, r in sampler.rows.items()} == {0: 22, 1: 33, 2: 11}
    logits = torch.randn(3, 300)
    out = sampler.apply(logits.clone())
    assert [int(out[i].argmax()) for i in range(3)] == [expect(22, logits[0]), expect(33, logits[1]),
                                                        expect(11, logits[2])]
    p = sampling_params(s, 11, "s2")
    assert (p.temperature, p.seed, p.extra_args[vllm_api.SAMPLER_EXTRA]) == (0.0, None, [11, 0.9, 7, 0.9, 0.0])
    assert (theirs.seed, theirs.temperature, theirs.extra_args) == (44, 0.9, None)
