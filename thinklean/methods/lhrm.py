"""LHRM (lhrm.md): the HFT recipe for the embedded task, HGPO on the generic loop, and the
HFT + RFT baseline.

Of each prompt's N rollouts the first N/2 are forced to open with ``<think>`` and the rest with
``<no_think>``. Rewards come from the registered ``config.reward`` (correctness by default).
:func:`thinklean.core.advantages.hgpo_advantages` gives every token the within-mode signal
(best rollout of its mode half) and the mode-tag token, in addition, ``alpha`` times the
between-mode signal (was this rollout's mode the winner, with margin ``delta`` for no-think).

``config.method_kwargs``: ``alpha`` (1.0), ``delta`` (0.2), ``tag_mass`` (1.0), ``malformed_reward`` (-1.0).

``malformed_reward`` is a thinklean addition (the spec only says "score with the task reward"):
a rollout not well formed in its forced mode (:func:`~thinklean.data.grading.format_ok`: a
no-think answer holds no think tags and ends with ``</no_think>``) gets this reward instead of the
task's, below any well-formed wrong answer; ``None`` is the bare task reward. With the bare
correctness reward the no-think half of the embedded task learned to reason and close with
``</think>``, so "no-think wins" stopped meaning a direct answer. Scoring malformed rollouts 0, like
wrong ones, made the no-think route stop right after its tag instead: in a mode half where every
rollout scores the same, the intra-mode reward goes to the shortest. At -1 a direct answer, even a
wrong one, is the best a no-think rollout can do when it cannot answer (figures: docs/lhrm.md).

``tag_mass`` is a thinklean addition (the spec and the authors' recipe are silent): the loss
gains ``tag_mass * mean(-log(P(<think>) + P(<no_think>)))`` at the tag position of every rollout.
Rollouts never sample that position (the tag is forced), so without it nothing stops the
inter-mode updates from moving probability to other tokens there; on the embedded task the two
tags fell from 96.5% to 47.5% of the first-token probability in 12 steps
(``benchmarks/hgpo_tag_mass.py``). It leaves the choice between the two tags to the HGPO terms;
``tag_mass: 0`` is the paper's objective.

:func:`build_hft_model` makes the hybrid model HGPO starts from (:data:`HFT_STAGES`): SFT on
the mixture with the direct answers repeated until they are 75% of the rows. The 4-layer model
needs many passes over them: one pass of the plain mixture leaves its forced no-think accuracy on
held-out 1-operation problems at 3.5% (9% after 800 steps on twice the data), and a separate
direct-answer stage first reaches 90% but erases thinking (forced think 2.3% after 250 more
mixture steps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from thinklean.data.arith import ArithProblem
from thinklean.data.formats import NO_THINK, THINK, format_prompt, response_mode
from thinklean.data.grading import format_ok, grade
from thinklean.data.hft import ARITH_NO_THINK_RULE, DIRECT_ANSWER_PREFIX, as_example, hft_records, upsample_mode
from thinklean.data.jsonl import Example
from thinklean.methods.registry import DemoStage, MethodSpec, StartModel, register_method
from thinklean.rollout import RolloutBatch, SamplingConfig, generate
from thinklean.rollout.engine import position_ids_from_mask
from thinklean.train.rl import RLConfig, RLTrainer, StepBatch
from thinklean.train.settings import ConfigError
from thinklean.train.sft import SFTConfig, train_sft

def forced_mode_prefixes(num_prompts: int, samples_per_prompt: int) -> list[str]:
    """One forced prefix per sample, prompt-major: N/2 ``<think>`` then N/2 ``<no_think>``."""
    if samples_per_prompt < 2 or samples_per_prompt % 2:
        raise ConfigError(
            f"samples_per_prompt: hgpo forces half of each prompt's samples into <think> and half into "
            f"<no_think>, so it needs an even number >= 2, got {samples_per_prompt} (paper: 4)"
        )
    half = samples_per_prompt // 2
    return ([THINK] * half + [NO_THINK] * half) * num_prompts


def rollout_modes(texts: Sequence[str]) -> torch.Tensor:
    """``LongTensor[B]``: 1 for responses opening with ``<think>``, 0 for ``<no_think>``."""
    modes = [response_mode(t) for t in texts]
    if None in modes:
        i = modes.index(None)
        raise ValueError(f"response {i} opens with no mode tag ({texts[i][:40]!r}); HGPO rollouts must be forced")
    return torch.tensor([int(m == "think") for m in modes], dtype=torch.long)


def tag_token_index(tokenizer: Any) -> int:
    """Response position of the token that decides the mode: the first where the two tags'
    tokenizations differ (0 when each tag is one token, as in the embedded tokenizer)."""
    think = tokenizer(THINK, add_special_tokens=False).input_ids
    no_think = tokenizer(NO_THINK, add_special_tokens=False).input_ids
    return next((i for i, (a, b) in enumerate(zip(think, no_think)) if a != b), 0)


def mode_token_mask(response_mask: torch.Tensor, index: int = 0) -> torch.Tensor:
    """``[B, T]`` mask with a 1 at response position ``index`` (the mode tag) of every non-empty row."""
    mask = torch.zeros_like(response_mask)
    mask[:, index] = response_mask[:, index]
    return mask


def mode_stats(rewards: torch.Tensor, correct: torch.Tensor, lengths: torch.Tensor, modes: torch.Tensor,
               group_ids: torch.Tensor, delta: float) -> dict[str, float]:
    """Accuracy and mean length (tokens) per mode, and ``think_wins``: the fraction of groups
    with both modes where ``mean_think_reward > mean_no_think_reward + delta`` (HGPO's rule)."""
    out: dict[str, float] = {}
    for name, value in (("think", 1), ("no_think", 0)):
        rows = modes == value
        out[f"{name}_accuracy"] = float(correct[rows].float().mean()) if rows.any() else float("nan")
        out[f"{name}_length_mean"] = float(lengths[rows].float().mean()) if rows.any() else float("nan")
    wins, groups = 0, 0
    for g in group_ids.unique():
        in_group = group_ids == g
        think, no_think = rewards[in_group & (modes == 1)], rewards[in_group & (modes == 0)]
        if len(think) and len(no_think):
            groups += 1
            wins += int(float(think.double().mean()) > float(no_think.double().mean()) + delta)
    out["think_wins"] = wins / groups if groups else float("nan")
    return out


@dataclass(frozen=True)
class HGPOSettings:
    """``method_kwargs`` of HGPO: ``alpha`` and ``delta`` of the advantage, ``tag_mass`` of the
    auxiliary loss, ``malformed_reward``: the reward of a rollout malformed in its forced mode."""

    alpha: float = 1.0
    delta: float = 0.2
    tag_mass: float = 1.0
    malformed_reward: float | None = -1.0


class HGPOTrainer(RLTrainer):
    """GRPO loop with mode-forced rollouts and the inputs of HGPO advantages."""

    Settings = HGPOSettings

    def __init__(self, model: torch.nn.Module, tokenizer: Any, config: RLConfig, train_examples: Sequence[Example],
                 run_dir: str | Path, eval_examples: Sequence[Example] = ()) -> None:
        forced_mode_prefixes(1, config.samples_per_prompt)  # fail on an odd N before building anything
        super().__init__(model, tokenizer, config, train_examples, run_dir, eval_examples)
        self.tag_index = tag_token_index(tokenizer)
        self.tag_ids = [tokenizer(tag, add_special_tokens=False).input_ids[self.tag_index] for tag in (THINK, NO_THINK)]

    def build_prompts(self, examples: Sequence[Example]) -> tuple[list[str], list[str]]:
        prompts, _ = super().build_prompts(examples)
        return prompts, forced_mode_prefixes(len(prompts), self.config.samples_per_prompt)

    def compute_rewards(self, batch: RolloutBatch, examples: Sequence[Example], correct: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The task reward, or ``malformed_reward`` for a rollout malformed in its forced mode;
        logs per-mode accuracy, length and share well formed, and ``think_wins``."""
        modes = rollout_modes(batch.texts)
        well_formed = torch.tensor([format_ok(t) for t in batch.texts], dtype=torch.bool)
        rewards, info = super().compute_rewards(batch, examples, correct)
        if self.settings.malformed_reward is not None:
            rewards = torch.where(well_formed.to(rewards.device), rewards.float(), self.settings.malformed_reward)
        stats = mode_stats(rewards, correct, batch.lengths, modes, batch.group_ids, self.settings.delta)
        for name, value in (("think", 1), ("no_think", 0)):
            rows = modes == value
            stats[f"{name}_format_ok"] = float(well_formed[rows].float().mean()) if rows.any() else float("nan")
        return rewards, {**info, **stats}

    def auxiliary_loss(self, batch: StepBatch, mini: torch.Tensor) -> torch.Tensor | None:
        """``tag_mass * mean over rows of -log(P(<think>) + P(<no_think>))`` at the tag position
        (after the prompt and the tags' shared first ``tag_index`` tokens); None when 0."""
        coef = self.settings.tag_mass
        if coef <= 0:
            return None
        r, device = batch.rollout, self.accelerator.device
        # Rows of one group share the prompt and the tags' common prefix: run each group once,
        # weighted by its rows in the mini-batch (the same mean as over all rows).
        group = r.group_ids[mini]
        order = torch.argsort(group, stable=True)
        is_first = torch.ones_like(order, dtype=torch.bool)
        is_first[1:] = group[order][1:] != group[order][:-1]
        rows, counts = mini[order[is_first]], torch.bincount(is_first.long().cumsum(0) - 1).to(device)
        prefix = r.response_ids[rows, : self.tag_index]
        input_ids = torch.cat([r.prompt_ids[rows], prefix], 1).to(device)
        attention_mask = torch.cat([r.prompt_mask[rows], torch.ones_like(prefix)], 1).to(device)
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask,
                            position_ids=position_ids_from_mask(attention_mask), logits_to_keep=1).logits[:, -1].float()
        log_mass = torch.logsumexp(logits[:, self.tag_ids], -1) - torch.logsumexp(logits, -1)
        return -coef * (log_mass * counts).sum() / counts.sum()

    def advantage_inputs(self, step_batch: StepBatch) -> dict[str, Any]:
        """The generic inputs plus each rollout's ``modes``, the tag token's ``mode_token_mask`` and
        the settings ``alpha`` / ``delta``."""
        rollout = step_batch.rollout
        return {**super().advantage_inputs(step_batch), "modes": rollout_modes(rollout.texts),
                "mode_token_mask": mode_token_mask(rollout.response_mask, self.tag_index),
                "alpha": self.settings.alpha, "delta": self.settings.delta}


@torch.no_grad()
def rft_records(
    model: torch.nn.Module,
    tokenizer: Any,
    problems: Sequence[ArithProblem | Example],
    k: int = 4,
    seed: int = 0,
    max_new_tokens: int = 320,
    temperature: float = 1.0,
    batch_size: int = 128,
) -> list[dict]:
    """HFT + RFT baseline data: ``k`` sampled rollouts per mode per problem; of the finished,
    well-formed, correct ones keep the shortest (ties: no-think, then lower index), so when
    both modes are right the cheaper mode's answer is kept. Problems with no correct rollout
    are dropped. Returns SFT rows (``prompt``, ``answer``, ``solution``, ``mode``, ``difficulty``)."""
    examples = [as_example(p) for p in problems]
    prompts = [format_prompt(e.prompt, tokenizer) for e in examples]
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size)
    batch = generate(model, tokenizer, prompts, 2 * k, sampling, forced_mode_prefixes(len(prompts), 2 * k), generator)
    best: dict[int, tuple[tuple[int, int, int], str]] = {}
    for i, text in enumerate(batch.texts):
        g = int(batch.group_ids[i])
        if not (bool(batch.finished[i]) and format_ok(text) and grade(text, examples[g].answer)):
            continue
        key = (int(batch.lengths[i]), int(response_mode(text) == "think"), i)
        if g not in best or key < best[g][0]:
            best[g] = (key, text.strip())
    rows = []
    for g in sorted(best):
        e, text = examples[g], best[g][1]
        row = {"prompt": e.prompt, "answer": e.answer, "solution": text, "mode": response_mode(text)}
        if e.difficulty is not None:
            row["difficulty"] = e.difficulty
        rows.append(row)
    return rows


@torch.no_grad()
def measured_no_think(
    model: torch.nn.Module,
    tokenizer: Any,
    problems: Sequence[ArithProblem | Example],
    forced_prefix: str = DIRECT_ANSWER_PREFIX,
    max_new_tokens: int = 16,
    batch_size: int = 128,
) -> set[str]:
    """Prompts whose greedy answer, forced to start with ``forced_prefix``, is right.

    The default prefix ``<no_think> \\boxed{`` asks for the number straight away, so a base
    model trained on think rows only can be measured too.
    """
    examples = [as_example(p) for p in problems]
    prompts = [format_prompt(e.prompt, tokenizer) for e in examples]
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch_size)
    batch = generate(model, tokenizer, prompts, 1, sampling, [forced_prefix] * len(prompts))
    return {e.prompt for e, text in zip(examples, batch.texts) if grade(text, e.answer)}


