from pathlib import Path

import pytest

from s2_vllm.tiny import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random Qwen3 model + locally trained tokenizer, built once per test session."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-qwen3")


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
