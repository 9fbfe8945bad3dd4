"""thinklean.integrations.verl against the installed verl API (CPU only, no Ray cluster).

Runs in the separate environment `.ci/run` builds (verl pins an older transformers than
thinklean's own test environment); skipped where verl is not installed.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

verl = pytest.importorskip("verl")

import numpy as np
import torch
from omegaconf import OmegaConf
from verl.trainer.ppo import core_algos
from verl.workers.config import ActorConfig

from thinklean.core import hgpo_advantages, iapo_advantages
from thinklean.integrations import verl as adapter

VERL_DIR = Path(importlib.util.find_spec("verl").origin).parent
DOCS = Path(__file__).resolve().parents[2] / "docs" / "verl.md"


def _call_keywords(path: Path, function: str, callee: str) -> set[str]:
    """Keyword names that ``function`` in verl's source file ``path`` passes to ``callee``:
    explicit ``name=`` keywords, and for ``callee(**kw)`` the keys of ``kw``'s dict literal and
    of every ``kw["name"] = ...`` in the function."""
    tree = ast.parse(path.read_text())
    body = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function)
    calls = [n for n in ast.walk(body)
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == callee]
    names = {k.arg for call in calls for k in call.keywords if k.arg}
    spread = {k.value.id for call in calls for k in call.keywords if k.arg is None and isinstance(k.value, ast.Name)}
    for node in ast.walk(body):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict) and any(
                isinstance(t, ast.Name) and t.id in spread for t in node.targets):
            names |= {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
        if (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Name)
                and node.value.id in spread and isinstance(node.slice, ast.Constant)):
            names.add(node.slice.value)
    return names


def _scored(lengths: list[int], scores: list[float], width: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """verl's layout: ``response_mask [B, T]`` and the score on the last response token."""
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    rewards = torch.zeros(len(lengths), width)
    for i, (n, s) in enumerate(zip(lengths, scores)):
        mask[i, :n] = 1
        rewards[i, n - 1] = s
    return rewards, mask


def _per_sequence(advantages: torch.Tensor, mask: torch.Tensor) -> list[float]:
    assert torch.all(advantages[mask == 0] == 0)
    return [float(advantages[i, 0]) for i in range(len(mask))]


# ----------------------------------------------------------------------------- registration


def test_importing_the_module_registers_with_verl():
    for name, fn in (("hmpo", adapter.hmpo_advantage), ("thinklean", adapter.thinklean_advantage),
                     ("iapo", adapter.iapo_advantage), ("hgpo", adapter.hgpo_advantage)):
        assert core_algos.get_adv_estimator_fn(name) is fn
    assert core_algos.get_policy_loss_fn("thinklean") is adapter.thinklean_policy_loss


