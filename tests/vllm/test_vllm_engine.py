"""The vLLM engine on CPU: argument mapping and validation against the real `vllm` package,
and the step loop driven through an in-process double of vLLM's `LLMEngine`.

Nothing here starts a real engine (that needs a GPU: see test_gpu.py).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from types import SimpleNamespace

import pytest

from s2_vllm.config import Config, EngineConfig, SamplingConfig, config_from_dict, load_config
from s2_vllm.engines import vllm_api
from s2_vllm.engines.base import GenerationRequest
from s2_vllm.engines.vllm import VLLMEngine, engine_kwargs, sampling_params
from s2_vllm.engines.vllm_cpu import PlatformSettings
from s2_vllm.errors import ConfigError, EngineError

vllm = pytest.importorskip("vllm")
from vllm.outputs import CompletionOutput, RequestOutput  # noqa: E402
from vllm.sampling_params import RequestOutputKind  # noqa: E402
from helpers import REPO



# --- an in-process double of vllm.v1.engine.llm_engine.LLMEngine -------------------------


class FakeLLMEngine:
    """Follows LLMEngine's contract: add_request(request_id, prompt, params), step() ->
    list[RequestOutput] (only finished ones, as with RequestOutputKind.FINAL_ONLY),
    has_unfinished_requests(), abort_request(ids).

    A request finishes after `steps[key]` steps (default 1 + len(key) % 3), producing
    `tokens[key]` tokens (default 3) and finish reason `reasons[key]` (default "stop").
    """

    def __init__(self, steps=None, tokens=None, reasons=None, fail_add=(), max_num_seqs=7):
        self.steps, self.tokens, self.reasons = steps or {}, tokens or {}, reasons or {}
        self.fail_add = set(fail_add)
        self.vllm_config = SimpleNamespace(scheduler_config=SimpleNamespace(max_num_seqs=max_num_seqs))
        self.added: list[tuple[str, dict, object]] = []
        self.aborted: list[str] = []
        self.running: dict[str, list] = {}  # id -> [steps left, prompt ids, params]
        self.die_on_step = False
        self.step_count = 0

    def add_request(self, request_id, prompt, params, arrival_time=None, lora_request=None, **kwargs):
        if not isinstance(request_id, str):
            raise TypeError(f"request_id must be a string, got {type(request_id)}")
        if request_id in self.fail_add:
            raise ValueError(f"The decoder prompt (length {len(prompt['prompt_token_ids'])}) is too long")
        self.added.append((request_id, prompt, params))
        self.running[request_id] = [self.steps.get(request_id, 1 + len(request_id) % 3), prompt, params]
        return request_id

    def step(self):
        if self.die_on_step:
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nCompile with TORCH_USE_CUDA_DSA")
        self.step_count += 1
        out = []
        for rid, state in list(self.running.items()):
            state[0] -= 1
            if state[0] > 0:
                continue
            del self.running[rid]
            n = self.tokens.get(rid, 3)
            completion = CompletionOutput(
                index=0,
                text=f"analysis of {rid}",
                token_ids=list(range(n)),
                cumulative_logprob=None,
                logprobs=None,
                finish_reason=self.reasons.get(rid, "stop"),
            )
            out.append(
                RequestOutput(
                    request_id=rid,
                    prompt=None,
                    prompt_token_ids=list(state[1]["prompt_token_ids"]),
                    prompt_logprobs=None,
                    outputs=[completion],
                    finished=True,
                )
            )
        return out

    def has_unfinished_requests(self):
        return bool(self.running)

    def abort_request(self, request_ids, internal=False):
        assert isinstance(request_ids, list)
        for rid in request_ids:
            self.aborted.append(rid)
            self.running.pop(rid, None)


class FakeLLM:
    """Stands in for vllm.LLM: built with LLM's keyword arguments, exposes `llm_engine`."""

    def __init__(self, engine: FakeLLMEngine, **kwargs):
        self.kwargs = kwargs
        self.llm_engine = engine


