"""The 2026 length-shaping rules (thinklean.core.length_rules) against values worked out by hand
from each source's definition, and each rule as a method: config checks at load, a demo row, and
two training steps from the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from thinklean.cli import main
from thinklean.core import (
    drgrpo_advantages,
    efficiency_bonus_reward,
    get_reward,
    gr3_alpha,
    gr3_reward,
    grpo_advantages,
    lead_reward,
    linear_passrate_reward,
    opo_advantages,
    quantile_penalty_reward,
    shortest_bonus_reward,
)
from thinklean.demo import DemoBudget, method_config
from thinklean.methods import DEMO_ROWS, METHODS
from thinklean.methods.config import load_config, parse_overrides
from thinklean.train.settings import ConfigError

RULES = ["linear_passrate", "efficiency_bonus", "gr3", "lead", "opo", "quantile_penalty", "shortest_bonus"]
TINY = ["--steps", "2", "--prompts-per-step", "2", "--samples-per-prompt", "2", "--max-new-tokens", "8"]

# One batch for every rule, group ids unsorted:
#   group 5 = rows 0, 2, 4: all correct, lengths 100, 300, 50
#   group 2 = rows 1, 3:    wrong at 40, correct at 200
#   group 9 = rows 5, 6:    no correct answer, lengths 60, 80
#   group 4 = row 7:        a singleton, correct at 120
IDS = torch.tensor([5, 2, 5, 2, 5, 9, 9, 4])
CORRECT = torch.tensor([1, 0, 1, 1, 1, 0, 0, 1], dtype=torch.bool)
LENGTHS = torch.tensor([100, 40, 300, 200, 50, 60, 80, 120])


def close(actual: torch.Tensor, expected: list[float], tol: float = 1e-5) -> None:
    assert actual.dtype == torch.float32
    assert torch.allclose(actual.double(), torch.tensor(expected, dtype=torch.float64), atol=tol), (actual, expected)


# ------------------------------------------------------------------------------ linear_passrate


def test_linear_passrate_scales_the_length_penalty_by_the_group_pass_rate():
    # pass rates: group 5 -> 1, group 2 -> 1/2, group 9 -> 0, group 4 -> 1; cap 400, coef 0.25
    rewards = linear_passrate_reward(CORRECT, LENGTHS, IDS, max_new_tokens=400)
    close(rewards, [1 - 0.25 * 1 * 100 / 400, 0 - 0.25 * 0.5 * 40 / 400, 1 - 0.25 * 1 * 300 / 400,
                    1 - 0.25 * 0.5 * 200 / 400, 1 - 0.25 * 1 * 50 / 400, 0.0, 0.0, 1 - 0.25 * 1 * 120 / 400])
    # gated: the wrong response of group 2 keeps 0
    gated = linear_passrate_reward(CORRECT, LENGTHS, IDS, max_new_tokens=400, gate_by_correctness=True)
    assert gated[1] == 0.0 and gated[3] == pytest.approx(1 - 0.0625)


def test_linear_passrate_ties_give_equal_rewards_and_the_cap_must_be_positive():
    rewards = linear_passrate_reward(torch.tensor([1, 1]), torch.tensor([80, 80]), torch.tensor([3, 3]),
                                     max_new_tokens=160, coef=0.5)
    close(rewards, [1 - 0.5 * 80 / 160] * 2)
    with pytest.raises(ValueError, match="max_new_tokens must be > 0"):
        linear_passrate_reward(CORRECT, LENGTHS, IDS, max_new_tokens=0)


# ----------------------------------------------------------------------------- efficiency_bonus


def test_efficiency_bonus_amplifies_correct_responses_shorter_than_the_mean_correct_length():
    # group 5: mean correct 150 -> bonuses 1/3, 0 (300 is above), 2/3; group 2: mean correct 200
    # -> 0; group 9 has no correct one; the singleton sits at its own mean -> bonus 0
    rewards = efficiency_bonus_reward(CORRECT, LENGTHS, IDS)
    close(rewards, [1 + 1 / 3, 0.0, 1.0, 1.0, 1 + 2 / 3, 0.0, 0.0, 1.0])


def test_efficiency_bonus_ties_and_empty_correct_responses_earn_nothing():
    close(efficiency_bonus_reward(torch.tensor([1, 1, 0]), torch.tensor([70, 70, 10]), torch.tensor([1, 1, 1])),
          [1.0, 1.0, 0.0])  # a short wrong response is untouched
    close(efficiency_bonus_reward(torch.tensor([1, 1]), torch.tensor([0, 0]), torch.tensor([1, 1])), [1.0, 1.0])


# ------------------------------------------------------------------------------------------ gr3


def test_gr3_calibration_bounds_alpha_by_the_pass_rate():
    # r_max / r_mean - 1: pass rate 7/8 -> 1/7 (below 0.33); 3/4 -> 1/3 (above: 0.33 stays);
    # all correct -> 0; no correct (r_mean 0) -> alpha unchanged
    rewards = torch.tensor([1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 0, 0], dtype=torch.float32)
    ids = torch.tensor([0] * 8 + [1] * 4 + [2] * 2 + [3] * 2)
    alpha = gr3_alpha(rewards, ids, 0.33)
    assert alpha[0].item() == pytest.approx(8 / 7 - 1) and alpha[8].item() == pytest.approx(0.33)
    assert alpha[12].item() == 0.0 and alpha[14].item() == pytest.approx(0.33)


def test_gr3_rescales_by_length_relative_to_the_group_mean():
    # calibrated: group 5 and the singleton are fully solved (alpha_g 0 -> unchanged); group 2 at
    # pass rate 1/2 keeps alpha 0.33 with mean length 120
    close(gr3_reward(CORRECT, LENGTHS, IDS), [1.0, 0.0, 1.0, 1 / (1 + 0.33 * 200 / 120), 1.0, 0.0, 0.0, 1.0])
    # uncalibrated (prime-rl PR 2029): group 5's mean length is 150, the singleton's is its own
    close(gr3_reward(CORRECT, LENGTHS, IDS, calibrate=False),
          [1 / (1 + 0.33 * 100 / 150), 0.0, 1 / (1 + 0.33 * 300 / 150), 1 / (1 + 0.33 * 200 / 120),
           1 / (1 + 0.33 * 50 / 150), 0.0, 0.0, 1 / (1 + 0.33)])


def test_gr3_baseline_is_the_mean_of_the_rescaled_rewards():
    # prime-rl PR 2040's case: 3 correct of 4, lengths 100..400 (mean 250). Rescaled rewards
    # 1/1.132, 1/1.264, 1/1.396, 0; their mean is the baseline, so every correct one is positive
    rewards = gr3_reward(torch.tensor([1, 1, 1, 0]), torch.tensor([100, 200, 300, 400]), torch.zeros(4, dtype=torch.long))
    rescaled = [1 / 1.132, 1 / 1.264, 1 / 1.396, 0.0]
    close(rewards, rescaled)
    baseline = sum(rescaled) / 4
    advantages = drgrpo_advantages(rewards, torch.zeros(4, dtype=torch.long), torch.ones(4, 3))[:, 0]
    close(advantages, [r - baseline for r in rescaled])
    assert (advantages[:3] > 0).all() and advantages[0] > advantages[1] > advantages[2]


def test_gr3_ties_and_empty_responses():
    close(gr3_reward(torch.tensor([1, 1, 0]), torch.tensor([60, 60, 60]), torch.tensor([2, 2, 2])),
          [1 / 1.33, 1 / 1.33, 0.0])
    close(gr3_reward(torch.tensor([1, 0]), torch.tensor([0, 0]), torch.tensor([2, 2])), [1 / 1.33, 0.0])


# ----------------------------------------------------------------------------------------- lead


def test_lead_scales_correct_rewards_by_the_length_z_score_among_correct_ones():
    # group 5: correct lengths 100, 300, 50 -> mean 150, population std sqrt(35000 / 3);
    # wrong answers get -1; one correct response (group 2, the singleton) has z = 0
    std = math.sqrt(((100 - 150) ** 2 + (300 - 150) ** 2 + (50 - 150) ** 2) / 3)
    close(lead_reward(CORRECT, LENGTHS, IDS),
          [math.exp(-0.05 * (100 - 150) / std), -1.0, math.exp(-0.05 * (300 - 150) / std), 1.0,
           math.exp(-0.05 * (50 - 150) / std), -1.0, -1.0, 1.0])


def test_lead_ties_and_the_configurable_incorrect_reward():
    close(lead_reward(torch.tensor([1, 1, 0]), torch.tensor([80, 80, 5]), torch.tensor([4, 4, 4]), incorrect_reward=0.0),
          [1.0, 1.0, 0.0])
    # alpha 0.5 on lengths 10, 30: mean 20, std 10 -> z = -1, +1
    close(lead_reward(torch.tensor([1, 1]), torch.tensor([10, 30]), torch.tensor([0, 0]), alpha=0.5),
          [math.exp(0.5), math.exp(-0.5)])


# ------------------------------------------------------------------------------ quantile_penalty


def test_quantile_penalty_caps_the_deduction_for_successes_above_the_allowance():
    # group 5: median of 100, 300, 50 is 100 -> allowed 125; 300 is 175 over -> 0.5 * 175 / 100 =
    # 0.875, capped at 0.5 -> max(min(0.5, 1), 1 - 0.5) = 0.5. Group 2 has one success (< 2),
    # group 9 none, the singleton one: all unchanged
    close(quantile_penalty_reward(CORRECT, LENGTHS, IDS), [1.0, 0.0, 0.5, 1.0, 1.0, 0.0, 0.0, 1.0])


def test_quantile_penalty_floor_quantile_and_absolute_slack():
    correct, lengths, ids = torch.tensor([1, 1, 1]), torch.tensor([100, 300, 50]), torch.tensor([7, 7, 7])
    # cap 1: 1 - 0.875 = 0.125, raised to the floor 0.3
    close(quantile_penalty_reward(correct, lengths, ids, cap=1.0, floor=0.3), [1.0, 0.3, 1.0])
    close(quantile_penalty_reward(correct, lengths, ids, cap=1.0, floor=0.1), [1.0, 0.125, 1.0])
    # quantile 0.25 of 50, 100, 300: position 0.5 -> 75; allowed 75 + 10 = 85; 100 is 15 over ->
    # 0.5 * 15 / 75 = 0.1; 300 is 215 over -> capped at 0.5
    close(quantile_penalty_reward(correct, lengths, ids, quantile=0.25, relative_slack=0.0, absolute_slack=10.0),
          [1 - 0.5 * 15 / 75, 0.5, 1.0])
    # ties: nobody exceeds the median of equal lengths
    close(quantile_penalty_reward(torch.tensor([1, 1]), torch.tensor([90, 90]), torch.tensor([1, 1])), [1.0, 1.0])


# ------------------------------------------------------------------------------- shortest_bonus


def test_shortest_bonus_goes_to_the_shortest_of_fully_correct_groups_only():
    # group 5 is fully correct (shortest: row 4 at 50); group 2 has a wrong answer; the correct
    # singleton is its own shortest
    close(shortest_bonus_reward(CORRECT, LENGTHS, IDS), [1.0, 0.0, 1.0, 1.0, 1.5, 0.0, 0.0, 1.5])


def test_shortest_bonus_ties_share_it():
    close(shortest_bonus_reward(torch.tensor([1, 1, 1]), torch.tensor([80, 90, 80]), torch.tensor([3, 3, 3]), bonus=0.2),
          [1.2, 1.0, 1.2])


# ------------------------------------------------------------------------------------------ opo


def test_opo_baseline_is_the_length_weighted_mean_reward():
    # group 5: all reward 1 -> baseline 1; group 2: (40 * 0 + 200 * 1) / 240 = 5/6; group 9: 0;
    # a singleton: its own reward
    advantages = opo_advantages(CORRECT.float(), IDS, torch.ones(8, 3), LENGTHS)
    assert advantages.shape == (8, 3)
    close(advantages[:, 0], [0.0, -5 / 6, 0.0, 1 - 5 / 6, 0.0, 0.0, 0.0, 0.0])
    # graded rewards: (10 * 0.5 + 30 * 1 + 60 * 0) / 100 = 0.35
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    graded = opo_advantages(torch.tensor([0.5, 1.0, 0.0]), torch.tensor([1, 1, 1]), mask, torch.tensor([10, 30, 60]))
    close(graded, [[0.15, 0.15, 0.0], [0.65, 0.65, 0.65], [-0.35, 0.0, 0.0]])


def test_opo_with_zero_total_length_uses_the_plain_mean():
    advantages = opo_advantages(torch.tensor([1.0, 0.0]), torch.tensor([3, 3]), torch.ones(2, 1), torch.tensor([0, 0]))
    close(advantages[:, 0], [0.5, -0.5])


# ----------------------------------------------------------------------------- shared contract


@pytest.mark.parametrize("name", ["linear_passrate", "efficiency_bonus", "gr3", "lead", "quantile_penalty",
                                  "shortest_bonus"])
def test_every_rule_is_a_registered_float32_reward_with_no_nan(name):
    extra = {"max_new_tokens": 400} if name == "linear_passrate" else {}
    rewards = get_reward(name)(correct=CORRECT, lengths=LENGTHS, group_ids=IDS, **extra)
    assert rewards.shape == (8,) and rewards.dtype == torch.float32 and bool(torch.isfinite(rewards).all())
    assert grpo_advantages(rewards, IDS, torch.ones(8, 2)).isfinite().all()


# ------------------------------------------------------------------------------ as methods


def test_each_rule_is_a_method_with_a_config_and_a_demo_row():
    assert all(rule in METHODS and DEMO_ROWS[rule] == (rule, {}) for rule in RULES)
    assert load_config("opo").advantage == "opo" and load_config("gr3").reward_kwargs == {"alpha": 0.33,
                                                                                         "calibrate": True}
    config = method_config("lead", DemoBudget(), seed=0)
    assert config.lr == 3e-5 and config.steps == 40 and config.reward == "lead"


def test_a_bad_reward_key_is_refused_at_its_line(tmp_path):
    user = tmp_path / "c.yaml"
    user.write_text("steps: 3\nreward_kwargs: {alpah: 0.1}\n")
    with pytest.raises(ConfigError, match=rf"^{user}:2: reward_kwargs: unknown key\(s\) alpah for reward 'gr3' "
                                          r"\(valid keys: alpha, calibrate\)"):
        load_config("gr3", user)
    # linear_passrate's trainer passes the cap itself
    with pytest.raises(ConfigError, match=r"unknown key\(s\) max_new_tokens for reward 'linear_passrate'"):
        load_config("linear_passrate", None, parse_overrides(["reward_kwargs={max_new_tokens: 100}"]))
    # and GRPO's does not: the reward needs the method
    with pytest.raises(ConfigError, match=r"needs max_new_tokens, .*\(use --method linear_passrate\)"):
        load_config("grpo", None, parse_overrides(["reward=linear_passrate"]))


@pytest.mark.parametrize("rule", RULES)
def test_each_rule_trains_two_steps_from_the_cli(tmp_path, tiny_model_dir, rule):
    out = tmp_path / rule
    assert main(["train", "--method", rule, "--model", str(tiny_model_dir), *TINY, "--output", str(out)]) == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
    assert json.loads((out / "config.json").read_text())["method"] == rule
