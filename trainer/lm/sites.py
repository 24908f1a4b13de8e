"""Where activations are read and spliced: the `resid`, `mlp` and `attn` sites (interface.md).

- resid: output of decoder layer L (forward hook on the layer; Gemma Scope's resid_post)
- mlp:   output of layer L's `post_feedforward_layernorm` (the MLP output after its norm);
         models without that norm (Llama) use the `mlp` module's output
- attn:  input of layer L's `self_attn.o_proj`: per-head outputs concatenated, n_heads*head_dim

Hooks cope with decoder layers that return a tensor (transformers 5) or a tuple (4.x):
only element 0 of a tuple is the hidden state (jumprelu.md §9). Recording hooks return
None; splicing hooks return the replacement. Harvesting stops the forward pass right after
the hooked module by raising an exception, so later layers and the unembedding never run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from typing import Any

import torch
from torch import Tensor, nn

from trainer.lm.layers import decoder_layers
from trainer.lm.site_names import SITES


class SiteError(ValueError):
    """An unknown site or a layer the model does not have."""


class _StopForward(Exception):
    """Raised by a harvesting hook once it has what it needs."""


def _hook_target(model: nn.Module, layer: int, site: str) -> tuple[nn.Module, bool]:
    """The module to hook and whether it is a pre-hook (on the module's input)."""
    if site not in SITES:
        raise SiteError(f"unknown site {site!r}: choose one of {', '.join(SITES)}")
    layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise SiteError(f"layer {layer} is out of range: the model has {len(layers)} layers (0-{len(layers) - 1})")
    block: Any = layers[layer]  # a model-specific decoder layer class
    if site == "resid":
        return block, False
    if site == "mlp":
        norm = getattr(block, "post_feedforward_layernorm", None)
        return (norm if norm is not None else block.mlp), False
    return block.self_attn.o_proj, True


def check_site(model: nn.Module, layer: int, site: str) -> None:
    """Raise SiteError naming the allowed values if the model has no such layer or site."""
    _hook_target(model, layer, site)


def site_width(model: nn.Module, site: str) -> int:
    """d_in of an SAE at this site: d_model, or n_heads * head_dim for attn."""
    module, _ = _hook_target(model, 0, site)
    if site == "attn":
        return int(module.in_features)  # type: ignore[arg-type]
    config: Any = model.config
    return int(config.get_text_config().hidden_size)


def _hidden(output: Any) -> Tensor:
    """The hidden-state tensor of a module output: element 0 of a tuple, else the tensor."""
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def _hooked(model: nn.Module, layer: int, site: str, fn: Callable[[Tensor], Tensor | None]) -> Iterator[None]:
    """Run fn on the site's (B, T, d) activation; a returned tensor replaces it."""
    module, pre = _hook_target(model, layer, site)
    if pre:

        def pre_hook(mod: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            out = fn(args[0])
            return None if out is None else (out, *args[1:])

        handle = module.register_forward_pre_hook(pre_hook)
    else:

        def hook(mod: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            out = fn(_hidden(output))
            if out is None:
                return None
            return (out, *output[1:]) if isinstance(output, tuple) else out

        handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def harvest(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None, layer: int, site: str) -> Tensor:
    """(B, T) token ids -> (B, T, d_in) activations at the site, stopping the forward pass there."""
    captured: list[Tensor] = []

    def grab(act: Tensor) -> None:
        captured.append(act.detach())
        raise _StopForward

    with _hooked(model, layer, site, grab), suppress(_StopForward):
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    if not captured:
        raise SiteError(f"the {site} hook of layer {layer} never ran")
    return captured[0]


@torch.no_grad()
def harvest_many(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None, sites: Sequence[tuple[int, str]]
) -> list[Tensor]:
    """(B, T) token ids -> one (B, T, d_in) activation per (layer, site), in order, from ONE forward pass.

    The pass stops once every site has been read, i.e. right after the deepest hooked module: later
    layers and the unembedding never run. Repeated sites share one hook.
    """
    wanted = list(dict.fromkeys(sites))
    if not wanted:
        raise SiteError("no site given: name at least one (layer, site)")
    captured: dict[tuple[int, str], Tensor] = {}

    def grab(key: tuple[int, str]) -> Callable[[Tensor], None]:
        def fn(act: Tensor) -> None:
            # a copy: later layers must not be able to change what was read (no in-place op does today)
            captured[key] = act.detach().clone()
            if len(captured) == len(wanted):
                raise _StopForward

        return fn

    with ExitStack() as stack:
        for layer, site in wanted:
            stack.enter_context(_hooked(model, layer, site, grab((layer, site))))
        with suppress(_StopForward):
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    missing = [f"{site} of layer {layer}" for layer, site in wanted if (layer, site) not in captured]
    if missing:
        raise SiteError(f"the hooks of {', '.join(missing)} never ran")
    return [captured[key] for key in sites]


@contextmanager
def splice(model: nn.Module, layer: int, site: str, replace: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Within the block, the site's activation a (B, T, d) is replaced by replace(a)."""
    with _hooked(model, layer, site, replace):
        yield
