"""verl integration: thinklean's group rewards, advantage estimators and PPO-clip loss in verl.

Importing this module registers, in ``verl.trainer.ppo.core_algos``:

- advantage estimators (``algorithm.adv_estimator``):
  ``hmpo`` — HMPO's reward (per-group budget = median length of the group's correct
  responses) computed on whole groups, then GRPO advantages; ``thinklean`` — any registered
  thinklean reward (``kimi``, ``cosine``, ``shorterbetter``, ...) with ``grpo``, ``drgrpo`` or
  ``rloo``; ``iapo`` and ``hgpo`` — the token-level estimators, which need inputs verl's trainer
  does not pass (see :func:`iapo_advantage`, :func:`hgpo_advantage`);
- the policy loss ``thinklean`` (``actor_rollout_ref.actor.policy_loss.loss_mode``):
  :func:`thinklean.core.losses.policy_loss` aggregated over verl's global batch.

:func:`compute_score` is a verl reward function (``reward.custom_reward_function``): 1.0 when
the last ``\\boxed{}`` of the response matches the ground truth, else 0.0. The ``hmpo`` and
``thinklean`` estimators read correctness from that score and lengths from the response mask,
and compute the length reward themselves: verl calls an advantage estimator once per step on
the driver with the whole batch, so every group is complete there, whereas its reward managers
score one response at a time and cannot see a group's budget.

thinklean declares this module as a ``verl.plugins`` entry point, which verl imports in every
process (driver and Ray workers) when ``verl`` itself is imported; ``VERL_USE_EXTERNAL_MODULES=
thinklean.integrations.verl`` does the same explicitly. Configuration and a full command:
``docs/verl.md``.

Calling conventions relied on (verl 0.9.0 and 0.9.1, :data:`SUPPORTED_VERL`): an estimator is
called ``fn(token_level_rewards=[B, T], response_mask=[B, T], config=<algorithm config>,
index=<ndarray[B] of prompt uids>[, reward_baselines=...])`` and returns ``(advantages [B, T],
returns [B, T])``; a policy loss is called per micro-batch ``fn(old_log_prob=, log_prob=,
advantages=, response_mask=, loss_agg_mode=, config=<ActorConfig>, rollout_is_weights=)`` and
returns ``(loss, metrics)``, with ``config.global_batch_info`` holding ``dp_size``,
``batch_num_tokens``, ``global_batch_size`` and ``loss_scale_factor``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

try:
    import verl
    from omegaconf import DictConfig, ListConfig, OmegaConf
    from verl.trainer.ppo.core_algos import register_adv_est, register_policy_loss
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("thinklean.integrations.verl needs verl: pip install 'thinklean[verl]'") from error

from thinklean.core.advantages import hgpo_advantages, iapo_advantages
from thinklean.core.losses import AGG_MODES, policy_loss
from thinklean.core.registry import get_advantage, get_reward
from thinklean.data.grading import grade

__all__ = [
    "GROUP_ADVANTAGES",
    "SUPPORTED_VERL",
    "check_verl_version",
    "compute_score",
    "group_ids_from_index",
    "hgpo_advantage",
    "hmpo_advantage",
    "iapo_advantage",
    "thinklean_advantage",
    "thinklean_policy_loss",
]

SUPPORTED_VERL = ">=0.9.0,<0.10"
# thinklean estimators that need only rewards, group ids and the mask (what verl passes).
GROUP_ADVANTAGES = ("grpo", "drgrpo", "rloo")
CORRECT_ABOVE = 0.5  # a sequence score above this counts as correct (compute_score gives 1 or 0)


def check_verl_version(version: str | None = None) -> str:
    """Raise ``ImportError`` unless verl (or ``version``) is in :data:`SUPPORTED_VERL`; return it."""
    from packaging.specifiers import SpecifierSet

    version = verl.__version__ if version is None else version
    if version not in SpecifierSet(SUPPORTED_VERL, prereleases=True):
        raise ImportError(
            f"thinklean.integrations.verl supports verl{SUPPORTED_VERL} (the estimator and policy-loss call "
            f"conventions were checked there), but verl {version} is installed; pip install 'verl{SUPPORTED_VERL}'"
        )
    return version


check_verl_version()


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: Any = None,
                  **kwargs: Any) -> float:
    """verl reward function: 1.0 if the last ``\\boxed{}`` of ``solution_str`` equals
    ``ground_truth`` (numerically, else by ``math-verify``), 0.0 otherwise."""
    return float(grade(solution_str, str(ground_truth)))


def group_ids_from_index(index: Sequence[Any]) -> Tensor:
    """verl's per-response prompt uids (``ndarray[B]`` of any hashable) -> ``LongTensor[B]``
    group ids, numbered in order of first appearance."""
    ids: dict[Any, int] = {}
    return torch.tensor([ids.setdefault(uid, len(ids)) for uid in index], dtype=torch.long)


def _settings(config: Any) -> dict[str, Any]:
    """``config.thinklean`` (the algorithm config) as a plain dict; ``{}`` when absent."""
    section = config.get("thinklean") if config is not None else None
    if isinstance(section, (DictConfig, ListConfig)):
        section = OmegaConf.to_container(section, resolve=True)
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise TypeError(f"algorithm.thinklean must be a mapping, got {section!r}")
    unknown = sorted(set(section) - {"reward", "reward_kwargs", "advantage", "advantage_kwargs"})
    if unknown:
        raise ValueError(f"algorithm.thinklean: unknown key(s) {unknown} "
                         "(valid: reward, reward_kwargs, advantage, advantage_kwargs)")
    return dict(section)


def _sequence_inputs(token_level_rewards: Tensor, response_mask: Tensor, index: Sequence[Any] | None,
                     config: Any) -> tuple[Tensor, Tensor, Tensor]:
    """``(scores [B] float, lengths [B] long, group_ids [B] long)`` from verl's inputs."""
    if index is None:
        raise ValueError("thinklean's verl estimators need the prompt uids (index) that verl passes with every batch")
    if config is not None and config.get("use_kl_in_reward", False):
        raise ValueError(
            "algorithm.use_kl_in_reward=True puts a KL penalty into token_level_rewards, so thinklean's estimators "
            "cannot read correctness from them; use actor_rollout_ref.actor.use_kl_loss instead"
        )
    if token_level_rewards.shape != response_mask.shape or token_level_rewards.dim() != 2:
        raise ValueError(f"token_level_rewards {tuple(token_level_rewards.shape)} and response_mask "
                         f"{tuple(response_mask.shape)} must both be [B, T]")
    group_ids = group_ids_from_index(index).to(token_level_rewards.device)
    if len(group_ids) != token_level_rewards.shape[0]:
        raise ValueError(f"index has {len(group_ids)} uids for {token_level_rewards.shape[0]} responses")
    return token_level_rewards.sum(-1), response_mask.sum(-1).long(), group_ids


