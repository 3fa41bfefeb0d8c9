"""The fusion prompt template: `{name}` placeholders, substituted in one safe pass.

Only `{identifier}` is a placeholder. Any other brace (a JSON example in the template,
a brace inside a description) is literal text, and `{{` / `}}` write a single brace.
Substituted values are never scanned again, so data cannot inject placeholders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from s2_vllm.errors import ConfigError

DEFAULT_TEMPLATE = """\
Please act as an expert in the field of emotions. We provide acoustic clues that may be \
related to the character's emotional state, along with the original subtitle of the video. \
Please analyze which parts can infer the emotional state and explain the reasons. During the \
analysis, please integrate the textual and audio clues.

Acoustic Clues:
{audio_description}

Original Subtitle:
{subtitle}

Integrated Analysis:"""

# Our wording, in the paper's spirit, for the other sets of clues step 2 is given (`run --visual`).
THREE_SOURCE_TEMPLATE = """\
Please act as an expert in the field of emotions. We provide acoustic clues and visual clues that may be \
related to the character's emotional state, along with the original subtitle of the video. Please \
analyze which parts can infer the emotional state and explain the reasons. During the analysis, please \
integrate the textual, acoustic and visual clues, and say where they agree and where they differ.

Acoustic Clues:
{audio_description}

Visual Clues:
{visual_description}

Original Subtitle:
{subtitle}

Integrated Analysis:"""

VISUAL_TEMPLATE = """\
Please act as an expert in the field of emotions. We provide visual clues that may be related to the \
character's emotional state, along with the original subtitle of the video. Please analyze which parts \
can infer the emotional state and explain the reasons. During the analysis, please integrate the textual \
and visual clues.

Visual Clues:
{visual_description}

Original Subtitle:
{subtitle}

Integrated Analysis:"""

_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class PromptTemplate:
    text: str
    placeholders: tuple[str, ...]

    @classmethod
    def parse(cls, text: str, allowed: set[str] | None = None) -> "PromptTemplate":
        names = tuple(dict.fromkeys(m.group(1) for m in _TOKEN.finditer(text) if m.group(1)))
        if allowed is not None:
            unknown = [n for n in names if n not in allowed]
            if unknown:
                known = ", ".join("{%s}" % a for a in sorted(allowed)) or "none"
                raise ConfigError(
                    f"prompt template uses unknown placeholder {{{unknown[0]}}}; "
                    f"the declared sources give {known}"
                )
        return cls(text, names)

    def render(self, values: dict[str, str]) -> str:
        def substitute(match: re.Match[str]) -> str:
            token = match.group(0)
            if token == "{{":
                return "{"
            if token == "}}":
                return "}"
            return values[match.group(1)]

        return _TOKEN.sub(substitute, self.text)
