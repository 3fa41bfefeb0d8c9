"""The replica pool (data parallelism on one node) and static shards.

The pool's bookkeeping is tested through a fake transport (no processes); then real worker
processes run the real transformers engine on the tiny model: two replicas write the same
rows as one, a replica SIGKILLed mid-run loses nothing, all replicas dead stops the run with
a resumable checkpoint. Shards: `--shard 0/2` + `--shard 1/2`, merged by `export`, give the
rows of an unsharded run.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import scaling_helpers as h
from s2_vllm import pipeline
from s2_vllm.cli import cli
from s2_vllm.config import Config, config_from_dict
from s2_vllm.engines import create_engine
from s2_vllm.engines.base import Completion, GenerationRequest
from s2_vllm.engines.messages import Abort, Add, Dead, Done, Fault, Lost, Ready, Stop, Tokens
from s2_vllm.engines.pool import PoolBase
from s2_vllm.engines.replica import gpu_slices, replica_config, replica_envs
from s2_vllm.errors import ConfigError, EngineError
from s2_vllm.progress import say_above_bar

# ---------------------------------------------------------------- the pool's logic, no processes


class FakePool(PoolBase):
    """Replicas that are just message lists: the test plays every replica."""

    def __init__(self, replicas: int = 2, window: int = 2, max_attempts: int = 2, envs: list | None = None):
        c = Config()
        c.parallel.replicas, c.parallel.max_attempts = replicas, max_attempts
        self.window = window
        self.sent: list[tuple[int, tuple]] = []
        self.inbox: list[tuple[int, tuple]] = []
        self.events: list[str] = []
        super().__init__(c, envs or [{} for _ in range(replicas)], factory=lambda index: None, notify=say_above_bar)

    def _launch(self, replica):
        self.events.append(f"launch {replica.index}")
        replica.handle = object()
        self.inbox.append((replica.index, Ready(self.window, 1000 + replica.index, "test")))

    broken: set[int] = set()

    def _post(self, replica, message):
        if replica.index in self.broken:
            raise BrokenPipeError(32, "Broken pipe")
        self.sent.append((replica.index, message))

    def _collect(self, timeout):
        self.events.append("wait")
        messages, self.inbox = [(self.replicas[i], m) for i, m in self.inbox], []
        return messages

    def added(self) -> dict[int, list[str]]:
        """Keys sent to each replica so far."""
        out: dict[int, list[str]] = {}
        for index, message in self.sent:
            if isinstance(message, Add):
                out.setdefault(index, []).extend(r.key for r in message.requests)
        return out

    def finish(self, index: int, *keys: str) -> None:
        self.inbox.append((index, Done([Completion(k, f"text {k}", "stop", 3, 2) for k in keys])))


def request(key: str) -> GenerationRequest:
    return GenerationRequest(key, [1, 2, 3], 0)


def test_requests_go_to_the_replica_with_the_most_free_window():
    pool = FakePool(replicas=2, window=2)
    assert pool.in_flight() == 4 and pool.pids() == [1000, 1001]
    for key in "abc":
        pool.add(request(key))
    assert pool.step() == []
    assert pool.added() == {0: ["a", "c"], 1: ["b"]}
    pool.finish(0, "a")  # arrives with the next step
    pool.add(request("d"))  # only replica 1 has a free slot
    pool.add(request("e"))  # no free window anywhere: waits in the pool
    pool.add(request("f"))
    assert [c.key for c in pool.step()] == ["a"]  # replica 0 has room again: "e" goes there
    assert pool.added() == {0: ["a", "c", "e"], 1: ["b", "d"]}
    assert pool.has_unfinished()
    pool.finish(1, "b")
    assert [c.key for c in pool.step()] == ["b"]
    assert pool.added()[1] == ["b", "d", "f"]
    details = pool.summary_details()["replicas"]
    assert [(r["records"], r["output_tokens"]) for r in details] == [(1, 2), (1, 2)]


def test_a_dead_replicas_requests_go_to_the_others_then_fail_after_max_attempts(capsys):
    pool = FakePool(replicas=3, window=2)
    for key in "abcd":
        pool.add(request(key))
    pool.step()
    assert pool.added() == {0: ["a", "d"], 1: ["b"], 2: ["c"]}
    pool.inbox.append((0, Lost("killed by SIGKILL")))
    assert pool.step() == []
    assert pool.added() == {0: ["a", "d"], 1: ["b", "a"], 2: ["c", "d"]}
    assert "replica 0 died (killed by SIGKILL); 2 unfinished records go back" in capsys.readouterr().err
    pool.finish(0, "a")  # a late message from the dead replica is ignored
    pool.inbox.append((1, Dead(Fault("EngineError", "CUDA out of memory"))))
    done = pool.step()  # "a" died twice: an error row; "b" died once: to replica 2
    assert [(c.key, c.finish_reason) for c in done] == [("a", "error")]
    assert "died 2 times (last: replica 1, CUDA out of memory)" in done[0].error
    assert pool.added()[2] == ["c", "d"]  # replica 2 is full; "b" waits
    pool.finish(2, "c")
    assert [c.key for c in pool.step()] == ["c"]
    assert pool.added()[2] == ["c", "d", "b"]
    pool.inbox.append((2, Lost("exited with code 1")))
    with pytest.raises(EngineError) as exc:
        pool.step()
    assert str(exc.value).startswith("all 3 replicas died (replica 0: killed by SIGKILL; ")
    assert "\n" not in str(exc.value)


def test_replicas_sharing_a_gpu_start_one_after_the_other():
    assert FakePool(replicas=2).events == ["launch 0", "launch 1", "wait"]
    shared = [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    assert FakePool(replicas=3, envs=shared).events == ["launch 0", "wait", "launch 1", "wait", "launch 2", "wait"]


def test_a_replica_that_cannot_be_reached_loses_no_attempt(capsys):
    pool = FakePool(replicas=2, window=2, max_attempts=1)
    pool.broken = {0}
    for key in "abc":
        pool.add(request(key))
    assert pool.step() == []  # "a" and "c" never reached replica 0: retried, not failed
    assert pool.attempts == {} and pool.added() == {1: ["b", "a"]}
    assert "replica 0 died (cannot reach it: " in capsys.readouterr().err
    pool.finish(1, "b", "a")
    assert [c.key for c in pool.step()] == ["b", "a"]
    assert pool.added() == {1: ["b", "a", "c"]}


def test_abort_drops_everything_and_tells_the_replicas():
    pool = FakePool()
    for key in "abcde":
        pool.add(request(key))
    pool.step()
    pool.abort()
    assert not pool.has_unfinished()
    assert [m for _, m in pool.sent if isinstance(m, Abort)] == [Abort(), Abort()]
    pool.finish(0, "a")
    assert pool.step() == []


def test_gpu_slices():
    c = Config()
    c.parallel.replicas = 4
    c.engine.tensor_parallel_size = 2
    eight = [str(i) for i in range(8)]
    assert gpu_slices(c, eight) == [["0", "1"], ["2", "3"], ["4", "5"], ["6", "7"]]
    assert gpu_slices(c, []) is None
    with pytest.raises(ConfigError, match="each replica needs 2 GPUs"):
        gpu_slices(c, ["0"])
    c.engine.tensor_parallel_size = None
    c.parallel.replicas = 2
    with pytest.raises(ConfigError, match="gpu_memory_utilization to at most 0.50"):
        gpu_slices(c, ["3"])
    c.engine.gpu_memory_utilization = 0.45
    assert gpu_slices(c, ["3"]) == [["3"], ["3"]]
    c.run.engine, c.hf.device = "hf", "cpu"
    assert gpu_slices(c, eight) is None


def test_replica_envs_and_config(monkeypatch):
    c = Config()
    c.parallel.replicas, c.run.in_flight = 2, 9
    c.engine.gpu_memory_utilization = 0.45
    envs = replica_envs(c, ["0"])
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "0"]
    assert all(e["TQDM_DISABLE"] == "1" and "OMP_NUM_THREADS" not in e for e in envs)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    c.run.engine, c.hf.device = "hf", "cpu"
    envs = replica_envs(c)
    assert all("CUDA_VISIBLE_DEVICES" not in e and int(e["OMP_NUM_THREADS"]) >= 1 for e in envs)
    single = replica_config(c)
    assert (single.parallel.replicas, single.run.in_flight) == (1, 5)
    assert c.parallel.replicas == 2  # the original is untouched


def test_parallel_config_table_and_flags(monkeypatch, tmp_path):
    c = config_from_dict({"parallel": {"replicas": 4, "ray_address": "auto"}})
    assert (c.parallel.replicas, c.parallel.ray_address, c.parallel.max_attempts) == (4, "auto", 2)
    assert c.fingerprint() == Config().fingerprint()  # speed knobs are not in the fingerprint
    with pytest.raises(ConfigError, match="unknown key 'replica' in \\[parallel\\]"):
        config_from_dict({"parallel": {"replica": 2}})
    c.parallel.replicas = 0
    with pytest.raises(ConfigError, match="parallel.replicas must be at least 1"):
        c.validate()

    seen = []
    monkeypatch.setattr(pipeline, "run", lambda config, options, echo: seen.append(config) or {"statuses": {}})
    result = CliRunner().invoke(cli, ["run", "--replicas", "3", "--ray-address", "auto", "-o", str(tmp_path / "x")])
    assert result.exit_code == 0, result.output
    assert (seen[0].parallel.replicas, seen[0].parallel.ray_address) == (3, "auto")
    result = CliRunner().invoke(cli, ["run", "--replicas", "0"])
    assert result.exit_code == 2


def test_ray_missing_is_a_one_line_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    c = Config()
    c.parallel.ray_address = "auto"
    with pytest.raises(ConfigError, match=r"needs Ray, which is not installed: pip install -e '\.\[ray\]'"):
        create_engine(c, None)


# ---------------------------------------------------------------- real worker processes


@pytest.fixture(scope="module")
def setup(tiny_model, tmp_path_factory):
    """(model, inputs, rows of a one-engine run by id)."""
    folder = tmp_path_factory.mktemp("replicas")
    inputs = h.small_inputs(folder)
    clean = folder / "clean.jsonl"
    h.run(h.config(tiny_model, inputs), clean)
    return tiny_model, inputs, h.by_id(clean)


def capture_pools(monkeypatch) -> list:
    pools: list = []

    def create(config, tokenizer, **kw):
        engine = create_engine(config, tokenizer, **kw)
        pools.append(engine)
        return engine

    monkeypatch.setattr(pipeline, "create_engine", create)
    return pools


def kill_mid_run(pools: list, output: Path, victims: list[int], after_rows: int = 3) -> dict:
    """SIGKILL the victims' processes once rows are written and each victim holds work."""
    state: dict = {}

    def watch() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            pool = pools[0] if pools else None
            if (pool is not None and output.exists() and output.read_bytes().count(b"\n") >= after_rows
                    and all(pool.replicas[i].running for i in victims)):
                state["held"] = [len(pool.replicas[i].running) for i in victims]
                for i in victims:
                    os.kill(pool.pids()[i], signal.SIGKILL)
                return
            time.sleep(0.005)

    state["thread"] = threading.Thread(target=watch, daemon=True)
    state["thread"].start()
    return state


