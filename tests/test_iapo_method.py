import torch

from thinklean.data.jsonl import Example
from thinklean.methods import iapo, iapo_probe
from thinklean.methods.iapo import IAPOTrainer, iapo_reward
from thinklean.train.rl import RLConfig, RLTrainer

PROMPTS = [Example(prompt=f"Start with {i}. Add 3. What is the result?", answer=str(i + 3), difficulty=1) for i in range(1, 5)]


def test_iapo_reward_by_hand():
    correct = torch.tensor([True, True, False, False])
    well_formed = torch.tensor([True, False, True, False])
    # +0.5 + 1, -0.5 + 1, +0.5 - 1, -0.5 - 1
    assert iapo_reward(correct, well_formed).tolist() == [1.5, 0.5, -0.5, -1.5]


def test_iapo_step_gives_token_level_advantages(tmp_path, tiny_model, tiny_tokenizer):
    config = RLConfig(method="iapo", advantage="iapo", prompts_per_step=2, samples_per_prompt=4, max_new_tokens=8,
                      method_kwargs={"w_s": 1.0, "w_c": 1.0, "chunk_size": 4}, save_every=0, steps=1)
    trainer = IAPOTrainer(tiny_model, tiny_tokenizer, config, PROMPTS, tmp_path)
    batch = trainer.collect(0)
    advantages = trainer.compute_advantages(batch)
    mask = batch.rollout.response_mask.bool()
    assert advantages.shape == mask.shape and torch.isfinite(advantages).all()
    assert (advantages[~mask] == 0).all()
    long_rows = batch.rollout.lengths >= 3
    assert long_rows.any()
    row = int(torch.nonzero(long_rows)[0])
    values = advantages[row][mask[row]]
    assert values.std() > 0  # the token terms make advantages vary within a sequence
    trainer.train(show_progress=False)


def test_probe_stride_reaches_the_probe(tmp_path, tiny_model, tiny_tokenizer, monkeypatch):
    seen = []

    def recording_probe(*args, **kwargs):
        seen.append(kwargs["stride"])
        return iapo_probe.answer_entropies(*args, **kwargs)

    monkeypatch.setattr(iapo, "answer_entropies", recording_probe)
    config = RLConfig(method="iapo", advantage="iapo", prompts_per_step=2, samples_per_prompt=2, max_new_tokens=8,
                      method_kwargs={"probe_stride": 3}, save_every=0, steps=1)
    trainer = IAPOTrainer(tiny_model, tiny_tokenizer, config, PROMPTS, tmp_path)
    assert torch.isfinite(trainer.compute_advantages(trainer.collect(0))).all()
    assert seen == [3]


def test_keep_shortest_keeps_k_shortest_per_group(tmp_path, tiny_model, tiny_tokenizer):
    config = RLConfig(prompts_per_step=2, samples_per_prompt=6, max_new_tokens=8, keep_shortest=2, temperature=1.0)
    trainer = RLTrainer(tiny_model, tiny_tokenizer, config, PROMPTS, tmp_path)
    full = trainer._score(trainer.rollout(trainer.sample_examples(0), 0), trainer.sample_examples(0))
    kept = RLTrainer.keep_shortest(full, 2)
    for g in full.rollout.group_ids.unique():
        all_lengths = sorted(full.rollout.lengths[full.rollout.group_ids == g].tolist())
        kept_lengths = sorted(kept.rollout.lengths[kept.rollout.group_ids == g].tolist())
        assert kept_lengths == all_lengths[:2]
    assert kept.info["kept_fraction"] == 4 / 12


def test_iapo_answer_entropy_reaches_the_metrics_log(tmp_path, tiny_model, tiny_tokenizer):
    from thinklean.runlog import read_metrics

    config = RLConfig(method="iapo", advantage="iapo", prompts_per_step=2, samples_per_prompt=2, max_new_tokens=5,
                      save_every=0, steps=1)
    IAPOTrainer(tiny_model, tiny_tokenizer, config, PROMPTS, tmp_path).train(show_progress=False)
    assert read_metrics(tmp_path / "metrics.jsonl")[0]["answer_entropy"] > 0


def test_gain_discount_reaches_the_advantage_inputs(tmp_path, tiny_model, tiny_tokenizer):
    import pytest

    from thinklean.train.settings import ConfigError

    def inputs(discount):
        torch.manual_seed(0)
        config = RLConfig(method="iapo", advantage="iapo", prompts_per_step=2, samples_per_prompt=2, max_new_tokens=8,
                          method_kwargs={"gain_discount": discount, "chunk_size": 4}, save_every=0, steps=1, seed=0)
        trainer = IAPOTrainer(tiny_model, tiny_tokenizer, config, PROMPTS, tmp_path / str(discount))
        batch = trainer.collect(0)
        return trainer.advantage_inputs(batch), batch.rollout.response_mask

    own, mask = inputs(0.0)
    credited, mask_again = inputs(0.5)
    assert torch.equal(mask, mask_again) and not torch.equal(own["info_gain"], credited["info_gain"])
    torch.testing.assert_close(credited["info_gain"], iapo_probe.discounted_gain(own["info_gain"], mask, 0.5))
    with pytest.raises(ConfigError, match="0 <= gain_discount < 1"):
        iapo.IAPOSettings(gain_discount=1.0)
