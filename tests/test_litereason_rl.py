"""LiteReason RL: discrete tokens are the only actions, the projector is frozen in RL and refreshed per pass."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence

import pytest
import torch

from thinklean.cli import main
from thinklean.core.rewards import kimi_reward
from thinklean.data.arith import generate_problems, solution_text
from thinklean.data.formats import EOS, LATENT, LATENT_END
from thinklean.data.jsonl import Example
from thinklean.data.litereason import INSTRUCTION
from thinklean.methods import get_trainer_class
from thinklean.eval.latent_probe import PROBE_KEYS
from thinklean.methods.litereason import LiteReasonTrainer
from thinklean.models.projector import ReasoningProjector
from thinklean.models.tiny import build_model
from thinklean.rollout import RolloutBatch
from thinklean.runlog import read_metrics
from thinklean.methods.config import ConfigError, load_config
from thinklean.train.rl import RLConfig, RLTrainer

PROBLEMS = generate_problems(4, "train", 0)
EXAMPLES = [Example(prompt=p.question, answer=str(p.answer), difficulty=p.difficulty) for p in PROBLEMS]
pytestmark = pytest.mark.filterwarnings("ignore:LiteReason. no trained projector")
SEGMENT = f"<think> {LATENT}5{LATENT_END}"  # 5 tokens with the embedded tokenizer, then 5 latent steps


class ForcedSegmentTrainer(LiteReasonTrainer):
    """Every rollout opens with a forced latent segment (a random tiny model never writes one)."""

    def build_prompts(self, examples: Sequence[Example]) -> tuple[list[str], list[str]]:
        prompts, _ = super().build_prompts(examples)
        return prompts, [SEGMENT] * (len(prompts) * self.config.samples_per_prompt)


class AlternatingRewardTrainer(ForcedSegmentTrainer):
    """Rewards 0, 1, 0, 1, ... so that advantages, hence LM gradients, are not zero."""

    def compute_rewards(self, batch: RolloutBatch, examples: Sequence[Example],
                        correct: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        return torch.arange(len(batch.lengths)).remainder(2).float(), {}


class RefreshPoolTrainer(AlternatingRewardTrainer):
    """Every other rollout counts as correct and its text becomes a real worked solution, so a
    pass ends with a pool the projector refresh can convert (a random model never solves one)."""

    TRACE = solution_text(PROBLEMS[0], "full", random.Random(0))

    def on_rollout(self, step: int, step_batch) -> None:
        step_batch.correct = torch.arange(len(step_batch.correct)).remainder(2) == 0
        step_batch.rollout.texts[:] = [self.TRACE] * len(step_batch.rollout.texts)
        super().on_rollout(step, step_batch)


def config(**kw) -> RLConfig:
    base = dict(method="litereason", prompts_per_step=2, samples_per_prompt=2, max_new_tokens=8, steps=1,
                save_every=0, lr=1e-3)
    return RLConfig(**{**base, **kw})


def forbid_eos(model, tokenizer) -> torch.utils.hooks.RemovableHandle:
    """The model never writes EOS, so every row has exactly max_new_tokens discrete tokens."""
    bias = torch.zeros(model.config.vocab_size)
    bias[tokenizer.convert_tokens_to_ids(EOS)] = -1e4
    return model.lm_head.register_forward_hook(lambda module, args, out: out + bias.to(out.dtype))


@pytest.fixture()
def no_eos(tiny_model, tiny_tokenizer):
    handle = forbid_eos(tiny_model, tiny_tokenizer)
    yield
    handle.remove()


def randomise(projector: ReasoningProjector, seed: int = 0) -> None:
    """Random weights of embedding scale: copies of a fresh tiny MLP shrink every vector to
    ~1e-8, so latents would barely matter and Adam's steps would vanish under its epsilon."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in projector.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.12)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_litereason_is_registered_with_its_config():
    assert get_trainer_class("litereason") is LiteReasonTrainer
    cfg = load_config("litereason")
    assert (cfg.advantage, cfg.kl_coef, cfg.samples_per_prompt) == ("grpo", 0.0, 16)
    assert cfg.method_kwargs == {"refresh_fraction": 0.1, "refresh_lr": 1e-4}


