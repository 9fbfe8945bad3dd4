"""LiteReason latent steps: cached decoding, and the teacher-forced forward that training uses.

A row that writes ``<implicit_thought>N</implicit_thought>`` continues with N *latent* steps
(arXiv 2512.02240): step 1's input embedding is ``projector(h)`` with ``h`` the post-norm hidden
state at the closing tag, step k+1's is ``projector(hidden at latent k)``. Latent steps write no
token and no log-prob; the output at latent N predicts the next discrete token.

Latent positions are left out of ``response_ids``/``response_mask``/``logprobs``/``lengths`` (so
rewards and metrics count discrete tokens only) and recorded as ``latent_segments``: per row a
list of ``(position, N)``, meaning N latent steps sit right after the first ``position`` response
tokens (the closing tag is ``response_ids[row, position - 1]``), and their input embeddings as
``latent_inputs``. :func:`latent_forward` puts them back to score a batch.

Detection works on decoded text, so it also covers tokenizers in which the tags are ordinary
text spread over several tokens: the newest token must complete ``</implicit_thought>``, the last
``<implicit_thought>`` must lie within a few tokens before it (the authors allow a gap of up to
3 tokens), and the first run of digits between them is N (none: 1), clamped to
``1..projector.max_steps``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from thinklean.data.formats import LATENT, LATENT_END
from thinklean.models.hf_compat import cache_argument, logits_to_keep_argument, output_cache, unwrap_ddp
from thinklean.models.projector import ReasoningProjector
from thinklean.rollout.engine import (
    InputStep,
    RolloutBatch,
    SamplingConfig,
    assemble_batch,
    check_arguments,
    decode_chunk,
    eos_token_ids,
    pad_token_id,
    position_ids_from_mask,
    tokenize_rows,
)

MAX_GAP_TOKENS = 3  # tokens allowed between the tags (the number), as in the authors' detector
_DIGITS = re.compile(r"[0-9]+")


@dataclass
class LatentRolloutBatch(RolloutBatch):
    """A :class:`RolloutBatch` whose rows may contain latent steps (none of them in the tensors).

    latent_steps:    LongTensor[B], latent steps run by each row (sum of its segments' N).
    latent_segments: per row, ``[(position, N), ...]`` in order: N latent steps follow the first
                     ``position`` response tokens. Feed it to :func:`latent_forward`.
    latent_inputs:   per row, FloatTensor[latent_steps[row], d] (projector dtype, model device):
                     the input embeddings the row's latent steps were fed, in order.
    """

    latent_steps: torch.LongTensor
    latent_segments: list[list[tuple[int, int]]]
    latent_inputs: list[torch.Tensor]


@dataclass
class LatentForwardOutput:
    """logits: [B, T, V] (model dtype), ``logits[b, t]`` scores ``response_ids[b, t]``;
    hidden: [B, T, d], the post-norm hidden states those logits come from. Padding: garbage."""

    logits: torch.Tensor
    hidden: torch.Tensor


class _SegmentDetector:
    """Is a row's newest response token the end of ``<implicit_thought>N</implicit_thought>``?"""

    def __init__(self, tokenizer, max_steps: int, device: torch.device):
        self.tokenizer = tokenizer
        self.max_steps = max_steps
        # Only a token containing the tag's last character can complete it; other rows are not
        # decoded. Raw token strings (byte-level or sentencepiece) keep '>' as it is.
        vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        ids = [i for i, token in enumerate(vocab) if token is not None and LATENT_END[-1] in token]
        self.candidates = torch.tensor(ids, dtype=torch.long, device=device)
        tag_tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in (LATENT, LATENT_END))
        self.window = tag_tokens + MAX_GAP_TOKENS + 1  # +1: a merged token around a tag

    def steps(self, tokens: list[int]) -> int | None:
        """N (clamped) if ``tokens[-1]`` completes a latent segment, else None."""
        tail = tokens[-self.window:]
        text, head = self.tokenizer.batch_decode([tail, tail[:-1]], skip_special_tokens=False)
        end = text.rfind(LATENT_END)
        if end < 0 or end + len(LATENT_END) <= len(head):  # absent, or closed before this token
            return None
        start = text.rfind(LATENT, 0, end)
        if start < 0:
            return None
        between = text[start + len(LATENT): end]
        if LATENT_END in between:  # that opening tag was already closed: this closing tag is a stray
            return None
        digits = _DIGITS.search(between)
        steps = int(digits.group()) if digits else 1
        return max(1, min(steps, self.max_steps))

    def first_segment(self, tokens: list[int]) -> tuple[int, int] | None:
        """``(position, N)`` of the first segment closed inside ``tokens`` (a forced prefix)."""
        return next(self._closed_segments(tokens), None)

    def segments(self, tokens: list[int]) -> list[tuple[int, int]]:
        """Every ``(position, N)`` closed inside ``tokens`` (a teacher-forced response), in order."""
        return list(self._closed_segments(tokens))

    def _closed_segments(self, tokens: list[int]) -> Iterator[tuple[int, int]]:
        candidates = set(self.candidates.tolist())
        for end in range(1, len(tokens) + 1):
            if tokens[end - 1] in candidates:
                steps = self.steps(tokens[:end])
                if steps is not None:
                    yield end, steps


