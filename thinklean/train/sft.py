"""Supervised fine-tuning (base model, HFT, projector SFT) on accelerate.

Loss is the mean cross-entropy over response tokens only (prompt and padding are masked, and so
are the tokens of a row's ``masked_spans``: ``[start, end)`` character spans of ``solution``, e.g.
deliberately wrong steps that a later check repairs, which the model should see but not learn).
Batches are length-bucketed (sorted within shuffled pools) so little compute goes to padding.
The data order is a pure function of ``(seed, epoch)``, which together with the saved
optimizer/scheduler/RNG states makes ``resume`` continue bit-for-bit on CPU.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch.distributed.fsdp import FSDPModule
from torch.optim.lr_scheduler import LambdaLR

from thinklean.data.formats import format_prompt
from thinklean.data.jsonl import masked_spans_error
from thinklean.models.card import CardInfo, started_from
from thinklean.models.tiny import save_pretrained
from thinklean.runlog import progress_bar
from thinklean.train.checkpoint import find_checkpoint, restore_training_state, save_checkpoint, save_sharded_checkpoint
from thinklean.train.fsdp import fsdp_requested, full_state_dict, full_value, keep_root_gathered, shard_model
from thinklean.train.monitor import MetricsLog, check_finite
from thinklean.train.trackers import accelerator_kwargs

IGNORE_INDEX = -100


@dataclass
class SFTConfig:
    """Optimisation settings; the defaults build the embedded base model."""

    steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_ratio: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    max_length: int = 512
    seed: int = 0
    bf16: bool = False
    log_every: int = 10
    save_every: int = 0  # 0: only the final checkpoint
    keep_last: int = 2
    report_to: str = "none"  # experiment trackers (thinklean.train.trackers): tensorboard, wandb, mlflow, trackio, all


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of prompt + response (+EOS), how many leading ids are prompt, and the positions
    (indices into ``input_ids``) whose tokens are kept out of the loss."""

    input_ids: tuple[int, ...]
    prompt_len: int
    masked: tuple[int, ...] = ()


def _masked_spans(row: dict, index: int) -> list[tuple[int, int]]:
    """``row["masked_spans"]`` checked: ``[start, end)`` character spans inside ``solution``."""
    spans = row.get("masked_spans") or []
    if (problem := masked_spans_error(spans, row["solution"])) is not None:
        raise ValueError(f"row {index}: {problem}")
    return [(a, b) for a, b in spans]


def encode_rows(tokenizer: Any, rows: Sequence[dict], max_length: int) -> list[EncodedExample]:
    """Tokenise ``{"prompt", "solution"[, "masked_spans"]}`` rows; the response gets EOS; too-long
    rows are cut. A response token that overlaps a masked span is kept out of the loss."""
    out = []
    for index, row in enumerate(rows):
        prompt_ids = tokenizer(format_prompt(row["prompt"], tokenizer), add_special_tokens=False).input_ids
        spans = _masked_spans(row, index)
        encoded = tokenizer(row["solution"], add_special_tokens=False, return_offsets_mapping=bool(spans))
        response_ids = encoded.input_ids + [tokenizer.eos_token_id]
        ids = (prompt_ids + response_ids)[:max_length]
        masked = tuple(
            len(prompt_ids) + t for t, (a, b) in enumerate(encoded["offset_mapping"]) if any(a < e and s < b for s, e in spans)
        ) if spans else ()
        out.append(EncodedExample(tuple(ids), min(len(prompt_ids), len(ids)), tuple(p for p in masked if p < len(ids))))
    return out


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Length-bucketed batches of indices for one epoch, a pure function of (seed, epoch)."""
    rng = random.Random(f"sft-{seed}-{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool = batch_size * 50
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples: Sequence[EncodedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask`` [b, L] and ``labels`` (-100 off-response)."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        ids = torch.tensor(e.input_ids)
        input_ids[i, : len(ids)] = ids
        attention_mask[i, : len(ids)] = 1
        labels[i, e.prompt_len : len(ids)] = ids[e.prompt_len :]
        labels[i, list(e.masked)] = IGNORE_INDEX
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def sft_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over label tokens; returns (loss, number of label tokens)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX
    )
    return loss, int((targets != IGNORE_INDEX).sum())


def warmup_cosine(total_steps: int, warmup_ratio: float, min_lr_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up, then cosine decay to ``min_lr_ratio``."""
    warmup = max(1, int(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, int]]


