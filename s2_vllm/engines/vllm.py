"""The vLLM engine: continuous batching over pre-tokenized prompts, one step at a time.

`VLLMEngine` drives `vllm.LLM(...).llm_engine` directly (`add_request` / `step` /
`abort_request`) instead of calling `LLM.generate()`: the runner keeps a bounded window of
requests in flight, refills it as soon as any request finishes, and writes each finished
request at once. Prompts arrive as token ids and go in as token engine inputs, so vLLM never
re-tokenizes them.

`vllm` (and with it torch) is imported only inside functions, so importing this module
is cheap and works where vLLM is not installed.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import sys
import threading
from typing import Any, Callable

from s2_vllm.config import EngineConfig, SamplingConfig
from s2_vllm.engines.base import Completion, GenerationRequest
from s2_vllm.engines.vllm_cpu import PlatformSettings, settings_here
from s2_vllm.errors import ConfigError, EngineError

# EngineConfig fields passed to vllm.LLM when not None (`extra` is merged in afterwards).
ENGINE_FIELDS = tuple(f.name for f in dataclasses.fields(EngineConfig) if f.name != "extra")
DEFAULT_MAX_NUM_SEQS = 256  # vLLM's scheduler default when neither config nor engine says
_FINISH_REASONS = {"stop": "stop", "length": "length"}


def _one_line(exc: BaseException, limit: int = 500) -> str:
    """An exception's message on one line: pydantic's "further information" links dropped."""
    lines = [ln.strip() for ln in str(exc).splitlines()]
    text = "; ".join(ln for ln in lines if ln and not ln.startswith("For further information"))
    text = text or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _import_vllm() -> Any:
    import logging

    # torch warns on import when CUDA_HOME exists but no CUDA runtime does (any CPU box with nvcc).
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    if (loaded := sys.modules.get("vllm")) is not None:
        return loaded  # called for every request (sampling_params): the checks below ran once
    both = _installed_vllm_distributions() == ["vllm", "vllm-cpu"]
    if both:  # they share the package folder `vllm`: which files are whose is anyone's guess
        raise EngineError("both vllm (CUDA) and vllm-cpu are installed; keep one: scripts/install.sh --cuda or --cpu")
    from s2_vllm.engine_log import held_back

    try:
        with held_back():  # its import-time lines belong in the engine log, not on the console
            import vllm

            vllm.LLM  # vllm/__init__ imports lazily: this is the heavy import that logs
    except Exception as exc:  # not only ImportError: a torchvision built for another torch raises RuntimeError
        raise EngineError(f"cannot import vLLM ({_cause(exc)}); install it or use --engine hf") from None
    return vllm


def _installed_vllm_distributions() -> list[str]:
    import importlib.metadata as metadata

    return [name for name in ("vllm", "vllm-cpu") if next(iter(metadata.distributions(name=name)), None) is not None]


def _check_type(where: str, value: Any, annotations: list[Any]) -> None:
    """Reject a scalar (or list of scalars) that matches none of vLLM's annotations for it."""
    scalars = (bool, int, float, str)
    if value is None or not (
        isinstance(value, scalars) or (isinstance(value, list) and all(isinstance(v, scalars) for v in value))
    ):
        return  # nested configs (tables) are checked by EngineArgs itself
    import pydantic

    first_error = None
    for annotation in annotations:
        try:
            pydantic.TypeAdapter(annotation).validate_python(value, strict=True)
            return
        except pydantic.ValidationError as exc:
            first_error = first_error or exc
        except Exception:  # an annotation pydantic cannot build a validator for: trust vLLM
            return
    if first_error is not None:
        msg = first_error.errors()[0]["msg"] if first_error.errors() else _one_line(first_error)
        raise ConfigError(f"{where} = {value!r} is not accepted by vLLM: {msg}")


def engine_kwargs(cfg: EngineConfig) -> dict[str, Any]:
    """The keyword arguments for `vllm.LLM(...)`, checked against vLLM's `EngineArgs`.

    Needs neither CUDA nor the model files: names are checked against the fields of
    `vllm.engine.arg_utils.EngineArgs` (plus `LLM`'s own keywords), scalar values against
    their annotations, then `EngineArgs(**kwargs)` is built (not the engine) so its own
    `__post_init__` checks run.
    """
    kwargs = {name: getattr(cfg, name) for name in ENGINE_FIELDS if getattr(cfg, name) is not None}
    for key, value in cfg.extra.items():
        if key in ENGINE_FIELDS:
            raise ConfigError(f"'{key}' is an [engine] key: set it there, not in [engine.extra]")
        if key == "skip_tokenizer_init" and value:
            raise ConfigError("[engine.extra] skip_tokenizer_init cannot be true: s2-vllm needs detokenized text")
    kwargs.update(cfg.extra)
    _validate_engine_kwargs(kwargs, set(cfg.extra))
    return kwargs