def segment_finder(tokenizer, max_steps: int) -> Callable[[list[int]], list[tuple[int, int]]]:
    """A function ``response tokens -> [(position, N), ...]`` finding the latent segments of a
    written response exactly as :func:`generate_latent` does while decoding (projector SFT)."""
    return _SegmentDetector(tokenizer, max_steps, torch.device("cpu")).segments


def generate_latent(
    model,
    tokenizer,
    projector: ReasoningProjector,
    prompts: list[str],
    num_samples: int = 1,
    config: SamplingConfig = SamplingConfig(),
    generator: torch.Generator | None = None,
    forced_prefixes: list[str] | None = None,
) -> LatentRolloutBatch:
    """:func:`thinklean.rollout.engine.generate` with LiteReason latent steps.

    Same arguments and outputs as ``generate`` (``max_new_tokens`` caps discrete tokens; latent
    steps are free), plus ``latent_steps``, ``latent_segments`` and ``latent_inputs``. A segment
    closed inside a forced prefix runs its latent steps there too. Runs under ``torch.no_grad()``
    with model and projector in eval mode; their training flags are restored.
    """
    check_arguments(prompts, num_samples, config, forced_prefixes)
    pad_id = pad_token_id(tokenizer)
    eos_ids = eos_token_ids(model, tokenizer)
    device = next(model.parameters()).device
    _check_projector(model, projector)
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but the model is on {device}; "
                         f"create it with torch.Generator(device={str(device)!r})")

    row_prompts, prefix_tokens = tokenize_rows(tokenizer, prompts, num_samples, config, forced_prefixes)
    detector = _SegmentDetector(tokenizer, projector.max_steps, device)

    responses, logprobs, finished, segments, latent_steps, latent_inputs = [], [], [], [], [], []
    model_was_training, projector_was_training = model.training, projector.training
    model.eval()
    projector.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(row_prompts), config.batch_size):
                stop = min(start + config.batch_size, len(row_prompts))
                latent = _LatentInput(detector, projector, stop - start)
                chunk = decode_chunk(model, tokenizer, row_prompts[start:stop], prefix_tokens[start:stop], config,
                                     pad_id, eos_ids, generator, latent)
                for collected, part in zip((responses, logprobs, finished, segments, latent_steps, latent_inputs),
                                           (*chunk, latent.segments, latent.steps, latent.fed_vectors(device))):
                    collected.extend(part)
    finally:
        model.train(model_was_training)
        projector.train(projector_was_training)

    batch = assemble_batch(tokenizer, row_prompts, responses, logprobs, finished, prefix_tokens, num_samples,
                      pad_id, eos_ids)
    return LatentRolloutBatch(
        **vars(batch),
        latent_steps=torch.tensor(latent_steps, dtype=torch.long),
        latent_segments=segments,
        latent_inputs=latent_inputs,
    )


def _check_projector(model, projector: ReasoningProjector) -> None:
    embedding = model.get_input_embeddings()
    if projector.hidden_size != embedding.weight.shape[1]:
        raise ValueError(f"the projector maps size {projector.hidden_size} but the model's embeddings have size "
                         f"{embedding.weight.shape[1]}; build it with ReasoningProjector.from_model(model)")
    if projector.device != embedding.weight.device:
        raise ValueError(f"the projector is on {projector.device} but the model is on {embedding.weight.device}; "
                         f"move it with projector.to(device)")


