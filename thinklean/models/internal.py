"""BuPO internal policies: every layer's residual stream, read through the unembedding, is a policy.

For a pre-norm decoder with ``L`` layers (Qwen2, Qwen3, Llama, Mistral layouts)::

    h^0 = embeddings,   h^l = h^{l-1} + A^l + F^l,   A^l = attn(LN_in(h^{l-1})),
                                                     F^l = mlp(LN_post(h^{l-1} + A^l))

``pi^l_layer = softmax(h^l E_u^T)`` (no final norm, the authors' choice; ``apply_final_norm=True``
applies ``model.model.norm`` first, and with it ``pi^L`` is the model's own policy),
``pi^l_attn = softmax(A^l E_u^T)`` and ``pi^l_ffn = softmax(F^l E_u^T)``, where ``E_u`` is
``model.get_output_embeddings()`` (``[V, d]``). Layers count from 1; ``h^l`` is HF's
``hidden_states[l]`` and ``h^0`` the embeddings (but transformers 5 returns the *normed* stream
as ``hidden_states[L]``; here ``h^L`` is always before the final norm). See
``shared/design/bupo.md``.

Everything is read with forward hooks on the HF modules (the model is never re-implemented);
hooks live only inside :func:`capture_internals` and are removed on exit, exceptions included.
The forward goes through the decoder (``model.model``), never through ``lm_head``, and stops
after the last layer that is needed by raising a private exception from a hook, so the IPA
update pays for layers ``1..l`` only and no gradient can reach the layers above.

Alignment (as in HF causal LMs): the policy read at position ``t`` scores the token at ``t + 1``.

Captured quantities (``names``), each ``[B, T, d]`` in the model's dtype:

- ``"stream"``: ``h^l`` for ``l = 0..L`` (``h^0`` = what enters the first layer);
- ``"attn"`` / ``"ffn"``: ``A^l`` / ``F^l`` for ``l = 1..L``;
- ``"attn_in"``: ``LN_in(h^{l-1})``; ``"ffn_in"``: ``LN_post(h^{l-1} + A^l)``;
- ``"mid"``: ``h^{l-1} + A^l`` (the input of the post-attention norm).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from thinklean.core.losses import logprobs_from_logits
from thinklean.models.hf_compat import logits_to_keep_argument

__all__ = [
    "NAMES",
    "DecoderParts",
    "decoder_parts",
    "capture_internals",
    "internal_states",
    "layer_policy_logits",
    "internal_logprobs",
    "projected_entropy",
    "layer_entropy_sums",
    "entropy_summary",
    "layer_entropies",
]

NAMES = ("stream", "attn", "ffn", "attn_in", "ffn_in", "mid")
KINDS = ("layer", "attn", "ffn")
VARIANTS = ("module", "residual")
_LAYER_CHILDREN = frozenset({"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"})
_EXPECTED_LAYOUT = (
    "a causal LM laid out like Qwen2/Qwen3/Llama/Mistral: model.model.layers[i] with exactly the "
    "submodules self_attn, mlp, input_layernorm and post_attention_layernorm (pre-norm residual "
    "blocks), a final norm model.model.norm and an unembedding model.get_output_embeddings()"
)


class _StopForward(Exception):
    """Raised by a hook once the last needed layer has run; caught by :func:`internal_states`."""


@dataclass
class DecoderParts:
    """The modules the internal policies are read from."""

    decoder: nn.Module  # model.model: embeddings + layers + final norm, no lm_head
    layers: nn.ModuleList
    final_norm: nn.Module
    unembedding: nn.Module  # model.get_output_embeddings(), weight [V, d]

    @property
    def num_layers(self) -> int:
        return len(self.layers)


def decoder_parts(model: nn.Module) -> DecoderParts:
    """Find the decoder pieces of ``model`` or raise a ``ValueError`` naming its class."""
    name = type(model).__name__

    def unsupported(what: str) -> ValueError:
        return ValueError(f"{name} is not supported for internal policies: {what}; expected {_EXPECTED_LAYOUT}")

    decoder = getattr(model, "model", None)
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise unsupported("no model.model.layers")
    final_norm = getattr(decoder, "norm", None)
    if not isinstance(final_norm, nn.Module):
        raise unsupported("no model.model.norm")
    for index, layer in enumerate(layers):
        children = {child for child, _ in layer.named_children()}
        # Extra submodules (Gemma's post-FFN norms, Phi-3's residual dropouts, ...) would make
        # h^l != h^{l-1} + A^l + F^l, so the captured A^l, F^l would not be what is added.
        if children != _LAYER_CHILDREN:
            raise unsupported(f"model.model.layers[{index}] ({type(layer).__name__}) has submodules {sorted(children)}")
    get_head = getattr(model, "get_output_embeddings", None)
    unembedding = get_head() if callable(get_head) else None
    weight = getattr(unembedding, "weight", None)
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise unsupported("get_output_embeddings() has no [V, d] weight")
    return DecoderParts(decoder, layers, final_norm, unembedding)


def _first(output) -> Tensor:
    """A module's main output: HF attention returns ``(out, weights)``, older layers tuples."""
    return output[0] if isinstance(output, (tuple, list)) else output


