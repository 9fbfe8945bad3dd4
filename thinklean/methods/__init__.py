"""Methods by name: each is the generic :class:`~thinklean.train.rl.RLTrainer` (or a small
subclass overriding its hooks) plus a default config in ``thinklean/configs/NAME.yaml``."""

from __future__ import annotations

from thinklean.methods.bupo import BuPOTrainer
from thinklean.methods.hmpo import HMPOTrainer
from thinklean.methods.iapo import IAPOTrainer
from thinklean.methods.lhrm import HGPOTrainer
from thinklean.methods.length_baselines import L1Trainer, ThinkPruneTrainer
from thinklean.methods.litereason import LiteReasonTrainer
from thinklean.train.rl import RLTrainer

METHODS: dict[str, type[RLTrainer]] = {
    "grpo": RLTrainer,
    "drgrpo": RLTrainer,
    "dapo": RLTrainer,
    "rloo": RLTrainer,
    "hmpo": HMPOTrainer,
    "l1": L1Trainer,
    "thinkprune": ThinkPruneTrainer,
    "bupo": BuPOTrainer,
    "iapo": IAPOTrainer,
    "hgpo": HGPOTrainer,
    "litereason": LiteReasonTrainer,
}


def get_trainer_class(method: str) -> type[RLTrainer]:
    """The trainer class registered as ``method`` in :data:`METHODS`.

    Raises:
        KeyError: ``method`` is not registered; the message lists the available names.
    """
    if method not in METHODS:
        raise KeyError(f"unknown method {method!r} (available: {', '.join(sorted(METHODS))})")
    return METHODS[method]
