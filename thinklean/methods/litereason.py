"""LiteReason (litereason.md, arXiv 2512.02240): latent reasoning steps from a Reasoning Projector.

1. **Projector SFT** (:func:`train_projector`): the LM is frozen; the SFT loss unrolls every
   ``<implicit_thought>N</implicit_thought>`` segment into N latent steps and backpropagates
   through them into the projector; cross-entropy on every discrete token after the first
   segment (lr 1e-4, cosine to 0.1x with 10% warm-up, grad-norm clip 0.2, batch 16, 1 epoch).
2. **RL** (:class:`LiteReasonTrainer`): GRPO on the generic loop whose rollouts run latent steps
   (:func:`~thinklean.rollout.latent.generate_latent`). Only discrete tokens are actions:
   latent positions are outside ``response_mask`` and ``lengths``, so every registered reward
   (``--reward hmpo`` for "LiteReason + LP") sees discrete tokens only. The training forward
   feeds the latent embeddings the rollout recorded, as state without gradient, so the
   projector gets no RL gradient. (The spec recomputes them under ``no_grad``: the same values
   before the first optimizer step, which then cost one forward call per latent column; after
   it, recomputed ones would no longer be the states the old log-probs were taken in.)
3. **Projector refresh** (:meth:`LiteReasonTrainer.on_epoch_end`): after each pass over the RL
   prompts, projector SFT (1 epoch, constant lr) on a 10% sample of the pass's correct
   rollouts, each converted at both ratios.

**The soft latent source** (:class:`~thinklean.models.projector.SoftLatent`, docs/litereason.md):
in place of the projector, a latent step's input is the LM's own next-token distribution times
its embeddings. It has no weights, so it trains with the LM (``with_lm``), on rows whose latent
segments carry ``latent_targets`` (:func:`latent_target_loss`), in curriculum stages; RL then
trains the LM it reads and there is nothing to refresh. :class:`StartRecipe`'s defaults build
it; :data:`PAPER_RECIPE` is the paper's data with the fixed projector.

``config.method_kwargs`` (:class:`LiteReasonSettings`): ``projector`` (directory; default: the model's own directory if it
holds one, else a fresh projector whose blocks copy the last MLP), ``refresh_fraction`` (0.1),
``refresh_lr`` (1e-4), ``probe_every`` (10: RL steps between two latent probes, logged with the
step's metrics, see :mod:`thinklean.eval.latent_probe`; 0: none). Projector SFT logs the probe too. The projector is saved next to the LM in ``RUN_DIR/model`` and, after
each refresh, in ``RUN_DIR/projector`` (``--resume`` reloads it).

:func:`build_start_model` chains the data and projector-SFT steps (the demo's ``litereason-sft``
row); :func:`evaluate_latent` scores a model with latent decoding.
"""

from __future__ import annotations

import json
import math
import random
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import PartialState
from accelerate.utils import gather_object

from thinklean.core import entropy_from_logits
from thinklean.data.formats import format_prompt
from thinklean.data.grading import grade
from thinklean.data.jsonl import Example, example_to_dict, load_jsonl, write_jsonl
from thinklean.data.arith import parse_question
from thinklean.data.litereason import (
    RATIOS,
    TARGET_KINDS,
    litereason_prompt,
    records_summary,
    target_rows,
    variant_rows,
)
from thinklean.eval.evaluate import arith_examples, grade_rollout
from thinklean.eval.latent_probe import PROBE_EVERY, PROBE_STEPS, LatentProbe
from thinklean.eval.metrics import summarize, summarize_by_difficulty
from thinklean.methods.registry import DataTask, DemoStage, MethodFlag, MethodSpec, StartModel, register_method
from thinklean.models.projector import CONFIG_NAME, LatentSource, ReasoningProjector, SoftLatent, load_source
from thinklean.models.tiny import load_pretrained
from thinklean.rollout import SamplingConfig, generate
from thinklean.rollout.engine import position_ids_from_mask
from thinklean.rollout.latent import (
    LatentRolloutBatch,
    generate_latent,
    latent_forward,
    latent_replay_inputs,
    latent_slots,
    segment_finder,
)
from thinklean.runlog import progress_bar
from thinklean.train.fsdp import fsdp_requested
from thinklean.train.rl import RLConfig, RLTrainer, StepBatch
from thinklean.train.settings import ConfigError, build_settings
from thinklean.train.sft import IGNORE_INDEX, LossFn, SFTConfig, encode_rows, train_sft

PROJECTOR_DIR = "projector"

# ------------------------------------------------------------------------------ projector SFT


