"""s2-vllm's seeded sampler: the draw's distribution, its independence from the batch, the hash, the plan."""

from __future__ import annotations

import math
import random

import pytest
import torch

from s2_vllm.config import SamplingConfig
from s2_vllm.engines import seeded_sampling
from s2_vllm.engines.seeded_sampling import choose_tokens, plan, uniform_noise


def draw(logits, seeds, positions=None, temperature=0.7, top_k=20, top_p=0.8, min_p=0.0):
    n = logits.shape[0]
    full = lambda v, dtype: torch.full((n,), v, dtype=dtype)  # noqa: E731
    positions = torch.zeros(n, dtype=torch.int64) if positions is None else positions
    return choose_tokens(logits, seeds, positions, full(temperature, torch.float32), full(top_k, torch.int64),
                         full(top_p, torch.float32), full(min_p, torch.float32), k_max=top_k,
                         use_top_p=top_p < 1, use_min_p=min_p > 0)


def exact(logits_row, temperature=0.7, top_k=20, top_p=0.8, min_p=0.0):
    """vLLM's order, written out on one row: temperature, min-p, top-k, then top-p over what is left."""
    probs = (logits_row / temperature).softmax(-1)
    keep = probs >= min_p * probs.max()
    order = probs.argsort(descending=True)
    keep[order[top_k:]] = False
    kept = torch.where(keep, probs, torch.zeros_like(probs))
    kept = kept / kept.sum()
    above = 0.0
    for i in order.tolist():
        if not keep[i]:
            continue
        if above >= top_p:
            kept[i] = 0
        above += float(kept[i])
    return kept / kept.sum()


@pytest.mark.parametrize("settings", [{}, {"top_k": 5, "top_p": 1.0}, {"temperature": 1.3, "min_p": 0.05}])
def test_draws_follow_the_distribution_vllm_samples(settings):
    torch.manual_seed(0)
    row = torch.randn(1, 64) * 2
    n = 40_000
    tokens = draw(row.expand(n, 64).contiguous(), torch.arange(n, dtype=torch.int64) * 7 + 1, **settings)
    seen = torch.bincount(tokens, minlength=64).double() / n
    want = exact(row[0].double(), **settings)
    assert set(tokens.unique().tolist()) <= set(torch.nonzero(want).flatten().tolist())
    assert 0.5 * (seen - want).abs().sum() < 0.02  # total variation; sampling noise alone is about 0.01


def test_a_rows_draw_does_not_depend_on_the_rest_of_the_batch():
    torch.manual_seed(1)
    logits = torch.randn(33, 500)
    seeds, positions = torch.arange(33, dtype=torch.int64) * 101, torch.arange(33, dtype=torch.int64) % 5
    together = draw(logits, seeds, positions)
    alone = [int(draw(logits[i:i + 1], seeds[i:i + 1], positions[i:i + 1])) for i in range(33)]
    shuffled = list(range(33))
    random.Random(2).shuffle(shuffled)
    moved = draw(logits[shuffled], seeds[shuffled], positions[shuffled])
    assert together.tolist() == alone
    assert moved.tolist() == [alone[i] for i in shuffled]


def test_seed_and_position_each_change_the_draw_and_nothing_else_does():
    logits = torch.zeros(1, 1000)  # every token equally likely: the noise alone decides
    base = torch.tensor([5], dtype=torch.int64)
    at = lambda seed, pos: int(draw(logits, torch.tensor([seed]), torch.tensor([pos]), top_k=1000, top_p=1.0))  # noqa
    assert at(5, 3) == at(5, 3)
    assert len({at(5, p) for p in range(20)}) > 15
    assert len({at(s, 3) for s in range(20)}) > 15
    assert int(draw(logits, base, torch.tensor([3]), top_k=1000, top_p=1.0)) == at(5, 3)


def _reference_mix(x: int) -> int:
    m = 0xFFFFFFFF
    x = ((x ^ (x >> 16)) * seeded_sampling.MUL1) & m
    x = ((x ^ (x >> 15)) * seeded_sampling.MUL2) & m
    return x ^ (x >> 16)


