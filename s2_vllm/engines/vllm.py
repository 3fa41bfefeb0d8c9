"""The vLLM engine: continuous batching over pre-tokenized prompts, one step at a time.

`VLLMEngine` drives `vllm.LLM(...).llm_engine` directly (`add_request` / `step` /
`abort_request`) instead of calling `LLM.generate()`: the runner keeps a bounded number of
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
from s2_vllm.engines import vllm_api
from s2_vllm.engines.base import Completion, Engine, GenerationRequest
from s2_vllm.engines.seeded_sampling import SamplerPlan, plan
from s2_vllm.engines.vllm_cpu import PlatformSettings, settings_here
from s2_vllm.errors import ConfigError, EngineError, cause_line, one_line

# EngineConfig fields passed to vllm.LLM when not None (`extra` is merged in afterwards).
ENGINE_FIELDS = tuple(f.name for f in dataclasses.fields(EngineConfig) if f.name != "extra")
_FINISH_REASONS = {"stop": "stop", "length": "length"}
SAMPLER_WORDS = {"greedy": "greedy (temperature 0), no seed",
                 "s2": "s2-vllm's SeededSampler, a seed per record, one batched pass per step",
                 "vllm": "vLLM's own, a seed per record (V1 runner: a generator per request; V2: one Gumbel pass)",
                 "unseeded": "vLLM's own, no per-record seed"}
_CHECKED_DRAWS: set[tuple] = set()  # (temperature, top_p, top_k, min_p) that vLLM's SamplingParams accepted


def _import_vllm() -> Any:
    if (loaded := sys.modules.get("vllm")) is not None:
        return loaded
    import logging

    # torch warns on import when CUDA_HOME exists but no CUDA runtime does (any CPU box with nvcc).
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    both = _installed_vllm_distributions() == ["vllm", "vllm-cpu"]
    if both:  # they share the package folder `vllm`: which files are whose is anyone's guess
        raise EngineError("both vllm (CUDA) and vllm-cpu are installed; keep one: scripts/install.sh --cuda or --cpu")
    from s2_vllm.engine_log import held_back

    try:
        with held_back():  # its import-time lines belong in the engine log, not on the console
            import vllm

            vllm.LLM  # vllm/__init__ imports lazily: this is the heavy import that logs
    except Exception as exc:  # not only ImportError: a torchvision built for another torch raises RuntimeError
        raise EngineError(f"cannot import vLLM ({cause_line(exc)}); install it or use --engine hf") from None
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
        msg = first_error.errors()[0]["msg"] if first_error.errors() else one_line(first_error, whole=True)
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

    fields = vllm_api.engine_arg_fields()
    if fields is None:
        return  # this vLLM has no EngineArgs dataclass: it checks the arguments at engine start (header says so)
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
        vllm_api.build_engine_args(probe)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ConfigError(f"vLLM rejects the [engine] settings: {one_line(exc, whole=True)}") from None


def sampling_params(s: SamplingConfig, seed: int, kind: str | None = None) -> Any:
    """The `vllm.SamplingParams` for one record; vLLM's own checks become a ConfigError.

    `kind`: the sampler (`seeded_sampling.plan`; None: the plan for `s`). "s2" sends the request to
    vLLM as greedy, with its seed and sampling settings in `extra_args` for s2-vllm's
    `SeededSampler`; "vllm" gives vLLM the record's seed; "greedy" and "unseeded" give none.
    top_k = 0 (or -1) turns top-k off, as in vLLM. Only the final output of each request
    is reported (`RequestOutputKind.FINAL_ONLY`, as `LLM.generate()` does), so `step()`
    does not build partial outputs for every running request.
    """
    _import_vllm()
    from vllm import SamplingParams

    kind = plan(s, platform=vllm_api.platform_kind()).kind if kind is None else kind
    draw = {"temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k, "min_p": s.min_p}
    extra = {}
    try:
        if kind == "s2":  # vLLM sees a greedy request: its checks of the draw's settings run here, once per setting
            if (checked := tuple(draw.values())) not in _CHECKED_DRAWS:
                SamplingParams(**draw)
                _CHECKED_DRAWS.add(checked)
            extra = {"extra_args": {vllm_api.SAMPLER_EXTRA: [seed, s.temperature, s.top_k, s.top_p, s.min_p]}}
            draw = {"temperature": 0.0}
        return SamplingParams(
            **draw,
            repetition_penalty=s.repetition_penalty,
            presence_penalty=s.presence_penalty,
            frequency_penalty=s.frequency_penalty,
            max_tokens=s.max_tokens,
            stop=list(s.stop) or None,
            seed=seed if kind == "vllm" else None,
            ignore_eos=s.ignore_eos,
            skip_special_tokens=True,
            **extra,
            **vllm_api.final_only(),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid [sampling] value: {one_line(exc, whole=True)}") from None


def sampler_plan(s: SamplingConfig, kwargs: dict[str, Any]) -> SamplerPlan:
    """The run's sampler on this vLLM; with "s2", `kwargs` (vllm.LLM's) get s2-vllm's logits processor."""
    ready, why = vllm_api.sampler_ready()
    if kwargs.get("speculative_config"):
        ready, why = False, "speculative decoding is on, and vLLM refuses logits processors with it"
    elif os.environ.get("VLLM_USE_V2_MODEL_RUNNER") in ("1", "true", "True"):
        ready, why = False, "VLLM_USE_V2_MODEL_RUNNER is set, and that runner takes no logits processors"
    chosen = plan(s, None if ready else f"this vLLM cannot run it: {why}", vllm_api.platform_kind())
    if chosen.kind == "s2":
        kwargs["logits_processors"] = [*(kwargs.get("logits_processors") or []), vllm_api.SAMPLER_CLASS]
    return chosen


