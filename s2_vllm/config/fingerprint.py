"""The checkpoint's fingerprint: built here from the schema's `fp` names, and read back here.

A key is in it when its `Key` has an `fp` name ("sampling.top_p" nests under "sampling");
speed and plumbing knobs have none, so they may change between a run and its resume. A stage
adds its own marks (the label pass: which stage, which parser), and the run adds the hash of
the tokenizer's chat template.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from s2_vllm.config.schema import specs
from s2_vllm.config.tables import TABLES, SourceSpec

STAGE_KEY = "stage"  # the key a stage's name sits under; the fusion pass has none


def build(config: Any, *, stage: str | None = None, marks: Mapping[str, Any] | None = None,
          chat_template: str | None = None) -> dict:
    """The fingerprint of a pass of `stage` (None: the fusion pass, whose checkpoints predate stages and
    hold no stage name) with the stage's own `marks`, over a tokenizer with `chat_template`."""
    out: dict[str, Any] = {}
    for table in TABLES:
        values = getattr(config, table)
        for spec in specs(type(values), table).values():
            value = getattr(values, spec.name)
            if spec.meta.fp is None or (spec.meta.fp_if_set and value == spec.default):
                continue
            *outer, name = spec.meta.fp.split(".")
            place = out
            for part in outer:
                place = place.setdefault(part, {})
            place[name] = list(value) if isinstance(value, list) else value
    out["sources"] = [_source(s) for s in config.sources]
    if chat_template is not None:
        out["chat_template_sha"] = hashlib.sha256(chat_template.encode()).hexdigest()
    if stage is not None:
        out[STAGE_KEY] = stage
    if clash := set(marks or {}) & set(out):
        raise ValueError(f"a stage's marks may not replace what the fingerprint holds: {', '.join(sorted(clash))}")
    return {**out, **(marks or {})}


def _source(spec: SourceSpec) -> dict[str, Any]:
    keys = specs(SourceSpec, "sources")
    return {"name": spec.name, **{s.meta.fp: getattr(spec, s.name) for s in keys.values() if s.meta.fp}}


def stage_of(fingerprint: Mapping[str, Any] | None) -> str | None:
    """The stage a checkpoint was written by (None: the fusion pass, or no manifest)."""
    return (fingerprint or {}).get(STAGE_KEY)


def headline(fingerprint: Mapping[str, Any]) -> str:
    """`model=… max_tokens=… temperature=… thinking=…`, for `status`."""
    sampling = fingerprint.get("sampling") or {}
    return (f"model={fingerprint.get('model')} max_tokens={sampling.get('max_tokens')} "
            f"temperature={sampling.get('temperature')} thinking={fingerprint.get('enable_thinking')}")
