"""The transformers engine: batched `generate` with left padding, on CPU or one GPU.

It is what the tests, the demo and the baselines run where vLLM cannot start. Sampling
draws each record's tokens from its own generator, seeded from (run seed, file_id), so a
record's text does not depend on which batch it landed in or on resuming.
"""

from __future__ import annotations

import threading
from typing import Any

from s2_vllm.config import EngineConfig, HFConfig, SamplingConfig
from s2_vllm.engines.base import Completion, Engine, GenerationRequest
from s2_vllm.errors import EngineError, one_line

_QUEUE_FACTOR = 4  # requests kept queued per batch slot, so batches can group similar lengths


class HFEngine(Engine):
    name = "hf"
    interruptible_step = True  # one step is a whole batch: a signal may end it early

    def __init__(self, engine: EngineConfig, sampling: SamplingConfig, hf: HFConfig, tokenizer: Any):
        import torch
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own bar is the one that matters

        self.torch = torch
        self.sampling = sampling
        self.batch_size = hf.batch_size
        self.tokenizer = tokenizer
        self.device = _device(hf.device, torch)
        dtype = engine.dtype if engine.dtype != "auto" else ("auto" if self.device.type == "cuda" else torch.float32)
        try:
            self.model = AutoModelForCausalLM.from_pretrained(
                engine.model, revision=engine.revision, dtype=dtype, trust_remote_code=engine.trust_remote_code
            ).to(self.device)
        except Exception as exc:
            raise EngineError(f"cannot load the model '{engine.model}': {one_line(exc)}") from exc
        self.model.eval()
        self.eos_ids = _eos_ids(self.model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        self.queue: list[GenerationRequest] = []
        self.interrupted = threading.Event()

    def in_flight(self) -> int:
        return self.batch_size * _QUEUE_FACTOR

    def add(self, request: GenerationRequest) -> None:
        if request.multi_modal_data:
            raise ValueError("the hf engine takes text only (describe runs on vLLM)")
        if not request.prompt_token_ids:
            raise ValueError("empty prompt")
        self.queue.append(request)

    def has_unfinished(self) -> bool:
        return bool(self.queue)

    def abort(self) -> None:
        self.interrupted.set()
        self.queue.clear()

    def close(self) -> None:
        self.queue.clear()

    def step(self) -> list[Completion]:
        if not self.queue:
            return []
        batch = self._next_batch()
        with self.torch.inference_mode():
            generated = self._generate(batch)
        if self.interrupted.is_set():
            return []
        return [self._completion(request, ids) for request, ids in zip(batch, generated)]

    def _next_batch(self) -> list[GenerationRequest]:
        """The oldest request plus the queued ones closest to it in length."""
        oldest = self.queue[0]
        ranked = sorted(self.queue, key=lambda r: abs(len(r.prompt_token_ids) - len(oldest.prompt_token_ids)))
        batch = ranked[: self.batch_size]
        chosen = {id(r) for r in batch}
        self.queue = [r for r in self.queue if id(r) not in chosen]
        return batch

    def _generate(self, batch: list[GenerationRequest]) -> list[list[int]]:
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        torch = self.torch
        width = max(len(r.prompt_token_ids) for r in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, request in enumerate(batch):
            n = len(request.prompt_token_ids)
            input_ids[row, width - n :] = torch.tensor(request.prompt_token_ids)
            attention[row, width - n :] = 1
        s = self.sampling
        config = GenerationConfig(
            max_new_tokens=s.max_tokens,
            # ignore_eos: transformers still stops at the model's own eos unless told the minimum too
            min_new_tokens=s.max_tokens if s.ignore_eos else None,
            do_sample=False,  # the sampler below picks every token; generate then takes its argmax
            eos_token_id=None if s.ignore_eos else self.eos_ids,
            pad_token_id=self.pad_id,
        )
        interrupted = self.interrupted

        class StopWhenAborted(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), interrupted.is_set(), dtype=torch.bool, device=input_ids.device)

        out = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention.to(self.device),
            generation_config=config,
            logits_processor=LogitsProcessorList(_processors(s, [r.seed for r in batch], width, self.device)),
            stopping_criteria=StoppingCriteriaList([StopWhenAborted()]),
        )
        return [row[width:].tolist() for row in out.cpu()]

    def _completion(self, request: GenerationRequest, ids: list[int]) -> Completion:
        finish = "length"
        if not self.sampling.ignore_eos:
            for i, token in enumerate(ids):
                if token in self.eos_ids:
                    ids, finish = ids[:i], "stop"
                    break
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        for stop in self.sampling.stop:
            cut = text.find(stop)
            if cut >= 0:
                text, finish = text[:cut], "stop"
        return Completion(request.key, text, finish, len(request.prompt_token_ids), len(ids))


def _processors(s: SamplingConfig, seeds: list[int], prompt_width: int, device: Any) -> list[Any]:
    from transformers import (
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    processors: list[Any] = []
    if s.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(s.repetition_penalty))
    if s.presence_penalty or s.frequency_penalty:
        processors.append(_PresenceFrequencyPenalty(s.presence_penalty, s.frequency_penalty, prompt_width))
    if not s.greedy:
        processors.append(TemperatureLogitsWarper(s.temperature))
        if s.top_k and s.top_k > 0:
            processors.append(TopKLogitsWarper(s.top_k))
        if s.top_p < 1.0:
            processors.append(TopPLogitsWarper(s.top_p))
        if s.min_p > 0:
            processors.append(MinPLogitsWarper(s.min_p))
        processors.append(_PerRecordSampler(seeds, device))
    return processors


class _PerRecordSampler:
    """Draws one token per row from that row's own generator; the others get -inf."""

    def __init__(self, seeds: list[int], device: Any):
        import torch

        self.torch = torch
        self.generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        torch = self.torch
        probs = torch.softmax(scores.float(), dim=-1)
        chosen = torch.stack([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, self.generators)])
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(1, chosen, 0.0)


class _PresenceFrequencyPenalty:
    """OpenAI-style penalties over the generated tokens only, as vLLM applies them."""

    def __init__(self, presence: float, frequency: float, prompt_width: int):
        self.presence, self.frequency, self.prompt_width = presence, frequency, prompt_width

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        generated = input_ids[:, self.prompt_width :]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


def _device(name: str, torch: Any) -> Any:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError(f"hf.device is '{name}' but CUDA is not available on this machine")
    return torch.device(name)


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    configured = getattr(model.generation_config, "eos_token_id", None)
    for value in ([configured] if isinstance(configured, int) else configured or []) + [tokenizer.eos_token_id]:
        if value is not None and value not in ids:
            ids.append(value)
    return ids