def make_engine(fake=None, engine_cfg=None, sampling=None, in_flight=None):
    fake = fake or FakeLLMEngine()
    built = []

    def factory(**kwargs):
        llm = FakeLLM(fake, **kwargs)
        built.append(llm)
        return llm

    eng = VLLMEngine(engine_cfg or EngineConfig(), sampling or SamplingConfig(), in_flight, platform=PlatformSettings(),
                     llm_factory=factory)
    return eng, fake, built


def req(key, n=5, seed=None):
    return GenerationRequest(key, list(range(100, 100 + n)), seed if seed is not None else len(key))


def drain(eng, limit=50):
    done = []
    for _ in range(limit):
        if not eng.has_unfinished():
            break
        done += eng.step()
    return done


# --- engine_kwargs ------------------------------------------------------------------------

FULL_ENGINE = dict(
    model="/models/qwen3",
    tokenizer="/models/qwen3-tok",
    revision="main",
    dtype="bfloat16",
    max_model_len=4096,
    trust_remote_code=True,
    seed=7,
    tensor_parallel_size=2,
    pipeline_parallel_size=1,
    distributed_executor_backend="mp",
    gpu_memory_utilization=0.85,
    max_num_seqs=64,
    max_num_batched_tokens=8192,
    enable_prefix_caching=True,
    kv_cache_dtype="fp8",
    quantization="awq",
    enforce_eager=True,
    load_format="dummy",
)


def test_engine_kwargs_maps_every_field():
    assert set(FULL_ENGINE) == {f.name for f in dataclasses.fields(EngineConfig)} - {"extra"}
    kwargs = engine_kwargs(EngineConfig(**FULL_ENGINE))
    assert kwargs == FULL_ENGINE
    assert "skip_tokenizer_init" not in kwargs


def test_engine_kwargs_leaves_none_to_vllm():
    assert engine_kwargs(EngineConfig()) == {"model": "Qwen/Qwen3-8B", "dtype": "auto", "trust_remote_code": False}


def test_engine_kwargs_passes_extra():
    extra = {"block_size": 16, "enable_chunked_prefill": True, "chat_template": "x.jinja", "hf_overrides": {"a": 1}}
    kwargs = engine_kwargs(EngineConfig(extra=extra))
    assert {k: kwargs[k] for k in extra} == extra
    assert kwargs["model"] == "Qwen/Qwen3-8B"


@pytest.mark.parametrize(
    "key, suggestion",
    [("max_num_seq", "max_num_seqs"), ("enable_chunked_prefil", "enable_chunked_prefill"), ("blok_size", "block_size")],
)
def test_engine_kwargs_unknown_extra_key_suggests(key, suggestion):
    with pytest.raises(ConfigError) as err:
        engine_kwargs(EngineConfig(extra={key: 1}))
    assert str(err.value) == f"unknown vLLM engine argument '{key}' in [engine.extra] (did you mean '{suggestion}'?)"


def test_engine_kwargs_unknown_extra_key_without_suggestion():
    with pytest.raises(ConfigError, match=r"^unknown vLLM engine argument 'zzzqqq' in \[engine.extra\]$"):
        engine_kwargs(EngineConfig(extra={"zzzqqq": 1}))


def test_engine_kwargs_extra_cannot_shadow_engine_keys():
    with pytest.raises(ConfigError, match=r"'max_model_len' is an \[engine\] key"):
        engine_kwargs(EngineConfig(extra={"max_model_len": 10}))


def test_engine_kwargs_refuses_skip_tokenizer_init():
    with pytest.raises(ConfigError, match="skip_tokenizer_init"):
        engine_kwargs(EngineConfig(extra={"skip_tokenizer_init": True}))


def test_engine_kwargs_rejects_what_engine_args_rejects():
    with pytest.raises(ConfigError) as err:
        engine_kwargs(EngineConfig(extra={"compilation_config": {"bogus_knob": 1}}))
    msg = str(err.value)
    assert msg.startswith("vLLM rejects the [engine] settings:") and "bogus_knob" in msg
    assert "\n" not in msg and "errors.pydantic.dev" not in msg