class _LatentInput(InputStep):
    """LiteReason's input step: after a row closes a segment of N, it feeds ``projector(hidden)``
    for N steps (step k+1 takes the hidden state of latent step k) and writes no token.

    After the chunk: ``segments[row]`` = ``[(position, N), ...]``, ``steps[row]`` = their total,
    ``fed[row]`` = the latent input embeddings in order (see :class:`LatentRolloutBatch`).
    """

    def __init__(self, detector: _SegmentDetector, projector: ReasoningProjector, n: int):
        self.detector = detector
        self.projector = projector
        self.segments: list[list[tuple[int, int]]] = [[] for _ in range(n)]
        self.steps = [0] * n
        self.fed: list[list[torch.Tensor]] = [[] for _ in range(n)]
        self.left = torch.zeros(n, dtype=torch.long)  # latent steps still to feed, per row
        self.vectors: torch.Tensor | None = None  # [rows feeding vectors, d], this step's latent inputs

    def start(self, prefixes: list[list[int]], max_len: int, device: torch.device) -> list[int]:
        # The latent steps of a segment closed inside a forced prefix run before the rest of the
        # prefix, so the prefill stops after that segment and the rest is forced one token per step.
        self.left = self.left.to(device)
        cuts = []
        for i, prefix in enumerate(prefixes):
            segment = self.detector.first_segment(prefix)
            if segment and segment[0] < max_len:  # a segment that ends the budget is never continued
                self._open(i, segment)
            cuts.append(segment[0] if segment else len(prefix))
        return cuts

    def _open(self, row: int, segment: tuple[int, int]) -> None:
        self.left[row] = segment[1]
        self.steps[row] += segment[1]
        self.segments[row].append(segment)

    def wants_hidden(self, rows: torch.Tensor) -> bool:
        return bool((self.left[rows] > 0).any())

    def vector_rows(self, rows: torch.Tensor) -> torch.Tensor | None:
        latent = self.left[rows] > 0
        return latent if bool(latent.any()) else None

    def observe(self, rows, columns, tokens, continuing, tokens_out, hidden, vectors) -> None:
        closing = continuing & torch.isin(tokens, self.detector.candidates)
        window = self.detector.window
        for b in closing.nonzero().flatten().tolist():
            row, end = int(rows[b]), int(columns[b]) + 1
            steps = self.detector.steps(tokens_out[row, max(0, end - window): end].tolist())
            if steps is not None:
                self._open(row, (end, steps))
        if vectors is not None:
            self.vectors = self.projector(hidden[vectors].to(self.projector.dtype))
            self.left[rows[vectors]] -= 1
            for row, vector in zip(rows[vectors].tolist(), self.vectors):
                self.fed[row].append(vector)

    def next_inputs(self, embed, tokens, vectors):
        if vectors is None:
            return {"input_ids": tokens[:, None]}
        inputs_embeds = embed(tokens[:, None])  # pad ids on latent rows, overwritten below
        inputs_embeds[vectors, 0] = self.vectors.to(inputs_embeds.dtype)
        return {"inputs_embeds": inputs_embeds}

    def fed_vectors(self, device: torch.device) -> list[torch.Tensor]:
        """Per row ``FloatTensor[steps, d]``: the latent input embeddings, in order."""
        empty = torch.empty(0, self.projector.hidden_size, dtype=self.projector.dtype, device=device)
        return [torch.stack(row) if row else empty for row in self.fed]


# ------------------------------------------------------------------------- training forward


