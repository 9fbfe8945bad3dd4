"""BuPO (bupo.md): Internal Policy Alignment on layer ``l`` for the first ``s_inter`` rollout
steps, then plain GRPO on the full model.

During IPA both the old and the new log-probs come from the internal layer policy
``softmax(h^l E_u^T)`` (no final norm by default); rollouts still come from the full model and
advantages are the usual group-normalised ones. Only layers ``1..l`` run in the update, so the
layers above get no gradient (they are not frozen: the optimizer and its state carry on into
the GRPO phase).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from thinklean.methods.registry import DemoStage, MethodFlag, MethodSpec, register_method
from thinklean.models.internal import layer_policy_logits
from thinklean.train.rl import RLTrainer, StepBatch

IPA_SHARE = 0.1  # the demo's IPA phase: this share of its steps, at least 1 (bupo.md: about 10%)
ANALYZE_PROMPTS = 32  # held-out prompts for the demo report's entropy plots, as `thinklean analyze --n 32`


@dataclass(frozen=True)
class BuPOSchedule:
    """IPA on ``layer`` (1-based) for the first ``s_inter`` steps; ``apply_final_norm`` option."""

    layer: int = 2
    s_inter: int = 10
    apply_final_norm: bool = False


class BuPOTrainer(RLTrainer):
    """GRPO whose policy log-probs come from an internal layer policy during the IPA phase.

    ``config.method_kwargs``: ``layer`` (default 2), ``s_inter`` (default 10),
    ``apply_final_norm`` (default False).
    """

    Settings = BuPOSchedule

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.schedule = self.settings
        if self.schedule.s_inter > 0.1 * self.config.steps:
            warnings.warn(
                f"BuPO: s_inter={self.schedule.s_inter} is more than 10% of {self.config.steps} steps; "
                "a long IPA phase degrades training (bupo.md)", stacklevel=2,
            )

    @property
    def in_ipa_phase(self) -> bool:
        return self.step_index < self.schedule.s_inter

    def response_logits(self, model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        position_ids: torch.Tensor, T: int) -> torch.Tensor:
        if not self.in_ipa_phase:
            return super().response_logits(model, input_ids, attention_mask, position_ids, T)
        inner = self.accelerator.unwrap_model(model)
        # under FSDP through the root module, whose forward gathers the sharded parameters
        return layer_policy_logits(inner, input_ids, attention_mask, position_ids, self.schedule.layer,
                                   self.schedule.apply_final_norm, logits_to_keep=T + 1, whole_model=self.fsdp)[:, :-1]

    def on_rollout(self, step: int, step_batch: StepBatch) -> None:
        """Logs ``ipa_phase``: 1 while the step's update is on the internal layer policy."""
        step_batch.info["ipa_phase"] = float(step < self.schedule.s_inter)


def entropy_comparison(stage: DemoStage, names: list[str]) -> list[Path]:
    """Per-layer entropies of the base model against the demo's trained ``grpo`` (when run) and
    ``bupo`` models, as ``thinklean analyze --compare base OUTPUT/grpo/model OUTPUT/bupo/model
    --n 32`` with the budget's ``max_new_tokens``, written to ``OUTPUT/analyze``. Returns the two
    plots for the report (none without a trained BuPO model)."""
    output = stage.output
    trained = [(m, output / m / "model") for m in ("grpo", "bupo") if m in names and (output / m / "model").is_dir()]
    if "bupo" not in dict(trained):
        return []
    from thinklean.analysis.entropy import analyze_model, write_analysis
    from thinklean.data.formats import format_prompt
    from thinklean.eval.evaluate import arith_examples
    from thinklean.models.tiny import load_pretrained

    stage.console.print(f"per-layer entropies (thinklean analyze) of base, {', '.join(dict(trained))} -> "
                        f"{output / 'analyze'}")
    examples = arith_examples(ANALYZE_PROMPTS, "test", stage.seed)
    results = []
    for label, model_dir in [("base", stage.base_model), *trained]:
        model, tokenizer = load_pretrained(model_dir)
        prompts = [format_prompt(e.prompt, tokenizer) for e in examples]
        result = analyze_model(model, tokenizer, prompts, max_new_tokens=stage.budget.max_new_tokens, seed=stage.seed,
                               name=str(model_dir))
        results.append({**result, "label": label})
    paths = write_analysis(results[1], output / "analyze", compare=results[0], others=results[2:])
    return [paths["entropy_plot"], paths["change_plot"]]


register_method(MethodSpec(
    "bupo", BuPOTrainer, "BuPO: internal-layer policy alignment, then GRPO",
    flags=(MethodFlag("--layer", "layer", "internal layer optimised during IPA (1-based)", int, at_least=1),
           MethodFlag("--s-inter", "s_inter", "IPA rollout steps before full GRPO", int, at_least=0)),
    # GRPO's optimisation (not bupo.yaml's token-mean, dual clip and weight decay), so that the
    # IPA phase is the only difference from the demo's grpo row
    demo_rows={"bupo": {"loss_agg": "seq-mean-token-mean", "dual_clip": None, "weight_decay": 0.0}},
    demo_settings=lambda steps: {"s_inter": max(1, round(IPA_SHARE * steps))},
    report=entropy_comparison,
))
