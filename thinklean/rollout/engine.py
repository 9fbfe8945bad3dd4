"""Batched sampling with a KV cache, per-token log-probs, forced prefixes and stop strings.

One decode loop serves RL rollouts and evaluation. It calls the model directly
(``model(input_ids, attention_mask, position_ids, cache, use_cache=True)``) instead of
``model.generate`` because the loss needs the log-prob of every sampled token under the exact
sampling distribution, and because on CPU the per-step Python overhead of ``generate`` (logits
processors, stopping criteria, mask bookkeeping) is a large share of a tiny model's step.

Layout of one chunk of rows inside the loop::

    [pad pad prompt prompt prefix prefix | gen gen gen ...]    (left-padded, one cache)

Positions are ``cumsum(attention_mask) - 1``, so a row's tokens get the same positions whatever
padding surrounds them. Rows that finish are dropped from the cache, so the loop only pays for
rows still decoding, and it ends as soon as every row is done.

What goes into the model at each step is an :class:`InputStep`: by default the token each row
just wrote. LiteReason's (``rollout/latent.py``) plugs into the same loop: a row that closed
``</implicit_thought>`` feeds ``projector(hidden)`` as ``inputs_embeds`` for N steps and writes no
token, while the other rows of the batch take ordinary token steps in the same forward.
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass

import torch

from thinklean.models.hf_compat import cache_argument, logits_to_keep_argument, output_cache


@dataclass
class SamplingConfig:
    """How to sample.

    ``max_new_tokens`` caps the whole response, forced prefix included: every row of
    ``RolloutBatch.response_ids`` has at most ``max_new_tokens`` real tokens. ``temperature == 0``
    is greedy. ``top_p < 1`` samples from the smallest set of tokens whose probability reaches
    ``top_p`` (the recorded log-prob is still that of the full tempered distribution).
    ``stop_strings``: a row stops once its response text contains one of them (the stop string
    is kept in the response; the token that completes it may carry a few extra characters).
    ``batch_size``: most rows decoded together; ``len(prompts) * num_samples`` rows are chunked.
    ``decode``: the forward/cache strategy of the decode loop. ``"dynamic"``: a cache of the live
    rows only, eager (fastest on a CPU). ``"static"``: a fixed-shape ``StaticCache`` step run through
    ``torch.compile`` (CUDA graphs on a GPU), for models that declare compile support; others,
    LiteReason's latent steps and transformers without ``StaticCache`` use ``"dynamic"``. Both
    give the same greedy tokens (``tests/test_rollout.py``); see docs/scaling.md for speeds.
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop_strings: tuple[str, ...] = ()
    batch_size: int = 64
    decode: str = "dynamic"


