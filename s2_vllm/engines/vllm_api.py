"""Every vLLM name s2-vllm uses beyond vLLM's documented offline API, in one place.

The documented API (`vllm.LLM`, `vllm.SamplingParams`, `LLMEngine.add_request` / `step` /
`abort_request` / `has_unfinished_requests`, `vllm.inputs`) is used directly by `vllm.py`.
Everything else, the internals below, is reached only through this module. They were read
from, and are tested on, the vLLM versions in `WRITTEN_FOR`; vLLM moves them between
releases, so each is checked where it is used:

- `static_problems()` checks, without an engine, that every module, class and attribute exists
  with the expected shape. A unit test runs it against the installed vLLM, so a vLLM bump that
  drops one fails CI instead of silently switching a guard off.
- `Internals(llm_engine)` checks the started engine's own objects and keeps what it found;
  `header_lines()` says in the run's header which features are off and why, on a vLLM this
  module was not written for or where a check failed. Nothing here degrades without a word.
"""

from __future__ import annotations

import inspect
import sys
import threading
from dataclasses import dataclass
from typing import Any

WRITTEN_FOR = ("0.26",)  # vLLM minor versions whose internals this module was read from and tested on
DEFAULT_MAX_NUM_SEQS = 256  # vLLM's scheduler default, for when the engine does not say


@dataclass(frozen=True)
class Internal:
    name: str
    where: str  # what s2-vllm reads
    without: str  # what is off when it is missing


TOKENS = Internal("tokens", "LLMEngine.output_processor.request_states[id].detokenizer.num_output_tokens()",
                  "the progress bar counts the tokens of finished requests only")
DEATH = Internal("death", "LLMEngine.engine_core.resources.engine_dead and engine_core.outputs_queue",
                 "a killed EngineCore process may hang the run instead of stopping it")
SEQS = Internal("seqs", "LLMEngine.vllm_config.scheduler_config.max_num_seqs",
                f"the default in-flight bound assumes max_num_seqs = {DEFAULT_MAX_NUM_SEQS}")
SHUTDOWN = Internal("shutdown", "LLMEngine.engine_core.shutdown()",
                    "the engine's processes are stopped by s2-vllm's watchdog only, when the run exits")
DEAD_ERROR = Internal("dead_error", "vllm.v1.engine.exceptions.EngineDeadError",
                      "a dead engine is recognised by its flag only")
ENGINE_ARGS = Internal("engine_args", "vllm.engine.arg_utils.EngineArgs (its dataclass fields)",
                       "[engine] keys are checked by vLLM at engine start only")
PLATFORM = Internal("platform", "vllm.platforms.current_platform.is_cpu()",
                    "vLLM's CPU build is not recognised, so s2-vllm's CPU settings are not applied")
OUTPUT_KIND = Internal("output_kind", "vllm.sampling_params.RequestOutputKind.FINAL_ONLY",
                       "step() builds partial outputs of every running request")
SAMPLER = Internal("sampler", "vllm.v1.sample.logits_processor (LogitsProcessor, BatchUpdate, MoveDirectionality), "
                   "SamplingParams.extra_args and EngineArgs.logits_processors",
                   "per-record seeds go through vLLM's per-request generators (slower)")
INTERNALS = (TOKENS, DEATH, SEQS, SHUTDOWN, DEAD_ERROR, ENGINE_ARGS, PLATFORM, OUTPUT_KIND, SAMPLER)
SAMPLER_EXTRA = "s2_vllm_sample"  # SamplingParams.extra_args key: [seed, temperature, top_k, top_p, min_p]
SAMPLER_CLASS = f"{__name__}:SeededSampler"  # how vLLM's engine process finds it (EngineArgs.logits_processors)


def version() -> str:
    import vllm

    return str(getattr(vllm, "__version__", "unknown"))


def written_for(ver: str) -> bool:
    return any(ver == v or ver.startswith(v + ".") for v in WRITTEN_FOR)


def _sets_attribute(cls: Any, method: str, attribute: str) -> bool:
    """True when `cls.method`'s source assigns `self.attribute` (instance attributes have no class-level trace)."""
    try:
        return f"self.{attribute}" in inspect.getsource(getattr(cls, method))
    except (OSError, TypeError, AttributeError):
        return False


