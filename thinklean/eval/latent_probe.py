"""Does LiteReason's latent channel carry anything? Four numbers on a fixed probe set.

Every probe problem (held-out embedded-task problems, the same for projector SFT and RL so the
numbers compare across phases) is decoded greedily from the LiteReason prompt with the forced
prefix ``<think> <implicit_thought>K</implicit_thought>``, i.e. K latent steps and one token after
them. Then:

- ``probe_latent_norm``, ``probe_latent_norm_max``: median and largest L2 norm of all latent input
  embeddings (every problem, every step; the median alone can look healthy while some inputs are
  a million times too large);
- ``probe_embedding_norm``: median L2 norm of the rows of the model's input embedding matrix,
  the scale the LM was trained to read;
- ``probe_latent_cosine``: mean cosine similarity of the first latent input between every two
  problems (near 1: the projector writes the same vector whatever the problem);
- ``probe_swap_kl``: KL(original || swapped) in nats of the next-token distribution after the
  latent segment when each problem is fed the next problem's latent inputs (a cyclic shift),
  averaged over problems (0: the latents do not influence what comes next).

A handful of forward passes: cheap enough to run every few training steps.
"""

from __future__ import annotations

from typing import Any

import torch

from thinklean.data.formats import THINK, format_prompt
from thinklean.data.litereason import latent_segment, litereason_prompt
from thinklean.eval.evaluate import arith_examples
from thinklean.models.projector import ReasoningProjector, embedding_norm
from thinklean.rollout.engine import SamplingConfig
from thinklean.rollout.latent import generate_latent, latent_forward

PROBE_PROBLEMS = 8
PROBE_STEPS = 3
PROBE_EVERY = 10  # training steps between two probes
PROBE_KEYS = ("probe_latent_norm", "probe_latent_norm_max", "probe_embedding_norm", "probe_latent_cosine",
              "probe_swap_kl")


class LatentProbe:
    """The probe set: ``problems`` held-out embedded-task prompts (test split, ``seed``) with a
    forced segment of ``steps`` latent steps. :meth:`measure` returns the four numbers."""

    def __init__(self, tokenizer: Any, problems: int = PROBE_PROBLEMS, steps: int = PROBE_STEPS, seed: int = 0):
        if problems < 2:
            raise ValueError(f"LatentProbe: the cosine and swap need at least 2 problems, got {problems}")
        self.tokenizer = tokenizer
        self.steps = steps
        self.prompts = [format_prompt(litereason_prompt(e.prompt), tokenizer)
                        for e in arith_examples(problems, "test", seed)]
        self.prefix = f"{THINK} {latent_segment(steps)}"
        self.prefix_tokens = len(tokenizer(self.prefix, add_special_tokens=False)["input_ids"])

    @torch.no_grad()
    def measure(self, model: torch.nn.Module, projector: ReasoningProjector) -> dict[str, float]:
        """The :data:`PROBE_KEYS` of ``model`` with ``projector``; training flags are restored."""
        if self.steps > projector.max_steps:
            raise ValueError(f"LatentProbe: {self.steps} probe steps but the projector allows {projector.max_steps}")
        model_training, projector_training = model.training, projector.training
        model.eval()
        projector.eval()
        try:
            # one token past the prefix: the output at the last latent step predicts it
            sampling = SamplingConfig(max_new_tokens=self.prefix_tokens + 1, temperature=0.0)
            batch = generate_latent(model, self.tokenizer, projector, self.prompts, 1, sampling,
                                    forced_prefixes=[self.prefix] * len(self.prompts))
            vectors = torch.stack(batch.latent_inputs).float()  # [problems, steps, d]
            positions = torch.tensor([row[0][0] for row in batch.latent_segments], device=vectors.device)

            def next_token_logprobs(latent_inputs: list[torch.Tensor]) -> torch.Tensor:
                logits = latent_forward(model, projector, batch.prompt_ids, batch.prompt_mask, batch.response_ids,
                                        batch.response_mask, batch.latent_segments,
                                        latent_inputs=latent_inputs).logits
                rows = torch.arange(len(latent_inputs), device=logits.device)
                return torch.log_softmax(logits[rows, positions].float(), -1)  # [problems, V]

            original = next_token_logprobs(batch.latent_inputs)
            shifted = batch.latent_inputs[1:] + batch.latent_inputs[:1]
            swapped = next_token_logprobs(shifted)
            swap_kl = (original.exp() * (original - swapped)).sum(-1).mean()
            first = torch.nn.functional.normalize(vectors[:, 0], dim=-1)
            n = first.shape[0]
            cosine = ((first @ first.T).sum() - first.pow(2).sum()) / (n * (n - 1))  # off-diagonal mean
            norms = vectors.norm(dim=-1)
            return {"probe_latent_norm": float(norms.median()), "probe_latent_norm_max": float(norms.max()),
                    "probe_embedding_norm": embedding_norm(model),
                    "probe_latent_cosine": float(cosine), "probe_swap_kl": float(swap_kl)}
        finally:
            model.train(model_training)
            projector.train(projector_training)
