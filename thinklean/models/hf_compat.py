"""Forward-argument names that changed between transformers releases, read off the model.

thinklean supports transformers >= 4.51. Since then the KV-cache argument and output field went
from ``past_key_values`` to ``cache`` (5.25 has it; the old name warns there and goes in 5.40) and the logits
limit from ``num_logits_to_keep`` to ``logits_to_keep`` (4.50). Callers build their keyword
arguments with these helpers instead of hard-coding one release's names.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch


def unwrap_ddp(model: torch.nn.Module) -> torch.nn.Module:
    """The module a wrapper holds in ``.module`` (DDP's, DataParallel's), else ``model``: for its
    attributes and embeddings; forward calls still go through the wrapper, so DDP synchronises
    the gradients."""
    return getattr(model, "module", model)


def _forward_parameters(model: torch.nn.Module) -> Any:
    return _class_forward_parameters(type(unwrap_ddp(model)))


@functools.lru_cache(maxsize=None)
def _class_forward_parameters(model_class: type) -> Any:
    return inspect.signature(model_class.forward).parameters


def cache_argument(model: torch.nn.Module) -> str:
    """``"cache"`` (newer transformers, 5.25 included) or ``"past_key_values"``: the KV-cache keyword of ``model``."""
    return "cache" if "cache" in _forward_parameters(model) else "past_key_values"


def logits_to_keep_argument(model: torch.nn.Module) -> str | None:
    """``logits_to_keep`` (takes an index tensor), ``num_logits_to_keep`` (old, int only) or None."""
    parameters = _forward_parameters(model)
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in parameters:
            return name
    return None


def output_cache(output: Any) -> Any:
    """The KV cache of a model output, under either field name."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values
