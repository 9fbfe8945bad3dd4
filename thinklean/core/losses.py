"""Policy losses (PPO clip with dual clip and aggregation modes), KL estimators, entropy.

Shapes: ``logprobs``, ``old_logprobs``, ``ref_logprobs``, ``advantages``, ``response_mask``
are ``[B, T]`` (log-probabilities in nats of the sampled tokens); ``logits`` are
``[..., T, V]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from thinklean.core.masked import masked_mean, masked_sum
from thinklean.core.registry import register_loss

__all__ = [
    "AGG_MODES",
    "aggregate_loss",
    "policy_loss",
    "kl_penalty",
    "entropy_from_logits",
    "logprobs_from_logits",
]

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_KINDS = ("k1", "k2", "k3", "low_var_kl")
_LOG_RATIO_LIMIT = 20.0  # exp(20) ~ 5e8: keeps the ratio finite in float32 without touching real values


def aggregate_loss(loss_mat: Tensor, mask: Tensor, agg: str, max_len: int | None = None) -> Tensor:
    """Reduce a per-token loss ``[B, T]`` to a scalar.

    - ``token-mean``: sum over valid tokens / number of valid tokens (whole batch);
    - ``seq-mean-token-mean``: each sequence's mean over its valid tokens, then the mean over
      sequences;
    - ``seq-mean-token-sum``: each sequence's sum, then the mean over sequences;
    - ``seq-mean-token-sum-norm`` (Dr.GRPO): each sequence's sum / ``max_len`` (a constant,
      default ``T``), then the mean over sequences.
    The ``seq-mean`` modes average over sequences with at least one valid token (fully padded
    rows are ignored). No valid token at all gives 0 (still attached to the graph).
    """
    if loss_mat.shape != mask.shape or loss_mat.dim() != 2:
        raise ValueError(f"loss_mat and mask must both be [B, T], got {tuple(loss_mat.shape)} and {tuple(mask.shape)}")
    if agg == "token-mean":
        return masked_mean(loss_mat, mask)
    if agg not in AGG_MODES:
        raise ValueError(f"agg must be one of {', '.join(AGG_MODES)}; got {agg!r}")
    token_sums = masked_sum(loss_mat, mask, dim=-1)
    token_counts = mask.bool().sum(dim=-1)
    if agg == "seq-mean-token-mean":
        per_sequence = token_sums / token_counts.clamp(min=1)
    elif agg == "seq-mean-token-sum":
        per_sequence = token_sums
    else:
        norm = loss_mat.shape[-1] if max_len is None else max_len
        if norm <= 0:
            raise ValueError(f"max_len must be > 0, got {norm}")
        per_sequence = token_sums / norm
    return masked_mean(per_sequence, token_counts > 0)


@register_loss("ppo_clip")
def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    agg: str = "token-mean",
    max_len: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped policy-gradient loss with optional dual clip.

    Per token, ``rho = exp(logp - old_logp)`` and
    ``loss = max(-A * rho, -A * clip(rho, 1 - clip_low, 1 + clip_high))``; with ``dual_clip =
    c`` (> 1), tokens with ``A < 0`` are capped: ``loss = min(loss, -A * c)``. Aggregated with
    :func:`aggregate_loss` (``agg``, ``max_len``). The log-ratio is clamped to [-20, 20] before
    ``exp`` so a wild token cannot overflow.

    Computed in float32 (float64 if the inputs are float64).
    Returns ``(loss, metrics)``: ``loss`` a 0-d tensor with grad; ``metrics`` detached
    0-d tensors (call ``float()`` to log) over valid tokens:
    - ``clip_frac``: fraction where the clipped term was strictly larger (active clip);
    - ``dual_clip_frac``: fraction where the dual-clip cap was active (0 without dual clip);
    - ``approx_kl``: mean of ``(rho - 1) - log rho``, the k3 estimate of KL(old || new)
      from tokens sampled by the old policy (>= 0);
    - ``ratio_mean``, ``ratio_max``: of ``rho`` (``ratio_max`` is 0 with no valid token).
    """
    shapes = {tuple(t.shape) for t in (logprobs, old_logprobs, advantages, response_mask)}
    if len(shapes) != 1:
        raise ValueError(
            "logprobs, old_logprobs, advantages and response_mask must share one [B, T] shape, got "
            + ", ".join(str(tuple(x.shape)) for x in (logprobs, old_logprobs, advantages, response_mask))
        )
    if clip_low < 0 or clip_high < 0:
        raise ValueError(f"clip_low and clip_high must be >= 0, got {clip_low}, {clip_high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}")
    dtype = torch.promote_types(logprobs.dtype, torch.float32)  # bf16 in -> float32 maths
    log_ratio = (logprobs.to(dtype) - old_logprobs.to(dtype)).clamp(-_LOG_RATIO_LIMIT, _LOG_RATIO_LIMIT)
    ratio = torch.exp(log_ratio)
    adv = advantages.to(dtype)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss_mat = torch.maximum(unclipped, clipped)
    clip_active = clipped > unclipped
    if dual_clip is not None:
        cap = -adv * dual_clip
        dual_active = (adv < 0) & (cap < loss_mat)
        loss_mat = torch.where(dual_active, cap, loss_mat)
    else:
        dual_active = torch.zeros_like(clip_active)
    loss = aggregate_loss(loss_mat, response_mask, agg, max_len)

    with torch.no_grad():
        valid = response_mask.bool()
        metrics = {
            "clip_frac": masked_mean(clip_active.float(), valid),
            "dual_clip_frac": masked_mean(dual_active.float(), valid),
            "approx_kl": masked_mean(ratio - 1.0 - log_ratio, valid),
            "ratio_mean": masked_mean(ratio, valid),
            "ratio_max": torch.where(valid, ratio, torch.zeros_like(ratio)).amax(),
        }
    return loss, {name: value.detach() for name, value in metrics.items()}


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: str = "k3") -> Tensor:
    """Per-token KL estimate between the policy and a reference, ``float32 [B, T]``.

    With ``d = logp - ref_logp`` (tokens sampled from the policy):
    ``k1 = d``; ``k2 = d^2 / 2``; ``k3`` (alias ``low_var_kl``) ``= exp(-d) + d - 1``, i.e.
    ``exp(ref - logp) - (ref - logp) - 1``, clamped to [-10, 10] (its input difference is
    first clamped to [-20, 20] to avoid overflow; the output clamp makes that invisible).
    Not masked: multiply by the response mask or pass it to :func:`aggregate_loss`.
    """
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} must match")
    diff = logprobs.float() - ref_logprobs.float()
    if kind == "k1":
        return diff
    if kind == "k2":
        return 0.5 * diff.pow(2)
    if kind in ("k3", "low_var_kl"):
        ref_minus_logp = (-diff).clamp(-_LOG_RATIO_LIMIT, _LOG_RATIO_LIMIT)
        return (torch.exp(ref_minus_logp) - ref_minus_logp - 1.0).clamp(-10.0, 10.0)
    raise ValueError(f"kind must be one of {', '.join(KL_KINDS)}; got {kind!r}")