def latent_forward(
    model,
    projector: ReasoningProjector,
    prompt_ids: torch.LongTensor,
    prompt_mask: torch.LongTensor,
    response_ids: torch.LongTensor,
    response_mask: torch.LongTensor,
    segments: list[list[tuple[int, int]]],
    grad_through_projector: bool = False,
    latent_inputs: Sequence[torch.Tensor] | None = None,
) -> LatentForwardOutput:
    """Score a (latent) rollout teacher-forced, rebuilding its latent steps with ``projector`` or
    feeding the ones the rollout recorded.

    prompt_ids, prompt_mask:     LongTensor[B, P], left-padded (as in :class:`RolloutBatch`).
    response_ids, response_mask: LongTensor[B, T], right-padded, discrete tokens only.
    segments:                    per row ``[(position, N), ...]`` (``LatentRolloutBatch.latent_segments``).
    grad_through_projector:      False (RL): latent embeddings are computed under ``no_grad``,
                                 part of the state, and the projector gets no gradient. True
                                 (projector SFT): the loss backpropagates through the unrolled
                                 latent steps into the projector (and into the LM's activations).
    latent_inputs:               per row FloatTensor[sum of its N, d] (``LatentRolloutBatch.latent_inputs``):
                                 the latent steps' input embeddings, fed as they are (state, no
                                 gradient) in one ordinary forward call instead of being rebuilt
                                 one latent column at a time. Not with ``grad_through_projector``.

    Returns :class:`LatentForwardOutput` with ``logits[B, T, V]`` in the same layout as a plain
    forward's ``logits[:, P - 1: -1]``: ``log_softmax(logits / temperature)`` gathered at
    ``response_ids`` equals the rollout's ``logprobs``. Without segments, or with
    ``latent_inputs``, this is one ordinary forward; otherwise each latent column costs one
    extra cached forward call (rows share calls: the j-th segments of all rows are aligned, see
    :func:`_latent_layout`).
    """
    if len(segments) != response_ids.shape[0]:
        raise ValueError(f"segments has {len(segments)} rows but response_ids has {response_ids.shape[0]}")
    if latent_inputs is not None and grad_through_projector:
        raise ValueError("latent_inputs are fixed embeddings: the projector cannot get a gradient through "
                         "them; pass grad_through_projector=False or no latent_inputs")
    inner = unwrap_ddp(model)
    checkpointing = getattr(inner, "is_activation_checkpointing", None)  # transformers >= 5 name
    if checkpointing is None:
        checkpointing = getattr(inner, "is_gradient_checkpointing", False)
    if model.training and checkpointing and latent_inputs is None:
        raise ValueError("latent_forward joins its chunks through the KV cache, which gradient checkpointing "
                         "switches off; call model.gradient_checkpointing_disable() first or pass latent_inputs")
    _check_projector(inner, projector)
    device = response_ids.device
    keep_name, cache_name = logits_to_keep_argument(inner), cache_argument(inner)
    extra = {keep_name: 1} if keep_name else {}  # logits come from the gathered hidden states below

    if latent_inputs is not None:
        # the ids are embedded inside the model's forward, a hook writing the latent slots: under
        # FSDP the embeddings' gradient then reaches them before the root unit reduces it
        ids, mask, latent, vectors, score_columns = _replay_layout(prompt_ids, prompt_mask, response_ids,
                                                                   response_mask, segments, latent_inputs)
        embed = inner.get_input_embeddings()
        hook = embed.register_forward_hook(lambda module, args, out: out.index_put((latent,), vectors.to(out.dtype)))
        try:
            out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                        use_cache=False, output_hidden_states=True, **extra)
        finally:
            hook.remove()
        return _score(inner, out.hidden_states[-1], score_columns)

    ids, mask, latent, score_columns = (t.to(device) for t in _latent_layout(
        prompt_ids.cpu(), prompt_mask.cpu(), response_ids.cpu(), response_mask.cpu(), segments))
    positions = position_ids_from_mask(mask)
    embed = inner.get_input_embeddings()
    latent_columns = latent.any(0).nonzero().flatten().tolist()
    starts = [0] + latent_columns
    ends = latent_columns + [ids.shape[1]]
    cache, hidden_chunks = None, []
    for start, end in zip(starts, ends):
        inputs = embed(ids[:, start:end])
        if start in latent_columns:
            # The layout puts every latent right after its source position, the previous column.
            rows = latent[:, start].nonzero().flatten()
            source = hidden_chunks[-1][rows, -1]
            with torch.set_grad_enabled(torch.is_grad_enabled() and grad_through_projector):
                vectors = projector(source.to(projector.dtype)).to(inputs.dtype)
            first = inputs[:, 0].index_put((rows,), vectors)
            inputs = torch.cat([first[:, None], inputs[:, 1:]], dim=1)
        out = model(inputs_embeds=inputs, attention_mask=mask[:, :end], position_ids=positions[:, start:end],
                    use_cache=True, output_hidden_states=True, **extra, **{cache_name: cache})
        cache = output_cache(out)
        hidden_chunks.append(out.hidden_states[-1])
    return _score(inner, torch.cat(hidden_chunks, dim=1), score_columns)