def split_sft_batch(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """An SFT batch (``input_ids``/``attention_mask``/``labels`` ``[b, L]``, right-padded) as
    ``prompt_ids, prompt_mask`` ``[b, P]`` (left-padded) and ``response_ids, response_mask``
    ``[b, T]`` (right-padded), the layout :func:`latent_forward` takes. Response = labelled tokens."""
    lengths = batch["attention_mask"].sum(1).tolist()
    labelled = batch["labels"] != IGNORE_INDEX
    starts = [int(row.nonzero()[0]) if bool(row.any()) else n for row, n in zip(labelled, lengths)]
    width_p = max(max(starts), 1)
    width_t = max(max(n - s for n, s in zip(lengths, starts)), 1)
    device = batch["input_ids"].device
    prompt_ids = torch.zeros((len(lengths), width_p), dtype=torch.long, device=device)
    prompt_mask = torch.zeros_like(prompt_ids)
    response_ids = torch.zeros((len(lengths), width_t), dtype=torch.long, device=device)
    response_mask = torch.zeros_like(response_ids)
    for b, (n, s) in enumerate(zip(lengths, starts)):
        prompt_ids[b, width_p - s:] = batch["input_ids"][b, :s]
        prompt_mask[b, width_p - s:] = 1
        response_ids[b, : n - s] = batch["input_ids"][b, s:n]
        response_mask[b, : n - s] = 1
    return prompt_ids, prompt_mask, response_ids, response_mask


def projector_sft_loss(projector: LatentSource, tokenizer: Any, all_response_tokens: bool = False) -> LossFn:
    """A ``train_sft`` loss: mean cross-entropy of the discrete response tokens after the end of
    each row's first latent segment, with the segments unrolled through ``projector`` (gradient
    flows through the latent steps). ``all_response_tokens``: every response token instead (for
    the joint LM + projector variant, where the LM must also learn to open segments).
    Returns ``(loss, number of scored tokens)``."""
    find_segments = segment_finder(tokenizer, projector.max_steps)

    def loss_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        prompt_ids, prompt_mask, response_ids, response_mask = split_sft_batch(batch)
        lengths = response_mask.sum(1).tolist()
        segments = [find_segments(response_ids[b, :n].tolist()) for b, n in enumerate(lengths)]
        out = latent_forward(model, projector, prompt_ids, prompt_mask, response_ids, response_mask, segments,
                             grad_through_projector=True)
        scored = response_mask.bool()
        if not all_response_tokens:
            width = response_ids.shape[1]
            starts = torch.tensor([s[0][0] if s else width for s in segments], device=scored.device)
            scored &= torch.arange(width, device=scored.device)[None] >= starts[:, None]
        count = int(scored.sum())
        if count == 0:  # nothing after a segment in this batch: a zero loss that still reaches the projector
            return sum(p.sum() for p in projector.parameters()) * 0.0, 0
        return F.cross_entropy(out.logits[scored].float(), response_ids[scored]), count

    return loss_fn


def latent_target_loss(source: LatentSource, tokenizer: Any, rows: Sequence[dict], max_length: int,
                       weight: float = 1.0) -> LossFn:
    """A ``train_sft`` loss for rows with ``latent_targets`` (:func:`~thinklean.data.litereason.target_rows`):
    the LM reads the targets, the source learns to write them.

    Each latent slot gets its target token's embedding rescaled to ``source.output_scale``
    (teacher forcing, as a detached input); the loss is the mean cross-entropy of
    every discrete response token plus ``weight`` times the source's distance to the targets:
    ``|source(h) - t|^2`` averaged over the slots, over the mean ``|t|^2`` (``2 (1 - cosine)``
    when both have the target norm), ``h`` being the last hidden state one position before the
    slot, the state the rollout's chain feeds the source. Rows are matched to batch rows by
    their token ids (as ``train_sft`` encodes them with ``max_length``); every segment must have
    as many target tokens as latent steps. Returns ``(loss, scored tokens)``."""
    find_segments = segment_finder(tokenizer, source.max_steps)
    targets: dict[tuple[int, ...], list[int]] = {}
    for index, (row, encoded) in enumerate(zip(rows, encode_rows(tokenizer, rows, max_length))):
        if "latent_targets" not in row:
            raise ValueError(f"row {index}: no latent_targets (every row needs them when one has them)")
        response = list(encoded.input_ids[encoded.prompt_len:])
        steps = [n for _, n in find_segments(response)]
        ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in row["latent_targets"]]
        if [len(i) for i in ids][: len(steps)] != steps or len(ids) < len(steps):
            raise ValueError(f"row {index}: latent segments of {steps} steps but latent_targets "
                             f"{row['latent_targets']} tokenise to {[len(i) for i in ids]} tokens")
        targets[encoded.input_ids] = [t for i in ids[: len(steps)] for t in i]

    def loss_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        prompts, prompt_mask, response, response_mask = split_sft_batch(batch)
        lengths = response_mask.sum(1).tolist()
        segments = [find_segments(response[b, :n].tolist()) for b, n in enumerate(lengths)]
        embed = model.get_input_embeddings()
        keys = [tuple(batch["input_ids"][b, : int(n)].tolist()) for b, n in enumerate(batch["attention_mask"].sum(1))]
        vectors = [F.normalize(embed(torch.tensor(targets[key], dtype=torch.long, device=response.device)), dim=-1)
                   * source.output_scale.to(embed.weight.dtype) for key in keys]
        return teacher_forced_target_loss(model, source, prompts, prompt_mask, response, response_mask, segments,
                                          vectors, weight)

    return loss_fn


