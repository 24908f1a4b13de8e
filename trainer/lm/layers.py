"""Where a causal LM keeps its decoder layers and text config, whatever wraps it (Gemma 3, Llama, ...)."""

from __future__ import annotations

from typing import Any

from torch import nn

from trainer.lm.errors import ModelError

_LAYER_PATHS = (
    "model.layers",  # Gemma 2/3 *ForCausalLM, Llama, Mistral, Qwen, ...
    "model.language_model.layers",  # Gemma3ForConditionalGeneration (transformers 5)
    "language_model.model.layers",  # older multimodal wrappers
    "language_model.layers",
    "layers",  # a bare base model (Gemma2Model, LlamaModel)
    "gpt_neox.layers",  # Pythia
    "transformer.h",  # GPT-2 style
)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a Gemma 2/3 or Llama-family model (also multimodal Gemma 3 wrappers)."""
    for path in _LAYER_PATHS:
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return obj
    raise ModelError(
        f"cannot find the decoder layers of {type(model).__name__}: looked for {', '.join(_LAYER_PATHS)} "
        "(supported: Gemma 2, Gemma 3 and Llama-family causal LMs)"
    )


def n_layers(model: nn.Module) -> int:
    """Number of decoder layers."""
    return len(decoder_layers(model))


def text_config(config: Any) -> Any:
    """The text part of a model config (multimodal Gemma 3 nests it), else the config itself."""
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config
