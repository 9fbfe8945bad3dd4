"""IAPO early-exit probe: answer entropy before every response token, and its information gain.

``H^A_t`` is the entropy of the model's next-token distribution right after
``prompt, o_<t, exit_ids`` (``exit_ids`` = ``</think>`` + ``\\boxed{`` in thinklean's format), i.e.
how unsure the model is of the answer if it had to stop thinking before token ``t``
(iapo.md, "Estimating information per token"). ``g_t = H^A_t - H^A_{t+1}`` is what token ``t``
told it about the answer.

Cost: computing ``H^A_t`` for every ``t`` naively is ``T`` forward passes. :func:`answer_entropies`
runs one cached forward over ``prompt + response``, then appends ``C`` copies of the exit string
at once (one per position) as extra queries under a block mask::

    keys:            [pad prompt | o_0 o_1 ... o_T-1 | exit@t_0 | exit@t_1 | ... ]
    exit copy for t: [  0    1   |  1 ... 1  0 ... 0 |  0 ... 0 | causal   |  0  ]
                                  (o_<t only)                    (own copy only)

with ``position_ids = (real tokens before t) + offset in the exit string``. The authors' chunked
probe drops both the explicit positions and the prompt's padding mask (shifted RoPE positions,
attention to pad keys); here both are kept, and a test checks the result against
:func:`naive_answer_entropies` (one unpadded forward per prefix).

The probe still runs ``E`` exit tokens per response token, so it costs about
``(P + T + E * T) / (P + T)`` plain forwards. Rows are sorted by length into sub-batches of
``max_batch_tokens``, so chunks do not probe positions that are padding in most rows: on the
demo rollout (64 rows, 25 + 73 tokens, 5-token ``" </think> \\boxed{"``; floor 4.73x) the probe
takes 4.9x the old-logprob pass with 2048-token sub-batches against 11.9x as one batch of all
rows (``benchmarks/iapo_probe_cost.py``). Chunk size 8-32 is best, larger chunks pay for
attention over the other copies' masked keys. Two further savings: the first forward's logits
give IAPO's token entropy ``h_t`` (``with_token_entropy``), so no separate pass computes it; and
``stride`` s probes every s-th position and interpolates, about ``1 + E * T / (s * (P + T))``
passes (an approximation, off by default).

Mask format (checked on transformers 5.23): a 4-D ``attention_mask [B, 1, q, k]`` bypasses
``create_causal_mask`` and reaches the attention function as-is. ``eager`` *adds* it to the scores
(a bool mask would be added as 0/1 — silently wrong), ``sdpa`` takes bool or additive float,
``flex_attention`` adds a float tensor as a score mask. So the mask is additive float in the
model's dtype (0 = attend, ``finfo.min`` = blocked), which all three accept (also older
transformers, whose 4-D path expects the same inverted float mask). Flash-attention kernels take
no arbitrary mask: such a model is rejected with a message. Models whose layers use a sliding
window get the full (unwindowed) mask — equal to their own masking only within the window.
"""

from __future__ import annotations

import torch
from torch import Tensor

from thinklean.core.losses import entropy_from_logits
from thinklean.models.hf_compat import cache_argument, logits_to_keep_argument, output_cache
from thinklean.rollout.engine import position_ids_from_mask

__all__ = ["answer_entropies", "naive_answer_entropies", "information_gain", "discounted_gain"]

_MASKABLE_ATTENTION = ("eager", "sdpa", "flex_attention")