def latent_replay_inputs(
    model,
    prompt_ids: torch.LongTensor,
    prompt_mask: torch.LongTensor,
    response_ids: torch.LongTensor,
    response_mask: torch.LongTensor,
    segments: list[list[tuple[int, int]]],
    latent_inputs: Sequence[torch.Tensor],
) -> tuple[torch.Tensor, torch.LongTensor, torch.LongTensor]:
    """One forward call's inputs for rows whose latent input embeddings are known (recorded).

    Arguments as in :func:`latent_forward` (``prompt_ids``/``prompt_mask`` may have width 0: the
    responses alone, to score on a shared prompt cache). Columns: the prompts as given, then per
    row its response tokens with N latent slots after the first ``position`` tokens of each
    segment, right-padded. Returns ``inputs_embeds[B, W, d]`` (the latent slots hold
    ``latent_inputs``, detached), ``attention_mask[B, W]`` and ``score_columns[B, T]``: the
    column whose output scores response token t (-1: the prompt's last position, outside).
    """
    ids, mask, latent, vectors, score_columns = _replay_layout(prompt_ids, prompt_mask, response_ids, response_mask,
                                                               segments, latent_inputs)
    inputs = unwrap_ddp(model).get_input_embeddings()(ids)
    if bool(latent.any()):  # the boolean mask walks row by row, segment by segment, as recorded
        inputs = inputs.index_put((latent,), vectors.to(inputs.dtype))
    return inputs, mask, score_columns


