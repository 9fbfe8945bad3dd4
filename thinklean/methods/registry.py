"""The method registry: one :class:`MethodSpec` per method, registered by the method's own module
(``thinklean/methods/*.py``) or by a user's plugin file (``thinklean train --plugin FILE.py``).

A spec says everything the CLI, the config loader and the demo need to know about a method::

    from thinklean.methods import MethodSpec, register_method
    from thinklean.train.rl import RLTrainer

    register_method(MethodSpec("my_method", RLTrainer, "GRPO on my reward",
                               config={"reward": "my_reward", "advantage": "grpo"}))
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from thinklean.core.registry import UnknownNameError

if TYPE_CHECKING:
    from thinklean.train.rl import RLTrainer

__all__ = ["DataTask", "DemoStage", "MethodFlag", "MethodSpec", "StartModel", "METHODS", "DEMO_ROWS", "register_method",
           "get_method", "get_trainer_class", "list_methods", "load_plugin"]


@dataclass(frozen=True)
class MethodFlag:
    """A ``thinklean train`` flag that only this method accepts; it sets ``method_kwargs[key]``."""

    flag: str  # e.g. "--layer"
    key: str  # the method_kwargs key it sets, e.g. "layer"
    help: str
    type: type = str  # str, int or float
    at_least: float | None = None  # smallest accepted number
    choices: tuple[str, ...] | None = None  # the accepted values, when there are few


@dataclass(frozen=True)
class DataTask:
    """A ``thinklean data NAME`` dataset the method builds by sampling a model.

    The command loads ``--model`` (default: the shipped base model) and ``--n`` training problems
    of ``--data``, writes ``build(model, tokenizer, examples, seed=SEED, **flags)`` to
    ``OUTPUT/NAME.jsonl`` and prints ``summary(rows)``. Each flag passes ``build`` the keyword
    argument ``flag.key`` (default: ``build``'s default for it)."""

    name: str
    help: str  # for --help: what the rows are
    build: Callable[..., list[dict]]
    summary: Callable[[list[dict]], str]
    flags: tuple[MethodFlag, ...] = ()


@dataclass(frozen=True)
class DemoStage:
    """What the demo hands a method's hooks for one row."""

    output: Path  # the demo's OUTPUT directory
    row_dir: Path  # OUTPUT/ROW
    base_model: Path
    budget: Any  # thinklean.demo.DemoBudget: steps, max_new_tokens, eval_temperature, ...
    seed: int
    quick: bool
    report_to: str
    console: Any  # rich.console.Console


@dataclass(frozen=True)
class StartModel:
    """A model the demo builds from the base model before training the method from it; the demo
    reports it as row ``row`` (evaluated with its method's hooks)."""

    row: str
    description: str  # for --help: "`METHOD` first builds DESCRIPTION, the 'ROW' row"
    build: Callable[[DemoStage], Path]  # returns the model directory; returns at once when already built
    work_dirs: tuple[str, ...] = ()  # directories under OUTPUT besides OUTPUT/ROW that the build writes
    # the build's settings for `quick` (dataclasses or JSON values): recorded with the start row and
    # the method's row, so a demo directory built under another recipe is refused, not re-used
    recipe: Callable[[bool], Any] | None = None


@dataclass(frozen=True)
class MethodSpec:
    """A method: its name, trainer, defaults, the inputs its trainer supplies and its optional parts.

    ``trainer.Settings`` (a dataclass, or ``None``) types ``method_kwargs``; ``config`` holds the
    defaults when the method has no ``thinklean/configs/NAME.yaml``. ``reward_inputs`` /
    ``advantage_inputs`` name the keyword inputs the trainer's ``reward_inputs`` /
    ``advantage_inputs`` hooks add to the generic ones, so a reward or estimator that needs them
    is refused at load for the methods that do not supply them.
    """

    name: str
    trainer: type[RLTrainer]
    summary: str  # one line for --help
    config: Mapping[str, Any] | None = None
    reward_inputs: tuple[str, ...] = ()
    advantage_inputs: tuple[str, ...] = ()
    flags: tuple[MethodFlag, ...] = ()
    data: DataTask | None = None  # `thinklean data NAME`: the dataset the method's start model trains on
    start: StartModel | None = None
    # demo rows: row name -> config overrides (default: one row named after the method)
    demo_rows: Mapping[str, Mapping[str, Any]] | None = None
    demo_settings: Callable[[int], Mapping[str, Any]] | None = None  # method_kwargs for a demo of N steps
    # replaces the demo's evaluation of a row's model (writes DemoStage.row_dir/eval.json), start row included
    evaluate: Callable[[DemoStage, Path, Any], dict[str, Any]] | None = None
    # extra entries of a row's demo summary (start row included), e.g. {"hybrid": {...}}
    extra_results: Callable[[DemoStage, Path, Any], dict[str, Any]] | None = None
    # extra report images once every row is done: (stage of the row, names of all rows) -> image paths
    report: Callable[[DemoStage, list[str]], list[Path]] | None = None

    @property
    def settings(self) -> type | None:
        """The dataclass of ``method_kwargs`` (the trainer's ``Settings``)."""
        return self.trainer.Settings


METHODS: dict[str, MethodSpec] = {}
# demo row -> (method, config overrides), in registration order; read by `thinklean demo --methods all`
DEMO_ROWS: dict[str, tuple[str, dict[str, Any]]] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Register ``spec`` under ``spec.name`` (and its demo rows); returns it.

    Raises:
        ValueError: the name or one of its demo or start rows is taken.
    """
    if not spec.name.isidentifier():
        raise ValueError(f"a method name must be a Python identifier (letters, digits, _), got {spec.name!r}")
    if spec.name in METHODS:
        raise ValueError(f"method {spec.name!r} is already registered; choose another name")
    rows = dict(spec.demo_rows) if spec.demo_rows is not None else {spec.name: {}}
    starts = {m.start.row for m in METHODS.values() if m.start is not None}
    taken = [row for row in rows if row in DEMO_ROWS or row in starts]
    if spec.start is not None and spec.start.row in DEMO_ROWS:
        taken.append(spec.start.row)
    if taken:
        raise ValueError(f"method {spec.name!r}: demo row(s) {', '.join(taken)} already exist; choose other names")
    if spec.data is not None and (owner := next((m.name for m in METHODS.values()
                                                  if m.data is not None and m.data.name == spec.data.name), None)):
        raise ValueError(f"method {spec.name!r}: data task {spec.data.name!r} already exists (of {owner}); "
                         "choose another name")
    flags = {flag.flag: m.name for m in METHODS.values() for flag in m.flags}
    if clash := [f"{flag.flag} (of {flags[flag.flag]})" for flag in spec.flags if flag.flag in flags]:
        raise ValueError(f"method {spec.name!r}: flag(s) {', '.join(clash)} already exist; choose other flags")
    METHODS[spec.name] = spec
    DEMO_ROWS.update({row: (spec.name, dict(overrides)) for row, overrides in rows.items()})
    return spec


def get_method(name: str) -> MethodSpec:
    """The spec registered as ``name``; :class:`UnknownNameError` lists the registered names."""
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownNameError(f"unknown method {name!r} (available: {', '.join(METHODS)})") from None


def get_trainer_class(method: str) -> type[RLTrainer]:
    """The trainer class of the method registered as ``method``."""
    return get_method(method).trainer


def list_methods() -> list[str]:
    """Registered method names, in registration order."""
    return list(METHODS)


def load_plugin(path: str | Path) -> ModuleType:
    """Import the Python file ``path`` (once per file per process), which registers its methods,
    rewards or estimators through the public API.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: ``path`` is not a ``.py`` file.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path} (expected a Python file that registers a method)")
    if path.suffix != ".py":
        raise ValueError(f"{path} is not a .py file (expected a Python file that registers a method)")
    name = f"thinklean_plugin_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
