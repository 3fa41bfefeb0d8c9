"""TOML files and flags onto a `Config`, every value checked by the schema as it arrives."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from s2_vllm.config.root import Config
from s2_vllm.config.schema import checked, specs, unknown_key
from s2_vllm.config.tables import TABLES, SourceSpec, default_sources
from s2_vllm.errors import ConfigError
from s2_vllm.template import PromptTemplate


def config_from_dict(data: dict[str, Any], where: str = "config") -> Config:
    config = Config()
    declared: list[SourceSpec] | None = None
    for table, value in data.items():
        if table == "sources":
            declared = _sources(value, where)
        elif table in TABLES:
            if not isinstance(value, dict):
                raise ConfigError(f"[{table}] in {where} must be a table")
            setattr(config, table, checked(getattr(config, table), table, value))
        else:
            raise unknown_key(table, [*TABLES, "sources"], where)
    if declared is not None:  # after the whole file: [prompt] may come after [sources]
        config.sources = _with_defaults(declared, config.prompt.template)
    return config


def _sources(value: Any, where: str) -> list[SourceSpec]:
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"[sources] in {where} must hold one table per source, e.g. [sources.audio]")
    defaults = {s.name: s for s in default_sources()}
    out = []
    for name, spec in value.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"sources.{name} in {where} must be a table")
        table = f"sources.{name}"
        keys = specs(SourceSpec, table)
        unknown = next((k for k in spec if k not in keys), None)
        if unknown is not None:
            raise unknown_key(unknown, keys, f"[{table}]")
        out.append(checked(defaults.get(name, SourceSpec(name, placeholder=name)), table, spec))
    return out


def _with_defaults(declared: list[SourceSpec], template: str) -> list[SourceSpec]:
    """The default sources the file leaves out whose placeholder the template uses and no declared source
    fills (in the default order), then the declared ones in the file's order."""
    names = {s.name for s in declared}
    wanted = set(PromptTemplate.parse(template).placeholders) - {s.placeholder for s in declared}
    return [s for s in default_sources() if s.name not in names and s.placeholder in wanted] + declared


def load_config(path: str | Path | None) -> Config:
    if path is None:
        return Config()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
    return config_from_dict(data, str(path))


def apply_overrides(config: Config, table: str, **values: Any) -> None:
    """Set the non-None values on one table (CLI flags over the file), each checked like a file's."""
    given = {k: v for k, v in values.items() if v is not None}
    if given:
        setattr(config, table, checked(getattr(config, table), table, given))
