import json
import math
import re

import pytest
import torch

from thinklean.core.advantages import hgpo_advantages
from thinklean.data.formats import NO_THINK, THINK
from thinklean.data.hft import (DIRECT_ANSWER_PREFIX, format_mix_stats, hft_from_jsonl, hft_records, mix_stats,
                                parse_no_think_rule, upsample_mode)
from thinklean.data.jsonl import DataError, Example
from thinklean.eval.hybrid import hybrid_accuracy
from thinklean.methods.lhrm import (
    HGPOTrainer,
    forced_mode_prefixes,
    measured_no_think,
    mode_stats,
    mode_token_mask,
    rft_records,
    rollout_modes,
)
from thinklean.rollout import RolloutBatch
from thinklean.runlog import read_metrics
from thinklean.methods.config import ConfigError
from thinklean.train.rl import RLConfig

PROMPTS = [Example(prompt=f"Start with {i}. Add 3. What is the result?", answer=str(i + 3), difficulty=1) for i in range(1, 5)]
R3 = math.sqrt(3) / 2  # GRPO score of a 1 among [1, 1, 0, 0]: 0.5 / sqrt(1/3)


def fake_batch(texts, lengths, num_samples, finished=None):
    """A RolloutBatch carrying only what the code under test reads (texts, lengths, groups, finished)."""
    B = len(texts)
    zeros = torch.zeros(B, 1, dtype=torch.long)
    return RolloutBatch(
        prompt_ids=zeros, prompt_mask=zeros, response_ids=zeros, response_mask=zeros, logprobs=zeros.float(),
        lengths=torch.tensor(lengths), group_ids=torch.arange(B) // num_samples, texts=list(texts),
        finished=torch.tensor(finished if finished is not None else [True] * B),
        forced_prefix_lens=torch.ones(B, dtype=torch.long),
    )


def hgpo_config(**kw):
    base = dict(method="hgpo", advantage="hgpo", prompts_per_step=2, samples_per_prompt=4, max_new_tokens=6,
                save_every=0, steps=1, clip_low=0.5, clip_high=0.5)
    return RLConfig(**{**base, **kw})


# ------------------------------------------------------------------------------------- HGPO


def test_forced_prefixes_are_half_think_then_half_no_think_per_prompt():
    assert forced_mode_prefixes(2, 4) == [THINK, THINK, NO_THINK, NO_THINK] * 2


@pytest.mark.parametrize("n", [1, 3, 5])
def test_hgpo_rejects_an_odd_samples_per_prompt(tmp_path, tiny_model, tiny_tokenizer, n):
    with pytest.raises(ConfigError, match=rf"samples_per_prompt.*even.*got {n}"):
        HGPOTrainer(tiny_model, tiny_tokenizer, hgpo_config(samples_per_prompt=n), PROMPTS, tmp_path)


def test_hgpo_rejects_unknown_method_kwargs(tmp_path, tiny_model, tiny_tokenizer):
    with pytest.raises(ConfigError, match="alpah"):
        HGPOTrainer(tiny_model, tiny_tokenizer, hgpo_config(method_kwargs={"alpah": 1.0}), PROMPTS, tmp_path)


def test_every_forced_sample_starts_with_its_tag_and_the_mask_marks_only_the_first_token(tmp_path, tiny_model, tiny_tokenizer):
    trainer = HGPOTrainer(tiny_model, tiny_tokenizer, hgpo_config(), PROMPTS, tmp_path)
    rollout = trainer.collect(0).rollout
    think_id, no_think_id = tiny_tokenizer.convert_tokens_to_ids([THINK, NO_THINK])
    assert rollout.response_ids[:, 0].tolist() == [think_id, think_id, no_think_id, no_think_id] * 2
    assert [t.startswith(tag) for t, tag in zip(rollout.texts, [THINK, THINK, NO_THINK, NO_THINK] * 2)] == [True] * 8
    assert rollout.forced_prefix_lens.tolist() == [1] * 8
    assert rollout_modes(rollout.texts).tolist() == [1, 1, 0, 0] * 2
    assert trainer.tag_index == 0
    mask = mode_token_mask(rollout.response_mask, trainer.tag_index)
    expected = torch.zeros_like(rollout.response_mask)
    expected[:, 0] = 1
    assert torch.equal(mask, expected)


