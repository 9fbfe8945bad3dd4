"""Name -> function registries for rewards, advantage estimators and policy losses.

Configs and methods refer to these functions by name, so a user adds a method by registering
functions, not by editing the trainer::

    from thinklean.core.registry import register_reward

    @register_reward("my_length_reward")
    def my_length_reward(correct, lengths, penalty: float = 0.001): ...

One call convention for all three kinds (:func:`call_with_inputs`): the trainer calls ``fn`` with
keyword arguments only, the inputs it has that ``fn`` names as parameters, plus the config's
settings (``reward_kwargs``, ``advantage_kwargs``, ``loss_kwargs``). A function takes the inputs it
needs by name:

- reward -> ``float32[B]``: :data:`REWARD_INPUTS` ``correct[B], lengths[B], group_ids[B]``;
- advantage -> ``float32[B, T]``: :data:`ADVANTAGE_INPUTS` ``rewards[B], group_ids[B],
  response_mask[B, T], correct[B], lengths[B]``;
- loss -> ``(loss, metrics)`` with ``clip_frac`` and ``approx_kl`` in ``metrics``:
  :data:`LOSS_INPUTS` ``logprobs, old_logprobs, advantages, response_mask`` and ``entropy`` (``[b, T]``;
  ``entropy``: the current policy's detached entropy in nats at each response position, at the
  sampling temperature; the trainer calls the loss once per micro-batch) and the config's
  ``clip_low, clip_high, dual_clip``, ``agg`` (``loss_agg``), ``max_len`` (``max_new_tokens``).

A method's trainer may supply more inputs by name (L1's ``targets``, IAPO's ``info_gain``); the
config loader refuses a function whose required parameters neither the method's inputs nor the
settings give (:func:`signature_problems`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

__all__ = [
    "UnknownNameError",
    "register_reward",
    "register_advantage",
    "register_loss",
    "get_reward",
    "get_advantage",
    "get_loss",
    "list_rewards",
    "list_advantages",
    "list_losses",
    "REWARD_INPUTS",
    "ADVANTAGE_INPUTS",
    "LOSS_INPUTS",
    "call_with_inputs",
    "signature_problems",
]

REWARD_INPUTS = ("correct", "lengths", "group_ids")
ADVANTAGE_INPUTS = ("rewards", "group_ids", "response_mask", "correct", "lengths")
LOSS_INPUTS = ("logprobs", "old_logprobs", "advantages", "response_mask", "entropy", "clip_low", "clip_high", "dual_clip",
               "agg", "max_len")

F = TypeVar("F", bound=Callable)

_REWARDS: dict[str, Callable] = {}
_ADVANTAGES: dict[str, Callable] = {}
_LOSSES: dict[str, Callable] = {}


class UnknownNameError(KeyError, ValueError):
    """Lookup of a name nobody registered. Is both a ``KeyError`` and a ``ValueError``."""

    def __str__(self) -> str:  # KeyError would print the message wrapped in quotes
        return str(self.args[0]) if self.args else ""


def _register(table: dict[str, Callable], kind: str, name: str) -> Callable[[F], F]:
    if not isinstance(name, str) or not name:
        raise ValueError(f"a {kind} name must be a non-empty string, got {name!r}")

    def decorator(fn: F) -> F:
        if name in table:
            existing = table[name]
            raise ValueError(
                f"{kind} {name!r} is already registered (by {existing.__module__}.{existing.__qualname__}); "
                f"choose another name"
            )
        table[name] = fn
        return fn

    return decorator


def _get(table: dict[str, Callable], kind: str, name: str) -> Callable:
    try:
        return table[name]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(table)) or "(none registered)"
        plural = f"{kind}es" if kind.endswith("s") else f"{kind}s"
        raise UnknownNameError(f"unknown {kind} {name!r}; valid {plural}: {valid}") from None


def register_reward(name: str) -> Callable[[F], F]:
    """Decorator registering a reward returning ``float32[B]`` (inputs by name: :data:`REWARD_INPUTS`)."""
    return _register(_REWARDS, "reward", name)


def register_advantage(name: str) -> Callable[[F], F]:
    """Decorator registering an advantage estimator returning ``float32[B, T]`` (:data:`ADVANTAGE_INPUTS`)."""
    return _register(_ADVANTAGES, "advantage estimator", name)


def register_loss(name: str) -> Callable[[F], F]:
    """Decorator registering a policy loss returning ``(loss, metrics)`` (:data:`LOSS_INPUTS`)."""
    return _register(_LOSSES, "loss", name)


def get_reward(name: str) -> Callable:
    """The reward registered as ``name``; raises :class:`UnknownNameError` listing valid names."""
    return _get(_REWARDS, "reward", name)


def get_advantage(name: str) -> Callable:
    """The advantage estimator registered as ``name``; raises :class:`UnknownNameError`."""
    return _get(_ADVANTAGES, "advantage estimator", name)


def get_loss(name: str) -> Callable:
    """The loss registered as ``name``; raises :class:`UnknownNameError`."""
    return _get(_LOSSES, "loss", name)


def list_rewards() -> list[str]:
    """Registered reward names, sorted."""
    return sorted(_REWARDS)


def list_advantages() -> list[str]:
    """Registered advantage estimator names, sorted."""
    return sorted(_ADVANTAGES)


def list_losses() -> list[str]:
    """Registered loss names, sorted."""
    return sorted(_LOSSES)


def _parameters(fn: Callable) -> tuple[dict[str, inspect.Parameter], bool]:
    """``fn``'s parameters that can be passed by keyword, and whether it takes ``**kwargs``."""
    params = inspect.signature(fn).parameters.values()
    named = {p.name: p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def call_with_inputs(fn: Callable, inputs: Mapping[str, Any], settings: Mapping[str, Any]) -> Any:
    """``fn(**inputs, **settings)`` with only the inputs ``fn`` names (all of them if it takes ``**kwargs``)."""
    named, var_keyword = _parameters(fn)
    return fn(**{k: v for k, v in inputs.items() if var_keyword or k in named}, **settings)


def signature_problems(fn: Callable, settings: Collection[str], inputs: Collection[str]) -> tuple[list[str], list[str], list[str]]:
    """What is wrong with calling ``fn`` on ``inputs`` (names) and ``settings`` (keys):
    ``(unknown settings, required parameters nothing gives, valid setting names)``. A setting
    that is also an input is unknown: the trainer passes that one."""
    named, var_keyword = _parameters(fn)
    valid = [name for name in named if name not in inputs]
    unknown = sorted(k for k in settings if k in inputs or not (var_keyword or k in named))
    missing = [n for n, p in named.items() if p.default is p.empty and n not in inputs and n not in settings]
    return unknown, missing, valid
