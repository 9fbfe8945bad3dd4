"""Name -> function registries for rewards, advantage estimators and policy losses.

Configs and methods refer to these functions by name, so a user adds a method by registering
functions, not by editing the trainer::

    from thinklean.core.registry import register_reward

    @register_reward("my_length_reward")
    def my_length_reward(correct, lengths, group_ids, **config): ...

Call conventions of each kind (keyword arguments after the tensors come from the config):
- reward: ``fn(correct[B], lengths[B], group_ids[B], **config) -> float32[B]``;
- advantage: ``fn(rewards[B], group_ids[B], response_mask[B, T], ...) -> float32[B, T]``
  (estimators that need more inputs, e.g. IAPO/HGPO, take them as extra arguments);
- loss: ``fn(logprobs, old_logprobs, advantages, response_mask, **config) -> (loss, metrics)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

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
]

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
        raise UnknownNameError(f"unknown {kind} {name!r}; valid {kind}s: {valid}") from None


def register_reward(name: str) -> Callable[[F], F]:
    """Decorator registering a reward ``fn(correct, lengths, group_ids, **config) -> [B]``."""
    return _register(_REWARDS, "reward", name)


def register_advantage(name: str) -> Callable[[F], F]:
    """Decorator registering an advantage estimator returning ``[B, T]``."""
    return _register(_ADVANTAGES, "advantage estimator", name)


def register_loss(name: str) -> Callable[[F], F]:
    """Decorator registering a policy loss returning ``(loss, metrics)``."""
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
