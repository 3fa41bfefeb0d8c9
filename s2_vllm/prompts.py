"""Records → chat messages → the model's chat template → token ids, checked against the context.

Prompts are rendered and tokenized here, ahead of the engine, so an engine only ever sees
token ids. The chat template is applied once per run to learn the text around the user
message, then each record is a string join plus a batched call of the fast tokenizer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from s2_vllm.config import Config, SourceSpec
from s2_vllm.errors import ConfigError, one_line
from s2_vllm.records import Record
from s2_vllm.template import PromptTemplate

if TYPE_CHECKING:
    from s2_vllm.clips.modality import Modality

_MARK = "\x00S2_VLLM_USER_CONTENT\x00"
_TRUNCATE_ROUNDS = 4


@dataclass(frozen=True)
class Prompt:
    file_id: str
    text: str | None
    token_ids: list[int] | None  # None: not sent to the model (see skip_reason / error)
    truncated: tuple[str, ...] = ()
    skip_reason: str | None = None
    error: str | None = None
    clip: str | None = None  # describe: the clip's path, decoded into `media` ahead of the engine
    media: Mapping[str, Any] | None = None  # vLLM's multi_modal_data: modality → the decoded clip

    @property
    def sha(self) -> str | None:
        return None if self.text is None else hashlib.sha256(self.text.encode()).hexdigest()[:16]


def load_tokenizer(config: Config) -> Any:
    """The tokenizer named by [engine] tokenizer (or model): a hub id or a local folder."""
    from transformers import AutoTokenizer

    e = config.engine
    name = e.tokenizer or e.model
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, revision=e.revision, trust_remote_code=e.trust_remote_code)
    except Exception as exc:  # transformers raises OSError, ValueError, HF hub errors…
        raise ConfigError(f"cannot load the tokenizer '{name}': {one_line(exc)}") from exc
    if getattr(tokenizer, "chat_template", None) is None:
        # Some multimodal models (Qwen2.5-Omni among them) keep the chat template with their processor.
        try:
            from transformers import AutoProcessor

            processor = AutoProcessor.from_pretrained(name, revision=e.revision, trust_remote_code=e.trust_remote_code)
            tokenizer.chat_template = getattr(processor, "chat_template", None)
        except Exception:
            pass  # PromptBuilder says the template is missing
    return tokenizer


def resolve_max_model_len(config: Config, model_config: Any | None = None) -> int | None:
    """[engine] max_model_len, else the model config's max_position_embeddings (`model_config`: the
    run's, when it has read it already)."""
    if config.engine.max_model_len:
        return config.engine.max_model_len
    if model_config is None:
        from s2_vllm.model_config import read_model_config

        model_config = read_model_config(config.engine)
    from s2_vllm.model_config import text_config

    return getattr(text_config(model_config), "max_position_embeddings", None) if model_config is not None else None