def _group_reward_advantages(reward: str, token_level_rewards: Tensor, response_mask: Tensor,
                             index: Sequence[Any] | None, config: Any) -> tuple[Tensor, Tensor]:
    settings = _settings(config)
    scores, lengths, group_ids = _sequence_inputs(token_level_rewards, response_mask, index, config)
    rewards = get_reward(reward)(scores > CORRECT_ABOVE, lengths, group_ids, **settings.get("reward_kwargs", {}))
    default = "grpo" if config is None or config.get("norm_adv_by_std_in_grpo", True) else "drgrpo"
    name = settings.get("advantage", default)
    if name not in GROUP_ADVANTAGES:
        raise ValueError(f"algorithm.thinklean.advantage must be one of {', '.join(GROUP_ADVANTAGES)}, got {name!r} "
                         f"(iapo and hgpo are estimators of their own: algorithm.adv_estimator=iapo|hgpo)")
    advantages = get_advantage(name)(rewards, group_ids, response_mask, **settings.get("advantage_kwargs", {}))
    return advantages, advantages


@register_adv_est("hmpo")
def hmpo_advantage(token_level_rewards: Tensor, response_mask: Tensor, index: Sequence[Any] | None = None,
                   config: Any = None, **kwargs: Any) -> tuple[Tensor, Tensor]:
    """HMPO in verl: GRPO advantages of :func:`thinklean.core.rewards.hmpo_reward`.

    Args:
        token_level_rewards: ``[B, T]``; its row sum is the correctness score (> 0.5 = correct).
        response_mask: ``[B, T]``; its row sum is the response length in tokens.
        index: ``[B]`` prompt uids (responses to one prompt share one).
        config: verl's algorithm config; ``thinklean.reward_kwargs`` go to ``hmpo_reward``
            (``beta``, ``lam``, ``combine``, ``budget``, ``budget_stat``);
            ``norm_adv_by_std_in_grpo: false`` gives Dr.GRPO's ``r - mean``.
    Returns: ``(advantages, returns)``, both the same ``float32 [B, T]``, 0 outside the mask.
    """
    if _settings(config).get("reward", "hmpo") != "hmpo":
        raise ValueError("algorithm.adv_estimator=hmpo always uses the hmpo reward; for another one use "
                         "algorithm.adv_estimator=thinklean with algorithm.thinklean.reward=NAME")
    return _group_reward_advantages("hmpo", token_level_rewards, response_mask, index, config)