def _position_chunks(num_positions: int, chunk_size: int) -> range:
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
    return range(0, num_positions, chunk_size)


def entropy_from_logits(logits: Tensor, chunk_size: int = 1024, temperature: float = 1.0) -> Tensor:
    """Entropy (nats) of ``softmax(logits / temperature)`` at every position.

    Args:
        logits: ``[..., T, V]`` any float dtype.
        chunk_size: positions processed at once (flattened over ``...`` and ``T``); bounds the
            float32 temporaries to ``chunk_size * V`` elements. Under autograd each chunk's
            softmax is kept for the backward pass.
    Returns: float32 ``[..., T]``. ``H = logsumexp(z) - sum(softmax(z) * z)``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    flat = logits.reshape(-1, logits.shape[-1])
    pieces = []
    for start in _position_chunks(flat.shape[0], chunk_size):
        # -inf logits (banned tokens) become the most negative float: p = 0 and p * z = 0, no NaN.
        z = (flat[start : start + chunk_size].float() / temperature).clamp(min=torch.finfo(torch.float32).min)
        log_norm = torch.logsumexp(z, dim=-1)
        pieces.append(log_norm - (torch.softmax(z, dim=-1) * z).sum(dim=-1))
    entropy = torch.cat(pieces) if pieces else flat.new_zeros(0, dtype=torch.float32)
    return entropy.reshape(logits.shape[:-1])


def logprobs_from_logits(logits: Tensor, labels: Tensor, temperature: float = 1.0, chunk_size: int = 1024) -> Tensor:
    """Log-probability (nats) of ``labels`` under ``softmax(logits / temperature)``.

    Args:
        logits: ``[..., T, V]``; labels: ``[..., T]`` int token ids.
        chunk_size: positions processed at once, bounding float32 temporaries to
            ``chunk_size * V`` elements.
    Returns: float32 ``[..., T]``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels {tuple(labels.shape)} must match logits without the vocab dim {tuple(logits.shape[:-1])}"
        )
    flat = logits.reshape(-1, logits.shape[-1])
    flat_labels = labels.reshape(-1, 1).long()
    pieces = []
    for start in _position_chunks(flat.shape[0], chunk_size):
        z = flat[start : start + chunk_size].float() / temperature
        chosen = z.gather(-1, flat_labels[start : start + chunk_size]).squeeze(-1)
        pieces.append(chosen - torch.logsumexp(z, dim=-1))
    out = torch.cat(pieces) if pieces else flat.new_zeros(0, dtype=torch.float32)
    return out.reshape(labels.shape)