@pytest.mark.slow
def test_two_replicas_write_the_rows_of_one_engine(setup, tmp_path):
    model, inputs, clean = setup
    out = tmp_path / "out.jsonl"
    summary = h.run(h.config(model, inputs, replicas=2), out)
    assert h.by_id(out) == clean
    replicas = summary["replicas"]
    assert [r["replica"] for r in replicas] == [0, 1]
    assert all(r["records"] > 0 and r["alive"] and r["output_tokens_per_second"] > 0 for r in replicas)
    assert sum(r["records"] for r in replicas) == sum(1 for r in clean.values() if r["status"] != "skipped")


@pytest.mark.slow
def test_a_replica_sigkilled_mid_run_loses_nothing(setup, tmp_path, monkeypatch, capfd):
    model, inputs, clean = setup
    out = tmp_path / "out.jsonl"
    pools = capture_pools(monkeypatch)
    state = kill_mid_run(pools, out, victims=[1])
    summary = h.run(h.config(model, inputs, replicas=2), out)
    state["thread"].join()
    assert state.get("held", [0])[0] > 0, "the kill did not land mid-run"
    assert h.by_id(out) == clean  # every id exactly once, the same text as a clean run
    dead = summary["replicas"][1]
    assert not dead["alive"] and dead["error"] == "killed by SIGKILL"
    assert "replica 1 died (killed by SIGKILL)" in capfd.readouterr().err


