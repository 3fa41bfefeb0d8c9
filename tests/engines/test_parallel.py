"""Tensor and pipeline parallel shapes: refused before any engine starts when the model cannot take them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from s2_vllm.config import EngineConfig
from s2_vllm.engines.parallel import check_shape, rank_binding
from s2_vllm.errors import ConfigError
from s2_vllm.model_config import read_model_config


def test_the_tiny_model_splits_over_two_ranks_either_way(tiny_model):
    model = read_model_config(EngineConfig(model=str(tiny_model)))  # 4 heads, 2 key/value heads, 2 layers
    check_shape(EngineConfig(model="tiny", tensor_parallel_size=2), model)
    check_shape(EngineConfig(model="tiny", tensor_parallel_size=4), model)  # key/value heads repeated
    check_shape(EngineConfig(model="tiny", pipeline_parallel_size=2), model)
    with pytest.raises(ConfigError) as err:
        check_shape(EngineConfig(model="tiny", tensor_parallel_size=3), model)
    assert str(err.value) == ("engine.tensor_parallel_size = 3 does not split tiny's 4 attention heads (2 key/value "
                              "heads) evenly: use one of 1, 2, 4")
    with pytest.raises(ConfigError) as err:
        check_shape(EngineConfig(model="tiny", pipeline_parallel_size=3), model)
    assert str(err.value) == "engine.pipeline_parallel_size = 3 is more than tiny's 2 layers: use at most 2"


def test_qwen3_32bs_shape_takes_the_shipped_tp2():
    qwen3_32b = SimpleNamespace(num_attention_heads=64, num_key_value_heads=8, num_hidden_layers=64)
    check_shape(EngineConfig(model="Qwen/Qwen3-32B", tensor_parallel_size=2), qwen3_32b)
    with pytest.raises(ConfigError, match=r"use one of 1, 2, 4, 8, 16, 32, 64$"):  # 8 KV heads: 16+ repeat them
        check_shape(EngineConfig(model="Qwen/Qwen3-32B", tensor_parallel_size=6), qwen3_32b)
    check_shape(EngineConfig(model="unreadable", tensor_parallel_size=3), None)  # no config: vLLM decides


def test_rank_binding_splits_cores_evenly_and_disjointly():
    assert rank_binding([0, 1], 2) == [[0], [1]]
    assert rank_binding(list(range(5)), 2) == [[0, 1, 2], [3, 4]]
    assert rank_binding([4, 5, 6, 7], 4) == [[4], [5], [6], [7]]
    assert rank_binding([3], 2) == [[3], [3]]  # fewer cores than ranks (a Ray actor): they share