@contextmanager
def capture_internals(
    model: nn.Module,
    names: tuple[str, ...] = NAMES,
    stop_after_layer: int | None = None,
    callback: Callable[[str, int, Tensor], None] | None = None,
) -> Iterator[dict[str, dict[int, Tensor]]]:
    """Install capture hooks for one forward pass of ``model.model``; remove them on exit.

    Yields ``store[name][layer] -> Tensor[B, T, d]`` filled during the forward (or, when
    ``callback`` is given, calls ``callback(name, layer, tensor)`` instead and stores nothing,
    so large models need not keep every layer alive). Only layers ``<= stop_after_layer`` are
    captured; after ``h^{stop_after_layer}`` the forward is aborted (:func:`internal_states`
    catches that). ``stop_after_layer=None`` runs the whole decoder.
    """
    parts = decoder_parts(model)
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise ValueError(f"unknown capture names {unknown}; accepted: {', '.join(NAMES)}")
    num_layers = parts.num_layers
    last = num_layers if stop_after_layer is None else stop_after_layer
    if not 0 <= last <= num_layers:
        raise ValueError(f"stop_after_layer must be in [0, {num_layers}], got {stop_after_layer}")
    store: dict[str, dict[int, Tensor]] = {name: {} for name in names}

    def record(name: str, layer: int, tensor: Tensor) -> None:
        if callback is None:
            store[name][layer] = tensor
        else:
            callback(name, layer, tensor)

    def output_hook(name: str, layer: int):
        return lambda module, args, output: record(name, layer, _first(output))

    def input_hook(name: str, layer: int):
        def hook(module, args, kwargs):
            record(name, layer, args[0] if args else kwargs["hidden_states"])
        return hook

    def stop_hook(*_):
        raise _StopForward

    handles = []
    try:
        first = parts.layers[0]
        if "stream" in names:
            handles.append(first.register_forward_pre_hook(input_hook("stream", 0), with_kwargs=True))
        if last == 0:
            handles.append(first.register_forward_pre_hook(stop_hook))
        for layer in range(1, last + 1):
            block = parts.layers[layer - 1]
            for name, module in (("attn_in", block.input_layernorm), ("attn", block.self_attn),
                                 ("ffn_in", block.post_attention_layernorm), ("ffn", block.mlp)):
                if name in names:
                    handles.append(module.register_forward_hook(output_hook(name, layer)))
            if "mid" in names:
                handles.append(block.post_attention_layernorm.register_forward_pre_hook(
                    input_hook("mid", layer), with_kwargs=True))
            if "stream" in names:
                handles.append(block.register_forward_hook(output_hook("stream", layer)))
        if stop_after_layer is not None and last > 0:
            # Hooks run in registration order: the stop comes after the captures above.
            handles.append(parts.layers[last - 1].register_forward_hook(stop_hook))
        yield store
    finally:
        for handle in handles:
            handle.remove()


def _positions(attention_mask: Tensor | None, position_ids: Tensor | None) -> Tensor | None:
    # Same as rollout.position_ids_from_mask: a row's positions do not depend on its left padding.
    if position_ids is not None or attention_mask is None:
        return position_ids
    return attention_mask.long().cumsum(-1).sub(1).clamp(min=0)


