"""The vLLM rollout backend on CPU: request building and output conversion by hand, the whole
backend against the HF engine through a stand-in engine that decodes like vLLM, the trainer's
weight sync, and the errors. The real engine is exercised in tests/gpu/test_vllm_gpu.py."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch

from thinklean.data.formats import format_prompt
from thinklean.data.jsonl import Example
from thinklean.rollout import SamplingConfig, generate
from thinklean.rollout import vllm_engine
from thinklean.rollout.engine import eos_token_ids
from thinklean.rollout.vllm_engine import (
    VLLMRequest,
    VLLMRollout,
    build_requests,
    engine_arguments,
    engine_model,
    rows_from_outputs,
)
from thinklean.train.rl import ConfigError, RLConfig, RLTrainer


def _lp(token: int, value: float) -> dict:
    return {token: SimpleNamespace(logprob=value)}


def test_build_requests_budgets_seeds_and_prefixes():
    config = SamplingConfig(max_new_tokens=5, temperature=0.7, top_p=0.9, stop_strings=("</answer>",))
    requests = build_requests([[1, 2], [1, 2], [3]], [[], [7, 8], [7, 8, 9, 9, 9]], config, [0, 4], seed=100)
    assert [r.prompt_ids for r in requests] == [[1, 2], [1, 2, 7, 8], [3, 7, 8, 9, 9, 9]]
    assert [r.prefix_len for r in requests] == [0, 2, 5]
    first, second, full = (r.sampling for r in requests)
    assert full is None  # the forced prefix fills the budget: nothing to sample
    assert (first["max_tokens"], second["max_tokens"]) == (5, 3)
    assert (first["seed"], second["seed"]) == (100, 101)
    assert (first["prompt_logprobs"], second["prompt_logprobs"]) == (None, 0)
    assert first["stop"] == ["</answer>"] and first["include_stop_str_in_output"] and first["detokenize"]
    assert first["stop_token_ids"] == [0, 4] and first["logprobs"] == 0 and first["n"] == 1
    assert (first["temperature"], first["top_p"]) == (0.7, 0.9)
    plain = build_requests([[1]], [[]], SamplingConfig(max_new_tokens=2), [0], 0)[0].sampling
    assert plain["stop"] is None and not plain["detokenize"]


def test_rows_from_outputs_puts_the_prefix_first_and_reads_finish_reasons():
    requests = [VLLMRequest([1, 2], 0, {}), VLLMRequest([1, 2, 7, 8], 2, {}), VLLMRequest([3, 7], 1, None)]
    outputs = [
        SimpleNamespace(prompt_logprobs=None, outputs=[SimpleNamespace(
            token_ids=[5, 6, 0], logprobs=[_lp(5, -0.5), _lp(6, -1.0), _lp(0, -0.25)], finish_reason="stop")]),
        SimpleNamespace(prompt_logprobs=[None, _lp(2, -9.0), _lp(7, -2.0), _lp(8, -3.0)], outputs=[SimpleNamespace(
            token_ids=[5], logprobs=[_lp(5, -0.125)], finish_reason="length")]),
    ]
    responses, logprobs, finished = rows_from_outputs(requests, outputs)
    assert responses == [[5, 6, 0], [7, 8, 5], [7]]
    assert logprobs[0].tolist() == [-0.5, -1.0, -0.25]
    assert logprobs[1].tolist() == [-2.0, -3.0, -0.125]  # prefix log-probs from prompt_logprobs, then sampled
    assert logprobs[2].tolist() == [0.0]
    assert finished == [True, False, False]


class FakeVLLM:
    """Stands in for ``vllm.LLM``: same call shapes and output objects, decoding with a private copy
    of the model by full forwards (greedy, or sampling with a per-request seed), so the backend's
    plumbing can be compared token for token with the HF engine. ``policy``: the trainer's model,
    whose weights each ``generate`` call checks its copy against."""

    def __init__(self, model: torch.nn.Module, policy: torch.nn.Module | None = None) -> None:
        self.model = copy.deepcopy(model).eval()
        self.policy = policy
        self.loads = 0
        self.cache_resets = 0
        self.in_sync: list[bool] = []
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=SimpleNamespace(
            model_runner=SimpleNamespace(model=SimpleNamespace(load_weights=self._load_weights)))))

    def _load_weights(self, weights) -> None:
        params = dict(self.model.named_parameters())
        for name, tensor in weights:
            params[name].data.copy_(tensor)
        self.loads += 1

    def reset_prefix_cache(self) -> None:
        self.cache_resets += 1

    @torch.no_grad()
    def generate(self, prompts, sampling_params, use_tqdm=True):
        if self.policy is not None:
            mine = dict(self.model.named_parameters())
            self.in_sync.append(all(torch.equal(mine[n], p) for n, p in self.policy.named_parameters()))
        return [self._one(p["prompt_token_ids"], sp) for p, sp in zip(prompts, sampling_params)]

    def _one(self, prompt: list[int], sp) -> SimpleNamespace:
        generator = torch.Generator().manual_seed(sp.seed)
        ids = list(prompt)
        tokens, entries = [], []
        finish = "length"
        logits = self.model(torch.tensor([ids])).logits[0].float()
        prompt_logprobs = None
        if sp.prompt_logprobs == 0:
            scored = torch.log_softmax(logits[:-1], -1)
            prompt_logprobs = [None] + [_lp(t, float(scored[i, t])) for i, t in enumerate(ids[1:])]
        for _ in range(sp.max_tokens):
            last = logits[-1]
            if sp.temperature == 0:
                token = int(last.argmax())
                logprobs = torch.log_softmax(last, -1)
            else:
                logprobs = torch.log_softmax(last / sp.temperature, -1)
                token = int(torch.multinomial(logprobs.exp(), 1, generator=generator))
            tokens.append(token)
            entries.append(_lp(token, float(logprobs[token])))
            ids.append(token)
            if token in sp.stop_token_ids:
                finish = "stop"
                break
            logits = self.model(torch.tensor([ids])).logits[0].float()
        return SimpleNamespace(prompt_logprobs=prompt_logprobs, outputs=[SimpleNamespace(
            token_ids=tokens, logprobs=entries, finish_reason=finish)])


def _backend(model, tokenizer, policy=None) -> VLLMRollout:
    return VLLMRollout(FakeVLLM(model, policy), tokenizer, eos_token_ids(model, tokenizer), SimpleNamespace)


def test_greedy_rollouts_match_the_hf_engine(tiny_model, tiny_tokenizer):
    """Same model, greedy: the backend's batch equals the HF engine's, forced prefixes, the EOS
    kept in the mask but not the text, and rows cut at the cap included."""
    prompts = [format_prompt(q, tiny_tokenizer) for q in ("What is 2 + 3?", "Start with 4. Add 1.")]
    prefixes = ["<think>", "", "<no_think>", "<think>"]
    config = SamplingConfig(max_new_tokens=12, temperature=0.0)
    ours = _backend(tiny_model, tiny_tokenizer).generate(prompts, 2, config, prefixes, seed=3)
    reference = generate(tiny_model, tiny_tokenizer, prompts, 2, config, prefixes)
    for name in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "lengths", "group_ids", "finished",
                 "forced_prefix_lens"):
        assert torch.equal(getattr(ours, name), getattr(reference, name)), name
    assert ours.texts == reference.texts
    torch.testing.assert_close(ours.logprobs, reference.logprobs, atol=1e-4, rtol=0)
    assert ours.forced_prefix_lens.tolist()[1] == 0 and ours.forced_prefix_lens.tolist()[0] > 0


def test_sampled_rollouts_are_seeded_per_row(tiny_model, tiny_tokenizer):
    prompts = [format_prompt("What is 2 + 3?", tiny_tokenizer)]
    backend = _backend(tiny_model, tiny_tokenizer)
    config = SamplingConfig(max_new_tokens=10, temperature=1.0)
    a = backend.generate(prompts, 4, config, seed=5)
    b = backend.generate(prompts, 4, config, seed=5)
    c = backend.generate(prompts, 4, config, seed=6)
    assert a.texts == b.texts and torch.equal(a.response_ids, b.response_ids)
    assert a.texts != c.texts
    assert len(set(a.texts)) > 1  # rows of one prompt get different seeds


def test_a_prefix_that_fills_the_budget_is_not_sent(tiny_model, tiny_tokenizer):
    backend = _backend(tiny_model, tiny_tokenizer)
    prefix = "<think>"
    n = len(tiny_tokenizer(prefix, add_special_tokens=False)["input_ids"])
    batch = backend.generate([format_prompt("What is 2 + 3?", tiny_tokenizer)], 1,
                             SamplingConfig(max_new_tokens=n, temperature=0.0), [prefix])
    assert batch.lengths.tolist() == [n] and batch.finished.tolist() == [False]


def test_sync_weights_pushes_every_parameter_and_clears_the_prefix_cache(tiny_model, tiny_tokenizer):
    backend = _backend(tiny_model, tiny_tokenizer)
    with torch.no_grad():
        for p in tiny_model.parameters():
            p.add_(0.01)
    backend.sync_weights(tiny_model)
    fake = backend.llm
    assert fake.loads == 1 and fake.cache_resets == 1
    mine = dict(fake.model.named_parameters())
    assert all(torch.equal(mine[n], p) for n, p in tiny_model.named_parameters())


def test_engine_model_names_the_supported_versions():
    with pytest.raises(RuntimeError, match="supports vLLM >=0.22"):
        engine_model(SimpleNamespace(llm_engine=SimpleNamespace()))


PROMPTS = [Example(prompt=f"Start with {i}. Add 1. What is the result?", answer=str(i + 1), difficulty=1)
           for i in range(1, 9)]


def test_trainer_syncs_the_engine_before_each_rollout_after_an_update(digit_trainer, tmp_path, tiny_model, tiny_tokenizer, monkeypatch):
    """3 steps with dynamic sampling (several rollouts per step): the engine is started once, gets the
    weights once per update, and every rollout samples from the trainer's current weights."""
    launched = []

    def launch(model, tokenizer, **kwargs):
        launched.append(kwargs)
        return _backend(model, tokenizer, policy=model)

    monkeypatch.setattr(VLLMRollout, "launch", staticmethod(launch))
    monkeypatch.setattr("thinklean.train.rl.vllm_problem", lambda: None)
    config = RLConfig(steps=3, prompts_per_step=2, samples_per_prompt=4, max_new_tokens=6, lr=5e-3, save_every=0,
                      rollout_backend="vllm", dynamic_sampling=True, max_resample_rounds=2)
    before = copy.deepcopy(tiny_model)
    trainer = digit_trainer(tiny_model, tiny_tokenizer, config, PROMPTS, tmp_path)
    trainer.train(show_progress=False)
    fake = trainer._vllm.llm
    assert len(launched) == 1 and launched[0]["gpu_memory_utilization"] == 0.3
    assert len(fake.in_sync) > 3  # some steps resampled
    assert all(fake.in_sync)
    assert fake.loads == 2 == fake.cache_resets  # before the rollouts of steps 2 and 3
    assert any(not torch.equal(a, b) for a, b in zip(before.parameters(), tiny_model.parameters()))


