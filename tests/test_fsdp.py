"""`accelerate launch` with 2 CPU processes under FSDP (FSDP2 ``fully_shard`` over gloo) trains like
one process on the same rollouts, for every method family; sharded checkpoints resume."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_ddp import HGPOShardReplay, ShardReplay, _ddp_against_one_process

FSDP_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "fsdp.yaml"
# small decode chunks and micro-batches: the processes make different numbers of forward calls
UNEVEN = ["--set", "rollout_batch_size=3", "--set", "micro_batch_tokens=60"]


@pytest.mark.slow
def test_two_process_fsdp_grpo_matches_one_process(tmp_path, tiny_tokenizer):
    # rollouts of different lengths per process: the shorter one pads its forward calls
    metrics = _ddp_against_one_process(tmp_path, tiny_tokenizer, "grpo", ShardReplay, ["--reward", "kimi", *UNEVEN], (),
                                       config_file=FSDP_CONFIG)
    assert sum(m["lockstep_padding"] for m in metrics) > 0  # the comparison covered padded calls


@pytest.mark.slow
def test_two_process_fsdp_with_hmpo_kl_settings_matches_one_process(tmp_path, tiny_tokenizer):
    # HMPO's optimisation settings: KL in the loss and in the reward, so the frozen reference and
    # the current policy score the rollouts (more forward calls to pad). HMPO's own reward needs
    # correct answers, which the random model never gives: kimi's length reward drives the update.
    settings = ["kl_coef=0.001", "kl_in_reward=0.001", "clip_high=0.28", "dual_clip=10.0"]
    _ddp_against_one_process(tmp_path, tiny_tokenizer, "grpo", ShardReplay,
                             ["--reward", "kimi", *UNEVEN, *(x for kv in settings for x in ("--set", kv))], ("kl",),
                             config_file=FSDP_CONFIG)


@pytest.mark.slow
def test_two_process_fsdp_hgpo_matches_one_process(tmp_path, tiny_tokenizer):
    # forced modes, and the tag-mass auxiliary loss: one more forward and backward per mini-batch
    _ddp_against_one_process(tmp_path, tiny_tokenizer, "hgpo", HGPOShardReplay, UNEVEN, ("auxiliary_loss",),
                             config_file=FSDP_CONFIG)
