"""One pass, start to end: stage records → select → render → checkpoint → engine → runner → summary."""

from __future__ import annotations

import collections
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from s2_vllm.checkpoint import CheckpointStore, SideFiles
from s2_vllm.config import Config
from s2_vllm.engine_log import EngineLog, console
from s2_vllm.engines import (
    Engine,
    check_engine_config,
    create_engine,
    platform_settings,
)
from s2_vllm.engines.parallel import check_shape
from s2_vllm.errors import EngineError, UserError
from s2_vllm.model_config import read_model_config
from s2_vllm.progress import ProgressBar, RunStats, say_above_bar, summary_lines
from s2_vllm.prompts import (
    PromptBuilder,
    iter_prompts,
    load_tokenizer,
    resolve_max_model_len,
)
from s2_vllm.reaper import Watchdog, stop_leftovers
from s2_vllm.records import Record
from s2_vllm.runner import Runner
from s2_vllm.signals import Interrupted
from s2_vllm.stage import FUSION, PassThrough, Stage, select
from s2_vllm.stages import check_output

T = TypeVar("T")
RENDER_AHEAD = 4096  # prompts rendered ahead of the engine: before it starts, then on a helper thread
Echo = Callable[[str], None]


@dataclass
class RunOptions:
    output: Path
    overwrite: bool = False
    retry_failed: bool = False
    retry_cut: bool = False
    repair: bool = False
    limit: int | None = None
    shard: tuple[int, int] | None = None  # (index, count), index from 0
    progress: bool = True
    show_engine_log: bool = False  # the engine's output on the console, not in OUTPUT.engine.log


@dataclass
class Pass:
    """One pass's parts, worked out by `run` before the engine starts, for `_generate`."""

    config: Config
    options: RunOptions
    stage: Stage
    builder: PromptBuilder  # renders and tokenizes the records
    store: CheckpointStore  # open, locked, resumed
    stats: RunStats
    kwargs: dict[str, Any] | None  # vLLM's checked arguments (None: another engine)
    model_config: Any | None  # the model's config.json, as transformers reads it
    echo: Echo
    engine: Engine | None = None  # a running engine the caller keeps (tests share one); None: built here


def run(config: Config, options: RunOptions, echo: Echo, *, stage: Stage = FUSION,
        engine: Engine | None = None) -> dict[str, Any]:
    """Run `stage` (by default the fusion pass) to the end or to a signal; returns the summary.

    Raises Interrupted on a signal, saying how far it got. A caller that passes a running `engine` keeps it: it is
    used as it is and not closed (tests share one).
    """
    config = stage.configure(config, echo)
    config.validate()
    stage.precheck(config)  # before the engine check, which imports vLLM (seconds)
    kwargs = check_engine_config(config)
    records = select(stage.read(config, echo), options.shard, options.limit, echo)
    tokenizer = load_tokenizer(config)
    model_config = read_model_config(config.engine)
    builder = PromptBuilder(config, tokenizer, resolve_max_model_len(config, model_config),
                            modality=stage.modality)
    chat_template = str(getattr(tokenizer, "chat_template", None) or "")
    if not options.overwrite:
        check_output(options.output, stage.entry)
    with CheckpointStore(options.output) as store:
        done = store.open(
            stage.fingerprint(config, chat_template), overwrite=options.overwrite,
            retry_failed=options.retry_failed, retry_cut=options.retry_cut, repair=options.repair,
        )
        _say_repairs(store, options.output, echo, config.sampling.max_tokens)
        pending = [r for r in records if r.file_id not in done]
        stats = RunStats(total=len(records), resumed=len(records) - len(pending))
        if stats.resumed:
            echo(f"resuming {options.output}: {stats.resumed} of {len(records)} records already done")
        if pending:
            _generate(Pass(config, options, stage, builder, store, stats, kwargs, model_config, echo, engine),
                      pending)
        summary = stats.summary(config.run.engine)
        store.write_summary(summary)
    for line in summary_lines(summary):
        echo(line)
    if stats.interrupted:
        raise Interrupted(f"interrupted; {stats.resumed + stats.written} of {stats.total} records are in "
                             f"{options.output}: run the same command to resume")
    return summary