@dataclass(frozen=True)
class HFTStage:
    """One SFT stage of the hybrid recipe: ``rows`` embedded-task HFT rows (``hft_records``
    with ``no_think_rule`` / ``no_think_share``), no-think rows optionally upsampled."""

    name: str
    config: SFTConfig
    rows: int
    no_think_rule: str = ARITH_NO_THINK_RULE
    no_think_share: float = 0.5
    no_think_upsample: float | None = None  # repeat no-think rows until they are this share of the rows


# Direct answers for the 1-operation problems without a multiplication (1,883 rows over 1,777
# distinct problems, half of those problems' rows), repeated to 75% of ~112k rows; length bucketing
# puts them in their own short batches, so most steps are cheap. lr 1e-4, the base model's own: at
# 5e-4 the hybrid's checked products were wrong 22% of the time after their check (docs/lhrm.md).
HFT_STAGES = (
    HFTStage("hft", SFTConfig(steps=1500, batch_size=64, lr=1e-4, save_every=150), 30_000, no_think_upsample=0.75),
)


def build_hft_model(base_model: str | Path, work_dir: str | Path, stages: Sequence[HFTStage] = HFT_STAGES,
                    seed: int = 0, show_progress: bool = True) -> Path:
    """Run ``stages`` in turn from ``base_model``, each in ``WORK_DIR/NAME`` with ``seed`` for its
    data and SFT (resumable: a finished stage is kept, an interrupted one continues from its
    checkpoint); returns the last stage's model directory."""
    from thinklean.models.tiny import load_pretrained

    work_dir, model_dir = Path(work_dir), Path(base_model)
    for stage in stages:
        stage_dir = work_dir / stage.name
        if not (stage_dir / "model" / "model.safetensors").is_file():
            rows = hft_records(stage.rows, seed=seed, no_think_rule=stage.no_think_rule, no_think_share=stage.no_think_share)
            if stage.no_think_upsample is not None:
                rows = upsample_mode(rows, "no_think", stage.no_think_upsample)
            model, tokenizer = load_pretrained(model_dir)
            config = replace(stage.config, seed=seed)
            train_sft(model, tokenizer, rows, config, stage_dir, resume=True, show_progress=show_progress, method="hft")
        model_dir = stage_dir / "model"
    return model_dir


