"""Model cards: every model directory a trainer saves holds a Hugging Face README.md."""

from __future__ import annotations

import re

import yaml

from thinklean.data.jsonl import Example
from thinklean.models.card import CardInfo, model_card
from thinklean.train.rl import RLConfig
from thinklean.train.sft import SFTConfig, train_sft

PROMPTS = [Example(prompt=f"Start with {i}. Add 1. What is the result?", answer=str(i + 1), difficulty=1)
           for i in range(1, 5)]


def parse_card(text: str) -> tuple[dict, list[str]]:
    """The front matter (YAML between the leading ``---`` lines) and the ``##`` section titles."""
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert match, "no YAML front matter"
    return yaml.safe_load(match.group(1)), re.findall(r"^## (.+)$", text, re.M)


def test_a_trained_model_directory_has_a_model_card(digit_trainer, tmp_path, tiny_model, tiny_tokenizer):
    config = RLConfig(steps=2, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=8, save_every=1,
                      eval_every=2, eval_problems=2)
    digit_trainer(tiny_model, tiny_tokenizer, config, PROMPTS, tmp_path, PROMPTS).train(show_progress=False)
    text = (tmp_path / "model" / "README.md").read_text()
    front, sections = parse_card(text)
    assert front["library_name"] == "transformers" and front["pipeline_tag"] == "text-generation"
    assert {"thinklean", "grpo", "reinforcement-learning"} <= set(front["tags"])
    assert "base_model" not in front  # a freshly built model: nothing on the Hub to point at
    assert sections == ["Method", "Training", "Configuration", "Evaluation", "Usage"]
    assert "2 steps from a freshly initialised model" in text
    (block,) = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert yaml.safe_load(block)["samples_per_prompt"] == 2
    assert "| problems | 2 |" in text
    checkpoint_card = (tmp_path / "checkpoints" / "step-00000002" / "model" / "README.md").read_text()
    assert parse_card(checkpoint_card)[1][:3] == ["Method", "Training", "Configuration"]


def test_an_sft_model_card_names_the_start_model_and_has_no_evaluation(tmp_path, tiny_model_dir):
    from thinklean.models.tiny import load_pretrained

    model, tokenizer = load_pretrained(tiny_model_dir)
    rows = [{"prompt": "Start with 1. Add 2.", "solution": "1 + 2 = 3. \\boxed{3}"}]
    train_sft(model, tokenizer, rows, SFTConfig(steps=1, batch_size=1), tmp_path / "run", show_progress=False)
    text = (tmp_path / "run" / "model" / "README.md").read_text()
    front, sections = parse_card(text)
    assert {"thinklean", "sft"} <= set(front["tags"]) and "base_model" not in front  # a local directory
    assert sections == ["Method", "Training", "Configuration", "Usage"]
    assert f"1 step from `{tiny_model_dir}`" in text


def test_a_hub_start_model_becomes_base_model():
    front, _ = parse_card(model_card(CardInfo("grpo", {"reward": "hmpo", "advantage": "grpo"}, 5,
                                              base_model="Qwen/Qwen2.5-0.5B-Instruct")))
    assert front["base_model"] == "Qwen/Qwen2.5-0.5B-Instruct"
