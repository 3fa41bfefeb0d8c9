"""`s2-vllm describe`: clips → clue descriptions of one modality (step 1 of S2), on the same pipeline as `run`.

The describe pass is a `Stage`: its records are clips (from files, folders or a manifest, joined with
subtitles when given), each prompt holds one part of the modality (`--modality audio` or `video`) that
the model's chat template renders as its placeholder, and `clips.feed.ClipFeed` decodes the clips on a
bounded pool of workers (processes by default, `[decode] pool`) between the rendered prompts and the
runner. Everything that differs between the modalities is the `Modality` object (`clips/modality.py`).
Resume, shards, limit, replicas, status and export work as for `run`; the checkpoint's
`final_description` is the clue description, which `run --audio` or `run --visual` reads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s2_vllm.clips.modality import DEFAULT, Modality, get
from s2_vllm.config import Config, EngineConfig, SourceSpec
from s2_vllm.config.tables import default_sources
from s2_vllm.errors import UserError
from s2_vllm.records import Record
from s2_vllm.stage import Stage
from s2_vllm.stages import entry
from s2_vllm.template import DEFAULT_TEMPLATE

if TYPE_CHECKING:
    from s2_vllm.pipeline import RunOptions

STAGE = "describe"
Echo = Callable[[str], None]


@dataclass(frozen=True)
class ClipInputs:
    """Where the clips (and, optionally, their subtitles) come from, and which of their modalities is described."""

    paths: tuple[str, ...] = ()  # files and folders
    manifest: str | None = None  # or a CSV / JSON / JSONL list of (id, path)
    id_key: str = "file_id"
    path_key: str = "path"
    subtitles: str | None = None  # joined by id; its keys are [sources.subtitle]'s
    modality: str = DEFAULT


def describe_stage(config: Config, inputs: ClipInputs) -> Stage:
    from s2_vllm.clips.feed import ClipFeed, clips_ahead

    modality = get(inputs.modality)
    decode = config.decode
    ahead = clips_ahead(decode.ahead, decode.ahead_mb * 1_000_000, modality.clip_bytes(config))
    feed = ClipFeed(modality.name, modality.decoder(config), workers=lambda: decode_workers(config),
                    ahead=ahead, processes=decode.pool == "processes")
    return Stage(
        entry(STAGE),
        read=lambda config, echo: clip_records(config, inputs, echo),
        precheck=lambda config: _precheck(config, inputs, modality),
        marks={modality.name: modality.fingerprint(config)},
        setup=lambda config, echo: _setup(config, inputs, modality),
        modality=modality,
        feed=feed,
    )


def decode_workers(config: Config) -> int:
    """[decode] workers, else 2, or 1 on vLLM's CPU build: there the engine's threads hold every core, and
    a second decoding process slows it by more than it gains (docs/BENCHMARKS.md)."""
    from s2_vllm.engines import on_vllm_cpu

    if config.decode.workers is not None:
        return config.decode.workers
    return 1 if on_vllm_cpu() else 2


def _subtitle_spec(config: Config) -> SourceSpec:
    named = [s for s in config.sources if s.name == "subtitle"]
    return named[0] if named else next(s for s in default_sources() if s.name == "subtitle")


def _setup(config: Config, inputs: ClipInputs, modality: Modality) -> Config:
    """describe's config: its model, its sources (the subtitles or none), its prompt, vLLM's multimodal settings."""
    from s2_vllm.engines import on_vllm_cpu

    if config.run.engine == "hf":
        raise UserError(f"describe runs on vLLM only: the hf engine takes text only "
                        f"(the config says [run] engine = \"{config.run.engine}\")")
    engine = config.engine
    if engine.model == EngineConfig().model:  # run's default text model: describe's is the modality's
        engine = dataclasses.replace(engine, model=modality.default_model)
    extra = dict(engine.extra)
    extra.setdefault("limit_mm_per_prompt", modality.limits())
    _check_inputs(inputs)  # the cheap refusals before vLLM's import (seconds)
    if config.run.engine == "vllm" and on_vllm_cpu():
        extra.setdefault("skip_mm_profiling", True)  # on CPU it only costs start-up time (~15 s on 2 cores)
    engine = dataclasses.replace(engine, extra=extra)
    sources = [dataclasses.replace(_subtitle_spec(config), path=inputs.subtitles)] if inputs.subtitles else []
    template = config.prompt.template
    if template == DEFAULT_TEMPLATE:  # run's fusion prompt: not for clips
        template = modality.template(with_subtitle=bool(sources))
    return dataclasses.replace(config, engine=engine, sources=sources,
                               prompt=dataclasses.replace(config.prompt, template=template))


def _precheck(config: Config, inputs: ClipInputs, modality: Modality) -> None:
    """Before the engine is checked: decoders installed, inputs named, the model takes the modality."""
    from s2_vllm.model_config import read_model_config

    modality.check_decoders()
    _check_inputs(inputs)
    model_config = read_model_config(config.engine)
    if model_config is not None and not modality.takes(model_config):
        arch = ", ".join(getattr(model_config, "architectures", None) or [type(model_config).__name__])
        raise UserError(f"{config.engine.model} takes no {modality.name} ({arch}); describe --modality "
                        f"{modality.name} needs a model such as {modality.default_model}")


def _check_inputs(inputs: ClipInputs) -> None:
    if not inputs.paths and not inputs.manifest:
        raise UserError("no clips given: name files or folders, or --manifest FILE")
    if inputs.paths and inputs.manifest:
        raise UserError("give clips or --manifest, not both")


def clip_records(config: Config, inputs: ClipInputs, echo: Echo) -> list[Record]:
    """One record per clip, in the order given; with subtitles, the clips that have one."""
    from s2_vllm.clips.feed import clips_ahead
    from s2_vllm.clips.listing import check_unique, find_clips, read_manifest
    from s2_vllm.records import load_source

    modality = get(inputs.modality)

    if inputs.manifest:
        clips = read_manifest(inputs.manifest, inputs.id_key, inputs.path_key)
        where = inputs.manifest
    else:
        clips = find_clips(inputs.paths, modality.suffixes, modality.files)
        where = inputs.paths[0] if len(inputs.paths) == 1 else f"{len(inputs.paths)} paths"
    clips = check_unique(clips, config.run.on_duplicate)
    echo(f"found {len(clips)} clip{'s' * (len(clips) != 1)} in {where}")
    limit = f"{modality.max_seconds(config):g} s"
    policy = (f"cut to {limit} and marked truncated" if config.prompt.too_long == "truncate"
              else "an error row (too_long = \"error\")")
    workers = decode_workers(config)
    pool = config.decode.pool
    kind = pool if workers != 1 else {"processes": "process", "threads": "thread"}[pool]
    for note in modality.notes(config):
        echo(note)
    ahead = clips_ahead(config.decode.ahead, config.decode.ahead_mb * 1_000_000, modality.clip_bytes(config))
    budget = f" ({config.decode.ahead_mb} MB)" if ahead < config.decode.ahead else ""
    echo(f"clips are {modality.decoding(config)} by {workers} {kind}, at most {ahead}{budget} ahead of the "
         f"engine; a clip over {limit}: {policy}")
    if not config.sources:
        return [Record(c.file_id, {}, clip=c.path) for c in clips]
    spec = config.sources[0]
    texts = dict(load_source(spec))
    records = []
    for clip in clips:
        if clip.file_id in texts:
            text = texts[clip.file_id]
            records.append(Record(clip.file_id, {spec.name: text or ""}, None if text else f"empty text in {spec.name}",
                                  clip=clip.path))
    missing = len(clips) - len(records)
    echo(f"subtitles: {len(records)} of the clips have one in {spec.path}"
         + (f"; {missing} without are left out" if missing else ""))
    if not records:
        raise UserError(f"no clip id is in {spec.path} (e.g. '{clips[0].file_id}'; its ids are under "
                        f"'{spec.id_key}')")
    return records


def describe(config: Config, options: RunOptions, inputs: ClipInputs, echo: Echo,
             engine: Any = None) -> dict[str, Any]:
    """Describe the `inputs.modality` of every clip into `options.output`; returns the summary."""
    from s2_vllm.pipeline import run

    output = Path(options.output).resolve()
    given = [Path(p).resolve() for p in (*inputs.paths, *([inputs.manifest] if inputs.manifest else []))]
    if output in given:
        raise UserError(f"the output {options.output} is one of the inputs; choose another -o")
    return run(config, options, echo, stage=describe_stage(config, inputs), engine=engine)