@pytest.mark.parametrize(
    "cfg, where",
    [
        (EngineConfig(dtype="bf16"), "engine.dtype = 'bf16'"),
        (EngineConfig(extra={"block_size": "16"}), "engine.extra.block_size = '16'"),
        (EngineConfig(extra={"enable_chunked_prefill": 1}), "engine.extra.enable_chunked_prefill = 1"),
    ],
)
def test_engine_kwargs_rejects_wrong_types(cfg, where):
    with pytest.raises(ConfigError) as err:
        engine_kwargs(cfg)
    assert str(err.value).startswith(f"{where} is not accepted by vLLM:")
    assert "\n" not in str(err.value)


def test_engine_kwargs_accepts_llm_only_forms():
    # LLM(compilation_config=3) is accepted by vllm.LLM though EngineArgs types it as a config object
    assert engine_kwargs(EngineConfig(extra={"compilation_config": 3}))["compilation_config"] == 3


# --- sampling_params ----------------------------------------------------------------------


def test_sampling_params_builds_real_params_with_record_seed():
    s = SamplingConfig(
        max_tokens=77,
        temperature=0.6,
        top_p=0.95,
        top_k=20,
        min_p=0.05,
        repetition_penalty=1.05,
        presence_penalty=0.5,
        frequency_penalty=0.25,
        stop=["</end>"],
        seed=3,
        ignore_eos=True,
    )
    p = sampling_params(s, 12345)
    assert isinstance(p, vllm.SamplingParams)
    assert (p.temperature, p.top_p, p.top_k, p.min_p) == (0.6, 0.95, 20, 0.05)
    assert (p.repetition_penalty, p.presence_penalty, p.frequency_penalty) == (1.05, 0.5, 0.25)
    assert (p.max_tokens, p.stop, p.seed, p.ignore_eos) == (77, ["</end>"], 12345, True)
    assert p.skip_special_tokens is True and p.n == 1
    assert p.output_kind == RequestOutputKind.FINAL_ONLY
    assert sampling_params(s, 1).seed == 1


def test_sampling_params_top_k_zero_is_off_and_no_stop():
    p = sampling_params(SamplingConfig(top_k=0), 0)
    assert p.top_k == 0 and p.stop == []


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"top_p": 0.0}, "top_p must be in (0, 1]"),
        ({"temperature": -1.0}, "temperature must be non-negative"),
        ({"temperature": 3.0}, "temperature must be in [0, 2]"),
        ({"top_k": -5}, "top_k must be 0 (disable), or at least 1"),
        ({"min_p": 1.5}, "min_p must be in [0, 1]"),
        ({"presence_penalty": 5.0}, "presence_penalty must be in [-2, 2]"),
        ({"stop": [""]}, "stop cannot contain an empty string"),
    ],
)
def test_sampling_params_bad_value_is_config_error(overrides, fragment):
    sampling = SamplingConfig(**overrides)  # not through the schema, which refuses most of these first
    with pytest.raises(ConfigError) as err:
        sampling_params(sampling, 0)
    assert str(err.value).startswith("invalid [sampling] value: ")
    assert fragment in str(err.value) and "\n" not in str(err.value)


# --- VLLMEngine over the double -----------------------------------------------------------


def test_engine_passes_kwargs_to_factory_and_tokens_unchanged():
    cfg = EngineConfig(model="/m", max_model_len=2048, extra={"block_size": 16})
    eng, fake, built = make_engine(engine_cfg=cfg, sampling=SamplingConfig(temperature=0.0, seed=9))
    assert built[0].kwargs == {"model": "/m", "dtype": "auto", "trust_remote_code": False, "max_model_len": 2048, "block_size": 16}
    eng.add(GenerationRequest("a", [151644, 872, 198], 4242))
    (rid, prompt, params), = fake.added
    assert rid == "a"
    assert prompt == {"type": "token", "prompt_token_ids": [151644, 872, 198]}  # token ids: never text
    assert isinstance(params, vllm.SamplingParams) and params.seed is None  # greedy: no seed to pass
    assert params.temperature == 0.0 and params.output_kind == RequestOutputKind.FINAL_ONLY