@dataclass
class RolloutBatch:
    """Sampled responses, ``B = len(prompts) * num_samples`` rows in prompt-major order.

    prompt_ids:         LongTensor[B, P], left-padded with the pad token id.
    prompt_mask:        LongTensor[B, P], 1 on prompt tokens.
    response_ids:       LongTensor[B, T], right-padded; forced prefix tokens first.
    response_mask:      LongTensor[B, T], 1 on response tokens (forced prefix and a generated
                        EOS included), 0 on padding.
    logprobs:           FloatTensor[B, T], log-prob (nats) of each response token under
                        ``log_softmax(logits / temperature)`` (unscaled when greedy); forced
                        prefix tokens included; 0 on padding.
    lengths:            LongTensor[B] = ``response_mask.sum(1)``.
    group_ids:          LongTensor[B], index of the row's prompt.
    texts:              decoded responses (special tokens kept, padding and final EOS removed).
    finished:           BoolTensor[B], True if stopped by EOS or a stop string, False if cut at
                        ``max_new_tokens``.
    forced_prefix_lens: LongTensor[B], number of forced prefix tokens at the start of each row.

    All tensors are on the CPU. ``torch.cat([prompt_ids, response_ids], 1)`` with the
    concatenated masks is the full sequence a training forward pass scores (positions =
    ``cumsum(mask) - 1``).
    """

    prompt_ids: torch.LongTensor
    prompt_mask: torch.LongTensor
    response_ids: torch.LongTensor
    response_mask: torch.LongTensor
    logprobs: torch.FloatTensor
    lengths: torch.LongTensor
    group_ids: torch.LongTensor
    texts: list[str]
    finished: torch.BoolTensor
    forced_prefix_lens: torch.LongTensor


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.LongTensor:
    """``cumsum(mask) - 1`` with padding positions set to 0. ``[B, L] -> [B, L]``."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.clamp_(min=0)


def left_pad(contexts: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded ``input_ids``, ``attention_mask`` and ``position_ids``, each ``[n, max len]``."""
    width = max(len(c) for c in contexts)
    input_ids = torch.full((len(contexts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(contexts), width), dtype=torch.long)
    for i, c in enumerate(contexts):
        input_ids[i, width - len(c):] = torch.tensor(c)
        attention_mask[i, width - len(c):] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    return input_ids, attention_mask, position_ids_from_mask(attention_mask)


def pad_token_id(tokenizer) -> int:
    """The pad token id, else the EOS id (the HF convention for models trained without padding)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer needs a pad_token or an eos_token")
    return pad_id


def eos_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS id plus any EOS ids in ``model.generation_config``."""
    ids = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    generation_config = getattr(model, "generation_config", None)
    extra = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    if extra is not None:
        ids.extend(int(i) for i in (extra if isinstance(extra, (list, tuple)) else [extra]))
    if not ids:
        raise ValueError("the tokenizer has no eos_token and model.generation_config names none")
    return sorted(set(ids))


def generate(
    model,
    tokenizer,
    prompts: list[str],
    num_samples: int = 1,
    config: SamplingConfig = SamplingConfig(),
    forced_prefixes: list[str] | None = None,
    generator: torch.Generator | None = None,
) -> RolloutBatch:
    """Sample ``num_samples`` responses for every prompt; see :class:`RolloutBatch`.

    prompts:         already formatted prompt strings (``formats.format_prompt``).
    forced_prefixes: None, or one string per row (``len(prompts) * num_samples``, prompt-major),
                     e.g. ``"<think>"``; tokenized without special tokens and written as the
                     start of that row's response ("" forces nothing).
    generator:       torch.Generator on the model's device, for reproducible sampling (the
                     global RNG when None).

    Runs under ``torch.no_grad()`` with the model in eval mode; the training flag is restored.
    """
    check_arguments(prompts, num_samples, config, forced_prefixes)
    num_rows = len(prompts) * num_samples
    pad_id = pad_token_id(tokenizer)
    eos_ids = eos_token_ids(model, tokenizer)
    device = next(model.parameters()).device
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but the model is on {device}; "
                         f"create it with torch.Generator(device={str(device)!r})")

    row_prompts, prefix_tokens = tokenize_rows(tokenizer, prompts, num_samples, config, forced_prefixes)
    responses: list[list[int]] = []
    logprobs: list[torch.Tensor] = []
    finished: list[bool] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, num_rows, config.batch_size):
                stop = min(start + config.batch_size, num_rows)
                chunk = decode_chunk(
                    model, tokenizer, row_prompts[start:stop], prefix_tokens[start:stop],
                    config, pad_id, eos_ids, generator, InputStep(),
                )
                responses.extend(chunk[0])
                logprobs.extend(chunk[1])
                finished.extend(chunk[2])
    finally:
        model.train(was_training)

    return assemble_batch(
        tokenizer, row_prompts, responses, logprobs, finished, prefix_tokens, num_samples,
        pad_id, eos_ids,
    )


