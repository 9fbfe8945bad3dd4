import re

import pytest
import torch

from thinklean.data.jsonl import Example
from thinklean.methods.hmpo import budget_stats
from thinklean.runlog import read_metrics
from thinklean.methods.config import ConfigError, load_config, parse_overrides
from thinklean.train.rl import RLConfig

PROMPTS = [Example(prompt=f"Start with {i}. Add 1. What is the result?", answer=str(i + 1), difficulty=1) for i in range(1, 9)]


def _config(**kw):
    base = dict(steps=8, prompts_per_step=4, samples_per_prompt=8, max_new_tokens=8, lr=5e-3, save_every=0,
                loss_agg="token-mean", micro_batch_size=16)
    return RLConfig(**{**base, **kw})


def test_grpo_raises_an_easy_reward(digit_trainer, tmp_path, tiny_model, tiny_tokenizer):
    trainer = digit_trainer(tiny_model, tiny_tokenizer, _config(steps=12), PROMPTS, tmp_path)
    trainer.train(show_progress=False)
    rewards = [m["reward"] for m in read_metrics(tmp_path / "metrics.jsonl")]
    assert len(rewards) == 12
    assert sum(rewards[-3:]) / 3 > 2 * sum(rewards[:3]) / 3 + 0.05
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_metrics_have_the_documented_fields(digit_trainer, tmp_path, tiny_model, tiny_tokenizer):
    digit_trainer(tiny_model, tiny_tokenizer, _config(steps=1), PROMPTS, tmp_path).train(show_progress=False)
    record = read_metrics(tmp_path / "metrics.jsonl")[0]
    for key in ("reward", "accuracy", "length_mean", "length_min", "length_max", "kl", "entropy", "clip_frac",
                "grad_norm", "step_time", "rollout_tokens_per_s", "train_tokens_per_s", "rollout_time", "update_time"):
        assert key in record, key


def test_resume_continues_bit_identically(digit_trainer, tmp_path, tiny_tokenizer):
    from thinklean.models.tiny import build_model

    def fresh():
        return build_model(tiny_tokenizer, seed=0, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=4, intermediate_size=128)

    config = _config(steps=4, save_every=2, ppo_epochs=2, mini_batches=2)
    digit_trainer(fresh(), tiny_tokenizer, config, PROMPTS, tmp_path / "a").train(show_progress=False)
    full = read_metrics(tmp_path / "a" / "metrics.jsonl")

    digit_trainer(fresh(), tiny_tokenizer, config, PROMPTS, tmp_path / "b").train(show_progress=False)
    (tmp_path / "b" / "checkpoints" / "latest").write_text("step-00000002")  # as if killed after step 2
    digit_trainer(fresh(), tiny_tokenizer, config, PROMPTS, tmp_path / "b").train(resume=True, show_progress=False)
    resumed = read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [m["step"] for m in resumed] == [1, 2, 3, 4]
    for key in ("loss", "reward", "length_mean", "grad_norm"):
        assert resumed[2][key] == full[2][key] and resumed[3][key] == full[3][key], key


TIMING_FIELDS = {"step_time", "rollout_time", "update_time", "rollout_tokens_per_s", "train_tokens_per_s"}


