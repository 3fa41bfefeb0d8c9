"""Counting what a run did: the progress bar while it runs, the summary after."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from s2_vllm.checkpoint import Row
from s2_vllm.errors import plural


@dataclass
class RunStats:
    total: int  # joined records in scope for this run, done before or not
    resumed: int  # rows already in the checkpoint at the start
    statuses: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    truncated: int = 0  # rows whose prompt had a clue text cut to fit the context
    started: float = field(default_factory=time.monotonic)
    engine_ready: float | None = None  # when the model had loaded: throughput counts from here
    finished: float | None = None  # when the last row was written (before the engine's shutdown)
    interrupted: bool = False
    details: Callable[[], dict[str, Any]] | None = None  # more summary keys (a replica pool's "replicas")

    def add(self, row: Row) -> None:
        self.statuses[row.status] += 1
        self.prompt_tokens += row.prompt_tokens or 0
        self.completion_tokens += row.completion_tokens or 0
        self.truncated += bool(row.truncated)

    @property
    def written(self) -> int:
        return sum(self.statuses.values())

    def generation_seconds(self) -> float:
        return (self.finished or time.monotonic()) - (self.engine_ready or self.started)

    def summary(self, engine: str) -> dict[str, Any]:
        seconds = self.generation_seconds()
        rate = (lambda n: round(n / seconds, 1) if seconds > 0 else 0.0)
        return {
            "engine": engine,
            "total": self.total,
            "resumed": self.resumed,
            "written": self.written,
            "remaining": max(0, self.total - self.resumed - self.written),
            "truncated": self.truncated,
            "statuses": dict(self.statuses),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "wall_seconds": round(time.monotonic() - self.started, 2),
            "generation_seconds": round(seconds, 2),
            "records_per_second": rate(self.written),
            "prompt_tokens_per_second": rate(self.prompt_tokens),
            "output_tokens_per_second": rate(self.completion_tokens),
            "interrupted": self.interrupted,
            **(self.details() if self.details else {}),
        }


def summary_lines(summary: dict[str, Any]) -> list[str]:
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(summary["statuses"].items())) or "none"
    lines = [
        f"wrote {plural(summary['written'], 'row')} ({statuses}); {summary['resumed']} already done, "
        f"{summary['remaining']} remain",
        f"tokens: {summary['prompt_tokens']} prompt, {summary['completion_tokens']} output in "
        f"{summary['generation_seconds']:.1f}s: {summary['prompt_tokens_per_second']:.1f} prompt tok/s, "
        f"{summary['output_tokens_per_second']:.1f} output tok/s, {summary['records_per_second']:.2f} records/s",
    ]
    if summary.get("truncated"):
        lines.append(f"truncated: {plural(summary['truncated'], 'prompt')} had a clue text or clip cut to fit the model")
    if failed := summary["statuses"].get("error", 0):
        lines.append(f"{plural(failed, 'record')} failed: `s2-vllm status` counts them, --retry-failed runs them again")
    if cut := summary["statuses"].get("length", 0):
        lines.append(f"{plural(cut, 'record')} stopped at max_tokens (status length, kept as results): "
                     f"--retry-cut with a larger --max-tokens runs them again")
    return lines + replica_lines(summary)


def replica_lines(summary: dict[str, Any]) -> list[str]:
    """One line per replica of a pool: where it ran, what it did, and why it died if it did."""
    lines = []
    for r in summary.get("replicas", ()):
        died = "" if r["alive"] else f"; died: {r['error']}"
        lines.append(f"replica {r['replica']} ({r['place']}, pid {r['pid']}): {r['records']} records, "
                     f"{r['output_tokens']} output tokens, {r['output_tokens_per_second']:.1f} output tok/s{died}")
    return lines


def say_above_bar(line: str) -> None:
    """A line of s2-vllm's own on the console while an engine runs: above the progress bar, not in the engine log."""
    from tqdm import tqdm

    from s2_vllm.engine_log import console

    tqdm.write(line, file=console())


class ProgressBar:
    """tqdm over every record in scope; rows found at start count as done.

    The output tok/s beside it counts the tokens of unfinished requests too (`tick`), so it is
    right from the first seconds, not only once the first wave of requests has finished.
    """

    REFRESH_SECONDS = 0.5

    def __init__(self, stats: RunStats, enabled: bool = True, file: Any = None):
        from tqdm import tqdm

        self.stats = stats
        self.bar = tqdm(
            total=stats.total, initial=stats.resumed, unit="rec", disable=not enabled, dynamic_ncols=True,
            smoothing=0.1, file=file,
        )
        self.last = 0.0
        self.in_flight_tokens = 0

    def update(self, row: Row) -> None:
        self.bar.update(1)

    def tick(self, tokens_in_flight: Callable[[], int]) -> None:
        """Called by the runner after each engine step: refresh the rate at most twice a second."""
        now = time.monotonic()
        if now - self.last < self.REFRESH_SECONDS or self.bar.disable:
            return
        self.last = now
        seconds = self.stats.generation_seconds()
        if seconds > 0:
            tokens = self.stats.completion_tokens + tokens_in_flight()
            self.bar.set_postfix_str(f"{tokens / seconds:.1f} out tok/s", refresh=True)

    def close(self) -> None:
        self.bar.close()
