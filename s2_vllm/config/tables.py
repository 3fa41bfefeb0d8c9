"""The config's tables and every key in them: type, default, allowed values, fingerprint name, docs.

This file is the one place a key is described. The README's config reference and the tables of
docs/engine.md are generated from it (`python -m s2_vllm.config.docs --write`) and a test checks
that they match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from s2_vllm.config.schema import key
from s2_vllm.template import DEFAULT_TEMPLATE

ON_DUPLICATE = ("error", "first", "last")
CUT_ROWS = ("use", "skip")
SOURCE_FORMATS = ("json", "jsonl", "csv")
ENGINES = ("vllm", "hf", "fake")
SAMPLERS = ("auto", "s2", "vllm", "unseeded")
_NON_EMPTY = {"pattern": r"(?s).+", "expect": "a non-empty string"}


@dataclass(frozen=True)
class SourceSpec:
    """`[sources.NAME]`: one input file joined by id; its text fills `{placeholder}` in the template."""

    name: str  # the table's name, not a key
    placeholder: str = key(
        doc="The `{placeholder}` of the template this source's text fills.",
        pattern=r"[A-Za-z_][A-Za-z0-9_]*", expect="an identifier (letters, digits and _)",
        default_doc="the table's name; for `audio` and `subtitle`, the default source's (`audio_description`, "
        "`subtitle`)", fp="placeholder")
    id_key: str = key("file_id", "Field (JSON) or column (CSV) holding the id the sources are joined on.",
                      **_NON_EMPTY, fp="id_key")
    text_key: str = key("text", "Field or column holding the text.", **_NON_EMPTY, fp="text_key",
                        default_doc="`\"text\"`; for `audio` and `subtitle`, the default source's (`generated_text`, "
                        "`english_transcription`)")
    path: str | None = key(None, "The input file; `--audio`, `--subtitles` or `--source NAME=PATH` override it.",
                           default_doc="none: give it by flag")
    format: str | None = key(None, "The file's format.", choices=SOURCE_FORMATS,
                             default_doc="by extension, then by content")


@dataclass
class PromptConfig:
    """`[prompt]`: what the model is asked."""

    template: str = key(DEFAULT_TEMPLATE, "The prompt, with one `{placeholder}` per source; `{{` and `}}` are "
                        "literal braces. Substitution is one pass: braces inside descriptions stay as they are.",
                        default_doc="the S2 fusion prompt (`DEFAULT_TEMPLATE` in `s2_vllm/template.py`)",
                        fp="prompt_template")
    system: str | None = key(None, "A system message before the prompt.", default_doc="none", fp="system_prompt")
    enable_thinking: bool = key(False, "Passed to the chat template (Qwen3's thinking mode); the text before "
                                "`</think>` goes to `reasoning`.", fp="enable_thinking")
    too_long: str = key("truncate", "A prompt over `max_model_len - max_tokens`: cut the longest clue text, "
                        "or write an error row.", choices=("truncate", "error"), fp="too_long")


@dataclass
class SamplingConfig:
    """`[sampling]`: one vLLM `SamplingParams` per record (the hf engine reads the same keys)."""

    max_tokens: int = key(1024, "Most tokens generated per record. Rows that hit it get status `length`.",
                          min=1, fp="sampling.max_tokens")
    temperature: float = key(0.7, "0 = greedy (vLLM then ignores top-p/top-k/min-p). vLLM accepts 0–2.",
                             min=0, fp="sampling.temperature")
    top_p: float = key(0.8, "Nucleus sampling; 1 = off.", min=0, max=1, above=True, fp="sampling.top_p")
    top_k: int = key(20, "Keep the k most likely tokens; **0 = off** (vLLM also reads -1 as off).", min=-1,
                     fp="sampling.top_k")
    min_p: float = key(0.0, "Drop tokens below `min_p` × the top token's probability; 0 = off.", min=0, max=1,
                       fp="sampling.min_p")
    repetition_penalty: float = key(1.0, "> 1 discourages tokens already in the prompt or output; 1 = off.",
                                    min=0, above=True, fp="sampling.repetition_penalty")
    presence_penalty: float = key(0.0, "> 0 discourages tokens that already appeared. Qwen suggests 0–2 against "
                                  "endless repetition.", min=-2, max=2, fp="sampling.presence_penalty")
    frequency_penalty: float = key(0.0, "> 0 discourages tokens in proportion to their count.", min=-2, max=2,
                                   fp="sampling.frequency_penalty")
    stop: list[str] = key(factory=list, doc="Extra stop strings (not included in the text). The model's EOS "
                          "(`<|im_end|>`) always stops.", fp="sampling.stop")
    seed: int = key(0, "Base seed. Each record samples with its own seed, derived from `seed` and its `file_id`, "
                    "so a record's output depends on neither its position in the file nor on resuming.",
                    fp="sampling.seed")
    ignore_eos: bool = key(False, "Always generate `max_tokens` tokens. Benchmarks only.", fp="sampling.ignore_eos")
    sampler: str = key("auto", "How vLLM samples when temperature > 0, each record from its own seed. `s2`: "
                       "s2-vllm's batched sampler (a logits processor): a record's draws depend on its seed alone, "
                       "one tensor pass per step over the top-k candidates (needs top_k >= 1 and no penalties, else "
                       "`vllm` is used and the header says why). `vllm`: vLLM's own sampler with a seed per record "
                       "(on its CPU build, and its V1 GPU runner, a generator per request: slower; its V2 GPU runner "
                       "draws them in one pass). `auto`: `s2` on vLLM's CPU build, `vllm` on CUDA. `unseeded`: "
                       "vLLM's sampler without per-record seeds: a record's text then depends on its batch and "
                       "changes on resume. The hf engine ignores it.",
                       choices=SAMPLERS, fp="sampling.sampler", fp_if_set=True)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class EngineConfig:
    """`[engine]`: model identity (shared by every engine) and vLLM engine arguments.

    None means "the engine's own default": the key is then not passed to `vllm.LLM` at all.
    """

    model: str = key("Qwen/Qwen3-8B", "Hugging Face id or local folder.", **_NON_EMPTY, fp="model")
    tokenizer: str | None = key(None, "Tokenizer id or folder, when it differs from the model. s2-vllm tokenizes "
                                "every prompt itself with it; vLLM uses the same one to detokenize.",
                                default_doc="the model's", fp="tokenizer")
    revision: str | None = key(None, "Hub branch, tag or commit of the model.", default_doc="latest", fp="revision")
    dtype: str = key("auto", "`auto` is the checkpoint's `torch_dtype` (bfloat16 for Qwen3).",
                     choices=("auto", "half", "float16", "bfloat16", "float", "float32"), fp="dtype")
    max_model_len: int | None = key(None, "Prompt + generated tokens per request. Prompts longer than "
                                    "`max_model_len - max_tokens` are cut or refused (`[prompt] too_long`) before "
                                    "they reach vLLM. Smaller values leave more KV cache for concurrency.",
                                    min=1, default_doc="the model's (40960 for Qwen3-8B)", fp="max_model_len")
    trust_remote_code: bool = key(False, "Allow model code from the hub (not needed for Qwen).")
    seed: int | None = key(None, "Engine seed (dummy weights, anything random outside sampling). Sampling uses "
                           "`[sampling] seed` per record instead.", min=0, default_doc="vLLM's (0)")
    tensor_parallel_size: int | None = key(None, "GPUs each layer is split over (one node).", min=1,
                                           default_doc="1")
    pipeline_parallel_size: int | None = key(None, "Pipeline stages (layers split over GPUs or nodes).", min=1,
                                             default_doc="1")
    distributed_executor_backend: str | None = key(
        None, "`mp` (one node), `ray` (several), `uni` (one process).",
        choices=("mp", "ray", "uni", "external_launcher"), default_doc="vLLM's choice")
    gpu_memory_utilization: float | None = key(
        None, "Share of each GPU's memory vLLM may take for weights, activations and KV cache. Lower it when the "
        "GPU is shared.", min=0, max=1, above=True, default_doc="vLLM's (0.92)")
    max_num_seqs: int | None = key(None, "Most sequences in one batch. The in-flight bound defaults to twice "
                                   "this.", min=1, default_doc="vLLM's (1024 on ≥70 GB GPUs such as H100, else 256)")
    max_num_batched_tokens: int | None = key(None, "Token budget of one engine step (prefill chunks + decodes).",
                                             min=1, default_doc="vLLM's (16384 on ≥70 GB GPUs, else 8192)")
    enable_prefix_caching: bool | None = key(
        None, "Reuse the KV cache of shared prompt prefixes: the chat header, the system prompt and the template "
        "text before the first clue are shared by every record.",
        default_doc="vLLM's (on for decoder-only generation)")
    kv_cache_dtype: str | None = key(None, "`fp8` (`fp8_e4m3`, `fp8_e5m2`, …) halves KV memory on supported GPUs; "
                                     "slightly changes outputs.", default_doc="`\"auto\"` (= model dtype)",
                                     fp="kv_cache_dtype", fp_if_set=True)
    quantization: str | None = key(None, "Quantization method (`awq`, `gptq`, `fp8`, …); usually read from the "
                                   "checkpoint.", default_doc="none / from the checkpoint", fp="quantization")
    enforce_eager: bool | None = key(None, "Skip CUDA graph capture: faster start, slower decoding. For tests and "
                                     "debugging.", default_doc="`false`")
    load_format: str | None = key(None, "`auto`, `safetensors`, `pt`, … or `dummy` (random weights, no files: "
                                  "throughput tests only).", default_doc="`\"auto\"`", fp="load_format",
                                  fp_if_set=True)
    extra: dict[str, Any] = key(factory=dict, doc="Any other vLLM engine argument, passed through unchanged "
                                "([`[engine.extra]`](#engineextra)).", default_doc="`{}`")


@dataclass
class HFConfig:
    """`[hf]`: the transformers engine (CPU, tests, baselines)."""

    batch_size: int = key(8, "Records generated together.", min=1)
    device: str = key("auto", "Where the model runs.", pattern=r"auto|cpu|mps|cuda(:\d+)?",
                      expect="auto, cpu, cuda or cuda:N")


@dataclass
class FakeConfig:
    """`[fake]`: the fake engine (`[run] engine = "fake"`): no model, answers picked by a hash of each prompt;
    for tests and dry runs of a pipeline (`s2_vllm/engines/testing.py`)."""

    words: int = key(12, "Words per answer (each counts as a token; more than `max_tokens`: status `length`).", min=0)
    latency: float = key(0.0, "Seconds each engine step takes.", min=0)
    per_step: int = key(4, "Requests finished per step, newest first (out of order, as vLLM's come).", min=1)
    in_flight: int = key(16, "Requests the runner keeps added at once.", min=1)
    fail_ids: list[str] = key(factory=list, doc="Ids whose request ends as an error row.", default_doc="`[]`")
    refuse_ids: list[str] = key(factory=list, doc="Ids whose request the engine refuses when it is added.",
                                default_doc="`[]`")


@dataclass
class RunConfig:
    """`[run]`: which engine, where the rows go, how inputs are joined and fed."""

    engine: str = key("vllm", "`vllm` (GPU, or vLLM's CPU build), `hf` (transformers) or `fake` (no model: "
                      "tests and dry runs, [`[fake]`](#fake)).", choices=ENGINES)
    output: str = key("s2_final_descriptions.jsonl", "The checkpoint `run` writes when `-o` is not given.",
                      **_NON_EMPTY)
    on_duplicate: str = key("error", "An id twice in one source: stop naming them, or keep its first or last row.",
                            choices=ON_DUPLICATE)
    cut_rows: str = key("use", "Rows of a checkpoint read as input (`run --audio`/`--visual`, `extract-labels`) "
                        "that stopped at `max_tokens` (status `length`): `use` reads their text as it is, "
                        "`skip` reads `ok` rows only.", choices=CUT_ROWS)
    in_flight: int | None = key(None, "Requests kept inside the engine at once; with replicas, the total, split "
                                "evenly.", min=1, default_doc="the engine's choice (vLLM: 2 × `max_num_seqs`)")


@dataclass
class ParallelConfig:
    """`[parallel]`: engine replicas on this node (processes) or on a Ray cluster (actors); docs/scaling.md."""

    replicas: int = key(1, "Engine replicas, each with `tensor_parallel_size × pipeline_parallel_size` GPUs.", min=1)
    ray_address: str | None = key(None, "Run the replicas as Ray actors: `auto`, `HOST:PORT`, or `local` (a "
                                  "private Ray).", **_NON_EMPTY, default_doc="none: no Ray")
    max_attempts: int = key(2, "A record whose replica died this many times becomes an error row.", min=1)


@dataclass
class AudioConfig:
    """`[audio]`: how `describe --modality audio` reads clips (step 1). Its keys are in an audio describe
    checkpoint's fingerprint (under `audio`, beside its stage); `run` never reads this table."""

    sample_rate: int = key(16000, "Clips are decoded to mono float32 at this rate before they reach the engine "
                           "(Qwen2.5-Omni and Qwen2-Audio take 16 kHz). In a describe checkpoint's fingerprint.", min=8000, max=192000)
    max_seconds: float = key(30.0, "Longest clip the model takes: vLLM's Whisper-style feature extractor for "
                             "Qwen2.5-Omni and Qwen2-Audio reads 30 s and drops the rest. A longer clip is cut and "
                             "its row marked `truncated: [\"audio\"]`, or with `[prompt] too_long = \"error\"` "
                             "gets an error row. In a describe checkpoint's fingerprint.", min=0, above=True)