def teacher_forced_target_loss(model: torch.nn.Module, source: LatentSource, prompt_ids: torch.Tensor,
                               prompt_mask: torch.Tensor, response_ids: torch.Tensor, response_mask: torch.Tensor,
                               segments: list[list[tuple[int, int]]], targets: Sequence[torch.Tensor],
                               weight: float = 1.0) -> tuple[torch.Tensor, int]:
    """:func:`latent_target_loss` on one batch in :func:`latent_forward`'s layout: ``targets[b]``
    ``[latent steps of row b, d]`` fill row b's latent slots (detached) and are what
    ``source`` should write there. Returns ``(cross-entropy of the discrete response tokens +
    weight * distance, scored tokens)``."""
    inputs, mask, score_columns = latent_replay_inputs(model, prompt_ids, prompt_mask, response_ids, response_mask,
                                                       segments, targets)
    hidden = model(inputs_embeds=inputs, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                   use_cache=False, output_hidden_states=True).hidden_states[-1]
    scored = response_mask.bool()
    picked = hidden.gather(1, score_columns[..., None].expand(-1, -1, hidden.shape[-1]))
    loss = F.cross_entropy(model.get_output_embeddings()(picked[scored]).float(), response_ids[scored])
    rows_at, columns = latent_slots(prompt_ids, prompt_mask, response_ids, response_mask, segments)
    if rows_at.numel():
        target = torch.cat(list(targets)).detach().float()
        predicted = source(hidden[rows_at, columns - 1].to(source.dtype)).float()
        loss = loss + weight * (predicted - target).pow(2).sum(-1).mean() / target.pow(2).sum(-1).mean()
    return loss, int(scored.sum())


def projector_sft_config(num_rows: int, lr: float = 1e-4, epochs: float = 1.0, batch_size: int = 16,
                         grad_accum: int = 1, constant_lr: bool = False, grad_clip: float = 0.2,
                         max_length: int = 512, seed: int = 0, report_to: str = "none",
                         steps: int | None = None) -> SFTConfig:
    """The spec's projector-SFT settings as an :class:`SFTConfig` for ``epochs`` over ``num_rows``
    (``steps``: that many optimizer steps instead): lr warm-up over 10% then cosine to 0.1x
    (``constant_lr``: flat, as in the refresh), no weight decay, effective batch
    ``batch_size * grad_accum``; ``report_to``: experiment trackers."""
    if steps is None:
        steps = max(1, math.ceil(epochs * math.ceil(num_rows / batch_size) / grad_accum))
    return SFTConfig(steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
                     min_lr_ratio=1.0 if constant_lr else 0.1, warmup_ratio=0.0 if constant_lr else 0.1,
                     weight_decay=0.0, grad_clip=grad_clip, max_length=max_length, seed=seed, log_every=1,
                     report_to=report_to)


def probe_schedule(probe: LatentProbe, model: torch.nn.Module, projector: LatentSource, every: int,
                   last: int) -> Callable[[int], dict[str, float]]:
    """``step -> probe.measure(model, projector)`` at step 1, every ``every`` steps and at step
    ``last``; ``{}`` at the other steps and always when ``every`` is 0."""

    def measure(step: int) -> dict[str, float]:
        due = every > 0 and (step == 1 or step % every == 0 or step == last)
        return probe.measure(model, projector) if due else {}

    return measure


def train_projector(model: torch.nn.Module, tokenizer: Any, projector: LatentSource, rows: Sequence[dict],
                    run_dir: str | Path, config: SFTConfig, with_lm: bool = False,
                    show_progress: bool = True, probe_every: int = PROBE_EVERY, save: bool = True) -> dict[str, Any]:
    """Projector SFT on LiteReason rows (``prompt``, ``solution`` with latent segments).

    Only the projector is optimised (``with_lm``: the LM too, loss on every response token);
    the LM's ``requires_grad`` flags are restored afterwards. Rows with ``latent_targets`` train
    with :func:`latent_target_loss` (every row must have them; a :class:`SoftLatent` has no
    weights, so it needs ``with_lm``). Rows with a ``stage`` train stage by stage in increasing
    order, ``config.steps`` split evenly (the remainder to the last), stage ``s`` seeded
    ``config.seed + s``; the metrics of every stage but the last go to ``RUN_DIR/stage-S``.
    ``RUN_DIR/model`` receives the LM (as ``train_sft`` writes it) with the projector saved next
    to it (``save=False``: nothing but ``metrics.jsonl`` is written). Every ``probe_every`` steps
    (and at the first and last; 0: never) the :class:`~thinklean.eval.latent_probe.LatentProbe`
    numbers join ``metrics.jsonl``. Returns the last stage's ``train_sft`` summary.
    """
    staged = [r for r in rows if "stage" in r]
    if staged and len(staged) != len(rows):
        raise ValueError(f"{len(staged)} of {len(rows)} rows have a stage; give every row one or none")
    stages = sorted({r["stage"] for r in staged}) or [None]
    if config.steps < len(stages):
        raise ValueError(f"{config.steps} steps for {len(stages)} stages: at least one step per stage")
    summary: dict[str, Any] = {}
    for i, stage in enumerate(stages):
        last = i == len(stages) - 1
        part = rows if stage is None else [r for r in rows if r["stage"] == stage]
        steps = config.steps // len(stages) + (config.steps % len(stages) if last else 0)
        stage_config = config if stage is None else replace(config, steps=steps, seed=config.seed + stage)
        summary = _train_projector_once(model, tokenizer, projector, part, Path(run_dir) if last else
                                        Path(run_dir) / f"stage-{stage}", stage_config, with_lm, show_progress,
                                        probe_every, save and last)
    return summary


