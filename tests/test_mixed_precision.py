"""bf16 in the RL loop: the update's forwards under autocast (``bf16``) and rollouts from a bf16
copy of the policy (``rollout_dtype``)."""

import warnings

import pytest
import torch

from thinklean.data.jsonl import Example
from thinklean.methods.config import ConfigError
from thinklean.models.tiny import build_model
from thinklean.train.rl import RLConfig, RLTrainer

PROMPTS = [Example(prompt=f"Start with {i}. Add 1. What is the result?", answer=str(i + 1), difficulty=1) for i in range(1, 9)]


def _fresh(tokenizer):
    return build_model(tokenizer, seed=0, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=4, intermediate_size=128)


def _config(**kw):
    base = dict(steps=1, prompts_per_step=4, samples_per_prompt=8, max_new_tokens=8, lr=5e-3, save_every=0,
                micro_batch_size=8)
    return RLConfig(**{**base, **kw})


def _update_run(digit_trainer, tokenizer, run_dir, bf16: bool):
    """One step; returns the dtypes of every linear output during the update and the gradients."""
    model = _fresh(tokenizer)
    trainer = digit_trainer(model, tokenizer, _config(bf16=bf16, ppo_epochs=2), PROMPTS, run_dir)
    dtypes, grads, in_update = set(), [], [False]
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda m, i, out: dtypes.add(out.dtype) if in_update[0] else None)
    trainer.optimizer.register_step_pre_hook(lambda *a: grads.append([p.grad.clone() for p in model.parameters()]))
    update = trainer.update

    def watched(batch):
        in_update[0] = True
        try:
            return update(batch)
        finally:
            in_update[0] = False

    trainer.update = watched
    trainer.train(show_progress=False)
    return dtypes, grads


def test_bf16_runs_every_update_forward_in_bf16_with_the_fp32_gradient(digit_trainer, tmp_path, tiny_tokenizer):
    """ppo_epochs=2: the old log-prob pass, the shared prompt forward and the micro-batches all run
    in bf16; the first optimizer step's gradient is the fp32 one up to bf16 rounding."""
    dtypes32, grads32 = _update_run(digit_trainer, tiny_tokenizer, tmp_path / "fp32", bf16=False)
    dtypes16, grads16 = _update_run(digit_trainer, tiny_tokenizer, tmp_path / "bf16", bf16=True)
    assert dtypes32 == {torch.float32}
    assert dtypes16 == {torch.bfloat16}
    flat32 = torch.cat([g.flatten() for g in grads32[0]])
    flat16 = torch.cat([g.flatten() for g in grads16[0]])
    assert all(g.dtype == torch.float32 for g in grads16[0])  # the master weights stay fp32
    assert not torch.equal(flat32, flat16)
    assert torch.nn.functional.cosine_similarity(flat32, flat16, dim=0) > 0.99


def test_bf16_rollout_copy_holds_the_weights_of_the_last_update(digit_trainer, tmp_path, tiny_tokenizer):
    model = _fresh(tiny_tokenizer)
    trainer = digit_trainer(model, tiny_tokenizer, _config(steps=3, rollout_dtype="bfloat16"), PROMPTS, tmp_path)
    policy_before_rollout, sampled_with = [], []
    rollout_model = trainer._rollout_model

    def watched():
        policy_before_rollout.append([p.detach().clone() for p in model.parameters()])
        copy = rollout_model()
        sampled_with.append([p.clone() for p in copy.parameters()])
        return copy

    trainer._rollout_model = watched
    trainer.train(show_progress=False)
    assert len(sampled_with) == 3
    for policy, sampled in zip(policy_before_rollout, sampled_with):
        assert all(s.dtype == torch.bfloat16 and torch.equal(s, p.to(torch.bfloat16)) for s, p in zip(sampled, policy))
    assert not torch.equal(sampled_with[0][0], sampled_with[2][0])  # the updates reached the copy
    copy = trainer._rollout_copy
    assert copy is not model and next(model.parameters()).dtype == torch.float32
    buffers = dict(copy.named_buffers())
    assert buffers and all(b.dtype == dict(model.named_buffers())[name].dtype for name, b in buffers.items())


def test_rollout_dtype_errors(tmp_path, tiny_model, tiny_tokenizer, monkeypatch):
    from thinklean.methods.litereason import LiteReasonTrainer

    with pytest.raises(ConfigError, match="rollout_dtype must be one of model, bfloat16, got 'fp8'"):
        RLTrainer(tiny_model, tiny_tokenizer, RLConfig(rollout_dtype="fp8"), PROMPTS, tmp_path)
    with warnings.catch_warnings(), pytest.raises(ConfigError, match="litereason: rollout_dtype 'bfloat16' is not supported"):
        warnings.simplefilter("error")  # refused before the (missing) projector is looked for
        LiteReasonTrainer(tiny_model, tiny_tokenizer, RLConfig(method="litereason", rollout_dtype="bfloat16"),
                          PROMPTS, tmp_path)
    monkeypatch.setattr("thinklean.train.rl.vllm_problem", lambda: None)
    with pytest.raises(ConfigError, match="serves the model in its own dtype"):
        RLTrainer(tiny_model, tiny_tokenizer, RLConfig(rollout_backend="vllm", rollout_dtype="bfloat16"), PROMPTS,
                  tmp_path)


def test_cli_train_bf16_flags_reach_the_config(tmp_path, tiny_model_dir):
    import json

    from thinklean.cli import main

    out = tmp_path / "run"
    assert main(["train", "--model", str(tiny_model_dir), "--steps", "1", "--max-new-tokens", "8", "--bf16",
                 "--rollout-dtype", "bfloat16", "--output", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["bf16"] is True and config["rollout_dtype"] == "bfloat16"
