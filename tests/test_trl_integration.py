"""thinklean rewards inside TRL: per-completion reward functions and the group-aware GRPOTrainer."""

import math

import pytest
import torch

pytest.importorskip("trl")

from thinklean.core.rewards import hmpo_reward  # noqa: E402
from thinklean.integrations.trl import ThinkleanGRPOTrainer, check_trl_version, reward_funcs  # noqa: E402
from thinklean.methods.hmpo import budget_stats  # noqa: E402


def test_correctness_and_format_reward_functions_follow_trl_call_convention():
    correctness, fmt = reward_funcs(["correctness", "format"])
    completions = ["<think> 1 + 2 = 3 </think> \\boxed{3}", "\\boxed{4}"]
    kwargs = dict(prompts=["p", "p"], completions=completions, completion_ids=[[1] * 9, [1] * 3], answer=["3", "3"])
    assert correctness.__name__ == "correctness" and fmt.__name__ == "format"
    assert correctness(**kwargs) == [1.0, 0.0]
    assert fmt(**kwargs) == [1.0, -1.0]  # the second has no think tags


def test_thinkprune_reward_function_uses_completion_token_counts():
    (thinkprune,) = reward_funcs(["thinkprune"], reward_kwargs={"thinkprune": {"budget": 5}})
    rewards = thinkprune(prompts=["p"] * 3, completions=["\\boxed{3}", "\\boxed{3}", "\\boxed{2}"],
                         completion_ids=[[7] * 5, [7] * 6, [7] * 2], answer=["3", "3", "3"])
    assert rewards == [1.0, 0.0, 0.0]  # correct within budget, correct over budget (6 > 5), wrong


def test_format_reward_sees_special_token_tags_when_given_the_tokenizer(tiny_tokenizer):
    text = "<think> 2 </think> \\boxed{2}"
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    stripped = tiny_tokenizer.decode(ids, skip_special_tokens=True)  # what TRL passes as the completion
    (plain,) = reward_funcs(["format"])
    (with_tokenizer,) = reward_funcs(["format"], tokenizer=tiny_tokenizer)
    assert plain(prompts=["p"], completions=[stripped], completion_ids=[ids]) == [-1.0]
    assert with_tokenizer(prompts=["p"], completions=[stripped], completion_ids=[ids]) == [1.0]


def test_group_rewards_are_refused_as_per_completion_functions():
    with pytest.raises(ValueError, match=r"ThinkleanGRPOTrainer\(reward='hmpo'\)"):
        reward_funcs(["hmpo"])
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        reward_funcs(["nope"])


def test_unsupported_trl_version_fails_with_the_supported_range():
    with pytest.raises(ImportError, match=r"supports trl>=1.0,<2.*trl 0.19.1 is installed"):
        check_trl_version("0.19.1")
    assert check_trl_version("1.16.0") == "1.16.0"


def _odd_checksum(text: str, answer: str) -> bool:
    """Stand-in verifier for an untrained model (it never writes a box): about half are 'correct'."""
    return sum(map(ord, text)) % 2 == 1


def test_trl_hmpo_training_logs_thinklean_rewards_and_budgets(tmp_path, tiny_model, tiny_tokenizer):
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig

    from thinklean.data.formats import format_prompt

    torch.manual_seed(0)
    # An untrained model almost never samples EOS; stopping on any of 64 common tokens as well
    # gives completions of varied length, so the HMPO budgets are not all equal.
    tiny_model.generation_config.eos_token_id = [tiny_tokenizer.eos_token_id, *range(40, 104)]
    examples = [{"prompt": format_prompt(f"Start with {i}. Add 1. What is the result?"), "answer": str(i + 1)} for i in range(8)]
    config = dict(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=8, gradient_accumulation_steps=2,
                  num_generations=4, max_completion_length=24, learning_rate=1e-3, beta=0.0, logging_steps=1,
                  save_strategy="no", report_to="none", use_cpu=True, bf16=False, activation_checkpointing=False,
                  disable_tqdm=True, seed=0)
    reward_kwargs = {"beta": 1.0, "lam": 0.8}
    trainer = ThinkleanGRPOTrainer(tiny_model, reward="hmpo", reward_kwargs=reward_kwargs, verifier=_odd_checksum,
                                   args=GRPOConfig(**config), train_dataset=Dataset.from_list(examples),
                                   processing_class=tiny_tokenizer)
    batches = []

    class KeepBatch(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            batches.append(trainer.last_reward_batch)

    trainer.add_callback(KeepBatch())
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "rewards/hmpo/mean" in entry]
    assert len(logs) == len(batches) == 2
    assert batches[0] is not batches[1]

    for batch, log in zip(batches, logs):
        # the batch is TRL's: groups of 4 completions of one prompt, lengths as TRL counted them
        assert batch.group_ids.tolist() == [i // 4 for i in range(16)]
        assert all(len(set(batch.prompts[g * 4:(g + 1) * 4])) == 1 for g in range(4))
        assert batch.correct.tolist() == [_odd_checksum(t, "") for t in batch.completions]
        assert log["completions/mean_length"] == pytest.approx(float(batch.lengths.float().mean()))
        assert len(set(batch.lengths.tolist())) > 1

        expected = hmpo_reward(batch.correct, batch.lengths, batch.group_ids, **reward_kwargs)
        assert torch.equal(batch.rewards, expected)
        assert log["rewards/hmpo/mean"] == pytest.approx(float(expected.mean()), abs=1e-6)
        assert log["thinklean/accuracy"] == pytest.approx(float(batch.correct.float().mean()))
        stats = budget_stats(batch.correct, batch.lengths, batch.group_ids)
        assert stats["groups_with_budget"] > 0
        for key, value in stats.items():
            logged = log[f"hmpo/{key}"]
            assert (logged is None and math.isnan(value)) or logged == pytest.approx(value, abs=1e-5), key