@register_adv_est("thinklean")
def thinklean_advantage(token_level_rewards: Tensor, response_mask: Tensor, index: Sequence[Any] | None = None,
                        config: Any = None, **kwargs: Any) -> tuple[Tensor, Tensor]:
    """Any registered thinklean reward (``config.thinklean.reward``, default ``correctness``) on
    whole groups, then ``config.thinklean.advantage`` (``grpo``, ``drgrpo`` or ``rloo``).

    Args / returns as :func:`hmpo_advantage`.
    """
    reward = _settings(config).get("reward", "correctness")
    return _group_reward_advantages(reward, token_level_rewards, response_mask, index, config)


def _missing(estimator: str, **inputs: Tensor | None) -> None:
    absent = [name for name, value in inputs.items() if value is None]
    if absent:
        raise ValueError(
            f"advantage estimator {estimator!r} needs {', '.join(absent)}, which verl's trainer does not pass to an "
            f"estimator (it passes token_level_rewards, response_mask, index and config); call it from a trainer "
            f"that computes them (see docs/verl.md)"
        )


@register_adv_est("iapo")
def iapo_advantage(token_level_rewards: Tensor, response_mask: Tensor, index: Sequence[Any] | None = None,
                   config: Any = None, *, correct: Tensor | None = None, info_gain: Tensor | None = None,
                   token_entropy: Tensor | None = None, token_mask: Tensor | None = None,
                   **kwargs: Any) -> tuple[Tensor, Tensor]:
    """IAPO (:func:`thinklean.core.advantages.iapo_advantages`) with verl's calling convention.

    Args:
        token_level_rewards: ``[B, T]``; its row sum is IAPO's sequence reward.
        response_mask, index, config: as :func:`hmpo_advantage`; ``thinklean.advantage_kwargs``
            may set ``w_s`` / ``w_c``.
        correct: ``[B]`` bool; info_gain, token_entropy: ``[B, T]`` (nats) from the early-exit
            probe (:mod:`thinklean.methods.iapo_probe`) and the policy; token_mask: optional ``[B, T]``.
    Returns: ``(advantages, returns)``, ``float32 [B, T]``.
    """
    _missing("iapo", correct=correct, info_gain=info_gain, token_entropy=token_entropy)
    scores, _, group_ids = _sequence_inputs(token_level_rewards, response_mask, index, config)
    advantages = iapo_advantages(scores, correct, group_ids, response_mask, info_gain, token_entropy,
                                 token_mask=token_mask, **_settings(config).get("advantage_kwargs", {}))
    return advantages, advantages


@register_adv_est("hgpo")
def hgpo_advantage(token_level_rewards: Tensor, response_mask: Tensor, index: Sequence[Any] | None = None,
                   config: Any = None, *, modes: Tensor | None = None, mode_token_mask: Tensor | None = None,
                   **kwargs: Any) -> tuple[Tensor, Tensor]:
    """HGPO (:func:`thinklean.core.advantages.hgpo_advantages`) with verl's calling convention.

    Args:
        token_level_rewards: ``[B, T]``; its row sum is the task reward.
        response_mask, index, config: as :func:`hmpo_advantage`; ``thinklean.advantage_kwargs``
            may set ``alpha`` / ``delta``.
        modes: ``[B]`` 1 for think, 0 for no-think responses (the rollouts must be mode-forced).
        mode_token_mask: ``[B, T]`` 1 on the mode tag token; default the first response token.
    Returns: ``(advantages, returns)``, ``float32 [B, T]``.
    """
    _missing("hgpo", modes=modes)
    scores, lengths, group_ids = _sequence_inputs(token_level_rewards, response_mask, index, config)
    if mode_token_mask is None:
        mode_token_mask = torch.zeros_like(response_mask)
        mode_token_mask[:, 0] = response_mask[:, 0]
    advantages = hgpo_advantages(scores, lengths, modes, group_ids, response_mask, mode_token_mask,
                                 **_settings(config).get("advantage_kwargs", {}))
    return advantages, advantages