def _say_repairs(store: CheckpointStore, output: Path, echo: Echo, max_tokens: int) -> None:
    if store.backup is not None:
        echo(f"moved the old checkpoint to {store.backup}")
    if store.torn:
        echo(f"cut a torn last line ({store.torn} bytes) from {output}; its record runs again")
    if store.rejected:
        echo(f"moved {store.rejected} damaged line{'s' * (store.rejected != 1)} to {store.rejected_path}; "
             "their records run again")
    if store.retried:
        n = sum(store.retried.values())
        kinds = " and ".join(f"{count} {status}" for status, count in sorted(store.retried.items()))
        echo(f"removed {kinds} row{'s' * (n != 1)} from {output}; their records run again")
    if store.raised_from is not None:
        echo(f"raised {output}'s max_tokens from {store.raised_from} to {max_tokens}")


def _generate(p: Pass, pending: list[Record]) -> None:
    """Start the engine on the first prompts, feed it the rest, write each row as it finishes."""
    config, options, store = p.config, p.options, p.store
    store.write_summary(p.stats.summary(config.run.engine))
    # The checkpoint's lock is ours, so an engine on this list belongs to a run that is gone.
    stop_leftovers(store.files.engine_pids, p.echo)
    if config.run.engine == "vllm":
        check_shape(config.engine, p.model_config)
    platforms = platform_settings(config, p.model_config)
    if platforms:
        for note in platforms[0].notes:
            p.echo(f"vLLM on CPU: {note}")
    if not options.show_engine_log:
        p.echo(f"engine log: {store.files.engine_log} (--show-engine-log shows it here)")
    feed = p.stage.feed or PassThrough()
    watchdog = Watchdog(store.files.engine_pids)
    try:
        with EngineLog(store.files.engine_log, live=options.show_engine_log):
            # The first prompts are rendered, tokenized and fed (describe: their clips decoded) before the engine
            # starts, in this thread: they are ready when it is, their tokenizing takes no CPU from the model while
            # it generates (it would, on vLLM's CPU build), and no thread of ours runs while vLLM forks its engine.
            rendered = iter_prompts(p.builder, pending)
            head = collections.deque(feed.prepare(list(itertools.islice(rendered, RENDER_AHEAD))))
            try:
                engine = p.engine if p.engine is not None else create_engine(
                    config, p.builder.tokenizer, kwargs=p.kwargs, platforms=platforms, notify=say_above_bar)
            except EngineError as exc:
                raise EngineError(f"{exc}{_see_log(options)}") from exc
            p.stats.engine_ready = time.monotonic()
            p.stats.details = engine.summary_details  # a replica pool adds per-replica numbers
            progress = ProgressBar(p.stats, enabled=options.progress, file=console())
            try:
                for note in engine.notes():
                    say_above_bar(note)
                runner = Runner(engine, store, p.stats, seed=config.sampling.seed,
                                thinking=config.prompt.enable_thinking, in_flight=config.run.in_flight,
                                progress=progress, postprocess=p.stage.postprocess)
                with prefetched(rendered, depth=RENDER_AHEAD) as rest:
                    prompts = itertools.chain(_drained(head), rest)
                    del head  # each prompt (and its clip's samples) is let go as the runner takes it
                    with feed.stream(prompts) as fed:
                        runner.run(fed, ready=fed.ready)
            except EngineError as exc:
                raise EngineError(f"{exc}{_see_log(options)}") from exc
            finally:
                progress.close()
                if p.engine is None:
                    engine.close()
    finally:
        watchdog.close()


def _drained(items: collections.deque[T]) -> Iterator[T]:
    while items:
        yield items.popleft()


def _see_log(options: RunOptions) -> str:
    return "" if options.show_engine_log else f" (the engine's log: {SideFiles.of(options.output).engine_log})"


class prefetched:
    """Iterate `items` on a helper thread, a bounded queue ahead of the consumer.

    Rendering and tokenizing the next prompts overlaps with generation; the queue
    bound keeps memory flat however many records there are.
    """

    _END = object()

    def __init__(self, items: Iterable[T], depth: int = RENDER_AHEAD):
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
