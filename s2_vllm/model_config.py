"""The model's own config.json, read once per run: the prompt builder and the engine's platform settings use it."""

from __future__ import annotations

from typing import Any

from s2_vllm.config import EngineConfig


def read_model_config(cfg: EngineConfig) -> Any | None:
    """transformers' config of [engine] model (a hub id or a local folder); None when it cannot be read."""
    from transformers import AutoConfig
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    # Qwen2.5-Omni's config (the real one too) warns that its unused talker's token ids lie outside the
    # talker's vocabulary: noise on the console of every describe run.
    logging.set_verbosity_error()
    try:
        return AutoConfig.from_pretrained(cfg.model, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except Exception:  # the engine says why when it starts; callers fall back to their defaults
        return None
    finally:
        logging.set_verbosity(verbosity)


def text_config(model_config: Any) -> Any:
    """The language model's part of a config (multimodal configs nest it; Qwen2.5-Omni one level deeper, in
    its thinker)."""
    outer = getattr(model_config, "thinker_config", None) or model_config
    return getattr(outer, "text_config", None) or outer