@dataclass
class VideoConfig:
    """`[video]`: how `describe --modality video` samples frames (step 1). Its keys are in a video describe
    checkpoint's fingerprint (under `video`); `run` never reads this table."""

    fps: float = key(2.0, "Frames sampled per second of video (Qwen2.5-VL's and Qwen3-VL's default, 2).",
                     min=0, above=True)
    max_frames: int = key(32, "Most frames per clip: a longer clip is sampled more sparsely to this many.", min=2)
    max_pixels: int = key(200704, "Most pixels per frame (448 x 448): larger frames are scaled down on the decode "
                          "workers, keeping their aspect, to sides that are multiples of 28 (Qwen-VL's patch).",
                          min=784)
    max_seconds: float = key(60.0, "Longest clip: a longer one is cut here and its row marked "
                             "`truncated: [\"video\"]`, or with `[prompt] too_long = \"error\"` gets an error row.",
                             min=0, above=True)


@dataclass
class DecodeConfig:
    """`[decode]`: the workers that decode clips ahead of the engine in `describe` (either modality)."""

    workers: int | None = key(None, "Workers that decode clips (audio resampled, frames sampled and resized).", min=1,
                              default_doc="2; 1 where vLLM runs on its CPU build (a second worker there takes "
                              "CPU from the engine's threads: docs/BENCHMARKS.md)")
    pool: str = key("processes", "Where the workers run: `processes` (fastest for video and AAC, whose "
                    "frame-by-frame decoding holds the GIL; docs/BENCHMARKS.md) or `threads` (enough for "
                    "WAV and FLAC, which soundfile reads without it).", choices=("processes", "threads"))
    ahead: int = key(64, "Most decoded clips waiting for the engine.", min=1)
    ahead_mb: int = key(1024, "Most memory the clips decoded ahead may take, in MB, counting each as the largest "
                        "clip the settings allow (a 60 s video of 32 frames of 448 x 448 is 19 MB): with `ahead`, "
                        "memory stays flat for any number and size of clips.", min=1)


TABLES: dict[str, type] = {"engine": EngineConfig, "prompt": PromptConfig, "sampling": SamplingConfig,
                           "hf": HFConfig, "fake": FakeConfig, "run": RunConfig, "parallel": ParallelConfig, "audio": AudioConfig,
                           "video": VideoConfig, "decode": DecodeConfig}


def optional_sources() -> list[SourceSpec]:
    """Sources step 2 knows without a config table, added when their flag is given (`--visual`)."""
    return [SourceSpec("visual", "visual_description", "file_id", "generated_text")]


def default_sources() -> list[SourceSpec]:
    return [
        SourceSpec("subtitle", "subtitle", "file_id", "english_transcription"),
        SourceSpec("audio", "audio_description", "file_id", "generated_text"),
    ]
