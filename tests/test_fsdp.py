"""`accelerate launch` with 2 CPU processes under FSDP (FSDP2 ``fully_shard`` over gloo) trains like
one process on the same rollouts, for every method family; sharded checkpoints resume."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_ddp import ENV, HGPOShardReplay, ShardReplay, _ddp_against_one_process, _launch, _save_base_model

from thinklean.methods.bupo import BuPOTrainer
from thinklean.methods.iapo import IAPOTrainer
from thinklean.train.monitor import read_metrics

FSDP_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "fsdp.yaml"
# weights within 1e-5, but for Adam's near-zero-gradient entries (at most 0.1%; see _ddp_against_one_process)
WEIGHTS = {"atol": 1e-5, "outliers": 1e-3}
# small decode chunks and micro-batches: the processes make different numbers of forward calls
UNEVEN = ["--set", "rollout_batch_size=3", "--set", "micro_batch_tokens=60"]


@pytest.mark.slow
def test_two_process_fsdp_grpo_matches_one_process(tmp_path, tiny_tokenizer):
    # rollouts of different lengths per process: the shorter one pads its forward calls
    metrics = _ddp_against_one_process(tmp_path, tiny_tokenizer, "grpo", ShardReplay, ["--reward", "kimi", *UNEVEN], (),
                                       config_file=FSDP_CONFIG, **WEIGHTS)
    assert sum(m["lockstep_padding"] for m in metrics) > 0  # the comparison covered padded calls


@pytest.mark.slow
def test_two_process_fsdp_with_hmpo_kl_settings_matches_one_process(tmp_path, tiny_tokenizer):
    # HMPO's optimisation settings: KL in the loss and in the reward, so the frozen reference and
    # the current policy score the rollouts (more forward calls to pad). HMPO's own reward needs
    # correct answers, which the random model never gives: kimi's length reward drives the update.
    settings = ["kl_coef=0.001", "kl_in_reward=0.001", "clip_high=0.28", "dual_clip=10.0"]
    _ddp_against_one_process(tmp_path, tiny_tokenizer, "grpo", ShardReplay,
                             ["--reward", "kimi", *UNEVEN, *(x for kv in settings for x in ("--set", kv))], ("kl",),
                             config_file=FSDP_CONFIG, **WEIGHTS)


@pytest.mark.slow
def test_two_process_fsdp_hgpo_matches_one_process(tmp_path, tiny_tokenizer):
    # forced modes, and the tag-mass auxiliary loss: one more forward and backward per mini-batch
    _ddp_against_one_process(tmp_path, tiny_tokenizer, "hgpo", HGPOShardReplay, UNEVEN, ("auxiliary_loss",),
                             config_file=FSDP_CONFIG, **WEIGHTS)


class IAPOShardReplay(ShardReplay, IAPOTrainer):
    """:class:`ShardReplay` with IAPO's early-exit probe."""


class BuPOShardReplay(ShardReplay, BuPOTrainer):
    """:class:`ShardReplay` with BuPO's internal-layer policy."""


@pytest.mark.slow
def test_two_process_fsdp_iapo_matches_one_process(tmp_path, tiny_tokenizer):
    # the early-exit probe makes a data-dependent number of cached forward calls per process
    _ddp_against_one_process(tmp_path, tiny_tokenizer, "iapo", IAPOShardReplay,
                             [*UNEVEN, "--set", "method_kwargs={chunk_size: 2, max_batch_tokens: 64}"], ("answer_entropy",),
                             config_file=FSDP_CONFIG, **WEIGHTS)


@pytest.mark.slow
def test_two_process_fsdp_bupo_matches_one_process(tmp_path, tiny_tokenizer):
    # step 1 optimises the internal policy of layer 1 (of 2), whose loss leaves layer 2 without a
    # gradient; step 2 the whole model
    _ddp_against_one_process(tmp_path, tiny_tokenizer, "bupo", BuPOShardReplay,
                             ["--reward", "kimi", *UNEVEN, "--set", "method_kwargs={layer: 1, s_inter: 1}"], ("ipa_phase",),
                             config_file=FSDP_CONFIG, **WEIGHTS)


@pytest.mark.slow
def test_fsdp_resume_from_a_sharded_checkpoint_continues_the_run(tmp_path, tiny_tokenizer):
    # checkpoints every step hold the shards of the model and of Adam's moments; resuming from
    # step 1 must repeat steps 2 and 3 of the uninterrupted run (same number of processes)
    _save_base_model(tiny_tokenizer, tmp_path / "base")
    run = tmp_path / "run"
    command = [*_launch(FSDP_CONFIG), "-m", "thinklean.cli", "train", "--model", str(tmp_path / "base"), "--method",
               "grpo", "--reward", "kimi", *UNEVEN, "--steps", "3", "--prompts-per-step", "4", "--samples-per-prompt",
               "4", "--max-new-tokens", "12", "--set", "train_problems=16", "--set", "save_every=1", "--set",
               "keep_last=3", "--set", "lr=1e-3", "--output", str(run)]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    full = read_metrics(run / "metrics.jsonl")
    step1 = run / "checkpoints" / "step-00000001"
    assert (step1 / "sharded").is_dir() and not (step1 / "model").exists()
    final = load_file(run / "model" / "model.safetensors")  # consolidated
    assert final.keys() == load_file(tmp_path / "base" / "model.safetensors").keys()

    (run / "checkpoints" / "latest").write_text("step-00000001")  # as if killed after step 1
    done = subprocess.run([*command, "--resume"], env=ENV, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = read_metrics(run / "metrics.jsonl")
    assert [m["step"] for m in resumed] == [1, 2, 3]
    for key in ("loss", "reward", "length_mean", "grad_norm"):
        assert [m[key] for m in resumed[1:]] == pytest.approx([m[key] for m in full[1:]], rel=1e-6), key
    again = load_file(run / "model" / "model.safetensors")
    for name, value in final.items():
        assert torch.allclose(again[name], value, atol=1e-6), name


@pytest.mark.slow
def test_two_process_fsdp_sft_matches_one_process(tmp_path, tiny_tokenizer):
    _save_base_model(tiny_tokenizer, tmp_path / "base")
    args = ["-m", "thinklean.cli", "sft", "--model", str(tmp_path / "base"), "--data", "arith", "--n", "32", "--steps",
            "2", "--batch-size", "4", "--grad-accum", "2", "--lr", "1e-3", "--save-every", "0", "--output"]
    for command in ([*_launch(FSDP_CONFIG), *args, str(tmp_path / "fsdp")], [sys.executable, *args, str(tmp_path / "one")]):
        done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=240, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
    sharded, one = read_metrics(tmp_path / "fsdp" / "metrics.jsonl"), read_metrics(tmp_path / "one" / "metrics.jsonl")
    assert len(sharded) == len(one) == 1  # the last step's line, from the main process only
    for a, b in zip(sharded, one):
        for key in ("loss", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key
    trained, reference = (load_file(tmp_path / run / "model" / "model.safetensors") for run in ("fsdp", "one"))
    assert trained.keys() == reference.keys()
    for name, value in reference.items():
        assert (trained[name] - value).abs().max() < 1e-5, name