def _train_projector_once(model: torch.nn.Module, tokenizer: Any, projector: LatentSource, rows: Sequence[dict],
                          run_dir: Path, config: SFTConfig, with_lm: bool, show_progress: bool, probe_every: int,
                          save: bool) -> dict[str, Any]:
    """One :func:`train_projector` stage."""
    targeted = any("latent_targets" in r for r in rows)
    if isinstance(projector, SoftLatent) and not with_lm:
        raise ValueError("the soft latent source has no weights of its own: train it with the LM (with_lm / --with-lm)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where train_sft's Accelerator trains
    if next(model.parameters()).device != device:  # (.to() would reshard an FSDP model's gathered root)
        model.to(device)
    projector.to(device)
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(with_lm)
    projector.requires_grad_(True)
    parameters = list(projector.parameters()) + (list(model.parameters()) if with_lm else [])
    probe = probe_schedule(LatentProbe(tokenizer, steps=min(PROBE_STEPS, projector.max_steps)), model, projector,
                           probe_every, config.steps)
    loss = (latent_target_loss(projector, tokenizer, rows, config.max_length) if targeted
            else projector_sft_loss(projector, tokenizer, all_response_tokens=with_lm))
    try:
        summary = train_sft(model, tokenizer, rows, config, run_dir, loss_fn=loss, parameters=parameters,
                            show_progress=show_progress, method="litereason-sft", extra_metrics=probe, save=save)
    finally:
        for parameter, flag in zip(model.parameters(), flags):
            parameter.requires_grad_(flag)
        projector.requires_grad_(False)
    if save and PartialState().is_main_process:
        projector.save(Path(run_dir) / "model")
    return summary


def load_projector(model: torch.nn.Module, path: str | Path | None = None, warn: bool = True,
                   output_norm: str = "embedding", source: str = "projector") -> LatentSource:
    """The latent source saved in ``path`` (:func:`~thinklean.models.projector.load_source`);
    without one, the one in the model's own directory; else a fresh one: ``source="soft"`` a
    :class:`SoftLatent` of the model, ``"projector"`` a projector whose every block copies the
    model's last MLP (``output_norm`` as in :class:`ReasoningProjector`), with a warning if ``warn``."""
    if path is not None:
        return load_source(path, model)
    own = Path(getattr(model, "name_or_path", "") or "")
    if str(own) and (own / CONFIG_NAME).is_file():
        return load_source(own, model)
    if warn and source != "soft":
        warnings.warn("LiteReason: no trained projector found (set method_kwargs.projector or run `thinklean "
                      "litereason-sft`); starting from copies of the model's last MLP", stacklevel=2)
    return fresh_source(model, source, output_norm)


def fresh_source(model: torch.nn.Module, source: str = "projector", output_norm: str = "embedding") -> LatentSource:
    """An untrained latent source for ``model``: ``"soft"`` a :class:`SoftLatent`, ``"projector"``
    a projector whose every block copies the model's last MLP (``output_norm`` as in
    :class:`ReasoningProjector`)."""
    return SoftLatent(model) if source == "soft" else ReasoningProjector.from_model(model, output_norm=output_norm)


# ------------------------------------------------------------------------------------- RL


def refresh_rows(rollouts: Sequence[tuple[Example, str]], tokenizer: Any, fraction: float,
                 rng: random.Random) -> list[dict]:
    """Projector-refresh rows: a ``fraction`` sample (at least one) of the pass's correct
    ``(example, response)`` rollouts, each converted once at every ratio of :data:`RATIOS`."""
    if not rollouts:
        return []
    picked = sorted(rng.sample(range(len(rollouts)), max(1, round(fraction * len(rollouts)))))
    return [row for i in picked for row in variant_rows(rollouts[i][0], rollouts[i][1], tokenizer, rng, RATIOS, 1)]


@dataclass(frozen=True)
class LiteReasonSettings:
    """``method_kwargs`` of LiteReason (see the module docstring)."""

    projector: str | None = None
    refresh_fraction: float = 0.1
    refresh_lr: float = 1e-4
    probe_every: int = PROBE_EVERY

    def __post_init__(self) -> None:
        if not 0 <= self.refresh_fraction <= 1:
            raise ConfigError(f"method_kwargs.refresh_fraction must be in [0, 1] (0: no refresh), got {self.refresh_fraction}")
        if self.probe_every < 0:
            raise ConfigError(f"method_kwargs.probe_every must be >= 0 (0: no latent probe), got {self.probe_every}")


class LiteReasonTrainer(RLTrainer):
    """GRPO whose rollouts run latent steps; projector frozen in RL, refreshed after each pass."""

    Settings = LiteReasonSettings
    policy_logprobs_shares_prompts = True  # the update scores responses on the shared prompt cache

    def __init__(self, model: torch.nn.Module, tokenizer: Any, config: RLConfig, train_examples: Sequence[Example],
                 run_dir: str | Path, eval_examples: Sequence[Example] = ()) -> None:
        if config.rollout_backend != "hf":
            raise ConfigError(f"litereason: rollout_backend {config.rollout_backend!r} is not supported (its latent "
                              "steps feed projector outputs back as input embeddings, which only the hf engine does)")
        if config.dynamic_sampling or config.keep_shortest:
            raise ConfigError("litereason: dynamic_sampling and keep_shortest are not supported "
                              "(their row filters drop the rollouts' latent segments)")
        self._check_rollout_dtype(config)  # before the projector is read
        # built from the model's weights before FSDP may shard them
        projector = load_projector(model, build_settings(self.Settings, config.method_kwargs, config.method).projector)
        super().__init__(model, tokenizer, config, train_examples, run_dir, eval_examples)
        if isinstance(projector, SoftLatent) and fsdp_requested(self.accelerator):
            raise ConfigError("litereason: the soft latent source reads the LM's head and embeddings outside its "
                              "forward call, which FSDP shards; use a projector or DDP")
        self.projector = self._frozen(projector)
        self.latent_probe = LatentProbe(tokenizer, steps=min(PROBE_STEPS, self.projector.max_steps))
        self.correct_rollouts: list[tuple[int, Example, str]] = []  # (step, example, response) of this pass

    def _frozen(self, projector: LatentSource) -> LatentSource:
        return projector.to(self.accelerator.device).requires_grad_(False).eval()

    def build_prompts(self, examples: Sequence[Example]) -> tuple[list[str], list[str] | None]:
        return [format_prompt(litereason_prompt(e.prompt), self.tokenizer) for e in examples], None

    def generate_rollout(self, prompts: list[str], prefixes: list[str] | None, sampling: SamplingConfig,
                         seed: int) -> LatentRolloutBatch:
        """Samples with latent decoding (:func:`~thinklean.rollout.latent.generate_latent`): after
        each ``</implicit_thought>`` the frozen projector writes the latent steps. Always the ``hf`` engine."""
        generator = torch.Generator(device=self.accelerator.device).manual_seed(seed)
        return generate_latent(self.accelerator.unwrap_model(self.model), self.tokenizer, self.projector, prompts,
                               self.config.samples_per_prompt, sampling, generator, prefixes)

    def on_rollout(self, step: int, step_batch: StepBatch) -> None:
        """Keeps this process's correct rollouts for the next refresh; logs latent statistics and,
        on the probe's schedule, the latent probe of the policy that rolled out the batch."""
        r = step_batch.rollout
        self.correct_rollouts += [(step, step_batch.examples[int(g)], text)
                                  for g, text, ok in zip(r.group_ids, r.texts, step_batch.correct.tolist()) if ok]
        steps = r.latent_steps.float()
        step_batch.info.update(latent_steps_mean=float(steps.mean()), latent_rows=float((steps > 0).float().mean()),
                               latent_segments_mean=sum(map(len, r.latent_segments)) / max(1, len(r.latent_segments)))
        probe = probe_schedule(self.latent_probe, self.accelerator.unwrap_model(self.model), self.projector,
                               self.settings.probe_every, self.config.steps)
        step_batch.info.update(probe(step + 1))

    def row_inputs(self, batch: StepBatch, rows: torch.Tensor) -> dict[str, Any]:
        """Each row's ``latent_segments`` and ``latent_inputs`` (the embeddings its rollout fed)."""
        indices = rows.tolist()
        return {"latent_segments": [batch.rollout.latent_segments[i] for i in indices],
                "latent_inputs": [batch.rollout.latent_inputs[i] for i in indices]}

    def policy_logprobs(self, model: torch.nn.Module, rows: dict[str, Any],
                        with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs ``[b, T]`` of the discrete tokens, in one forward call, with the latent
        embeddings the rollout fed (state, not actions: no gradient); entropy ``[b, T]`` optionally.
        On ``rows["shared_prompt"]`` (the update) only the responses run, on the prompts' cache."""
        shared = rows.get("shared_prompt")
        if shared is None:
            logits = latent_forward(model, self.projector, rows["prompt_ids"], rows["prompt_mask"],
                                    rows["response_ids"], rows["response_mask"], rows["latent_segments"],
                                    latent_inputs=rows["latent_inputs"]).logits
        else:
            no_prompt = rows["prompt_ids"][:, :0]
            inputs, mask, columns = latent_replay_inputs(model, no_prompt, no_prompt, rows["response_ids"],
                                                         rows["response_mask"], rows["latent_segments"],
                                                         rows["latent_inputs"])
            logits = shared.response_logits(model, rows["prompt_index"], None, mask, inputs_embeds=inputs)
            # logits[:, c] is column c - 1's output (c = 0: the prompt's last); token t's is columns[t]
            logits = logits.gather(1, (columns + 1)[..., None].expand(-1, -1, logits.shape[-1]))
        logits = logits.float() / max(self.config.temperature, 1e-6)
        logprobs = torch.log_softmax(logits, -1).gather(-1, rows["response_ids"].unsqueeze(-1)).squeeze(-1)
        return logprobs, entropy_from_logits(logits.detach()) if with_entropy else None

    def on_epoch_end(self, epoch: int) -> None:
        """Projector refresh on a sample of the pass's correct rollouts (LM untouched). Every
        process runs the same refresh on the same rows (the projector is replicated; under FSDP
        the sharded LM's forward and backward calls then line up); the main process writes it."""
        mine, self.correct_rollouts = self.correct_rollouts, []
        if self.settings.refresh_fraction == 0 or isinstance(self.projector, SoftLatent):
            return  # (a soft source has no weights: RL trains the LM it reads)
        shares = gather_object([mine]) if self.accelerator.num_processes > 1 else [mine]
        # step by step, each step's rollouts in process order: the order one process would have
        pool = [(e, text) for _, e, text in sorted((x for share in shares for x in share), key=lambda x: x[0])]
        rows = refresh_rows(pool, self.tokenizer, self.settings.refresh_fraction,
                            random.Random(f"litereason-refresh-{self.config.seed}-{epoch}"))
        if not rows:
            return
        config = projector_sft_config(len(rows), lr=self.settings.refresh_lr, constant_lr=True, seed=self.config.seed + epoch)
        with tempfile.TemporaryDirectory() as scratch:  # for train_sft's metrics.jsonl, not kept
            summary = train_projector(self.accelerator.unwrap_model(self.model), self.tokenizer, self.projector, rows,
                                      scratch, config, show_progress=False, probe_every=0, save=False)
        self._frozen(self.projector)
        if not self.accelerator.is_main_process:
            return
        self.projector.save(self.run_dir / PROJECTOR_DIR)
        record = {"epoch": epoch, "step": self.step_index, "correct_rollouts": len(pool), "rows": len(rows),
                  "steps": config.steps, "loss": summary["final_loss"]}
        with (self.run_dir / "projector_refresh.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")

    def evaluate(self, n: int | None = None, output: Path | None = None) -> dict[str, Any]:
        """:func:`evaluate_latent` of the policy on the first ``n`` (default ``eval_problems``)
        held-out problems at ``eval_temperature``."""
        cfg = self.config
        sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.eval_temperature,
                                  batch_size=cfg.rollout_batch_size)
        return evaluate_latent(self.model, self.tokenizer, self.projector, self.eval_examples[: n or cfg.eval_problems],
                               sampling, cfg.seed, output)

    def on_train_start(self, resume: bool) -> None:
        """On ``resume``, the projector of the last refresh (if any) replaces the loaded one."""
        saved = self.run_dir / PROJECTOR_DIR
        if resume and (saved / CONFIG_NAME).is_file():
            self.projector = self._frozen(load_source(saved, self.accelerator.unwrap_model(self.model)))

    def on_train_end(self, model_dir: Path) -> None:
        """The projector is saved next to the final model."""
        self.projector.save(model_dir)


@torch.no_grad()
def evaluate_latent(model: torch.nn.Module, tokenizer: Any, projector: LatentSource, examples: Sequence[Example],
                    sampling: SamplingConfig, seed: int = 0, output: Path | None = None) -> dict[str, Any]:
    """Accuracy and token statistics (discrete tokens only) of one response per problem decoded
    with latent steps from the LiteReason prompt (temperature 0: greedy; else sampled with
    ``seed``), plus ``latent_steps_mean`` (per response) and ``latent_rows`` (share of responses
    with a latent segment). ``output``: the summary as JSON (``{"summary": ...}``)."""
    device = next(model.parameters()).device
    prompts = [format_prompt(litereason_prompt(e.prompt), tokenizer) for e in examples]
    generator = torch.Generator(device=device).manual_seed(seed)
    batch = generate_latent(model, tokenizer, projector, prompts, 1, sampling, generator)
    records = grade_rollout(tokenizer, examples, batch)
    summary = {**summarize(records), "latent_steps_mean": float(batch.latent_steps.float().mean()),
               "latent_rows": float((batch.latent_steps > 0).float().mean()),
               "per_difficulty": summarize_by_difficulty(records)}
    if output is not None:
        Path(output).write_text(json.dumps({"summary": summary}, indent=1))
    return summary


@torch.no_grad()
def correct_traces(model: torch.nn.Module, tokenizer: Any, examples: Sequence[Example], k: int = 5, seed: int = 0,
                   max_new_tokens: int = 320, temperature: float = 0.7, top_p: float = 0.8,
                   batch_size: int = 128, show_progress: bool = True) -> list[list[str]]:
    """Rejection sampling: per example, its distinct correct traces among ``k`` samples (in sample order).

    Prompts are the plain questions (the model writes its usual reasoning). Problems are decoded
    in chunks of ``batch_size // k``; chunk ``c`` samples with seed ``(seed, c)``.
    """
    device = next(model.parameters()).device
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                              batch_size=batch_size)
    per_chunk = max(1, batch_size // k)
    out: list[list[str]] = []
    with progress_bar(disable=not show_progress) as bar:
        task = bar.add_task("rejection sampling", total=len(examples), info="")
        for chunk, first in enumerate(range(0, len(examples), per_chunk)):
            block = examples[first: first + per_chunk]
            generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + chunk)
            batch = generate(model, tokenizer, [format_prompt(e.prompt, tokenizer) for e in block], k, sampling,
                             generator=generator)
            for j, example in enumerate(block):
                texts = [t.strip() for t in batch.texts[j * k: (j + 1) * k]]
                out.append(list(dict.fromkeys(t for t in texts if grade(t, example.answer))))
            kept = sum(len(traces) for traces in out)
            bar.update(task, advance=len(block), info=f"{kept} correct traces")
    return out


