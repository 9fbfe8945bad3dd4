"""A method's RL config from YAML: method defaults <- user file <- CLI flags, strictly checked.

An unknown key or a value of the wrong type fails before any work with
``FILE:LINE: unknown key 'lrr' (valid keys: ...)`` and exit code 2; so do ``method_kwargs`` that
do not fit the method's settings dataclass and reward, estimator or loss settings that do not
fit the function's signature (:func:`check_config`).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from thinklean.core.registry import (ADVANTAGE_INPUTS, LOSS_INPUTS, REWARD_INPUTS, UnknownNameError, get_advantage,
                                     get_loss, get_reward, signature_problems)
from thinklean.methods.registry import METHODS, MethodSpec, get_method
from thinklean.train.rl import RLConfig
from thinklean.train.settings import ConfigError, accepts, build_settings, type_name

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(RLConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(RLConfig)}


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
            changes[key] = accepts(types_[key], value)
            if isinstance(changes[key], dict):  # dict settings (reward_kwargs, ...) merge key by key
                changes[key] = {**getattr(config, key), **changes[key]}
        except TypeError:
            raise ConfigError(
                f"{source}:{line}: key {key!r} must be {type_name(types_[key])}, got {type(value).__name__} {value!r}"
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
    """The shipped YAML of ``method``: ``thinklean/configs/METHOD.yaml`` (it may not exist)."""
    return CONFIG_DIR / f"{method}.yaml"


def _origins(values: dict[str, tuple[Any, int]], source: str) -> dict[str, str]:
    """``FILE:LINE`` of each key of ``values`` and of each key of its dict values (``key.sub``)."""
    out = {}
    for key, (value, line) in values.items():
        out[key] = f"{source}:{line}"
        if isinstance(value, dict):
            out.update({f"{key}.{sub}": f"{source}:{line}" for sub in value})
    return out


def load_config(method: str, user_file: str | Path | None = None, overrides: dict[str, tuple[Any, int]] | None = None) -> RLConfig:
    """The method's defaults (``configs/METHOD.yaml``, else its spec's ``config``), then
    ``user_file``, then ``overrides``, checked by :func:`check_config`."""
    try:
        spec = get_method(method)
    except UnknownNameError as e:
        raise ConfigError(f"--method {method}: {e}") from None
    path = method_config_path(method)
    layers = []
    if path.is_file():
        layers.append((read_yaml_config(path), str(path)))
    elif spec.config is not None:
        layers.append(({key: (value, 0) for key, value in spec.config.items()}, f"MethodSpec({method!r}).config"))
    if user_file is not None:
        layers.append((read_yaml_config(user_file), str(user_file)))
    if overrides:
        layers.append((overrides, "--set"))
    config, origins = RLConfig(method=method), {}
    for values, source in layers:
        config = apply_values(config, values, source)
        origins.update(_origins(values, source))
    if config.method != method:
        raise ConfigError(f"{origins['method']}: config says method {config.method!r} but --method is {method!r}")

    def where(key: str | None) -> str:
        key = key or "method_kwargs"
        return origins.get(key) or origins.get(key.partition(".")[0], "RLConfig defaults")

    check_config(config, spec, where)
    return config


def check_config(config: RLConfig, spec: MethodSpec, where: Callable[[str | None], str]) -> None:
    """Raise :class:`ConfigError` at ``where(key)`` (``FILE:LINE`` of the config key) unless
    ``method_kwargs`` fit the method's settings dataclass and the reward, advantage estimator and
    loss are registered and take the config's settings (``*_kwargs``) and the method's inputs
    (:mod:`thinklean.core.registry`)."""
    build_settings(spec.settings, config.method_kwargs, config.method, where)
    for kind, getter, base, extra in (("reward", get_reward, REWARD_INPUTS, spec.reward_inputs),
                                      ("advantage", get_advantage, ADVANTAGE_INPUTS, spec.advantage_inputs),
                                      ("loss", get_loss, LOSS_INPUTS, ())):
        name, values = getattr(config, kind), getattr(config, f"{kind}_kwargs")
        try:
            fn = getter(name)
        except UnknownNameError as e:
            raise ConfigError(f"{where(kind)}: {e}") from None
        unknown, missing, valid = signature_problems(fn, values, (*base, *extra))
        if unknown:
            raise ConfigError(f"{where(f'{kind}_kwargs.{unknown[0]}')}: {kind}_kwargs: unknown key(s) "
                              f"{', '.join(unknown)} for {kind} {name!r} (valid keys: {', '.join(valid) or 'none'})")
        # methods whose trainers add inputs of this kind (no method adds loss inputs)
        providers = [m for m, spec in METHODS.items() if set(missing) <= set(getattr(spec, f"{kind}_inputs", ()))]
        if missing and providers:
            raise ConfigError(f"{where(kind)}: {kind} {name!r} needs {', '.join(missing)}, which --method "
                              f"{config.method} does not provide (use --method {' or --method '.join(providers)})")
        if missing:
            raise ConfigError(f"{where(kind)}: {kind} {name!r} needs {kind}_kwargs {', '.join(missing)} "
                              f"(no default; the trainer passes {', '.join((*base, *extra))})")