def test_engine_returns_out_of_order_completions():
    fake = FakeLLMEngine(steps={"r1": 4, "r2": 1, "r3": 3, "r4": 2}, tokens={"r1": 9, "r2": 1, "r3": 5, "r4": 0})
    eng, _, _ = make_engine(fake)
    for i, key in enumerate(["r1", "r2", "r3", "r4"], start=1):
        eng.add(req(key, n=i * 10))
    assert eng.has_unfinished()
    per_step = [[c.key for c in eng.step()] for _ in range(4)]
    assert per_step == [["r2"], ["r4"], ["r3"], ["r1"]]
    assert not eng.has_unfinished()

    fake2 = FakeLLMEngine(steps={"r1": 4, "r2": 1, "r3": 3, "r4": 2}, tokens={"r1": 9, "r2": 1, "r3": 5, "r4": 0})
    eng2, _, _ = make_engine(fake2)
    for i, key in enumerate(["r1", "r2", "r3", "r4"], start=1):
        eng2.add(req(key, n=i * 10))
    done = {c.key: c for c in drain(eng2)}
    assert set(done) == {"r1", "r2", "r3", "r4"}
    for i, key in enumerate(["r1", "r2", "r3", "r4"], start=1):
        c = done[key]
        assert (c.text, c.finish_reason, c.error) == (f"analysis of {key}", "stop", None)
        assert c.prompt_tokens == i * 10
        assert c.completion_tokens == fake2.tokens[key]


def test_engine_refills_while_others_run():
    fake = FakeLLMEngine(steps={"long": 5, "s1": 1, "s2": 1})
    eng, _, _ = make_engine(fake)
    eng.add(req("long"))
    eng.add(req("s1"))
    assert [c.key for c in eng.step()] == ["s1"]
    eng.add(req("s2"))  # added while "long" is still running
    assert [c.key for c in eng.step()] == ["s2"]
    assert [c.key for c in drain(eng)] == ["long"]


def test_engine_maps_finish_reasons():
    fake = FakeLLMEngine(steps={"a": 1, "b": 1, "c": 1}, reasons={"a": "stop", "b": "length", "c": "abort"})
    eng, _, _ = make_engine(fake)
    for key in "abc":
        eng.add(req(key))
    done = {c.key: c for c in drain(eng)}
    assert (done["a"].finish_reason, done["a"].error) == ("stop", None)
    assert (done["b"].finish_reason, done["b"].error) == ("length", None)
    assert done["c"].finish_reason == "error" and "abort" in done["c"].error


def test_add_failing_for_one_request_fails_that_one_only():
    fake = FakeLLMEngine(fail_add={"bad"})
    eng, _, _ = make_engine(fake)
    eng.add(req("ok1"))
    with pytest.raises(ValueError, match="too long"):
        eng.add(req("bad"))
    eng.add(req("ok2"))
    assert sorted(c.key for c in drain(eng)) == ["ok1", "ok2"]
    assert not eng.has_unfinished()


def test_add_refuses_a_key_already_in_flight():
    eng, fake, _ = make_engine(FakeLLMEngine(steps={"a": 3}))
    eng.add(req("a"))
    with pytest.raises(ValueError, match="already in flight"):
        eng.add(req("a"))
    assert len(fake.added) == 1


def test_step_failure_is_engine_error():
    eng, fake, _ = make_engine()
    eng.add(req("a"))
    fake.die_on_step = True
    with pytest.raises(EngineError) as err:
        eng.step()
    msg = str(err.value)
    assert msg.startswith("vLLM engine died: RuntimeError: CUDA error: an illegal memory access")
    assert "\n" not in msg


