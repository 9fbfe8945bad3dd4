import json
import math

import pytest
import torch

from thinklean.data.arith import sft_records
from thinklean.runlog import read_metrics
from thinklean.train.checkpoint import latest_checkpoint
from thinklean.train.monitor import NonFiniteLossError
from thinklean.train.sft import IGNORE_INDEX, EncodedExample, SFTConfig, collate, encode_rows, train_sft, warmup_cosine


def test_collate_masks_prompt_and_padding():
    batch = collate([EncodedExample((5, 6, 7, 8), 2), EncodedExample((9, 10), 1)], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    # labels only on response tokens: row 0 response = (7, 8), row 1 response = (10,)
    assert batch["labels"].tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 7, 8], [IGNORE_INDEX, 10, IGNORE_INDEX, IGNORE_INDEX]]


def test_collate_keeps_masked_positions_out_of_the_labels():
    batch = collate([EncodedExample((5, 6, 7, 8, 9), 2, masked=(3,)), EncodedExample((9, 10), 1)], pad_id=0)
    assert batch["labels"].tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 7, IGNORE_INDEX, 9],
                                        [IGNORE_INDEX, 10, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]]


def test_masked_spans_mask_exactly_the_tokens_of_the_wrong_digits(tiny_tokenizer):
    solution = "<think> 47 * 6 = 272. Let me check: 40 * 6 = 240, 7 * 6 = 42, 240 + 42 = 282. No, 47 * 6 = 282. </think>"
    start = solution.index("272")
    row = {"prompt": "Start with 47. Multiply by 6. What is the result?", "solution": solution,
           "masked_spans": [[start, start + 3]]}
    (example,) = encode_rows(tiny_tokenizer, [row], max_length=512)
    assert [tiny_tokenizer.decode([example.input_ids[p]]) for p in example.masked] == ["2", "7", "2"]
    (plain,) = encode_rows(tiny_tokenizer, [{**row, "masked_spans": []}], max_length=512)
    assert plain.input_ids == example.input_ids and plain.masked == ()


@pytest.mark.parametrize("spans", [[[5, 3]], [[0, 10_000]], [["a", 2]], [[1]]])
def test_bad_masked_spans_name_the_row_and_what_was_expected(tiny_tokenizer, spans):
    rows = [{"prompt": "q", "solution": "<think> 1 + 1 = 2. </think>"}, {"prompt": "q", "solution": "x = 1", "masked_spans": spans}]
    with pytest.raises(ValueError, match=r'row 1: field "masked_spans": entry .* is not \[start, end\)'):
        encode_rows(tiny_tokenizer, rows, max_length=64)


def test_warmup_cosine_schedule_by_hand():
    f = warmup_cosine(total_steps=10, warmup_ratio=0.2, min_lr_ratio=0.1)
    # warm-up of 2 steps: 1/2, 2/2; then cosine over the remaining 8 steps down to 0.1
    assert f(0) == pytest.approx(0.5)
    assert f(1) == pytest.approx(1.0)
    assert f(2) == pytest.approx(1.0)
    assert f(6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # = 0.55
    assert f(10) == pytest.approx(0.1)


def test_sft_loss_falls_on_a_tiny_model(tmp_path, tiny_model, tiny_tokenizer):
    rows = sft_records(64, seed=0)
    config = SFTConfig(steps=30, batch_size=16, lr=3e-3, log_every=1, warmup_ratio=0.1)
    train_sft(tiny_model, tiny_tokenizer, rows, config, tmp_path, show_progress=False)
    losses = [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:3]) / 3
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_resume_gives_bit_identical_next_step_losses(tmp_path, tiny_tokenizer):
    from thinklean.models.tiny import build_model

    def fresh():
        return build_model(tiny_tokenizer, seed=0, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=4, intermediate_size=128)

    rows = sft_records(48, seed=1)
    config = SFTConfig(steps=4, batch_size=8, lr=2e-3, log_every=1, save_every=2, keep_last=2)
    train_sft(fresh(), tiny_tokenizer, rows, config, tmp_path / "a", show_progress=False)
    full = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "a" / "metrics.jsonl")}

    # Simulate a run killed right after the step-2 checkpoint: point `latest` back at it.
    train_sft(fresh(), tiny_tokenizer, rows, config, tmp_path / "b", show_progress=False)
    ckpts = tmp_path / "b" / "checkpoints"
    (ckpts / "latest").write_text("step-00000002")
    assert latest_checkpoint(tmp_path / "b").name == "step-00000002"
    train_sft(fresh(), tiny_tokenizer, rows, config, tmp_path / "b", resume=True, show_progress=False)
    resumed = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl")}
    assert sorted(resumed) == [1, 2, 3, 4]  # history kept, no duplicates
    assert resumed[3] == full[3] and resumed[4] == full[4]  # bit-identical, not approximately
    state = json.loads((ckpts / "step-00000004" / "state.json").read_text())
    assert state["step"] == 4


def test_nan_loss_stops_with_a_clear_message_and_keeps_last_checkpoint(tmp_path, tiny_model, tiny_tokenizer):
    rows = sft_records(16, seed=0)
    calls = {"n": 0}

    def flaky_loss(model, batch):
        calls["n"] += 1
        logits = model(input_ids=batch["input_ids"]).logits
        loss = logits.float().mean() * 0
        return (loss + float("nan") if calls["n"] == 3 else loss + 1.0), 1

    config = SFTConfig(steps=5, batch_size=8, save_every=1, log_every=1)
    with pytest.raises(NonFiniteLossError, match="step 3"):
        train_sft(tiny_model, tiny_tokenizer, rows, config, tmp_path, loss_fn=flaky_loss, show_progress=False)
    assert latest_checkpoint(tmp_path).name == "step-00000002"
    assert not torch.isnan(next(tiny_model.parameters())).any()
