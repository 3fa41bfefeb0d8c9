"""The flags `run`, `render`, `extract-labels` and `describe` share: one table, one name, help and config key each.

A flag with a `key` sets that config key. Its click type comes from the schema: a choice key is a
`click.Choice` (so `--help` lists the choices and click refuses others, as it always has); ranges
are left to the schema, so `--max-model-len 0` and `max_model_len = 0` get the same message. A
flag without a key belongs to the command (what to select, how to open the checkpoint). Each
command lists the flags that apply to it with `use(...)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click

from s2_vllm.config import TABLES, Config, apply_overrides, load_config
from s2_vllm.config.schema import specs


@dataclass(frozen=True)
class Flag:
    decls: tuple[str, ...]
    help: str
    key: str | None = None  # "table.name" the flag sets
    type: Any = None  # for flags without a key (with one, it comes from the schema)
    extra: dict[str, Any] = field(default_factory=dict)  # more click.option arguments

    @property
    def dest(self) -> str:
        named = [d for d in self.decls if not d.startswith("-")]
        return named[0] if named else self.decls[-1].split("/")[0].lstrip("-").replace("-", "_")

    def option(self, **override: Any) -> Callable[[Any], Any]:
        kwargs: dict[str, Any] = {"help": self.help, **self.extra, **override}
        if self.key is not None:
            table, name = self.key.split(".")
            spec = specs(TABLES[table], table)[name]
            if spec.meta.choices is not None:
                kwargs.setdefault("type", click.Choice(spec.meta.choices))
            elif spec.base is bool:
                kwargs.setdefault("default", None)
            else:
                kwargs.setdefault("type", spec.base)
        elif self.type is not None:
            kwargs.setdefault("type", self.type)
        if "default" in override and override["default"] is not None:
            kwargs.setdefault("show_default", True)
        return click.option(*self.decls, **kwargs)


FLAGS: dict[str, Flag] = {f.dest: f for f in [
    Flag(("--config", "config_path"), "TOML config (see configs/).", type=click.Path(dir_okay=False)),
    Flag(("--audio",), "Acoustic clue descriptions: a describe checkpoint, JSON array, JSONL or CSV.",
         type=click.Path()),
    Flag(("--visual",), "Visual clue descriptions (describe --modality video's checkpoint, or JSON / JSONL / CSV).",
         type=click.Path()),
    Flag(("--subtitles",), "Dataset with subtitles (JSON array, JSONL or CSV).", type=click.Path()),
    Flag(("--source", "extra_sources"), "Input file of any source declared in the config. Repeatable.",
         extra={"multiple": True, "metavar": "NAME=PATH"}),
    Flag(("--model",), "Model: a Hugging Face id or a local folder.", "engine.model"),
    Flag(("--tokenizer",), "Tokenizer, when it differs from the model.", "engine.tokenizer"),
    Flag(("--max-model-len",), "Context length prompts are checked against.", "engine.max_model_len"),
    Flag(("--max-tokens",), "Most tokens generated per record.", "sampling.max_tokens"),
    Flag(("--enable-thinking/--no-enable-thinking",), "Qwen3 thinking mode.", "prompt.enable_thinking"),
    Flag(("--too-long",), "Prompts over the context.", "prompt.too_long"),
    Flag(("--on-duplicate",), "Duplicate ids in a source.", "run.on_duplicate"),
    Flag(("--cut-rows",), "Input checkpoint rows cut at max_tokens (status length): use or skip.",
         "run.cut_rows"),
    Flag(("--limit",), "Only the first N records.", type=click.IntRange(min=1)),
    Flag(("--shard",), "Only shard I of N (0-based, stable hash of file_id), e.g. 0/4."),
    Flag(("--engine",), "vllm (GPU, default), hf (transformers) or fake (no model: tests, dry runs).",
         "run.engine"),
    Flag(("--temperature",), "0 means greedy.", "sampling.temperature"),
    Flag(("--top-p",), "Nucleus sampling; 1 = off.", "sampling.top_p"),
    Flag(("--top-k",), "Keep the k most likely tokens; 0 = off.", "sampling.top_k"),
    Flag(("--seed",), "Base seed; each record's seed derives from it and its file_id.", "sampling.seed"),
    Flag(("--batch-size",), "Batch size of the hf engine.", "hf.batch_size"),
    Flag(("--in-flight",), "Requests kept in the engine at once.", "run.in_flight"),
    Flag(("--replicas",), "Engine replicas (data parallel), each with tensor x pipeline parallel GPUs.",
         "parallel.replicas"),
    Flag(("--ray-address",), "Run the replicas as Ray actors: auto, HOST:PORT, or local.", "parallel.ray_address"),
    Flag(("--max-seconds",), "Longest clip ([audio] or [video] max_seconds); longer ones are cut (or refused, "
         "--too-long error).", type=click.FloatRange(min=0, min_open=True)),
    Flag(("--fps",), "Video frames sampled per second.", "video.fps"),
    Flag(("--max-frames",), "Most frames sampled per video.", "video.max_frames"),
    Flag(("--max-pixels",), "Most pixels per video frame (larger ones are scaled down).", "video.max_pixels"),
    Flag(("--decode-workers",), "Workers decoding clips ahead of the engine.", "decode.workers"),
    Flag(("--decode-in",), "Decoding workers are processes or threads.", "decode.pool"),
    Flag(("--decode-ahead",), "Most decoded clips waiting for the engine.", "decode.ahead"),
    Flag(("--decode-ahead-mb",), "Most memory the clips decoded ahead take, in MB.", "decode.ahead_mb"),
    Flag(("--overwrite",), "Start over when the checkpoint has another config (keeps a backup).",
         extra={"is_flag": True}),
    Flag(("--retry-failed",), "Run again the records whose row is error (length rows are results).", extra={"is_flag": True}),
    Flag(("--retry-cut",), "Run again the records whose row is length (cut at max_tokens); give a larger "
         "--max-tokens with it.", extra={"is_flag": True}),
    Flag(("--repair",), "Move damaged checkpoint lines to .rejected and redo them.", extra={"is_flag": True}),
    Flag(("--no-progress",), "No progress bar.", extra={"is_flag": True}),
    Flag(("--show-engine-log",), "Show the engine's own log (vLLM's INFO lines, its processes' output) here "
         "instead of in OUTPUT.engine.log.", extra={"is_flag": True}),
]}

SOURCES = ("audio", "visual", "subtitles", "extra_sources")
PROMPT = ("model", "tokenizer", "max_model_len", "max_tokens", "enable_thinking", "too_long")
GENERATE = ("engine", "temperature", "top_p", "top_k", "seed", "batch_size", "in_flight", "replicas", "ray_address")
CHECKPOINT = ("overwrite", "retry_failed", "retry_cut", "repair", "no_progress", "show_engine_log")
CLIPS = ("max_seconds", "fps", "max_frames", "max_pixels", "decode_workers", "decode_in", "decode_ahead",
         "decode_ahead_mb")


def use(*names: str, **defaults: Any) -> Callable[[Any], Any]:
    """Decorate a command with these flags, in this order; `defaults` gives some a default of its own."""
    def decorate(f: Any) -> Any:
        for name in reversed(names):
            f = FLAGS[name].option(**({"default": defaults[name]} if name in defaults else {}))(f)
        return f
    return decorate


def config_from(params: dict[str, Any]) -> Config:
    """The config the flags ask for: the --config file, then the source paths, then every keyed flag given.
    Pops what it used from `params`; the command's own flags stay."""
    config = load_config(params.pop("config_path", None))
    for name, path in (("audio", params.pop("audio", None)), ("visual", params.pop("visual", None)),
                       ("subtitle", params.pop("subtitles", None))):
        if path:
            config.with_source_path(name, path)
    for item in params.pop("extra_sources", ()):
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"'{item}' is not NAME=PATH", param_hint="--source")
        config.with_source_path(name, path)
    by_table: dict[str, dict[str, Any]] = {}
    for dest in [d for d in params if d in FLAGS and FLAGS[d].key]:
        table, name = FLAGS[dest].key.split(".")  # type: ignore[union-attr]
        by_table.setdefault(table, {})[name] = params.pop(dest)
    for table, values in by_table.items():
        apply_overrides(config, table, **values)
    return config


def parse_shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    index, sep, count = value.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
        raise click.BadParameter(f"'{value}' is not I/N with 0 <= I < N, e.g. 0/4", param_hint="--shard")
    return int(index), int(count)


def shard_output(output: str, shard: tuple[int, int] | None) -> str:
    """The default output of shard I of N: `stem.shard-I-of-N.jsonl`."""
    if shard is None:
        return output
    return f"{output.removesuffix('.jsonl')}.shard-{shard[0]}-of-{shard[1]}.jsonl"