def train_sft(
    model: torch.nn.Module,
    tokenizer: Any,
    rows: Sequence[dict],
    config: SFTConfig,
    run_dir: str | Path,
    resume: bool = False,
    loss_fn: LossFn = sft_loss,
    parameters: Sequence[torch.nn.Parameter] | None = None,
    show_progress: bool = True,
    method: str = "sft",
    extra_metrics: Callable[[int], Mapping[str, float]] | None = None,
    save: bool = True,
) -> dict[str, Any]:
    """Train ``model`` on ``rows`` for ``config.steps`` optimiser steps; returns a summary.

    ``parameters`` restricts what is optimised (e.g. the LiteReason projector with the LM
    frozen); ``loss_fn`` replaces the plain response-token cross-entropy. ``extra_metrics`` is
    called on every process at every logged step with the step number (1-based) and its items
    join that step's line in ``metrics.jsonl`` (e.g. LiteReason's latent probe). The final model is saved as an HF
    directory in ``RUN_DIR/model`` and every checkpoint under ``RUN_DIR/checkpoints``, each with a
    model card naming ``method`` (``save=False``: neither, only ``metrics.jsonl``; no checkpoints
    when ``parameters`` holds any outside the model).

    Several processes all train on the same batches; under FSDP (configs/accelerate/fsdp.yaml)
    each holds a shard of the model and optimizer state, checkpoints are sharded and the final
    model is consolidated (a model sharded already, e.g. an RL policy, is used as it is).
    Parameters outside the model (a projector) are replicated: every process computes the same
    update from the same batches, so they need no communication.
    """
    run_dir = Path(run_dir)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), **accelerator_kwargs(config.report_to, run_dir))
    examples = encode_rows(tokenizer, rows, config.max_length)
    if not examples:
        raise ValueError("no training rows")
    lengths = [len(e.input_ids) for e in examples]
    fsdp = fsdp_requested(accelerator)
    if fsdp and not isinstance(model, FSDPModule):  # before the optimizer takes the (then sharded) parameters
        shard_model(model, accelerator.device)
    params = list(parameters) if parameters is not None else [p for p in model.parameters() if p.requires_grad]
    own = {id(p) for p in model.parameters()}
    trains_model = any(id(p) in own for p in params)
    # a checkpoint holds the model and its optimizer state: with parameters outside the model it
    # could not resume them, so such a run writes only its final model
    checkpoints = save and all(id(p) in own for p in params)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95))
    if fsdp:
        keep_root_gathered(model, optimizer)
    scheduler = LambdaLR(optimizer, warmup_cosine(config.steps, config.warmup_ratio, config.min_lr_ratio))
    torch.manual_seed(config.seed)
    random.seed(config.seed)

    start_step = 0
    if resume and (ckpt := find_checkpoint(run_dir)) is not None:
        restore_training_state(ckpt, model, optimizer, scheduler, sharded=fsdp)
        start_step = ckpt.step
    if fsdp or not trains_model:  # sharded above, or replicated (DDP refuses a model without trained parameters)
        optimizer = accelerator.prepare(optimizer)
    else:
        model, optimizer = accelerator.prepare(model, optimizer)
    main = accelerator.is_main_process  # the only process that logs
    log = MetricsLog(run_dir / "metrics.jsonl", truncate_after_step=start_step if resume else None,
                     accelerator=accelerator, config=asdict(config)) if main else None
    start_model = started_from(accelerator.unwrap_model(model))

    per_epoch = math.ceil(len(examples) / config.batch_size)
    schedules: dict[int, list[list[int]]] = {}
    micro_per_step = config.grad_accum
    model.train()
    last_loss = float("nan")
    t0 = time.time()
    with progress_bar(disable=not show_progress) as bar:
        task = bar.add_task("sft", total=config.steps, completed=start_step, info="")
        for step in range(start_step, config.steps):
            t_step = time.time()
            step_loss, step_tokens = 0.0, 0
            for micro in range(micro_per_step):
                flat = step * micro_per_step + micro
                epoch, position = divmod(flat, per_epoch)
                if epoch not in schedules:
                    schedules[epoch] = epoch_batches(lengths, config.batch_size, config.seed, epoch)
                batch_idx = schedules[epoch][position]
                batch = {k: v.to(accelerator.device) for k, v in collate([examples[i] for i in batch_idx], tokenizer.pad_token_id).items()}
                with torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=config.bf16):
                    loss, n_tokens = loss_fn(model, batch)
                accelerator.backward(loss / micro_per_step)
                step_loss += loss.item() / micro_per_step
                step_tokens += n_tokens
            grad_norm = accelerator.clip_grad_norm_(params, config.grad_clip) if config.grad_clip > 0 else torch.tensor(0.0)
            grad_norm = full_value(grad_norm)
            check_finite(step + 1, loss=step_loss, grad_norm=float(grad_norm))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            last_loss = step_loss
            done = step + 1
            if done % config.log_every == 0 or done == config.steps:
                # on every process: the extras may run the (sharded) model
                extras = extra_metrics(done) if extra_metrics is not None else {}
                if log is not None:
                    log.write({"step": done, "loss": step_loss, "lr": scheduler.get_last_lr()[0],
                               "grad_norm": float(grad_norm), "tokens": step_tokens,
                               "step_time": time.time() - t_step, **extras})
            saving = checkpoints and ((config.save_every and done % config.save_every == 0) or done == config.steps)
            if saving and fsdp:
                save_sharded_checkpoint(run_dir, done, model, optimizer, scheduler, {"config": asdict(config)},
                                        config.keep_last)
            elif saving and main:
                save_checkpoint(
                    run_dir, done, accelerator.unwrap_model(model), tokenizer, optimizer, scheduler,
                    {"config": asdict(config)}, config.keep_last,
                    card=CardInfo(method, asdict(config), done, start_model, tags=("sft",)),
                )
            bar.update(task, advance=1, info=f"loss {step_loss:.3f}")
    weights = full_state_dict(model) if fsdp and save else None  # consolidated on the main process
    if save and (not fsdp or accelerator.is_main_process):
        save_pretrained(accelerator.unwrap_model(model), tokenizer, run_dir / "model", state_dict=weights,
                        card=CardInfo(method, asdict(config), config.steps, start_model, tags=("sft",)))
    if log is not None:
        log.close(config.steps)
    return {"steps": config.steps, "final_loss": last_loss, "seconds": time.time() - t0, "examples": len(examples)}
