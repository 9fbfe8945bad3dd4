"""Benchmark data for `thinklean eval`: GSM8K-style JSONL and reasoning-gym generators."""

import json
import sys

import pytest

from thinklean.cli import main
from thinklean.data.jsonl import DataError, Example, gsm8k_final_answer, load_jsonl

GSM8K_ROW = {
    "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72",
}


def test_gsm8k_final_answer_is_the_text_after_the_last_mark_without_thousands_separators():
    assert gsm8k_final_answer("so 3 #### 4 more.\n#### 1,234,567") == "1234567"
    assert gsm8k_final_answer("#### -2.5") == "-2.5"
    assert gsm8k_final_answer("#### ") == ""


def test_gsm8k_rows_load_with_question_as_prompt_and_the_number_after_the_mark(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text(json.dumps(GSM8K_ROW) + "\n" + json.dumps({"prompt": "p", "answer": "x #### 1,000"}) + "\n")
    assert load_jsonl(path) == [Example(GSM8K_ROW["question"], "72"), Example("p", "1000")]


def test_gsm8k_answer_with_nothing_after_the_mark_names_file_and_line(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text(json.dumps(GSM8K_ROW) + "\n" + json.dumps({"question": "q", "answer": "so 5 ####"}) + "\n")
    with pytest.raises(DataError, match=rf'{path}:2: field "answer" has nothing after "####"'):
        load_jsonl(path)


def test_eval_on_gsm8k_jsonl_writes_metrics(tmp_path, tiny_model_dir):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text(json.dumps(GSM8K_ROW) + "\n")
    out = tmp_path / "out"
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(path), "--n", "0", "--max-new-tokens", "4",
                 "--output", str(out)]) == 0
    assert json.loads((out / "eval.json").read_text())["summary"]["n"] == 1


def test_instruction_is_appended_to_every_question(tmp_path, monkeypatch):
    import thinklean.eval.evaluate

    class Seen(Exception):
        pass

    def capture(model, tokenizer, examples, *args, **kwargs):
        raise Seen([e.prompt for e in examples])

    monkeypatch.setattr(thinklean.eval.evaluate, "evaluate", capture)
    path = tmp_path / "gsm8k.jsonl"
    path.write_text(json.dumps(GSM8K_ROW) + "\n")
    with pytest.raises(Seen) as seen:
        main(["eval", "--data", str(path), "--instruction", "Answer in \\boxed{}.", "--output", str(tmp_path / "o")])
    assert seen.value.args[0] == [GSM8K_ROW["question"] + " Answer in \\boxed{}."]


def test_reasoning_gym_without_the_package_is_a_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # import fails as if not installed
    assert main(["eval", "--data", "reasoning-gym:gsm_symbolic", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--data reasoning-gym:gsm_symbolic: needs the optional package reasoning-gym" in err
    assert "thinklean[reasoning-gym]" in err


def test_reasoning_gym_problems_are_generated_offline_and_seeded():
    pytest.importorskip("reasoning_gym")
    from thinklean.eval.evaluate import reasoning_gym_examples

    first = reasoning_gym_examples("gsm_symbolic", 3, seed=7)
    assert first == reasoning_gym_examples("gsm_symbolic", 3, seed=7)
    assert first != reasoning_gym_examples("gsm_symbolic", 3, seed=8)
    assert len(first) == 3 and all(e.prompt.endswith("Do not include units.") for e in first)
    [float(e.answer) for e in first]  # gsm_symbolic answers are numbers, as the \boxed{} grader needs
    with pytest.raises(ValueError, match="did you mean gsm_symbolic"):
        reasoning_gym_examples("gsm_symbolc", 3)


def test_eval_on_reasoning_gym_writes_metrics(tmp_path, tiny_model_dir):
    pytest.importorskip("reasoning_gym")
    out = tmp_path / "out"
    assert main(["eval", "--model", str(tiny_model_dir), "--data", "reasoning-gym:basic_arithmetic", "--n", "2",
                 "--max-new-tokens", "4", "--output", str(out)]) == 0
    assert json.loads((out / "eval.json").read_text())["summary"]["n"] == 2
