"""Run configuration: TOML tables mapped onto dataclasses, validated before any model loads.

The defaults reproduce the tutorial: audio descriptions under `generated_text`, subtitles
under `english_transcription`, both keyed by `file_id`, fused with the S2 prompt by Qwen3-8B
with thinking off. A TOML file overrides any of it; CLI flags override the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s2_vllm.errors import ConfigError
from s2_vllm.template import DEFAULT_TEMPLATE, PromptTemplate


@dataclass(frozen=True)
class SourceSpec:
    """One input file joined by id; its text fills `{placeholder}` in the template."""

    name: str
    placeholder: str
    id_key: str = "file_id"
    text_key: str = "text"
    path: str | None = None
    format: str | None = None  # json | jsonl | csv; None = by extension, then content


@dataclass
class PromptConfig:
    template: str = DEFAULT_TEMPLATE
    system: str | None = None
    enable_thinking: bool = False
    too_long: str = "truncate"  # truncate | error


@dataclass
class SamplingConfig:
    max_tokens: int = 1024
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: list[str] = field(default_factory=list)
    seed: int = 0
    ignore_eos: bool = False  # benchmarks only: always generate max_tokens

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class EngineConfig:
    """Model identity (shared by every engine) and vLLM engine arguments.

    None means "the engine's own default". `extra` passes any other vLLM engine
    argument through unchanged.
    """

    model: str = "Qwen/Qwen3-8B"
    tokenizer: str | None = None
    revision: str | None = None
    dtype: str = "auto"
    max_model_len: int | None = None
    trust_remote_code: bool = False
    seed: int | None = None
    tensor_parallel_size: int | None = None
    pipeline_parallel_size: int | None = None
    distributed_executor_backend: str | None = None
    gpu_memory_utilization: float | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    enable_prefix_caching: bool | None = None
    kv_cache_dtype: str | None = None
    quantization: str | None = None
    enforce_eager: bool | None = None
    load_format: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class HFConfig:
    """The transformers engine (CPU, tests, baselines)."""

    batch_size: int = 8
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass
class RunConfig:
    engine: str = "vllm"  # vllm | hf
    output: str = "s2_final_descriptions.jsonl"
    on_duplicate: str = "error"  # error | first | last
    in_flight: int | None = None  # requests kept in the engine; None = the engine's choice


@dataclass
class ParallelConfig:
    """Data parallelism: engine replicas on this node (processes) or on a Ray cluster (actors)."""

    replicas: int = 1  # engine workers, each with tensor_parallel_size x pipeline_parallel_size GPUs
    ray_address: str | None = None  # auto | HOST:PORT | local (a private Ray); None = no Ray
    max_attempts: int = 2  # a record whose replica died this many times becomes an error row


def default_sources() -> list[SourceSpec]:
    return [
        SourceSpec("subtitle", "subtitle", "file_id", "english_transcription"),
        SourceSpec("audio", "audio_description", "file_id", "generated_text"),
    ]


@dataclass
class Config:
    engine: EngineConfig = field(default_factory=EngineConfig)
    sources: list[SourceSpec] = field(default_factory=default_sources)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    hf: HFConfig = field(default_factory=HFConfig)
    run: RunConfig = field(default_factory=RunConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def source(self, name: str) -> SourceSpec:
        for spec in self.sources:
            if spec.name == name:
                return spec
        raise ConfigError(f"no source named '{name}' in the config (have: {', '.join(s.name for s in self.sources)})")

    def with_source_path(self, name: str, path: str) -> None:
        spec = self.source(name)
        self.sources = [dataclasses.replace(s, path=path) if s is spec else s for s in self.sources]

    def template(self) -> PromptTemplate:
        return PromptTemplate.parse(self.prompt.template, {s.placeholder for s in self.sources})

    def validate(self) -> None:
        _choice("prompt.too_long", self.prompt.too_long, ("truncate", "error"))
        _choice("run.engine", self.run.engine, ("vllm", "hf"))
        _choice("run.on_duplicate", self.run.on_duplicate, ("error", "first", "last"))
        if not self.sources:
            raise ConfigError("the config declares no sources")
        placeholders = [s.placeholder for s in self.sources]
        if len(set(placeholders)) != len(placeholders):
            raise ConfigError("two sources share one placeholder")
        for spec in self.sources:
            if spec.format not in (None, "json", "jsonl", "csv"):
                raise ConfigError(f"sources.{spec.name}.format must be json, jsonl or csv, not '{spec.format}'")
        missing = [s.placeholder for s in self.sources if s.placeholder not in self.template().placeholders]
        if missing:
            raise ConfigError(f"prompt template never uses {{{missing[0]}}}, so its source would be read for nothing")
        s = self.sampling
        if s.max_tokens < 1:
            raise ConfigError("sampling.max_tokens must be at least 1")
        if s.temperature < 0:
            raise ConfigError("sampling.temperature must be >= 0")
        if not 0 < s.top_p <= 1:
            raise ConfigError("sampling.top_p must be in (0, 1]")
        if self.hf.batch_size < 1:
            raise ConfigError("hf.batch_size must be at least 1")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(self.hf.device)):
            raise ConfigError(f"hf.device must be auto, cpu, cuda or cuda:N, not '{self.hf.device}'")
        if self.engine.max_model_len is not None and self.engine.max_model_len < 1:
            raise ConfigError("engine.max_model_len must be at least 1")
        if self.parallel.replicas < 1:
            raise ConfigError("parallel.replicas must be at least 1")
        if self.parallel.max_attempts < 1:
            raise ConfigError("parallel.max_attempts must be at least 1")
        if self.parallel.ray_address is not None and not isinstance(self.parallel.ray_address, str):
            raise ConfigError("parallel.ray_address must be a string: auto, HOST:PORT or local")

    def fingerprint(self) -> dict[str, Any]:
        """Everything that changes a result row; speed knobs are left out on purpose."""
        e = self.engine
        return {
            "model": e.model,
            "tokenizer": e.tokenizer,
            "revision": e.revision,
            "dtype": e.dtype,
            "quantization": e.quantization,
            "max_model_len": e.max_model_len,
            "prompt_template": self.prompt.template,
            "system_prompt": self.prompt.system,
            "enable_thinking": self.prompt.enable_thinking,
            "too_long": self.prompt.too_long,
            "sampling": dataclasses.asdict(self.sampling),
            "sources": [
                {"name": s.name, "placeholder": s.placeholder, "id_key": s.id_key, "text_key": s.text_key}
                for s in self.sources
            ],
            # These change the numbers too (an fp8 KV cache, dummy weights); they are only present when
            # set, so checkpoints written before they were fingerprinted still resume.
            **{name: value for name in ("kv_cache_dtype", "load_format") if (value := getattr(e, name)) is not None},
        }


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, not '{value}'")


_TABLES = {"engine": EngineConfig, "prompt": PromptConfig, "sampling": SamplingConfig, "hf": HFConfig, "run": RunConfig,
           "parallel": ParallelConfig}
_SOURCE_KEYS = {f.name for f in dataclasses.fields(SourceSpec)} - {"name"}


def _unknown(key: str, known: set[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown key '{key}' in {where}{hint}")


def _typed(table: str, cls: type, values: dict[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in fields:
            raise _unknown(key, set(fields), f"[{table}]")
        default = getattr(cls(), key)
        if default is not None and value is not None and key != "extra":
            ok = isinstance(value, type(default)) or (isinstance(default, float) and isinstance(value, int))
            if isinstance(default, bool) != isinstance(value, bool):
                ok = False
            if not ok:
                raise ConfigError(
                    f"{table}.{key} must be {type(default).__name__}, not {type(value).__name__} ({value!r})"
                )
            if isinstance(default, list) and not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{table}.{key} must be a list of strings, not {value!r}")
    return values


def config_from_dict(data: dict[str, Any], where: str = "config") -> Config:
    config = Config()
    for table, value in data.items():
        if table == "sources":
            if not isinstance(value, dict) or not value:
                raise ConfigError(f"[sources] in {where} must hold one table per source, e.g. [sources.audio]")
            specs = []
            for name, spec in value.items():
                if not isinstance(spec, dict):
                    raise ConfigError(f"sources.{name} in {where} must be a table")
                for key in spec:
                    if key not in _SOURCE_KEYS:
                        raise _unknown(key, _SOURCE_KEYS, f"[sources.{name}]")
                specs.append(SourceSpec(name=name, **{"placeholder": name, **spec}))
            config.sources = specs
        elif table in _TABLES:
            if not isinstance(value, dict):
                raise ConfigError(f"[{table}] in {where} must be a table")
            values = _typed(table, _TABLES[table], value)
            setattr(config, table, dataclasses.replace(getattr(config, table), **values))
        else:
            raise _unknown(table, set(_TABLES) | {"sources"}, where)
    return config


def load_config(path: str | Path | None) -> Config:
    if path is None:
        config = Config()
    else:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
        config = config_from_dict(data, str(path))
    return config


def apply_overrides(config: Config, table: str, **values: Any) -> None:
    """Set the non-None values on one table (CLI flags over the file)."""
    given = {k: v for k, v in values.items() if v is not None}
    if given:
        setattr(config, table, dataclasses.replace(getattr(config, table), **given))
