"""One run, start to end: join → select → render → checkpoint → engine → runner → summary."""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from s2_vllm.checkpoint import CheckpointStore, Row
from s2_vllm.config import Config
from s2_vllm.engine_log import EngineLog, console
from s2_vllm.engines import Engine, check_engine_config, create_engine, platform_notes
from s2_vllm.errors import EngineError, InputError
from s2_vllm.progress import ProgressBar, RunStats, summary_lines
from s2_vllm.prompts import PromptBuilder, iter_prompts, load_tokenizer, resolve_max_model_len
from s2_vllm.reaper import Watchdog, stop_leftovers
from s2_vllm.records import Record, join
from s2_vllm.runner import Runner

T = TypeVar("T")
Echo = Callable[[str], None]
Postprocess = Callable[[Row], Row]


@dataclass
class RunOptions:
    output: Path
    overwrite: bool = False
    retry_failed: bool = False
    repair: bool = False
    limit: int | None = None
    shard: tuple[int, int] | None = None  # (index, count), index from 0
    progress: bool = True
    show_engine_log: bool = False  # the engine's output on the console, not in OUTPUT.engine.log


class RunInterrupted(Exception):
    """The run stopped on a signal; everything finished so far is in the checkpoint."""


def shard_of(file_id: str, count: int) -> int:
    """A stable shard for an id: the same on every machine and every Python."""
    return int.from_bytes(hashlib.sha1(file_id.encode()).digest()[:8], "big") % count


def joined_records(config: Config, echo: Echo, shard: tuple[int, int] | None = None,
                   limit: int | None = None) -> list[Record]:
    check_source_paths(config)
    records, report = join(config.sources, config.run.on_duplicate)
    for line in report.lines():
        echo(line)
    if shard is not None:
        index, count = shard
        records = [r for r in records if shard_of(r.file_id, count) == index]
        echo(f"shard {index}/{count}: {len(records)} records")
    if limit is not None:
        records = records[:limit]
    return records


def check_source_paths(config: Config) -> None:
    for spec in config.sources:
        if not spec.path:
            raise InputError(f"no input file for source '{spec.name}' (give --{_flag(spec.name)} or sources.{spec.name}.path)")


def _flag(source: str) -> str:
    return {"subtitle": "subtitles", "audio": "audio"}.get(source, f"source {source}=PATH")


def fingerprint(config: Config, tokenizer: Any) -> dict[str, Any]:
    template = getattr(tokenizer, "chat_template", None) or ""
    return {**config.fingerprint(), "chat_template_sha": hashlib.sha256(str(template).encode()).hexdigest()}


def run(config: Config, options: RunOptions, echo: Echo, *, records: list[Record] | None = None,
        postprocess: Postprocess | None = None, engine: Engine | None = None) -> dict[str, Any]:
    """Run to the end (or to a signal); returns the summary. Raises RunInterrupted on a signal.

    By default the records are the join of the config's sources; a later stage (label
    extraction) passes its own records and a `postprocess` that adds to each row. A caller that
    passes a running `engine` keeps it: it is used as it is and not closed (tests share one).
    """
    config.validate()
    if records is None:
        check_source_paths(config)  # before the engine check, which imports vLLM (seconds)
    check_engine_config(config)
    if records is None:
        records = joined_records(config, echo, options.shard, options.limit)
    tokenizer = load_tokenizer(config)
    builder = PromptBuilder(config, tokenizer, resolve_max_model_len(config))
    with CheckpointStore(options.output) as store:
        done = store.open(
            fingerprint(config, tokenizer), overwrite=options.overwrite, retry_failed=options.retry_failed,
            repair=options.repair,
        )
        if store.backup is not None:
            echo(f"moved the old checkpoint to {store.backup}")
        if store.torn:
            echo(f"cut a torn last line ({store.torn} bytes) from {options.output}; its record runs again")
        if store.rejected:
            echo(f"moved {store.rejected} damaged line{'s' * (store.rejected != 1)} to {store.rejected_path}; "
                 "their records run again")
        if store.retried:
            echo(f"removed {store.retried} error/length row{'s' * (store.retried != 1)} from {options.output}; "
                 "their records run again")
        pending = [r for r in records if r.file_id not in done]
        stats = RunStats(total=len(records), resumed=len(records) - len(pending))
        if stats.resumed:
            echo(f"resuming {options.output}: {stats.resumed} of {len(records)} records already done")
        if pending:
            _generate(config, options, store, builder, tokenizer, pending, stats, postprocess, echo, engine)
        summary = stats.summary(config.run.engine)
        store.write_summary(summary)
    for line in summary_lines(summary):
        echo(line)
    if stats.interrupted:
        raise RunInterrupted(f"interrupted; {stats.resumed + stats.written} of {stats.total} records are in "
                             f"{options.output}: run the same command to resume")
    return summary


def engine_log_path(output: Path) -> Path:
    return Path(f"{output}.engine.log")


def engine_pids_path(output: Path) -> Path:
    return Path(f"{output}.engine.pids")


def _generate(config: Config, options: RunOptions, store: CheckpointStore, builder: PromptBuilder,
              tokenizer: Any, pending: list[Record], stats: RunStats, postprocess: Postprocess | None,
              echo: Echo, given: Engine | None = None) -> None:
    store.write_summary(stats.summary(config.run.engine))
    # The checkpoint's lock is ours, so an engine on this list belongs to a run that is gone.
    stop_leftovers(engine_pids_path(options.output), echo)
    for note in platform_notes(config):
        echo(note)
    log_path = engine_log_path(options.output)
    if not options.show_engine_log:
        echo(f"engine log: {log_path} (--show-engine-log shows it here)")
    watchdog = Watchdog(engine_pids_path(options.output))
    try:
        with EngineLog(log_path, live=options.show_engine_log):
            try:
                engine = given if given is not None else create_engine(config, tokenizer)
            except EngineError as exc:
                raise EngineError(f"{exc}{_see_log(options)}") from exc
            stats.engine_ready = time.monotonic()
            stats.details = getattr(engine, "summary_details", None)  # a replica pool adds per-replica numbers
            progress = ProgressBar(stats, enabled=options.progress, file=console())
            try:
                runner = Runner(engine, store, stats, seed=config.sampling.seed,
                                thinking=config.prompt.enable_thinking, window=config.run.in_flight,
                                progress=progress, postprocess=postprocess)
                with prefetched(iter_prompts(builder, pending)) as prompts:
                    runner.run(prompts)
            except EngineError as exc:
                raise EngineError(f"{exc}{_see_log(options)}") from exc
            finally:
                progress.close()
                if given is None:
                    engine.close()
    finally:
        watchdog.close()


def _see_log(options: RunOptions) -> str:
    return "" if options.show_engine_log else f" (the engine's log: {engine_log_path(options.output)})"


class prefetched:
    """Iterate `items` on a helper thread, a bounded queue ahead of the consumer.

    Rendering and tokenizing the next prompts overlaps with generation; the queue
    bound keeps memory flat however many records there are.
    """

    _END = object()

    def __init__(self, items: Iterable[T], depth: int = 4096):
        self.items = items
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._produce, name="s2-vllm-render", daemon=True)

    def _produce(self) -> None:
        try:
            for item in self.items:
                while not self.stop.is_set():
                    try:
                        self.queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self.stop.is_set():
                    return
            self.queue.put(self._END)
        except BaseException as exc:  # re-raised in the consumer
            self.queue.put(exc)

    def __enter__(self) -> Iterator[Any]:
        self.thread.start()
        return self._consume()

    def _consume(self) -> Iterator[Any]:
        while True:
            item = self.queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