def tokenize_rows(tokenizer, prompts: list[str], num_samples: int, config: SamplingConfig,
                  forced_prefixes: list[str] | None) -> tuple[list[list[int]], list[list[int]]]:
    """Prompt token ids and forced-prefix token ids of every row (``len(prompts) * num_samples``,
    prompt-major); raises ValueError if a prefix is longer than ``config.max_new_tokens``."""
    num_rows = len(prompts) * num_samples
    prompt_tokens = [_encode_prompt(tokenizer, p) for p in prompts]
    if forced_prefixes is None:
        prefix_tokens = [[] for _ in range(num_rows)]
    else:
        cache: dict[str, list[int]] = {}
        prefix_tokens = [
            cache.setdefault(p, tokenizer(p, add_special_tokens=False)["input_ids"]) if p else []
            for p in forced_prefixes
        ]
    too_long = [i for i, t in enumerate(prefix_tokens) if len(t) > config.max_new_tokens]
    if too_long:
        raise ValueError(
            f"forced_prefixes[{too_long[0]}] has {len(prefix_tokens[too_long[0]])} tokens, more than "
            f"max_new_tokens={config.max_new_tokens}"
        )
    return [prompt_tokens[i // num_samples] for i in range(num_rows)], prefix_tokens


def check_arguments(prompts, num_samples, config, forced_prefixes) -> None:
    """Raise TypeError/ValueError naming the bad argument of a ``generate`` call."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, got a single string")
    if not prompts:
        raise ValueError("prompts is empty")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if config.max_new_tokens < 1:
        raise ValueError(f"SamplingConfig.max_new_tokens must be >= 1, got {config.max_new_tokens}")
    if config.temperature < 0:
        raise ValueError(f"SamplingConfig.temperature must be >= 0 (0 = greedy), got {config.temperature}")
    if not 0 < config.top_p <= 1:
        raise ValueError(f"SamplingConfig.top_p must be in (0, 1], got {config.top_p}")
    if config.batch_size < 1:
        raise ValueError(f"SamplingConfig.batch_size must be >= 1, got {config.batch_size}")
    if config.decode not in ("dynamic", "static"):
        raise ValueError(f"SamplingConfig.decode must be 'dynamic' or 'static', got {config.decode!r}")
    if isinstance(config.stop_strings, str) or any(not s for s in config.stop_strings):
        raise ValueError("SamplingConfig.stop_strings must be a tuple of non-empty strings")
    if forced_prefixes is not None and len(forced_prefixes) != len(prompts) * num_samples:
        raise ValueError(
            f"forced_prefixes needs one string per sample (len(prompts) * num_samples = "
            f"{len(prompts) * num_samples}), got {len(forced_prefixes)}"
        )


def _encode_prompt(tokenizer, prompt: str) -> list[int]:
    # A chat-templated prompt already starts with the BOS text; adding special tokens again
    # would double it (Llama). Plain prompts get the tokenizer's usual special tokens.
    bos = tokenizer.bos_token
    add_special = not (bos and prompt.startswith(bos))
    ids = tokenizer(prompt, add_special_tokens=add_special)["input_ids"]
    if not ids:
        raise ValueError(f"prompt {prompt!r} encodes to zero tokens")
    return ids


def _forward(model, cache, attention_mask, position_ids, *, input_ids=None, inputs_embeds=None,
             keep_last: int = 1, output_hidden_states: bool = False):
    """One cached forward over the new positions.

    Returns ``(logits[b, keep_last, V] float32, cache, hidden[b, L, d] or None)``
    where ``hidden`` is the last (post-norm) hidden state, needed later by latent steps.
    """
    keep_name = logits_to_keep_argument(model)
    kwargs = {keep_name: keep_last} if keep_name else {}
    kwargs[cache_argument(model)] = cache
    out = model(
        input_ids=input_ids,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        output_hidden_states=output_hidden_states,
        **kwargs,
    )
    hidden = out.hidden_states[-1] if output_hidden_states else None
    return out.logits[:, -keep_last:].float(), output_cache(out), hidden


try:  # transformers >= 4.54 keeps one object per layer in the cache
    from transformers.cache_utils import DynamicLayer as _DynamicLayer
except ImportError:  # older transformers: keep its DynamicCache as it is
    _DynamicLayer = None

if _DynamicLayer is not None:

    class _PreallocatedLayer(_DynamicLayer):
        """A ``DynamicLayer`` that writes new keys/values into spare capacity.

        ``DynamicLayer.update`` concatenates, copying the whole cache at every decoded token;
        on CPU that copy was ~15% of a decode step. ``keys``/``values`` stay views of the filled
        part, so every other ``DynamicLayer`` method works unchanged.
        """

        _layer_type = None  # never register in transformers' layer-type mapping

        def reserve(self, extra: int) -> None:
            self._key_buffer = self._grow(self.keys, extra)
            self._value_buffer = self._grow(self.values, extra)
            self.keys = self._key_buffer[:, :, : self.keys.shape[-2]]
            self.values = self._value_buffer[:, :, : self.values.shape[-2]]

        @staticmethod
        def _grow(filled: torch.Tensor, extra: int) -> torch.Tensor:
            b, h, n, d = filled.shape
            buffer = filled.new_empty((b, h, n + extra, d))
            buffer[:, :, :n] = filled
            return buffer

        def update(self, key_states, value_states, *args, **kwargs):
            rows, start = self.keys.shape[0], self.keys.shape[-2]
            end = start + key_states.shape[-2]
            if end > self._key_buffer.shape[-2]:
                self.reserve(max(key_states.shape[-2], self._key_buffer.shape[-2]))
            self._key_buffer[:rows, :, start:end] = key_states
            self._value_buffer[:rows, :, start:end] = value_states
            self.keys = self._key_buffer[:rows, :, :end]
            self.values = self._value_buffer[:rows, :, :end]
            return self.keys, self.values

        def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
            # In place and over the filled positions only: dropping finished rows used to copy the
            # whole capacity into a new buffer (7% of a CPU rollout); rows past the kept ones idle.
            index = beam_idx.to(self._key_buffer.device)
            rows, n = index.numel(), self.keys.shape[-2]
            for name in ("_key_buffer", "_value_buffer"):
                buffer = getattr(self, name)
                selected = buffer[:, :, :n].index_select(0, index)
                if rows > buffer.shape[0]:
                    buffer = buffer.new_empty((rows, *buffer.shape[1:]))
                    setattr(self, name, buffer)
                buffer[:rows, :, :n] = selected
            self.keys = self._key_buffer[:rows, :, :n]
            self.values = self._value_buffer[:rows, :, :n]

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            self.reorder_cache(torch.as_tensor(indices, device=self._key_buffer.device))


def _preallocate(cache, extra: int):
    """Give the cache's plain dynamic layers room for ``extra`` more positions (in place)."""
    layers = getattr(cache, "layers", None)
    if _DynamicLayer is None or layers is None:
        return cache
    for i, layer in enumerate(layers):
        if type(layer) is _DynamicLayer and layer.is_initialized and layer.keys is not None:
            grown = _PreallocatedLayer()
            grown.__dict__.update(layer.__dict__)
            grown.reserve(extra)
            layers[i] = grown
    return cache


def _distinct_rows(contexts: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(first[u], inverse[n])``: the first row of each distinct context and each row's distinct
    index, so ``contexts[first[inverse[i]]] == contexts[i]``. A prompt's samples share one prefill."""
    seen: dict[tuple[int, ...], int] = {}
    first, inverse = [], []
    for i, context in enumerate(contexts):
        key = tuple(context)
        if key not in seen:
            seen[key] = len(first)
            first.append(i)
        inverse.append(seen[key])
    return torch.tensor(first, device=device), torch.tensor(inverse, device=device)


def _mask_buffer(attention_mask: torch.Tensor, max_new: int) -> tuple[int, torch.Tensor]:
    """The prefill's width ``W`` and a ``[n, W + max_new]`` mask holding the prefill's ``[n, W]``
    mask followed by ones: one buffer that decode steps slice, instead of a cat per step."""
    n, width = attention_mask.shape
    mask = attention_mask.new_ones((n, width + max_new))
    mask[:, :width] = attention_mask
    return width, mask


class _DynamicDecode:
    """The default forward/cache strategy: an HF cache holding only the live rows.

    Finished rows leave the cache as soon as they finish and attention reads only the filled
    positions, so every step costs what the live rows need; shapes change every step (no
    compilation). Works with any HF causal LM and with ``inputs_embeds`` and hidden states.
    """

    def __init__(self, model, attention_mask: torch.Tensor, last_positions: torch.Tensor, max_new: int):
        """attention_mask: [n, W] of the prefill; last_positions: [n]; max_new: decode steps expected
        (room is made for more: latent steps do not count)."""
        self.model = model
        self.width, self.mask = _mask_buffer(attention_mask, max_new)
        self.last_positions = last_positions
        self.max_new = max_new
        self.cache = None

    def prefill(self, input_ids, positions, first, inverse, keep_last: int, want_hidden: bool):
        """Forward the distinct contexts ``input_ids[first]`` once; returns ``logits[n, keep_last, V]``
        and the last hidden state ``[n, d]`` (or None), every row's copy of its context's."""
        mask = self.mask[:, : self.width]
        logits, self.cache, hidden = _forward(self.model, None, mask[first], positions[first],
                                              input_ids=input_ids[first], keep_last=keep_last,
                                              output_hidden_states=want_hidden)
        if first.numel() < inverse.numel():
            self.cache.reorder_cache(inverse)
            logits, hidden = logits[inverse], hidden[inverse] if hidden is not None else None
        self.cache = _preallocate(self.cache, extra=self.max_new)
        return logits, hidden[:, -1] if hidden is not None else None

    def keep(self, keep: torch.Tensor) -> None:
        """Keep live rows ``keep`` (BoolTensor[b]), in order."""
        self.mask, self.last_positions = self.mask[keep], self.last_positions[keep]
        self.cache.reorder_cache(keep.nonzero().squeeze(-1))

    def step(self, want_hidden: bool, inputs: dict[str, torch.Tensor]):
        """One position for every live row; returns ``logits[b, V]`` and hidden ``[b, d]`` or None."""
        self.width += 1
        if self.width > self.mask.shape[1]:  # latent steps write no token: a row may outlast max_new steps
            self.mask = torch.cat([self.mask, torch.ones_like(self.mask)], dim=1)
        self.last_positions = self.last_positions + 1
        logits, self.cache, hidden = _forward(self.model, self.cache, self.mask[:, : self.width],
                                              self.last_positions[:, None], output_hidden_states=want_hidden,
                                              **inputs)
        return logits[:, -1], hidden[:, -1] if hidden is not None else None


class _StaticDecode:
    """Fixed shapes for ``torch.compile`` (CUDA graphs on a GPU): an HF ``StaticCache`` of ``S``
    slots and ``W + max_new`` positions, every step the same ``[S, 1]`` inputs and full-width mask.

    A finished row keeps its slot (fed padding, its logits ignored) until the live rows fit in
    half the slots; then the cache shrinks to the next power of two, so a chunk compiles a few
    batch shapes, not one per step. Attention reads all ``W + max_new`` positions every step (the
    price of fixed shapes: on a 2-core CPU that outweighs the saved overhead, see
    docs/scaling.md). Token inputs only, no hidden states.
    """

    def __init__(self, model, attention_mask: torch.Tensor, last_positions: torch.Tensor, max_new: int):
        from transformers import StaticCache

        self.model = model
        self.width, self.mask = _mask_buffer(attention_mask, max_new)
        self.positions = last_positions[:, None].clone()
        self.cache = StaticCache(config=model.config, max_cache_len=self.width + max_new)
        self.slots = torch.arange(len(attention_mask), device=attention_mask.device)  # slot of each live row
        self.forward = _compiled(model)

    def prefill(self, input_ids, positions, first, inverse, keep_last: int, want_hidden: bool):
        keep_name = logits_to_keep_argument(self.model)
        # The cache counts its own filled positions (transformers 5), so no cache_position is passed.
        out = self.model(input_ids=input_ids[first], attention_mask=self.mask[first], position_ids=positions[first],
                         use_cache=True,
                         **{cache_argument(self.model): self.cache, **({keep_name: keep_last} if keep_name else {})})
        self._select_slots(inverse)
        return out.logits[:, -keep_last:].float()[inverse], None

    def _select_slots(self, index: torch.Tensor) -> None:
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys.index_select(0, index), layer.values.index_select(0, index)
            if hasattr(layer, "batch_size"):
                layer.batch_size = index.numel()
            torch._dynamo.mark_static_address(layer.keys)
            torch._dynamo.mark_static_address(layer.values)

    def keep(self, keep: torch.Tensor) -> None:
        self.slots = self.slots[keep]
        live, size = self.slots.numel(), self.positions.shape[0]
        if 0 < live <= size // 2:
            target = 1 << (live - 1).bit_length()  # next power of two
            index = torch.cat([self.slots, self.slots[:1].expand(target - live)])
            self._select_slots(index)
            self.mask, self.positions = self.mask[index], self.positions[index]
            self.slots = torch.arange(live, device=index.device)

    def step(self, want_hidden: bool, inputs: dict[str, torch.Tensor]):
        input_ids = torch.zeros_like(self.positions)
        input_ids[self.slots] = inputs["input_ids"]
        self.positions += 1
        keep_name = logits_to_keep_argument(self.model)
        out = self.forward(input_ids=input_ids, attention_mask=self.mask, position_ids=self.positions, use_cache=True,
                           **{cache_argument(self.model): self.cache, **({keep_name: 1} if keep_name else {})})
        return out.logits[self.slots, -1].float(), None


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _compiled(model):
    """``torch.compile(model)``, once per model (CUDA graphs on a GPU); the eager model if that fails."""
    if model not in _COMPILED:
        mode = "reduce-overhead" if next(model.parameters()).device.type == "cuda" else None
        _COMPILED[model] = _FallbackOnError(torch.compile(model, mode=mode), model)
    return _COMPILED[model]


class _FallbackOnError:
    """Calls the compiled model; if its first call fails (no C++ compiler for inductor, an op dynamo
    cannot trace), warns once and runs the eager model from then on."""

    def __init__(self, compiled, model):
        self.compiled, self.model, self.tested = compiled, model, False

    def __call__(self, **kwargs):
        if self.tested:
            return self.compiled(**kwargs)
        try:
            out = self.compiled(**kwargs)
        except Exception as error:  # noqa: BLE001 - any compile failure: the eager model computes the same
            warnings.warn(f"torch.compile failed ({type(error).__name__}: {error}); static decoding runs eagerly",
                          stacklevel=2)
            self.compiled = self.model
            out = self.model(**kwargs)
        self.tested = True
        return out


def static_decode_problem(model) -> str | None:
    """Why ``SamplingConfig(decode="static")`` falls back to the dynamic cache for ``model``, or None."""
    try:
        from transformers import StaticCache  # noqa: F401
    except ImportError:
        return "this transformers has no StaticCache"
    if not getattr(model, "_can_compile_fullgraph", False):
        return f"{type(model).__name__} does not declare static-cache/compile support (_can_compile_fullgraph)"
    return None


def _sample(logits: torch.Tensor, temperature: float, top_p: float,
            generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits[b, V] -> (token ids[b], log-probs[b])`` under the tempered full distribution."""
    if temperature == 0:
        logprobs = torch.log_softmax(logits, dim=-1)
        tokens = logprobs.argmax(dim=-1)
        return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)
    logprobs = torch.log_softmax(logits / temperature, dim=-1)
    probs = logprobs.exp()
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Drop a token when the tokens ranked above it already reach top_p (the first always stays).
        drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        choice = torch.multinomial(sorted_probs, 1, generator=generator)
        tokens = order.gather(-1, choice).squeeze(-1)
    else:
        tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)


class InputStep:
    """What every live row feeds the model at a decode step; this base class: the token it just wrote.

    :func:`decode_chunk` owns sampling, forced prefixes, stopping and the KV cache; an input step
    decides what goes *into* the model. LiteReason's (``rollout/latent.py``) makes a row that
    closed ``<implicit_thought>N</implicit_thought>`` feed ``projector(hidden)`` for N steps,
    writing no token. Live batch row ``b`` is chunk row ``rows[b]`` (``rows``: LongTensor[b]).
    One instance serves one chunk; it may keep per-row state for the caller to read afterwards.
    """

    def start(self, prefixes: list[list[int]], max_len: int, device: torch.device) -> list[int]:
        """How many forced tokens of each row go into the prefill (the rest are forced one per step)."""
        return [len(p) for p in prefixes]

    def wants_hidden(self, rows: torch.Tensor) -> bool:
        """Whether the next forward must return the last hidden state ``[b, d]`` of the live rows."""
        return False

    def vector_rows(self, rows: torch.Tensor) -> torch.Tensor | None:
        """BoolTensor[b]: live rows that feed a vector and write no token this step (None: no row)."""
        return None

    def observe(self, rows: torch.Tensor, columns: torch.Tensor, tokens: torch.Tensor, continuing: torch.Tensor,
                tokens_out: torch.Tensor, hidden: torch.Tensor | None, vectors: torch.Tensor | None) -> None:
        """Called once per step, before finished rows leave the batch.

        columns: LongTensor[b], response column each row wrote (garbage where ``vectors``);
        tokens: LongTensor[b], the token written (pad where ``vectors``); continuing: BoolTensor[b],
        rows that wrote a token and go on; tokens_out: LongTensor[n, max_len], every row's response
        so far; hidden: ``[b, d]`` from the forward that produced this step's logits, or None;
        vectors: :meth:`vector_rows` of this step.
        """

    def next_inputs(self, embed: torch.nn.Module, tokens: torch.Tensor,
                    vectors: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Keyword inputs of the next forward, ``input_ids[b, 1]`` or ``inputs_embeds[b, 1, d]``;
        ``tokens``/``vectors`` are this step's, restricted to the rows that go on."""
        return {"input_ids": tokens[:, None]}


def decode_chunk(model, tokenizer, prompts: list[list[int]], prefixes: list[list[int]], config: SamplingConfig,
                 pad_id: int, eos_ids: list[int], generator: torch.Generator | None,
                 inputs: InputStep) -> tuple[list[list[int]], list[torch.Tensor], list[bool]]:
    """Decode one chunk of rows (prompt and forced-prefix token ids per row); the one decode loop
    of :func:`generate` and LiteReason's ``generate_latent``.

    Returns per row: response token ids (forced prefix first), their log-probs ``FloatTensor[len]``
    and whether it finished (EOS or a stop string). Each step feeds every live row one position
    (``inputs`` says which); a row still inside its forced prefix is fed the next forced token and
    scored on it, a sampled token may end the row, a forced one never does.
    """
    device = next(model.parameters()).device
    n = len(prompts)
    max_len = config.max_new_tokens
    scale = config.temperature if config.temperature > 0 else 1.0
    cuts = inputs.start(prefixes, max_len, device)
    forcing = any(c < len(p) for c, p in zip(cuts, prefixes))  # some forced tokens are fed in the loop
    contexts = [p + f[:c] for p, f, c in zip(prompts, prefixes, cuts)]
    input_ids, attention_mask, positions = left_pad(contexts, pad_id, device)

    # The buffers hold whole responses: column j of row r is its j-th response token.
    tokens_out = torch.full((n, max_len), pad_id, dtype=torch.long, device=device)
    logprobs_out = torch.zeros((n, max_len), dtype=torch.float32, device=device)
    for i, prefix in enumerate(prefixes):
        if prefix:
            tokens_out[i, : len(prefix)] = torch.tensor(prefix, device=device)
    prefix_lens = torch.tensor([len(p) for p in prefixes], device=device)
    lengths = torch.tensor(cuts, device=device)  # response tokens written (and scored) so far
    finished = torch.zeros(n, dtype=torch.bool, device=device)

    max_cut = max(cuts)
    rows = torch.arange(n, device=device)  # chunk row of each live batch row
    static = config.decode == "static" and type(inputs) is InputStep and static_decode_problem(model) is None
    kv = (_StaticDecode if static else _DynamicDecode)(model, attention_mask, positions[:, -1], max_len - min(cuts))
    first, inverse = _distinct_rows(contexts, device)
    logits, hidden = kv.prefill(input_ids, positions, first, inverse, max_cut + 1, inputs.wants_hidden(rows))
    for i, k in enumerate(cuts):
        if k:  # forced tokens are actions too: score them with the logits of the positions before them
            row_logprobs = torch.log_softmax(logits[i, max_cut - k: max_cut] / scale, dim=-1)
            logprobs_out[i, :k] = row_logprobs.gather(-1, tokens_out[i, :k, None]).squeeze(-1)
    logits = logits[:, -1]

    eos = torch.tensor(eos_ids, device=device)
    stop_strings = tuple(config.stop_strings)
    stop_window = max((len(s) for s in stop_strings), default=0) + 2  # tokens >= 1 char, mostly
    embed = model.get_input_embeddings()
    live = lengths < max_len  # a prefix may already fill the budget
    if not bool(live.all()):
        rows, logits = rows[live], logits[live]
        hidden = hidden[live] if hidden is not None else None
        kv.keep(live)

    while rows.numel() > 0:
        columns = lengths[rows]
        vectors = inputs.vector_rows(rows)
        forced = columns < prefix_lens[rows] if forcing else None
        if vectors is None and forced is None:  # every row samples: the common step
            writes = sampled = None
            step_tokens, step_logprobs = _sample(logits, config.temperature, config.top_p, generator)
        else:
            writes = ~vectors if vectors is not None else torch.ones_like(rows, dtype=torch.bool)
            forced = forced & writes if forced is not None else torch.zeros_like(writes)
            sampled = writes & ~forced
            step_tokens = torch.full_like(rows, pad_id)
            step_logprobs = torch.zeros(rows.numel(), dtype=torch.float32, device=device)
            if bool(sampled.any()):
                step_tokens[sampled], step_logprobs[sampled] = _sample(
                    logits[sampled], config.temperature, config.top_p, generator)
            if bool(forced.any()):
                forced_tokens = tokens_out[rows[forced], columns[forced]]
                forced_logprobs = torch.log_softmax(logits[forced] / scale, dim=-1)
                step_tokens[forced] = forced_tokens
                step_logprobs[forced] = forced_logprobs.gather(-1, forced_tokens[:, None]).squeeze(-1)
        if writes is None:
            tokens_out[rows, columns] = step_tokens
            logprobs_out[rows, columns] = step_logprobs
            lengths[rows] = columns + 1
        else:
            tokens_out[rows[writes], columns[writes]] = step_tokens[writes]
            logprobs_out[rows[writes], columns[writes]] = step_logprobs[writes]
            lengths[rows[writes]] = columns[writes] + 1

        stopped = torch.isin(step_tokens, eos)
        if sampled is not None:
            stopped &= sampled
        if stop_strings:
            stopped |= _hits_stop_string(tokenizer, tokens_out, rows, columns + 1, stop_strings, stop_window,
                                         ~stopped if sampled is None else sampled & ~stopped)
        finished[rows] = finished[rows] | stopped
        full = columns + 1 >= max_len
        done = stopped | (full if writes is None else writes & full)
        inputs.observe(rows, columns, step_tokens, ~done if writes is None else writes & ~done, tokens_out,
                       hidden, vectors)

        if bool(done.all()):
            break
        if bool(done.any()):  # rows feeding vectors never finish, so they all stay
            keep = ~done
            rows, step_tokens = rows[keep], step_tokens[keep]
            vectors = vectors[keep] if vectors is not None else None
            kv.keep(keep)
        logits, hidden = kv.step(inputs.wants_hidden(rows), inputs.next_inputs(embed, step_tokens, vectors))

    lengths_list = lengths.tolist()
    tokens_cpu, logprobs_cpu = tokens_out.cpu(), logprobs_out.cpu()
    responses = [tokens_cpu[i, : lengths_list[i]].tolist() for i in range(n)]
    row_logprobs = [logprobs_cpu[i, : lengths_list[i]] for i in range(n)]
    return responses, row_logprobs, finished.cpu().tolist()


def _hits_stop_string(tokenizer, tokens_out, rows, new_lengths, stop_strings, window,
                      candidates) -> torch.Tensor:
    """Which live rows' newest token completes a stop string (BoolTensor aligned with ``rows``).

    Decodes only the last ``window`` response tokens of each candidate row, twice (with and
    without the newest token), and accepts a match only if it ends inside the newest token's
    text, so a stop string already present in the forced prefix does not count.
    """
    hits = torch.zeros(rows.numel(), dtype=torch.bool)
    index = candidates.nonzero().squeeze(-1).tolist()
    if not index:
        return hits.to(rows.device)
    ends = new_lengths.tolist()
    candidate_tokens = tokens_out[rows[candidates]].tolist()  # one device->host copy per step
    tails, heads = [], []
    for j, b in enumerate(index):
        end = ends[b]
        tail = candidate_tokens[j][max(0, end - window): end]
        tails.append(tail)
        heads.append(tail[:-1])
    texts = tokenizer.batch_decode(tails + heads, skip_special_tokens=False)
    full, before = texts[: len(index)], texts[len(index):]
    for j, b in enumerate(index):
        text, head = full[j], before[j]
        for s in stop_strings:
            if text.find(s, max(0, len(head) - len(s) + 1)) >= 0:
                hits[b] = True
                break
    return hits.to(rows.device)


def assemble_batch(tokenizer, row_prompts: list[list[int]], responses: list[list[int]], logprobs: list[torch.Tensor],
                   finished: list[bool], prefix_tokens: list[list[int]], num_samples: int, pad_id: int,
                   eos_ids: list[int]) -> RolloutBatch:
    """The :class:`RolloutBatch` of per-row token lists: ``responses[i]`` starts with ``prefix_tokens[i]``,
    ``logprobs[i]`` has one value per response token, ``finished[i]`` is False if cut at the cap."""
    num_rows = len(responses)
    prompt_width = max(len(p) for p in row_prompts)
    response_width = max(1, max(len(r) for r in responses))
    prompt_ids = torch.full((num_rows, prompt_width), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((num_rows, prompt_width), dtype=torch.long)
    response_ids = torch.full((num_rows, response_width), pad_id, dtype=torch.long)
    response_mask = torch.zeros((num_rows, response_width), dtype=torch.long)
    response_logprobs = torch.zeros((num_rows, response_width), dtype=torch.float32)
    eos_set = set(eos_ids)
    text_tokens = []
    for i in range(num_rows):
        p, r = row_prompts[i], responses[i]
        prompt_ids[i, prompt_width - len(p):] = torch.tensor(p)
        prompt_mask[i, prompt_width - len(p):] = 1
        if r:
            response_ids[i, : len(r)] = torch.tensor(r)
            response_mask[i, : len(r)] = 1
            response_logprobs[i, : len(r)] = logprobs[i]
        ended_by_eos = finished[i] and r and r[-1] in eos_set and len(r) > len(prefix_tokens[i])
        text_tokens.append(r[:-1] if ended_by_eos else r)
    texts = tokenizer.batch_decode(text_tokens, skip_special_tokens=False)
    return RolloutBatch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        logprobs=response_logprobs,
        lengths=response_mask.sum(1),
        group_ids=torch.arange(num_rows) // num_samples,
        texts=texts,
        finished=torch.tensor(finished, dtype=torch.bool),
        forced_prefix_lens=torch.tensor([len(t) for t in prefix_tokens], dtype=torch.long),
    )