def litereason_records(model: torch.nn.Module, tokenizer: Any, examples: Sequence[Example], k: int = 5,
                       seed: int = 0, variants: int = 2, ratios: Sequence[float] = RATIOS,
                       max_new_tokens: int = 320, batch_size: int = 128, show_progress: bool = True,
                       stages: int = 0, targets: str = "results") -> list[dict]:
    """LiteReason SFT rows: rejection-sampled correct traces (:func:`correct_traces`), each
    turned into variants at every ratio (:func:`~thinklean.data.litereason.variant_rows`);
    problems with no correct trace give no rows. ``stages`` >= 1: instead, the embedded-task
    problems' rendered traces with latent ``targets`` in that many curriculum stages
    (:func:`~thinklean.data.litereason.target_rows`; nothing is sampled)."""
    if stages:
        problems = [parse_question(e.prompt) for e in examples]
        unparsed = [e.line or i + 1 for i, (e, p) in enumerate(zip(examples, problems)) if p is None]
        if unparsed:
            raise ValueError(f"stages={stages} renders embedded-task traces, but the prompts of rows {unparsed[:5]} "
                             "are not embedded-task questions ('Start with N. Add K. ... What is the result?')")
        return target_rows(problems, stages, targets)
    traces = correct_traces(model, tokenizer, examples, k, seed, max_new_tokens, batch_size=batch_size,
                            show_progress=show_progress)
    rows = []
    for index, (example, kept) in enumerate(zip(examples, traces)):
        for j, trace in enumerate(kept):
            rows += variant_rows(example, trace, tokenizer, random.Random(f"litereason-{seed}-{index}-{j}"),
                                 ratios, variants)
    return rows