def test_bad_settings_fail_before_any_work(tmp_path, tiny_model, tiny_tokenizer):
    with pytest.raises(ConfigError, match="refresh_fractoin"):
        LiteReasonTrainer(tiny_model, tiny_tokenizer, config(method_kwargs={"refresh_fractoin": 0.2}), EXAMPLES,
                          tmp_path)
    with pytest.raises(ConfigError, match="keep_shortest"):
        LiteReasonTrainer(tiny_model, tiny_tokenizer, config(keep_shortest=1), EXAMPLES, tmp_path)
    with pytest.raises(FileNotFoundError, match="projector.json"):
        LiteReasonTrainer(tiny_model, tiny_tokenizer, config(method_kwargs={"projector": str(tmp_path)}), EXAMPLES,
                          tmp_path)


def test_prompts_carry_the_instruction(tmp_path, tiny_model, tiny_tokenizer):
    with pytest.warns(UserWarning, match="no trained projector"):
        trainer = LiteReasonTrainer(tiny_model, tiny_tokenizer, config(), EXAMPLES, tmp_path)
    prompts, prefixes = trainer.build_prompts(EXAMPLES[:1])
    assert prompts == [f"{EXAMPLES[0].prompt} {INSTRUCTION}\n"] and prefixes is None


def test_an_rl_step_updates_the_lm_and_never_the_projector(tmp_path, tiny_model, tiny_tokenizer, no_eos):
    trainer = AlternatingRewardTrainer(tiny_model, tiny_tokenizer, config(), EXAMPLES, tmp_path)
    lm_before, projector_before = snapshot(tiny_model), snapshot(trainer.projector)
    metrics = trainer.step()
    assert metrics["latent_steps_mean"] == 5 and metrics["latent_rows"] == 1.0
    assert metrics["grad_norm"] > 0
    assert any(not torch.equal(v, lm_before[k]) for k, v in tiny_model.state_dict().items())
    assert all(torch.equal(v, projector_before[k]) for k, v in trainer.projector.state_dict().items())
    assert all(p.grad is None and not p.requires_grad for p in trainer.projector.parameters())


def test_rollout_steps_log_the_latent_probe_at_the_first_every_nth_and_last_step(tmp_path, tiny_model,
                                                                                 tiny_tokenizer):
    trainer = ForcedSegmentTrainer(tiny_model, tiny_tokenizer, config(steps=4, method_kwargs={"probe_every": 3}),
                                   EXAMPLES, tmp_path)
    probed = [step + 1 for step in range(4) if "probe_swap_kl" in trainer.collect(step).info]
    assert probed == [1, 3, 4]
    info = trainer.collect(0).info
    assert set(PROBE_KEYS) <= set(info) and info["probe_latent_norm"] == pytest.approx(info["probe_embedding_norm"])
    with pytest.raises(ConfigError, match="probe_every"):
        LiteReasonTrainer(tiny_model, tiny_tokenizer, config(method_kwargs={"probe_every": -1}), EXAMPLES, tmp_path)


def test_lengths_masks_and_length_rewards_count_discrete_tokens_only(tmp_path, tiny_model, tiny_tokenizer, no_eos):
    trainer = ForcedSegmentTrainer(tiny_model, tiny_tokenizer, config(reward="kimi"), EXAMPLES, tmp_path)
    batch = trainer.collect(0)
    r = batch.rollout
    # 8 discrete tokens per row (5 forced + 3 sampled) although every row also ran 5 latent steps
    assert r.lengths.tolist() == [8, 8, 8, 8] and r.response_mask.sum(1).tolist() == [8, 8, 8, 8]
    assert r.response_ids.shape == (4, 8) and r.latent_steps.tolist() == [5, 5, 5, 5]
    assert r.latent_segments == [[(5, 5)]] * 4
    assert torch.equal(batch.rewards, kimi_reward(batch.correct, torch.tensor([8, 8, 8, 8]), r.group_ids))


