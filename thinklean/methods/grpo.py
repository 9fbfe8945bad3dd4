"""The methods that are the generic loop with another config: GRPO, Dr.GRPO, DAPO and RLOO
(``thinklean/configs/NAME.yaml``). The demo also runs GRPO with two length rewards, ``kimi`` and
``shorterbetter`` (any registered reward works: ``thinklean train --method grpo --reward kimi``)."""

from __future__ import annotations

from thinklean.methods.registry import MethodSpec, register_method
from thinklean.train.rl import RLTrainer

register_method(MethodSpec("grpo", RLTrainer, "GRPO: group mean/std-normalised advantages (Shao et al. 2024)",
                           demo_rows={"grpo": {}, "kimi": {"reward": "kimi"},
                                      "shorterbetter": {"reward": "shorterbetter"}}))
register_method(MethodSpec("drgrpo", RLTrainer, "Dr.GRPO: no std normalisation, constant-length loss (Liu et al. 2025)"))
register_method(MethodSpec("dapo", RLTrainer, "DAPO: clip-higher, dynamic sampling, overlong penalty (Yu et al. 2025)"))
register_method(MethodSpec("rloo", RLTrainer, "RLOO: leave-one-out baseline advantages"))
