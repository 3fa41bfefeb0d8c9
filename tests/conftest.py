from pathlib import Path

import pytest

from s2_vllm.tiny import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random Qwen3 model + locally trained tokenizer, built once per test session."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-qwen3")