def test_training_logprobs_replay_the_rollouts_latent_steps(tmp_path, tiny_model, tiny_tokenizer, no_eos):
    trainer = ForcedSegmentTrainer(tiny_model, tiny_tokenizer, config(max_new_tokens=10), EXAMPLES, tmp_path)
    randomise(trainer.projector)
    batch = trainer.collect(0)
    rows = trainer._rows(batch, torch.arange(4))
    assert [v.shape for v in rows["latent_inputs"]] == [(5, 64)] * 4
    randomise(trainer.projector, seed=1)  # the update feeds the recorded latent inputs, not the projector's
    with torch.no_grad():
        logprobs, entropy = trainer.policy_logprobs(tiny_model, rows, with_entropy=True)
        plain, _ = RLTrainer.policy_logprobs(trainer, tiny_model, rows)  # the same tokens without latent steps
    mask = batch.rollout.response_mask.bool()
    torch.testing.assert_close(logprobs[mask], batch.rollout.logprobs[mask], atol=1e-4, rtol=0)
    assert (plain[:, 5] - logprobs[:, 5]).abs().max() > 1e-3  # the first token after the latent steps differs
    assert entropy.shape == (4, 10)


def test_the_update_on_shared_prompts_gives_the_full_row_gradient(tmp_path, tiny_tokenizer):
    """Each distinct prompt run once, the responses with their recorded latent steps on its cache:
    the loss and gradient of scoring every prompt + latent response row in full."""
    results = []
    for share in (False, True):
        model = build_model(tiny_tokenizer, seed=0, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=4, intermediate_size=128)
        forbid_eos(model, tiny_tokenizer)
        trainer = AlternatingRewardTrainer(model, tiny_tokenizer, config(share_prompt_forward=share, micro_batch_size=3,
                                                                       samples_per_prompt=3),
                                           EXAMPLES, tmp_path / str(share))
        randomise(trainer.projector)
        grads, passes = [], []
        trainer.optimizer.register_step_pre_hook(lambda *a: grads.extend(p.grad.clone() for p in model.parameters()))
        share_prompts = trainer._share_prompts

        def recorded(*args, share_prompts=share_prompts, passes=passes):
            shared = share_prompts(*args)
            passes.append(shared is not None)
            return shared

        trainer._share_prompts = recorded
        metrics = trainer.step()
        results.append((metrics, grads, passes))
    (m_full, g_full, _), (m_shared, g_shared, shared_used) = results
    assert shared_used == [True]
    assert m_shared["latent_steps_mean"] == 5
    assert m_full["loss"] == pytest.approx(m_shared["loss"], abs=1e-6)
    assert m_full["entropy"] == pytest.approx(m_shared["entropy"], rel=1e-5)
    assert len(g_full) == len(g_shared) > 0
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(g_full, g_shared))
    assert sum(float(g.abs().sum()) for g in g_shared) > 0