def test_verl_loads_the_plugin_in_a_fresh_process_without_importing_thinklean():
    code = ("import verl.trainer.ppo.core_algos as c, sys; "
            "sys.exit(0 if {'hmpo', 'iapo', 'hgpo', 'thinklean'} <= set(c.ADV_ESTIMATOR_REGISTRY) "
            "and 'thinklean' in c.POLICY_LOSS_REGISTRY else 1)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120, check=False).returncode == 0


def test_installed_verl_is_supported():
    assert adapter.check_verl_version() == verl.__version__
    with pytest.raises(ImportError, match="verl>=0.9.0,<0.10"):
        adapter.check_verl_version("0.8.0")


def test_verl_calls_estimators_with_arguments_they_accept():
    passed = _call_keywords(VERL_DIR / "trainer/ppo/ray_trainer.py", "compute_advantage", "adv_estimator_fn")
    assert {"token_level_rewards", "response_mask", "config", "index"} <= passed
    values = {name: None for name in passed}
    for fn in (adapter.hmpo_advantage, adapter.thinklean_advantage, adapter.iapo_advantage, adapter.hgpo_advantage):
        inspect.signature(fn).bind(**values)


def test_verl_calls_policy_losses_with_arguments_it_accepts():
    passed = _call_keywords(VERL_DIR / "workers/utils/losses.py", "ppo_loss", "policy_loss_fn")
    assert passed == {"old_log_prob", "log_prob", "advantages", "response_mask", "loss_agg_mode", "config",
                      "rollout_is_weights"}
    inspect.signature(adapter.thinklean_policy_loss).bind(**{name: None for name in passed})


# ------------------------------------------------------------------------------- estimators


def test_hmpo_budget_is_the_median_of_each_groups_correct_lengths():
    # group "a": all correct, lengths 10..40 -> budget 25 -> rewards 1, 1, 0, 0 (beta 1, lam 0.8)
    # group "b": one correct of length 5 -> budget 5 -> cos(pi/2) + 0.8 = 0.8; the wrong one 0
    index = np.array(["a", "b", "a", "a", "b", "a"], dtype=object)
    rewards, mask = _scored([10, 5, 20, 30, 9, 40], [1, 1, 1, 1, 0, 1])
    advantages, returns = adapter.hmpo_advantage(token_level_rewards=rewards, response_mask=mask, index=index,
                                                 config=OmegaConf.create({"norm_adv_by_std_in_grpo": True}))
    a = 0.5 / math.sqrt(1 / 3)  # (r - 0.5) / unbiased std of [1, 1, 0, 0]
    b = 0.4 / math.sqrt(0.32)  # (r - 0.4) / unbiased std of [0.8, 0]
    assert _per_sequence(advantages, mask) == pytest.approx([a, b, a, -a, -b, -a], abs=1e-5)
    assert torch.equal(advantages, returns)


def test_hmpo_without_std_normalisation_is_drgrpo_and_reward_kwargs_reach_the_reward():
    index = np.array(["a"] * 4, dtype=object)
    rewards, mask = _scored([10, 20, 30, 40], [1, 1, 1, 1])
    config = OmegaConf.create({"norm_adv_by_std_in_grpo": False,
                               "thinklean": {"reward_kwargs": {"budget": 35, "lam": 0.2}}})
    advantages, _ = adapter.hmpo_advantage(rewards, mask, index, config)
    # budget 35, lam 0.2: min(1, cos(pi n / 70) + 0.2) = 1, 0.823, 0.422 for n = 10, 20, 30; 40 > 35 -> 0
    r = [min(1.0, math.cos(math.pi * n / 70) + 0.2) for n in (10, 20, 30)] + [0.0]
    mean = sum(r) / 4
    assert _per_sequence(advantages, mask) == pytest.approx([x - mean for x in r], abs=1e-5)


def test_thinklean_estimator_uses_the_configured_reward_and_advantage():
    # kimi, all correct, lengths 10/20/30: lambda = 0.5, 0, -0.5 -> rewards 1.5, 1, 0.5; RLOO: r - mean(others)
    index = np.array(["p", "p", "p"], dtype=object)
    rewards, mask = _scored([10, 20, 30], [1, 1, 1])
    config = OmegaConf.create({"thinklean": {"reward": "kimi", "advantage": "rloo"}})
    advantages, _ = adapter.thinklean_advantage(rewards, mask, index, config)
    assert _per_sequence(advantages, mask) == pytest.approx([0.75, 0.0, -0.75], abs=1e-6)


def test_estimators_refuse_configurations_they_cannot_honour():
    index = np.array(["a", "a"], dtype=object)
    rewards, mask = _scored([3, 4], [1, 0])
    with pytest.raises(ValueError, match="use_kl_in_reward"):
        adapter.hmpo_advantage(rewards, mask, index, OmegaConf.create({"use_kl_in_reward": True}))
    with pytest.raises(ValueError, match="unknown key"):
        adapter.hmpo_advantage(rewards, mask, index, OmegaConf.create({"thinklean": {"lamda": 0.8}}))
    with pytest.raises(ValueError, match="grpo, drgrpo, rloo"):
        adapter.thinklean_advantage(rewards, mask, index, OmegaConf.create({"thinklean": {"advantage": "iapo"}}))
    with pytest.raises(ValueError, match="adv_estimator=thinklean"):
        adapter.hmpo_advantage(rewards, mask, index, OmegaConf.create({"thinklean": {"reward": "kimi"}}))


def test_iapo_and_hgpo_name_the_inputs_verl_does_not_pass():
    index = np.array(["a", "a"], dtype=object)
    rewards, mask = _scored([3, 4], [1, 0])
    with pytest.raises(ValueError, match="correct, info_gain, token_entropy"):
        adapter.iapo_advantage(token_level_rewards=rewards, response_mask=mask, index=index, config=None)
    with pytest.raises(ValueError, match="modes"):
        adapter.hgpo_advantage(token_level_rewards=rewards, response_mask=mask, index=index, config=None)


def test_iapo_and_hgpo_with_their_inputs_equal_thinklean_core():
    generator = torch.Generator().manual_seed(0)
    index = np.array(["x", "y", "x", "y", "x", "y", "x", "y"], dtype=object)
    group_ids = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    lengths = [5, 7, 3, 8, 6, 2, 4, 7]
    scores = [1.5, -0.5, 0.5, 1.5, -1.5, 1.5, 1.5, -0.5]
    rewards, mask = _scored(lengths, scores, width=8)
    correct = torch.tensor(scores) > 0
    gain, entropy = torch.rand(8, 8, generator=generator), torch.rand(8, 8, generator=generator)
    config = OmegaConf.create({"thinklean": {"advantage_kwargs": {"w_s": 0.1, "w_c": 0.05}}})
    got, _ = adapter.iapo_advantage(rewards, mask, index, config, correct=correct, info_gain=gain,
                                    token_entropy=entropy)
    want = iapo_advantages(torch.tensor(scores), correct, group_ids, mask, gain, entropy, w_s=0.1, w_c=0.05)
    assert torch.allclose(got, want, atol=1e-6)

    modes = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0])
    got, _ = adapter.hgpo_advantage(rewards, mask, index, None, modes=modes)
    tag = torch.zeros_like(mask)
    tag[:, 0] = 1
    want = hgpo_advantages(torch.tensor(scores), torch.tensor(lengths), modes, group_ids, mask, tag)
    assert torch.allclose(got, want, atol=1e-6)