# ------------------------------------------------------------------------------------- demo

HYBRID_K = 4  # forced samples per mode behind each prompt's correct mode (the demo's hybrid metrics)


def hft_stages(quick: bool) -> tuple[HFTStage, ...]:
    """The HFT recipe the demo builds (a few steps of each stage with ``quick``)."""
    if not quick:
        return HFT_STAGES
    return tuple(HFTStage(s.name, SFTConfig(steps=3, batch_size=8, lr=s.config.lr), 120, s.no_think_rule,
                          s.no_think_share, s.no_think_upsample) for s in HFT_STAGES)


def build_demo_start(stage: DemoStage) -> Path:
    """The demo's hybrid start model (``OUTPUT/hft-build``, :func:`build_hft_model`)."""
    stages = tuple(replace(s, config=replace(s.config, report_to=stage.report_to)) for s in hft_stages(stage.quick))
    work_dir = stage.output / "hft-build"
    if not (work_dir / stages[-1].name / "model" / "model.safetensors").is_file():
        stage.console.print("[bold]building the hybrid model[/bold]: HFT with upsampled direct answers "
                            "(thinklean.methods.lhrm.HFT_STAGES; about 50 min on 2 cores)")
    return build_hft_model(stage.base_model, work_dir, stages, stage.seed)


