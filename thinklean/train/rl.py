"""The generic RL loop on accelerate: rollout -> reward -> advantage -> old/ref logprobs -> update.

Read top to bottom, one call of :meth:`RLTrainer.step` is::

    examples  = sample_examples(step)                       # prompts_per_step problems
    batch     = rollout(examples)                           # G samples each, KV-cached decoding
    rewards   = compute_rewards(batch, examples)            # [B]   (registry: cfg.reward)
    adv       = compute_advantages(batch, rewards, info)    # [B,T] (registry: cfg.advantage)
    old, ref  = policy_logprobs(policy / reference)         # [B,T] under no_grad
    for ppo_epochs x mini-batches: policy_loss (+ KL) -> backward -> clip -> optimizer step

Methods customise the hooks (:data:`TRAINER_HOOKS`, from ``build_prompts`` to ``on_train_end``;
docs/methods.md lists them all) in a small subclass instead of forking the loop: none overrides
``step``, ``collect``, ``rollout``, ``train`` or a private method. Rewards, estimators and losses
are called by name with keyword inputs (:func:`thinklean.core.registry.call_with_inputs`). Determinism: prompt choice and sampling at step ``s`` depend only on ``(seed, s)``,
and checkpoints hold optimizer/scheduler/RNG states, so ``resume`` continues bit-for-bit on CPU.

Several processes (``accelerate launch --config_file configs/accelerate/ddp.yaml``): every
process draws the same prompts and rolls out its own contiguous share of them, all
``samples_per_prompt`` samples of a prompt in one process, so rewards and advantages (HMPO's
median, GRPO's mean/std) always see whole groups. The update scales each process's loss by its
share of the global token (or sequence) count, so the data-parallel gradient is the one a single
process would compute on all the rollouts; logged metrics are computed over all processes
(method extras: their mean over processes) and only the main process writes logs and checkpoints.
Under FSDP (``configs/accelerate/fsdp.yaml``, :mod:`thinklean.train.fsdp`) the model is sharded,
forward calls run in lockstep (``_sync_calls`` after each phase) and every process writes its
shards of each checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, gather_object
from torch.optim.lr_scheduler import LambdaLR

from thinklean.core import (aggregate_loss, call_with_inputs, entropy_from_logits, get_advantage, get_loss, get_reward,
                            kl_penalty)
from thinklean.core.masked import group_max, group_min
from thinklean.data.formats import format_prompt
from thinklean.data.grading import format_ok, grade
from thinklean.data.jsonl import Example
from thinklean.eval.evaluate import EvalConfig, evaluate
from thinklean.models.card import CardInfo, started_from
from thinklean.models.tiny import save_pretrained
from thinklean.rollout import RolloutBatch, SamplingConfig, generate
from thinklean.rollout.engine import pad_token_id, position_ids_from_mask
from thinklean.rollout.vllm_engine import VLLMRollout, vllm_problem
from thinklean.runlog import progress_bar
from thinklean.train.checkpoint import find_checkpoint, restore_training_state, save_checkpoint, save_sharded_checkpoint
from thinklean.train.fsdp import (Lockstep, fsdp_requested, full_state_dict, full_value, keep_root_gathered,
                                   shard_model)
from thinklean.train.monitor import MetricsLog, check_finite
from thinklean.train.settings import ConfigError, build_settings
from thinklean.train.shared_prompt import SharedPromptForward, shared_prompt_forward
from thinklean.train.sft import warmup_cosine
from thinklean.train.trackers import accelerator_kwargs


ROLLOUT_BACKENDS = ("hf", "vllm")
ROLLOUT_DTYPES = {"model": None, "bfloat16": torch.bfloat16}
# The methods a method's trainer may override (docs/methods.md, "Trainer hooks"), besides __init__.
TRAINER_HOOKS = ("build_prompts", "sampling_config", "generate_rollout", "reward_inputs", "compute_rewards",
                 "on_rollout", "advantage_inputs", "compute_advantages", "row_inputs", "policy_logprobs",
                 "response_logits", "auxiliary_loss", "on_step_end", "on_epoch_end", "evaluate", "on_train_start",
                 "on_train_end")


@dataclass
class RLConfig:
    """Every knob of the loop; YAML configs and CLI flags set these by name."""

    method: str = "grpo"
    steps: int = 100
    prompts_per_step: int = 8
    samples_per_prompt: int = 8
    max_new_tokens: int = 320  # the embedded base model checks every step: up to ~280 tokens at 6 operations
    temperature: float = 1.0
    top_p: float = 1.0
    # reward -> advantage -> loss, by registry name
    reward: str = "correctness"
    reward_kwargs: dict[str, Any] = field(default_factory=dict)
    advantage: str = "grpo"
    advantage_kwargs: dict[str, Any] = field(default_factory=dict)
    loss: str = "ppo_clip"  # registered policy loss
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    loss_agg: str = "token-mean"
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    kl_coef: float = 0.0
    kl_kind: str = "k3"
    kl_in_reward: float = 0.0  # k1 per token x coef, summed and subtracted from the reward
    method_kwargs: dict[str, Any] = field(default_factory=dict)  # method-specific (e.g. BuPO layer, s_inter)
    # optimisation
    lr: float = 5e-5
    weight_decay: float = 0.0
    adam_beta2: float = 0.99
    adam_eps: float = 1e-8  # AdamW's epsilon (torch's default)
    # train only the parameters whose name matches this regular expression (re.search), e.g.
    # "mlp" for the feed-forward blocks of a Qwen2/Llama decoder; the others are frozen ("": all)
    train_only: str = ""
    grad_clip: float = 1.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # or "cosine" (to 0.1x)
    ppo_epochs: int = 1
    mini_batches: int = 1  # optimizer steps per epoch over the rollout batch
    micro_batch_size: int = 32  # most sequences per forward/backward (gradient accumulation)
    # most padded prompt+response tokens per forward/backward (0: fixed micro_batch_size rows);
    # rows are length-sorted first, so short rows share a micro-batch and padding stays small
    micro_batch_tokens: int = 1024
    # run each distinct prompt once per mini-batch in the update, not once per sample (same
    # gradient; single process, methods that keep the default policy_logprobs/response_logits
    # or whose policy_logprobs scores on the shared prompts, as LiteReason's does)
    share_prompt_forward: bool = True
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards are all equal, resample
    max_resample_rounds: int = 3
    keep_shortest: int = 0  # GFPO-style: of each group's G samples, update on the k shortest (0 = all)
    # bookkeeping
    seed: int = 0
    train_problems: int = 20000
    eval_every: int = 0
    eval_problems: int = 200
    eval_temperature: float = 0.0  # 0: greedy; 1.0 scores the policy's own style mix
    save_every: int = 50
    keep_last: int = 2
    rollout_batch_size: int = 128
    rollout_backend: str = "hf"  # "hf": thinklean's decode loop; "vllm": colocated vLLM engine (CUDA, [gpu] extra)
    vllm_gpu_memory_utilization: float = 0.3  # share of the GPU the vLLM engine may take (weights + KV cache)
    # "model": the hf engine samples with the policy itself; "bfloat16": with a bf16 copy of it, refreshed
    # after every update (the loss re-scores every response with the policy, as with vLLM)
    rollout_dtype: str = "model"
    bf16: bool = False  # the update's and the log-prob passes' forwards under bf16 autocast (fp32 weights)
    report_to: str = "none"  # experiment trackers (thinklean.train.trackers): tensorboard, wandb, mlflow, trackio, all


@dataclass
class StepBatch:
    """A rollout with everything the update needs, all ``[B]`` or ``[B, T]`` on the CPU."""

    rollout: RolloutBatch
    examples: list[Example]
    correct: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor | None = None
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    info: dict[str, float] = field(default_factory=dict)


def _select_rows(batch: RolloutBatch, rows: torch.Tensor) -> RolloutBatch:
    """The rows ``rows`` of a rollout (used by dynamic sampling and GFPO-style filters)."""
    picked = {name: value[rows] for name, value in vars(batch).items() if isinstance(value, torch.Tensor)}
    return RolloutBatch(**picked, texts=[batch.texts[i] for i in rows.tolist()])


def concat_rollouts(batches: Sequence[RolloutBatch], group_counts: Sequence[int]) -> RolloutBatch:
    """Stack rollouts of different padded widths; batch i's group ids are offset by the sum of
    ``group_counts[:i]`` (its number of prompts), so they keep indexing the joined example list."""
    def pad_cat(tensors: list[torch.Tensor], left: bool, value: int | float = 0) -> torch.Tensor:
        width = max(t.shape[1] for t in tensors)
        return torch.cat([
            torch.nn.functional.pad(t, (width - t.shape[1], 0) if left else (0, width - t.shape[1]), value=value)
            for t in tensors
        ])

    offsets = [sum(group_counts[:i]) for i in range(len(batches))]
    pad_id = int(batches[0].response_ids[batches[0].response_mask == 0][0]) if (batches[0].response_mask == 0).any() else 0
    return RolloutBatch(
        prompt_ids=pad_cat([b.prompt_ids for b in batches], True, pad_id),
        prompt_mask=pad_cat([b.prompt_mask for b in batches], True),
        response_ids=pad_cat([b.response_ids for b in batches], False, pad_id),
        response_mask=pad_cat([b.response_mask for b in batches], False),
        logprobs=pad_cat([b.logprobs for b in batches], False),
        lengths=torch.cat([b.lengths for b in batches]),
        group_ids=torch.cat([b.group_ids + o for b, o in zip(batches, offsets)]),
        texts=[t for b in batches for t in b.texts],
        finished=torch.cat([b.finished for b in batches]),
        forced_prefix_lens=torch.cat([b.forced_prefix_lens for b in batches]),
    )


def _first_prompt_column(prompt_mask: torch.Tensor) -> int:
    """First column of left-padded ``prompt_mask [b, P]`` that holds a real token in some row."""
    return int((prompt_mask.sum(0) > 0).nonzero()[0]) if prompt_mask.any() else 0


def freeze_all_but(model: torch.nn.Module, pattern: str) -> None:
    """Freeze every parameter of ``model`` whose name does not match ``pattern`` (``re.search``;
    ``""`` leaves every parameter as it is). Raises :class:`ConfigError` for a pattern that is not a
    regular expression or matches no parameter."""
    if not pattern:
        return
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"train_only {pattern!r} is not a regular expression: {e}") from None
    names = [name for name, _ in model.named_parameters()]
    if not any(regex.search(name) for name in names):
        raise ConfigError(f"train_only {pattern!r} matches none of the model's {len(names)} parameters "
                          f"(names such as {names[0]!r}, {names[-1]!r})")
    for name, param in model.named_parameters():
        param.requires_grad_(bool(regex.search(name)))


class RLTrainer:
    """Generic policy-gradient trainer; subclass and override hooks for a method."""

    # A subclass whose own policy_logprobs scores rows["shared_prompt"] (see _share_prompts) sets this.
    policy_logprobs_shares_prompts = False
    # The dataclass that types config.method_kwargs (None: the method takes none); built as self.settings.
    Settings: ClassVar[type | None] = None

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        config: RLConfig,
        train_examples: Sequence[Example],
        run_dir: str | Path,
        eval_examples: Sequence[Example] = (),
    ) -> None:
        if not train_examples:
            raise ValueError("no training examples")
        if config.rollout_backend not in ROLLOUT_BACKENDS:
            raise ConfigError(f"rollout_backend must be one of {', '.join(ROLLOUT_BACKENDS)}, got {config.rollout_backend!r}")
        if config.rollout_backend == "vllm" and (problem := vllm_problem()):
            raise ConfigError(problem)
        self._check_rollout_dtype(config)
        self.settings = build_settings(self.Settings, config.method_kwargs, config.method)
        self.config = config
        self.tokenizer = tokenizer
        self.train_examples = list(train_examples)
        self.eval_examples = list(eval_examples)
        self.run_dir = Path(run_dir)
        # Processes decode, score and evaluate different numbers of times, so forward passes must
        # not be collectives (DDP's buffer broadcast); BuPO's IPA phase leaves upper layers unused.
        ddp = DistributedDataParallelKwargs(broadcast_buffers=False, find_unused_parameters=True)
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=[ddp],
                                       **accelerator_kwargs(config.report_to, self.run_dir))
        freeze_all_but(model, config.train_only)
        self.reference = None
        if config.kl_coef > 0 or config.kl_in_reward > 0:
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        # FSDP (configs/accelerate/fsdp.yaml): shard before the optimizer sees the parameters;
        # forward calls are collectives, so the processes make them in lockstep (_sync_calls)
        self.fsdp = fsdp_requested(self.accelerator)
        self._lockstep = self._reference_lockstep = None
        if self.fsdp:
            if config.rollout_backend != "hf":
                raise NotImplementedError(f"rollout_backend {config.rollout_backend!r} under FSDP: the engine would need "
                                          "the whole policy on every process; use rollout_backend 'hf' (or DDP)")
            if config.rollout_dtype != "model":
                raise NotImplementedError(f"rollout_dtype {config.rollout_dtype!r} under FSDP: the copy would need the "
                                          "whole policy on every process; use rollout_dtype 'model' (or DDP)")
            shard_model(model, self.accelerator.device)
            self._lockstep = Lockstep(model, lambda backward: self._lockstep_pad(self.model, backward),
                                      self.accelerator.device)
            if self.reference is not None:  # sharded like the policy, its root kept gathered too
                keep_root_gathered(shard_model(self.reference, self.accelerator.device))
                self._reference_lockstep = Lockstep(self.reference,
                                                    lambda backward: self._lockstep_pad(self.reference, backward),
                                                    self.accelerator.device)
        self.optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=config.lr,
            weight_decay=config.weight_decay, betas=(0.9, config.adam_beta2), eps=config.adam_eps,
        )
        if self.fsdp:
            keep_root_gathered(model, self.optimizer)
        self.scheduler = LambdaLR(self.optimizer, self._lr_factor)
        self.model = model
        self.step_index = 0
        self._vllm: VLLMRollout | None = None
        self._vllm_step = 0  # the step whose weights the vLLM engine holds
        self._rollout_copy: torch.nn.Module | None = None  # rollout_dtype's copy of the policy
        self._rollout_copy_step = -1  # the step whose weights it holds

    def _check_rollout_dtype(self, config: RLConfig) -> None:
        if config.rollout_dtype not in ROLLOUT_DTYPES:
            raise ConfigError(f"rollout_dtype must be one of {', '.join(ROLLOUT_DTYPES)}, got {config.rollout_dtype!r}")
        if config.rollout_dtype == "model":
            return
        if config.rollout_backend != "hf":
            raise ConfigError(f"rollout_dtype {config.rollout_dtype!r} sets the hf engine's copy; rollout_backend "
                              f"{config.rollout_backend!r} serves the model in its own dtype")
        if type(self).generate_rollout is not RLTrainer.generate_rollout:
            raise ConfigError(f"{config.method}: rollout_dtype {config.rollout_dtype!r} is not supported (the method "
                              "samples with its own generate_rollout); use rollout_dtype 'model'")

    def _autocast(self) -> contextlib.AbstractContextManager:
        """The context of every forward that scores responses for the loss: bf16 autocast with
        ``config.bf16``, nothing otherwise."""
        return torch.autocast(self.accelerator.device.type, dtype=torch.bfloat16, enabled=self.config.bf16)

    def _rollout_model(self) -> torch.nn.Module:
        """The module the hf engine samples with: the policy, or with ``rollout_dtype`` a copy of it
        in that dtype (parameters only; buffers such as rotary frequencies keep theirs), its
        parameters refreshed from the policy's when an update has changed them."""
        model = self.accelerator.unwrap_model(self.model)
        dtype = ROLLOUT_DTYPES[self.config.rollout_dtype]
        if dtype is None:
            return model
        if self._rollout_copy is None:
            self._rollout_copy = copy.deepcopy(model).eval().requires_grad_(False)
            for param in self._rollout_copy.parameters():
                param.data = param.data.to(dtype)
        elif self._rollout_copy_step != self.step_index:
            with torch.no_grad():
                for target, source in zip(self._rollout_copy.parameters(), model.parameters(), strict=True):
                    target.copy_(source)
        self._rollout_copy_step = self.step_index
        return self._rollout_copy

    def _lockstep_pad(self, model: torch.nn.Module, backward: bool) -> None:
        """One padding call of ``model`` (the policy or the KL reference) for
        :class:`~thinklean.train.fsdp.Lockstep`: a one-token response scored the way the update
        scores responses, with a zero backward when ``backward``."""
        ids = torch.full((1, 2), pad_token_id(self.tokenizer), dtype=torch.long, device=self.accelerator.device)
        mask = torch.ones_like(ids)
        with torch.set_grad_enabled(backward):
            logits = self.response_logits(model, ids, mask, position_ids_from_mask(mask), 1)
        if backward:
            self.accelerator.backward(logits.float().sum() * 0.0)

    def _sync_calls(self, backward: bool = False) -> None:
        """Under FSDP, make padding calls until every process has finished its calls of this phase
        (``backward``: each with a backward, as in the update); no-op otherwise."""
        if self._lockstep is not None:
            self._lockstep.sync(backward)

    def _lr_factor(self, step: int) -> float:
        cfg = self.config
        if cfg.lr_schedule == "cosine":
            return warmup_cosine(cfg.steps, cfg.warmup_steps / max(1, cfg.steps), 0.1)(step)
        return min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0

    # ------------------------------------------------------------------ hooks (override these)

    def build_prompts(self, examples: Sequence[Example]) -> tuple[list[str], list[str] | None]:
        """Prompt strings (one per example) and optional forced prefixes (one per sample)."""
        return [format_prompt(e.prompt, self.tokenizer) for e in examples], None

    def sampling_config(self, step: int) -> SamplingConfig:
        """How step ``step`` samples; override for schedules (e.g. ThinkPrune's budget)."""
        cfg = self.config
        return SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                              batch_size=cfg.rollout_batch_size)

    def generate_rollout(self, prompts: list[str], prefixes: list[str] | None, sampling: SamplingConfig,
                         seed: int) -> RolloutBatch:
        """``samples_per_prompt`` samples of each prompt (``prefixes``: one forced prefix per
        sample, prompt-major) with the ``config.rollout_backend`` engine, seeded with ``seed``."""
        n = self.config.samples_per_prompt
        if self.config.rollout_backend == "vllm":
            return self.vllm_engine().generate(prompts, n, sampling, prefixes, seed=seed)
        generator = torch.Generator(device=self.accelerator.device).manual_seed(seed)
        return generate(self._rollout_model(), self.tokenizer, prompts, n, sampling, prefixes, generator)

    def reward_inputs(self, batch: RolloutBatch, examples: Sequence[Example]) -> dict[str, Any]:
        """Inputs for the reward besides ``correct``, ``lengths`` and ``group_ids`` (e.g. L1's
        ``targets``); their names are the spec's ``reward_inputs``. Default: none."""
        return {}

    def compute_rewards(self, batch: RolloutBatch, examples: Sequence[Example], correct: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Sequence rewards ``[B]`` from the registered reward ``config.reward``, plus log info."""
        inputs = {"correct": correct, "lengths": batch.lengths, "group_ids": batch.group_ids,
                  **self.reward_inputs(batch, examples)}
        return call_with_inputs(get_reward(self.config.reward), inputs, self.config.reward_kwargs), {}

    def on_rollout(self, step: int, step_batch: StepBatch) -> None:
        """Called by :meth:`collect` with step ``step``'s (0-based) scored rollout, after the
        row filters and before advantages: add numbers to log to ``step_batch.info``, keep rows
        for later (LiteReason's refresh pool). Default: nothing."""

    def advantage_inputs(self, step_batch: StepBatch) -> dict[str, Any]:
        """Inputs for the advantage estimator by name: ``rewards``, ``group_ids``,
        ``response_mask``, ``correct``, ``lengths``; a method adds its own (the spec's
        ``advantage_inputs``) and may set ``step_batch.info`` entries to log."""
        rollout = step_batch.rollout
        return {"rewards": step_batch.rewards, "group_ids": rollout.group_ids, "response_mask": rollout.response_mask,
                "correct": step_batch.correct, "lengths": rollout.lengths}

    def compute_advantages(self, step_batch: StepBatch) -> torch.Tensor:
        """Token advantages ``[B, T]`` from the registered estimator ``config.advantage``."""
        advantage_fn = get_advantage(self.config.advantage)
        return call_with_inputs(advantage_fn, self.advantage_inputs(step_batch), self.config.advantage_kwargs)

    def row_inputs(self, batch: StepBatch, rows: torch.Tensor) -> dict[str, Any]:
        """Method inputs of the rows ``rows`` (indices into ``batch``) for :meth:`policy_logprobs`,
        added to the padded tensors of ``rows`` (LiteReason: each row's latent segments). Default: none."""
        return {}

    def policy_logprobs(self, model: torch.nn.Module, rows: dict[str, Any], with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs ``[b, T]`` of the response tokens (temperature-scaled), and optionally entropy.

        ``rows`` holds ``prompt_ids``/``prompt_mask`` ``[b, P]`` (left-padded) and
        ``response_ids``/``response_mask`` ``[b, T]`` (right-padded); in the update it may also
        hold ``shared_prompt`` (a :class:`SharedPromptForward`) and ``prompt_index`` ``[b]``, its
        row for each sample, in which case the prompts are not run again.
        """
        shared = rows.get("shared_prompt")
        if shared is not None:
            logits = shared.response_logits(model, rows["prompt_index"], rows["response_ids"], rows["response_mask"])
        else:
            input_ids = torch.cat([rows["prompt_ids"], rows["response_ids"]], 1)
            attention_mask = torch.cat([rows["prompt_mask"], rows["response_mask"]], 1)
            T = rows["response_ids"].shape[1]
            logits = self.response_logits(model, input_ids, attention_mask, position_ids_from_mask(attention_mask), T)
        logits = logits.float() / max(self.config.temperature, 1e-6)
        logprobs = torch.log_softmax(logits, -1).gather(-1, rows["response_ids"].unsqueeze(-1)).squeeze(-1)
        entropy = entropy_from_logits(logits.detach()) if with_entropy else None
        return logprobs, entropy

    def response_logits(self, model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        position_ids: torch.Tensor, T: int) -> torch.Tensor:
        """Logits ``[b, T, V]`` scoring the last ``T`` tokens of ``input_ids`` (the response)."""
        return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                     logits_to_keep=T + 1).logits[:, :-1]

    def auxiliary_loss(self, batch: StepBatch, mini: torch.Tensor) -> torch.Tensor | None:
        """An extra differentiable loss for the mini-batch ``mini`` (row indices of ``batch``),
        backpropagated with its policy loss before the optimizer step; ``None`` (default): none.
        Logged as ``auxiliary_loss``."""
        return None

    def on_step_end(self, step: int, metrics: dict[str, float]) -> None:
        """Called after each update with the step's metrics (already logged)."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called when the loop has consumed ``len(train_examples)`` prompts since the last call."""

    def evaluate(self, n: int | None = None, output: Path | None = None) -> dict[str, Any]:
        """Greedy evaluation on the first ``n`` (default ``eval_problems``) held-out examples;
        ``output`` receives the summary and responses as JSON."""
        examples = self.eval_examples[: n or self.config.eval_problems]
        config = EvalConfig(max_new_tokens=self.config.max_new_tokens, temperature=self.config.eval_temperature,
                            seed=self.config.seed)
        return evaluate(self.model, self.tokenizer, examples, config, output=output)

    def on_train_start(self, resume: bool) -> None:
        """Called by :meth:`train` before the first step, once the checkpoint (if ``resume``
        found one) is restored; ``self.step_index`` is the step to run first."""

    def on_train_end(self, model_dir: Path) -> None:
        """Called by :meth:`train` on the main process once the final model is saved in
        ``model_dir``: save the method's own pieces next to it (LiteReason: its projector)."""

    # ------------------------------------------------------------------------------- the loop

    def sample_examples(self, step: int, round_: int = 0) -> list[Example]:
        """``prompts_per_step`` distinct examples, a pure function of ``(seed, step, round)``."""
        rng = random.Random(f"rl-{self.config.seed}-{step}-{round_}")
        k = min(self.config.prompts_per_step, len(self.train_examples))
        return [self.train_examples[i] for i in rng.sample(range(len(self.train_examples)), k)]

    def local_share(self, examples: Sequence[Any]) -> list[Any]:
        """This process's contiguous slice of ``examples`` (all of them with one process)."""
        n, i = self.accelerator.num_processes, self.accelerator.process_index
        return list(examples[len(examples) * i // n : len(examples) * (i + 1) // n])

    def rollout_seed(self, step: int, round_: int = 0, process_index: int | None = None) -> int:
        """Sampling seed of a process's rollout at ``(step, round_)``; process 0 (the only one
        in a single-process run) keeps the single-process seed."""
        index = self.accelerator.process_index if process_index is None else process_index
        return self.config.seed * 1_000_003 + step * 101 + round_ + index * 7_919

    def rollout(self, examples: Sequence[Example], step: int, round_: int = 0) -> RolloutBatch:
        """``samples_per_prompt`` samples of each example at ``(step, round_)``: the prompts of
        :meth:`build_prompts`, sampled by :meth:`generate_rollout` with :meth:`sampling_config`
        and the seed of :meth:`rollout_seed` (the one seed function of every rollout)."""
        prompts, prefixes = self.build_prompts(examples)
        return self.generate_rollout(prompts, prefixes, self.sampling_config(step), self.rollout_seed(step, round_))

    def vllm_engine(self) -> VLLMRollout:
        """The colocated vLLM engine holding the current policy: started at the first call, and
        given the policy's weights again whenever an update happened since the last call."""
        model = self.accelerator.unwrap_model(self.model)
        if self._vllm is None:
            self._vllm = VLLMRollout.launch(model, self.tokenizer, seed=self.rollout_seed(self.step_index),
                                            gpu_memory_utilization=self.config.vllm_gpu_memory_utilization)
        elif self._vllm_step != self.step_index:
            self._vllm.sync_weights(model)
        self._vllm_step = self.step_index
        return self._vllm

    def _score(self, rollout: RolloutBatch, examples: Sequence[Example]) -> StepBatch:
        answers = [examples[int(g)].answer for g in rollout.group_ids]
        correct = torch.tensor([grade(t, a) for t, a in zip(rollout.texts, answers)])
        rewards, info = self.compute_rewards(rollout, examples, correct)
        info["format_ok"] = sum(format_ok(t) for t in rollout.texts) / max(1, len(rollout.texts))
        return StepBatch(rollout, list(examples), correct, rewards.float(), info=info)

    def collect(self, step: int) -> StepBatch:
        """Roll out and score; with dynamic sampling keep only groups whose rewards differ,
        resampling new prompts (up to ``max_resample_rounds``) until ``prompts_per_step``
        groups are kept (DAPO). Each process works on its :meth:`local_share` of the prompts.
        The batch goes through :meth:`on_rollout` before it is returned."""
        examples = self.local_share(self.sample_examples(step))
        batch = self._score(self.rollout(examples, step), examples)
        if self.config.keep_shortest:
            batch = self.keep_shortest(batch, self.config.keep_shortest)
        if self.config.dynamic_sampling:
            batch = self._resample(step, batch)
        self.on_rollout(step, batch)
        return batch

    def _resample(self, step: int, batch: StepBatch) -> StepBatch:
        """Dynamic sampling: the groups of ``batch`` (step ``step``'s first round) whose rewards
        differ, joined with those of new rounds until ``prompts_per_step`` groups are kept."""
        kept: list[StepBatch] = []
        n_groups = 0
        wanted = len(self.local_share(range(self.config.prompts_per_step)))
        for round_ in range(self.config.max_resample_rounds + 1):
            if round_ > 0:
                examples = self.local_share(self.sample_examples(step, round_))
                batch = self._score(self.rollout(examples, step, round_), examples)
            gids = batch.rollout.group_ids
            spread = group_max(batch.rewards, gids) - group_min(batch.rewards, gids)
            informative = list(dict.fromkeys(gids[spread > 0].tolist()))[: wanted - n_groups]
            rows = torch.nonzero(torch.isin(gids, torch.tensor(informative, dtype=gids.dtype))).squeeze(1)
            kept.append(StepBatch(_select_rows(batch.rollout, rows), batch.examples, batch.correct[rows], batch.rewards[rows], info=batch.info))
            n_groups += len(informative)
            if n_groups >= wanted:
                break
        return StepBatch(
            concat_rollouts([k.rollout for k in kept], [len(k.examples) for k in kept]),
            [e for k in kept for e in k.examples],
            torch.cat([k.correct for k in kept]),
            torch.cat([k.rewards for k in kept]),
            info={**kept[0].info, "kept_groups": float(n_groups), "sampling_rounds": float(len(kept))},
        )

    @staticmethod
    def keep_shortest(batch: StepBatch, k: int) -> StepBatch:
        """GFPO-style filter: the ``k`` shortest responses of each group (ties: lower index).

        Rewards were computed on whole groups; advantages are then computed on the kept rows.
        """
        gids, lengths = batch.rollout.group_ids, batch.rollout.lengths
        order = sorted(range(len(gids)), key=lambda i: (int(gids[i]), int(lengths[i]), i))
        kept, count = [], {}
        for i in order:
            g = int(gids[i])
            if count.get(g, 0) < k:
                kept.append(i)
                count[g] = count.get(g, 0) + 1
        rows = torch.tensor(sorted(kept), dtype=torch.long)
        return StepBatch(_select_rows(batch.rollout, rows), batch.examples, batch.correct[rows], batch.rewards[rows],
                         info={**batch.info, "kept_fraction": len(rows) / max(1, len(gids))})

    def _rows(self, batch: StepBatch, rows: torch.Tensor) -> dict[str, Any]:
        """Micro-batch tensors trimmed to the rows' real prompt/response widths, on device, and
        the method's :meth:`row_inputs`."""
        r = batch.rollout
        prompt_mask = r.prompt_mask[rows]
        response_mask = r.response_mask[rows]
        p_start = _first_prompt_column(prompt_mask)
        t_end = max(1, int(response_mask.sum(1).max()))
        out = {
            "prompt_ids": r.prompt_ids[rows, p_start:], "prompt_mask": prompt_mask[:, p_start:],
            "response_ids": r.response_ids[rows, :t_end], "response_mask": response_mask[:, :t_end],
        }
        for name in ("advantages", "old_logprobs", "ref_logprobs"):
            value = getattr(batch, name)
            if value is not None:
                out[name] = value[rows, :t_end]
        return {**{k: v.to(self.accelerator.device) for k, v in out.items()}, **self.row_inputs(batch, rows)}

    def _micro_batches(self, batch: StepBatch, rows: torch.Tensor) -> list[torch.Tensor]:
        """Split ``rows`` (in the given order) into micro-batches of at most ``micro_batch_size``
        rows and, when ``micro_batch_tokens > 0``, at most that many padded tokens
        (rows x (longest prompt + longest response)); a row longer than the budget goes alone."""
        size, budget = self.config.micro_batch_size, self.config.micro_batch_tokens
        if budget <= 0:
            return [rows[i : i + size] for i in range(0, len(rows), size)]
        prompt_lens = batch.rollout.prompt_mask.sum(1)
        lengths = batch.rollout.lengths
        micros, start, widest_prompt, longest = [], 0, 0, 0
        for i, row in enumerate(rows.tolist()):
            p, t = max(widest_prompt, int(prompt_lens[row])), max(longest, int(lengths[row]))
            if i > start and (i - start + 1 > size or (i - start + 1) * (p + t) > budget):
                micros.append(rows[start:i])
                start, p, t = i, int(prompt_lens[row]), int(lengths[row])
            widest_prompt, longest = p, t
        if start < len(rows):
            micros.append(rows[start:])
        return micros

    @torch.no_grad()
    def _fill_logprobs(self, batch: StepBatch, model: torch.nn.Module, name: str) -> None:
        r = batch.rollout
        out = torch.zeros_like(r.logprobs)
        was_training = model.training
        model.eval()
        for rows in self._micro_batches(batch, torch.argsort(r.lengths, stable=True)):
            micro = self._rows(batch, rows)
            with self._autocast():
                logprobs, _ = self.policy_logprobs(model, micro)
            out[rows, : logprobs.shape[1]] = logprobs.cpu() * micro["response_mask"].cpu()
        model.train(was_training)
        setattr(batch, name, out)

    def _sum_over_processes(self, values: list[float]) -> list[float]:
        """Element-wise sums over all processes (``values`` itself with one process)."""
        if self.accelerator.num_processes == 1:
            return values
        summed = self.accelerator.reduce(torch.tensor(values, dtype=torch.float64, device=self.accelerator.device), "sum")
        return summed.tolist()

    def _all_processes(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """Each ``[b]`` tensor joined with the other processes' (in process order); the tensors
        themselves with one process."""
        if self.accelerator.num_processes == 1:
            return list(tensors)
        shards = gather_object([tuple(t.cpu() for t in tensors)])
        return [torch.cat([shard[i] for shard in shards]) for i in range(len(tensors))]

    def _mean_over_processes(self, info: dict[str, float]) -> dict[str, float]:
        """Each method extra averaged over the processes where it is finite (``info`` itself with one)."""
        if self.accelerator.num_processes == 1:
            return info
        shards = gather_object([info])
        out = {}
        for key in dict.fromkeys(k for shard in shards for k in shard):
            finite = [float(shard[key]) for shard in shards if key in shard and math.isfinite(float(shard[key]))]
            out[key] = sum(finite) / len(finite) if finite else float("nan")
        return out

    def _join_gradient_sync(self) -> None:
        """Backward of a zero loss, for a process with no rows in a mini-batch: the others'
        gradient all-reduce waits for every process."""
        ids = torch.zeros(1, 1, dtype=torch.long, device=self.accelerator.device)
        self.accelerator.backward(self.model(input_ids=ids).logits.sum() * 0.0)

    def update(self, batch: StepBatch) -> dict[str, float]:
        """``ppo_epochs`` x ``mini_batches`` optimizer steps over the rollout; returns metrics.

        Loss shares use token (sequence) counts summed over processes, times the number of
        processes because data parallelism averages gradients: every process's micro-batches
        then add up to the aggregate loss of the whole multi-process mini-batch.
        """
        cfg = self.config
        B = len(batch.rollout.lengths)
        world = self.accelerator.num_processes
        generator = torch.Generator().manual_seed(cfg.seed * 7919 + self.step_index)
        totals: dict[str, float] = {"loss": 0.0, "clip_frac": 0.0, "approx_kl": 0.0, "kl": 0.0, "entropy": 0.0, "grad_norm": 0.0}
        if type(self).auxiliary_loss is not RLTrainer.auxiliary_loss:  # same keys on every process
            totals["auxiliary_loss"] = 0.0
        n_updates = 0
        self.model.train()
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(B, generator=generator) if cfg.mini_batches > 1 else torch.arange(B)
            minis = list(order.chunk(cfg.mini_batches))
            if world > 1:  # every process takes the same number of optimizer steps
                minis += [order[:0]] * (cfg.mini_batches - len(minis))
            for mini in minis:
                # length-sorted micro-batches pad less; the aggregate loss does not depend on order
                mini = mini[torch.argsort(batch.rollout.lengths[mini], stable=True)]
                mask = batch.rollout.response_mask[mini]
                n_tokens, n_seqs = self._sum_over_processes([float(mask.sum()), float((mask.sum(1) > 0).sum())])
                micros = self._micro_batches(batch, mini)
                if not micros and not self.fsdp:  # under FSDP _sync_calls pads
                    self._join_gradient_sync()
                with self._autocast():
                    shared = self._share_prompts(batch, mini) if micros else None
                    auxiliary = self.auxiliary_loss(batch, mini) if micros else None
                if auxiliary is not None:  # before the micro-batches, whose last backward syncs gradients
                    with self.accelerator.no_sync(self.model):
                        self.accelerator.backward(auxiliary)
                    totals["auxiliary_loss"] += float(auxiliary.detach()) / world
                for i, rows in enumerate(micros):
                    # gradients are all-reduced once per mini-batch, after its last micro-batch
                    last = i == len(micros) - 1
                    with contextlib.nullcontext() if last else self.accelerator.no_sync(self.model):
                        self._micro_step(batch, rows, n_tokens, n_seqs, world, totals, shared)
                if shared is not None:
                    shared[0].backward()
                self._sync_calls(backward=True)
                # the optimizer's parameters: under FSDP the model's own may be the gathered root's copies
                params = [p for group in self.optimizer.param_groups for p in group["params"]]
                grad_norm = self.accelerator.clip_grad_norm_(params, cfg.grad_clip) if cfg.grad_clip > 0 else torch.tensor(0.0)
                check_finite(self.step_index + 1, loss=totals["loss"], grad_norm=float(grad_norm))
                totals["grad_norm"] += float(full_value(grad_norm))
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                n_updates += 1
        self.scheduler.step()
        names = [k for k in totals if k != "grad_norm"]  # grad_norm is the same on every process
        totals.update(zip(names, self._sum_over_processes([totals[k] for k in names])))
        return {k: v / n_updates for k, v in totals.items()}

    def _share_prompts(self, batch: StepBatch, mini: torch.Tensor) -> tuple[SharedPromptForward, torch.Tensor] | None:
        """The mini-batch's distinct prompts run once, and each row's index among them (``[B]``,
        -1 outside ``mini``); ``None`` where the update must score full rows instead."""
        cls = type(self)
        if not (self.config.share_prompt_forward and self.accelerator.num_processes == 1
                and (cls.policy_logprobs is RLTrainer.policy_logprobs or cls.policy_logprobs_shares_prompts)
                and cls.response_logits is RLTrainer.response_logits):
            return None
        r = batch.rollout
        start = _first_prompt_column(r.prompt_mask[mini])
        ids, mask = r.prompt_ids[mini, start:], r.prompt_mask[mini, start:]
        prompts, index = torch.unique(torch.cat([ids * mask, mask], 1), dim=0, return_inverse=True)
        first = torch.full((len(prompts),), len(mini), dtype=torch.long).scatter_reduce(
            0, index, torch.arange(len(mini)), "amin")
        device = self.accelerator.device
        shared = shared_prompt_forward(self.model, r.prompt_ids[mini[first], start:].to(device),
                                       r.prompt_mask[mini[first], start:].to(device))
        if shared is None:
            return None
        slot = torch.full((len(r.lengths),), -1, dtype=torch.long)
        slot[mini] = index
        return shared, slot

    def _micro_step(self, batch: StepBatch, rows: torch.Tensor, n_tokens: float, n_seqs: float, world: int,
                    totals: dict[str, float], shared: tuple[SharedPromptForward, torch.Tensor] | None = None) -> None:
        """Forward and backward of one micro-batch, weighted by its share of the mini-batch."""
        cfg = self.config
        micro: dict[str, Any] = self._rows(batch, rows)
        if shared is not None:
            micro["shared_prompt"], micro["prompt_index"] = shared[0], shared[1][rows].to(self.accelerator.device)
        with self._autocast():
            logprobs, entropy = self.policy_logprobs(self.model, micro, with_entropy=True)
        old = micro.get("old_logprobs", logprobs.detach())
        inputs = {"logprobs": logprobs, "old_logprobs": old, "advantages": micro["advantages"],
                  "response_mask": micro["response_mask"], "entropy": entropy, "clip_low": cfg.clip_low,
                  "clip_high": cfg.clip_high, "dual_clip": cfg.dual_clip, "agg": cfg.loss_agg,
                  "max_len": cfg.max_new_tokens}
        loss, metrics = call_with_inputs(get_loss(cfg.loss), inputs, cfg.loss_kwargs)
        kl_value = torch.zeros(())
        if cfg.kl_coef > 0:
            kl = kl_penalty(logprobs, micro["ref_logprobs"], cfg.kl_kind)
            kl_value = aggregate_loss(kl, micro["response_mask"], cfg.loss_agg, cfg.max_new_tokens)
            loss = loss + cfg.kl_coef * kl_value
        # weight micro losses so the mini-batch loss equals the full-batch aggregate
        share = float(micro["response_mask"].sum()) / n_tokens if cfg.loss_agg == "token-mean" else len(rows) / n_seqs
        self.accelerator.backward(loss * (share * world))
        totals["loss"] += float(loss.detach()) * share
        totals["clip_frac"] += float(metrics["clip_frac"]) * share
        totals["approx_kl"] += float(metrics["approx_kl"]) * share
        totals["kl"] += float(kl_value.detach()) * share
        totals["entropy"] += float((entropy * micro["response_mask"]).sum()) / n_tokens

    def step(self) -> dict[str, float]:
        """One rollout step + update; returns the logged metrics."""
        cfg = self.config
        t0 = time.time()
        batch = self.collect(self.step_index)
        self._sync_calls()
        t_rollout = time.time() - t0
        r = batch.rollout
        rewards, correct, lengths, finished = self._all_processes(batch.rewards, batch.correct, r.lengths, r.finished)
        n_resp_tokens = int(lengths.sum())
        metrics: dict[str, float] = {
            "step": self.step_index + 1,
            "reward": float(rewards.mean()) if len(rewards) else float("nan"),
            "accuracy": float(correct.float().mean()) if len(correct) else float("nan"),
            "length_mean": float(lengths.float().mean()) if len(lengths) else float("nan"),
            "length_min": int(lengths.min()) if len(lengths) else 0,
            "length_max": int(lengths.max()) if len(lengths) else 0,
            "truncated": float((~finished).float().mean()) if len(finished) else 0.0,
        }
        if len(lengths):
            t1 = time.time()
            if self.reference is not None:
                self._fill_logprobs(batch, self.reference, "ref_logprobs")
                if self._reference_lockstep is not None:
                    self._reference_lockstep.sync()
                if cfg.kl_in_reward > 0:
                    k1 = kl_penalty(self.model_logprobs(batch), batch.ref_logprobs, "k1")
                    batch.rewards = batch.rewards - cfg.kl_in_reward * (k1 * r.response_mask).sum(1)
            if (cfg.ppo_epochs > 1 or cfg.mini_batches > 1) and batch.old_logprobs is None:
                self._fill_logprobs(batch, self.model, "old_logprobs")  # may exist already (in-reward KL)
            batch.advantages = self.compute_advantages(batch)
            self._sync_calls()
            metrics.update(self.update(batch))
            metrics["update_time"] = time.time() - t1
            metrics["train_tokens_per_s"] = (n_resp_tokens * cfg.ppo_epochs) / max(1e-9, metrics["update_time"])
        metrics.update(self._mean_over_processes(batch.info))  # method extras, including those set in compute_advantages
        metrics["rollout_time"] = t_rollout
        metrics["rollout_tokens_per_s"] = n_resp_tokens / max(1e-9, t_rollout)
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        # padding forward calls of all processes since the last step, of the policy and the reference
        locksteps = {"lockstep_padding": self._lockstep, "reference_padding": self._reference_lockstep}
        padded = {key: float(x.take_padded()) for key, x in locksteps.items() if x is not None}
        if padded:  # under FSDP only
            metrics.update(zip(padded, self._sum_over_processes(list(padded.values()))))
        metrics["step_time"] = time.time() - t0
        self.step_index += 1
        return metrics

    def model_logprobs(self, batch: StepBatch) -> torch.Tensor:
        """Current-policy log-probs of the whole rollout (no grad), for the in-reward KL."""
        if batch.old_logprobs is None:
            self._fill_logprobs(batch, self.model, "old_logprobs")
        return batch.old_logprobs

    def card(self, evaluation: dict[str, Any] | None = None) -> CardInfo:
        """What the model card of a model saved now says: method, config, steps done, start model."""
        model = self.accelerator.unwrap_model(self.model)
        return CardInfo(self.config.method, asdict(self.config), self.step_index, started_from(model), evaluation,
                        tags=("reinforcement-learning",))

    def train(self, resume: bool = False, show_progress: bool = True) -> dict[str, Any]:
        """Run ``config.steps`` steps (when ``resume``, from the newest intact checkpoint if any,
        see :func:`~thinklean.train.checkpoint.find_checkpoint`)."""
        cfg = self.config
        processes, main = self.accelerator.num_processes, self.accelerator.is_main_process
        evaluates = main or self.fsdp  # under FSDP every process evaluates (its forward calls are collectives)
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            raise ValueError("RL training runs with DDP or FSDP (configs/accelerate/ddp.yaml, fsdp.yaml), not DeepSpeed")
        if min(cfg.prompts_per_step, len(self.train_examples)) < processes:
            raise ValueError(f"prompts_per_step={cfg.prompts_per_step} with {len(self.train_examples)} training "
                             f"examples is fewer prompts than the {processes} processes (each rolls out whole prompts)")
        start = 0
        if resume and (ckpt := find_checkpoint(self.run_dir)) is not None:
            restore_training_state(ckpt, self.model, self.optimizer, self.scheduler, sharded=self.fsdp)
            start = ckpt.step
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if main:
            (self.run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
        self.step_index = start
        self.on_train_start(resume)
        with warnings.catch_warnings():  # torch 2.13 renamed DDP's broadcast_buffers; accelerate passes the old name
            warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)
            if not self.fsdp:  # sharded in __init__
                self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        log = MetricsLog(self.run_dir / "metrics.jsonl", truncate_after_step=start if resume else None,
                         accelerator=self.accelerator, config=asdict(cfg)) if main else None
        prompts_per_epoch = max(1, len(self.train_examples) // cfg.prompts_per_step)
        final_eval: dict[str, Any] | None = None
        with progress_bar(disable=not show_progress or not main) as bar:
            task = bar.add_task(cfg.method, total=cfg.steps, completed=start, info="")
            while self.step_index < cfg.steps:
                metrics = self.step()
                done = self.step_index
                if cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.steps) and self.eval_examples and evaluates:
                    # the last one is the final model's evaluation: saved so callers need not repeat it
                    summary = self.evaluate(output=self.run_dir / "eval.json" if done == cfg.steps and main else None)
                    self._sync_calls()
                    final_eval = summary if done == cfg.steps else None
                    metrics["eval_accuracy"] = summary["accuracy"]
                    metrics["eval_length_mean"] = summary["mean_response_tokens"]
                if log is not None:
                    log.write(metrics)
                self.on_step_end(done, metrics)
                if done % prompts_per_epoch == 0:
                    self.on_epoch_end(done // prompts_per_epoch)
                saving = (cfg.save_every and done % cfg.save_every == 0) or done == cfg.steps
                if saving and self.fsdp:
                    save_sharded_checkpoint(self.run_dir, done, self.model, self.optimizer, self.scheduler,
                                            {"config": asdict(cfg)}, cfg.keep_last)
                elif saving and main:
                    save_checkpoint(self.run_dir, done, self.accelerator.unwrap_model(self.model), self.tokenizer,
                                    self.optimizer, self.scheduler, {"config": asdict(cfg)}, cfg.keep_last,
                                    card=self.card(final_eval))
                bar.update(task, advance=1, info=f"reward {metrics['reward']:.2f} acc {metrics['accuracy']:.2f} len {metrics['length_mean']:.0f}")
        final = self.run_dir / "model"
        weights = full_state_dict(self.model) if self.fsdp else None  # consolidated on the main process
        if main:
            save_pretrained(self.accelerator.unwrap_model(self.model), self.tokenizer, final, card=self.card(final_eval),
                            state_dict=weights)
            self.on_train_end(final)
            log.close(self.step_index, final_eval)
        self.accelerator.wait_for_everyone()
        return {"steps": self.step_index, "model": str(final)}