@dataclass(frozen=True)
class StartRecipe:
    """How :func:`build_start_model` makes a LiteReason start model from a base model.

    source:      the latent source (``--source``): ``"soft"`` (:class:`SoftLatent`, the default)
                 or ``"projector"`` (a fresh :class:`ReasoningProjector` with ``output_norm``).
    stages:      0: rejection-sample ``k`` traces of each of ``problems`` training problems and make
                 10% / 25% of their sentences latent (the paper's data, ``thinklean data
                 litereason``); N >= 1: render ``problems`` traces with latent ``targets`` in N
                 curriculum stages (:func:`~thinklean.data.litereason.target_rows`, ``--stages N
                 --targets T``).
    steps:       SFT steps (``--steps``); None: ``epochs`` passes over the rows.
    lr, batch_size, grad_clip: the SFT's (``thinklean litereason-sft``; cosine, 10% warm-up).
    with_lm:     also fine-tune the LM (``--with-lm``): the embedded model cannot follow the
                 prompt's instruction to write segments, so a frozen LM would never open one.
    polish_steps, polish_lr: then that many more steps at that peak lr on the last (all-latent)
                 stage's rows alone, from the curriculum's model (0: none).
    The defaults are the demo's start model (docs/litereason.md); :data:`PAPER_RECIPE` is the
    paper's data with the fixed projector.
    """

    source: str = "soft"
    stages: int = 4
    targets: str = "results"
    problems: int = 16000
    k: int = 5
    steps: int | None = 4000
    epochs: float = 1.0
    lr: float = 3e-4
    batch_size: int = 16
    grad_clip: float = 1.0
    with_lm: bool = True
    max_new_tokens: int = 320
    output_norm: str = "embedding"
    polish_steps: int = 2000
    polish_lr: float = 1e-4


