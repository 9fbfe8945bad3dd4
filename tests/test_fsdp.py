"""`accelerate launch` with 2 CPU processes under FSDP (FSDP2 ``fully_shard`` over gloo) trains like
one process on the same rollouts, for every method family; sharded checkpoints resume."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_ddp import (DDP_CONFIG, ENV, HGPOShardReplay, ShardReplay, _ddp_against_one_process, _launch,
                      _save_base_model)
from test_litereason_rl import AlternatingRewardTrainer, RefreshPoolTrainer

from thinklean.methods.bupo import BuPOTrainer
from thinklean.eval.evaluate import arith_examples
from thinklean.methods.iapo import IAPOTrainer
from thinklean.data.arith import generate_problems
from thinklean.data.formats import LATENT, LATENT_END
from thinklean.data.jsonl import write_jsonl
from thinklean.data.litereason import litereason_prompt
from thinklean.eval.latent_probe import PROBE_KEYS
from thinklean.models.projector import ReasoningProjector
from thinklean.models.tiny import load_pretrained
from thinklean.rollout.latent import LatentRolloutBatch, generate_latent
from thinklean.runlog import read_metrics
from thinklean.train.rl import RLConfig, concat_rollouts

FSDP_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "fsdp.yaml"
# weights within 1e-5, but for Adam's near-zero-gradient entries (at most 0.1%; see _ddp_against_one_process)
WEIGHTS = {"atol": 1e-5, "outliers": 1e-3}
# small decode chunks and micro-batches: the processes make different numbers of forward calls
UNEVEN = ["--set", "rollout_batch_size=3", "--set", "micro_batch_tokens=60"]


def _latent_config(**overrides) -> RLConfig:
    """LiteReason settings of the 2-process tests: small, uneven decode chunks and micro-batches.
    lr 1e-5: at 1e-4, Adam's amplified float noise in near-zero-gradient entries after step 1
    moves step 2's gradient norm by 1.5e-4 (relative), more than the tolerance."""
    settings = dict(method="litereason", steps=2, prompts_per_step=4, samples_per_prompt=2, max_new_tokens=10,
                    train_problems=16, save_every=0, lr=1e-5, rollout_batch_size=3, micro_batch_tokens=60,
                    method_kwargs={"refresh_fraction": 0.0, "probe_every": 0})
    return RLConfig(**{**settings, **overrides})


def _assert_adam_close(trained: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], step: float) -> None:
    """Every tensor of ``reference`` within 1e-5 of ``trained``'s, but for at most 0.1% of its
    entries, each within two Adam ``step``s: where a gradient is near zero, the update (about
    ``step * sign(gradient)``) shows float-order differences between the runs, up to the full
    ``2 * step`` when the sign differs (1.2e-3 at step 1e-3, in 0.04% of one tensor's entries)."""
    for name, value in reference.items():
        if name in trained:
            diff = (trained[name] - value).abs()
            assert float((diff >= 1e-5).float().mean()) <= 1e-3 and float(diff.max()) < 2 * step, name


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
    # The reference is sharded too, with its own lockstep.
    settings = ["kl_coef=0.001", "kl_in_reward=0.001", "clip_high=0.28", "dual_clip=10.0"]
    metrics = _ddp_against_one_process(tmp_path, tiny_tokenizer, "grpo", ShardReplay,
                                       ["--reward", "kimi", *UNEVEN, *(x for kv in settings for x in ("--set", kv))],
                                       ("kl",), config_file=FSDP_CONFIG, **WEIGHTS)
    assert sum(m["reference_padding"] for m in metrics) > 0  # the processes scored unequal numbers of micro-batches


