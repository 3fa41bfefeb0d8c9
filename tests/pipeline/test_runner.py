"""The feeding loop against an engine double that finishes requests out of order."""

import os
import signal

from s2_vllm.engines.testing import FakeEngine, answer_words
from s2_vllm.progress import RunStats
from s2_vllm.prompts import Prompt
from s2_vllm.runner import Runner


class ShuffledEngine(FakeEngine):
    """The shipped fake engine, finishing the newest two requests per step."""

    def __init__(self, capacity=4, refuse=(), on_step=None):
        super().__init__(in_flight=capacity, per_step=2, words=3, refuse_ids=list(refuse), on_step=on_step)


class ListSink:
    def __init__(self):
        self.rows = []
        self.summaries = []

    def append(self, row):
        self.rows.append(row)

    def write_summary(self, summary):
        self.summaries.append(summary)


def prompts(n):
    return [Prompt(f"id{i}", f"prompt {i}", [1] * (i + 1)) for i in range(n)]


def test_every_prompt_written_once_and_window_respected():
    engine, sink = ShuffledEngine(capacity=3), ListSink()
    stats = Runner(engine, sink, RunStats(total=10, resumed=0), seed=7, thinking=False).run(prompts(10))
    assert sorted(r.file_id for r in sink.rows) == sorted(f"id{i}" for i in range(10))
    assert [r.file_id for r in sink.rows][:2] == ["id2", "id1"]  # finished out of order, written as they came
    assert engine.peak_in_flight == 3
    row = next(r for r in sink.rows if r.file_id == "id4")
    words = answer_words([1] * 5, b"", 3)
    assert row.final_description == f"[{words[0]}, {words[1]}] {words[2]}"
    assert (row.status, row.prompt_tokens, row.completion_tokens) == ("ok", 5, 3)
    assert stats.statuses == {"ok": 10} and stats.completion_tokens == 30


def test_a_refused_request_is_an_error_row_and_the_rest_go_on():
    engine, sink = ShuffledEngine(refuse={"id3"}), ListSink()
    Runner(engine, sink, RunStats(total=6, resumed=0), seed=0, thinking=False).run(prompts(6))
    by_id = {r.file_id: r for r in sink.rows}
    assert len(sink.rows) == 6
    assert by_id["id3"].status == "error"
    assert by_id["id3"].error == "engine refused the request: the fake engine refuses id3 ([fake] refuse_ids)"
    assert all(r.status == "ok" for k, r in by_id.items() if k != "id3")


def test_skipped_and_too_long_prompts_never_reach_the_engine():
    engine, sink = ShuffledEngine(), ListSink()
    items = [Prompt("a", None, None, skip_reason="empty text in subtitle"),
             Prompt("b", None, None, error="prompt has 99 tokens; the limit is 10"),
             Prompt("c", "x", [1, 2])]
    Runner(engine, sink, RunStats(total=3, resumed=0), seed=0, thinking=False).run(items)
    rows = {r.file_id: (r.status, r.error) for r in sink.rows}
    assert rows == {"a": ("skipped", "empty text in subtitle"),
                    "b": ("error", "prompt has 99 tokens; the limit is 10"), "c": ("ok", None)}
    assert engine.steps == 1


def test_sigterm_stops_feeding_aborts_in_flight_and_keeps_written_rows():
    def kill_on_third_step(engine):
        if engine.steps == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    engine, sink = ShuffledEngine(capacity=4, on_step=kill_on_third_step), ListSink()
    engine.interruptible_step = True  # like the hf engine: the signal ends the step it arrives in
    stats = Runner(engine, sink, RunStats(total=20, resumed=0), seed=0, thinking=False).run(prompts(20))
    assert stats.interrupted and engine.aborted
    assert len(sink.rows) == 4  # two steps' worth; the third step's results were dropped
    assert len({r.file_id for r in sink.rows}) == 4
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_signal_during_a_short_step_lets_it_finish_and_keeps_its_rows():
    def kill_on_third_step(engine):
        if engine.steps == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    engine, sink = ShuffledEngine(capacity=4, on_step=kill_on_third_step), ListSink()  # like vLLM: not interruptible
    stats = Runner(engine, sink, RunStats(total=20, resumed=0), seed=0, thinking=False).run(prompts(20))
    assert stats.interrupted and engine.aborted and engine.steps == 3
    assert len(sink.rows) == len({r.file_id for r in sink.rows}) == 6  # the third step's rows are kept


