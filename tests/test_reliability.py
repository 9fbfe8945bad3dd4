"""Runs a user can trust: output directories are never silently reused, damaged checkpoints fall
back to intact ones, and every bad input ends with one ``error:`` line (exit 2) before any work."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from thinklean.cli import main
from thinklean.train.checkpoint import CheckpointError, CheckpointWarning, find_checkpoint, save_checkpoint

TRAIN = ["train", "--steps", "2", "--prompts-per-step", "2", "--samples-per-prompt", "2", "--max-new-tokens", "4",
         "--set", "save_every=1"]


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its SHA-256, to show nothing changed."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture()
def old_run(tmp_path) -> Path:
    """A directory holding an earlier run's checkpoint pointer and metrics."""
    run = tmp_path / "run"
    (run / "checkpoints" / "step-00000010").mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("step-00000010")
    (run / "metrics.jsonl").write_text('{"step": 10}\n')
    return run


# ---------------------------------------------------------------------------- output dirs


@pytest.mark.parametrize("command", [
    ["train"], ["sft"], ["litereason-sft", "--data", "rows.jsonl"],
])
def test_a_new_run_into_a_directory_holding_a_run_is_refused_before_any_work(old_run, command, capsys):
    before = tree(old_run)
    assert main([*command, "--output", str(old_run)]) == 2
    line = one_error(capsys)
    assert f"--output {old_run} already holds a run" in line and "--resume" in line and "--overwrite" in line
    assert tree(old_run) == before


def test_resume_without_a_checkpoint_is_an_error_not_a_fresh_start(tmp_path, capsys):
    assert main(["train", "--resume", "--output", str(tmp_path / "empty")]) == 2
    assert "--resume: " in one_error(capsys) and not (tmp_path / "empty").exists()
    assert main(["sft", "--resume", "--overwrite", "--output", str(tmp_path / "empty")]) == 2
    assert "exclude each other" in one_error(capsys)


def test_latest_naming_a_missing_directory_is_an_error_not_a_fresh_start(old_run, tiny_model_dir, capsys):
    shutil.rmtree(old_run / "checkpoints" / "step-00000010")
    before = tree(old_run)
    assert main([*TRAIN, "--model", str(tiny_model_dir), "--resume", "--output", str(old_run)]) == 2
    line = one_error(capsys)
    assert "no usable checkpoint" in line and "names step-00000010, which is missing" in line
    assert tree(old_run) == before