def internal_states(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    position_ids: Tensor | None = None,
    names: tuple[str, ...] = NAMES,
    up_to_layer: int | None = None,
    callback: Callable[[str, int, Tensor], None] | None = None,
) -> dict[str, dict[int, Tensor]]:
    """One forward pass of the decoder, returning ``store[name][layer] -> Tensor[B, T, d]``.

    ``input_ids``, ``attention_mask``: ``[B, T]``; ``position_ids`` defaults to
    ``cumsum(attention_mask) - 1`` (the rollout engine's convention; pass ``arange`` positions
    explicitly to match HF's default for unpadded input). ``up_to_layer`` stops the forward
    after that layer (``None``: all ``L`` layers). Gradients flow if grad mode is on.
    """
    parts = decoder_parts(model)
    with capture_internals(model, names, up_to_layer, callback) as store:
        try:
            parts.decoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=_positions(attention_mask, position_ids),
                use_cache=False,
            )
        except _StopForward:
            pass
    return store


def _check_layer(layer: int, kind: str, num_layers: int) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    lowest = 0 if kind == "layer" else 1
    if isinstance(layer, bool) or not isinstance(layer, int) or not lowest <= layer <= num_layers:
        raise ValueError(f"layer for kind={kind!r} must be an int in [{lowest}, {num_layers}], got {layer!r}")


def layer_policy_logits(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    position_ids: Tensor | None,
    layer: int,
    apply_final_norm: bool = False,
    kind: str = "layer",
    logits_to_keep: int = 0,
    whole_model: bool = False,
) -> Tensor:
    """Logits ``[B, T, V]`` (model dtype) of the internal policy ``pi^layer_kind`` at every position.

    ``kind="layer"``: ``h^layer E_u^T`` (``layer`` in ``0..L``; 0 = embeddings);
    ``"attn"``/``"ffn"``: ``A^layer E_u^T`` / ``F^layer E_u^T`` (``layer`` in ``1..L``).
    ``apply_final_norm``: pass the vector through ``model.model.norm`` first.
    ``logits_to_keep > 0``: only the last that many positions (like HF's argument), ``[B, k, V]``.
    Position ``t`` scores token ``t + 1``. Only layers ``1..layer`` run, so a loss on these
    logits sends gradients to those layers, the (un)embedding and, with ``apply_final_norm``, the
    final norm; the parameters of the layers above keep ``grad=None``.
    ``whole_model``: call ``model`` itself, all layers (its own logits of one position are
    discarded), and read the layer off that forward: the same values, and a model sharded with
    FSDP gathers its parameters as in every other forward call.
    """
    parts = decoder_parts(model)
    _check_layer(layer, kind, parts.num_layers)
    name = "stream" if kind == "layer" else kind
    if whole_model:
        keep = logits_to_keep_argument(model)
        with capture_internals(model, (name,)) as store:
            model(input_ids=input_ids, attention_mask=attention_mask, position_ids=_positions(attention_mask, position_ids),
                  use_cache=False, **({keep: 1} if keep else {}))
        hidden = store[name][layer]
    else:
        hidden = internal_states(model, input_ids, attention_mask, position_ids, (name,), up_to_layer=layer)[name][layer]
    if torch.is_grad_enabled() and not hidden.requires_grad and any(p.requires_grad for p in model.parameters()):
        raise RuntimeError(
            f"the captured {name} of layer {layer} carries no gradient; with gradient checkpointing use "
            "model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})"
        )
    if logits_to_keep > 0:
        hidden = hidden[:, -logits_to_keep:]
    if apply_final_norm:
        hidden = parts.final_norm(hidden)
    return parts.unembedding(hidden)


def internal_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    layer: int,
    kind: str = "layer",
    apply_final_norm: bool = False,
    labels: Tensor | None = None,
    position_ids: Tensor | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """Log-probs (nats, float32) of tokens under the internal policy ``pi^layer_kind``; differentiable.

    ``labels=None``: the next tokens of ``input_ids``, ``out[:, t] = log pi(input_ids[:, t+1] |
    input_ids[:, :t+1])``, shape ``[B, T-1]`` (HF's shift). ``labels`` ``[B, T]`` given: already
    aligned targets, ``out[:, t] = log pi(labels[:, t] | input_ids[:, :t+1])``, shape ``[B, T]``.
    ``temperature`` divides the logits (use the rollout temperature for importance ratios).
    See :func:`layer_policy_logits` for ``layer``, ``kind``, ``apply_final_norm``.
    """
    logits = layer_policy_logits(model, input_ids, attention_mask, position_ids, layer, apply_final_norm, kind)
    if labels is None:
        logits, labels = logits[:, :-1], input_ids[:, 1:]
    return logprobs_from_logits(logits, labels, temperature=temperature)


