"""Checkpoint rows from prompts and completions: status, and Qwen3's thinking split."""

from __future__ import annotations

from s2_vllm.checkpoint import Row
from s2_vllm.engines.base import Completion
from s2_vllm.prompts import Prompt

THINK_END = "</think>"
THINK_START = "<think>"


def split_thinking(text: str) -> tuple[str | None, str, bool]:
    """(reasoning, answer, closed): the text before `</think>` is reasoning."""
    head, sep, tail = text.partition(THINK_END)
    if not sep:
        return None, text.strip(), False
    return head.replace(THINK_START, "", 1).strip(), tail.strip(), True


def row_for_completion(prompt: Prompt, completion: Completion, thinking: bool) -> Row:
    reasoning, answer, closed = split_thinking(completion.text)
    inside_thinking = thinking and not closed and completion.text.lstrip().startswith(THINK_START)
    if inside_thinking:  # cut off (or stopped) before `</think>`: all reasoning, no answer
        reasoning, answer = completion.text.replace(THINK_START, "", 1).strip(), ""
    if completion.finish_reason == "error":
        status = "error"
    elif completion.finish_reason == "length" or inside_thinking:
        status = "length"
    else:
        status = "ok"
    return Row(
        file_id=prompt.file_id,
        final_description=answer,
        reasoning=reasoning,
        status=status,
        finish_reason=completion.finish_reason,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        error=completion.error,
        prompt_sha=prompt.sha,
        truncated=list(prompt.truncated) or None,
    )


def row_without_model(prompt: Prompt, error: str | None = None) -> Row:
    """A record that never reached the model: skipped input, too long, or refused by the engine."""
    if prompt.skip_reason is not None and error is None:
        return Row(prompt.file_id, None, status="skipped", error=prompt.skip_reason)
    return Row(
        prompt.file_id,
        None,
        status="error",
        error=error or prompt.error,
        prompt_tokens=None if prompt.token_ids is None else len(prompt.token_ids),
        prompt_sha=prompt.sha,
        truncated=list(prompt.truncated) or None,
    )
