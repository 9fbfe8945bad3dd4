"""--data through `datasets`: parquet, arrow and CSV files and save_to_disk directories."""

from __future__ import annotations

import json
import sys

import pytest

from thinklean.cli import main
from thinklean.data.jsonl import DataError, Example
from thinklean.data.tables import load_examples

datasets = pytest.importorskip("datasets")

GSM8K = {  # the columns and answer layout of openai/gsm8k's published parquet files
    "question": ["Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                 "How many clips did Natalia sell altogether in April and May?",
                 "Start with 1,000. Add 234. What is the result?"],
    "answer": ["Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
               "altogether in April and May.\n#### 72", "1000 + 234 = 1234\n#### 1,234"],
}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """datasets' builders write their cache under the test's directory, not the user's."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def _eval(model_dir, data, out, *extra: str) -> int:
    return main(["eval", "--model", str(model_dir), "--data", str(data), "--max-new-tokens", "8", "--n", "0",
                 *extra, "--output", str(out)])


def test_gsm8k_parquet_loads_unchanged_and_evaluates(tmp_path, tiny_model_dir):
    path = tmp_path / "test-00000-of-00001.parquet"
    datasets.Dataset.from_dict(GSM8K).to_parquet(str(path))
    assert load_examples(path) == [Example(GSM8K["question"][0], "72"), Example(GSM8K["question"][1], "1234")]
    assert _eval(tiny_model_dir, path, tmp_path / "out") == 0
    assert json.loads((tmp_path / "out" / "eval.json").read_text())["summary"]["n"] == 2


def test_save_to_disk_directory_evaluates_its_test_split(tmp_path, tiny_model_dir):
    rows = {"prompt": ["Start with 1. Add 2. What is the result?"], "answer": [3], "difficulty": [1]}
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"prompt": ["x"], "answer": ["1"]}),
                          "test": datasets.Dataset.from_dict(rows)}).save_to_disk(str(saved))
    assert load_examples(saved, split="test") == [Example(rows["prompt"][0], "3", difficulty=1)]
    assert _eval(tiny_model_dir, saved, tmp_path / "out") == 0
    summary = json.loads((tmp_path / "out" / "eval.json").read_text())["summary"]
    assert summary["n"] == 1 and summary["per_difficulty"]["1"]["n"] == 1


def test_arrow_and_csv_files_with_other_column_names(tmp_path, tiny_model_dir):
    table = datasets.Dataset.from_dict({"problem": ["Start with 4. Add 1. What is the result?"], "final": ["5"]})
    table.to_csv(str(tmp_path / "d.csv"), index=False)
    table.save_to_disk(str(tmp_path / "saved"))
    (arrow,) = (tmp_path / "saved").glob("*.arrow")
    for path in (tmp_path / "d.csv", arrow):
        assert load_examples(path, prompt_field="problem", answer_field="final") == [Example(table[0]["problem"], "5")]
    assert _eval(tiny_model_dir, tmp_path / "d.csv", tmp_path / "out", "--prompt-field", "problem",
                 "--answer-field", "final") == 0


def test_a_missing_column_stops_naming_file_row_and_column(tmp_path, tiny_model_dir, capsys):
    path = tmp_path / "no-answer.parquet"
    datasets.Dataset.from_dict({"question": ["q1", "q2"], "solution": ["s1", "s2"]}).to_parquet(str(path))
    assert _eval(tiny_model_dir, path, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}:1: column \"answer\" is missing") and "question, solution" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "out" / "eval.json").exists()


def test_a_null_answer_stops_naming_file_row_and_column(tmp_path, tiny_model_dir, capsys):
    path = tmp_path / "null.parquet"
    datasets.Dataset.from_dict({"question": ["q1", "q2", "q3"], "answer": ["1", None, "3"]}).to_parquet(str(path))
    assert _eval(tiny_model_dir, path, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert err == f'error: {path}:2: field "answer" must be a string or a number, got null'
    assert not (tmp_path / "out" / "eval.json").exists()


def test_a_renamed_column_is_named_in_row_errors(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("problem,final\nStart with 1.,1\n,2\n")
    with pytest.raises(DataError, match=rf'{path}:2: field "problem" must be a string'):
        load_examples(path, prompt_field="problem", answer_field="final")


def test_sft_reads_solutions_from_a_parquet_file(tmp_path, tiny_model_dir):
    path = tmp_path / "sft.parquet"
    datasets.Dataset.from_dict({"prompt": ["Start with 1. Add 2."], "answer": ["3"],
                                "solution": ["1 + 2 = 3. \\boxed{3}"]}).to_parquet(str(path))
    assert main(["sft", "--model", str(tiny_model_dir), "--data", str(path), "--steps", "1", "--batch-size", "1",
                 "--output", str(tmp_path / "sft")]) == 0
    assert (tmp_path / "sft" / "model" / "model.safetensors").is_file()


def test_without_datasets_the_error_names_the_pip_command(tmp_path, monkeypatch, capsys):
    path = tmp_path / "d.parquet"
    datasets.Dataset.from_dict(GSM8K).to_parquet(str(path))
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if the package were not installed
    assert main(["eval", "--data", str(path), "--output", str(tmp_path / "out")]) == 2
    assert "pip install 'thinklean[datasets]'" in capsys.readouterr().err