def projected_entropy(
    hidden: Tensor, weight: Tensor, bias: Tensor | None = None, position_chunk: int = 512,
    vocab_chunk: int | None = 32768,
) -> Tensor:
    """Entropy (nats, float32 ``[N]``) of ``softmax(hidden @ weight.T + bias)`` for ``hidden [N, d]``.

    ``weight``: ``[V, d]``. Memory is bounded by ``position_chunk * vocab_chunk`` float32 logits:
    over vocabulary chunks it keeps a running max ``m``, ``s = sum exp(z - m)`` and
    ``u = sum exp(z - m) z``, so ``H = m + log s - u / s`` (``vocab_chunk=None``: one chunk).
    """
    if position_chunk <= 0 or (vocab_chunk is not None and vocab_chunk <= 0):
        raise ValueError(f"position_chunk and vocab_chunk must be > 0, got {position_chunk}, {vocab_chunk}")
    vocab = weight.shape[0]
    step = vocab if vocab_chunk is None else min(vocab_chunk, vocab)
    pieces = []
    for start in range(0, hidden.shape[0], position_chunk):
        rows = hidden[start : start + position_chunk].to(weight.dtype)
        running_max = rows.new_full((rows.shape[0],), -math.inf, dtype=torch.float32)
        total = torch.zeros_like(running_max)
        weighted = torch.zeros_like(running_max)
        for v in range(0, vocab, step):
            z = F.linear(rows, weight[v : v + step], None if bias is None else bias[v : v + step]).float()
            new_max = torch.maximum(running_max, z.amax(-1))
            rescale = torch.exp(running_max - new_max)  # exp(-inf) = 0 on the first chunk
            e = torch.exp(z - new_max[:, None])
            total = total * rescale + e.sum(-1)
            weighted = weighted * rescale + (e * z).sum(-1)
            running_max = new_max
        pieces.append(running_max + torch.log(total) - weighted / total)
    if not pieces:
        return hidden.new_zeros(0, dtype=torch.float32)
    return torch.cat(pieces)


def _scored_positions(input_ids: Tensor, attention_mask: Tensor | None, response_mask: Tensor | None) -> Tensor:
    """Bool ``[B, T]``: positions whose policy predicts a counted token (the next one)."""
    real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    tokens = real if response_mask is None else response_mask.bool() & real
    if tokens.shape != input_ids.shape:
        raise ValueError(f"response_mask {tuple(tokens.shape)} must match input_ids {tuple(input_ids.shape)}")
    scored = torch.zeros_like(tokens)
    scored[:, :-1] = tokens[:, 1:] & real[:, :-1]
    return scored


