"""`s2-vllm extract-labels`: fused descriptions → open-vocabulary emotion labels (OV-MER's last step).

The label pass is a `Stage` of the ordinary pipeline: each `ok` row of a fusion checkpoint
becomes a record whose one source, `description`, fills {description} in the label prompt; the
model's answer is kept in `final_description` and parsed into `labels`. Resume, status, export,
--shard and --limit work as for `run`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s2_vllm import stages
from s2_vllm.checkpoint import USABLE, Row
from s2_vllm.config import Config, SourceSpec
from s2_vllm.errors import UserError
from s2_vllm.records import Record
from s2_vllm.stage import Stage

if TYPE_CHECKING:
    from s2_vllm.pipeline import RunOptions

STAGE = "extract-labels"
PARSER_VERSION = 1  # in the fingerprint: a changed parser means a new checkpoint

LABEL_TEMPLATE = """\
Please act as an expert in the field of emotions. We provide a description that may contain \
clues about the emotional state of the main character in a video. Based only on this \
description, identify the emotions of the main character. Output only the emotion labels that \
can be clearly identified, separated by commas, in a list format. If no emotion can be clearly \
identified, output an empty list.

Here are some examples.

Description: The voice is even and the subtitle is a plain statement of fact; the clues give \
no reliable evidence about the character's emotional state.
Output: []

Description: The bright, fast voice and the laughter, together with the subtitle "We won!", \
show that the character is overjoyed and proud of the result.
Output: [joyful, proud]

Description: The trembling voice, long pauses and the pleading subtitle indicate that the \
character is sad and anxious, with a hint of desperation.
Output: [sad, anxious, desperate]

Description: {description}
Output:"""

_THINK = re.compile(r"<think>.*?</think>", re.S)
_BRACKETS = str.maketrans({"［": "[", "【": "[", "］": "]", "】": "]"})
_SEPARATORS = re.compile(r"[,，、;；|\n]+")
_PARENTHESES = re.compile(r"[(（][^)）]*[)）]")
_NUMBERING = re.compile(r"^(?:\d+\s*[.)、:]|[-*•·])\s*")
_CONJUNCTION = re.compile(r"^(?:and|or)\s+", re.I)
_EDGES = " \t\r'\"`‘’“”「」『』«».。!！?？:：*-•·()（）<>[]{}"
_NONE = {"none", "null", "nil", "n/a", "na", "nothing", "empty", "no emotion", "no emotions", "unknown",
         "无", "没有"}
MAX_WORDS = 4  # a longer item is prose, not a label


def normalize_label(text: str) -> str:
    """One label: lower-cased, edge punctuation, quotes and numbering stripped, spaces collapsed."""
    item = _PARENTHESES.sub(" ", text).strip(_EDGES)
    item = _CONJUNCTION.sub("", _NUMBERING.sub("", item)).strip(_EDGES)
    return " ".join(item.split()).lower()


def parse_labels(text: str | None) -> list[str]:
    """The labels in a model's answer: `['a', 'b']`, `[a, b]`, `a, b`, `a，b、c`, "Output: [...]" …

    The first bracketed list wins (a model that goes on with a made-up example adds a second);
    without brackets, the first non-empty line after its last colon. Labels are lower-cased,
    deduplicated in order; "none", empty items and items over MAX_WORDS words are dropped.
    """
    if not text:
        return []
    text = _THINK.sub("", text).rsplit("</think>", 1)[-1].translate(_BRACKETS)
    start = text.find("[")
    if start >= 0:
        end = text.find("]", start)
        body = text[start + 1:] if end < 0 else text[start + 1:end]
        if end < 0:  # cut off before "]": the first line holds the list
            body = body.lstrip().split("\n", 1)[0]
    else:
        line = next((s for s in text.splitlines() if s.strip()), "")
        body = re.split(r"[:：]", line)[-1]
    labels: dict[str, None] = {}
    for piece in _SEPARATORS.split(body):
        label = normalize_label(piece)
        if label and label not in _NONE and len(label.split()) <= MAX_WORDS:
            labels[label] = None
    return list(labels)


def label_stage(inputs: list[Path]) -> Stage:
    """The label pass over fusion checkpoints `inputs`: one `description` source and the label prompt.
    [engine], [sampling], [hf] and [prompt] system/enable_thinking come from the config; its [prompt]
    template is used when it has a {description} placeholder (a fusion template is replaced)."""
    return Stage(
        stages.entry(STAGE),
        read=lambda config, echo: description_records(inputs, echo, stages.usable_statuses(config.run.cut_rows)),
        precheck=lambda config: _check_inputs(inputs),
        marks={"label_parser": PARSER_VERSION},
        postprocess=add_labels,
        sources=(SourceSpec("description", "description", "file_id", "final_description"),),
        template=LABEL_TEMPLATE, prompt_name="label",
    )


def _check_inputs(paths: list[Path]) -> None:
    """Before the engine is checked: the inputs exist, are of one run, and are checkpoints the label pass reads."""
    from s2_vllm.checkpoint import check_one_run

    check_one_run(paths)
    stages.check_inputs(paths, STAGE)


def description_records(paths: list[Path], echo: Callable[[str], None],
                        statuses: tuple[str, ...] = USABLE) -> list[Record]:
    """One record per row of fusion checkpoints whose status is in `statuses` (a row cut at `max_tokens` is a
    result; the last row of an id wins, shards merge)."""
    _check_inputs(paths)
    source = stages.read_checkpoint_source(paths, statuses)
    if source.stage is None and source.pairs and _has_labels(paths):
        raise UserError("the input holds emotion labels; give the checkpoint written by `s2-vllm run`")
    records = [Record(fid, {"description": text.strip()}, None if text.strip() else "empty final_description")
               for fid, text in source.pairs]
    name = str(paths[0]) if len(paths) == 1 else f"{len(paths)} checkpoints"
    echo(f"read {source.total} rows from {name}: {len(records)} descriptions to label ({source.held()})")
    return records


def _has_labels(paths: list[Path]) -> bool:
    """A checkpoint without a manifest is known by its rows: label rows carry `labels`."""
    from s2_vllm.checkpoint import iter_rows

    return any(row.labels is not None for path in paths for row in iter_rows(path))


def add_labels(row: Row) -> Row:
    """The postprocess: parse an `ok` answer into `labels` (other rows keep None)."""
    return dataclasses.replace(row, labels=parse_labels(row.final_description)) if row.status == "ok" else row


def extract_labels(config: Config, options: RunOptions, inputs: list[Path],
                   echo: Callable[[str], None], engine: Any = None) -> dict[str, Any]:
    """Run the label pass over fusion checkpoints `inputs` into `options.output`; returns the summary."""
    from s2_vllm.pipeline import run

    output = Path(options.output).resolve()
    if any(Path(p).resolve() == output for p in inputs):
        raise UserError(f"the output {options.output} is also an input; choose another -o")
    return run(config, options, echo, stage=label_stage(inputs), engine=engine)