def hybrid_results(stage: DemoStage, model_dir: Path, examples: Sequence[Example]) -> dict[str, Any]:
    """``{"hybrid": ...}``: HAcc, think ratio and forced-mode accuracies (``ROW_DIR/hybrid.json``)."""
    from thinklean.eval.hybrid import hybrid_accuracy, print_hybrid
    from thinklean.models.tiny import load_pretrained

    model, tokenizer = load_pretrained(model_dir)
    name = stage.row_dir.name
    stage.console.print(f"hybrid accuracy of {name}: {HYBRID_K} forced samples per mode and one greedy answer per problem")
    summary = hybrid_accuracy(model, tokenizer, examples, k=HYBRID_K, max_new_tokens=stage.budget.max_new_tokens,
                              seed=stage.seed, output=stage.row_dir / "hybrid.json")
    print_hybrid(summary, title=f"hybrid accuracy: {name}", console=stage.console)
    return {"hybrid": {key: value for key, value in summary.items() if key != "config"}}


register_method(MethodSpec(
    "hgpo", HGPOTrainer, "HGPO (LHRM): mode-forced rollouts, think/no-think advantages; starts from an HFT model",
    advantage_inputs=("modes", "mode_token_mask", "alpha", "delta"),
    start=StartModel("hft", "a hybrid model from the base model (about 50 min)", build_demo_start,
                     work_dirs=("hft-build",), recipe=hft_stages),
    extra_results=hybrid_results,
))
