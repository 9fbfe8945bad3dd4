"""Rollouts with vLLM (``thinklean train --rollout vllm``; ``pip install 'thinklean[gpu]'``).

Same contract as :func:`thinklean.rollout.generate`: a :class:`RolloutBatch` with the prompt and
response tokens the trainer scores. The engine is colocated: it lives in the training process, on
the training GPU, with tensor parallel size 1 and vLLM's ``external_launcher`` executor, so each
DDP process owns one engine and its model runner is reachable in-process (the layout TRL's
colocate mode uses, for the vLLM versions in :data:`SUPPORTED_VLLM`).

Weight sync: the engine starts from a safetensors copy of the policy written when the first
rollout is asked for; :meth:`VLLMRollout.sync_weights` then pushes every parameter into the
engine's model through its own ``load_weights`` (Hugging Face parameter names) and clears the
prefix cache. The trainer calls it before a rollout whenever the policy was updated since the last
one.

Differences from the HF engine, by design:

- each row is one request seeded ``seed + row``: reproducible for a fixed vLLM version and GPU,
  but not the same samples the HF engine draws for the same seed;
- ``logprobs`` are vLLM's ``processed_logprobs`` (after temperature and top-p; the HF engine keeps
  the full tempered distribution), from the engine's kernels and dtype. thinklean's loss re-scores
  the response with the training model, so they are kept for inspection only;
- a forced prefix is appended to the prompt; its tokens' log-probs come from ``prompt_logprobs``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from thinklean.models.tiny import save_pretrained
from thinklean.rollout.engine import (
    RolloutBatch,
    SamplingConfig,
    assemble_batch,
    check_arguments,
    eos_token_ids,
    pad_token_id,
    tokenize_rows,
)

SUPPORTED_VLLM = ">=0.22,<0.32"
"""vLLM versions whose in-process model runner sits where :func:`engine_model` looks for it."""


def vllm_installed() -> bool:
    """Whether the ``vllm`` package can be imported (without importing it)."""
    return importlib.util.find_spec("vllm") is not None


def vllm_problem() -> str | None:
    """Why vLLM rollouts cannot run here (with the fix), or None when they can."""
    if not vllm_installed():
        return f"--rollout vllm needs vLLM {SUPPORTED_VLLM}: pip install 'thinklean[gpu]'"
    if not torch.cuda.is_available():
        return "--rollout vllm needs a CUDA GPU and this machine has none; use --rollout hf"
    return None


@dataclass
class VLLMRequest:
    """One response row: the token ids vLLM continues and the ``SamplingParams`` keywords.

    ``prompt_ids`` is the prompt followed by the row's forced prefix (``prefix_len`` tokens).
    ``sampling`` is None when the prefix already fills ``max_new_tokens``: nothing is generated.
    """

    prompt_ids: list[int]
    prefix_len: int
    sampling: dict[str, Any] | None = None


def build_requests(row_prompts: list[list[int]], prefix_tokens: list[list[int]], config: SamplingConfig,
                   eos_ids: list[int], seed: int) -> list[VLLMRequest]:
    """One :class:`VLLMRequest` per row; row ``i`` samples with seed ``seed + i`` and may write
    ``config.max_new_tokens - len(prefix_tokens[i])`` tokens."""
    requests = []
    for i, (prompt, prefix) in enumerate(zip(row_prompts, prefix_tokens)):
        budget = config.max_new_tokens - len(prefix)
        sampling = None
        if budget > 0:
            sampling = {
                "n": 1,
                "temperature": config.temperature,
                "top_p": config.top_p,
                "max_tokens": budget,
                "seed": seed + i,
                "logprobs": 0,  # the sampled token's log-prob only
                "prompt_logprobs": 0 if prefix else None,
                "stop": list(config.stop_strings) or None,
                "include_stop_str_in_output": True,
                "detokenize": bool(config.stop_strings),  # texts are decoded here; vLLM only needs them for stops
                "stop_token_ids": list(eos_ids),
            }
        requests.append(VLLMRequest(prompt + prefix, len(prefix), sampling))
    return requests


def rows_from_outputs(requests: list[VLLMRequest], outputs: list[Any]) -> tuple[list[list[int]], list[torch.Tensor], list[bool]]:
    """Per-row response tokens (forced prefix first), their log-probs and finished flags.

    ``outputs`` are vLLM ``RequestOutput`` objects for the requests whose ``sampling`` is not None,
    in order. A row is finished when vLLM stopped it (EOS, stop token or stop string:
    ``finish_reason == "stop"``), not when it hit ``max_tokens``.
    """
    responses, logprobs, finished = [], [], []
    pending = iter(outputs)
    for request in requests:
        prefix = request.prompt_ids[len(request.prompt_ids) - request.prefix_len:]
        if request.sampling is None:
            responses.append(prefix)
            logprobs.append(torch.zeros(len(prefix)))
            finished.append(False)
            continue
        output = next(pending)
        completion = output.outputs[0]
        generated = list(completion.token_ids)
        prefix_logprobs = []
        if prefix:
            prompt_entries = output.prompt_logprobs[len(output.prompt_logprobs) - len(prefix):]
            prefix_logprobs = [entry[token].logprob for entry, token in zip(prompt_entries, prefix)]
        sampled_logprobs = [entry[token].logprob for entry, token in zip(completion.logprobs, generated)]
        responses.append(prefix + generated)
        logprobs.append(torch.tensor(prefix_logprobs + sampled_logprobs, dtype=torch.float32))
        finished.append(completion.finish_reason == "stop")
    return responses, logprobs, finished


def engine_arguments(weights_dir: str, dtype: str, seed: int, gpu_memory_utilization: float,
                     max_model_len: int | None) -> dict[str, Any]:
    """``vllm.LLM`` keyword arguments of a colocated engine serving the checkpoint in ``weights_dir``."""
    return dict(model=weights_dir, tokenizer=weights_dir, dtype=dtype, seed=seed,
                gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                tensor_parallel_size=1, distributed_executor_backend="external_launcher",
                logprobs_mode="processed_logprobs", enable_prefix_caching=True, trust_remote_code=False)


def engine_model(llm: Any) -> torch.nn.Module:
    """The engine's in-process model (it has ``load_weights``); raises with the supported range."""
    try:
        return llm.llm_engine.model_executor.driver_worker.model_runner.model
    except AttributeError as e:
        version = importlib.metadata.version("vllm") if vllm_installed() else "(not installed)"
        raise RuntimeError(f"cannot reach vLLM {version}'s model runner for the weight sync (thinklean supports "
                           f"vLLM {SUPPORTED_VLLM} with the external_launcher executor)") from e