def static_problems() -> dict[str, str]:
    """Internal name -> what is wrong, for each internal the installed vLLM lacks; {} when all are there."""
    problems: dict[str, str] = {}

    def check(internal: Internal, test: Any) -> None:
        try:
            ok, why = test()
        except Exception as exc:  # an import that fails, a class that moved
            ok, why = False, f"{type(exc).__name__}: {exc}"
        if not ok:
            problems[internal.name] = why

    def tokens() -> tuple[bool, str]:
        from vllm.v1.engine.detokenizer import IncrementalDetokenizer
        from vllm.v1.engine.llm_engine import LLMEngine
        from vllm.v1.engine.output_processor import OutputProcessor, RequestState

        return (_sets_attribute(LLMEngine, "__init__", "output_processor")
                and _sets_attribute(OutputProcessor, "__init__", "request_states")
                and _sets_attribute(RequestState, "__init__", "detokenizer")
                and callable(getattr(IncrementalDetokenizer, "num_output_tokens", None)),
                "LLMEngine.output_processor / OutputProcessor.request_states / RequestState.detokenizer / "
                "IncrementalDetokenizer.num_output_tokens not found")

    def death() -> tuple[bool, str]:
        import dataclasses

        from vllm.v1.engine.core_client import BackgroundResources, MPClient, SyncMPClient

        fields = {f.name for f in dataclasses.fields(BackgroundResources)}
        return ("engine_dead" in fields and _sets_attribute(MPClient, "__init__", "resources")
                and _sets_attribute(SyncMPClient, "__init__", "outputs_queue")
                and _sets_attribute(SyncMPClient, "get_output", "outputs_queue"),
                "BackgroundResources.engine_dead / MPClient.resources / SyncMPClient.outputs_queue not found")

    def seqs() -> tuple[bool, str]:
        from vllm.config import SchedulerConfig, VllmConfig

        return ("max_num_seqs" in getattr(SchedulerConfig, "__dataclass_fields__", {})
                and "scheduler_config" in getattr(VllmConfig, "__dataclass_fields__", {}),
                "VllmConfig.scheduler_config.max_num_seqs not found")

    def shutdown() -> tuple[bool, str]:
        from vllm.v1.engine.core_client import EngineCoreClient
        from vllm.v1.engine.llm_engine import LLMEngine

        return (_sets_attribute(LLMEngine, "__init__", "engine_core") and callable(EngineCoreClient.shutdown),
                "LLMEngine.engine_core / EngineCoreClient.shutdown not found")

    def dead_error() -> tuple[bool, str]:
        from vllm.v1.engine.exceptions import EngineDeadError

        return issubclass(EngineDeadError, Exception), "EngineDeadError is not an exception class"

    def engine_args() -> tuple[bool, str]:
        import dataclasses

        from vllm.engine.arg_utils import EngineArgs

        names = {f.name for f in dataclasses.fields(EngineArgs)}
        return {"model", "max_model_len", "max_num_seqs"} <= names, "EngineArgs has no model/max_model_len fields"

    def platform() -> tuple[bool, str]:
        from vllm.platforms import current_platform

        return callable(getattr(current_platform, "is_cpu", None)), "current_platform.is_cpu not found"

    def output_kind() -> tuple[bool, str]:
        from vllm.sampling_params import RequestOutputKind

        return hasattr(RequestOutputKind, "FINAL_ONLY"), "RequestOutputKind.FINAL_ONLY not found"

    for internal, test in ((TOKENS, tokens), (DEATH, death), (SEQS, seqs), (SHUTDOWN, shutdown),
                           (DEAD_ERROR, dead_error), (ENGINE_ARGS, engine_args), (PLATFORM, platform),
                           (OUTPUT_KIND, output_kind), (SAMPLER, sampler_ready)):
        check(internal, test)
    return problems


def sampler_ready() -> tuple[bool, str]:
    """Whether this vLLM can run s2-vllm's seeded sampler (`SeededSampler`), and if not why."""
    import dataclasses

    try:
        from vllm import SamplingParams
        from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality  # noqa: F401

        batch_fields = {f.name for f in dataclasses.fields(BatchUpdate)}
        extra = SamplingParams(extra_args={"x": 1}).extra_args
    except Exception as exc:  # a module or class that moved
        return False, f"{type(exc).__name__}: {exc}"
    if not hasattr(MoveDirectionality, "SWAP") or not {"removed", "added", "moved"} <= batch_fields:
        return False, "BatchUpdate/MoveDirectionality changed shape"
    if "logits_processors" not in (engine_arg_fields() or {}) or extra != {"x": 1}:
        return False, "EngineArgs.logits_processors or SamplingParams.extra_args not found"
    return True, ""


# ---------------------------------------------------------------- module-level names