def layer_entropy_sums(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    response_mask: Tensor | None = None,
    position_ids: Tensor | None = None,
    variant: str = "module",
    apply_final_norm: bool = False,
    position_chunk: int = 512,
    vocab_chunk: int | None = 32768,
) -> dict[str, Tensor]:
    """Summed entropies of every internal policy over the scored tokens, in one no-grad eval forward.

    ``response_mask`` ``[B, T]`` marks the *tokens* that count (e.g. zeros over the prompt, the
    rollout's mask over the response); a token at ``t`` is scored by the policy at ``t - 1``.
    ``None`` counts every real token after the first. Returns float64 tensors of length
    ``L + 1`` indexed by layer (entry 0 is the embedding for ``"stream"``, 0 elsewhere) for the
    captured names (``"stream"`` plus ``"attn"``, ``"attn_in"``, ``"ffn"``, ``"ffn_in"`` for
    ``variant="module"``, or ``"mid"`` for ``"residual"``) and ``"count"`` (0-d, tokens).
    Sums (not means) so several batches add up exactly; :func:`entropy_summary` finishes.
    ``apply_final_norm`` normalises the residual-stream vectors (``stream``, ``mid``) only.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}; got {variant!r}")
    parts = decoder_parts(model)
    names = ("stream", "attn", "attn_in", "ffn", "ffn_in") if variant == "module" else ("stream", "mid")
    scored = _scored_positions(input_ids, attention_mask, response_mask)
    sums = {name: torch.zeros(parts.num_layers + 1, dtype=torch.float64) for name in names}
    weight, bias = parts.unembedding.weight, getattr(parts.unembedding, "bias", None)

    def accumulate(name: str, layer: int, tensor: Tensor) -> None:
        selected = tensor[scored]  # [N, d]: only the scored positions are unembedded
        if apply_final_norm and name in ("stream", "mid"):
            selected = parts.final_norm(selected)
        entropy = projected_entropy(selected, weight, bias, position_chunk, vocab_chunk)
        sums[name][layer] += entropy.double().sum().cpu()

    was_training = model.training
    model.eval()  # no dropout in a measurement
    try:
        with torch.no_grad():
            internal_states(model, input_ids, attention_mask, position_ids, names, callback=accumulate)
    finally:
        model.train(was_training)
    sums["count"] = torch.tensor(int(scored.sum()), dtype=torch.int64)
    return sums


def entropy_summary(sums: dict[str, Tensor]) -> dict[str, list]:
    """Token-averaged entropies from :func:`layer_entropy_sums` (possibly summed over batches).

    Returns lists indexed by layer ``0..L`` (JSON-able floats, ``None`` where undefined):
    ``"H"`` (``H^l``), ``"dH"`` (``H^l - H^{l-1}``), ``"dH_attn"``, ``"dH_ffn"``, the module
    entropies they come from (``"H_attn"``/``"H_attn_in"``/``"H_ffn"``/``"H_ffn_in"``; for the
    residual variant ``H_attn_in = H^{l-1}``, ``H_attn = H_ffn_in = H(h^{l-1}+A^l)``,
    ``H_ffn = H^l``), plus ``"layers"``, ``"num_tokens"``, ``"variant"``.
    """
    count = int(sums["count"])
    if count == 0:
        raise ValueError("no scored tokens: the response mask selects nothing")
    mean = {name: (value / count).tolist() for name, value in sums.items() if name != "count"}
    stream = mean["stream"]
    num_layers = len(stream) - 1
    if "mid" in mean:
        variant = "residual"
        attn_in = [None] + stream[:-1]
        attn = ffn_in = [None] + mean["mid"][1:]
        ffn = [None] + stream[1:]
    else:
        variant = "module"
        attn_in, attn, ffn_in, ffn = ([None] + mean[name][1:] for name in ("attn_in", "attn", "ffn_in", "ffn"))
    layers = range(1, num_layers + 1)
    return {
        "layers": list(range(num_layers + 1)),
        "H": stream,
        "dH": [None] + [stream[l] - stream[l - 1] for l in layers],
        "dH_attn": [None] + [attn[l] - attn_in[l] for l in layers],
        "dH_ffn": [None] + [ffn[l] - ffn_in[l] for l in layers],
        "H_attn": attn,
        "H_attn_in": attn_in,
        "H_ffn": ffn,
        "H_ffn_in": ffn_in,
        "num_tokens": count,
        "variant": variant,
    }


def layer_entropies(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    response_mask: Tensor | None = None,
    position_ids: Tensor | None = None,
    variant: str = "module",
    apply_final_norm: bool = False,
    position_chunk: int = 512,
    vocab_chunk: int | None = 32768,
) -> dict[str, list]:
    """Per-layer token-averaged ``H^l``, ``dH^l``, ``dH_attn^l``, ``dH_ffn^l`` in one forward pass.

    ``variant="module"`` (the authors'): ``dH_attn = H(A E) - H(LN_in(h^{l-1}) E)``,
    ``dH_ffn = H(F E) - H(LN_post(h^{l-1}+A) E)``; ``"residual"``: ``dH_attn =
    H((h^{l-1}+A) E) - H(h^{l-1} E)``, ``dH_ffn = H(h^l E) - H((h^{l-1}+A) E)``. Arguments as
    in :func:`layer_entropy_sums`; result as in :func:`entropy_summary`.
    """
    return entropy_summary(layer_entropy_sums(
        model, input_ids, attention_mask, response_mask, position_ids, variant, apply_final_norm,
        position_chunk, vocab_chunk,
    ))