def test_same_seed_runs_are_bit_identical_on_two_threads(digit_trainer, tmp_path, tiny_tokenizer):
    """Two uninterrupted same-seed runs on two CPU threads log the same metrics and end with the
    same weights. One micro-batch of 64 rows mixes the 8 prompts' samples (length-sorted), so the
    shared-prompt backward sums each prompt's rows from both threads (docs/reproducibility.md)."""
    from safetensors.torch import load_file

    from thinklean.models.tiny import build_model

    config = _config(steps=4, samples_per_prompt=8, prompts_per_step=8, micro_batch_size=64, micro_batch_tokens=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for run in ("a", "b"):
            model = build_model(tiny_tokenizer, seed=0, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=4, intermediate_size=128)
            digit_trainer(model, tiny_tokenizer, config, PROMPTS, tmp_path / run).train(show_progress=False)
    finally:
        torch.set_num_threads(threads)
    a, b = ([{k: v for k, v in m.items() if k not in TIMING_FIELDS} for m in read_metrics(tmp_path / run / "metrics.jsonl")]
            for run in ("a", "b"))
    assert len(a) == 4 and a == b
    weights_a, weights_b = (load_file(tmp_path / run / "model" / "model.safetensors") for run in ("a", "b"))
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean"])
def test_micro_batching_does_not_change_the_update(digit_trainer, tmp_path, tiny_tokenizer, loss_agg):
    """One batch of 32, 4 micro-batches of 8 rows, and micro-batches cut by a 40-token budget
    all give the gradient of the whole batch."""
    from thinklean.models.tiny import build_model

    results = []
    for name, size, tokens in (("one", 32, 0), ("rows", 8, 0), ("tokens", 32, 40)):
        model = build_model(tiny_tokenizer, seed=0, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=4, intermediate_size=128)
        config = _config(steps=1, micro_batch_size=size, micro_batch_tokens=tokens, loss_agg=loss_agg)
        trainer = digit_trainer(model, tiny_tokenizer, config, PROMPTS, tmp_path / name)
        grads, n_micro = [], []
        micro_step = trainer._micro_step
        trainer.optimizer.register_step_pre_hook(lambda *a: grads.extend(p.grad.clone() for p in model.parameters()))
        trainer._micro_step = lambda batch, rows, *a: (n_micro.append(len(rows)), micro_step(batch, rows, *a))
        trainer.train(show_progress=False)
        results.append((read_metrics(tmp_path / name / "metrics.jsonl")[0], grads, n_micro))
    (m_one, g_one, n_one), (m_rows, g_rows, n_rows), (m_tok, g_tok, n_tok) = results
    assert n_one == [32] and n_rows == [8, 8, 8, 8]
    assert len(n_tok) > 4 and sum(n_tok) == 32  # prompt (~13 tokens) + response (<= 8) per row
    for m, g in ((m_rows, g_rows), (m_tok, g_tok)):
        assert m_one["loss"] == pytest.approx(m["loss"], abs=1e-6)
        assert m_one["grad_norm"] == pytest.approx(m["grad_norm"], rel=1e-4)
        assert len(g_one) == len(g) > 0
        assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(g_one, g))


def test_token_budget_micro_batches_respect_the_budget(digit_trainer, tiny_model, tiny_tokenizer, tmp_path):
    trainer = digit_trainer(tiny_model, tiny_tokenizer, _config(micro_batch_size=3, micro_batch_tokens=30), PROMPTS, tmp_path)
    prompt_mask = torch.tensor([[0, 1, 1], [1, 1, 1], [0, 0, 1], [0, 1, 1], [1, 1, 1], [0, 0, 1]])
    lengths = torch.tensor([2, 5, 20, 3, 4, 40])

    class Rollout:
        pass

    batch = Rollout()
    batch.rollout = Rollout()
    batch.rollout.prompt_mask, batch.rollout.lengths = prompt_mask, lengths
    order = torch.argsort(lengths, stable=True)  # rows 0, 3, 4, 1, 2, 5
    micros = [m.tolist() for m in trainer._micro_batches(batch, order)]
    # widths (longest prompt + longest response) x rows: [0, 3, 4] = 3 x (3 + 4) = 21 <= 30;
    # adding row 1 would make 4 rows (over micro_batch_size); [1] + [2] = 2 x (3 + 20) > 30
    assert micros == [[0, 3, 4], [1], [2], [5]]


