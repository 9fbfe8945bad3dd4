"""Typed settings: the config error type, value conversion to a type hint, and a method's
settings dataclass built from ``method_kwargs``. Imports nothing of the package."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any


class ConfigError(ValueError):
    """A bad config file, override or combination of settings, reported as
    ``FILE:LINE: what (what is accepted)`` where it comes from a file (``thinklean.methods.config``)."""


def accepts(annotation: Any, value: Any) -> Any:
    """``value`` converted to ``annotation`` (int -> float allowed), or raise TypeError."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return accepts(option, value)
            except TypeError:
                continue
        raise TypeError
    base = origin or annotation
    if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if base is float and isinstance(value, str):
        try:  # YAML 1.1 reads "3e-4" (no dot) as a string
            return float(value)
        except ValueError:
            raise TypeError from None
    if base is dict and isinstance(value, dict):
        return dict(value)
    if base is list and isinstance(value, list):
        return list(value)
    if base in (int, str, bool) and type(value) is base:
        return value
    raise TypeError


def type_name(annotation: Any) -> str:
    """How a type hint reads in an error message, e.g. ``float`` or ``str | None``."""
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def build_settings(settings: type | None, values: Mapping[str, Any], method: str,
                   where: Callable[[str | None], str] | None = None) -> Any:
    """``settings(**values)`` with each value converted to its field's type; ``None`` for a
    method without settings. Raises :class:`ConfigError` naming the key and what is accepted
    (the dataclass's ``__post_init__`` may raise it for ranges), prefixed with
    ``where("method_kwargs.KEY")`` (``FILE:LINE``; ``where(None)``: the whole ``method_kwargs``)
    when given."""
    def fail(key: str | None, message: str) -> ConfigError:
        return ConfigError(f"{where(key and f'method_kwargs.{key}')}: {message}" if where else message)

    if settings is None:
        if values:
            raise fail(next(iter(values)), f"method_kwargs: {method} takes no method_kwargs, got {', '.join(values)}")
        return None
    hints = typing.get_type_hints(settings)
    fields = {f.name: hints[f.name] for f in dataclasses.fields(settings)}
    unknown = [key for key in values if key not in fields]
    if unknown:
        raise fail(unknown[0], f"method_kwargs: unknown key(s) {', '.join(unknown)} for {method} "
                               f"(valid keys: {', '.join(fields)})")
    converted = {}
    for key, value in values.items():
        try:
            converted[key] = accepts(fields[key], value)
        except TypeError:
            raise fail(key, f"method_kwargs.{key} for {method} must be {type_name(fields[key])}, "
                            f"got {type(value).__name__} {value!r}") from None
    try:
        return settings(**converted)
    except ConfigError as e:
        raise fail(None, str(e)) from None