def latent_slots(prompt_ids: torch.LongTensor, prompt_mask: torch.LongTensor, response_ids: torch.LongTensor,
                 response_mask: torch.LongTensor, segments: list[list[tuple[int, int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, columns)`` of the latent slots in :func:`latent_replay_inputs`' layout, in the
    order it fills them (row by row, segment by segment), on the CPU."""
    latent = _compact_layout(prompt_ids.cpu(), prompt_mask.cpu(), response_ids.cpu(), response_mask.cpu(), segments)[2]
    rows, columns = latent.nonzero(as_tuple=True)
    return rows, columns


def _replay_layout(prompt_ids, prompt_mask, response_ids, response_mask, segments, latent_inputs):
    """:func:`latent_replay_inputs` before embedding: ``ids[B, W]`` (pad ids in the latent slots),
    ``attention_mask[B, W]``, the slots ``latent[B, W]`` (bool), their ``vectors[n, d]`` (detached,
    in the boolean mask's order) and ``score_columns[B, T]``."""
    steps = [sum(int(k) for _, k in row) for row in segments]
    counts = [int(v.shape[0]) for v in latent_inputs]
    if counts != steps:
        raise ValueError(f"latent_inputs hold {counts} vectors per row but the segments ask for {steps} latent steps")
    device = response_ids.device
    ids, mask, latent, score_columns = (t.to(device) for t in _compact_layout(
        prompt_ids.cpu(), prompt_mask.cpu(), response_ids.cpu(), response_mask.cpu(), segments))
    vectors = (torch.cat([v.detach() for v in latent_inputs]).to(device) if latent_inputs
               else torch.empty(0, 0, device=device))
    return ids, mask, latent, vectors, score_columns


def _score(model, hidden_all: torch.Tensor, score_columns: torch.Tensor) -> LatentForwardOutput:
    """Logits and hidden states ``[B, T, .]`` at the columns that score each response token."""
    hidden = hidden_all.gather(1, score_columns[..., None].expand(-1, -1, hidden_all.shape[-1]))
    return LatentForwardOutput(logits=model.get_output_embeddings()(hidden), hidden=hidden)


def _checked_segments(response_mask, segments) -> list[tuple[list[tuple[int, int]], int]]:
    """Per row ``(segments as ints, response length)``; ValueError unless the mask is right-padded
    and positions increase within ``1..length`` with every N >= 1."""
    checked = []
    for b, row in enumerate(segments):
        length = int(response_mask[b].sum())
        if not bool(response_mask[b, :length].all()):
            raise ValueError(f"response_mask row {b} is not right-padded (1s then 0s)")
        row_segments = [(int(p), int(k)) for p, k in row]
        bounds = [p for p, _ in row_segments]
        if any(not 1 <= p <= length for p in bounds) or bounds != sorted(set(bounds)):
            raise ValueError(f"segments[{b}] = {row}: positions must increase within 1..{length} "
                             "(the row's response length)")
        if any(k < 1 for _, k in row_segments):
            raise ValueError(f"segments[{b}] = {row}: every N must be >= 1")
        checked.append((row_segments, length))
    return checked


def _compact_layout(prompt_ids, prompt_mask, response_ids, response_mask, segments):
    """The columns of :func:`latent_replay_inputs`; returns what :func:`_latent_layout` returns,
    width ``P + T + most latent steps of a row``."""
    num_rows, response_width = response_ids.shape
    prompt_width = prompt_ids.shape[1]
    segments = [row for row, _ in _checked_segments(response_mask, segments)]
    steps_at = torch.zeros((num_rows, response_width + 1), dtype=torch.long)  # [b, p]: N of a segment at p
    for b, row in enumerate(segments):
        for position, steps in row:
            steps_at[b, position] = steps
    before = steps_at.cumsum(1)  # [b, t]: latent slots before response token t
    columns = prompt_width + torch.arange(response_width) + before[:, :response_width]  # [B, T]
    width = prompt_width + response_width + int(before[:, -1].max())
    ids = torch.zeros((num_rows, width), dtype=torch.long)
    mask = torch.zeros((num_rows, width), dtype=torch.long)
    latent = torch.zeros((num_rows, width), dtype=torch.bool)
    ids[:, :prompt_width], mask[:, :prompt_width] = prompt_ids, prompt_mask
    ids.scatter_(1, columns, response_ids)
    mask.scatter_(1, columns, response_mask.long())
    for b, row in enumerate(segments):
        for position, steps in row:
            start = prompt_width + position + int(before[b, position - 1])
            latent[b, start: start + steps] = True
    mask[latent] = 1
    return ids, mask, latent, columns - 1


def _latent_layout(prompt_ids, prompt_mask, response_ids, response_mask, segments):
    """Lay out ``[prompt + response]`` with latent slots so that rows can share forward calls.

    Blocks ``D0 L1 D1 L2 ... LS DS``: ``D0`` = prompt + response up to the first segment,
    ``Dj`` = the response between segments j and j+1 (left-padded, so every closing tag is the
    block's last column); ``Lj`` = the j-th segment's latents (left-aligned). So a latent's
    source hidden state is always in the column just before it, and the j-th segments of all
    rows share ``max N_j`` forward calls. Padding in the middle is masked and skipped by the
    positions (``cumsum(mask) - 1``), so every row sees exactly its rollout's sequence.

    Returns ``ids[B, W]`` (pad = 0), ``mask[B, W]``, ``latent[B, W]`` bool and
    ``score_columns[B, T]``: the column whose output scores response token t.
    """
    num_rows, response_width = response_ids.shape
    prompts, responses, cuts, latents = [], [], [], []
    for b, (row_segments, length) in enumerate(_checked_segments(response_mask, segments)):
        prompts.append(prompt_ids[b][prompt_mask[b].bool()].tolist())
        responses.append(response_ids[b, :length].tolist())
        cuts.append([0] + [p for p, _ in row_segments] + [length])
        latents.append([k for _, k in row_segments])
    num_segments = max(len(k) for k in latents)
    for b in range(num_rows):  # rows with fewer segments: empty blocks at the end
        cuts[b] += [cuts[b][-1]] * (num_segments - len(latents[b]))
        latents[b] += [0] * (num_segments - len(latents[b]))

    def discrete_block(b, j):
        block = responses[b][cuts[b][j]: cuts[b][j + 1]]
        return prompts[b] + block if j == 0 else block

    discrete_widths = [max(len(discrete_block(b, j)) for b in range(num_rows)) for j in range(num_segments + 1)]
    latent_widths = [max(latents[b][j] for b in range(num_rows)) for j in range(num_segments)]
    width = sum(discrete_widths) + sum(latent_widths)
    ids = torch.zeros((num_rows, width), dtype=torch.long)
    mask = torch.zeros((num_rows, width), dtype=torch.long)
    latent = torch.zeros((num_rows, width), dtype=torch.bool)
    score_columns = torch.zeros((num_rows, response_width), dtype=torch.long)
    for b in range(num_rows):
        column, previous, token_index = 0, None, -len(prompts[b])  # response index of the next token
        for j in range(num_segments + 1):
            block = discrete_block(b, j)
            column += discrete_widths[j] - len(block)
            for token in block:
                ids[b, column], mask[b, column] = token, 1
                if token_index >= 0:
                    score_columns[b, token_index] = previous
                token_index += 1
                previous, column = column, column + 1
            if j == num_segments:
                break
            for k in range(latents[b][j]):
                assert previous == column - 1
                mask[b, column], latent[b, column] = 1, True
                previous, column = column, column + 1
            column += latent_widths[j] - latents[b][j]
    return ids, mask, latent, score_columns