def test_dynamic_sampling_keeps_only_groups_with_reward_spread(digit_trainer, tmp_path, tiny_model, tiny_tokenizer):
    class HalfConstant(digit_trainer):
        def compute_rewards(self, batch, examples, correct):
            # prompts with an even start value: constant reward (dropped); odd: reward varies
            rewards, _ = super().compute_rewards(batch, examples, correct)
            even = torch.tensor([int(examples[g].answer) % 2 == 1 for g in batch.group_ids.tolist()])
            return torch.where(even, torch.zeros_like(rewards), rewards + torch.arange(len(rewards)) * 1e-3), {}

    trainer = HalfConstant(tiny_model, tiny_tokenizer, _config(dynamic_sampling=True, max_resample_rounds=2), PROMPTS, tmp_path)
    batch = trainer.collect(0)
    groups = batch.rollout.group_ids.unique().tolist()
    starts = [int(batch.examples[g].answer) - 1 for g in groups]
    assert starts and all(s % 2 == 1 for s in starts)  # only the varying-reward prompts survive
    assert len(groups) == batch.info["kept_groups"] == 4  # refilled to prompts_per_step by resampling
    assert len(batch.rollout.lengths) == 8 * 4


def test_kl_runs_with_a_reference_model_and_starts_at_zero(digit_trainer, tmp_path, tiny_model, tiny_tokenizer):
    digit_trainer(tiny_model, tiny_tokenizer, _config(steps=1, kl_coef=0.1), PROMPTS, tmp_path).train(show_progress=False)
    record = read_metrics(tmp_path / "metrics.jsonl")[0]
    assert record["kl"] == pytest.approx(0.0, abs=1e-5)  # policy == reference before the first update


def test_adam_settings_reach_the_optimizer(digit_trainer, tmp_path, tiny_model, tiny_tokenizer):
    trainer = digit_trainer(tiny_model, tiny_tokenizer, _config(adam_eps=1e-5, adam_beta2=0.95), PROMPTS, tmp_path)
    group = trainer.optimizer.param_groups[0]
    assert group["eps"] == 1e-5 and group["betas"] == (0.9, 0.95)


def test_train_only_updates_the_matching_parameters_and_leaves_the_rest_bit_identical(
        digit_trainer, tmp_path, tiny_model, tiny_tokenizer):
    before = {name: p.detach().clone() for name, p in tiny_model.named_parameters()}
    trainer = digit_trainer(tiny_model, tiny_tokenizer, _config(steps=2, train_only=r"\.mlp\."), PROMPTS, tmp_path)
    trainer.train(show_progress=False)
    after = dict(trainer.model.named_parameters())
    mlp = [name for name in before if ".mlp." in name]
    assert mlp and all(not torch.equal(before[name], after[name].detach()) for name in mlp)
    assert all(torch.equal(before[name], after[name].detach()) for name in before if name not in mlp)


@pytest.mark.parametrize("pattern, message", [
    ("(", "train_only '(' is not a regular expression"),
    ("feed_forward", "train_only 'feed_forward' matches none of the model's"),
])
def test_train_only_refuses_a_pattern_it_cannot_use(tiny_model, pattern, message):
    from thinklean.train.rl import freeze_all_but

    with pytest.raises(ConfigError, match=re.escape(message)):
        freeze_all_but(tiny_model, pattern)
    assert all(p.requires_grad for p in tiny_model.parameters())