def test_abort_aborts_exactly_the_in_flight_ids():
    fake = FakeLLMEngine(steps={"done": 1, "x": 5, "y": 5}, fail_add={"failed"})
    eng, _, _ = make_engine(fake)
    eng.add(req("done"))
    eng.add(req("x"))
    with pytest.raises(ValueError):
        eng.add(req("failed"))
    assert [c.key for c in eng.step()] == ["done"]
    eng.add(req("y"))
    eng.abort()
    assert sorted(fake.aborted) == ["x", "y"]
    assert not eng.has_unfinished()
    eng.abort()  # nothing left: no second call
    assert sorted(fake.aborted) == ["x", "y"]


def test_requests_the_engine_dropped_come_back_as_errors():
    fake = FakeLLMEngine(steps={"a": 5})
    eng, _, _ = make_engine(fake)
    eng.add(req("a", n=4))
    fake.running.clear()  # vLLM forgot the request
    (c,) = eng.step()
    assert (c.key, c.finish_reason, c.prompt_tokens) == ("a", "error", 4)
    assert not eng.has_unfinished()


def test_in_flight_bound():
    assert make_engine(FakeLLMEngine(max_num_seqs=7))[0].in_flight() == 14  # the engine's scheduler
    assert make_engine(engine_cfg=EngineConfig(max_num_seqs=4))[0].in_flight() == 8
    assert make_engine(in_flight=3)[0].in_flight() == 3
    fake = FakeLLMEngine()
    del fake.vllm_config
    assert make_engine(fake)[0].in_flight() == 512  # vLLM's default 256, doubled
    with pytest.raises(ConfigError, match="^run.in_flight must be at least 1$"):  # the schema's, before any engine
        config_from_dict({"run": {"in_flight": 0}})
    with pytest.raises(ValueError, match="^in_flight must be at least 1, not 0$"):  # a caller that skipped the schema
        make_engine(in_flight=0)


def test_start_failure_is_engine_error():
    def factory(**kwargs):
        try:
            raise OSError("Qwen/Nope is not a local folder\nand not a valid model identifier")
        except OSError as exc:
            raise RuntimeError("Engine core initialization failed. See root cause above.") from exc

    with pytest.raises(EngineError) as err:
        VLLMEngine(EngineConfig(model="Qwen/Nope"), SamplingConfig(), platform=PlatformSettings(), llm_factory=factory)
    msg = str(err.value)
    assert msg.startswith("vLLM engine failed to start (Qwen/Nope): RuntimeError: Engine core initialization failed")
    assert "OSError: Qwen/Nope is not a local folder; and not a valid model identifier" in msg
    assert "\n" not in msg


def test_bad_config_fails_before_the_engine_is_built():
    calls = []

    def factory(**kwargs):
        calls.append(kwargs)
        return FakeLLM(FakeLLMEngine(), **kwargs)

    with pytest.raises(ConfigError, match="top_k"):
        VLLMEngine(EngineConfig(), SamplingConfig(top_k=-7), platform=PlatformSettings(), llm_factory=factory)
    with pytest.raises(ConfigError, match="unknown vLLM engine argument"):
        VLLMEngine(EngineConfig(extra={"nope_nope": 1}), SamplingConfig(), platform=PlatformSettings(), llm_factory=factory)
    assert calls == []


def test_close_aborts_leftovers_and_is_idempotent():
    fake = FakeLLMEngine(steps={"a": 9})
    fake.engine_core = SimpleNamespace(shutdown=lambda: fake.aborted.append("<shutdown>"))
    eng, fake, _ = make_engine(fake)
    eng.add(req("a"))
    eng.close()
    eng.close()
    assert fake.aborted == ["a", "<shutdown>"]


# --- laziness and shipped configs ---------------------------------------------------------


