"""YAML configs for the RL trainer: method defaults <- user file <- CLI flags, strictly checked.

An unknown key or a value of the wrong type fails before any work with
``FILE:LINE: unknown key 'lrr' (valid keys: ...)`` and exit code 2.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from thinklean.train.rl import ConfigError, RLConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(RLConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(RLConfig)}


def _accepts(annotation: Any, value: Any) -> Any:
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
                return _accepts(option, value)
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
    if base in (int, str, bool) and type(value) is base:
        return value
    raise TypeError


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def read_yaml_config(path: str | Path) -> dict[str, tuple[Any, int]]:
    """Top-level ``key: value`` pairs of a YAML mapping with each key's 1-based line number."""
    path = Path(path)
    try:
        text = path.read_text()
        root = yaml.compose(text)
    except FileNotFoundError as e:
        raise ConfigError(f"{path}:0: file not found (expected a YAML config)") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ConfigError(f"{path}:{mark.line + 1 if mark else 0}: invalid YAML: {getattr(e, 'problem', e)}") from e
    if root is None:
        return {}
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{path}:{root.start_mark.line + 1}: expected a mapping of config keys")
    values = yaml.safe_load(text)
    return {key.value: (values[key.value], key.start_mark.line + 1) for key, _ in root.value}


def apply_values(config: RLConfig, values: dict[str, tuple[Any, int]], source: str) -> RLConfig:
    """Return ``config`` with ``values`` applied; ``source`` names the file (or ``--set``).

    Dict-valued settings (``reward_kwargs``, ``advantage_kwargs``, ``method_kwargs``) are
    merged key by key, so overriding one keyword keeps the method's other defaults.
    """
    types_ = _field_types()
    changes = {}
    for key, (value, line) in values.items():
        if key not in types_:
            raise ConfigError(f"{source}:{line}: unknown key {key!r} (valid keys: {', '.join(sorted(types_))})")
        try:
            changes[key] = _accepts(types_[key], value)
            if isinstance(changes[key], dict):  # dict settings (reward_kwargs, ...) merge key by key
                changes[key] = {**getattr(config, key), **changes[key]}
        except TypeError:
            raise ConfigError(
                f"{source}:{line}: key {key!r} must be {_type_name(types_[key])}, got {type(value).__name__} {value!r}"
            ) from None
    return dataclasses.replace(config, **changes)


def parse_overrides(pairs: list[str]) -> dict[str, tuple[Any, int]]:
    """``["lr=1e-5", "reward_kwargs={weight: 0.5}"]`` -> values (YAML-parsed), line 0."""
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set:0: expected KEY=VALUE, got {pair!r}")
        out[key.strip()] = (yaml.safe_load(raw), 0)
    return out


def method_config_path(method: str) -> Path:
    return CONFIG_DIR / f"{method}.yaml"


def load_config(method: str, user_file: str | Path | None = None, overrides: dict[str, tuple[Any, int]] | None = None) -> RLConfig:
    """Defaults of ``configs/METHOD.yaml``, then ``user_file``, then ``overrides``."""
    path = method_config_path(method)
    config = RLConfig(method=method)
    if path.is_file():
        config = apply_values(config, read_yaml_config(path), str(path))
    if user_file is not None:
        config = apply_values(config, read_yaml_config(user_file), str(user_file))
    if overrides:
        config = apply_values(config, overrides, "--set")
    if config.method != method:
        raise ConfigError(f"{user_file}:0: config says method {config.method!r} but --method is {method!r}")
    return config
