"""s2-vllm's seeded sampler: one batched draw per step whose randomness depends on nothing but the record.

vLLM gives a request with its own `seed` a `torch.Generator` and then draws for those requests
one at a time (a Python loop per step over the seeded rows; on its CPU build a slower unfused
path as soon as every row is seeded). Here the noise is a counter-based hash of (record seed,
output position, token id): every row of a step is drawn in one set of tensor operations,
and a row's draw is the same whatever else is in the batch, on any device.

The draw follows vLLM's own sampling order (temperature, min-p, top-k, top-p), then picks
among the kept tokens by the Gumbel-max rule, which samples the softmax of the kept logits
exactly. It works on the top-k candidates only, so top-k must be on (k >= 1); the caller
sends other settings to vLLM's sampler. Only torch is needed: vLLM's logits-processor class
that runs this inside the engine lives in `vllm_api.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MASK32 = 0xFFFFFFFF
# Odd multipliers below 2**31: a 32-bit value times one stays below 2**63, so the hash is exact
# int64 arithmetic (no overflow) and gives the same bits on every device.
MUL1, MUL2 = 0x7FEB352D, 0x2C1B3C6D
POSITION_SALT, TOKEN_SALT = 0x632BE5AB, 0x5BD1E995
UNIFORM_BITS = 23  # (bits + 0.5) then needs 24 bits: exact in float32


def _mix(x: Any) -> Any:
    """A 32-bit integer hash (xor-shift-multiply rounds) of an int64 tensor of values in [0, 2**32)."""
    x = ((x ^ (x >> 16)) * MUL1) & MASK32
    x = ((x ^ (x >> 15)) * MUL2) & MASK32
    return x ^ (x >> 16)


def uniform_noise(seeds: Any, positions: Any, tokens: Any) -> Any:
    """Uniform floats in (0, 1), shape of `tokens` ([rows, n]): one per (row's seed, row's position, token).

    `seeds` and `positions` are int64 [rows] (seeds below 2**32), `tokens` int64 [rows, n].
    """
    import torch

    row = _mix(_mix(seeds & MASK32) ^ ((positions + POSITION_SALT) & MASK32))
    bits = _mix(row[:, None] ^ ((tokens * TOKEN_SALT) & MASK32)) >> (32 - UNIFORM_BITS)
    return (bits.to(torch.float32) + 0.5) * (1.0 / (1 << UNIFORM_BITS))


def choose_tokens(logits: Any, seeds: Any, positions: Any, temperature: Any, top_k: Any, top_p: Any,
                  min_p: Any, *, k_max: int, use_top_p: bool = True, use_min_p: bool = True) -> Any:
    """The sampled token id of each row of `logits` ([rows, vocab], float32), int64 [rows].

    Per row: `seeds`, `positions` (tokens generated so far) int64; `temperature` (> 0), `top_p`
    (in (0, 1]) and `min_p` (in [0, 1]) float32; `top_k` int64 >= 1. The host-side facts come
    from the caller, so that nothing here waits on the device: `k_max` = the largest top-k,
    `use_top_p` / `use_min_p` = some row has top-p < 1 / min-p > 0.
    """
    import torch

    k_max = min(k_max, logits.shape[-1])
    values, ids = logits.topk(k_max, dim=-1)  # sorted, largest first
    values = values / temperature[:, None]
    neg_inf = float("-inf")
    values.masked_fill_(torch.arange(k_max, device=logits.device)[None, :] >= top_k[:, None], neg_inf)
    if use_min_p:  # p >= min_p * p_max  <=>  logit - max_logit >= log(min_p)
        floor = values[:, :1] + torch.log(min_p.clamp(min=1e-30))[:, None]
        values.masked_fill_((values < floor) & (min_p > 0)[:, None], neg_inf)
    if use_top_p:  # keep a token while the tokens above it hold less than top_p
        probs = values.softmax(dim=-1)
        above = probs.cumsum(dim=-1) - probs
        values.masked_fill_(above >= top_p[:, None], neg_inf)  # the first token always stays (above = 0)
    gumbel = -torch.log(-torch.log(uniform_noise(seeds, positions, ids)))
    choice = (values + gumbel).argmax(dim=-1, keepdim=True)
    return ids.gather(1, choice).squeeze(1)


@dataclass(frozen=True)
class SamplerPlan:
    """How one run's records are sampled on vLLM: `kind` is "greedy", "s2", "vllm" or "unseeded"."""

    kind: str
    note: str | None  # the run header's line about it (None: nothing to say)


def plan(sampling: Any, unavailable: str | None = None, platform: str = "cpu") -> SamplerPlan:
    """The sampler a `[sampling]` table gets where vLLM runs on `platform` ("cpu", "cuda", …); `unavailable`:
    why this vLLM cannot run s2-vllm's (None: it can).

    `sampler = "auto"` is s2-vllm's sampler on vLLM's CPU build and vLLM's own elsewhere: on CUDA, vLLM
    0.26's V2 model runner (its default for dense models) already draws seeded requests in one batched
    pass keyed on (seed, position), and any logits processor would put it back on the V1 runner.
    """
    if sampling.temperature == 0:
        return SamplerPlan("greedy", None)
    asked, cpu = sampling.sampler, platform == "cpu"
    if asked == "unseeded":
        return SamplerPlan("unseeded", "sampling: vLLM's sampler without per-record seeds ([sampling] sampler = "
                                       "\"unseeded\"): a record's text depends on its batch and changes on resume")
    if asked == "vllm" or (asked == "auto" and not cpu):
        note = None if asked == "auto" else "sampling: vLLM's sampler with a seed per record ([sampling] sampler = " \
            "\"vllm\"" + ("; on its CPU build a generator per request, slower than sampler = \"s2\")" if cpu else ")")
        return SamplerPlan("vllm", note)
    why = ("top_k is off" if sampling.top_k < 1 else
           "penalties are set" if (sampling.repetition_penalty, sampling.presence_penalty,
                                   sampling.frequency_penalty) != (1.0, 0.0, 0.0) else
           unavailable)
    if why is not None:
        return SamplerPlan("vllm", f"sampling: vLLM's sampler with a seed per record, not s2-vllm's ({why}; "
                                   f"s2-vllm's needs top_k >= 1 and no penalties){': slower' if cpu else ''}")
    return SamplerPlan("s2", None if cpu else "sampling: s2-vllm's sampler ([sampling] sampler = \"s2\"); vLLM "
                                              "then runs its V1 model runner, the one that takes logits processors")