def _validate_engine_kwargs(kwargs: dict[str, Any], extra_keys: set[str]) -> None:
    _import_vllm()
    from vllm import LLM
    from vllm.engine.arg_utils import EngineArgs

    fields = {f.name: f.type for f in dataclasses.fields(EngineArgs)}
    llm_params = {
        name: p.annotation
        for name, p in inspect.signature(LLM.__init__).parameters.items()
        if name not in ("self", "kwargs") and p.kind is not inspect.Parameter.VAR_KEYWORD
    }
    known = set(fields) | set(llm_params)
    for key, value in kwargs.items():
        where = f"engine.extra.{key}" if key in extra_keys else f"engine.{key}"
        if key not in known:
            close = difflib.get_close_matches(key, sorted(k for k in known if not k.startswith("_")), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown vLLM engine argument '{key}' in [engine.extra]{hint}")
        annotations = [fields[key]] if key in fields else []
        if key in llm_params and llm_params[key] is not inspect.Parameter.empty:
            annotations.append(llm_params[key])
        _check_type(where, value, annotations)
    # LLM-only keywords (chat_template) never reach EngineArgs. The model and tokenizer
    # are swapped for a path that exists, so HF_HUB_OFFLINE's model lookup in
    # EngineArgs.__post_init__ needs no model files.
    probe = {k: v for k, v in kwargs.items() if k in fields}
    probe["model"] = os.curdir
    if probe.get("tokenizer") is not None:
        probe["tokenizer"] = os.curdir
    try:
        EngineArgs(**probe)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ConfigError(f"vLLM rejects the [engine] settings: {_one_line(exc)}") from None


def sampling_params(s: SamplingConfig, seed: int) -> Any:
    """The `vllm.SamplingParams` for one record; vLLM's own checks become a ConfigError.

    top_k = 0 (or -1) turns top-k off, as in vLLM. Only the final output of each request
    is reported (`RequestOutputKind.FINAL_ONLY`, as `LLM.generate()` does), so `step()`
    does not build partial outputs for every running request.
    """
    _import_vllm()
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    try:
        return SamplingParams(
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            min_p=s.min_p,
            repetition_penalty=s.repetition_penalty,
            presence_penalty=s.presence_penalty,
            frequency_penalty=s.frequency_penalty,
            max_tokens=s.max_tokens,
            stop=list(s.stop) or None,
            seed=seed,
            ignore_eos=s.ignore_eos,
            skip_special_tokens=True,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid [sampling] value: {_one_line(exc)}") from None


class VLLMEngine:
    """The Engine protocol over vLLM's offline `LLMEngine`, stepped by the runner."""

    name = "vllm"

    def __init__(
        self,
        engine: EngineConfig,
        sampling: SamplingConfig,
        in_flight: int | None = None,
        *,
        platform: PlatformSettings | None = None,
        llm_factory: Callable[..., Any] | None = None,
    ) -> None:
        if in_flight is not None and in_flight < 1:  # the schema refuses it in a config; this guards callers
            raise ValueError(f"in_flight must be at least 1, not {in_flight}")
        self._sampling = sampling
        sampling_params(sampling, 0)  # bad sampling values fail before the model loads
        kwargs = engine_kwargs(engine)
        vllm = _import_vllm()
        from vllm.inputs import tokens_input

        self._tokens_input = tokens_input
        platform = settings_here(engine) if platform is None else platform
        os.environ.update(platform.env)  # before the engine starts its processes, which inherit it
        kwargs.update(platform.engine_args)
        factory = llm_factory if llm_factory is not None else vllm.LLM
        try:
            self._llm = factory(**kwargs)
            self._engine = self._llm.llm_engine
        except Exception as exc:
            raise EngineError(f"vLLM engine failed to start ({engine.model}): {_cause(exc)}") from exc
        self._in_flight: dict[str, int] = {}  # key -> prompt length, for requests added and unfinished
        max_num_seqs = engine.max_num_seqs or _engine_max_num_seqs(self._engine) or DEFAULT_MAX_NUM_SEQS
        self._capacity = in_flight if in_flight is not None else 2 * max_num_seqs
        self._closed = threading.Event()
        _wake_step_when_core_dies(self._engine, self._closed)

    def capacity(self) -> int:
        return self._capacity

    def add(self, request: GenerationRequest) -> None:
        if request.key in self._in_flight:
            raise ValueError(f"request '{request.key}' is already in flight")
        params = sampling_params(self._sampling, request.seed)
        # An engine input ("type": "token"), not a raw prompt dict: vLLM then neither re-processes
        # the prompt nor warns that raw prompts are deprecated.
        prompt = self._tokens_input(list(request.prompt_token_ids))
        # Raises for this request alone (e.g. prompt longer than max_model_len), unless the
        # engine itself is gone: then it is the run that cannot go on, not this record.
        try:
            self._engine.add_request(request_id=request.key, prompt=prompt, params=params)
        except Exception as exc:
            if type(exc).__name__ == "EngineDeadError" or _core_dead(self._engine):
                raise EngineError(f"vLLM engine died: {_cause(exc)}") from exc
            raise
        self._in_flight[request.key] = len(request.prompt_token_ids)

    def step(self) -> list[Completion]:
        try:
            outputs = self._engine.step()
        except Exception as exc:
            raise EngineError(f"vLLM engine died: {_cause(exc)}") from exc
        done = []
        for out in outputs:
            if not getattr(out, "finished", False) or out.request_id not in self._in_flight:
                continue  # partial output, or a request this engine no longer tracks
            done.append(self._completion(out, self._in_flight.pop(out.request_id)))
        if self._in_flight and not done and not self._has_unfinished_requests():
            # vLLM holds nothing, yet requests are unfinished: they were dropped. Report
            # them as errors rather than stepping an idle engine forever.
            lost, self._in_flight = self._in_flight, {}
            done += [
                Completion(key, "", "error", n, 0, "vLLM dropped the request without finishing it")
                for key, n in lost.items()
            ]
        return done

    def has_unfinished(self) -> bool:
        return bool(self._in_flight)

    def tokens_in_flight(self) -> int:
        """Output tokens generated so far by unfinished requests, for the progress bar.

        Only finished requests come back from `step` (FINAL_ONLY), so without this the bar would
        read 0 tok/s until the first wave of requests ends. It reads vLLM's per-request
        detokenizer state, which is not a public API: any failure counts as 0.
        """
        try:
            states = self._engine.output_processor.request_states
            return sum(state.detokenizer.num_output_tokens() for state in list(states.values()))
        except Exception:
            return 0

    def abort(self) -> None:
        keys, self._in_flight = list(self._in_flight), {}
        if keys:
            try:
                self._engine.abort_request(keys)
            except Exception as exc:
                raise EngineError(f"vLLM could not abort {len(keys)} requests: {_cause(exc)}") from exc

    def close(self) -> None:
        if hasattr(self, "_closed"):
            self._closed.set()
        engine, self._engine, self._llm = getattr(self, "_engine", None), None, None
        if engine is None:
            return
        if self._in_flight:
            keys, self._in_flight = list(self._in_flight), {}
            try:
                engine.abort_request(keys)
            except Exception:
                pass
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            try:
                core.shutdown()
            except Exception:
                pass  # closing is best effort; the process is about to exit anyway

    def _has_unfinished_requests(self) -> bool:
        try:
            return bool(self._engine.has_unfinished_requests())
        except Exception as exc:
            raise EngineError(f"vLLM engine died: {_cause(exc)}") from exc

    @staticmethod
    def _completion(out: Any, prompt_tokens: int) -> Completion:
        key = out.request_id
        if not out.outputs:
            return Completion(key, "", "error", prompt_tokens, 0, "vLLM returned no output for the request")
        first = out.outputs[0]
        text, n = first.text or "", len(first.token_ids or ())
        reason = _FINISH_REASONS.get(str(first.finish_reason))
        if reason is not None:
            return Completion(key, text, reason, prompt_tokens, n)
        return Completion(key, text, "error", prompt_tokens, n, f"vLLM finished the request with reason '{first.finish_reason}'")


def _wake_step_when_core_dies(llm_engine: Any, closed: threading.Event) -> None:
    """Make `step()` raise, instead of waiting forever, when vLLM's EngineCore process dies.

    vLLM 0.26's sync client notices a dead EngineCore (its monitor thread sets
    `resources.engine_dead` and shuts the client down), but the thread that feeds
    `outputs_queue` then exits without a word, and a `step()` blocked in `outputs_queue.get()`
    never returns: a run whose EngineCore was OOM-killed would hang. This thread hands that
    queue an exception once the flag is up; vLLM raises it from `step()` as EngineDeadError.
    """
    core = getattr(llm_engine, "engine_core", None)
    resources, outputs = getattr(core, "resources", None), getattr(core, "outputs_queue", None)
    if resources is None or outputs is None:
        return  # the engine core runs in this process (or another vLLM): nothing to watch

    def watch() -> None:
        while not closed.wait(0.5):
            if getattr(resources, "engine_dead", False):
                outputs.put_nowait(RuntimeError("vLLM's EngineCore process exited unexpectedly"))
                return

    threading.Thread(target=watch, name="s2-vllm-engine-core-watch", daemon=True).start()


def _core_dead(llm_engine: Any) -> bool:
    resources = getattr(getattr(llm_engine, "engine_core", None), "resources", None)
    return bool(getattr(resources, "engine_dead", False))


def _engine_max_num_seqs(llm_engine: Any) -> int | None:
    try:
        value = llm_engine.vllm_config.scheduler_config.max_num_seqs
    except AttributeError:
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _cause(exc: BaseException) -> str:
    """One line naming the innermost cause (vLLM wraps worker failures in generic errors)."""
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append(f"{type(exc).__name__}: {_one_line(exc, 300)}")
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return parts[-1] if len(parts) == 1 else f"{parts[0]} (caused by {parts[-1]})"
