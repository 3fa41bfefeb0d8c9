"""`s2-vllm render`: the prompts a run would send, with token counts, and no model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson

from s2_vllm.config import Config
from s2_vllm.errors import UserError
from s2_vllm.prompts import PromptBuilder, iter_prompts, load_tokenizer, resolve_max_model_len
from s2_vllm.stage import FUSION, select


def render_prompts(config: Config, output: Path, *, force: bool, limit: int | None,
                   echo: Callable[[str], None], shard: tuple[int, int] | None = None) -> list[int]:
    """Write one JSON line per record; returns the token counts of the prompts that fit."""
    config = FUSION.configure(config, echo)
    config.validate()
    if output.exists() and not force:
        raise UserError(f"{output} exists; use --force to replace it")
    if not output.parent.is_dir():
        raise UserError(f"folder {output.parent} does not exist")
    records = select(FUSION.read(config, echo), shard, limit, echo)
    tokenizer = load_tokenizer(config)
    builder = PromptBuilder(config, tokenizer, resolve_max_model_len(config))
    counts: list[int] = []
    truncated = skipped = too_long = 0
    tmp = output.with_name(output.name + ".tmp")
    with open(tmp, "wb") as f:
        for prompt in iter_prompts(builder, records):
            tokens = None if prompt.token_ids is None else len(prompt.token_ids)
            if tokens is not None:
                counts.append(tokens)
            truncated += bool(prompt.truncated)
            skipped += prompt.skip_reason is not None
            too_long += prompt.error is not None
            f.write(orjson.dumps({
                "file_id": prompt.file_id, "prompt": prompt.text, "prompt_tokens": tokens,
                "truncated": list(prompt.truncated) or None, "skip_reason": prompt.skip_reason, "error": prompt.error,
            }) + b"\n")
    tmp.replace(output)
    budget = "no limit" if builder.budget is None else f"limit {builder.budget} tokens"
    echo(f"wrote {len(records)} prompts to {output} ({budget}; {truncated} truncated, "
         f"{too_long} too long, {skipped} skipped)")
    return counts