def test_hgpo_advantages_get_modes_tag_mask_alpha_and_delta(tmp_path, tiny_model, tiny_tokenizer):
    config = hgpo_config(method_kwargs={"alpha": 2.0, "delta": 0.6})
    trainer = HGPOTrainer(tiny_model, tiny_tokenizer, config, PROMPTS, tmp_path)
    batch = trainer.collect(0)
    assert (batch.rollout.lengths >= 2).all()  # tag + at least one sampled token
    # group 0: think 1, 1 vs no-think 0, 0 -> 1 > 0 + 0.6: think wins -> r_inter 1 1 0 0
    # group 1: think 1, 1 vs no-think 1, 0 -> 1 > 0.5 + 0.6 is false: no-think wins -> r_inter 0 0 1 1
    #          (with the default delta 0.2 think would win here)
    batch.rewards = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    adv = trainer.compute_advantages(batch)
    # the tag token carries alpha * norm(r_inter) on top of the per-token intra term
    inter = adv[:, 0] - adv[:, 1]
    expected = torch.tensor([R3, R3, -R3, -R3, -R3, -R3, R3, R3]) * 2.0
    assert torch.allclose(inter, expected, atol=1e-5)
    r = batch.rollout
    tag = torch.zeros_like(r.response_mask)
    tag[:, 0] = 1
    direct = hgpo_advantages(batch.rewards, r.lengths, torch.tensor([1, 1, 0, 0] * 2), r.group_ids,
                             r.response_mask, tag, alpha=2.0, delta=0.6)
    assert torch.equal(adv, direct)


def test_tag_mass_term_by_hand(tmp_path, tiny_model, tiny_tokenizer):
    trainer = HGPOTrainer(tiny_model, tiny_tokenizer, hgpo_config(method_kwargs={"tag_mass": 0.5}), PROMPTS, tmp_path)
    batch = trainer.collect(0)
    rows = torch.tensor([0, 5])  # a think and a no-think rollout of different prompts
    got = trainer.auxiliary_loss(batch, rows)
    think, no_think = tiny_tokenizer.convert_tokens_to_ids(THINK), tiny_tokenizer.convert_tokens_to_ids(NO_THINK)
    expected = []
    with torch.no_grad():
        for row in rows.tolist():
            prompt = batch.rollout.prompt_ids[row][batch.rollout.prompt_mask[row].bool()]
            p = torch.softmax(tiny_model(input_ids=prompt[None]).logits[0, -1], -1)
            expected.append(-math.log(float(p[think] + p[no_think])))
    assert float(got.detach()) == pytest.approx(0.5 * sum(expected) / 2, rel=1e-4)
    # Rows 0-3 share a prompt: three of them and row 5 weigh the first prompt 3 : 1.
    three_to_one = trainer.auxiliary_loss(batch, torch.tensor([0, 1, 3, 5]))
    assert float(three_to_one.detach()) == pytest.approx(0.5 * (3 * expected[0] + expected[1]) / 4, rel=1e-4)
    assert HGPOTrainer(tiny_model, tiny_tokenizer, hgpo_config(method_kwargs={"tag_mass": 0.0}), PROMPTS,
                       tmp_path / "off").auxiliary_loss(batch, rows) is None


@pytest.mark.parametrize("tag_mass", [0.0, 1.0])
def test_tag_mass_is_the_only_gradient_when_every_advantage_is_zero(tmp_path, tiny_model, tiny_tokenizer, tag_mass):
    class ConstantReward(HGPOTrainer):
        def compute_rewards(self, batch, examples, correct):
            return torch.ones(len(batch.texts)), {}

    config = hgpo_config(kl_coef=0.0, method_kwargs={"alpha": 0.0, "tag_mass": tag_mass})
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    trainer = ConstantReward(tiny_model, tiny_tokenizer, config, PROMPTS, tmp_path)
    batch = trainer.collect(0)
    batch.advantages = torch.zeros_like(batch.rollout.logprobs)  # no policy-gradient signal at all
    metrics = trainer.update(batch)
    moved = any(not torch.equal(p.detach(), before[n]) for n, p in tiny_model.named_parameters())
    assert moved == (tag_mass > 0)
    assert (metrics["auxiliary_loss"] > 0) == (tag_mass > 0)


