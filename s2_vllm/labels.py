"""`s2-vllm extract-labels`: fused descriptions → open-vocabulary emotion labels (OV-MER's last step).

The stage is the ordinary pipeline with other records, another template and a row
postprocess: each `ok` row of a fusion checkpoint becomes a record whose one source,
`description`, fills {description} in the label prompt; the model's answer is kept in
`final_description` and parsed into `labels`. Resume, status and export work as for `run`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s2_vllm.checkpoint import Row, read_manifest
from s2_vllm.config import Config, SourceSpec
from s2_vllm.errors import UserError
from s2_vllm.export import merge_rows
from s2_vllm.records import Record
from s2_vllm.template import DEFAULT_TEMPLATE, PromptTemplate

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


class LabelConfig(Config):
    """A Config whose fingerprint says it is the label stage (and which parser wrote `labels`)."""

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "stage": STAGE, "label_parser": PARSER_VERSION}


def label_config(config: Config, echo: Callable[[str], None]) -> LabelConfig:
    """The stage's config: one `description` source and the label prompt; [engine], [sampling],
    [hf] and [prompt] system/enable_thinking come from `config`. A [prompt] template is used
    when it has a {description} placeholder (a fusion template is replaced by LABEL_TEMPLATE)."""
    template = config.prompt.template
    if "description" not in PromptTemplate.parse(template).placeholders:
        if template != DEFAULT_TEMPLATE:
            echo("the config's [prompt] template has no {description}: using the built-in label prompt")
        template = LABEL_TEMPLATE
    stage = LabelConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(Config)})
    stage.sources = [SourceSpec("description", "description", "file_id", "final_description")]
    stage.prompt = dataclasses.replace(config.prompt, template=template)
    return stage


def description_records(paths: list[Path], echo: Callable[[str], None]) -> list[Record]:
    """One record per `ok` row of fusion checkpoints (the last row of an id wins, shards merge)."""
    for path in paths:
        if ((read_manifest(path) or {}).get("fingerprint") or {}).get("stage") == STAGE:
            raise UserError(f"{path} holds emotion labels; give the checkpoint written by `s2-vllm run`")
    rows, _ = merge_rows(paths)
    records = []
    for row in rows:
        if row.labels is not None:
            raise UserError("the input holds emotion labels; give the checkpoint written by `s2-vllm run`")
        if row.status == "ok":
            text = (row.final_description or "").strip()
            records.append(Record(row.file_id, {"description": text}, None if text else "empty final_description"))
    name = str(paths[0]) if len(paths) == 1 else f"{len(paths)} checkpoints"
    echo(f"read {len(rows)} rows from {name}: {len(records)} ok descriptions to label"
         + (f", {len(rows) - len(records)} not ok (left out)" if len(rows) > len(records) else ""))
    return records


def add_labels(row: Row) -> Row:
    """The postprocess: parse an `ok` answer into `labels` (other rows keep None)."""
    return dataclasses.replace(row, labels=parse_labels(row.final_description)) if row.status == "ok" else row


def extract_labels(config: Config, options: RunOptions, inputs: list[Path],
                   echo: Callable[[str], None], engine: Any = None) -> dict[str, Any]:
    """Run the label stage over fusion checkpoints `inputs` into `options.output`; returns the summary."""
    from s2_vllm.pipeline import run

    output = Path(options.output).resolve()
    if any(Path(p).resolve() == output for p in inputs):
        raise UserError(f"the output {options.output} is also an input; choose another -o")
    stage = label_config(config, echo)
    records = description_records(inputs, echo)
    if options.limit is not None:
        records = records[:options.limit]
    return run(stage, options, echo, records=records, postprocess=add_labels, engine=engine)