PAPER_RECIPE = StartRecipe(source="projector", stages=0, problems=1000, steps=None, lr=1e-4, grad_clip=0.2,
                           polish_steps=0)


def build_start_model(base_model: str | Path, build_dir: str | Path, recipe: StartRecipe = StartRecipe(),
                      seed: int = 0, show_progress: bool = True, report_to: str = "none") -> Path:
    """``thinklean data litereason`` + ``thinklean litereason-sft`` from ``base_model``:
    ``BUILD_DIR/litereason.jsonl`` (kept, and reused when present) and ``BUILD_DIR/model`` (the
    LM with its latent source; returned as it is when already built); ``report_to``: trackers of the SFT.
    With ``recipe.polish_steps`` the curriculum model goes to ``BUILD_DIR/staged/model`` (reused
    when present) and a second ``litereason-sft`` run from it on the last stage's rows writes
    ``BUILD_DIR/model``, as ``thinklean litereason-sft --model BUILD_DIR/staged/model --data
    LAST_STAGE.jsonl --source soft --with-lm --steps polish_steps --lr polish_lr`` does."""
    build_dir = Path(build_dir)
    model_dir = build_dir / "model"
    if (model_dir / CONFIG_NAME).is_file():
        return model_dir
    if recipe.polish_steps and recipe.stages < 1:
        raise ValueError(f"polish_steps {recipe.polish_steps} needs curriculum stages (stages >= 1, got {recipe.stages})")
    staged_dir = build_dir / "staged" if recipe.polish_steps else build_dir
    staged_built = (staged_dir / "model" / CONFIG_NAME).is_file()
    data = build_dir / "litereason.jsonl"
    base = load_pretrained(base_model) if not (staged_built and data.is_file()) else None
    if data.is_file():
        rows = [example_to_dict(e) for e in load_jsonl(data, require_solution=True)]
    else:
        examples = arith_examples(recipe.problems, "train", seed)
        rows = litereason_records(*base, examples, k=recipe.k, seed=seed, stages=recipe.stages,
                                  targets=recipe.targets,
                                  max_new_tokens=recipe.max_new_tokens, show_progress=show_progress)
        if not rows:
            raise ValueError(f"{base_model}: no correct trace among {recipe.k} samples of {recipe.problems} problems")
        write_jsonl(data, rows)
    last = [r for r in rows if r.get("stage") == recipe.stages]
    if recipe.polish_steps and not last:
        found = sorted({r.get("stage") for r in rows}, key=str)
        raise ValueError(f"{data}: no row of stage {recipe.stages} to polish on (stages found: {found}); the rows "
                         f"were written for another number of stages, delete the file to write them again")
    sft = dict(batch_size=recipe.batch_size, grad_clip=recipe.grad_clip, seed=seed, report_to=report_to)
    if not staged_built:
        model, tokenizer = base
        config = projector_sft_config(len(rows), lr=recipe.lr, epochs=recipe.epochs, steps=recipe.steps, **sft)
        train_projector(model, tokenizer, fresh_source(model, recipe.source, recipe.output_norm), rows, staged_dir,
                        config, with_lm=recipe.with_lm, show_progress=show_progress)
    if recipe.polish_steps:
        model, tokenizer = load_pretrained(staged_dir / "model")
        config = projector_sft_config(len(last), lr=recipe.polish_lr, steps=recipe.polish_steps, **sft)
        train_projector(model, tokenizer, load_projector(model, staged_dir / "model", warn=False), last, build_dir,
                        config, with_lm=recipe.with_lm, show_progress=show_progress)
    return model_dir