def test_a_step_that_fails_after_the_stop_signal_is_the_stop_not_a_crash():
    def die_after_signal(engine):
        if engine.steps == 3:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C reaches vLLM's engine process too,
            raise RuntimeError("EngineDeadError")  # which dies under the step in flight

    engine, sink = ShuffledEngine(capacity=4, on_step=die_after_signal), ListSink()
    stats = Runner(engine, sink, RunStats(total=20, resumed=0), seed=0, thinking=False).run(prompts(20))
    assert stats.interrupted and engine.aborted
    assert len(sink.rows) == 4 and stats.finished is not None


def test_throughput_ends_with_the_last_row_not_with_the_engine_close():
    import time

    engine, sink = ShuffledEngine(capacity=3), ListSink()
    stats = Runner(engine, sink, RunStats(total=6, resumed=0), seed=0, thinking=False).run(prompts(6))
    seconds = stats.summary("shuffled")["generation_seconds"]
    time.sleep(0.3)  # the engine closing, after the loop
    assert stats.summary("shuffled")["generation_seconds"] == seconds


def test_progress_counts_the_tokens_of_unfinished_requests():
    from s2_vllm.progress import ProgressBar

    stats = RunStats(total=8, resumed=0, completion_tokens=6)
    stats.engine_ready, stats.finished = stats.started, stats.started + 2.0  # 2 s of generation
    bar = ProgressBar(stats, enabled=True, file=open(os.devnull, "w"))
    shown = []
    bar.bar.set_postfix_str = lambda text, refresh=True: shown.append(text)
    bar.tick(lambda: 20)  # 6 tokens of finished rows + 20 of requests still running
    bar.tick(lambda: 40)  # within REFRESH_SECONDS: not shown again
    assert shown == ["13.0 out tok/s"]
    bar.close()


def test_a_second_signal_during_the_abort_does_not_cut_it_short():
    def kill_on_third_step(engine):
        if engine.steps == 3:
            os.kill(os.getpid(), signal.SIGINT)

    class Impatient(ShuffledEngine):
        def abort(self):
            os.kill(os.getpid(), signal.SIGTERM)  # Ctrl-C, then `kill` while the abort runs
            super().abort()

    engine, sink = Impatient(capacity=4, on_step=kill_on_third_step), ListSink()
    stats = Runner(engine, sink, RunStats(total=20, resumed=0), seed=0, thinking=False).run(prompts(20))
    assert stats.interrupted and engine.aborted and stats.finished is not None
    assert len(sink.rows) == 6


def test_the_engine_steps_what_it_has_while_the_next_prompt_is_not_ready():
    """describe's clips: while the next one decodes, the runner steps the engine instead of waiting on it."""
    def adds(ready):
        engine, sink = ShuffledEngine(capacity=8), ListSink()
        at_step = []
        original_add = engine.add

        def add(request):
            at_step.append((request.key, engine.steps))
            original_add(request)

        engine.add = add
        Runner(engine, sink, RunStats(total=4, resumed=0), seed=0, thinking=False).run(
            prompts(4), ready=None if ready is None else lambda: ready(engine))
        assert len(sink.rows) == 4
        return at_step

    assert adds(None) == [("id0", 0), ("id1", 0), ("id2", 0), ("id3", 0)]
    # Not ready for three steps: each step runs what the engine holds; with nothing left, the runner waits.
    assert adds(lambda engine: engine.steps >= 3) == [("id0", 0), ("id1", 1), ("id2", 2), ("id3", 3)]
