import torch

from thinklean.data.jsonl import Example
from thinklean.methods.length_baselines import L1Trainer, ThinkPruneTrainer, l1_target, with_length_target
from thinklean.train.rl import RLConfig

PROMPTS = [Example(prompt=f"Start with {i}. Add 2. What is the result?", answer=str(i + 2), difficulty=1) for i in range(1, 5)]


def test_l1_target_is_deterministic_in_range_and_on_the_grid():
    targets = [l1_target(f"q{i}", 0, 16, 160) for i in range(200)]
    assert targets == [l1_target(f"q{i}", 0, 16, 160) for i in range(200)]
    assert all(16 <= t <= 160 and (t - 16) % 8 == 0 for t in targets)
    assert len(set(targets)) > 10
    assert with_length_target("Start with 1.", 40) == "Start with 1. Think for 40 tokens."


def test_l1_prompts_state_the_target_and_reward_uses_it(tmp_path, tiny_model, tiny_tokenizer):
    config = RLConfig(method="l1", reward="l1", reward_kwargs={"alpha": 0.01}, method_kwargs={"low": 16, "high": 16},
                      prompts_per_step=2, samples_per_prompt=2, max_new_tokens=6)
    trainer = L1Trainer(tiny_model, tiny_tokenizer, config, PROMPTS, tmp_path)
    prompts, _ = trainer.build_prompts(PROMPTS[:1])
    assert "Think for 16 tokens." in prompts[0]
    batch = trainer.collect(0)
    # every target is 16 (low == high): reward = 1[correct] - 0.01 * |16 - n|
    expected = batch.correct.float() - 0.01 * (16 - batch.rollout.lengths.float()).abs()
    assert torch.allclose(batch.rewards, expected)


def test_thinkprune_truncates_at_the_scheduled_budget(tmp_path, tiny_model, tiny_tokenizer):
    config = RLConfig(method="thinkprune", reward="thinkprune", method_kwargs={"schedule": [[0, 5], [1, 3]]},
                      prompts_per_step=2, samples_per_prompt=2, max_new_tokens=10, temperature=1.0)
    trainer = ThinkPruneTrainer(tiny_model, tiny_tokenizer, config, PROMPTS, tmp_path)
    assert trainer.collect(0).rollout.lengths.max() <= 5
    trainer.step_index = 1
    batch = trainer.collect(1)
    assert batch.rollout.lengths.max() <= 3 and batch.info["budget"] == 3.0
    assert trainer.config.max_new_tokens == 10  # the budget applies to the rollout only