def engine_arg_fields() -> dict[str, Any] | None:
    """EngineArgs' field names and annotations; None where this vLLM has no such dataclass."""
    import dataclasses

    try:
        from vllm.engine.arg_utils import EngineArgs

        return {f.name: f.type for f in dataclasses.fields(EngineArgs)}
    except Exception:
        return None


def build_engine_args(kwargs: dict[str, Any]) -> None:
    """Run EngineArgs' own checks on `kwargs` (its __post_init__), without starting anything."""
    from vllm.engine.arg_utils import EngineArgs

    EngineArgs(**kwargs)


def final_only() -> dict[str, Any]:
    """SamplingParams' keyword that reports a request once, when it finishes (as LLM.generate does)."""
    try:
        from vllm.sampling_params import RequestOutputKind

        return {"output_kind": RequestOutputKind.FINAL_ONLY}
    except Exception:
        return {}


def is_cpu_platform() -> bool:
    """True when the installed vLLM is its CPU build."""
    return platform_kind() == "cpu"


def platform_kind() -> str:
    """"cuda", "cpu" or "other": where the installed vLLM would run an engine."""
    from vllm.platforms import current_platform

    for kind in ("cuda", "cpu"):
        test = getattr(current_platform, f"is_{kind}", None)
        if callable(test) and test():
            return kind
    return "other"


def is_engine_dead_error(exc: BaseException) -> bool:
    try:
        from vllm.v1.engine.exceptions import EngineDeadError
    except Exception:
        return False
    return isinstance(exc, EngineDeadError)


def __getattr__(name: str) -> Any:
    """`SeededSampler` is built on first use, so that importing this module imports neither vLLM nor torch."""
    if name == "SeededSampler":
        globals()[name] = cls = _seeded_sampler_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _seeded_sampler_class() -> type:
    """vLLM's logits-processor form of `seeded_sampling.choose_tokens`, run inside the engine process.

    A request that carries `extra_args[SAMPLER_EXTRA]` is sent to vLLM as greedy: this processor
    draws its token and leaves every other logit at -inf, so vLLM's argmax takes that token.
    Requests without it are left alone. vLLM calls `update_state` with the batch's changes
    (removed, added, moved, in that order) and `apply` on each step's logits.
    """
    import torch
    from vllm.v1.sample.logits_processor import LogitsProcessor, MoveDirectionality

    from s2_vllm.engines.seeded_sampling import choose_tokens

    class SeededSampler(LogitsProcessor):
        def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool) -> None:
            print(f"s2-vllm: sampling with SeededSampler ({SAMPLER_CLASS}) on {device}", file=sys.stderr, flush=True)
            self.device = device
            self.rows: dict[int, tuple] = {}  # batch index -> (seed, temperature, top_k, top_p, min_p, output ids)
            self.batch: tuple | None = None  # the rows as tensors, rebuilt when the batch changes

        @classmethod
        def validate_params(cls, params: Any) -> None:
            spec = (params.extra_args or {}).get(SAMPLER_EXTRA)
            if spec is not None and not (isinstance(spec, (list, tuple)) and len(spec) == 5 and spec[2] >= 1):
                raise ValueError(f"extra_args[{SAMPLER_EXTRA!r}] must be [seed, temperature, top_k >= 1, top_p, min_p]")

        def is_argmax_invariant(self) -> bool:
            return False  # it decides the argmax

        def update_state(self, update: Any) -> None:
            if update is None:
                return
            rows = self.rows
            for i in update.removed:
                rows.pop(i, None)
            for i, params, _prompt, output in update.added:
                spec = (getattr(params, "extra_args", None) or {}).get(SAMPLER_EXTRA)
                if spec is None:
                    rows.pop(i, None)
                else:
                    rows[i] = (*spec, output)
            for a, b, how in update.moved:
                first, second = rows.pop(a, None), rows.pop(b, None)
                if first is not None:
                    rows[b] = first
                if second is not None and how == MoveDirectionality.SWAP:
                    rows[a] = second
            self.batch = None

        def apply(self, logits: Any) -> Any:
            if not self.rows:
                return logits
            if self.batch is None:
                order = sorted(self.rows)
                specs = [self.rows[i] for i in order]

                def column(j: int, dtype: Any) -> Any:
                    return torch.tensor([s[j] for s in specs], dtype=dtype, device=self.device)

                self.batch = (order, torch.tensor(order, device=self.device), column(0, torch.int64),
                              column(1, torch.float32), column(2, torch.int64), column(3, torch.float32),
                              column(4, torch.float32), [s[5] for s in specs], max(s[2] for s in specs),
                              any(s[3] < 1 for s in specs), any(s[4] > 0 for s in specs))
            order, index, seeds, temperature, top_k, top_p, min_p, outputs, k_max, use_top_p, use_min_p = self.batch
            positions = torch.tensor([len(o) for o in outputs], dtype=torch.int64).to(self.device, non_blocking=True)
            whole = len(order) == logits.shape[0] and order[-1] == len(order) - 1
            tokens = choose_tokens(logits if whole else logits[index], seeds, positions, temperature, top_k, top_p,
                                   min_p, k_max=k_max, use_top_p=use_top_p, use_min_p=use_min_p)
            if whole:
                logits.fill_(float("-inf"))
                logits.scatter_(1, tokens[:, None], 0.0)
            else:
                logits[index] = float("-inf")
                logits[index, tokens] = 0.0
            return logits

    SeededSampler.__module__, SeededSampler.__qualname__ = __name__, "SeededSampler"
    return SeededSampler