@pytest.mark.slow
@pytest.mark.parametrize("config_file, tolerance", [(DDP_CONFIG, {}), (FSDP_CONFIG, WEIGHTS)], ids=["ddp", "fsdp"])
def test_two_process_training_only_the_mlps_matches_one_process(tmp_path, tiny_tokenizer, config_file, tolerance):
    # frozen and trained parameters side by side (under FSDP in every sharded unit); the frozen ones stay as they were
    _ddp_against_one_process(tmp_path, tiny_tokenizer, "grpo", ShardReplay,
                             ["--reward", "kimi", *UNEVEN, "--set", "train_only=mlp"], (), config_file=config_file,
                             changed="model.layers.0.mlp.up_proj.weight", **tolerance)
    base = load_file(tmp_path / "base" / "model.safetensors")
    trained = load_file(tmp_path / "ddp" / "model" / "model.safetensors")
    assert all(torch.equal(trained[name], value) for name, value in base.items() if ".mlp." not in name)


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
@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="gradient norms of the two-process FSDP run differ from one process's by 2.1e-4 relative at "
                          "step 1 and 3.5e-3 at step 2 (loss and entropy agree) with transformers 5.25.0 and accelerate "
                          "1.16.0; it passed in the CI run of 2026-12-06")
def test_two_process_fsdp_iapo_matches_one_process(tmp_path, tiny_tokenizer):
    # the early-exit probe makes a data-dependent number of cached forward calls per process
    _ddp_against_one_process(tmp_path, tiny_tokenizer, "iapo", IAPOShardReplay,
                             [*UNEVEN, "--set", "method_kwargs={chunk_size: 2, max_batch_tokens: 64}"], ("answer_entropy",),
                             config_file=FSDP_CONFIG, **WEIGHTS)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:BuPO. s_inter")
def test_two_process_fsdp_bupo_matches_one_process(tmp_path, tiny_tokenizer):
    # step 1 optimises the internal policy of layer 1 (of 2), whose loss leaves layer 2 without a
    # gradient; step 2 the whole model
    _ddp_against_one_process(tmp_path, tiny_tokenizer, "bupo", BuPOShardReplay,
                             ["--reward", "kimi", *UNEVEN, "--set", "method_kwargs={layer: 1, s_inter: 1}"], ("ipa_phase",),
                             config_file=FSDP_CONFIG, **WEIGHTS)


