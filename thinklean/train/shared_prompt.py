"""One forward pass per distinct prompt in the update, however many samples share it.

GRPO-style batches hold ``G`` responses per prompt. Scoring each row as ``prompt + response``
runs every prompt ``G`` times forward and backward; on the embedded task the prompt is a third
of a row, so two thirds of that work repeats. Here each distinct prompt runs once (with grad),
its KV cache and last-position logits are detached into leaf tensors, and every micro-batch
scores its responses on copies of those leaves (rows index them by group). Gradients pile up on
the leaves across micro-batches; :meth:`SharedPromptForward.backward` then sends them through
the prompt pass once. The parameter gradient is the same as scoring full rows (the chain rule,
split at the cache), up to float summation order.

Only for caches of plain ``DynamicLayer`` layers (transformers >= 4.54, no sliding windows);
:func:`shared_prompt_forward` returns ``None`` otherwise and the trainer scores full rows.
"""

from __future__ import annotations

import torch

from thinklean.models.hf_compat import cache_argument, output_cache
from thinklean.rollout.engine import position_ids_from_mask

try:
    from transformers.cache_utils import DynamicCache, DynamicLayer
except ImportError:  # transformers < 4.54: no per-layer cache objects
    DynamicCache = DynamicLayer = None


def _take_rows(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``t[index]`` along dim 0 whose backward sums the repeated rows in a fixed order on CPU.

    The backward of ``t[index]`` is ``index_put_`` with accumulate, which on CPU with several
    threads adds the rows of one prompt by atomic float adds in whatever order the threads get
    there, so two same-seed runs drift apart from the first update. ``index_select``'s backward
    (``index_add_``) adds them one index after another. On CUDA ``index_add_`` uses atomic adds
    itself, so the rows are taken as before there.
    """
    return t.index_select(0, index) if t.device.type == "cpu" else t[index]


class SharedPromptForward:
    """Prompt KV cache and last logits of ``g`` distinct prompts, as gradient-collecting leaves.

    ``outputs`` are the prompt pass's tensors (in the autograd graph): per layer keys and values
    ``[g, heads, P, head_dim]``, then the last-position logits ``[g, V]``. ``leaves`` are their
    detached copies with ``requires_grad``; micro-batches read only the leaves.
    """

    def __init__(self, outputs: list[torch.Tensor], prompt_mask: torch.Tensor) -> None:
        self.outputs = outputs
        self.leaves = [t.detach().requires_grad_(t.requires_grad) for t in outputs]
        self.prompt_mask = prompt_mask

    def response_logits(self, model: torch.nn.Module, index: torch.Tensor, response_ids: torch.Tensor | None,
                        response_mask: torch.Tensor, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[b, T, V]`` predicting each response token of ``b`` rows.

        ``index[b]``: each row's prompt (row of ``prompt_mask``); ``response_ids``/``response_mask``
        ``[b, T]`` right-padded. Position ``t`` holds the logits that score ``response_ids[:, t]``.
        ``inputs_embeds`` ``[b, T, d]``, with ``response_ids=None``: fed instead of the ids (a
        response with LiteReason latent steps); position ``t`` then scores input ``t``.
        """
        *kv, last_logits = self.leaves
        cache = DynamicCache()
        for layer, (keys, values) in enumerate(zip(kv[0::2], kv[1::2])):
            cache.update(_take_rows(keys, index), _take_rows(values, index), layer)
        attention_mask = torch.cat([self.prompt_mask[index], response_mask], 1)
        positions = position_ids_from_mask(attention_mask)[:, self.prompt_mask.shape[1]:]
        inputs = {"input_ids": response_ids} if inputs_embeds is None else {"inputs_embeds": inputs_embeds}
        out = model(**inputs, attention_mask=attention_mask, position_ids=positions,
                    use_cache=True, **{cache_argument(model): cache})
        return torch.cat([_take_rows(last_logits, index).unsqueeze(1), out.logits[:, :-1]], 1)

    def backward(self) -> None:
        """Send the gradients gathered on the leaves through the prompt pass (once)."""
        pairs = [(out, leaf.grad) for out, leaf in zip(self.outputs, self.leaves) if leaf.grad is not None]
        if pairs:
            torch.autograd.backward([p[0] for p in pairs], [p[1] for p in pairs])
        self.outputs, self.leaves = [], []


def shared_prompt_forward(model: torch.nn.Module, prompt_ids: torch.Tensor,
                          prompt_mask: torch.Tensor) -> SharedPromptForward | None:
    """Run ``g`` distinct left-padded prompts ``[g, P]`` once (with grad when the model trains).

    ``None`` when the model's cache is not made of plain dynamic layers (sliding windows, older
    transformers): the caller then scores full rows.
    """
    if DynamicLayer is None:
        return None
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids_from_mask(prompt_mask),
                use_cache=True, logits_to_keep=1)
    layers = getattr(output_cache(out), "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return None
    outputs = [t for layer in layers for t in (layer.keys, layer.values)] + [out.logits[:, -1]]
    return SharedPromptForward(outputs, prompt_mask)
