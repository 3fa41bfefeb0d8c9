"""A fake engine that ships: `[run] engine = "fake"` (or `--engine fake`), for tests and dry runs.

It follows the `Engine` interface as the real ones do, without a model: its answer to a request is a
few words picked by a hash of the prompt's token ids and its multimodal data, so the same prompt
always gets the same text, different clips get different text, and every part of the pipeline
(resume, shards, replicas, export, labels) can be run in seconds. `[fake]` sets how long a step takes,
how many requests finish per step (newest first, so completions come back out of order, as from vLLM),
and which ids fail or are refused. Like httpx's MockTransport: a real alternative to inject, not a patch.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from typing import Any

from s2_vllm.config import FakeConfig, SamplingConfig
from s2_vllm.engines.base import Completion, Engine, GenerationRequest

WORDS = ("calm", "tense", "joyful", "sad", "angry", "surprised", "anxious", "warm", "flat", "bright", "low",
         "fast", "slow", "steady", "trembling", "loud", "soft", "smiling", "frowning", "relaxed", "nervous",
         "hopeful", "tired", "proud")


class FakeEngine(Engine):
    name = "fake"

    def __init__(self, fake: FakeConfig | None = None, sampling: SamplingConfig | None = None, *,
                 on_step: Callable[[FakeEngine], None] | None = None, **changes: Any):
        """`changes` override `fake`'s keys: FakeEngine(words=3, refuse_ids=["b"]). `on_step` is called at each
        step, after `steps` is counted (a test sends a signal or raises there)."""
        self.on_step = on_step
        fake = fake or FakeConfig()
        self.settings = FakeConfig(**{**vars(fake), **changes})
        self.max_tokens = (sampling or SamplingConfig()).max_tokens
        self.fail_ids = set(self.settings.fail_ids)
        self.refuse_ids = set(self.settings.refuse_ids)
        self.queue: list[GenerationRequest] = []
        self.steps = 0  # what a test may look at afterwards
        self.added = 0
        self.peak_in_flight = 0
        self.aborted = False
        self.closed = False

    def in_flight(self) -> int:
        return self.settings.in_flight

    def add(self, request: GenerationRequest) -> None:
        if request.key in self.refuse_ids:
            raise ValueError(f"the fake engine refuses {request.key} ([fake] refuse_ids)")
        if not request.prompt_token_ids:
            raise ValueError("empty prompt")
        self.queue.append(request)
        self.added += 1
        self.peak_in_flight = max(self.peak_in_flight, len(self.queue))

    def step(self) -> list[Completion]:
        self.steps += 1
        if self.on_step is not None:
            self.on_step(self)
        if self.settings.latency:
            time.sleep(self.settings.latency)
        n = self.settings.per_step
        done, self.queue = self.queue[-n:][::-1], self.queue[:-n]
        return [self._answer(request) for request in done]

    def _answer(self, request: GenerationRequest) -> Completion:
        prompt = len(request.prompt_token_ids)
        if request.key in self.fail_ids:
            return Completion(request.key, "", "error", prompt, 0, error="the fake engine failed it ([fake] fail_ids)")
        words = answer_words(request.prompt_token_ids, _media(request), self.settings.words)
        cut = len(words) > self.max_tokens
        words = words[:self.max_tokens]
        text = f"[{', '.join(words[:2])}]" + "".join(f" {w}" for w in words[2:]) if words else ""
        return Completion(request.key, text, "length" if cut else "stop", prompt, len(words))

    def has_unfinished(self) -> bool:
        return bool(self.queue)

    def abort(self) -> None:
        self.aborted = True
        self.queue.clear()

    def close(self) -> None:
        self.closed = True

    def notes(self) -> list[str]:
        return ["fake engine: answers are words picked by a hash of each prompt (no model)"]


def answer_words(token_ids: Iterable[int], media: bytes, count: int) -> list[str]:
    """`count` words, a pure function of the prompt's ids and its media's bytes."""
    digest = hashlib.sha256(b",".join(str(i).encode() for i in token_ids) + b"|" + media).digest()
    while len(digest) < count:
        digest += hashlib.sha256(digest).digest()
    return [WORDS[b % len(WORDS)] for b in digest[:count]]


def _media(request: GenerationRequest) -> bytes:
    """A digest of the request's decoded clips (their arrays' bytes), so that different clips get different answers."""
    digest = hashlib.sha256()
    for name, data in sorted((request.multi_modal_data or {}).items()):
        digest.update(name.encode())
        for part in data if isinstance(data, tuple) else (data,):
            digest.update(part.tobytes() if hasattr(part, "tobytes") else repr(part).encode())
    return digest.digest() if request.multi_modal_data else b""