def test_rollout_backend_errors(tmp_path, tiny_model, tiny_tokenizer, monkeypatch):
    with pytest.raises(ConfigError, match="rollout_backend must be one of hf, vllm"):
        RLTrainer(tiny_model, tiny_tokenizer, RLConfig(rollout_backend="sglang"), PROMPTS, tmp_path)
    monkeypatch.setattr(vllm_engine, "vllm_installed", lambda: False)
    with pytest.raises(ConfigError, match=r"pip install 'thinklean\[gpu\]'"):
        RLTrainer(tiny_model, tiny_tokenizer, RLConfig(rollout_backend="vllm"), PROMPTS, tmp_path)
    monkeypatch.setattr(vllm_engine, "vllm_installed", lambda: True)
    monkeypatch.setattr(vllm_engine.torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        RLTrainer(tiny_model, tiny_tokenizer, RLConfig(rollout_backend="vllm"), PROMPTS, tmp_path)


def test_litereason_refuses_the_vllm_backend(tmp_path, tiny_model, tiny_tokenizer):
    from thinklean.methods.litereason import LiteReasonTrainer

    with pytest.raises(ConfigError, match="input embeddings"):
        LiteReasonTrainer(tiny_model, tiny_tokenizer, RLConfig(method="litereason", rollout_backend="vllm"),
                          PROMPTS, tmp_path)


def test_cli_rollout_vllm_without_vllm_is_a_usage_error(tmp_path, capsys, monkeypatch):
    from thinklean.cli import main

    monkeypatch.setattr(vllm_engine, "vllm_installed", lambda: False)
    assert main(["train", "--rollout", "vllm", "--steps", "1", "--output", str(tmp_path / "o")]) == 2
    assert "pip install 'thinklean[gpu]'" in capsys.readouterr().err


def test_requests_and_outputs_fit_the_installed_vllm():
    """Against vLLM's own classes (skips where vLLM is not installed; needs no GPU): the engine
    arguments are EngineArgs fields, the request keywords build SamplingParams, and real
    RequestOutput/CompletionOutput/Logprob objects convert as the stand-ins above do."""
    vllm = pytest.importorskip("vllm")
    import dataclasses

    from vllm.engine.arg_utils import EngineArgs
    from vllm.logprobs import Logprob
    from vllm.outputs import CompletionOutput, RequestOutput

    fields = {f.name for f in dataclasses.fields(EngineArgs)}
    assert set(engine_arguments("/m", "bfloat16", 0, 0.3, None)) <= fields
    config = SamplingConfig(max_new_tokens=5, temperature=0.7, top_p=0.9, stop_strings=("</answer>",))
    requests = build_requests([[1, 2], [1, 2]], [[], [7, 8]], config, [0], seed=3)
    params = [vllm.SamplingParams(**r.sampling) for r in requests]
    assert (params[1].max_tokens, params[1].seed, params[1].prompt_logprobs) == (3, 4, 0)
    assert params[0].stop == ["</answer>"] and params[0].logprobs == 0

    def output(request, tokens, finish, prompt_logprobs=None):
        lp = [{t: Logprob(logprob=-0.5)} for t in tokens]
        completion = CompletionOutput(index=0, text="", token_ids=tokens, cumulative_logprob=None, logprobs=lp,
                                      finish_reason=finish)
        return RequestOutput(request_id="r", prompt=None, prompt_token_ids=request.prompt_ids,
                             prompt_logprobs=prompt_logprobs, outputs=[completion], finished=True)

    prompt_logprobs = [None, {2: Logprob(-1.0)}, {7: Logprob(-2.0)}, {8: Logprob(-3.0)}]
    outputs = [output(requests[0], [5, 0], "stop"), output(requests[1], [5, 6, 6], "length", prompt_logprobs)]
    responses, logprobs, finished = rows_from_outputs(requests, outputs)
    assert responses == [[5, 0], [7, 8, 5, 6, 6]] and finished == [True, False]
    assert logprobs[1].tolist() == [-2.0, -3.0, -0.5, -0.5, -0.5]


def test_eval_with_the_vllm_engine_matches_the_hf_engine(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """`thinklean eval --rollout vllm` through the stand-in engine: the engine serves the model
    directory itself, and greedy results equal `--rollout hf`'s."""
    from thinklean.cli import main

    launched = []

    def launch(model, tokenizer, **kwargs):
        launched.append(kwargs)
        return _backend(model, tokenizer)

    monkeypatch.setattr(VLLMRollout, "launch", staticmethod(launch))
    monkeypatch.setattr(vllm_engine, "vllm_problem", lambda: None)
    summaries = {}
    for rollout in ("hf", "vllm"):
        out = tmp_path / rollout
        assert main(["eval", "--model", str(tiny_model_dir), "--n", "4", "--max-new-tokens", "8", "--rollout", rollout,
                     "--output", str(out)]) == 0
        summaries[rollout] = json.loads((out / "eval.json").read_text())
    assert len(launched) == 1 and launched[0]["checkpoint"] == tiny_model_dir
    assert [r["text"] for r in summaries["vllm"]["responses"]] == [r["text"] for r in summaries["hf"]["responses"]]
    for key in ("accuracy", "mean_response_tokens"):
        assert summaries["vllm"]["summary"][key] == summaries["hf"]["summary"][key]


def test_cli_eval_rollout_vllm_errors(tmp_path, capsys, monkeypatch):
    from thinklean.cli import main

    monkeypatch.setattr(vllm_engine, "vllm_installed", lambda: False)
    assert main(["eval", "--rollout", "vllm", "--output", str(tmp_path / "o")]) == 2
    assert "pip install 'thinklean[gpu]'" in capsys.readouterr().err
    assert main(["eval", "--rollout", "vllm", "--hybrid", "--output", str(tmp_path / "o")]) == 2
    assert "--hybrid runs on the hf engine" in capsys.readouterr().err