class PromptBuilder:
    """`modality` (describe): the user message then holds its part before the text, which the chat template
    renders as the model's placeholder for the clip, and the most tokens a clip can take are kept out of the
    text's budget."""

    def __init__(self, config: Config, tokenizer: Any, max_model_len: int | None, *,
                 modality: Modality | None = None):
        self.tokenizer = tokenizer
        self.template: PromptTemplate = config.template()
        self.sources: list[SourceSpec] = config.sources
        self.system = config.prompt.system
        self.enable_thinking = config.prompt.enable_thinking
        self.too_long = config.prompt.too_long
        max_tokens = config.sampling.max_tokens
        if max_model_len is not None and max_tokens >= max_model_len:
            raise ConfigError(
                f"sampling.max_tokens ({max_tokens}) leaves no room for a prompt in max_model_len ({max_model_len})"
            )
        self.modality = modality
        clip_tokens = modality.max_tokens(config) if modality is not None else 0
        if max_model_len is not None and max_tokens + clip_tokens >= max_model_len:
            raise ConfigError(f"max_model_len ({max_model_len}) leaves no room for the prompt's text beside "
                              f"sampling.max_tokens ({max_tokens}) and a clip of up to {clip_tokens} tokens")
        self.budget = None if max_model_len is None else max_model_len - max_tokens - clip_tokens
        if getattr(tokenizer, "chat_template", None) is None:
            raise ConfigError("the tokenizer has no chat template; use an instruct/chat model")
        if modality is not None:
            self._check_placeholder(modality)
        self.prefix, self.suffix = self._split_chat_template()

    def _check_placeholder(self, modality: Modality) -> None:
        rendered = self.chat("x")
        tokens = modality.placeholders(self.tokenizer)
        counts = {token: rendered.count(token) for token in tokens}
        if sorted(counts.values(), reverse=True)[:2] not in ([1], [1, 0]):
            found = ", ".join(f"{n} {token}" for token, n in counts.items())
            raise ConfigError(f"the chat template renders {found} for a message with one {modality.name} clip; "
                              f"describe --modality {modality.name} needs the tokenizer and template of a model "
                              f"that takes {modality.name}")

    def chat(self, content: str) -> str:
        user: Any = content
        if self.modality is not None:
            user = [self.modality.content_part(), {"type": "text", "text": content}]
        messages = [{"role": "user", "content": user}]
        if self.system:
            messages.insert(0, {"role": "system", "content": self.system})
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=self.enable_thinking
        )

    def _split_chat_template(self) -> tuple[str, str] | tuple[None, None]:
        """Text before and after the user message, when the template copies it verbatim."""
        rendered = self.chat(_MARK)
        if rendered.count(_MARK) != 1:
            return None, None
        prefix, suffix = rendered.split(_MARK)
        probe = "A probe {x} with  spaces\n"
        if self.chat(probe) != prefix + probe + suffix:
            return None, None
        return prefix, suffix

    def chat_text(self, record: Record) -> str:
        content = self.template.render({s.placeholder: record.texts[s.name] for s in self.sources})
        if self.prefix is not None:
            return self.prefix + content + self.suffix
        return self.chat(content)

    def build(self, records: list[Record]) -> list[Prompt]:
        """Render, tokenize (one batched call) and length-check a chunk of records."""
        live = [r for r in records if r.skip_reason is None]
        texts = [self.chat_text(r) for r in live]
        encoded = self._encode(texts) if texts else []
        by_id = {r.file_id: (t, ids) for r, t, ids in zip(live, texts, encoded)}
        prompts = []
        for record in records:
            if record.skip_reason is not None:
                prompts.append(Prompt(record.file_id, None, None, skip_reason=record.skip_reason))
                continue
            text, ids = by_id[record.file_id]
            if self.budget is not None and len(ids) > self.budget:
                prompts.append(self._fit(record, len(ids)))
            else:
                prompts.append(Prompt(record.file_id, text, ids, clip=record.clip))
        return prompts

    def _encode(self, texts: list[str]) -> list[list[int]]:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None and hasattr(backend, "encode_batch_fast"):
            # The Rust tokenizer directly: no offsets, no Python-side BatchEncoding, all cores.
            return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _fit(self, record: Record, length: int) -> Prompt:
        """Cut the longest clue text until the prompt fits; the template stays whole."""
        assert self.budget is not None
        if self.too_long == "error":
            return Prompt(record.file_id, None, None, error=f"prompt has {length} tokens; the limit is {self.budget}")
        texts = dict(record.texts)
        cut: list[str] = []
        for _ in range(_TRUNCATE_ROUNDS):
            name = max(texts, key=lambda n: len(texts[n]))
            pieces = self.tokenizer(texts[name], add_special_tokens=False)["input_ids"]
            keep = max(0, len(pieces) - (length - self.budget) - 4)
            texts[name] = self.tokenizer.decode(pieces[:keep])
            if name not in cut:
                cut.append(name)
            text = self.chat_text(Record(record.file_id, texts, clip=record.clip))
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            length = len(ids)
            if length <= self.budget:
                return Prompt(record.file_id, text, list(ids), truncated=tuple(cut), clip=record.clip)
        return Prompt(
            record.file_id, None, None, error=f"prompt still has {length} tokens after truncation; the limit is {self.budget}"
        )


def iter_prompts(builder: PromptBuilder, records: Iterable[Record], chunk: int = 256) -> Iterator[Prompt]:
    batch: list[Record] = []
    for record in records:
        batch.append(record)
        if len(batch) == chunk:
            yield from builder.build(batch)
            batch = []
    if batch:
        yield from builder.build(batch)
