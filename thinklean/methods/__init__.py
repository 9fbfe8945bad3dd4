"""Methods by name: each module here registers a :class:`~thinklean.methods.registry.MethodSpec`
(the generic :class:`~thinklean.train.rl.RLTrainer` or a small subclass overriding its hooks,
plus a default config in ``thinklean/configs/NAME.yaml``); a plugin file registers its own
(``thinklean train --plugin FILE.py``, :func:`load_plugin`). docs/methods.md has the contract."""

from __future__ import annotations

from thinklean.methods.registry import (
    DEMO_ROWS,
    METHODS,
    DataTask,
    DemoStage,
    MethodFlag,
    MethodSpec,
    StartModel,
    get_method,
    get_trainer_class,
    list_methods,
    load_plugin,
    register_method,
)

# the built-in methods register themselves, in the order of `--help` and `demo --methods all`
from thinklean.methods import grpo, hmpo, length_baselines, length_rules, bupo, iapo, lhrm, litereason  # noqa: E402,F401,I001

__all__ = ["DEMO_ROWS", "METHODS", "DataTask", "DemoStage", "MethodFlag", "MethodSpec", "StartModel", "get_method",
           "get_trainer_class", "list_methods", "load_plugin", "register_method"]