def test_overwrite_replaces_the_old_run_and_resume_continues_it(old_run, tiny_model_dir, capsys):
    (old_run / "notes.txt").write_text("mine")
    assert main([*TRAIN, "--model", str(tiny_model_dir), "--overwrite", "--output", str(old_run)]) == 0
    checkpoints = old_run / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step-00000001", "step-00000002"]
    assert (checkpoints / "latest").read_text() == "step-00000002"
    assert [json.loads(x)["step"] for x in (old_run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert (old_run / "notes.txt").read_text() == "mine"  # only the run's own files are cleared
    more = [*TRAIN, "--model", str(tiny_model_dir), "--resume", "--output", str(old_run)]
    more[more.index("--steps") + 1] = "3"
    assert main(more) == 0
    assert [json.loads(x)["step"] for x in (old_run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture()
def two_checkpoints(tmp_path, tiny_model, tiny_tokenizer) -> Path:
    """``RUN/checkpoints`` with step 1 and step 2 (``latest``), as a trainer writes them."""
    optimizer = torch.optim.AdamW(tiny_model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    for step in (1, 2):
        save_checkpoint(tmp_path / "run", step, tiny_model, tiny_tokenizer, optimizer, scheduler)
    return tmp_path / "run"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damaged", ["trainer.pt", "model/model.safetensors", "state.json"])
def test_a_corrupted_latest_checkpoint_is_named_and_the_earlier_one_taken(two_checkpoints, damaged):
    _truncate(two_checkpoints / "checkpoints" / "step-00000002" / damaged)
    earlier = tree(two_checkpoints / "checkpoints" / "step-00000001")
    with pytest.warns(CheckpointWarning) as caught:
        ckpt = find_checkpoint(two_checkpoints)
    assert ckpt.step == 1 and len(caught) == 1
    message = str(caught[0].message)
    assert f"step-00000002/{damaged}: unreadable" in message and "resuming from" in message
    assert tree(two_checkpoints / "checkpoints" / "step-00000001") == earlier
    assert (two_checkpoints / "checkpoints" / "step-00000002" / damaged).exists()  # kept for the user to inspect


def test_no_intact_checkpoint_is_an_error_naming_each_file(two_checkpoints):
    for step in (1, 2):
        (two_checkpoints / "checkpoints" / f"step-0000000{step}" / "state.json").write_text("{")
    with pytest.raises(CheckpointError, match=r"no usable checkpoint .*step-00000002/state.json.*step-00000001/state.json"):
        find_checkpoint(two_checkpoints)


def test_a_kill_during_a_checkpoint_write_loses_nothing_earlier(two_checkpoints, tiny_model, tiny_tokenizer):
    checkpoints = two_checkpoints / "checkpoints"
    # killed while writing step 3: a half-written temporary directory and pointer, nothing renamed
    partial = checkpoints / ".tmp-step-00000003"
    shutil.copytree(checkpoints / "step-00000002", partial)
    _truncate(partial / "model" / "model.safetensors")
    (partial / "trainer.pt").unlink()
    (checkpoints / ".latest.tmp").write_text("step-0000")
    before = tree(checkpoints / "step-00000002")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)  # the leftovers are not checkpoints: no warning
        assert find_checkpoint(two_checkpoints).step == 2
    optimizer = torch.optim.AdamW(tiny_model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    save_checkpoint(two_checkpoints, 3, tiny_model, tiny_tokenizer, optimizer, scheduler)  # the rerun's write
    assert not partial.exists() and (checkpoints / "latest").read_text() == "step-00000003"
    assert tree(checkpoints / "step-00000002") == before


def test_a_missing_latest_pointer_takes_the_newest_intact_checkpoint(two_checkpoints):
    (two_checkpoints / "checkpoints" / "latest").unlink()
    before = tree(two_checkpoints)
    with pytest.warns(CheckpointWarning, match="latest: missing or empty"):
        assert find_checkpoint(two_checkpoints).step == 2
    assert tree(two_checkpoints) == before


def test_resume_with_a_corrupted_latest_warns_in_one_line_and_continues(tmp_path, tiny_model_dir, capsys):
    run = tmp_path / "run"
    assert main([*TRAIN, "--model", str(tiny_model_dir), "--output", str(run)]) == 0
    (run / "checkpoints" / "step-00000002" / "state.json").write_text("not json")
    capsys.readouterr()

    def show(message, category, filename, lineno, file=None, line=None):  # Python's own, which pytest replaces
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    with warnings.catch_warnings():
        warnings.showwarning = show
        assert main([*TRAIN, "--model", str(tiny_model_dir), "--resume", "--output", str(run)]) == 0
    warnings_shown = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings_shown) == 1 and "step-00000002/state.json: unreadable" in warnings_shown[0]
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert json.loads((run / "checkpoints" / "step-00000002" / "state.json").read_text())["step"] == 2  # rewritten


def test_ctrl_c_ends_with_one_line_saying_what_was_saved(tmp_path, tiny_model_dir, capsys, monkeypatch):
    from thinklean.train.rl import RLTrainer

    real_step, calls = RLTrainer.step, []

    def interrupted_step(self):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(RLTrainer, "step", interrupted_step)
    run = tmp_path / "run"
    assert main([*TRAIN, "--model", str(tiny_model_dir), "--output", str(run)]) == 130
    err = capsys.readouterr().err
    assert err.splitlines() == [f"interrupted: the last checkpoint is {run / 'checkpoints' / 'step-00000001'}; "
                                "continue with --resume"]


# ------------------------------------------------------------------------------ bad inputs


def test_a_truncated_model_file_is_named(tmp_path, tiny_model_dir, capsys):
    _truncate(tiny_model_dir / "model.safetensors")
    assert main(["eval", "--model", str(tiny_model_dir), "--n", "1", "--output", str(tmp_path / "o")]) == 2
    assert f"{tiny_model_dir / 'model.safetensors'}: not a complete safetensors file" in one_error(capsys)
    assert not (tmp_path / "o").exists()


def test_output_naming_an_existing_file_is_refused_before_generation(tmp_path, capsys, monkeypatch):
    import thinklean.eval.evaluate

    monkeypatch.setattr(thinklean.eval.evaluate, "evaluate", lambda *a, **k: pytest.fail("generated"))
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    for argv in (["eval", "--n", "1"], ["train"], ["report", str(tmp_path)], ["data", "arith"]):
        assert main([*argv, "--output", str(taken)]) == 2
        assert f"{taken} is an existing file (expected a directory)" in one_error(capsys)
    assert main(["eval", "--output", str(taken / "sub")]) == 2
    assert "is an existing file" in one_error(capsys)
    assert taken.read_text() == "keep me"


@pytest.mark.parametrize("argv, flag", [
    (["eval", "--n", "0"], "--n 0"), (["demo", "--n", "0"], "--n"), (["train", "--steps", "0"], "--steps"),
    (["train", "--steps", "-1"], "--steps"), (["sft", "--steps", "0"], "--steps"),
    (["eval", "--max-new-tokens", "0"], "--max-new-tokens"), (["train", "--lr", "nan"], "--lr"),
    (["train", "--set", "lr"], "--set 'lr'"), (["train", "--set", "reward_kwargs={weight: 0.5"], "not valid YAML"),
    (["train", "--set", "steps=0"], "'steps' must be at least 1"), (["train", "--set", "lr=-1"], "'lr' must be more than 0"),
])
def test_non_positive_sizes_and_malformed_settings_are_one_line_errors(tmp_path, argv, flag, capsys):
    assert main([*argv, "--output", str(tmp_path / "o")]) == 2
    assert flag in one_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_prompt_too_long_for_the_model_stops_with_file_and_line(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "1 + 1", "answer": "2"}) + "\n\n"
                    + json.dumps({"prompt": "1 + " * 400 + "1", "answer": "401"}) + "\n")
    out = tmp_path / "o"
    for argv in (["eval", "--max-new-tokens", "8"], TRAIN):
        assert main([*argv, "--model", str(tiny_model_dir), "--data", str(data), "--output", str(out)]) == 2
        line = one_error(capsys)
        assert f"{data}:3: the prompt is" in line and "1024 positions" in line
    assert not out.exists()


def test_a_jsonl_line_over_the_size_limit_stops_without_reading_it_whole(tmp_path, monkeypatch, capsys):
    import thinklean.data.jsonl as jsonl

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "p", "answer": "1"}) + "\n"
                    + json.dumps({"prompt": "x" * (jsonl.MAX_LINE_BYTES + 10), "answer": "1"}) + "\n")
    reads = []
    real_open = open

    class Spy:
        def __init__(self, handle):
            self.handle = handle

        def readline(self, size=-1):
            reads.append(size)
            return self.handle.readline(size)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    monkeypatch.setattr(jsonl, "open", lambda path, mode: Spy(real_open(path, mode)), raising=False)
    assert main(["eval", "--data", str(data), "--output", str(tmp_path / "o")]) == 2
    assert f"{data}:2: line is longer than {jsonl.MAX_LINE_BYTES} bytes" in one_error(capsys)
    assert reads and all(0 < size <= jsonl.MAX_LINE_BYTES + 1 for size in reads)