def _global_scale(agg: str, response_mask: Tensor, info: Mapping[str, Any]) -> float:
    """Factor turning thinklean's micro-batch aggregate into verl's global-batch share.

    verl's workers each backpropagate ``(sum over their micro-batch) / (global count) * dp_size``
    (data-parallel gradients are averaged), so the micro-batch losses add up to the mean over the
    global batch; thinklean's aggregate divides by the micro-batch's own count instead.
    """
    dp_size = int(info.get("dp_size") or 1)
    valid = response_mask.bool()
    if agg == "token-sum":
        return float(valid.sum()) * dp_size
    if agg == "token-mean":
        count, total, key = float(valid.sum()), info.get("batch_num_tokens"), "batch_num_tokens"
    else:
        count, total, key = float((valid.sum(-1) > 0).sum()), info.get("global_batch_size"), "global_batch_size"
    if total is None:
        if dp_size > 1:
            raise ValueError(f"config.global_batch_info[{key!r}] is required when dp_size > 1")
        return 1.0
    return count / float(total) * dp_size


@register_policy_loss("thinklean")
def thinklean_policy_loss(old_log_prob: Tensor, log_prob: Tensor, advantages: Tensor, response_mask: Tensor,
                          loss_agg_mode: str = "token-mean", config: Any = None,
                          rollout_is_weights: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """thinklean's PPO-clip loss (:func:`thinklean.core.losses.policy_loss`) as a verl policy loss.

    Args:
        old_log_prob, log_prob, advantages, response_mask: ``[b, T]`` of one micro-batch (nats).
        loss_agg_mode: thinklean's modes (``token-mean``, ``seq-mean-token-mean``,
            ``seq-mean-token-sum``, ``seq-mean-token-sum-norm``) or verl's ``token-sum``.
        config: verl's actor config: ``clip_ratio`` / ``clip_ratio_low`` / ``clip_ratio_high``,
            ``clip_ratio_c`` (dual clip), ``global_batch_info``.
        rollout_is_weights: must be None (rollout importance weights are not applied).
    Returns: ``(loss, metrics)``: the micro-batch's share of the global-batch loss (0-d, with
    grad) and ``actor/pg_clipfrac``, ``actor/pg_clipfrac_lower`` (dual clip), ``actor/approx_kl``
    (k3 of old || new), ``actor/ratio_mean``, ``actor/ratio_max`` as floats.
    """
    if config is None:
        raise ValueError("policy loss 'thinklean' needs verl's actor config (clip ratios, global batch info)")
    if rollout_is_weights is not None:
        raise ValueError("policy loss 'thinklean' does not apply rollout importance weights; set "
                         "algorithm.rollout_correction.rollout_is=null or use loss_mode=vanilla")
    if loss_agg_mode not in (*AGG_MODES, "token-sum"):
        raise ValueError(f"loss_agg_mode must be one of {', '.join((*AGG_MODES, 'token-sum'))}; got {loss_agg_mode!r}")
    clip = config.get("clip_ratio", 0.2)
    clip_low = config.get("clip_ratio_low")
    clip_high = config.get("clip_ratio_high")
    info = config.get("global_batch_info") or {}
    loss, metrics = policy_loss(
        log_prob, old_log_prob, advantages, response_mask,
        clip_low=clip if clip_low is None else clip_low, clip_high=clip if clip_high is None else clip_high,
        dual_clip=config.get("clip_ratio_c", 3.0), agg="token-mean" if loss_agg_mode == "token-sum" else loss_agg_mode,
        max_len=info.get("loss_scale_factor") or response_mask.shape[-1],
    )
    return loss * _global_scale(loss_agg_mode, response_mask, info), {
        "actor/pg_clipfrac": float(metrics["clip_frac"]),
        "actor/pg_clipfrac_lower": float(metrics["dual_clip_frac"]),
        "actor/approx_kl": float(metrics["approx_kl"]),
        "actor/ratio_mean": float(metrics["ratio_mean"]),
        "actor/ratio_max": float(metrics["ratio_max"]),
    }