def test_config_unknown_key_names_file_line_and_valid_keys(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 1.0e-5\nsteps: 10\nlearning_rate: 3\n")
    with pytest.raises(ConfigError, match=rf"{cfg}:3: unknown key 'learning_rate' \(valid keys: .*lr.*\)"):
        load_config("grpo", cfg)


def test_config_wrong_type_is_reported_with_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("steps: ten\n")
    with pytest.raises(ConfigError, match=rf"{cfg}:1: key 'steps' must be int, got str"):
        load_config("grpo", cfg)


def test_config_layers_method_file_and_overrides(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("steps: 7\nlr: 1\n")
    config = load_config("hmpo", cfg, parse_overrides(["lr=3e-4", "reward_kwargs={lam: 0.5}"]))
    assert config.reward == "hmpo" and config.clip_high == 0.28 and config.dual_clip == 10.0  # method file
    assert config.steps == 7  # user file
    assert config.lr == 3e-4  # overrides win
    assert config.reward_kwargs == {"beta": 1.0, "lam": 0.5, "combine": "multiply"}  # dicts merge key by key


def test_cli_train_rejects_unknown_reward(tmp_path, tiny_model_dir, capsys):
    from thinklean.cli import main

    code = main(["train", "--model", str(tiny_model_dir), "--reward", "nope", "--output", str(tmp_path / "o")])
    assert code == 2
    assert "nope" in capsys.readouterr().err


def test_hmpo_budget_stats_by_hand():
    # group 0: lengths 10,20,30,40 all correct -> budget 25, 2 of 4 correct above budget
    # group 1: 12 (correct), 30 (wrong), 18 (correct) -> budget 15, 1 correct above
    correct = torch.tensor([1, 1, 1, 1, 1, 0, 1])
    lengths = torch.tensor([10, 20, 30, 40, 12, 30, 18])
    groups = torch.tensor([0, 0, 0, 0, 5, 5, 5])
    stats = budget_stats(correct, lengths, groups)
    assert stats["budget_mean"] == pytest.approx((25 + 15) / 2)
    assert stats["above_budget"] == pytest.approx(3 / 6)
    assert stats["groups_with_budget"] == 2


def test_bupo_ipa_phase_trains_only_lower_layers_then_full_model(tmp_path, tiny_tokenizer):
    from thinklean.methods.bupo import BuPOTrainer
    from thinklean.models.tiny import build_model

    model = build_model(tiny_tokenizer, seed=0, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                        num_key_value_heads=4, intermediate_size=128)
    config = _config(steps=2, method="bupo", method_kwargs={"layer": 1, "s_inter": 1})
    with pytest.warns(UserWarning, match="s_inter"):
        trainer = BuPOTrainer(model, tiny_tokenizer, config, PROMPTS, tmp_path)
    seen = []
    layers = model.model.layers
    trainer.optimizer.register_step_pre_hook(
        lambda *a: seen.append([all(p.grad is None for p in layer.parameters()) for layer in layers]))
    trainer.train(show_progress=False)
    # step 1 (IPA on layer 1): layers 2 and 3 untouched by the loss; step 2 (GRPO): all layers get grads
    assert seen == [[False, True, True], [False, False, False]]
    assert [m["ipa_phase"] for m in read_metrics(tmp_path / "metrics.jsonl")] == [1.0, 0.0]


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean"])
def test_sharing_the_prompt_forward_gives_the_full_row_gradient(digit_trainer, tmp_path, tiny_tokenizer, loss_agg):
    """Each distinct prompt run once (KV cache leaves, micro-batches cut across groups) gives the
    loss and gradient of scoring every prompt + response row in full."""
    from thinklean.models.tiny import build_model

    results = []
    for share in (False, True):
        model = build_model(tiny_tokenizer, seed=0, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=4, intermediate_size=128)
        config = _config(steps=1, micro_batch_size=5, share_prompt_forward=share, loss_agg=loss_agg)
        trainer = digit_trainer(model, tiny_tokenizer, config, PROMPTS, tmp_path / str(share))
        grads, prompt_passes = [], []
        trainer.optimizer.register_step_pre_hook(lambda *a: grads.extend(p.grad.clone() for p in model.parameters()))
        share_prompts = trainer._share_prompts
        trainer._share_prompts = lambda *a: (prompt_passes.append(1), share_prompts(*a))[1]
        trainer.train(show_progress=False)
        results.append((read_metrics(tmp_path / str(share) / "metrics.jsonl")[0], grads, prompt_passes))
    (m_full, g_full, _), (m_shared, g_shared, passes) = results
    assert passes == [1]
    assert m_full["loss"] == pytest.approx(m_shared["loss"], abs=1e-6)
    assert m_full["entropy"] == pytest.approx(m_shared["entropy"], rel=1e-5)
    assert len(g_full) == len(g_shared) > 0
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(g_full, g_shared))
    assert all(g.abs().sum() > 0 for g in g_shared)
