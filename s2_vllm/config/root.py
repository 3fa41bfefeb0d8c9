"""The whole run configuration: the tables of `tables.py` together, and the checks across them.

The defaults reproduce the tutorial: audio descriptions under `generated_text`, subtitles
under `english_transcription`, both keyed by `file_id`, fused with the S2 prompt by Qwen3-8B
with thinking off. A TOML file overrides any of it; CLI flags override the file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from s2_vllm.config import fingerprint as fp
from s2_vllm.config.schema import check_all
from s2_vllm.config.tables import (
    TABLES,
    AudioConfig,
    DecodeConfig,
    EngineConfig,
    FakeConfig,
    HFConfig,
    ParallelConfig,
    PromptConfig,
    RunConfig,
    SamplingConfig,
    SourceSpec,
    VideoConfig,
    default_sources,
    optional_sources,
)
from s2_vllm.errors import ConfigError
from s2_vllm.template import PromptTemplate


@dataclass
class Config:
    engine: EngineConfig = field(default_factory=EngineConfig)
    sources: list[SourceSpec] = field(default_factory=default_sources)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    hf: HFConfig = field(default_factory=HFConfig)
    fake: FakeConfig = field(default_factory=FakeConfig)
    run: RunConfig = field(default_factory=RunConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def source(self, name: str) -> SourceSpec:
        for spec in self.sources:
            if spec.name == name:
                return spec
        raise ConfigError(f"no source named '{name}' in the config (have: {', '.join(s.name for s in self.sources)})")

    def with_source_path(self, name: str, path: str) -> None:
        known = {s.name for s in self.sources}
        self.sources += [s for s in optional_sources() if s.name == name and name not in known]
        spec = self.source(name)
        self.sources = [dataclasses.replace(s, path=path) if s is spec else s for s in self.sources]

    def template(self) -> PromptTemplate:
        return PromptTemplate.parse(self.prompt.template, {s.placeholder for s in self.sources})

    def validate(self) -> None:
        """Every key of every table against the schema, then the rules that join tables."""
        for table in TABLES:
            check_all(getattr(self, table), table)
        for spec in self.sources:
            check_all(spec, f"sources.{spec.name}")
        placeholders = [s.placeholder for s in self.sources]
        if len(set(placeholders)) != len(placeholders):
            raise ConfigError("two sources share one placeholder")
        missing = [s.placeholder for s in self.sources if s.placeholder not in self.template().placeholders]
        if missing:
            raise ConfigError(f"prompt template never uses {{{missing[0]}}}, so its source would be read for nothing")

    def fingerprint(self, *, stage: str | None = None, marks: Mapping[str, Any] | None = None,
                    chat_template: str | None = None) -> dict:
        """Everything that changes a result row (see `fingerprint.build`)."""
        return fp.build(self, stage=stage, marks=marks, chat_template=chat_template)