# ------------------------------------------------------------------------------------- demo


def start_recipe(quick: bool) -> StartRecipe:
    """The recipe of the demo's start model (a few problems and steps with ``quick``)."""
    return StartRecipe(problems=8, k=2, max_new_tokens=120, steps=8, polish_steps=2) if quick else StartRecipe()


def build_demo_start(stage: DemoStage) -> Path:
    """The demo's start model (``OUTPUT/litereason-sft``, :func:`build_start_model`)."""
    recipe = start_recipe(stage.quick)
    if not (stage.row_dir / "model" / CONFIG_NAME).is_file():
        stage.console.print(f"[bold]building the LiteReason start model[/bold]: {recipe.problems} rendered traces "
                            f"with latent targets, {recipe.steps} steps of LM + soft-latent SFT in {recipe.stages} "
                            f"curriculum stages, then {recipe.polish_steps} on the last stage (about 45 min on 2 cores)")
    return build_start_model(stage.base_model, stage.row_dir, recipe, stage.seed, report_to=stage.report_to)


def demo_evaluation(stage: DemoStage, model_dir: Path, examples: Sequence[Example]) -> dict[str, Any]:
    """:func:`evaluate_latent` of a model with its projector, as the demo samples every model
    (``eval_temperature``, ``max_new_tokens``), into ``ROW_DIR/eval.json``."""
    model, tokenizer = load_pretrained(model_dir)
    sampling = SamplingConfig(max_new_tokens=stage.budget.max_new_tokens, temperature=stage.budget.eval_temperature)
    return evaluate_latent(model, tokenizer, load_projector(model), examples, sampling, stage.seed,
                           stage.row_dir / "eval.json")


register_method(MethodSpec(
    "litereason", LiteReasonTrainer, "LiteReason: latent reasoning steps from a Reasoning Projector",
    flags=(MethodFlag("--projector", "projector", "projector directory; none: the --model directory's, else copies "
                      "of its last MLP"),),
    data=DataTask("litereason", "correct sampled traces with sentences made latent, for `thinklean litereason-sft`",
                  litereason_records, records_summary,
                  flags=(MethodFlag("--k", "k", "traces sampled per problem (temperature 0.7, top-p 0.8)", int,
                                    at_least=1),
                         MethodFlag("--variants", "variants", "random variants per kept trace and ratio (0.10, 0.25)",
                                    int, at_least=0),
                         MethodFlag("--max-new-tokens", "max_new_tokens", "response cap when sampling", int,
                                    at_least=1),
                         MethodFlag("--stages", "stages", "0: sampled traces (the paper's data); N >= 1: the embedded "
                                    "task's rendered traces with latent targets, in N curriculum stages", int,
                                    at_least=0),
                         MethodFlag("--targets", "targets", "with --stages: 'results' (every operation's latent "
                                    "steps carry its result), 'checks' (a multiplication's carry its check's "
                                    "partial products and their sum) or 'safe' (only additions and subtractions "
                                    "are latent; multiplications are written with their check)",
                                    choices=TARGET_KINDS))),
    start=StartModel("litereason-sft", "a model with a trained projector", build_demo_start, recipe=start_recipe),
    # from the litereason-sft row's model (LM + trained projector); the prompts GRPO sees (RLConfig's
    # default pool, not litereason.yaml's 400 for a projector refresh every 100 steps)
    demo_rows={"litereason": {"train_problems": 20000}},
    evaluate=demo_evaluation,
))