def answer_entropies(
    model,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    exit_ids: list[int],
    chunk_size: int = 16,
    temperature: float = 1.0,
    max_batch_tokens: int | None = 2048,
    stride: int = 1,
    with_token_entropy: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Early-exit answer entropy ``H^A_t`` (nats) before every response token.

    Args:
        model: any HF causal LM taking ``attention_mask``/``position_ids`` and a KV cache
            (eager, sdpa or flex attention).
        prompt_ids: ``[B, P]`` left-padded prompt tokens (``RolloutBatch`` layout).
        prompt_mask: ``[B, P]`` the prompts' attention mask.
        response_ids: ``[B, T]`` right-padded response tokens.
        response_mask: ``[B, T]`` the responses' mask.
        exit_ids: the ``E`` token ids of the exit string, appended after ``prompt, o_<t``.
        chunk_size: positions ``C`` probed per forward (``C * E`` query tokens).
        temperature: the entropy is of ``softmax(logits / temperature)``.
        max_batch_tokens: rows are sorted by response length and cut into sub-batches of at most
            this many ``rows x (P + T_sub + C * E)`` tokens (``T_sub``: the sub-batch's longest
            response; a longer row goes alone), which bounds memory and keeps chunks from
            probing positions that are padding in most rows; ``None``: one sub-batch.
        stride: probe every ``stride``-th position of each row (``0, s, 2s, ...``) and its last
            one, and fill the positions between by linear interpolation — a thinklean
            approximation that divides the exit-token work by about ``stride``; 1 (default) is
            the exact probe of iapo.md.
        with_token_entropy: also return the policy's own next-token entropy ``h_t`` at every
            response position (IAPO's confidence term), read off the probe's forward over
            ``prompt + response`` instead of a separate pass.
    Returns: float32 ``[B, T]`` on ``response_ids.device``; ``[b, t]`` is the entropy of the
        next token after ``prompt_b, response_b[:t], exit_ids``; 0 where ``response_mask`` is 0.
        With ``with_token_entropy``: ``(H^A, h)``, ``h [b, t]`` the entropy of the distribution
        that generated ``response_b[t]`` (same temperature), 0 on padding.

    Runs under ``torch.no_grad()`` in eval mode; the training flag is restored. The KV cache of
    ``prompt + response`` is computed once per sub-batch; chunks run last-first, each on the
    cache cropped to the prefix it may see, so no chunk sees another chunk's exit tokens.
    """
    _check_inputs(prompt_ids, prompt_mask, response_ids, response_mask, exit_ids, temperature)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    attention = getattr(model.config, "_attn_implementation", None) or "eager"
    if attention not in _MASKABLE_ATTENTION:
        raise ValueError(
            f"answer_entropies needs a custom 4-D attention mask, which attn_implementation={attention!r} "
            f"does not take; load the model with attn_implementation='sdpa' (or 'eager', 'flex_attention'), "
            f"or call model.set_attn_implementation('sdpa')"
        )
    if max_batch_tokens is not None and max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens must be >= 1 (or None), got {max_batch_tokens}")
    lengths = response_mask.long().sum(1).cpu()
    order = torch.argsort(lengths, descending=True, stable=True)
    sub_batches, start = [], 0
    fixed = prompt_ids.shape[1] + chunk_size * len(exit_ids)
    for i in range(1, len(order) + 1):  # rows start..i-1 share a sub-batch; its longest row is the first
        if i == len(order) or (max_batch_tokens is not None
                               and (i - start + 1) * (fixed + int(lengths[order[start]])) > max_batch_tokens):
            sub_batches.append(order[start:i])
            start = i

    out = torch.zeros(response_ids.shape, dtype=torch.float32, device=response_ids.device)
    token_entropy = torch.zeros_like(out)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for rows in sub_batches:
                rows = rows.to(response_ids.device)
                entropy, own = _probe_rows(
                    model, prompt_ids[rows], prompt_mask[rows], response_ids[rows], response_mask[rows],
                    exit_ids, chunk_size, temperature, stride, with_token_entropy,
                )
                out[rows, : entropy.shape[1]] = entropy.to(out.device)
                if own is not None:
                    token_entropy[rows, : own.shape[1]] = own.to(out.device)
    finally:
        model.train(was_training)
    valid = response_mask.to(out.device)
    if with_token_entropy:
        return out * valid, token_entropy * valid  # exact zeros on padding
    return out * valid


def _probe_rows(model, prompt_ids, prompt_mask, response_ids, response_mask, exit_ids, chunk_size,
                temperature, stride, with_token_entropy) -> tuple[Tensor, Tensor | None]:
    """:func:`answer_entropies` for one sub-batch: ``H^A [b, T']`` (``T'`` = longest response) and,
    if asked, ``h [b, T']``."""
    device = _model_device(model)
    # Columns that are padding in every row of this sub-batch change nothing; drop them.
    prompt_mask, response_mask = prompt_mask.bool(), response_mask.bool()
    used_prompt = prompt_mask.any(0).nonzero()
    first = int(used_prompt[0]) if used_prompt.numel() else prompt_mask.shape[1]
    used_response = response_mask.any(0).nonzero()
    num_positions = int(used_response[-1]) + 1 if used_response.numel() else 0
    prompt_ids, prompt_mask = prompt_ids[:, first:].to(device), prompt_mask[:, first:].to(device)
    response_ids = response_ids[:, :num_positions].to(device)
    response_mask = response_mask[:, :num_positions].to(device)
    rows, prompt_width = prompt_ids.shape
    if num_positions == 0:
        return torch.zeros(rows, 0), torch.zeros(rows, 0) if with_token_entropy else None

    # 1) One cached forward over prompt + response.
    full_mask = torch.cat([prompt_mask, response_mask], 1).long()
    keep, cache_name = logits_to_keep_argument(model), cache_argument(model)
    keep_logits = num_positions + 1 if with_token_entropy else 1
    output = model(
        input_ids=torch.cat([prompt_ids, response_ids], 1),
        attention_mask=full_mask,
        position_ids=position_ids_from_mask(full_mask),
        use_cache=True,
        **({keep: keep_logits} if keep else {}),
    )
    cache, token_entropy = output_cache(output), None
    if with_token_entropy:  # logits at prompt_width - 1 + t score response token t
        token_entropy = entropy_from_logits(output.logits[:, -num_positions - 1: -1], temperature=temperature)
    del output

    # 2) Chunks of C probed positions: C copies of the exit string as new queries over that cache.
    # Last chunk first: a chunk needs only the keys before its largest t, so the cache is cropped
    # to that prefix (which also drops the previous chunk's exit tokens) — about half the
    # attention work of always attending over the whole response.
    columns = _probe_columns(response_mask.sum(1), num_positions, stride)  # [b, K], t per row
    exit_tensor = torch.tensor(exit_ids, dtype=torch.long, device=device)
    num_exit = exit_tensor.numel()
    dtype = model.get_input_embeddings().weight.dtype
    blocked = torch.finfo(dtype if dtype.is_floating_point else torch.float32).min
    response_before = response_mask.long().cumsum(1) - response_mask.long()  # real o_u with u < t
    tokens_before = prompt_mask.long().sum(1, keepdim=True) + response_before  # [b, T'] position of exit[0]
    response_index = torch.arange(num_positions, device=device)
    offset = torch.arange(num_exit, device=device)
    pieces = []
    for chunk_start in reversed(range(0, columns.shape[1], chunk_size)):
        t = columns[:, chunk_start: chunk_start + chunk_size]  # [b, C]
        copies = t.shape[1]
        seen_response = int(t.max())  # response keys any copy of this chunk may see
        _crop(cache, prompt_width + seen_response)

        # Keys of the cache: the real prompt, and real response tokens before the copy's t.
        sees_response = (response_index[None, None, :seen_response] < t[:, :, None]) & (
            response_mask[:, None, :seen_response])
        sees_prompt = prompt_mask[:, None, :].expand(rows, copies, prompt_width)
        sees_cache = torch.cat([sees_prompt, sees_response], 2).repeat_interleave(num_exit, dim=1)
        # New keys: causal within the copy's own exit string.
        copy_of_query = torch.arange(copies, device=device).repeat_interleave(num_exit)  # [C*E]
        offset_of_query = offset.repeat(copies)  # [C*E]
        sees_exit = (copy_of_query[:, None] == copy_of_query[None, :]) & (
            offset_of_query[None, :] <= offset_of_query[:, None])
        allowed = torch.cat([sees_cache, sees_exit.expand(rows, -1, -1)], 2)
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, blocked)

        position_ids = tokens_before.gather(1, t).repeat_interleave(num_exit, dim=1) + offset_of_query
        last_exit_token = torch.arange(copies, device=device) * num_exit + num_exit - 1
        kwargs = {keep: last_exit_token} if keep == "logits_to_keep" else {}
        logits = model(
            input_ids=exit_tensor.repeat(copies)[None].expand(rows, -1),
            attention_mask=mask[:, None],
            position_ids=position_ids,
            use_cache=True,
            **kwargs,
            **{cache_name: cache},
        ).logits
        if not kwargs:
            logits = logits[:, last_exit_token]
        pieces.append(entropy_from_logits(logits, temperature=temperature))
    return _interpolate(columns, torch.cat(pieces[::-1], 1), num_positions), token_entropy


def _probe_columns(lengths: Tensor, num_positions: int, stride: int) -> Tensor:
    """Response positions to probe, ``long [b, K]`` ascending per row: ``0, s, 2s, ...`` and the
    row's last position; a row with fewer than ``K`` repeats its last one (computed, not used)."""
    last = (lengths.long() - 1).clamp(min=0)[:, None]
    columns = torch.arange(0, num_positions, stride, device=lengths.device).expand(len(lengths), -1)
    if stride > 1:
        columns = torch.cat([columns, last], 1)
    return columns.clamp(max=last).sort(1).values


def _interpolate(columns: Tensor, values: Tensor, num_positions: int) -> Tensor:
    """``[b, T']`` by linear interpolation of ``values [b, K]`` known at ``columns [b, K]``
    (ascending per row; positions past a row's last column take its last value)."""
    positions = torch.arange(num_positions, device=columns.device).expand(len(columns), -1).contiguous()
    right = torch.searchsorted(columns, positions).clamp(max=columns.shape[1] - 1)
    left = (torch.searchsorted(columns, positions, right=True) - 1).clamp(min=0)
    c_left, c_right = columns.gather(1, left), columns.gather(1, right)
    weight = ((positions - c_left) / (c_right - c_left).clamp(min=1)).clamp(0, 1).to(values.dtype)
    v_left, v_right = values.gather(1, left), values.gather(1, right)
    return v_left + weight * (v_right - v_left)


def _crop(cache, length: int) -> None:
    """Cut ``cache`` back to its first ``length`` positions (in place)."""
    excess = cache.get_seq_length() - length
    if excess > 0:  # crop(0) would empty the cache on older transformers
        cache.crop(-excess)  # negative = tokens to remove, on old and new transformers
    if cache.get_seq_length() != length:
        raise RuntimeError(
            f"{type(cache).__name__} holds {cache.get_seq_length()} positions after cropping to {length}; "
            f"answer_entropies needs a croppable (dynamic) KV cache"
        )


def naive_answer_entropies(
    model,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    exit_ids: list[int],
    temperature: float = 1.0,
) -> Tensor:
    """Reference for :func:`answer_entropies`: one unpadded, uncached forward per prefix.

    ``B * T`` forward passes — for tests and debugging only. Same arguments and result.
    """
    _check_inputs(prompt_ids, prompt_mask, response_ids, response_mask, exit_ids, temperature)
    device = _model_device(model)
    out = torch.zeros(response_ids.shape, dtype=torch.float32)
    exit_tensor = torch.tensor(exit_ids, dtype=torch.long)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for b in range(response_ids.shape[0]):
                prompt = prompt_ids[b][prompt_mask[b].bool()].cpu()
                response = response_ids[b][response_mask[b].bool()].cpu()
                columns = response_mask[b].bool().nonzero().squeeze(-1).tolist()
                for i, t in enumerate(columns):
                    sequence = torch.cat([prompt, response[:i], exit_tensor])[None].to(device)
                    logits = model(input_ids=sequence).logits[:, -1]
                    out[b, t] = entropy_from_logits(logits, temperature=temperature)[0]
    finally:
        model.train(was_training)
    return out.to(response_ids.device)


def information_gain(answer_entropy: Tensor, response_mask: Tensor, smooth: bool = True) -> Tensor:
    """Drop in answer entropy across each response token, ``float32 [B, T]``.

    ``g_t = H_t - H_{t+1}``; with ``smooth`` (the authors' default)
    ``s_t = (H_{t-1} + H_t) / 2 - H_{t+1}``. Edges repeat each row's own values,
    ``H_{-1} := H_0`` and ``H_n := H_{n-1}`` (``n`` = the row's length), so the first and last
    tokens get no artificial drop; the authors zero-fill instead, which puts ``-H_0/2``-sized
    artefacts on the first token and ``+H_{n-1}`` on the last. 0 on padding.

    Args:
        answer_entropy: ``[B, T]`` from :func:`answer_entropies`.
        response_mask: ``[B, T]`` right-padded (1s then 0s in every row).
    """
    if answer_entropy.shape != response_mask.shape or answer_entropy.dim() != 2:
        raise ValueError(
            f"answer_entropy and response_mask must both be [B, T], got {tuple(answer_entropy.shape)} "
            f"and {tuple(response_mask.shape)}"
        )
    valid = response_mask.bool()
    if bool((valid[:, 1:] & ~valid[:, :-1]).any()):
        raise ValueError("response_mask must be right-padded (each row: ones, then zeros)")
    entropy = answer_entropy.float()
    has_next = torch.cat([valid[:, 1:], torch.zeros_like(valid[:, :1])], 1)
    following = torch.where(has_next, entropy.roll(-1, 1), entropy)
    if smooth:
        has_previous = torch.zeros_like(valid)
        has_previous[:, 1:] = True
        previous = torch.where(has_previous, entropy.roll(1, 1), entropy)
        gain = 0.5 * (previous + entropy) - following
    else:
        gain = entropy - following
    return torch.where(valid, gain, torch.zeros_like(gain))


def discounted_gain(gain: Tensor, response_mask: Tensor, discount: float) -> Tensor:
    """Information each token leads to: ``c_t = sum_{u >= t} discount^(u - t) * gain_u`` over the
    row's tokens, ``float32 [B, T]``, 0 on padding (a thinklean extension of IAPO).

    A choice made at one token (whether to check a step) is followed by tokens written almost
    deterministically (the check), and it is those that move the answer entropy; ``gain`` alone
    credits them, not the choice. With ``discount`` in ``(0, 1)`` a token also gets the gain of
    the next ``~1 / (1 - discount)`` tokens; 0 returns ``gain`` unchanged (the spec).

    Args:
        gain: ``[B, T]`` from :func:`information_gain`.
        response_mask: ``[B, T]`` the responses' mask.
        discount: in ``[0, 1)``.
    """
    if not 0.0 <= discount < 1.0:
        raise ValueError(f"discount must be in [0, 1), got {discount}")
    if gain.shape != response_mask.shape or gain.dim() != 2:
        raise ValueError(f"gain and response_mask must both be [B, T], got {tuple(gain.shape)} "
                         f"and {tuple(response_mask.shape)}")
    valid = response_mask.bool()
    gain = torch.where(valid, gain.float(), torch.zeros((), dtype=torch.float32))
    if discount == 0.0:
        return gain
    out, following = torch.zeros_like(gain), torch.zeros_like(gain[:, 0])
    for t in reversed(range(gain.shape[1])):
        following = gain[:, t] + discount * following
        out[:, t] = following
    return torch.where(valid, out, torch.zeros_like(out))


def _check_inputs(prompt_ids, prompt_mask, response_ids, response_mask, exit_ids, temperature) -> None:
    if prompt_ids.dim() != 2 or prompt_mask.shape != prompt_ids.shape:
        raise ValueError(
            f"prompt_ids and prompt_mask must both be [B, P], got {tuple(prompt_ids.shape)} "
            f"and {tuple(prompt_mask.shape)}"
        )
    if response_ids.dim() != 2 or response_mask.shape != response_ids.shape:
        raise ValueError(
            f"response_ids and response_mask must both be [B, T], got {tuple(response_ids.shape)} "
            f"and {tuple(response_mask.shape)}"
        )
    if response_ids.shape[0] != prompt_ids.shape[0]:
        raise ValueError(f"{prompt_ids.shape[0]} prompts but {response_ids.shape[0]} responses")
    if len(exit_ids) == 0:
        raise ValueError("exit_ids is empty; pass the token ids of the exit string, e.g. '</think>\\boxed{'")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _model_device(model) -> torch.device:
    return next(model.parameters()).device
