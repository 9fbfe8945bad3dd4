"""YAML configs for the RL trainer: method defaults <- user file <- CLI flags, strictly checked.

An unknown key or a value of the wrong type fails before any work with
``FILE:LINE: unknown key 'lrr' (valid keys: ...)`` and exit code 2.
"""

from __future__ import annotations

import dataclasses
import math
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


# settings that must be whole numbers >= 1, and numbers that must not be negative (the rest of the
# float settings need only be finite); lr must be above 0 and top_p in (0, 1]
AT_LEAST_ONE = ("steps", "prompts_per_step", "samples_per_prompt", "max_new_tokens", "ppo_epochs", "mini_batches",
                "micro_batch_size", "train_problems", "eval_problems", "keep_last", "rollout_batch_size")
NOT_NEGATIVE = ("eval_every", "save_every", "warmup_steps", "keep_shortest", "micro_batch_tokens",
                "max_resample_rounds", "temperature", "eval_temperature", "weight_decay", "grad_clip", "kl_coef",
                "kl_in_reward", "clip_low", "clip_high", "dual_clip")


def _range_problem(key: str, value: Any) -> str | None:
    """What is wrong with the size or range of setting ``key``'s ``value``, or ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return "a finite number"
    if key in AT_LEAST_ONE and value < 1:
        return "at least 1"
    if key in NOT_NEGATIVE and value is not None and value < 0:
        return "0 or more"
    if key == "lr" and value <= 0:
        return "more than 0"
    if key == "top_p" and not 0 < value <= 1:
        return "in (0, 1]"
    return None


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def read_yaml_config(path: str | Path) -> dict[str, tuple[Any, int]]:
    """Top-level ``key: value`` pairs of a YAML mapping with each key's 1-based line number."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        root = yaml.compose(text)
        values = yaml.safe_load(text)
    except FileNotFoundError as e:
        raise ConfigError(f"{path}:0: file not found (expected a YAML config)") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}:0: cannot read the file ({e}; expected a UTF-8 YAML config)") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ConfigError(f"{path}:{mark.line + 1 if mark else 0}: invalid YAML: {getattr(e, 'problem', e)}") from e
    if root is None:
        return {}
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{path}:{root.start_mark.line + 1}: expected a mapping of config keys")
    out = {}
    for key, _ in root.value:
        line = key.start_mark.line + 1
        if not isinstance(key, yaml.ScalarNode) or key.tag != "tag:yaml.org,2002:str":
            raise ConfigError(f"{path}:{line}: a key must be a config name, got {key.tag.rpartition(':')[2]} "
                              "(expected KEY: VALUE lines)")
        if key.value in out:
            raise ConfigError(f"{path}:{line}: key {key.value!r} is set twice (expected each key once)")
        out[key.value] = (values[key.value], line)
    return out


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
        if (expected := _range_problem(key, changes[key])) is not None:
            raise ConfigError(f"{source}:{line}: key {key!r} must be {expected}, got {value!r}")
    return dataclasses.replace(config, **changes)


def parse_overrides(pairs: list[str]) -> dict[str, tuple[Any, int]]:
    """``["lr=1e-5", "reward_kwargs={weight: 0.5}"]`` -> values (YAML-parsed), line 0."""
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set lr=1e-5")
        try:
            out[key.strip()] = (yaml.safe_load(raw), 0)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {pair!r}: the value is not valid YAML ({getattr(e, 'problem', None) or e}; "
                              "expected e.g. 0.5, text or {weight: 0.5})") from None
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