def test_compute_score_grades_the_last_boxed_answer_and_loads_through_verls_loader():
    from verl.trainer.ppo.reward import get_custom_reward_fn

    config = OmegaConf.create({"reward": {"custom_reward_function": {"path": "pkg://thinklean.integrations.verl",
                                                                     "name": "compute_score"}}})
    score = get_custom_reward_fn(config)
    response = "<think> 3 + 4 = 7, so \\boxed{7}? Wait: 7 + 5 = 12. </think> \\boxed{12}"
    assert score(data_source="arith", solution_str=response, ground_truth="12", extra_info={}) == 1.0
    assert score(data_source="arith", solution_str=response, ground_truth="7", extra_info={}) == 0.0


# ------------------------------------------------------------------------------ policy loss


def _actor_config(**global_batch_info) -> ActorConfig:
    config = ActorConfig(strategy="fsdp", ppo_micro_batch_size_per_gpu=1, rollout_n=1, clip_ratio=0.2,
                         clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0)
    config.global_batch_info.update(global_batch_info)
    return config


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm",
                                 "token-sum"])
@pytest.mark.parametrize("global_batch", [False, True])
def test_policy_loss_and_gradient_equal_verls_vanilla_ppo_loss(agg, global_batch):
    generator = torch.Generator().manual_seed(1)
    old = -torch.rand(5, 12, generator=generator) * 3
    delta = torch.randn(5, 12, generator=generator) * 0.6  # ratios far enough from 1 to clip and dual-clip
    advantages = torch.randn(5, 12, generator=generator)
    delta[0, :2], advantages[0, :2] = 1.5, -1.0  # ratio e^1.5 > clip_ratio_c = 3 with A < 0: dual clip
    mask = torch.ones(5, 12, dtype=torch.bool)
    mask[1, 7:] = False
    mask[3, 2:] = False
    mask[4] = False  # a fully padded row
    info = {"dp_size": 2, "batch_num_tokens": 57, "global_batch_size": 9, "loss_scale_factor": 16}
    info = info if global_batch else {}
    results = []
    for name in ("thinklean", "vanilla"):
        new = (old + delta).requires_grad_(True)
        loss, metrics = core_algos.get_policy_loss_fn(name)(
            old_log_prob=old, log_prob=new, advantages=advantages, response_mask=mask, loss_agg_mode=agg,
            config=_actor_config(**info), rollout_is_weights=None,
        )
        loss.backward()
        results.append((loss.detach(), new.grad, metrics))
    (ours, our_grad, our_metrics), (theirs, their_grad, their_metrics) = results
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-7)
    assert torch.allclose(our_grad, their_grad, rtol=1e-5, atol=1e-7)
    assert our_metrics["actor/pg_clipfrac"] == pytest.approx(their_metrics["actor/pg_clipfrac"])
    assert our_metrics["actor/pg_clipfrac_lower"] == pytest.approx(their_metrics["actor/pg_clipfrac_lower"])
    assert our_metrics["actor/pg_clipfrac"] > 0 and our_metrics["actor/pg_clipfrac_lower"] > 0


def test_policy_loss_refuses_rollout_importance_weights():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="rollout_is=null"):
        adapter.thinklean_policy_loss(x, x, x, x.bool(), "token-mean", _actor_config(), rollout_is_weights=x + 1)


# ------------------------------------------------------------------------- documented config


def test_the_documented_overrides_compose_with_verls_config_and_drive_the_estimator():
    from hydra import compose, initialize_config_dir
    from verl.utils.config import omega_conf_to_dataclass

    block = re.search(r"```bash\n(python3 -m verl\.trainer\.main_ppo.*?)```", DOCS.read_text(), re.DOTALL).group(1)
    overrides = [line.strip().rstrip("\\").strip() for line in block.splitlines()[1:] if line.strip()]
    keep = ("algorithm.", "+algorithm.", "actor_rollout_ref.actor.", "actor_rollout_ref.rollout.n", "reward.")
    overrides = [o.replace("'", "") for o in overrides if o.startswith(keep)]
    assert any(o.startswith("algorithm.adv_estimator=hmpo") for o in overrides)
    with initialize_config_dir(config_dir=str(VERL_DIR / "trainer" / "config"), version_base=None):
        config = compose("ppo_trainer", overrides=overrides)
    actor = omega_conf_to_dataclass(config.actor_rollout_ref.actor)
    assert core_algos.get_policy_loss_fn(actor.policy_loss.loss_mode) is adapter.thinklean_policy_loss
    estimator = core_algos.get_adv_estimator_fn(config.algorithm.adv_estimator)
    index = np.array(["a"] * 4, dtype=object)
    rewards, mask = _scored([10, 20, 30, 40], [1, 1, 1, 1])
    advantages, _ = estimator(token_level_rewards=rewards, response_mask=mask, index=index, config=config.algorithm)
    a = 0.5 / math.sqrt(1 / 3)
    assert _per_sequence(advantages, mask) == pytest.approx([a, a, -a, -a], abs=1e-5)
