"""A pass over the engine: what differs between fusing clues (`run`) and listing labels (`extract-labels`).

`pipeline.run` takes one `Stage` and has one code path for both: the stage says where its records
come from, what it adds to the checkpoint's fingerprint, how a finished row is post-processed and,
when it brings its own sources, its own prompt. Shard and limit apply to every stage alike.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from s2_vllm.checkpoint import Row
from s2_vllm.config import Config, SourceSpec
from s2_vllm.config.tables import PromptConfig
from s2_vllm.errors import ConfigError, InputError
from s2_vllm.prompts import Prompt
from s2_vllm.records import Record, join
from s2_vllm.stages import StageEntry, entry, usable_statuses
from s2_vllm.template import DEFAULT_TEMPLATE, THREE_SOURCE_TEMPLATE, VISUAL_TEMPLATE, PromptTemplate

if TYPE_CHECKING:
    from s2_vllm.clips.modality import Modality

Echo = Callable[[str], None]


class FeedStream(Protocol, Iterator[Prompt]):
    def ready(self) -> bool: ...

    def __enter__(self) -> FeedStream: ...

    def __exit__(self, *exc: object) -> None: ...


class Feed(Protocol):
    """Work on the prompts between rendering and the runner (describe: decoding the clips)."""

    def prepare(self, head: list[Prompt]) -> list[Prompt]:
        """The first prompts, before the engine starts, in the calling thread."""

    def stream(self, prompts: Iterable[Prompt]) -> FeedStream:
        """All the prompts, head included, as the runner takes them."""


class PassThrough:
    """The feed of a stage whose prompts need nothing more: every prompt is ready as it is rendered."""

    def prepare(self, head: list[Prompt]) -> list[Prompt]:
        return head

    def stream(self, prompts: Iterable[Prompt]) -> _Through:
        return _Through(iter(prompts))


class _Through(Iterator[Prompt]):
    def __init__(self, prompts: Iterator[Prompt]):
        self.prompts = prompts

    def __next__(self) -> Prompt:
        return next(self.prompts)

    def ready(self) -> bool:
        return True

    def __enter__(self) -> _Through:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _no_check(config: Config) -> None:
    return None


@dataclass(frozen=True)
class Stage:
    entry: StageEntry  # its registry entry: what its checkpoint is (its `mark` goes in the fingerprint)
    read: Callable[[Config, Echo], list[Record]]  # its records, in output order
    precheck: Callable[[Config], None] = _no_check  # cheap checks of its inputs, before the engine is checked
    marks: Mapping[str, Any] = field(default_factory=dict)  # added to the fingerprint beside its name
    postprocess: Callable[[Row], Row] | None = None  # applied to each finished row before it is written
    sources: tuple[SourceSpec, ...] | None = None  # its own sources instead of the config's
    template: str | None = None  # its prompt, used when the config's template does not use its sources
    prompt_name: str = ""  # what to call that prompt in the note that says it is used
    setup: Callable[[Config, Echo], Config] | None = None  # its own `configure`, when the above is not enough
    modality: Modality | None = None  # describe: what its prompts' clips are (their part, placeholder, tokens)
    feed: Feed | None = None  # between the rendered prompts and the runner (describe: decodes the clips)

    def fingerprint(self, config: Config, chat_template: str) -> dict[str, Any]:
        return config.fingerprint(stage=self.entry.mark, marks=self.marks, chat_template=chat_template)

    def configure(self, config: Config, echo: Echo) -> Config:
        """The config this stage runs with: the given one, or with its own sources and (maybe) prompt."""
        if self.setup is not None:
            return self.setup(config, echo)
        if self.sources is None:
            return config
        template = config.prompt.template
        wanted = [s.placeholder for s in self.sources]
        if not set(wanted) <= set(PromptTemplate.parse(template).placeholders):
            if template != PromptConfig().template:
                names = ", ".join(f"{{{p}}}" for p in wanted)
                echo(f"the config's [prompt] template has no {names}: using the built-in {self.prompt_name} prompt")
            template = self.template or template
        return dataclasses.replace(config, sources=list(self.sources),
                                   prompt=dataclasses.replace(config.prompt, template=template))


def check_source_paths(config: Config) -> None:
    if not config.sources:
        raise ConfigError("the config declares no sources")
    for spec in config.sources:
        if not spec.path:
            raise InputError(f"no input file for source '{spec.name}' "
                             f"(give --{_flag(spec.name)} or sources.{spec.name}.path)")


def _flag(source: str) -> str:
    return {"subtitle": "subtitles", "audio": "audio", "visual": "visual"}.get(source, f"source {source}=PATH")


def fusion_config(config: Config, echo: Echo) -> Config:
    """With the built-in prompt, the clue files given choose it: `--visual` with `--audio` takes the three-source
    prompt (acoustic clues, visual clues, subtitle), `--visual` alone the visual one; a config's own template is
    used as it is."""
    if config.prompt.template != DEFAULT_TEMPLATE:
        return config
    given = {s.name for s in config.sources if s.path}
    if "visual" not in given:
        return config
    template, what = ((THREE_SOURCE_TEMPLATE, "acoustic and visual clues with the subtitle") if "audio" in given
                      else (VISUAL_TEMPLATE, "visual clues with the subtitle"))
    echo(f"prompt: the built-in fusion of {what}")
    sources = [s for s in config.sources if s.path or s.name != "audio"]
    return dataclasses.replace(config, sources=sources, prompt=dataclasses.replace(config.prompt, template=template))


def joined_records(config: Config, echo: Echo) -> list[Record]:
    """The fusion pass's records: the join of the config's sources, with its report."""
    check_source_paths(config)
    records, report = join(config.sources, config.run.on_duplicate, usable_statuses(config.run.cut_rows))
    for line in report.lines():
        echo(line)
    return records


FUSION = Stage(entry("run"), read=joined_records, precheck=check_source_paths, setup=fusion_config)


def shard_of(file_id: str, count: int) -> int:
    """A stable shard for an id: the same on every machine and every Python."""
    return int.from_bytes(hashlib.sha1(file_id.encode()).digest()[:8], "big") % count


def select(records: list[Record], shard: tuple[int, int] | None, limit: int | None, echo: Echo) -> list[Record]:
    """Shard I of N (by a stable hash of the id), then the first `limit`: the same for every stage."""
    if shard is not None:
        index, count = shard
        records = [r for r in records if shard_of(r.file_id, count) == index]
        echo(f"shard {index}/{count}: {len(records)} records")
    return records if limit is None else records[:limit]