# ---------------------------------------------------------------------------------- report


def test_report_on_runs_without_evaluations_says_so_and_draws_only_the_curves(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "reward": 0.5, "accuracy": 0.5,
                                                           "length_mean": 10.0}) + "\n" for s in (1, 2)))
    assert main(["report", str(run), "--output", str(tmp_path / "r")]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "--eval-every" in notes[0]
    assert not (tmp_path / "r" / "pareto.png").exists() and (tmp_path / "r" / "curves.png").is_file()
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert "| method |" not in markdown and "--eval-every" in markdown and "pareto" not in markdown
    assert "<table" not in (tmp_path / "r" / "report.html").read_text()


# ------------------------------------------------------------------------------------ demo


def _demo_row(out: Path, name: str, record: dict | None) -> None:
    (out / name).mkdir(parents=True)
    summary = {"accuracy": 0.5, "mean_response_tokens": 10.0, "n": 500}
    (out / name / "eval.json").write_text(json.dumps({"summary": summary}))
    if record is not None:
        (out / name / "demo-run.json").write_text(json.dumps(record))


def test_demo_refuses_rows_from_another_budget_before_any_work(tmp_path, capsys):
    from thinklean.demo import DemoBudget, weights_sha256
    from thinklean.models.tiny import BASE_MODEL_DIR

    out = tmp_path / "demo-out"
    record = {"seed": 0, "quick": False, "budget": asdict(DemoBudget()), "base_model_sha256": weights_sha256(BASE_MODEL_DIR)}
    for name in ("base", "grpo"):
        _demo_row(out, name, record)
    before = tree(out)
    assert main(["demo", "--steps", "5", "--n", "40", "--output", str(out)]) == 2
    line = one_error(capsys)
    assert "holds base, grpo from another budget" in line and "budget.n_eval 500 -> 40, budget.steps 40 -> 5" in line
    assert "--overwrite" in line and tree(out) == before


def test_demo_refuses_rows_from_another_base_model_or_without_a_record(tmp_path, tiny_model_dir):
    from thinklean.demo import DemoBudget, StaleResultsError, run_demo

    budget = DemoBudget(steps=1, n_eval=4)
    other = {"seed": 0, "quick": False, "budget": asdict(budget), "base_model_sha256": "0" * 64}
    _demo_row(tmp_path / "a", "base", other)
    with pytest.raises(StaleResultsError, match="base_model_sha256 0000"):
        run_demo(tmp_path / "a", methods=("grpo",), budget=budget, base_model=tiny_model_dir)
    _demo_row(tmp_path / "b", "base", None)  # finished by a demo that recorded nothing
    with pytest.raises(StaleResultsError, match="no readable demo-run.json"):
        run_demo(tmp_path / "b", methods=("grpo",), budget=budget, base_model=tiny_model_dir)