@pytest.mark.slow
def test_all_replicas_dead_stops_the_run_resumably(setup, tmp_path, monkeypatch):
    model, inputs, clean = setup
    out = tmp_path / "out.jsonl"
    pools = capture_pools(monkeypatch)
    state = kill_mid_run(pools, out, victims=[0, 1])
    with pytest.raises(EngineError, match=r"^all 2 replicas died \(replica 0: killed by SIGKILL; "):
        h.run(h.config(model, inputs, replicas=2), out)
    state["thread"].join()
    partial = h.by_id(out)
    assert 3 <= len(partial) < len(clean)
    assert all(r["status"] != "error" for r in partial.values())  # unfinished records were not written
    monkeypatch.undo()
    h.run(h.config(model, inputs), out)  # the same run again, on one engine, finishes it
    assert h.by_id(out) == clean


# ---------------------------------------------------------------- static shards


@pytest.mark.slow
def test_shards_merged_by_export_equal_an_unsharded_run(setup, tmp_path, monkeypatch):
    model, inputs, clean = setup
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for shard in ("0/2", "1/2"):
        result = runner.invoke(cli, [*h.cli_args(model, inputs), "--shard", shard])
        assert result.exit_code == 0, result.output
        assert f"shard {shard}: " in result.output
    shards = sorted(tmp_path.glob("s2_final_descriptions.shard-*.jsonl"))
    assert [p.name for p in shards] == ["s2_final_descriptions.shard-0-of-2.jsonl",
                                        "s2_final_descriptions.shard-1-of-2.jsonl"]
    sizes = [len(h.rows(p)) for p in shards]
    assert all(sizes) and sum(sizes) == len(clean)

    result = runner.invoke(cli, ["export", "s2_final_descriptions.shard-*.jsonl", "--format", "jsonl", "-o", "all.jsonl"])
    assert result.exit_code == 0, result.output
    assert h.by_id(tmp_path / "all.jsonl") == clean

    result = runner.invoke(cli, ["status", "s2_final_descriptions.shard-*.jsonl"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"2 checkpoints: {len(clean)} records done")
    assert f"remaining: 0 of {len(clean)} joined records" in result.output
    for p in shards:
        assert f"last run of {p.name} (hf, finished)" in result.output

    # The same shard twice: reported, and export keeps one row per id.
    shutil.copy(shards[0], "copy.jsonl")
    shutil.copy(f"{shards[0]}.manifest.json", "copy.jsonl.manifest.json")
    result = runner.invoke(cli, ["status", str(shards[0]), "copy.jsonl"])
    assert f"ids in more than one checkpoint: {sizes[0]}" in result.output
    result = runner.invoke(cli, ["export", str(shards[0]), "copy.jsonl", "-o", "twice.json"])
    assert result.exit_code == 0 and f"{sizes[0]} ids appear in more than one checkpoint" in result.output

    # A shard written with another config is refused, by export and by status.
    result = runner.invoke(cli, [*h.cli_args(model, inputs), "--shard", "1/2", "--max-tokens", "4", "--limit", "1",
                                 "-o", "other.jsonl"])
    assert result.exit_code == 0, result.output
    for command in (["export", str(shards[0]), "other.jsonl", "-o", "mixed.json"], ["status", str(shards[0]), "other.jsonl"]):
        result = runner.invoke(cli, command)
        assert result.exit_code == 2
        assert "were written with different configs (changed: sampling.max_tokens" in result.output
    assert not (tmp_path / "mixed.json").exists()


# ---------------------------------------------------------------- a GPU: two vLLM replicas on one device


@pytest.mark.gpu
@pytest.mark.slow
def test_two_vllm_replicas_share_one_gpu_at_under_half_memory_each(setup, tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is False)")
    pytest.importorskip("vllm")
    model, inputs, clean = setup
    c = h.config(model, inputs, replicas=2)
    c.run.engine = "vllm"
    c.engine.gpu_memory_utilization = 0.4  # two engines on one device
    c.engine.enforce_eager = True
    c.engine.max_model_len = 2048
    c.engine.max_num_seqs = 8
    out = tmp_path / "out.jsonl"
    summary = h.run(c, out)
    rows = h.by_id(out)
    assert set(rows) == set(clean)
    assert all(r["status"] in ("ok", "length", "skipped") for r in rows.values()), rows
    places = {r["place"] for r in summary["replicas"]}
    assert len(places) == 1 and " GPU " in places.pop()  # both on the first visible GPU
    assert all(r["records"] > 0 and r["alive"] for r in summary["replicas"])


def test_a_request_the_replica_engine_refuses_comes_back_as_an_error(tiny_model, tmp_path):
    from s2_vllm.engines import EngineFactory
    from s2_vllm.engines.replica import serve

    config = h.config(tiny_model, (tmp_path / "a.json", tmp_path / "s.json"))
    inbox = [Add([GenerationRequest("empty", [], 0)]), None, Stop()]  # None: nothing waiting
    sent = []
    serve(EngineFactory(config), 0, {}, lambda timeout: inbox.pop(0), sent.append)
    assert isinstance(sent[0], Ready)
    assert [m for m in sent[1:] if not isinstance(m, Tokens)] == [
        Done([Completion("empty", "", "error", 0, 0, "engine refused the request: empty prompt")])]


def test_ray_replicas_on_vllms_cpu_build_ask_for_cpus_not_gpus(monkeypatch):
    from types import SimpleNamespace

    from s2_vllm.engines import ray_pool

    pool = ray_pool.RayReplicaPool.__new__(ray_pool.RayReplicaPool)  # placement only: no cluster, no actors
    nodes = [{"Alive": True, "Resources": {"CPU": 8.0}}]
    pool.ray = SimpleNamespace(cluster_resources=lambda: {"CPU": sum(n["Resources"]["CPU"] for n in nodes)},
                               nodes=lambda: nodes)
    monkeypatch.setattr(ray_pool, "is_cpu_platform", lambda: True)
    c = Config()
    c.parallel.replicas = 2
    assert pool._placement(c) == (4.0, 0)  # an even share of the cluster's CPUs each, no GPU
    nodes.append({"Alive": True, "Resources": {"CPU": 4.0}})
    c.parallel.replicas = 1
    assert pool._placement(c) == (4.0, 0)  # never more than the smallest node has: Ray could not place it
    c.parallel.replicas = 16
    with pytest.raises(ConfigError, match=r"^the Ray cluster has 12 CPUs and 0 GPUs; 16 replicas need 16 CPUs$"):
        pool._placement(c)
    c.parallel.replicas, c.engine.tensor_parallel_size = 3, 2  # 12 CPUs // 3 = 4 each, enough for 2 ranks
    assert pool._placement(c) == (4.0, 0)
    c.parallel.replicas, c.engine.pipeline_parallel_size = 1, 4  # 8 ranks: more than the 4-CPU node holds
    with pytest.raises(ConfigError, match=r"^each replica's 8 ranks \(tensor_parallel_size x pipeline_parallel_size\) "
                                          r"need 8 CPUs on one node; the smallest Ray node has 4$"):
        pool._placement(c)
    c.engine.tensor_parallel_size = c.engine.pipeline_parallel_size = None
    monkeypatch.setattr(ray_pool, "is_cpu_platform", lambda: False)  # the CUDA build: GPUs, as before
    c.parallel.replicas = 2
    with pytest.raises(ConfigError, match=r"^the Ray cluster has 12 CPUs and 0 GPUs; 2 replicas need 2 CPUs and 2 GPUs$"):
        pool._placement(c)
