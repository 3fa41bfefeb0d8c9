from pathlib import Path

import pytest

import session_guard
from s2_vllm.tiny import build_tiny_model
from s2_vllm.tiny_omni import build_tiny_omni
from s2_vllm.tiny_vl import build_tiny_vl

_LEFTOVERS = pytest.StashKey[list]()  # what session_guard found still running at the end
_STATUS = pytest.StashKey[int]()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random Qwen3 model + locally trained tokenizer, built once per test session."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-qwen3")


@pytest.fixture(scope="session")
def tokenizer(tiny_model):
    """The tiny model's tokenizer (a real fast tokenizer with Qwen3's chat template)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="session")
def tiny_omni(tmp_path_factory) -> Path:
    """A tiny random Qwen2.5-Omni thinker (audio in, text out) with its processor, built once per test session."""
    return build_tiny_omni(tmp_path_factory.mktemp("omni") / "tiny-qwen2.5-omni")


@pytest.fixture(scope="session")
def tiny_vl(tmp_path_factory) -> Path:
    """A tiny random Qwen2.5-VL (video in, text out) with its processor, built once per test session."""
    return build_tiny_vl(tmp_path_factory.mktemp("vl") / "tiny-qwen2.5-vl")


def pytest_collection_modifyitems(config, items):
    """Tests marked `vllm` run wherever a vLLM engine can start (its CPU build, or CUDA), else skip."""
    marked = [item for item in items if "vllm" in item.keywords]
    if not marked:
        return
    from s2_vllm.demo import choose_engine

    engine, why = choose_engine()
    if engine != "vllm":
        skip = pytest.mark.skip(reason=f"no vLLM engine can start here: {why}")
        for item in marked:
            item.add_marker(skip)


def pytest_configure(config):
    session_guard.start()


@pytest.hookimpl(trylast=True)  # after the session's fixtures are torn down
def pytest_sessionfinish(session, exitstatus):
    session.config.stash[_LEFTOVERS] = session_guard.stop_leftovers()
    session.config.stash[_STATUS] = int(exitstatus)


def pytest_terminal_summary(terminalreporter, config):
    left = config.stash.get(_LEFTOVERS, [])
    if left:
        terminalreporter.write_sep("-", f"{len(left)} processes the tests left running (killed now)")
        for line in left:
            terminalreporter.write_line(line)


def pytest_unconfigure(config):
    session_guard.bound_exit(config.stash.get(_STATUS, 1))