class VLLMRollout:
    """A vLLM engine producing :class:`RolloutBatch` es; see the module docstring.

    ``llm`` is a ``vllm.LLM`` (or any object with its ``generate``/``reset_prefix_cache`` methods and
    model runner path); ``sampling_params`` builds a request's sampling parameters from keywords
    (``vllm.SamplingParams``).
    """

    def __init__(self, llm: Any, tokenizer: Any, eos_ids: list[int], sampling_params: Any) -> None:
        self.llm = llm
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.sampling_params = sampling_params
        self._weights_dir: tempfile.TemporaryDirectory | None = None

    @classmethod
    def launch(cls, model: torch.nn.Module, tokenizer: Any, *, checkpoint: str | Path | None = None,
               gpu_memory_utilization: float = 0.3, seed: int = 0, max_model_len: int | None = None) -> VLLMRollout:
        """Start a colocated engine on the current CUDA device holding ``model``'s weights: served
        from ``checkpoint`` (an HF directory with those weights, in its own dtype) when given, else
        from a safetensors copy of ``model`` in its parameters' dtype."""
        problem = vllm_problem()
        if problem:
            raise RuntimeError(problem)
        from vllm import LLM, SamplingParams

        weights_dir = None
        if checkpoint is None:
            weights_dir = tempfile.TemporaryDirectory(prefix="thinklean-vllm-")
            save_pretrained(model, tokenizer, weights_dir.name)
            source, dtype = weights_dir.name, str(next(model.parameters()).dtype).removeprefix("torch.")
        else:
            source, dtype = str(checkpoint), "auto"
        _single_process_rendezvous()
        llm = LLM(**engine_arguments(source, dtype, seed, gpu_memory_utilization, max_model_len))
        engine = cls(llm, tokenizer, eos_token_ids(model, tokenizer), SamplingParams)
        engine._weights_dir = weights_dir
        return engine

    @torch.no_grad()
    def sync_weights(self, model: torch.nn.Module) -> None:
        """Copy every parameter of ``model`` (unwrapped, HF names) into the engine; clear its prefix cache."""
        engine_model(self.llm).load_weights((name, p.detach()) for name, p in model.named_parameters())
        self.llm.reset_prefix_cache()

    def generate(self, prompts: list[str], num_samples: int = 1, config: SamplingConfig = SamplingConfig(),
                 forced_prefixes: list[str] | None = None, seed: int = 0) -> RolloutBatch:
        """Sample ``num_samples`` responses per prompt; arguments as :func:`thinklean.rollout.generate`
        (``seed`` replaces its generator)."""
        check_arguments(prompts, num_samples, config, forced_prefixes)
        row_prompts, prefix_tokens = tokenize_rows(self.tokenizer, prompts, num_samples, config, forced_prefixes)
        requests = build_requests(row_prompts, prefix_tokens, config, self.eos_ids, seed)
        submitted = [r for r in requests if r.sampling is not None]
        outputs = []
        if submitted:
            outputs = self.llm.generate([{"prompt_token_ids": r.prompt_ids} for r in submitted],
                                        [self.sampling_params(**r.sampling) for r in submitted], use_tqdm=False)
        responses, logprobs, finished = rows_from_outputs(requests, outputs)
        return assemble_batch(self.tokenizer, row_prompts, responses, logprobs, finished, prefix_tokens, num_samples,
                              pad_token_id(self.tokenizer), self.eos_ids)


def _single_process_rendezvous() -> None:
    """The environment ``external_launcher`` reads; ``accelerate launch`` sets it for DDP runs."""
    defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