# ---------------------------------------------------------------- one started engine


class Internals:
    """The internals of one started `LLMEngine`, each checked once; `missing` says which are not there."""

    def __init__(self, llm_engine: Any, problems: dict[str, str] | None = None):
        self.version = version()
        self.missing: dict[str, str] = dict(static_problems() if problems is None else problems)
        core = getattr(llm_engine, "engine_core", None)
        self._states = getattr(getattr(llm_engine, "output_processor", None), "request_states", None)
        if not isinstance(self._states, dict):
            self._states = None
            self.missing.setdefault(TOKENS.name, "this engine has no output_processor.request_states")
        self._resources = getattr(core, "resources", None)
        self._outputs = getattr(core, "outputs_queue", None)
        in_process = getattr(core, "engine_core", None) is not None  # VLLM_ENABLE_V1_MULTIPROCESSING=0: no process to die
        if not (hasattr(self._resources, "engine_dead") and hasattr(self._outputs, "put_nowait")):
            self._resources = self._outputs = None
            if not in_process:
                self.missing.setdefault(DEATH.name, "this engine's core client has no resources.engine_dead/outputs_queue")
        self._core = core if callable(getattr(core, "shutdown", None)) else None
        if self._core is None:
            self.missing.setdefault(SHUTDOWN.name, "this engine has no engine_core.shutdown()")
        self.max_num_seqs = _positive_int(_path(llm_engine, "vllm_config", "scheduler_config", "max_num_seqs"))
        if self.max_num_seqs is None:
            self.missing.setdefault(SEQS.name, "this engine has no vllm_config.scheduler_config.max_num_seqs")

    def tokens_in_flight(self) -> int:
        """Output tokens generated so far by the engine's unfinished requests (0 without the internal)."""
        if self._states is None:
            return 0
        return sum(state.detokenizer.num_output_tokens() for state in list(self._states.values()))

    def core_dead(self) -> bool:
        return bool(self._resources is not None and self._resources.engine_dead)

    def wake_step_on_core_death(self, closed: threading.Event) -> None:
        """Make a `step()` blocked on a dead EngineCore raise instead of waiting forever.

        vLLM 0.26's sync client notices a dead EngineCore (its monitor thread sets
        `resources.engine_dead`), but the thread that feeds `outputs_queue` then exits without a
        word, and a `step()` blocked in `outputs_queue.get()` never returns. This thread hands the
        queue an exception once the flag is up; vLLM raises it from `step()`.
        """
        resources, outputs = self._resources, self._outputs
        if resources is None or outputs is None:
            return

        def watch() -> None:
            while not closed.wait(0.5):
                if resources.engine_dead:
                    outputs.put_nowait(RuntimeError("vLLM's EngineCore process exited unexpectedly"))
                    return

        threading.Thread(target=watch, name="s2-vllm-engine-core-watch", daemon=True).start()

    def shutdown(self) -> None:
        if self._core is not None:
            self._core.shutdown()

    def header_lines(self) -> list[str]:
        """For the run's header: nothing on a vLLM this module knows with every internal there; else one
        line saying so, and which features are off and why."""
        known = written_for(self.version)
        if known and not self.missing:
            return []
        tested = f"tested with ({', '.join(WRITTEN_FOR)})"
        head = f"vLLM {self.version}" + ("" if known else f" is not a version s2-vllm was {tested}")
        if not self.missing:
            return [f"{head}; every vLLM internal it uses is there"]
        by_name = {i.name: i for i in INTERNALS}
        off = "; ".join(f"{by_name[name].without} ({by_name[name].where}: {why})" for name, why in self.missing.items())
        return [f"{head}; off: {off}"]


def _path(obj: Any, *names: str) -> Any:
    for name in names:
        obj = getattr(obj, name, None)
    return obj


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
