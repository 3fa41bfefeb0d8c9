"""`s2-vllm describe`: audio clips → acoustic clue descriptions (step 1 of S2), on the same pipeline as `run`.

The describe pass is a `Stage`: its records are clips (from files, folders or a manifest, joined with
subtitles when given), each prompt holds one audio part that the model's chat template renders as its
audio placeholder, and `audio.feed.ClipFeed` decodes the clips on a bounded pool of workers (processes
by default, `[audio] decode_in`) between the rendered prompts and the runner. Resume, shards, limit,
replicas, status and export work as for `run`; the checkpoint's `final_description` is the clue description, which `run --audio` reads.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
DEFAULT_MODEL = "Qwen/Qwen2.5-Omni-7B"  # its thinker: vLLM loads no talker for text output
DEFAULT_OUTPUT = "audio_descriptions.jsonl"
AUDIO_TOKENS_PER_SECOND = 25  # Qwen2.5-Omni and Qwen2-Audio: 100 mel frames/s, pooled 4:1
WHISPER_SECONDS = 30  # what their feature extractor reads of a clip
Echo = Callable[[str], None]

# Our wording, after the paper's acoustic-clue prompts: the cues in the voice, then what they suggest.
TEMPLATE = """\
Please act as an expert in the field of emotions. Listen to the speaker in this audio clip and describe \
the emotional cues in the voice: tone, pitch, speaking rate, volume and intensity, and how they change \
over the clip. Then say which emotional state these acoustic cues suggest, and how clearly. Describe \
only what can be heard."""
TEMPLATE_WITH_SUBTITLE = TEMPLATE + """

The subtitle of the clip is: {subtitle}
Use the subtitle as context, but base the description on the acoustic cues."""


@dataclass(frozen=True)
class ClipInputs:
    """Where the clips (and, optionally, their subtitles) come from."""

    paths: tuple[str, ...] = ()  # files and folders
    manifest: str | None = None  # or a CSV / JSON / JSONL list of (id, path)
    id_key: str = "file_id"
    path_key: str = "path"
    subtitles: str | None = None  # joined by id; its keys are [sources.subtitle]'s


def describe_stage(config: Config, inputs: ClipInputs) -> Stage:
    from s2_vllm.audio.decode import DECODER_VERSION
    from s2_vllm.audio.feed import ClipFeed

    audio = config.audio
    feed = ClipFeed(audio.sample_rate, audio.max_seconds, cut=config.prompt.too_long == "truncate",
                    workers=lambda: decode_workers(config), ahead=audio.decode_ahead,
                    processes=audio.decode_in == "processes")
    return Stage(
        entry(STAGE),
        read=lambda config, echo: clip_records(config, inputs, echo),
        precheck=lambda config: _precheck(config, inputs),
        marks={"audio": {"sample_rate": audio.sample_rate, "max_seconds": audio.max_seconds,
                         "decoder": DECODER_VERSION}},
        setup=lambda config, echo: _setup(config, inputs),
        audio_tokens=math.ceil(audio.max_seconds * AUDIO_TOKENS_PER_SECOND) + 2,
        feed=feed,
    )


def decode_workers(config: Config) -> int:
    """[audio] decode_workers, else 2, or 1 on vLLM's CPU build: there the engine's threads hold every core, and
    a second decoding process slows it by more than it gains (docs/BENCHMARKS.md)."""
    if config.audio.decode_workers is not None:
        return config.audio.decode_workers
    return 1 if _on_vllm_cpu() else 2


def _on_vllm_cpu() -> bool:
    """Whether vLLM runs on its CPU build here; describe's words when vLLM cannot be imported at all."""
    from s2_vllm.engines.vllm import _import_vllm
    from s2_vllm.engines.vllm_api import is_cpu_platform
    from s2_vllm.errors import EngineError, cause_line

    try:
        _import_vllm()  # its import-time lines go to the engine log
    except EngineError as exc:
        raise EngineError(f"describe runs on vLLM, which cannot be imported here ({cause_line(exc.__cause__ or exc)}); "
                          "bash scripts/install.sh installs it") from None
    return is_cpu_platform()


def _subtitle_spec(config: Config) -> SourceSpec:
    named = [s for s in config.sources if s.name == "subtitle"]
    return named[0] if named else next(s for s in default_sources() if s.name == "subtitle")


