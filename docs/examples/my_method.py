"""my_method: GRPO whose reward is correctness minus a small price per response token.

A complete thinklean method in one file, loaded without editing thinklean:

    thinklean train --plugin my_method.py --method my_method --steps 2 --output runs/my_method
    thinklean demo --plugin my_method.py --methods grpo,my_method --quick
"""

from torch import Tensor

from thinklean.core import register_reward
from thinklean.methods import MethodSpec, register_method
from thinklean.train.rl import RLTrainer


@register_reward("correct_minus_length")
def correct_minus_length(correct: Tensor, lengths: Tensor, price: float = 0.001) -> Tensor:
    """1 for a correct answer, minus ``price`` per response token."""
    return correct.float() - price * lengths.float()


register_method(MethodSpec(
    name="my_method",
    trainer=RLTrainer,  # the generic loop; subclass it to override hooks (docs/methods.md)
    summary="GRPO on correctness minus 0.001 per response token",
    config={"reward": "correct_minus_length", "reward_kwargs": {"price": 0.001},
            "advantage": "grpo", "loss_agg": "seq-mean-token-mean", "lr": 2.0e-5},
))