def test_import_does_not_import_vllm_or_torch():
    code = (
        "import sys, s2_vllm.engines.vllm as m; "
        "print(sorted(n for n in ('vllm', 'torch', 'transformers') if n in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


CONFIGS = sorted((REPO / "configs").glob("*.toml"))


def test_configs_exist():
    assert {p.name for p in CONFIGS} >= {
        "qwen3-8b.toml",
        "qwen3-8b-thinking.toml",
        "qwen2.5-7b-paper.toml",
        "qwen3-32b-tp2.toml",
    }


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_builds_engine_and_sampling_args(path):
    cfg = load_config(path)
    cfg.validate()
    kwargs = engine_kwargs(cfg.engine)
    assert kwargs["model"] == cfg.engine.model
    p = sampling_params(cfg.sampling, 123)
    assert isinstance(p, vllm.SamplingParams) and p.max_tokens == cfg.sampling.max_tokens
    # s2-vllm's sampler carries the record's seed in extra_args; vLLM's own gets it as its seed
    assert (p.extra_args or {}).get(vllm_api.SAMPLER_EXTRA, [p.seed])[0] == 123


def test_default_config_matches_qwen3_8b_file():
    shipped = load_config(REPO / "configs" / "qwen3-8b.toml")
    default = Config()
    assert shipped.fingerprint() == default.fingerprint() | {"max_model_len": 8192}


# --- the sampler each setting gets -------------------------------------------------------------


def test_sampled_records_go_to_s2_vllms_sampler_by_default():
    eng, fake, built = make_engine(sampling=SamplingConfig(temperature=0.7, seed=3))
    assert built[0].kwargs["logits_processors"] == [vllm_api.SAMPLER_CLASS]
    eng.add(GenerationRequest("a", [1, 2, 3], 4242))
    (_, _, params), = fake.added
    assert (params.temperature, params.seed) == (0.0, None)  # vLLM's argmax takes the token the processor drew
    assert params.extra_args == {vllm_api.SAMPLER_EXTRA: [4242, 0.7, 20, 0.8, 0.0]}
    assert not any(n.startswith("sampling:") for n in eng.notes())  # the double's other lines: its missing internals


@pytest.mark.parametrize(("sampling", "seed", "note"), [
    (SamplingConfig(sampler="vllm"), 4242, "sampling: vLLM's sampler with a seed per record ([sampling] sampler = "
                                           "\"vllm\"; on its CPU build a generator per request, slower than sampler "
                                           "= \"s2\")"),
    (SamplingConfig(sampler="unseeded"), None, "sampling: vLLM's sampler without per-record seeds ([sampling] "
                                               "sampler = \"unseeded\"): a record's text depends on its batch and "
                                               "changes on resume"),
    (SamplingConfig(top_k=0), 4242, "sampling: vLLM's sampler with a seed per record, not s2-vllm's (top_k is off; "
                                    "s2-vllm's needs top_k >= 1 and no penalties): slower"),
])
def test_other_samplers_are_vllms_own_and_the_header_says_so(sampling, seed, note):
    eng, fake, built = make_engine(sampling=sampling)
    assert "logits_processors" not in built[0].kwargs
    eng.add(GenerationRequest("a", [1, 2, 3], 4242))
    (_, _, params), = fake.added
    assert (params.temperature, params.seed, params.extra_args) == (0.7, seed, None)
    assert eng.notes()[-1] == note


def test_speculative_decoding_and_vllms_v2_runner_keep_vllms_sampler(monkeypatch):
    from s2_vllm.engines.vllm import sampler_plan

    kwargs = {"speculative_config": {"method": "ngram"}}
    chosen = sampler_plan(SamplingConfig(sampler="s2"), kwargs)
    assert chosen.kind == "vllm" and "speculative decoding is on" in chosen.note
    assert "logits_processors" not in kwargs
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    chosen = sampler_plan(SamplingConfig(sampler="s2"), kwargs := {})
    assert chosen.kind == "vllm" and "VLLM_USE_V2_MODEL_RUNNER is set" in chosen.note and kwargs == {}
