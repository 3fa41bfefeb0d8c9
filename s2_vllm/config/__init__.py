"""The run configuration: the schema (`tables.py`), the whole (`root.py`), loading (`load.py`),
the checkpoint fingerprint (`fingerprint.py`) and the generated docs (`docs.py`)."""

from s2_vllm.config.load import apply_overrides, config_from_dict, load_config
from s2_vllm.config.root import Config
from s2_vllm.config.tables import (
    ENGINES,
    ON_DUPLICATE,
    SOURCE_FORMATS,
    TABLES,
    AudioConfig,
    EngineConfig,
    FakeConfig,
    HFConfig,
    ParallelConfig,
    PromptConfig,
    RunConfig,
    SamplingConfig,
    SourceSpec,
    default_sources,
)

__all__ = [
    "ENGINES", "ON_DUPLICATE", "SOURCE_FORMATS", "TABLES", "AudioConfig", "Config", "EngineConfig", "FakeConfig",
    "HFConfig", "ParallelConfig", "PromptConfig", "RunConfig", "SamplingConfig", "SourceSpec", "apply_overrides", "config_from_dict",
    "default_sources", "load_config",
]
