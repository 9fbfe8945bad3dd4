"""FSDP2 for thinklean's own trainers: sharding, lockstep forward calls and sharded checkpoints.

``accelerate launch --config_file configs/accelerate/fsdp.yaml`` sets ``ACCELERATE_USE_FSDP``;
the trainers then shard the model with ``torch.distributed.fsdp.fully_shard`` themselves (every
decoder layer one unit, the root holding embeddings, final norm and head) instead of letting
``accelerator.prepare`` do it: accelerate 1.16 only turns FSDP on for accelerator devices (on
the CPU it silently falls back to DDP), and one code path for CPU/gloo and GPU/NCCL is the one
the 2-process CPU tests check.

Under FSDP every forward and backward of the sharded model is a collective (parameter
all-gathers, gradient reduce-scatters), so all processes must make the same sequence of calls.
Rollouts, early-exit probes and latent steps make a data-dependent number of calls per process;
:class:`Lockstep` runs the calls in rounds, and a process that has run out of real calls makes
padding calls until every process has.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_state_dict)
from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor


def fsdp_requested(accelerator: Accelerator) -> bool:
    """Whether this run shards its model: launched with an FSDP accelerate config and more than one process."""
    if accelerator.num_processes < 2:
        return False
    return (accelerator.distributed_type == DistributedType.FSDP
            or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true")


def shard_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``fully_shard`` every decoder layer (``model.model.layers``) and then the root, in place.

    ``FSDP_OFFLOAD_PARAMS=true`` (accelerate's ``fsdp_offload_params``) keeps the shards and the
    optimizer step on the CPU (only with an accelerator device). Returns ``model``.
    """
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise NotImplementedError(f"FSDP needs a decoder laid out as model.model.layers; {type(model).__name__} is not")
    offload = os.environ.get("FSDP_OFFLOAD_PARAMS", "false").lower() == "true" and device.type != "cpu"
    kwargs: dict[str, Any] = {"offload_policy": CPUOffloadPolicy()} if offload else {}
    model.to(device)
    for layer in layers:
        fully_shard(layer, reshard_after_forward=True, **kwargs)
    fully_shard(model, **kwargs)
    return model


def keep_root_gathered(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Keep the root unit of a :func:`shard_model` model (embeddings, final norm, head) gathered,
    also between forward calls: LiteReason embeds its inputs and BuPO applies the head outside
    the model's forward. Gathered now, and again after every step of ``optimizer`` (none: a
    frozen model such as the KL reference), whose updates reach the shards only (a collective,
    as all processes take the same steps). Costs the root unit's whole size in memory on every
    process."""
    model.set_reshard_after_backward(False, recurse=False)
    model.unshard()
    if optimizer is not None:
        optimizer.register_step_post_hook(lambda *_: _regather(model))


# models inside _root_sharded: a state-dict call may take a (no-op) optimizer step to create
# the optimizer state, after which the root must stay sharded
_STATE_DICT_IN_PROGRESS: set[int] = set()


def _regather(model: torch.nn.Module) -> None:
    if id(model) not in _STATE_DICT_IN_PROGRESS:
        model.reshard()
        model.unshard()


@contextmanager
def _root_sharded(model: torch.nn.Module) -> Iterator[None]:
    """The root unit's sharded parameters registered (for state dicts), gathered again afterwards."""
    model.reshard()
    _STATE_DICT_IN_PROGRESS.add(id(model))
    try:
        yield
    finally:
        _STATE_DICT_IN_PROGRESS.discard(id(model))
        model.unshard()


def full_value(value: torch.Tensor) -> torch.Tensor:
    """A DTensor's whole value (e.g. the gradient norm of sharded parameters); other tensors as they are."""
    return value.full_tensor() if isinstance(value, DTensor) else value


class Lockstep:
    """Keeps the processes' calls of ``module`` in step: every call is one round, in which each
    process either calls ``module`` for real or, once it reached :meth:`sync`, makes a padding call.

    A forward pre-hook makes each real call first vote "still busy" (an all-reduce of 1);
    :meth:`sync` votes 0 and makes ``pad(backward)`` calls (a one-token forward of the same kind
    as the real ones, followed by a zero backward when ``backward``) for as long as some process
    still voted busy. So a process whose rollouts finished feeds padding until the longest rollout
    anywhere is done, and every sharded forward's all-gathers meet their partners. With
    ``backward``, each real forward must be followed by one backward before the next forward (the
    update's micro-steps); every process must reach each :meth:`sync` in the same order.
    """

    def __init__(self, module: torch.nn.Module, pad: Callable[[bool], None], device: torch.device) -> None:
        self.padded = 0  # padding calls made so far
        self._pad = pad
        self._device = device
        self._padding = False
        module.register_forward_pre_hook(self._before_call, prepend=True)  # before FSDP gathers the root

    def _anyone(self, busy: bool) -> bool:
        """Whether any process votes busy this round (a collective)."""
        vote = torch.tensor([int(busy)], dtype=torch.long, device=self._device)
        dist.all_reduce(vote, op=dist.ReduceOp.MAX)
        return bool(vote)

    def _before_call(self, *_: Any) -> None:
        if not self._padding:
            self._anyone(True)

    def sync(self, backward: bool = False) -> int:
        """Pad until every process has reached this point; returns the padding calls made here."""
        made = 0
        while self._anyone(False):
            self._padding = True
            try:
                self._pad(backward)
            finally:
                self._padding = False
            made += 1
        self.padded += made
        return made

    def take_padded(self) -> int:
        """The padding calls made since the last call (and start counting again)."""
        made, self.padded = self.padded, 0
        return made


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on the CPU, on the main process (empty elsewhere); a collective.
    A tied parameter (e.g. the head sharing the embeddings) appears once, under its first name."""
    with _root_sharded(model):
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    names: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(parameter), []).append(name)
    tied = {name for aliases in names.values() for name in aliases[1:]}
    return {name: value for name, value in state.items() if name not in tied}


def save_sharded(target: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Write the model's and optimizer's shards into the directory ``target`` (a collective: every
    process writes its own shards)."""
    with _root_sharded(model):
        model_state, optimizer_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(target))


def load_sharded(target: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load what :func:`save_sharded` wrote into the sharded ``model`` and its ``optimizer``."""
    with _root_sharded(model):
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(state, checkpoint_id=str(target))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
