"""What a modality is to the rest of the package: the one seam between step 1's pipeline and audio or video.

A `Modality` holds everything that differs between describing audio and describing video: which files it
lists, its decoder (run on the feed's workers), the part it adds to the chat message and the placeholder
that part must render as, how many context tokens one clip can take, its `limit_mm_per_prompt` entry,
its settings in the checkpoint's fingerprint, and how many bytes one decoded clip can hold (for the
decode-ahead budget). A decoded clip reaches the engine as `multi_modal_data[modality.name]`, unchanged.
Nothing outside the modalities' own packages names audio or video; they are found here by name.
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Protocol

from s2_vllm.config import Config

# The modalities by name, and the module that defines each (imported only when asked for).
_MODULES = {"audio": "s2_vllm.audio.modality", "video": "s2_vllm.video.modality"}
NAMES = tuple(_MODULES)
DEFAULT = "audio"  # `describe` without --modality


class ClipError(Exception):
    """This clip cannot be used; the message is the row's `error`."""


def too_long(seconds: float, max_seconds: float) -> ClipError:
    """The error of a clip over max_seconds under `too_long = "error"`."""
    return ClipError(f"the clip is {seconds:.1f} s; the model takes at most {max_seconds:g} s "
                     "(too_long = \"error\"; \"truncate\" cuts it)")


def check_file(path: str) -> None:
    """A ClipError unless `path` is a file with something in it (before any decoder opens it)."""
    if not os.path.isfile(path):
        raise ClipError(f"no such file: {path}" if not os.path.exists(path) else f"not a file: {path}")
    if os.path.getsize(path) == 0:
        raise ClipError("the file is empty (0 bytes)")


class Decoded(Protocol):
    """One clip as its model takes it (each modality's decoder returns its own dataclass)."""

    @property
    def data(self) -> Any:
        """multi_modal_data[name]: what vLLM's processor for the modality takes."""

    seconds: float  # the clip's whole length (before any cut)
    cut: bool  # cut to max_seconds: the row is marked truncated

    @property
    def nbytes(self) -> int:
        """What it holds in memory."""


class Modality(ABC):
    name: str  # its key in multi_modal_data and limit_mm_per_prompt, its [table], its `--modality`
    suffixes: tuple[str, ...]  # the file extensions a folder is searched for
    default_model: str
    default_output: str
    clues: str  # what its descriptions are, in messages: "acoustic clues"
    files: str  # what a folder is searched for, in messages: "audio or video files"

    @abstractmethod
    def template(self, with_subtitle: bool) -> str:
        """Its default describe prompt."""

    @abstractmethod
    def content_part(self) -> dict[str, Any]:
        """The part of the user message the chat template renders as the clip's placeholder."""

    @abstractmethod
    def placeholders(self, tokenizer: Any) -> tuple[str, ...]:
        """The tokens one of which the rendered message must hold exactly once (the model's placeholder)."""

    @abstractmethod
    def max_tokens(self, config: Config) -> int:
        """The most context tokens one clip can take, kept out of the text's budget."""

    @abstractmethod
    def fingerprint(self, config: Config) -> dict[str, Any]:
        """Its settings that change a row: a checkpoint resumed with other settings, or as another modality, is refused."""

    @abstractmethod
    def decoder(self, config: Config) -> Callable[[str], Decoded]:
        """path → Decoded, or ClipError with the row's reason; picklable (it runs on the feed's worker processes)."""

    @abstractmethod
    def clip_bytes(self, config: Config) -> int:
        """The most bytes one decoded clip can hold."""

    @abstractmethod
    def max_seconds(self, config: Config) -> float: ...

    @abstractmethod
    def takes(self, model_config: Any) -> bool:
        """Whether the model (its transformers config) has an encoder for this modality."""

    @abstractmethod
    def check_decoders(self) -> None:
        """Its decoding libraries import, or a UserError saying how to get them."""

    def limits(self) -> dict[str, int]:
        """vLLM's `limit_mm_per_prompt`: one clip of this modality, nothing else (no memory kept for the rest)."""
        return {**{name: 0 for name in ("image", *NAMES)}, self.name: 1}

    def notes(self, config: Config) -> list[str]:
        """Warnings for the run's header about its settings and the model."""
        return []

    def decoding(self, config: Config) -> str:
        """What decoding a clip does, for the header line: "decoded to 16000 Hz mono"."""
        return "decoded"


def get(name: str) -> Modality:
    if name not in _MODULES:
        raise KeyError(f"no modality '{name}' (have: {', '.join(NAMES)})")
    return importlib.import_module(_MODULES[name]).MODALITY