def _setup(config: Config, inputs: ClipInputs) -> Config:
    """describe's config: its model, its sources (the subtitles or none), its prompt, vLLM's audio settings."""
    if config.run.engine != "vllm":
        raise UserError(f"describe runs on vLLM only: the hf engine takes no audio "
                        f"(the config says [run] engine = \"{config.run.engine}\")")
    engine = config.engine
    if engine.model == EngineConfig().model:  # run's default text model: describe's default is an audio model
        engine = dataclasses.replace(engine, model=DEFAULT_MODEL)
    extra = dict(engine.extra)
    extra.setdefault("limit_mm_per_prompt", {"audio": 1, "image": 0, "video": 0})
    _check_inputs(inputs)  # the cheap refusals before vLLM's import (seconds)
    if _on_vllm_cpu():
        extra.setdefault("skip_mm_profiling", True)  # on CPU it only costs start-up time (~15 s on 2 cores)
    engine = dataclasses.replace(engine, extra=extra)
    sources = [dataclasses.replace(_subtitle_spec(config), path=inputs.subtitles)] if inputs.subtitles else []
    template = config.prompt.template
    if template == DEFAULT_TEMPLATE:  # run's fusion prompt: not for clips
        template = TEMPLATE_WITH_SUBTITLE if sources else TEMPLATE
    return dataclasses.replace(config, engine=engine, sources=sources,
                               prompt=dataclasses.replace(config.prompt, template=template))


def _precheck(config: Config, inputs: ClipInputs) -> None:
    """Before the engine is checked: decoders installed, inputs named, the model takes audio."""
    from s2_vllm.audio.decode import check_decoders
    from s2_vllm.model_config import audio_capable, read_model_config

    check_decoders()
    _check_inputs(inputs)
    model_config = read_model_config(config.engine)
    if model_config is not None and not audio_capable(model_config):
        arch = ", ".join(getattr(model_config, "architectures", None) or [type(model_config).__name__])
        raise UserError(f"{config.engine.model} takes no audio ({arch}); describe needs an audio model such as "
                        f"{DEFAULT_MODEL} or Qwen/Qwen2-Audio-7B-Instruct")


def _check_inputs(inputs: ClipInputs) -> None:
    if not inputs.paths and not inputs.manifest:
        raise UserError("no clips given: name files or folders, or --manifest FILE")
    if inputs.paths and inputs.manifest:
        raise UserError("give clips or --manifest, not both")


def clip_records(config: Config, inputs: ClipInputs, echo: Echo) -> list[Record]:
    """One record per clip, in the order given; with subtitles, the clips that have one."""
    from s2_vllm.audio.clips import check_unique, find_clips, read_manifest
    from s2_vllm.records import load_source

    if inputs.manifest:
        clips = read_manifest(inputs.manifest, inputs.id_key, inputs.path_key)
        where = inputs.manifest
    else:
        clips = find_clips(inputs.paths)
        where = inputs.paths[0] if len(inputs.paths) == 1 else f"{len(inputs.paths)} paths"
    clips = check_unique(clips, config.run.on_duplicate)
    echo(f"found {len(clips)} clip{'s' * (len(clips) != 1)} in {where}")
    limit = f"{config.audio.max_seconds:g} s"
    policy = (f"cut to {limit} and marked truncated" if config.prompt.too_long == "truncate"
              else "an error row (too_long = \"error\")")
    workers = decode_workers(config)
    kind = config.audio.decode_in if workers != 1 else {"processes": "process", "threads": "thread"}[config.audio.decode_in]
    if config.audio.max_seconds > WHISPER_SECONDS:
        echo(f"warning: max_seconds is {config.audio.max_seconds:g}, but vLLM's Whisper-style feature extractor "
             f"(Qwen2.5-Omni, Qwen2-Audio) reads {WHISPER_SECONDS} s: those models drop the rest of a longer clip, "
             "and its row is not marked")
    echo(f"clips are decoded to {config.audio.sample_rate} Hz mono by {workers} {kind}, "
         f"at most {config.audio.decode_ahead} ahead of the engine; a clip over {limit}: {policy}")
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
    """Describe every clip into `options.output`; returns the summary."""
    from s2_vllm.pipeline import run

    output = Path(options.output).resolve()
    given = [Path(p).resolve() for p in (*inputs.paths, *([inputs.manifest] if inputs.manifest else []))]
    if output in given:
        raise UserError(f"the output {options.output} is one of the inputs; choose another -o")
    return run(config, options, echo, stage=describe_stage(config, inputs), engine=engine)
