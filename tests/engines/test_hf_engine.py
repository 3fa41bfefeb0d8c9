"""The transformers engine on the tiny model: batching, per-record seeds, limits."""

import pytest

from s2_vllm.config import EngineConfig, HFConfig, SamplingConfig
from s2_vllm.engines.base import GenerationRequest, record_seed
from s2_vllm.engines.hf import HFEngine


def engine(tiny_model, tokenizer, batch_size=4, **sampling):
    return HFEngine(EngineConfig(model=str(tiny_model)), SamplingConfig(**{"max_tokens": 12, **sampling}),
                    HFConfig(batch_size=batch_size, device="cpu"), tokenizer)


def requests(tokenizer, n):
    texts = [f"<|im_start|>user\nThe speaker sounds {w}.<|im_end|>\n<|im_start|>assistant\n"
             for w in ["calm", "very angry and loud", "sad", "happy, laughing a lot", "tired", "afraid"][:n]]
    return [GenerationRequest(f"k{i}", tokenizer(t)["input_ids"], record_seed(3, f"k{i}")) for i, t in enumerate(texts)]


def drain(e, reqs):
    for r in reqs:
        e.add(r)
    out = {}
    while e.has_unfinished():
        for c in e.step():
            out[c.key] = c
    return out


def test_sampled_text_depends_on_the_record_not_its_batch(tiny_model, tokenizer):
    reqs = requests(tokenizer, 6)
    batched = drain(engine(tiny_model, tokenizer, 4, temperature=1.0, top_p=0.95, top_k=50), reqs)
    alone = drain(engine(tiny_model, tokenizer, 1, temperature=1.0, top_p=0.95, top_k=50), reqs[::-1])
    assert {k: c.text for k, c in batched.items()} == {k: c.text for k, c in alone.items()}
    reseeded = drain(engine(tiny_model, tokenizer, 4, temperature=1.0, top_p=0.95, top_k=50),
                     [GenerationRequest(r.key, r.prompt_token_ids, r.seed + 1) for r in reqs])
    assert {k: c.text for k, c in reseeded.items()} != {k: c.text for k, c in batched.items()}


def test_greedy_counts_and_finish_reasons(tiny_model, tokenizer):
    out = drain(engine(tiny_model, tokenizer, temperature=0.0), requests(tokenizer, 3))
    for key, c in out.items():
        assert c.prompt_tokens > 0 and 0 <= c.completion_tokens <= 12
        assert c.finish_reason == ("length" if c.completion_tokens == 12 else "stop")


def test_ignore_eos_always_generates_max_tokens(tiny_model, tokenizer):
    out = drain(engine(tiny_model, tokenizer, temperature=0.0, ignore_eos=True, max_tokens=80), requests(tokenizer, 4))
    assert {(c.finish_reason, c.completion_tokens) for c in out.values()} == {("length", 80)}  # past where the eos tilt ends most outputs


def test_abort_drops_queued_requests(tiny_model, tokenizer):
    e = engine(tiny_model, tokenizer, batch_size=1, temperature=0.0)
    for r in requests(tokenizer, 3):
        e.add(r)
    assert len(e.step()) == 1
    e.abort()
    assert not e.has_unfinished() and e.step() == []


def test_empty_prompt_is_refused_alone(tiny_model, tokenizer):
    e = engine(tiny_model, tokenizer)
    with pytest.raises(ValueError, match="empty prompt"):
        e.add(GenerationRequest("x", [], 0))
    assert not e.has_unfinished()
