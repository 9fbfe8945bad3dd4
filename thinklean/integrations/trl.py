"""TRL integration: thinklean's rewards inside TRL's ``GRPOTrainer``.

Two pieces, for users who already train with TRL:

- :func:`reward_funcs` turns thinklean rewards whose value for a completion depends on that
  completion alone (``correctness``, ``format`` and the registered sequence rewards
  ``thinkprune``, ``cosine``, ``overlong``, ``l1``) into TRL reward functions
  ``fn(prompts, completions, **kwargs) -> list[float]``; the gold answer comes from a dataset
  column ``answer``.
- :class:`ThinkleanGRPOTrainer` is a ``GRPOTrainer`` whose first reward is any registered
  thinklean reward, computed on whole groups (HMPO's budget is the median length of the
  group's correct completions, so it cannot be a per-completion function). It logs the HMPO
  budget statistics next to TRL's metrics::

      trainer = ThinkleanGRPOTrainer(model, reward="hmpo", reward_kwargs={"lam": 0.8},
                                     args=GRPOConfig(...), train_dataset=ds, processing_class=tok)

Supported TRL versions: ``>=1.0,<2`` (:data:`SUPPORTED_TRL`). The trainer overrides
``GRPOTrainer._calculate_rewards(inputs, prompts, completions, completion_ids_list)``, which in
those versions returns the rewards of *all* processes (``[N, n_funcs]``, gathered in process
order, each group of ``num_generations`` completions contiguous) before TRL forms advantages
and keeps its own slice; and it logs through ``GRPOTrainer._log_metric``. Both were checked in
the source of TRL 1.0.0, 1.6.0, 1.10.0, 1.13.0, 1.15.0 and 1.16.0; tested with 1.16.0
(transformers 5.23, torch 2.13). Other versions fail at construction with a message.

Lengths are completion token counts as TRL generated them (a final EOS included), the same
count thinklean's own rollouts use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

try:
    from trl import GRPOTrainer
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("thinklean.integrations.trl needs TRL: pip install 'thinklean[trl]'") from error

from thinklean.core.registry import get_reward, list_rewards
from thinklean.data.grading import format_ok, grade
from thinklean.methods.hmpo import budget_stats

__all__ = [
    "SUPPORTED_TRL",
    "SEQUENCE_REWARDS",
    "RewardBatch",
    "SequenceReward",
    "ThinkleanGRPOTrainer",
    "check_trl_version",
    "reward_funcs",
]

SUPPORTED_TRL = ">=1.0,<2"
# Registered rewards whose value for one completion ignores the rest of its group.
SEQUENCE_REWARDS = ("correctness", "thinkprune", "cosine", "overlong", "l1")
Verifier = Callable[[str, str], bool]


def check_trl_version(version: str | None = None) -> str:
    """Raise ``ImportError`` unless TRL (or ``version``) is in :data:`SUPPORTED_TRL`; return it."""
    from packaging.specifiers import SpecifierSet

    if version is None:
        import trl

        version = trl.__version__
    if version not in SpecifierSet(SUPPORTED_TRL, prereleases=True):
        raise ImportError(
            f"ThinkleanGRPOTrainer supports trl{SUPPORTED_TRL} (it overrides GRPOTrainer._calculate_rewards), "
            f"but trl {version} is installed; pip install 'trl{SUPPORTED_TRL}'"
        )
    return version


def _completion_texts(completions: Sequence[Any], completion_ids: Sequence[Sequence[int]] | None, tokenizer: Any) -> list[str]:
    """Completion strings. With a tokenizer, re-decode the ids keeping special tokens: TRL decodes
    with ``skip_special_tokens=True``, which deletes the think tags of the embedded tokenizer."""
    if tokenizer is not None and completion_ids is not None:
        return tokenizer.batch_decode([list(ids) for ids in completion_ids], skip_special_tokens=False)
    # conversational completions are [{"role": "assistant", "content": ...}]
    return [c if isinstance(c, str) else c[-1]["content"] for c in completions]


class SequenceReward:
    """One thinklean reward as a TRL reward function (TRL logs it under ``__name__``).

    ``format``: ``+value`` for a well-formed response (:func:`~thinklean.data.grading.format_ok`),
    ``-value`` otherwise (``value`` defaults to 1). Every other name is a registered reward in
    :data:`SEQUENCE_REWARDS`, called as ``fn(correct, lengths, group_ids, **config)`` with each
    completion its own group; ``correct`` comes from ``verifier(text, answer)``.
    """

    def __init__(self, name: str, tokenizer: Any = None, verifier: Verifier = grade, **config: Any) -> None:
        if name != "format" and name not in SEQUENCE_REWARDS:
            registered = set(list_rewards())
            if name in registered:
                raise ValueError(
                    f"reward {name!r} needs the whole group of completions of a prompt; use "
                    f"ThinkleanGRPOTrainer(reward={name!r}) instead of a per-completion reward function"
                )
            raise ValueError(f"unknown reward {name!r}; per-completion rewards: {', '.join(('format', *SEQUENCE_REWARDS))}")
        if name == "format":
            self._value = float(config.pop("value", 1.0))
            if config:
                raise ValueError(f"reward 'format' accepts only 'value', got {sorted(config)}")
        self.__name__ = name
        self.tokenizer = tokenizer
        self.verifier = verifier
        self.config = config

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Sequence[Sequence[int]] | None = None,
                 answer: Sequence[str] | None = None, **kwargs: Any) -> list[float]:
        texts = _completion_texts(completions, completion_ids, self.tokenizer)
        if self.__name__ == "format":
            return [self._value if format_ok(t) else -self._value for t in texts]
        if answer is None:
            raise ValueError(f"thinklean reward {self.__name__!r} needs a dataset column 'answer' (the gold answer)")
        correct = torch.tensor([bool(self.verifier(t, str(a))) for t, a in zip(texts, answer, strict=True)])
        if completion_ids is not None:
            lengths = torch.tensor([len(ids) for ids in completion_ids])
        elif self.__name__ == "correctness":
            lengths = torch.zeros(len(texts), dtype=torch.long)
        else:
            raise ValueError(f"reward {self.__name__!r} needs token lengths: TRL did not pass completion_ids")
        rewards = get_reward(self.__name__)(correct, lengths, torch.arange(len(texts)), **self.config)
        return rewards.tolist()


def reward_funcs(names: Sequence[str] = ("correctness", "format"), tokenizer: Any = None,
                 reward_kwargs: dict[str, dict[str, Any]] | None = None, verifier: Verifier = grade) -> list[SequenceReward]:
    """TRL reward functions for ``names`` (see :class:`SequenceReward`), in that order.

    Pass ``tokenizer`` when format tags are special tokens (the embedded tokenizer): TRL's
    decoded completions have them stripped. ``reward_kwargs`` maps a name to its config, e.g.
    ``{"thinkprune": {"budget": 128}}``. Group rewards (``hmpo``, ``kimi``, ...) are refused:
    use :class:`ThinkleanGRPOTrainer`.
    """
    reward_kwargs = reward_kwargs or {}
    unknown = set(reward_kwargs) - set(names)
    if unknown:
        raise ValueError(f"reward_kwargs names {sorted(unknown)} that are not in names={list(names)}")
    return [SequenceReward(n, tokenizer, verifier, **reward_kwargs.get(n, {})) for n in names]


@dataclass
class RewardBatch:
    """The last batch a :class:`ThinkleanGRPOTrainer` scored, all processes' completions.

    correct: bool[N]; lengths: long[N] (tokens); group_ids: long[N]; rewards: float32[N] (the
    thinklean reward column, before TRL's weights); stats: the logged statistics;
    prompts/completions: this process's texts (rows ``process_slice`` of the tensors).
    """

    correct: torch.Tensor
    lengths: torch.Tensor
    group_ids: torch.Tensor
    rewards: torch.Tensor
    stats: dict[str, float]
    prompts: list[Any]
    completions: list[str]
    process_slice: slice


class ThinkleanGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose first reward is the registered thinklean reward ``reward``.

    ``reward_kwargs`` configure it (e.g. ``{"lam": 0.8, "budget_stat": "median"}`` for HMPO);
    ``reward_funcs`` are further TRL reward functions, summed after it (so
    ``args.reward_weights`` needs ``1 + len(reward_funcs)`` entries). ``verifier(text, answer)
    -> bool`` judges correctness against the dataset column ``answer`` (default:
    :func:`~thinklean.data.grading.grade`, the last ``\\boxed{}``). Logged next to TRL's metrics:
    ``thinklean/accuracy`` and, for ``hmpo``, ``hmpo/budget_mean``, ``hmpo/above_budget`` and
    ``hmpo/groups_with_budget``. :attr:`last_reward_batch` keeps the last scored batch.
    """

    def __init__(self, model: Any, reward: str = "hmpo", reward_kwargs: dict[str, Any] | None = None,
                 reward_funcs: Sequence[Any] | Any = (), verifier: Verifier = grade, **kwargs: Any) -> None:
        check_trl_version()
        self.reward_name = reward
        self.reward_config = dict(reward_kwargs or {})
        self._group_reward = get_reward(reward)  # an unknown name fails here, listing the valid ones
        extra = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        tokenizer = kwargs.get("processing_class")
        self._reward_tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor wraps its tokenizer
        # Column 0 is filled per completion with correctness (TRL gathers it like any reward);
        # _calculate_rewards then replaces it by the group reward of the gathered batch.
        correctness = SequenceReward("correctness", self._reward_tokenizer, verifier)
        correctness.__name__ = reward
        self.last_reward_batch: RewardBatch | None = None
        super().__init__(model=model, reward_funcs=[correctness, *extra], **kwargs)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        training = self.model.training
        group_size = self.num_generations if training else (getattr(self, "num_generations_eval", None) or self.num_generations)
        correct = rewards_per_func[:, 0].cpu() > 0.5
        local_lengths = torch.tensor([len(ids) for ids in completion_ids_list], device=self.accelerator.device)
        lengths = self.accelerator.gather(local_lengths).cpu()
        # TRL's sampler puts the num_generations completions of a prompt next to each other
        # in the global batch (its own advantages rely on it: rewards.view(-1, num_generations)).
        group_ids = torch.arange(len(lengths)) // group_size
        rewards = self._group_reward(correct, lengths, group_ids, **self.reward_config)
        rewards_per_func[:, 0] = rewards.to(rewards_per_func.device, rewards_per_func.dtype)

        stats = {"thinklean/accuracy": float(correct.float().mean())}
        if self.reward_name == "hmpo":
            hmpo = budget_stats(correct, lengths, group_ids, self.reward_config.get("budget_stat", "median"))
            stats.update({f"hmpo/{k}": v for k, v in hmpo.items()})
        for name, value in stats.items():
            self._log_metric(name, value)  # TRL averages over processes, which all hold the same value
        rank = self.accelerator.process_index
        self.last_reward_batch = RewardBatch(
            correct, lengths, group_ids, rewards, stats, list(prompts),
            _completion_texts(completions, completion_ids_list, self._reward_tokenizer),
            slice(rank * len(prompts), (rank + 1) * len(prompts)),
        )
        return rewards_per_func