def test_the_refresh_trains_the_projector_on_a_tenth_of_the_passs_correct_rollouts(tmp_path, tiny_model,
                                                                                    tiny_tokenizer):
    trainer = LiteReasonTrainer(tiny_model, tiny_tokenizer, config(), EXAMPLES, tmp_path)
    randomise(trainer.projector)
    problems = generate_problems(20, "train", 1)
    trainer.correct_rollouts = [(0, Example(prompt=p.question, answer=str(p.answer)),
                                 solution_text(p, "full", random.Random(i))) for i, p in enumerate(problems)]
    lm_before, projector_before = snapshot(tiny_model), snapshot(trainer.projector)
    trainer.on_epoch_end(1)

    record = json.loads((tmp_path / "projector_refresh.jsonl").read_text())
    # 10% of 20 correct rollouts = 2, each converted at both ratios: 4 rows, one step of batch 16
    assert {k: record[k] for k in ("epoch", "correct_rollouts", "rows", "steps")} == \
        {"epoch": 1, "correct_rollouts": 20, "rows": 4, "steps": 1}
    assert all(torch.equal(v, lm_before[k]) for k, v in tiny_model.state_dict().items())
    assert any(not torch.equal(v, projector_before[k]) for k, v in trainer.projector.state_dict().items())
    assert not any(p.requires_grad for p in trainer.projector.parameters())
    assert all(p.requires_grad for p in tiny_model.parameters())
    saved = ReasoningProjector.load(tmp_path / "projector")
    assert all(torch.equal(v, saved.state_dict()[k]) for k, v in trainer.projector.state_dict().items())
    assert trainer.correct_rollouts == []


def test_evaluate_decodes_with_latent_steps(tmp_path, tiny_model, tiny_tokenizer):
    trainer = LiteReasonTrainer(tiny_model, tiny_tokenizer, config(), EXAMPLES, tmp_path, eval_examples=EXAMPLES)
    summary = trainer.evaluate(2)
    assert {"accuracy", "mean_response_tokens", "latent_steps_mean", "latent_rows", "per_difficulty"} <= set(summary)
    assert summary["n"] == 2 and 0 < summary["mean_response_tokens"] <= 8
    assert sum(d["n"] for d in summary["per_difficulty"].values()) == 2
    # sampled evaluation (the demo's eval_temperature 1.0) is seeded: the same twice
    trainer.config.eval_temperature = 1.0
    assert trainer.evaluate(2) == trainer.evaluate(2)


def test_train_command_runs_litereason_end_to_end(tmp_path, tiny_model, tiny_model_dir):
    # A projector in the model directory is picked up, stays frozen in RL, and lands next to the final model.
    projector = ReasoningProjector.from_model(tiny_model)
    with torch.no_grad():
        projector.blocks[0].up_proj.weight.mul_(2.0)
    projector.save(tiny_model_dir)
    out = tmp_path / "run"
    code = main(["train", "--method", "litereason", "--model", str(tiny_model_dir), "--steps", "2",
                 "--prompts-per-step", "2", "--samples-per-prompt", "2", "--max-new-tokens", "8",
                 "--set", "train_problems=8", "--reward", "hmpo", "--output", str(out)])
    assert code == 0
    metrics = read_metrics(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    assert all("latent_steps_mean" in m and m["length_mean"] <= 8 for m in metrics)
    final = ReasoningProjector.load(out / "model")
    assert all(torch.equal(v, final.state_dict()[k]) for k, v in projector.state_dict().items())
    assert json.loads((out / "config.json").read_text())["reward"] == "hmpo"


def test_two_processes_roll_out_with_different_seeds(tmp_path, tiny_model, tiny_tokenizer, monkeypatch):
    # LiteReason's latent rollout takes its seed from RLTrainer.rollout_seed, which adds the
    # process index: under DDP each process samples its own rollouts (process 0 keeps the
    # single-process seed).
    import thinklean.methods.litereason as litereason

    trainer = LiteReasonTrainer(tiny_model, tiny_tokenizer, config(seed=5), EXAMPLES, tmp_path)
    seeds = []
    monkeypatch.setattr(litereason, "generate_latent", lambda *args: seeds.append(args[6].initial_seed()))
    for index in (0, 1):
        monkeypatch.setattr(type(trainer.accelerator), "process_index", property(lambda self, i=index: i))
        trainer.rollout(EXAMPLES[:1], step=3)
    assert seeds[0] == 5 * 1_000_003 + 3 * 101 == trainer.rollout_seed(3, process_index=0)
    assert seeds[1] == trainer.rollout_seed(3, process_index=1) != seeds[0]