def test_mode_stats_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    correct = rewards.bool()
    lengths = torch.tensor([20, 30, 4, 6, 10, 12, 3, 5])
    modes = torch.tensor([1, 1, 0, 0, 1, 1, 0, 0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    stats = mode_stats(rewards, correct, lengths, modes, groups, delta=0.2)
    # think rows 1,0,1,1 -> 0.75; no-think 0,0,1,1 -> 0.5; lengths (20+30+10+12)/4 = 18, (4+6+3+5)/4 = 4.5
    # group 0: 0.5 > 0 + 0.2 -> think wins; group 1: 1 > 1.2 false -> 1 win of 2 groups
    assert stats == {"think_accuracy": 0.75, "think_length_mean": 18.0, "no_think_accuracy": 0.5,
                     "no_think_length_mean": 4.5, "think_wins": 0.5}


@pytest.mark.parametrize("malformed_reward", [-1.0, None])
def test_hgpo_reward_scores_a_malformed_mode_below_a_wrong_answer(tmp_path, tiny_model, tiny_tokenizer,
                                                                   malformed_reward):
    # one prompt, N = 4: think right, think wrong, no-think right but reasoning closed by </think>,
    # no-think stopped right after its tag
    texts = ["<think> 3 + 4 = 7. </think> \\boxed{7}", "<think> 3 + 4 = 8. </think> \\boxed{8}",
             "<no_think> 3 + 4 = 7. </think> \\boxed{7}", "<no_think>"]
    config = hgpo_config(method_kwargs={"malformed_reward": malformed_reward})
    trainer = HGPOTrainer(tiny_model, tiny_tokenizer, config, PROMPTS, tmp_path)
    correct = torch.tensor([True, False, True, False])
    rewards, info = trainer.compute_rewards(fake_batch(texts, [9, 9, 9, 1], 4), [Example("p", "7")], correct)
    assert rewards.tolist() == ([1.0, 0.0, -1.0, -1.0] if malformed_reward else [1.0, 0.0, 1.0, 0.0])
    assert info["no_think_format_ok"] == 0.0 and info["think_format_ok"] == 1.0
    assert info["no_think_accuracy"] == 0.5  # the task accuracy, format aside


def test_one_hgpo_step_on_the_tiny_model_writes_mode_metrics(tmp_path, tiny_model, tiny_tokenizer):
    trainer = HGPOTrainer(tiny_model, tiny_tokenizer, hgpo_config(kl_coef=0.001), PROMPTS, tmp_path)
    trainer.train(show_progress=False)
    (record,) = read_metrics(tmp_path / "metrics.jsonl")
    for key in ("think_accuracy", "no_think_accuracy", "think_length_mean", "no_think_length_mean", "think_wins",
                "think_format_ok", "no_think_format_ok", "loss", "kl"):
        assert key in record, key
    # the two modes have equal halves, so their accuracies average to the overall accuracy
    assert record["accuracy"] == pytest.approx((record["think_accuracy"] + record["no_think_accuracy"]) / 2)
    assert record["length_mean"] == pytest.approx((record["think_length_mean"] + record["no_think_length_mean"]) / 2)
    assert math.isfinite(record["loss"]) and (tmp_path / "model" / "model.safetensors").is_file()


def test_rft_keeps_the_shortest_correct_sample_preferring_no_think(monkeypatch, tiny_model, tiny_tokenizer):
    problems = [Example("q0", "5", difficulty=1), Example("q1", "6", difficulty=4), Example("q2", "7")]
    script = [  # k = 2: think, think, no-think, no-think per problem
        ("<think> a </think> \\boxed{5}", 12, True), ("<think> b </think> \\boxed{4}", 3, True),
        ("<no_think> \\boxed{5} </no_think>", 5, True), ("<no_think> \\boxed{5} </no_think>", 5, True),
        ("<think> c </think> \\boxed{6}", 9, True), ("<think> d </think> \\boxed{6}", 7, True),
        ("<no_think> \\boxed{6} </no_think>", 4, False), ("<no_think> \\boxed{1} </no_think>", 4, True),
        ("<think> e </think> \\boxed{1}", 9, True), ("<think> f", 9, False),
        ("<no_think> \\boxed{2} </no_think>", 4, True), ("<no_think> \\boxed{3} </no_think>", 4, True),
    ]

    def fake_generate(model, tokenizer, prompts, num_samples, config, forced_prefixes, generator):
        assert num_samples == 4 and forced_prefixes == [THINK, THINK, NO_THINK, NO_THINK] * 3
        texts, lengths, finished = zip(*script)
        return fake_batch(texts, lengths, num_samples, list(finished))

    monkeypatch.setattr("thinklean.methods.lhrm.generate", fake_generate)
    rows = rft_records(tiny_model, tiny_tokenizer, problems, k=2)
    # q0: shortest correct is no-think (5 tokens; the 3-token think is wrong); q1: the unfinished
    # 4-token no-think is skipped -> think of 7 tokens; q2: nothing correct -> dropped
    assert rows == [
        {"prompt": "q0", "answer": "5", "solution": "<no_think> \\boxed{5} </no_think>", "mode": "no_think", "difficulty": 1},
        {"prompt": "q1", "answer": "6", "solution": "<think> d </think> \\boxed{6}", "mode": "think", "difficulty": 4},
    ]


# --------------------------------------------------------------------------------------- HAcc


def test_hybrid_accuracy_uses_the_first_unforced_tag(monkeypatch, tiny_model, tiny_tokenizer):
    examples = [Example("p0", "3", difficulty=1), Example("p1", "4", difficulty=1),
                Example("p2", "7", difficulty=5), Example("p3", "8", difficulty=5)]
    # forced continuations, k = 2 per mode: (think, think, no-think, no-think); R right, W wrong
    forced = {
        "p0": "RRRR",  # think 1.0, no-think 1.0 -> tie -> correct mode no_think
        "p1": "RWRW",  # 0.5 vs 0.5 -> no_think
        "p2": "RRWR",  # 1.0 vs 0.5 -> think (1.0 > 0.7)
        "p3": "RWWW",  # 0.5 vs 0.0 -> think (0.5 > 0.2)
    }
    unforced = {  # (text, tokens): chosen modes no_think, think, think, none (no tag)
        "p0": ("<no_think> \\boxed{3} </no_think>", 3),
        "p1": ("<think> 1 + 3 = 5. </think> \\boxed{5}", 10),
        "p2": ("<think> x </think> \\boxed{7}", 12),
        "p3": ("\\boxed{8} <think>", 2),
    }
    calls = []

    def fake_generate(model, tokenizer, prompts, num_samples, config, forced_prefixes=None, generator=None):
        calls.append((num_samples, config.temperature, forced_prefixes))
        names = [p.strip() for p in prompts]
        if forced_prefixes is None:
            return fake_batch([unforced[n][0] for n in names], [unforced[n][1] for n in names], 1)
        texts = []
        for i, prefix in enumerate(forced_prefixes):
            example = examples[i // num_samples]
            answer = example.answer if forced[example.prompt][i % num_samples] == "R" else "0"
            texts.append(f"<think> x </think> \\boxed{{{answer}}}" if prefix == THINK
                         else f"<no_think> \\boxed{{{answer}}} </no_think>")
        return fake_batch(texts, [4] * len(texts), num_samples)

    monkeypatch.setattr("thinklean.eval.hybrid.generate", fake_generate)
    summary = hybrid_accuracy(tiny_model, tiny_tokenizer, examples, k=2, margin=0.2)
    assert calls == [(4, 1.0, [THINK, THINK, NO_THINK, NO_THINK] * 4), (1, 0.0, None)]
    # correct modes no, no, think, think; chosen no, think, think, None -> hits p0, p2
    assert summary["hacc"] == 0.5
    assert summary["think_ratio"] == 0.5 and summary["no_tag_rate"] == 0.25
    assert summary["accuracy"] == 0.75  # p1 answered 5 instead of 4
    assert summary["mean_response_tokens"] == (3 + 10 + 12 + 2) / 4
    assert summary["forced_think_accuracy"] == (1 + 0.5 + 1 + 0.5) / 4
    assert summary["forced_no_think_accuracy"] == (1 + 0.5 + 0.5 + 0) / 4
    assert summary["per_difficulty"]["1"]["hacc"] == 0.5 and summary["per_difficulty"]["1"]["think_ratio"] == 0.5
    assert summary["per_difficulty"]["5"]["hacc"] == 0.5 and summary["per_difficulty"]["5"]["accuracy"] == 1.0
    # a wider margin makes no-think correct for p2 (1.0 > 1.1 false) and p3: only p0 is then a hit
    calls.clear()
    assert hybrid_accuracy(tiny_model, tiny_tokenizer, examples, k=2, margin=0.6)["hacc"] == 0.25


@pytest.mark.parametrize("mode_format", [True, False])
def test_hybrid_accuracy_counts_a_no_think_rollout_that_reasons_as_wrong(monkeypatch, tiny_model, tiny_tokenizer,
                                                                         mode_format):
    # both forced no-think rollouts carry the right answer, but the first reasons and closes with
    # </think> (malformed no-think): with mode_format no-think scores 0.5, think 1.0 wins (> 0.7)
    texts = ["<think> 3 + 4 = 7. </think> \\boxed{7}", "<think> 3 + 4 = 7. </think> \\boxed{7}",
             "<no_think> 3 + 4 = 7. </think> \\boxed{7}", "<no_think> \\boxed{7} </no_think>"]

    def fake_generate(model, tokenizer, prompts, num_samples, config, forced_prefixes=None, generator=None):
        if forced_prefixes is None:
            return fake_batch(["<think> 3 + 4 = 7. </think> \\boxed{7}"], [9], 1)
        return fake_batch(texts, [9, 9, 9, 4], num_samples)

    monkeypatch.setattr("thinklean.eval.hybrid.generate", fake_generate)
    summary = hybrid_accuracy(tiny_model, tiny_tokenizer, [Example("p0", "7", difficulty=1)], k=2, margin=0.2,
                              mode_format=mode_format)
    assert summary["forced_no_think_accuracy"] == (0.5 if mode_format else 1.0)
    assert summary["hacc"] == (1.0 if mode_format else 0.0)  # the greedy answer thinks
    assert summary["config"]["mode_format"] is mode_format


def test_hybrid_accuracy_runs_on_the_tiny_model(tmp_path, tiny_model, tiny_tokenizer):
    summary = hybrid_accuracy(tiny_model, tiny_tokenizer, PROMPTS[:3], k=1, max_new_tokens=4, output=tmp_path / "h.json")
    assert summary["n"] == 3 and set(summary["per_difficulty"]) == {"1"}
    assert 0.0 <= summary["hacc"] <= 1.0
    saved = json.loads((tmp_path / "h.json").read_text())
    assert len(saved["records"]) == 3 and saved["summary"]["hacc"] == summary["hacc"]


# ---------------------------------------------------------------------------------------- HFT


def test_hft_records_send_rule_selected_problems_to_no_think():
    rows = hft_records(12, seed=0, no_think_rule="difficulty<=2", no_think_share=1.0)  # difficulties cycle 1..6 twice
    assert mix_stats(rows) == {
        "n": 12, "think": 8, "no_think": 4,
        "per_difficulty": {"1": {"think": 0, "no_think": 2}, "2": {"think": 0, "no_think": 2},
                           **{str(d): {"think": 2, "no_think": 0} for d in (3, 4, 5, 6)}},
    }
    for row in rows:
        if row["mode"] == "no_think":
            assert row["solution"] == f"<no_think> \\boxed{{{row['answer']}}} </no_think>"
        else:
            assert row["solution"].startswith("<think> ") and row["solution"].endswith(f"</think> \\boxed{{{row['answer']}}}")
    by_function = mix_stats(hft_records(12, no_think_rule=lambda row: row["difficulty"] == 6, no_think_share=1.0))
    assert by_function["no_think"] == 2 and by_function["per_difficulty"]["6"] == {"think": 0, "no_think": 2}
    assert "difficulty 6: 0 think, 2 no_think" in format_mix_stats(by_function)


def test_hft_default_rule_sends_only_one_step_problems_without_a_multiplication_to_no_think():
    rows = hft_records(600, seed=2, no_think_share=1.0)
    for row in rows:
        direct = row["difficulty"] == 1 and not row["risky_steps"]
        assert row["mode"] == ("no_think" if direct else "think"), row
    one_step = [row for row in rows if row["difficulty"] == 1]
    assert 0 < sum(row["mode"] == "think" for row in one_step) < len(one_step)  # 1-step products think


def test_hft_think_rows_mask_every_first_written_product_like_the_base_models_data():
    rows = [row for row in hft_records(300, seed=3) if row["mode"] == "think"]
    assert {row["style"] for row in rows} == {"partial", "risky"}
    for row in rows:
        masked = [row["solution"][start:end] for start, end in row["masked_spans"]]
        assert len(masked) == len(row["risky_steps"]) and all(text.isdigit() for text in masked)
        for (start, _), text in zip(row["masked_spans"], masked):  # each span is the result of a 'a * k = '
            assert row["solution"][:start].endswith(" = ") and "*" in row["solution"][max(0, start - 12):start]
    plain = [row for row in hft_records(300, seed=3, repair_rate=0.0, mask_products=False) if row["mode"] == "think"]
    assert not any("masked_spans" in row for row in plain)


def test_hft_records_keep_think_rows_at_every_difficulty_with_a_share():
    per = mix_stats(hft_records(600, seed=1, no_think_rule="difficulty<2", no_think_share=0.5))["per_difficulty"]
    assert 30 < per["1"]["no_think"] < 70 and per["1"]["think"] == 100 - per["1"]["no_think"]
    assert all(per[str(d)]["no_think"] == 0 and per[str(d)]["think"] == 100 for d in range(2, 7))


def test_hft_rule_strings_are_checked():
    with pytest.raises(ValueError, match="difficulty<=K"):
        hft_records(6, no_think_rule="easy ones")
    with pytest.raises(ValueError, match="not understood"):
        parse_no_think_rule("difficulty<=1 & size==2")
    rule = parse_no_think_rule("difficulty<=2 & risky<1")
    assert rule({"difficulty": 2, "risky_steps": []}) and not rule({"difficulty": 2, "risky_steps": [1]})
    assert not rule({"difficulty": 3, "risky_steps": []})
    with pytest.raises(ValueError, match='needs a "risky_steps" list'):
        rule({"difficulty": 1})


def test_hft_from_jsonl_builds_rows_and_names_the_bad_row(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(
        '{"prompt": "2+2?", "answer": 4, "solution": "2 + 2 = 4.", "kind": "think", "src": "a"}\n'
        "\n"
        '{"prompt": "1+1?", "answer": "2", "kind": "no_think"}\n'
        '{"prompt": "3+3?", "answer": "6", "difficulty": 1}\n'
    )
    rows = hft_from_jsonl(good, mode_field="kind", no_think_rule="difficulty<=1")
    assert rows == [
        {"prompt": "2+2?", "answer": "4", "solution": "<think> 2 + 2 = 4. </think> \\boxed{4}", "src": "a", "mode": "think"},
        {"prompt": "1+1?", "answer": "2", "solution": "<no_think> \\boxed{2} </no_think>", "mode": "no_think"},
        {"prompt": "3+3?", "answer": "6", "solution": "<no_think> \\boxed{6} </no_think>", "difficulty": 1, "mode": "no_think"},
    ]
    bad = tmp_path / "bad.jsonl"
    cases = [
        ('{"prompt": "q", "answer": "1", "mode": "think"}', 'think row needs a "solution"'),
        ('{"prompt": "q", "answer": "1", "mode": "fast"}', 'must be "think" or "no_think", got \'fast\''),
        ('{"prompt": "q", "answer": "1"}', 'field "mode" is missing'),
        ('{"prompt": "q", "answer": "1", "mode": "no_think", "solution": "1"}', "must start with <no_think>"),
        ('{"prompt": "q", "mode": "no_think"}', 'field "answer" is missing'),
    ]
    for line, message in cases:
        bad.write_text('{"prompt": "ok", "answer": "1", "mode": "no_think"}\n\n' + line + "\n")
        with pytest.raises(DataError, match=rf"bad.jsonl:3: .*{re.escape(message)}"):
            hft_from_jsonl(bad)
    with pytest.raises(DataError, match=r"<rows>:2: .*integer \"difficulty\""):
        hft_from_jsonl([{"prompt": "a", "answer": "1", "mode": "think", "solution": "s"},
                        {"prompt": "b", "answer": "2"}], no_think_rule="difficulty<=2")


def test_measured_no_think_keeps_problems_answered_directly(monkeypatch, tiny_model, tiny_tokenizer):
    problems = [Example("a", "1"), Example("b", "2"), Example("c", "3")]

    def fake_generate(model, tokenizer, prompts, num_samples, config, forced_prefixes=None, generator=None):
        assert config.temperature == 0 and forced_prefixes == [DIRECT_ANSWER_PREFIX] * 3
        return fake_batch([f"{DIRECT_ANSWER_PREFIX}1}}", f"{DIRECT_ANSWER_PREFIX}2}} </no_think>", f"{DIRECT_ANSWER_PREFIX}9}}"], [3, 4, 3], 1)

    monkeypatch.setattr("thinklean.methods.lhrm.generate", fake_generate)
    assert measured_no_think(tiny_model, tiny_tokenizer, problems) == {"a", "b"}


def test_build_hft_model_runs_the_stages_in_order_and_keeps_finished_ones(tmp_path, tiny_model_dir, monkeypatch):
    import thinklean.methods.lhrm as lhrm
    from thinklean.train.sft import SFTConfig

    calls, real = [], lhrm.train_sft

    def recording_train_sft(model, tokenizer, rows, *args, **kwargs):
        calls.append((model.name_or_path, sorted({r["mode"] for r in rows}), len(rows)))
        return real(model, tokenizer, rows, *args, **kwargs)

    monkeypatch.setattr(lhrm, "train_sft", recording_train_sft)
    stages = (lhrm.HFTStage("first", SFTConfig(steps=2, batch_size=4), 60, "difficulty<=1", 1.0, 0.75),
              lhrm.HFTStage("second", SFTConfig(steps=2, batch_size=4), 60))
    final = lhrm.build_hft_model(tiny_model_dir, tmp_path / "hft", stages)
    assert final == tmp_path / "hft" / "second" / "model" and (final / "model.safetensors").is_file()
    # difficulties cycle 1..6: 10 of 60 rows are 1-operation direct answers, repeated to 50 * 0.75 / 0.25 = 150
    assert calls == [(str(tiny_model_dir), ["no_think", "think"], 200),
                     (str(tmp_path / "hft" / "first" / "model"), ["no_think", "think"], 60)]
    stamps = {s.name: (tmp_path / "hft" / s.name / "model" / "model.safetensors").stat().st_mtime_ns for s in stages}
    assert lhrm.build_hft_model(tiny_model_dir, tmp_path / "hft", stages) == final
    assert len(calls) == 2  # finished stages are kept, not retrained
    assert {s.name: (tmp_path / "hft" / s.name / "model" / "model.safetensors").stat().st_mtime_ns for s in stages} == stamps


def test_upsample_mode_repeats_one_mode_to_the_share_by_hand():
    rows = [{"mode": "think", "id": i} for i in range(3)] + [{"mode": "no_think", "id": c} for c in "ab"]
    out = upsample_mode(rows, "no_think", 0.75)  # 3 think rows -> 3 * 0.75 / 0.25 = 9 no-think rows
    assert [r["id"] for r in out] == [0, 1, 2, "a", "b", "a", "b", "a", "b", "a", "b", "a"]
    assert upsample_mode(rows, "no_think", 0.25) == rows  # already 40%: unchanged, nothing dropped
    with pytest.raises(ValueError, match="share"):
        upsample_mode(rows, "no_think", 1.0)
    with pytest.raises(ValueError, match="no no_think rows"):
        upsample_mode(rows[:3], "no_think", 0.5)