def test_the_noise_is_the_documented_integer_hash_bit_for_bit():
    """Exact integer arithmetic (no int64 overflow anywhere), so every device draws the same bits."""
    seeds = torch.tensor([0, 1, 2**31 - 1, 123456789], dtype=torch.int64)
    positions = torch.tensor([0, 7, 4095, 2**20], dtype=torch.int64)
    tokens = torch.tensor([[0, 1, 151935], [5, 6, 7], [2**17, 3, 9], [151000, 42, 11]], dtype=torch.int64)
    got = uniform_noise(seeds, positions, tokens)
    for r in range(4):
        row = _reference_mix(_reference_mix(int(seeds[r])) ^ ((int(positions[r]) + seeded_sampling.POSITION_SALT)
                                                              & 0xFFFFFFFF))
        for c in range(3):
            bits = _reference_mix(row ^ ((int(tokens[r, c]) * seeded_sampling.TOKEN_SALT) & 0xFFFFFFFF)) >> 9
            assert float(got[r, c]) == (bits + 0.5) / 2**23
    assert max(0xFFFFFFFF * seeded_sampling.MUL1, 0xFFFFFFFF * seeded_sampling.MUL2,
               0xFFFFFFFF * seeded_sampling.TOKEN_SALT) < 2**63


def test_the_noise_is_uniform():
    u = uniform_noise(torch.arange(200, dtype=torch.int64), torch.zeros(200, dtype=torch.int64),
                      torch.arange(1000, dtype=torch.int64).expand(200, 1000))
    assert 0 < float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.var()) - 1 / 12) < 0.002
    assert math.isclose(float((u < 0.1).double().mean()), 0.1, abs_tol=0.005)


@pytest.mark.parametrize(("settings", "kind", "why"), [
    ({"temperature": 0.0}, "greedy", None),
    ({}, "s2", None),
    ({"sampler": "vllm"}, "vllm", "a generator per request"),
    ({"sampler": "unseeded"}, "unseeded", "changes on resume"),
    ({"top_k": 0}, "vllm", "top_k is off"),
    ({"repetition_penalty": 1.1}, "vllm", "penalties are set"),
    ({"presence_penalty": 0.5}, "vllm", "penalties are set"),
])
def test_the_plan_says_which_sampler_runs_and_why(settings, kind, why):
    chosen = plan(SamplingConfig(**settings))
    assert chosen.kind == kind
    assert (chosen.note is None) == (why is None) and (why is None or why in chosen.note)


def test_auto_is_s2_vllms_sampler_on_cpu_and_vllms_own_on_cuda():
    """vLLM 0.26's V2 GPU runner draws seeded requests in one batched pass, and takes no logits processor."""
    assert plan(SamplingConfig(), platform="cpu") == plan(SamplingConfig(sampler="s2"), platform="cpu")
    assert plan(SamplingConfig(), platform="cuda") == seeded_sampling.SamplerPlan("vllm", None)
    forced = plan(SamplingConfig(sampler="s2"), platform="cuda")
    assert forced.kind == "s2" and "V1 model runner" in forced.note
    assert plan(SamplingConfig(sampler="vllm"), platform="cuda").note == (
        "sampling: vLLM's sampler with a seed per record ([sampling] sampler = \"vllm\")")
    assert plan(SamplingConfig(sampler="s2", top_k=0), platform="cuda").note.endswith("and no penalties)")


def test_a_vllm_that_cannot_run_it_falls_back_with_the_reason():
    chosen = plan(SamplingConfig(), "this vLLM cannot run it: EngineArgs has no logits_processors")
    assert chosen.kind == "vllm"
    assert chosen.note == ("sampling: vLLM's sampler with a seed per record, not s2-vllm's (this vLLM cannot run "
                           "it: EngineArgs has no logits_processors; s2-vllm's needs top_k >= 1 and no penalties): "
                           "slower")