@pytest.mark.slow
def test_fsdp_killed_run_resumes_from_a_sharded_checkpoint(tmp_path, tiny_tokenizer):
    # checkpoints every step hold the shards of the model and of Adam's moments: a run killed
    # after its first checkpoint and resumed (same number of processes) repeats the uninterrupted
    # run's next steps, evaluations included
    _save_base_model(tiny_tokenizer, tmp_path / "base")

    def command(run: Path) -> list[str]:
        return [*_launch(FSDP_CONFIG), "-m", "thinklean.cli", "train", "--model", str(tmp_path / "base"), "--method",
                "grpo", "--reward", "kimi", *UNEVEN, "--steps", "4", "--prompts-per-step", "4", "--samples-per-prompt",
                "4", "--max-new-tokens", "12", "--set", "train_problems=16", "--set", "save_every=1", "--set",
                "keep_last=4", "--set", "lr=1e-3", "--set", "eval_every=2", "--set", "eval_problems=2",
                "--output", str(run)]

    done = subprocess.run(command(tmp_path / "full"), env=ENV, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    full = read_metrics(tmp_path / "full" / "metrics.jsonl")
    step1 = tmp_path / "full" / "checkpoints" / "step-00000001"
    assert (step1 / "sharded").is_dir() and not (step1 / "model").exists()
    final = load_file(tmp_path / "full" / "model" / "model.safetensors")  # consolidated
    assert final.keys() == load_file(tmp_path / "base" / "model.safetensors").keys()

    run = tmp_path / "killed"
    process = subprocess.Popen(command(run), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.time() + 200
    while not (run / "checkpoints" / "latest").is_file() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the launcher and both ranks
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = int((run / "checkpoints" / "latest").read_text().removeprefix("step-"))
    assert killed_at < 4
    done = subprocess.run([*command(run), "--resume"], env=ENV, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = read_metrics(run / "metrics.jsonl")
    assert [m["step"] for m in resumed] == [1, 2, 3, 4]
    for key in ("loss", "reward", "length_mean", "grad_norm"):
        assert [m[key] for m in resumed] == pytest.approx([m[key] for m in full], rel=1e-6), key
    # every process evaluates under FSDP (the forward calls are collectives); the main one logs
    assert [m.get("eval_length_mean") for m in resumed] == [m.get("eval_length_mean") for m in full]
    assert full[1]["eval_length_mean"] > 0 and (tmp_path / "full" / "eval.json").is_file()
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


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:LiteReason. no trained projector")
def test_two_process_fsdp_litereason_sft_with_the_probe_matches_one_process(tmp_path, tiny_tokenizer):
    # projector SFT through the sharded, frozen LM (the projector replicated), with the latent
    # probe's forward calls at every step on every process
    _save_base_model(tiny_tokenizer, tmp_path / "base")
    rows = [{"prompt": litereason_prompt(p.question), "answer": str(p.answer),
             "solution": f"<think> {LATENT}2{LATENT_END} </think> \\boxed{{{p.answer}}}"}
            for p in generate_problems(8, "train", 0)]
    write_jsonl(tmp_path / "rows.jsonl", rows)
    args = ["-m", "thinklean.cli", "litereason-sft", "--model", str(tmp_path / "base"), "--data",
            str(tmp_path / "rows.jsonl"), "--epochs", "2", "--batch-size", "4", "--lr", "1e-2", "--probe-every", "1",
            "--output"]
    for command in ([*_launch(FSDP_CONFIG), *args, str(tmp_path / "fsdp")], [sys.executable, *args, str(tmp_path / "one")]):
        done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=240, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
    sharded, one = read_metrics(tmp_path / "fsdp" / "metrics.jsonl"), read_metrics(tmp_path / "one" / "metrics.jsonl")
    assert len(sharded) == len(one) == 4
    for a, b in zip(sharded, one):
        for key in ("loss", "grad_norm", *PROBE_KEYS):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    trained, reference = (ReasoningProjector.load(tmp_path / run / "model").state_dict() for run in ("fsdp", "one"))
    assert any((trained[k] - v).abs().max() > 1e-3 for k, v in
               ReasoningProjector.from_model(load_pretrained(tmp_path / "base")[0]).state_dict().items())
    _assert_adam_close(trained, reference, step=1e-2)
    base, lm = (load_file(tmp_path / run / "model.safetensors") for run in ("base", "fsdp/model"))
    assert all(torch.equal(lm[k], v) for k, v in base.items() if k in lm)  # the LM stayed frozen


_LITEREASON_RUN = """
import json, sys
sys.path.insert(0, sys.argv[1])
import test_litereason_rl
from thinklean.cli import _end_distributed
from thinklean.eval.evaluate import arith_examples
from thinklean.models.tiny import load_pretrained
from thinklean.train.rl import RLConfig
trainer_class, base, run, settings = sys.argv[2:]
model, tokenizer = load_pretrained(base)
config = RLConfig(**json.loads(settings))
getattr(test_litereason_rl, trainer_class)(model, tokenizer, config,
                                           arith_examples(config.train_problems, "train", config.seed),
                                           run).train(show_progress=False)
_end_distributed()
"""


def _launch_litereason(tmp_path: Path, tokenizer, launch_config: Path, trainer_class: str, config: RLConfig) -> Path:
    """Run ``test_litereason_rl.<trainer_class>`` with 2 processes under ``launch_config`` from a
    fresh tiny base model saved in ``tmp_path/base``; returns the run directory."""
    _save_base_model(tokenizer, tmp_path / "base")
    script = tmp_path / "run.py"
    script.write_text(_LITEREASON_RUN)
    run = tmp_path / "multi"
    done = subprocess.run([*_launch(launch_config), str(script), str(Path(__file__).parent), trainer_class,
                           str(tmp_path / "base"), str(run), json.dumps(asdict(config))],
                          env=ENV, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return run


class LatentShardReplay(ShardReplay, AlternatingRewardTrainer):
    """:class:`ShardReplay` for LiteReason's latent rollouts."""

    def sample_share(self, prompts, prefixes, sampling, generator):
        return generate_latent(self.model, self.tokenizer, self.projector, prompts, self.config.samples_per_prompt,
                               sampling, generator, prefixes)

    def join(self, batches, group_counts):
        joined = concat_rollouts(batches, group_counts)
        return LatentRolloutBatch(**vars(joined), latent_steps=torch.cat([b.latent_steps for b in batches]),
                                  latent_segments=[s for b in batches for s in b.latent_segments],
                                  latent_inputs=[v for b in batches for v in b.latent_inputs])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:LiteReason. no trained projector")
@pytest.mark.parametrize("launch_config", [FSDP_CONFIG, DDP_CONFIG], ids=["fsdp", "ddp"])
def test_two_process_litereason_matches_one_process_sampling_per_process(tmp_path, tiny_tokenizer, launch_config):
    # every rollout opens with a forced latent segment: latent steps feed projector outputs as
    # input embeddings (the embeddings are called outside the model's forward)
    config = _latent_config()
    run = _launch_litereason(tmp_path, tiny_tokenizer, launch_config, "AlternatingRewardTrainer", config)
    model, tokenizer = load_pretrained(tmp_path / "base")
    examples = arith_examples(config.train_problems, "train", config.seed)
    LatentShardReplay(model, tokenizer, config, examples, tmp_path / "one").train(show_progress=False)
    sharded, one = read_metrics(run / "metrics.jsonl"), read_metrics(tmp_path / "one" / "metrics.jsonl")
    assert len(sharded) == len(one) == 2
    for a, b in zip(sharded, one):
        for key in ("reward", "length_mean", "latent_steps_mean"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), key
        for key in ("loss", "entropy", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-7), key
    assert all(m["grad_norm"] > 0 and m["latent_steps_mean"] > 0 for m in sharded)
    _assert_adam_close(load_file(run / "model" / "model.safetensors"), model.state_dict(), config.lr)


class RefreshShardReplay(LatentShardReplay, RefreshPoolTrainer):
    """:class:`LatentShardReplay` whose passes end with a pool for the projector refresh."""


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:LiteReason. no trained projector")
@pytest.mark.parametrize("launch_config", [FSDP_CONFIG, DDP_CONFIG], ids=["fsdp", "ddp"])
def test_two_process_litereason_projector_refresh_matches_one_process(tmp_path, tiny_tokenizer, launch_config):
    # a pass of 2 steps, then the refresh on the correct rollouts of both processes, then a step
    # that rolls out with the refreshed projector; both processes must refresh it identically
    config = _latent_config(steps=3, train_problems=8,
                            method_kwargs={"refresh_fraction": 0.5, "refresh_lr": 1e-3, "probe_every": 0})
    run = _launch_litereason(tmp_path, tiny_tokenizer, launch_config, "RefreshPoolTrainer", config)
    model, tokenizer = load_pretrained(tmp_path / "base")
    one = RefreshShardReplay(model, tokenizer, config, arith_examples(config.train_problems, "train", config.seed),
                             tmp_path / "one")
    start = {k: v.clone() for k, v in one.projector.state_dict().items()}
    one.train(show_progress=False)

    multi_record, one_record = (json.loads((r / "projector_refresh.jsonl").read_text()) for r in (run, tmp_path / "one"))
    # 2 steps x 8 rollouts, half correct: 8 in the pool, half of them converted at both ratios
    assert (multi_record["correct_rollouts"], multi_record["rows"]) == (one_record["correct_rollouts"], one_record["rows"]) == (8, 8)
    assert multi_record["loss"] == pytest.approx(one_record["loss"], rel=1e-5)
    refreshed = ReasoningProjector.load(run / "projector").state_dict()
    assert any((refreshed[k] - v).abs().max() > 1e-4 for k, v in start.items())  # the refresh moved it
    _assert_adam_close(refreshed, one.projector.state_dict(), step=1e-3)  # the refresh's one step of refresh_lr
    multi, single = read_metrics(run / "metrics.jsonl"), read_metrics(tmp_path / "one" / "metrics.jsonl")
    assert multi[-1]["latent_steps_mean"] > 0  # the last step rolled out with the refreshed projector
    for key in ("reward", "length_mean", "latent_steps_mean", "loss"):
        assert multi[-1][key] == pytest.approx(single[-1][key], rel=1e-4, abs=1e-7), key


def test_the_gpu_fsdp_tests_call_tests_that_exist():
    # tests/gpu/test_fsdp_gpu.py reruns these tests on two GPUs and never runs without them:
    # a renamed test here would otherwise surface only on a GPU machine
    source = (Path(__file__).parent / "gpu" / "test_fsdp_gpu.py").read_text()
    used = {node.attr for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "test_fsdp"}
    assert len(used) >= 6 and all(name in globals() for name in used), sorted(used)
