"""--report-to: metrics.jsonl's records, the config and the final evaluation reach accelerate's trackers."""

from __future__ import annotations

import json
import struct
import sys

import pytest

from thinklean.cli import main
from thinklean.runlog import read_metrics
from thinklean.train.trackers import TrackerError, flat_params, installed, resolve_report_to

TRAIN = ["train", "--steps", "2", "--prompts-per-step", "2", "--samples-per-prompt", "2", "--max-new-tokens", "8",
         "--eval-every", "2", "--set", "eval_problems=2", "--set", "train_problems=8"]


def _train(model_dir, out, report_to: str) -> list[dict]:
    assert main([*TRAIN, "--model", str(model_dir), "--report-to", report_to, "--output", str(out)]) == 0
    return read_metrics(out / "metrics.jsonl")


def test_tensorboard_receives_every_step_the_config_and_the_final_evaluation(tmp_path, tiny_model_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    records = _train(tiny_model_dir, tmp_path / "run", "tensorboard")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard" / "thinklean"))
    events.Reload()
    for name in ("reward", "accuracy", "length_mean"):
        logged = [(e.step, e.value) for e in events.Scalars(name)]
        assert logged == [(r["step"], pytest.approx(r[name])) for r in records], name
    assert [e.step for e in events.Scalars("reward")] == [1, 2]
    evaluation = json.loads((tmp_path / "run" / "eval.json").read_text())["summary"]
    assert [(e.step, e.value) for e in events.Scalars("eval/accuracy")] == [(2, evaluation["accuracy"])]
    (hparams,) = (tmp_path / "run" / "tensorboard" / "thinklean").glob("*/hparams.yml")
    assert "lr: 2.0e-05" in hparams.read_text() and "report_to: tensorboard" in hparams.read_text()


def _wandb_records(path) -> list:
    """The protobuf records of an offline ``.wandb`` file (a LevelDB-style log: a 7-byte header,
    then 32 KiB blocks of chunks with a 7-byte header: CRC, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2

    raw, block, position, chunk, records = path.read_bytes(), 32768, 7, b"", []
    while position + 7 <= len(raw):
        if block - position % block < 7:
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[position:position + 7])
        chunk += raw[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def test_wandb_offline_run_holds_every_step_and_the_config(tmp_path, tiny_model_dir, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    records = _train(tiny_model_dir, tmp_path / "run", "wandb")
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    logged = _wandb_records(run_file)
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
               for r in logged if r.WhichOneof("record_type") == "history"]
    steps = [h for h in history if "reward" in h]
    assert [h["_step"] for h in steps] == [1, 2]
    for name in ("reward", "accuracy", "length_mean"):
        assert [h[name] for h in steps] == [pytest.approx(r[name]) for r in records]
    config = {u.key or "/".join(u.nested_key): json.loads(u.value_json) for r in logged if r.WhichOneof("record_type") == "config"
              for u in r.config.update}
    assert config["method"] == "grpo" and config["steps"] == 2


def test_sft_logs_its_loss_to_tensorboard(tmp_path, tiny_model_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"prompt": "Start with 1. Add 2.", "answer": "3", "solution": "1 + 2 = 3. \\boxed{3}"}) + "\n")
    out = tmp_path / "sft"
    assert main(["sft", "--model", str(tiny_model_dir), "--data", str(data), "--steps", "2", "--batch-size", "1",
                 "--report-to", "tensorboard", "--output", str(out)]) == 0
    events = EventAccumulator(str(out / "tensorboard" / "thinklean"))
    events.Reload()
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl")]
    assert [(e.step, e.value) for e in events.Scalars("loss")][-1] == (2, pytest.approx(losses[-1]))


@pytest.mark.parametrize("command", [
    ["train"], ["sft"], ["litereason-sft", "--data", "rows.jsonl"], ["demo", "--quick"],
])
def test_a_missing_tracker_stops_before_any_work_naming_the_pip_command(command, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if the package were not installed
    out = tmp_path / "out"
    assert main([*command, "--report-to", "wandb", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --report-to wandb") and "pip install 'thinklean[wandb]'" in err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_report_to_names_known_trackers_only(tmp_path, capsys):
    assert main(["sft", "--report-to", "tensorbord", "--output", str(tmp_path / "out")]) == 2
    assert "unknown tracker tensorbord" in capsys.readouterr().err
    with pytest.raises(TrackerError, match="cannot be combined"):
        resolve_report_to("none,tensorboard")
    assert resolve_report_to("none") == []


def test_all_means_every_installed_tracker(monkeypatch):
    if not installed("tensorboard"):
        pytest.skip("needs tensorboard")
    for module in ("wandb", "mlflow", "trackio"):
        monkeypatch.setitem(sys.modules, module, None)  # as if the package were not installed
    assert resolve_report_to("all") == ["tensorboard"]
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(TrackerError, match="no tracker installed"):
        resolve_report_to("all")


def test_hyperparameters_are_flat_tracker_values():
    config = {"lr": 1e-5, "reward_kwargs": {"beta": 1.0, "inner": {"k": 2}}, "dual_clip": None, "styles": ["a"]}
    assert flat_params(config) == {"lr": 1e-5, "reward_kwargs.beta": 1.0, "reward_kwargs.inner.k": 2,
                                   "dual_clip": None, "styles": "['a']"}
