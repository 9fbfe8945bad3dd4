"""The method contract: specs in a registry, one keyword call convention for rewards, estimators
and losses checked at load, method-only flags, and plugin files that register a method."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import thinklean.demo
from thinklean.cli import main
from thinklean.core import get_loss, grpo_advantages
from thinklean.data.jsonl import Example
from thinklean.methods import (DEMO_ROWS, METHODS, DataTask, MethodSpec, get_trainer_class, load_plugin,
                               register_method)
from thinklean.methods.iapo import IAPOTrainer
from thinklean.methods.config import load_config, parse_overrides
from thinklean.train.rl import TRAINER_HOOKS, RLConfig, RLTrainer
from thinklean.train.settings import ConfigError

PLUGIN = Path(__file__).resolve().parents[1] / "docs" / "examples" / "my_method.py"
TINY = ["--steps", "2", "--prompts-per-step", "2", "--samples-per-prompt", "2", "--max-new-tokens", "8"]
PROMPTS = [Example(prompt=f"Start with {i}. Add 2. What is the result?", answer=str(i + 2), difficulty=1) for i in range(1, 5)]


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------------------------- registry


def test_every_builtin_method_is_registered_with_its_trainer_and_config():
    assert list(METHODS) == ["grpo", "drgrpo", "dapo", "rloo", "hmpo", "l1", "thinkprune", "linear_passrate",
                             "efficiency_bonus", "gr3", "lead", "opo", "quantile_penalty", "shortest_bonus", "bupo",
                             "iapo", "hgpo", "litereason"]
    assert get_trainer_class("grpo") is RLTrainer and get_trainer_class("iapo") is IAPOTrainer
    assert DEMO_ROWS["kimi"] == ("grpo", {"reward": "kimi"})  # a demo variant: grpo with another reward
    for name in METHODS:
        assert load_config(name).method == name
    with pytest.raises(KeyError, match="unknown method 'nope' .*available: grpo"):
        get_trainer_class("nope")


def test_builtin_trainers_override_only_the_documented_hooks():
    documented = (Path(__file__).resolve().parents[1] / "docs" / "methods.md").read_text()
    assert all(f"`{hook}(" in documented for hook in TRAINER_HOOKS)
    for name, spec in METHODS.items():
        for cls in spec.trainer.__mro__[: spec.trainer.__mro__.index(RLTrainer)]:
            overridden = {attr for attr in vars(cls) if hasattr(RLTrainer, attr) and attr not in ("__init__", "__doc__",
                                                                                                     "__module__")}
            assert overridden <= {*TRAINER_HOOKS, "Settings", "policy_logprobs_shares_prompts"}, (name, overridden)


def test_a_taken_method_name_or_demo_row_is_refused():
    with pytest.raises(ValueError, match="'grpo' is already registered"):
        register_method(MethodSpec("grpo", RLTrainer, "again"))
    with pytest.raises(ValueError, match="demo row.* kimi already exist"):
        register_method(MethodSpec("kimi_again", RLTrainer, "again", demo_rows={"kimi": {}}))
    with pytest.raises(ValueError, match="data task 'litereason' already exists .of litereason"):
        register_method(MethodSpec("traces", RLTrainer, "again", data=DataTask("litereason", "", list, str)))
    assert "kimi_again" not in METHODS and "traces" not in METHODS


# ------------------------------------------------------------------- call convention at load


@pytest.mark.parametrize("advantage, provider", [("iapo", "iapo"), ("hgpo", "hgpo")])
def test_an_estimator_whose_inputs_the_method_lacks_is_refused_at_its_line(tmp_path, advantage, provider):
    user = tmp_path / "c.yaml"
    user.write_text(f"steps: 3\nadvantage: {advantage}\n")
    with pytest.raises(ConfigError, match=rf"^{user}:2: advantage '{advantage}' needs .*which --method grpo does "
                                          rf"not provide \(use --method {provider}\)"):
        load_config("grpo", user)


@pytest.mark.parametrize("reward, provider, needs", [("l1", "l1", "targets"), ("thinkprune", "thinkprune", "budget")])
def test_a_reward_whose_inputs_the_method_lacks_is_refused_before_any_work(tmp_path, capsys, reward, provider, needs):
    out = tmp_path / "out"
    assert main(["train", "--method", "grpo", "--reward", reward, *TINY, "--output", str(out)]) == 2
    line = one_error(capsys)
    assert f"reward '{reward}' needs {needs}" in line and f"--method {provider}" in line
    assert not out.exists()


def test_the_methods_that_provide_those_inputs_take_them(tmp_path):
    assert load_config("l1").reward == "l1" and load_config("thinkprune").reward == "thinkprune"
    assert load_config("iapo").advantage == "iapo" and load_config("hgpo").advantage == "hgpo"
    # a fixed number is a setting, so the reward then works on the generic loop too
    assert load_config("grpo", None, parse_overrides(["reward=l1", "reward_kwargs={targets: 64}"])).reward == "l1"


def test_any_registered_estimator_can_be_chosen_by_config(tmp_path, tiny_model, tiny_tokenizer):
    config = RLConfig(method="iapo", advantage="grpo", prompts_per_step=2, samples_per_prompt=2, max_new_tokens=6,
                      method_kwargs={"chunk_size": 4})
    trainer = IAPOTrainer(tiny_model, tiny_tokenizer, config, PROMPTS, tmp_path)
    batch = trainer.collect(0)
    expected = grpo_advantages(batch.rewards, batch.rollout.group_ids, batch.rollout.response_mask)
    assert torch.equal(trainer.compute_advantages(batch), expected)


def test_a_plugin_estimator_gets_correctness_from_the_trainer(tmp_path, tiny_model, tiny_tokenizer):
    from dataclasses import replace

    load_plugin(PLUGIN.with_name("floor_correct.py"))
    config = load_config("hmpo", None, parse_overrides(["advantage=grpo_floor_correct"]))
    config = replace(config, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=6)
    trainer = get_trainer_class("hmpo")(tiny_model, tiny_tokenizer, config, PROMPTS, tmp_path)
    batch = trainer.collect(0)
    ids = batch.rollout.group_ids
    assert ids[0] == ids[1] and ids[2] == ids[3] and ids[0] != ids[2]
    # group 1: both correct, the longer one rewarded 0 (GRPO: +-0.707107, the -0.707107 raised to 0);
    # group 2: a correct response rewarded 0 beside a wrong one rewarded 1 (raised to 0; the wrong
    # one keeps its +0.707107: the floor only lifts correct responses)
    batch.correct = torch.tensor([True, True, True, False])
    batch.rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    expected = torch.tensor([2**-0.5, 0.0, 0.0, 2**-0.5])[:, None] * batch.rollout.response_mask
    assert torch.allclose(trainer.compute_advantages(batch), expected, atol=1e-5)


@pytest.mark.parametrize("pair, expected", [
    ("reward_kwargs={lamb: 0.5}", "--set:0: reward_kwargs: unknown key(s) lamb for reward 'hmpo' (valid keys: beta, lam"),
    ("advantage_kwargs={norm: false}", "unknown key(s) norm for advantage 'grpo' (valid keys: norm_by_std, eps)"),
    ("method_kwargs={alpah: 1}", "--set:0: method_kwargs: hmpo takes no method_kwargs, got alpah"),
    ("loss=ppo", "--set:0: unknown loss 'ppo'; valid losses: ppo_clip"),
    ("loss_kwargs={clip: 0.1}", "--set:0: loss_kwargs: unknown key(s) clip for loss 'ppo_clip' (valid keys: none)"),
])
def test_unknown_settings_are_refused_with_the_valid_keys(pair, expected):
    with pytest.raises(ConfigError) as error:
        load_config("hmpo", None, parse_overrides([pair]))
    assert expected in str(error.value)


def test_a_loss_needing_an_input_the_trainer_lacks_is_refused_naming_what_it_passes(monkeypatch):
    from thinklean.core import registry

    def needs_targets(logprobs, advantages, response_mask, targets):
        raise AssertionError("never called: the config is refused first")

    monkeypatch.setitem(registry._LOSSES, "needs_targets", needs_targets)
    with pytest.raises(ConfigError) as error:
        load_config("grpo", None, parse_overrides(["loss=needs_targets"]))
    assert ("--set:0: loss 'needs_targets' needs loss_kwargs targets (no default; the trainer passes logprobs, "
            "old_logprobs, advantages, response_mask, entropy, clip_low") in str(error.value)
    assert load_config("grpo", None, parse_overrides(["loss=needs_targets", "loss_kwargs={targets: 3}"])).loss_kwargs == {
        "targets": 3}


def test_method_settings_are_typed_and_checked_at_their_line(tmp_path):
    user = tmp_path / "c.yaml"
    user.write_text("lr: 1.0e-5\nmethod_kwargs: {layer: two}\n")
    with pytest.raises(ConfigError, match=rf"^{user}:2: method_kwargs.layer for bupo must be int, got str 'two'"):
        load_config("bupo", user)
    user.write_text("method_kwargs: {refresh_fraction: 2}\n")
    with pytest.raises(ConfigError, match=rf"^{user}:1: method_kwargs.refresh_fraction must be in \[0, 1\]"):
        load_config("litereason", user)
    assert load_config("hgpo", None, parse_overrides(["method_kwargs={alpha: 2}"])).method_kwargs["alpha"] == 2


@pytest.mark.parametrize("argv, owner", [(["--layer", "2"], "bupo"), (["--projector", "p"], "litereason")])
def test_method_only_flags_are_refused_for_other_methods(tmp_path, capsys, argv, owner):
    assert main(["train", "--method", "grpo", *argv, "--output", str(tmp_path / "o")]) == 2
    assert f"applies to --method {owner} only" in one_error(capsys)


# -------------------------------------------------------------------------------- plugins


def test_the_readme_example_is_the_plugin_file_verbatim():
    # the README's "Write your own method" block is what the plugin tests below run
    readme = (PLUGIN.parents[2] / "README.md").read_text()
    assert f"```python\n{PLUGIN.read_text()}```" in readme


def test_a_plugin_file_trains_its_method_from_the_cli(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    code = main(["train", "--plugin", str(PLUGIN), "--method", "my_method", "--model", str(tiny_model_dir), *TINY,
                 "--output", str(out)])
    assert code == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
    assert json.loads((out / "config.json").read_text())["reward"] == "correct_minus_length"


def test_the_quick_demo_trains_a_plugin_method_next_to_grpo(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--plugin", str(PLUGIN), "--methods", "grpo,my_method", "--quick", "--output", str(out)]) == 0
    saved = json.loads((out / "results.json").read_text())
    assert list(saved["methods"]) == ["base", "grpo", "my_method"]
    assert "training my_method" in capsys.readouterr().out
    assert thinklean.demo.method_config("my_method", thinklean.demo.QUICK, seed=0).reward == "correct_minus_length"


@pytest.fixture()
def restore_registry():
    """The method registry as it was before the test (a test plugin's method leaves it afterwards)."""
    methods, rows = dict(METHODS), dict(DEMO_ROWS)
    yield
    METHODS.clear()
    METHODS.update(methods)
    DEMO_ROWS.clear()
    DEMO_ROWS.update(rows)


def test_a_plugin_adds_a_data_task_with_its_own_flag(tmp_path, tiny_model_dir, restore_registry):
    plugin = tmp_path / "echo.py"
    plugin.write_text(
        "from thinklean.methods import DataTask, MethodFlag, MethodSpec, register_method\n"
        "from thinklean.train.rl import RLTrainer\n"
        "def build(model, tokenizer, examples, seed=0, times=1):\n"
        "    return [{'prompt': e.prompt, 'answer': e.answer, 'seed': seed} for e in examples for _ in range(times)]\n"
        "register_method(MethodSpec('echo_method', RLTrainer, 'echo', config={},\n"
        "    data=DataTask('echo', 'each problem TIMES times', build, lambda rows: f'{len(rows)} echoed',\n"
        "                  flags=(MethodFlag('--times', 'times', 'copies per problem', int, at_least=1),))))\n")
    out = tmp_path / "data"
    assert main(["data", "echo", "--plugin", str(plugin), "--model", str(tiny_model_dir), "--n", "2", "--times", "3",
                 "--seed", "4", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "echo.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {row["seed"] for row in rows} == {4}


def test_a_plugin_is_imported_once_per_file(tmp_path):
    assert load_plugin(PLUGIN) is load_plugin(PLUGIN)


@pytest.mark.parametrize("text, expected", [(None, "no such file"), ("raise RuntimeError('boom')\n", "RuntimeError: boom")])
def test_a_broken_plugin_is_one_error_line(tmp_path, capsys, text, expected):
    plugin = tmp_path / "broken.py"
    if text is not None:
        plugin.write_text(text)
    assert main(["train", "--plugin", str(plugin), "--output", str(tmp_path / "o")]) == 2
    line = one_error(capsys)
    assert f"--plugin {plugin}" in line and expected in line


def test_a_plugin_loss_keeps_the_highest_entropy_tokens_by_hand():
    load_plugin(PLUGIN.with_name("high_entropy_tokens.py"))
    loss_fn = get_loss("ppo_clip_high_entropy")
    zeros = torch.zeros(1, 4)
    advantages, mask = torch.tensor([[1.0, 2.0, 6.0, 4.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    entropy = torch.tensor([[0.1, 0.9, 0.5, 2.0]])  # the padded token's entropy never counts
    # of the valid entropies 0.1, 0.9, 0.5 the top third is the 0.9 token; at ratio 1 PPO's loss is -A there
    assert float(loss_fn(zeros, zeros, advantages, mask, entropy, top_fraction=1 / 3)[0]) == pytest.approx(-2.0)
    assert float(loss_fn(zeros, zeros, advantages, mask, entropy, top_fraction=1.0)[0]) == pytest.approx(-3.0)


def test_a_plugin_loss_gets_the_policy_entropy_from_the_trainer(tmp_path, tiny_model, tiny_tokenizer):
    import copy
    from dataclasses import replace

    load_plugin(PLUGIN.with_name("high_entropy_tokens.py"))
    weights = {}
    for overrides in ([], ["loss=ppo_clip_high_entropy", "loss_kwargs={top_fraction: 1.0}"],
                      ["loss=ppo_clip_high_entropy", "loss_kwargs={top_fraction: 0.2}"]):
        config = replace(load_config("grpo", None, parse_overrides(overrides)), prompts_per_step=2,
                         samples_per_prompt=4, max_new_tokens=8, lr=1e-2, seed=1)
        trainer = get_trainer_class("grpo")(copy.deepcopy(tiny_model), tiny_tokenizer, config, PROMPTS,
                                            tmp_path / str(len(weights)))
        batch = trainer.collect(0)
        batch.rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0])  # an untrained model solves none
        batch.advantages = trainer.compute_advantages(batch)
        trainer.update(batch)
        weights[tuple(overrides)] = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    plain, every, top = weights.values()
    assert torch.equal(plain, every)  # every token kept: PPO-clip's update, bit for bit
    assert not torch.equal(plain, top)  # a fifth kept: the entropy reached the loss and changed the update