class VLLMEngine(Engine):
    """The Engine interface over vLLM's offline `LLMEngine`, stepped by the runner.

    `kwargs`: vLLM's arguments as `check_engine_config` checked them before anything loaded; without
    them the engine and sampling settings are checked here. `platform`: what `vllm_cpu` sets for
    this platform, computed once per run; without it, computed here.
    """

    name = "vllm"

    def __init__(
        self,
        engine: EngineConfig,
        sampling: SamplingConfig,
        in_flight: int | None = None,
        *,
        platform: PlatformSettings | None = None,
        llm_factory: Callable[..., Any] | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        if in_flight is not None and in_flight < 1:  # the schema refuses it in a config; this guards callers
            raise ValueError(f"in_flight must be at least 1, not {in_flight}")
        self._sampling = sampling
        if kwargs is None:  # not checked by the caller (check_engine_config): bad values fail before the model loads
            sampling_params(sampling, 0)
            kwargs = engine_kwargs(engine)
        kwargs = dict(kwargs)
        vllm = _import_vllm()
        from vllm.inputs import tokens_input

        self._tokens_input = tokens_input
        platform = settings_here(engine) if platform is None else platform
        os.environ.update(platform.env)  # before the engine starts its processes, which inherit it
        kwargs.update(platform.engine_args)
        self._plan = sampler_plan(sampling, kwargs)
        # for the engine log (stderr is it while an engine runs): which sampler this engine's requests get
        print(f"s2-vllm: sampling: {SAMPLER_WORDS[self._plan.kind]}", file=sys.stderr, flush=True)
        factory = llm_factory if llm_factory is not None else vllm.LLM
        try:
            self._llm = factory(**kwargs)
            self._engine = self._llm.llm_engine
        except Exception as exc:
            raise EngineError(f"vLLM engine failed to start ({engine.model}): {cause_line(exc)}") from exc
        self._internals = vllm_api.Internals(self._engine)
        self._running: dict[str, int] = {}  # key -> prompt length, for requests added and unfinished
        max_num_seqs = engine.max_num_seqs or self._internals.max_num_seqs or vllm_api.DEFAULT_MAX_NUM_SEQS
        self._in_flight = in_flight if in_flight is not None else 2 * max_num_seqs
        self._closed = threading.Event()
        self._internals.wake_step_on_core_death(self._closed)

    def in_flight(self) -> int:
        return self._in_flight

    def notes(self) -> list[str]:
        return self._internals.header_lines() + ([self._plan.note] if self._plan.note else [])

    def add(self, request: GenerationRequest) -> None:
        if request.key in self._running:
            raise ValueError(f"request '{request.key}' is already in flight")
        params = sampling_params(self._sampling, request.seed, self._plan.kind)
        # An engine input ("type": "token"), not a raw prompt dict: vLLM then neither re-processes
        # the prompt nor warns that raw prompts are deprecated.
        if not request.multi_modal_data:
            prompt = self._tokens_input(list(request.prompt_token_ids))
        else:  # vLLM runs the model's processor on the clip and widens its one placeholder to the clip's length
            prompt = {"prompt_token_ids": list(request.prompt_token_ids),
                      "multi_modal_data": dict(request.multi_modal_data)}
        # Raises for this request alone (e.g. prompt longer than max_model_len), unless the
        # engine itself is gone: then it is the run that cannot go on, not this record.
        try:
            self._engine.add_request(request_id=request.key, prompt=prompt, params=params)
        except Exception as exc:
            if vllm_api.is_engine_dead_error(exc) or self._internals.core_dead():
                raise EngineError(f"vLLM engine died: {cause_line(exc)}") from exc
            raise
        self._running[request.key] = len(request.prompt_token_ids)

    def step(self) -> list[Completion]:
        try:
            outputs = self._engine.step()
        except Exception as exc:
            raise EngineError(f"vLLM engine died: {cause_line(exc)}") from exc
        done = []
        for out in outputs:
            if not out.finished or out.request_id not in self._running:
                continue  # partial output, or a request this engine no longer tracks
            done.append(self._completion(out, self._running.pop(out.request_id)))
        if self._running and not done and not self._has_unfinished_requests():
            # vLLM holds nothing, yet requests are unfinished: they were dropped. Report
            # them as errors rather than stepping an idle engine forever.
            lost, self._running = self._running, {}
            done += [
                Completion(key, "", "error", n, 0, "vLLM dropped the request without finishing it")
                for key, n in lost.items()
            ]
        return done

    def has_unfinished(self) -> bool:
        return bool(self._running)

    def tokens_in_flight(self) -> int:
        """Output tokens generated so far by unfinished requests: only finished requests come back from
        `step` (FINAL_ONLY), so without this the bar would read 0 tok/s until the first wave ends."""
        return self._internals.tokens_in_flight()

    def abort(self) -> None:
        keys, self._running = list(self._running), {}
        if keys:
            try:
                self._engine.abort_request(keys)
            except Exception as exc:
                raise EngineError(f"vLLM could not abort {len(keys)} requests: {cause_line(exc)}") from exc

    def close(self) -> None:
        if hasattr(self, "_closed"):
            self._closed.set()
        engine, self._engine, self._llm = getattr(self, "_engine", None), None, None
        if engine is None:
            return
        if self._running:
            keys, self._running = list(self._running), {}
            try:
                engine.abort_request(keys)
            except Exception:
                pass
        try:
            self._internals.shutdown()
        except Exception:
            pass  # closing is best effort; the process is about to exit anyway

    def _has_unfinished_requests(self) -> bool:
        try:
            return bool(self._engine.has_unfinished_requests())
        except Exception as exc:
            raise EngineError(f"vLLM engine died: {cause_line(exc)}") from exc

    @staticmethod
    def _completion(out: Any, prompt_tokens: int) -> Completion:
        key = out.request_id
        if not out.outputs:
            return Completion(key, "", "error", prompt_tokens, 0, "vLLM returned no output for the request")
        first = out.outputs[0]
        # vLLM's own count: with a clip it includes the placeholder widened to the clip's length
        counted = getattr(out, "prompt_token_ids", None)
        prompt_tokens = len(counted) if counted is not None else prompt_tokens
        text, n = first.text or "", len(first.token_ids or ())
        reason = _FINISH_REASONS.get(str(first.finish_reason))
        if reason is not None:
            return Completion(key, text, reason, prompt_tokens, n)
        return Completion(key, text, "error", prompt_tokens, n, f"vLLM finished the request with reason '{first.finish_reason}'")
