"""`s2-vllm status`: what one or more checkpoints hold, read from their files alone."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from s2_vllm.checkpoint import CUT, FAILED, STATUSES, merge_rows, read_manifest, read_summary
from s2_vllm.config.fingerprint import headline
from s2_vllm.errors import CheckpointError
from s2_vllm.progress import replica_lines


def status_lines(paths: list[Path]) -> list[str]:
    for path in paths:
        if not path.exists():
            raise CheckpointError(f"no checkpoint at {path}")
    rows, info = merge_rows(paths)
    counts = Counter(row.status for row in rows)
    name = str(paths[0]) if len(paths) == 1 else f"{len(paths)} checkpoints"
    by_status = ", ".join(f"{s} {counts[s]}" for s in STATUSES)
    lines = [f"{name}: {len(rows)} records done ({by_status})"]
    if info.get("duplicates"):
        lines.append(f"ids in more than one checkpoint: {info['duplicates']}")
    if failed := sum(counts[s] for s in FAILED):
        lines.append(f"failed: {failed}; run the same command with --retry-failed to run them again")
    if cut := sum(counts[s] for s in CUT):
        lines.append(f"stopped at max_tokens: {cut} (kept as results); the same command with --retry-cut and a "
                     "larger --max-tokens runs them again")
    summaries = [read_summary(p) for p in paths]
    if all(summaries):
        total = sum(s["total"] for s in summaries)  # type: ignore[index]
        lines.append(f"remaining: {max(0, total - len(rows))} of {total} joined records (as of the last run)")
    prompt = sum(r.prompt_tokens or 0 for r in rows)
    output = sum(r.completion_tokens or 0 for r in rows)
    lines.append(f"tokens: {prompt} prompt, {output} output")
    manifest = read_manifest(paths[0]) or {}
    if fp := manifest.get("fingerprint"):
        lines.append(f"config: {manifest.get('fingerprint_sha', '')[:12]} {headline(fp)}")
    for path, s in zip(paths, summaries):
        if s:
            state = "interrupted" if s.get("interrupted") else "finished"
            lines.append(
                f"last run{'' if len(paths) == 1 else ' of ' + str(path)} ({s['engine']}, {state}): "
                f"{s['written']} rows in {s['generation_seconds']:.1f}s, "
                f"{s['output_tokens_per_second']:.1f} output tok/s, {s['prompt_tokens_per_second']:.1f} prompt tok/s"
            )
            lines += [f"  {line}" for line in replica_lines(s)]
    return lines
