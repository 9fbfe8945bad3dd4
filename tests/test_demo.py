import json
from pathlib import Path

import pytest

import thinklean.demo
import thinklean.methods.bupo
import thinklean.methods.litereason
from thinklean.demo import DEMO_METHODS, DemoBudget, StaleResultsError, run_demo


def test_demo_trains_each_method_evaluates_all_and_resumes(tmp_path, tiny_model_dir, capsys):
    budget = DemoBudget(steps=1, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=6, lr=1e-3, n_eval=4)
    out = tmp_path / "demo"
    results = run_demo(out, methods=("grpo", "hmpo"), budget=budget, base_model=tiny_model_dir)
    saved = json.loads((out / "results.json").read_text())
    assert list(saved["methods"]) == ["base", "grpo", "hmpo"]
    for summary in saved["methods"].values():
        assert 0.0 <= summary["accuracy"] <= 1.0  # a fraction, not a percentage
        assert summary["mean_response_tokens"] <= 6
        assert set(summary["per_difficulty"]) <= {"1", "2", "3", "4", "5", "6"}
    assert saved["config"]["budget"]["steps"] == 1
    assert (out / "hmpo" / "model" / "model.safetensors").is_file()
    assert results["methods"]["grpo"]["n"] == 4
    assert "hmpo" in (out / "report" / "report.html").read_text()
    assert "latent steps" not in (out / "report" / "report.md").read_text()  # that table is for LiteReason runs
    logged = [json.loads(line) for line in (out / "hmpo" / "metrics.jsonl").read_text().splitlines()]
    assert "eval_accuracy" in logged[-1]  # held-out evaluation during training, for iso-accuracy
    assert "iso_compression_vs_base" in json.loads((out / "report" / "table.json").read_text())[1]
    final = json.loads((out / "hmpo" / "eval.json").read_text())["summary"]
    assert final["accuracy"] == logged[-1]["eval_accuracy"]  # the trainer's last evaluation is the final one
    printed = capsys.readouterr().out
    assert "[3/3] training hmpo" in printed and "evaluating hmpo" not in printed  # ... and is not repeated

    stamp = (out / "grpo" / "eval.json").stat().st_mtime_ns
    wall = saved["methods"]["grpo"]["wall_seconds"]
    run_demo(out, methods=("grpo",), budget=budget, base_model=tiny_model_dir)
    assert (out / "grpo" / "eval.json").stat().st_mtime_ns == stamp  # finished methods are not re-run
    assert "already done" in capsys.readouterr().out
    # ... and keep the wall time they took when they ran
    assert json.loads((out / "results.json").read_text())["methods"]["grpo"]["wall_seconds"] == wall > 0
    # a later run into the same directory keeps the earlier methods in the table (same budget and seed)
    assert list(json.loads((out / "results.json").read_text())["methods"]) == ["base", "hmpo", "grpo"]
    # another budget: refused before any work, unless overwrite re-runs the rows
    other = DemoBudget(**{**budget.__dict__, "lr": 2e-3})
    with pytest.raises(StaleResultsError, match=r"holds base, grpo .*budget.lr 0.001 -> 0.002.*--overwrite"):
        run_demo(out, methods=("grpo",), budget=other, base_model=tiny_model_dir)
    assert (out / "grpo" / "eval.json").stat().st_mtime_ns == stamp
    run_demo(out, methods=("grpo",), budget=other, base_model=tiny_model_dir, overwrite=True)
    saved = json.loads((out / "results.json").read_text())
    assert list(saved["methods"]) == ["base", "grpo"] and saved["config"]["budget"]["lr"] == 2e-3
    assert json.loads((out / "grpo" / "demo-run.json").read_text())["budget"]["lr"] == 2e-3


def test_methods_all_runs_every_demo_method_in_order(tmp_path, monkeypatch):
    import thinklean.demo
    from thinklean.cli import main

    calls = []
    monkeypatch.setattr(thinklean.demo, "run_demo", lambda **kwargs: calls.append(kwargs["methods"]))
    assert main(["demo", "--methods", "all", "--output", str(tmp_path)]) == 0
    assert calls == [tuple(DEMO_METHODS)]
    assert {"grpo", "hmpo", "iapo", "bupo", "l1", "thinkprune", "hgpo", "litereason"} <= set(calls[0])


@pytest.mark.parametrize("steps, s_inter", [(40, 4), (80, 8), (3, 1)])
def test_demo_bupo_is_grpo_plus_an_ipa_phase_of_a_tenth_of_the_steps(steps, s_inter):
    from dataclasses import asdict, replace

    from thinklean.demo import method_config

    budget = DemoBudget(steps=steps)
    bupo, grpo = asdict(method_config("bupo", budget, seed=3)), asdict(method_config("grpo", budget, seed=3))
    assert {key for key in grpo if bupo[key] != grpo[key]} == {"method", "method_kwargs"}
    assert bupo["method_kwargs"]["s_inter"] == s_inter
    assert (grpo["loss_agg"], grpo["steps"], grpo["seed"]) == ("seq-mean-token-mean", steps, 3)


def test_demo_rows_train_at_the_budget_lr_unless_lr_by_row_names_them(tmp_path, tiny_model_dir, capsys):
    from thinklean.cli import main
    from thinklean.demo import BASE_V3_BUDGET, default_budget, method_config

    budget = DemoBudget()
    assert (budget.lr, budget.lr_by_row, budget.train_only) == (3e-5, {}, "mlp")
    assert {method_config(row, budget, seed=0).train_only for row in ("grpo", "hmpo", "iapo")} == {"mlp"}
    assert {row: method_config(row, budget, seed=0).lr for row in ("grpo", "bupo", "hmpo")} == \
        {"grpo": 3e-5, "bupo": 3e-5, "hmpo": 3e-5}
    # base-v3 keeps the budget its figures were measured with: every weight, GRPO and BuPO at 1e-5
    assert default_budget("base-v3") is BASE_V3_BUDGET and default_budget("base") == default_budget() == budget
    assert {row: (method_config(row, BASE_V3_BUDGET, seed=0).lr, method_config(row, BASE_V3_BUDGET, seed=0).train_only)
            for row in ("grpo", "bupo", "hmpo", "iapo")} == \
        {"grpo": (1e-5, ""), "bupo": (1e-5, ""), "hmpo": (3e-5, ""), "iapo": (3e-5, "")}
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "Every row trains the weights matching 'mlp' (the MLPs) at learning rate 3e-05" in \
        " ".join(capsys.readouterr().out.split())
    # a row's own lr is part of the record: rows made under another one are stale
    small = DemoBudget(steps=1, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=6, n_eval=4,
                       lr_by_row={"grpo": 1e-3})
    run_demo(tmp_path / "d", methods=("grpo",), budget=small, base_model=tiny_model_dir)
    other = DemoBudget(**{**small.__dict__, "lr_by_row": {"grpo": 2e-3}})
    with pytest.raises(StaleResultsError, match=r"budget.lr_by_row.grpo 0.001 -> 0.002"):
        run_demo(tmp_path / "d", methods=("grpo",), budget=other, base_model=tiny_model_dir)


def test_demo_with_bupo_puts_the_entropy_comparison_in_the_report(tmp_path, tiny_model_dir, monkeypatch):
    budget = DemoBudget(steps=1, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=6, lr=1e-3, n_eval=4)
    monkeypatch.setattr(thinklean.methods.bupo, "ANALYZE_PROMPTS", 3)
    out = tmp_path / "demo"
    run_demo(out, methods=("grpo",), budget=budget, base_model=tiny_model_dir)
    assert not (out / "analyze").exists() and "entropy" not in (out / "report" / "report.md").read_text()

    with pytest.warns(UserWarning, match="s_inter=1 is more than 10% of 1 steps"):
        run_demo(out, methods=("bupo",), budget=budget, base_model=tiny_model_dir)  # grpo from the earlier run
    comparison = json.loads((out / "analyze" / "comparison.json").read_text())
    assert comparison["before"]["label"] == "base" and list(comparison["abs_H_change"]) == ["grpo", "bupo"]
    assert comparison["before"]["model"] == str(tiny_model_dir)
    report = (out / "report" / "report.md").read_text()
    for plot in ("entropy.png", "entropy_change.png"):
        assert f"({plot})" in report and (out / "report" / plot).is_file()
    assert (out / "report" / "report.html").read_text().count("<img") == 4


def test_demo_steps_flag_sets_the_budget_and_rejects_zero(tmp_path, monkeypatch, capsys):
    from thinklean.cli import main

    calls = []
    monkeypatch.setattr(thinklean.demo, "run_demo", lambda **kwargs: calls.append(kwargs["steps"]))
    assert main(["demo", "--steps", "80", "--output", str(tmp_path)]) == 0
    assert calls == [80]
    assert main(["demo", "--steps", "0", "--output", str(tmp_path)]) == 2
    assert "--steps: expected at least 1" in capsys.readouterr().err
    assert calls == [80]


def test_demo_model_flag_starts_from_an_earlier_base_and_refuses_rebuild(tmp_path, monkeypatch, capsys):
    from thinklean.cli import main
    from thinklean.models.tiny import BASE_V3_MODEL_DIR

    calls = []
    monkeypatch.setattr(thinklean.demo, "run_demo", lambda **kwargs: calls.append(kwargs["base_model"]))
    assert main(["demo", "--output", str(tmp_path)]) == 0
    assert main(["demo", "--model", "base-v3", "--output", str(tmp_path)]) == 0
    assert calls == [None, BASE_V3_MODEL_DIR]
    assert main(["demo", "--model", "base-v3", "--rebuild", "--output", str(tmp_path)]) == 2
    assert "--rebuild retrains the shipped base model; it cannot start from --model base-v3" in capsys.readouterr().err
    assert main(["demo", "--model", str(tmp_path / "nope"), "--output", str(tmp_path)]) == 2
    assert f"no model directory (config.json) at {tmp_path / 'nope'}" in capsys.readouterr().err
    assert len(calls) == 2


def test_unknown_methods_are_named_before_any_work(tmp_path, capsys):
    from thinklean.cli import main

    assert main(["demo", "--methods", "grpo,nope,litereason", "--output", str(tmp_path)]) == 2
    assert "not a demo method: nope; available: grpo" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "litereason first builds a model with a trained projector, the 'litereason-sft' row" in shown
    assert not (tmp_path / "results.json").exists()


def test_hgpo_in_the_demo_builds_the_hybrid_model_first_and_reports_hybrid_metrics(tmp_path, tiny_model_dir, capsys,
                                                                                   monkeypatch):
    budget = DemoBudget(steps=1, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=6, lr=1e-3, n_eval=4)
    out = tmp_path / "demo"
    started, real = {}, thinklean.demo.train_method

    def recording_train_method(name, budget, run_dir, seed, base_model=None, **kwargs):
        started[name] = Path(base_model)
        return real(name, budget, run_dir, seed, base_model, **kwargs)

    monkeypatch.setattr(thinklean.demo, "train_method", recording_train_method)
    run_demo(out, quick=True, methods=("hgpo",), budget=budget, base_model=tiny_model_dir)
    saved = json.loads((out / "results.json").read_text())
    assert list(saved["methods"]) == ["base", "hft", "hgpo"]
    assert "hybrid" not in saved["methods"]["base"]
    for name in ("hft", "hgpo"):
        hybrid = saved["methods"][name]["hybrid"]
        assert hybrid["n"] == 4 and 0.0 <= hybrid["hacc"] <= 1.0 and (out / name / "hybrid.json").is_file()
    assert (out / "hft-build" / "hft" / "model" / "model.safetensors").is_file()
    assert started == {"hgpo": out / "hft-build" / "hft" / "model"}
    report = (out / "report" / "report.md").read_text()
    assert "## Hybrid think / no-think" in report and "| hgpo |" in report.split("## Hybrid")[1]
    assert "building the hybrid model" in capsys.readouterr().out
    # a resumed demo keeps the finished rows' hybrid metrics, from results.json or, without it, anew
    for drop_results in (False, True):
        if drop_results:
            (out / "results.json").unlink()
        run_demo(out, quick=True, methods=("hgpo",), budget=budget, base_model=tiny_model_dir)
        again = json.loads((out / "results.json").read_text())["methods"]
        assert [again[name]["hybrid"] for name in ("hft", "hgpo")] == [saved["methods"][name]["hybrid"]
                                                                        for name in ("hft", "hgpo")]

    # the hybrid model's recipe is recorded with its row and with the row trained from it ...
    from dataclasses import replace

    from thinklean.methods import METHODS
    from thinklean.methods.lhrm import hft_stages

    records = {name: json.loads((out / name / "demo-run.json").read_text()) for name in ("base", "hft", "hgpo")}
    assert "start_recipe" not in records["base"]
    (stage,) = hft_stages(quick=True)
    assert records["hft"]["start_recipe"] == records["hgpo"]["start_recipe"] == [
        {"name": "hft", "config": {**records["hft"]["start_recipe"][0]["config"], "lr": stage.config.lr, "steps": 3},
         "rows": 120, "no_think_rule": stage.no_think_rule, "no_think_share": stage.no_think_share,
         "no_think_upsample": stage.no_think_upsample}]
    # ... so a changed recipe stops the demo instead of re-using those rows (the base row stays)
    spec = METHODS["hgpo"]
    changed = (replace(stage, config=replace(stage.config, lr=2 * stage.config.lr)),)
    monkeypatch.setitem(METHODS, "hgpo", replace(spec, start=replace(spec.start, recipe=lambda quick: changed)))
    lr = stage.config.lr
    with pytest.raises(StaleResultsError, match=rf"holds hft, hgpo from .*start recipe \(start_recipe.0.config.lr "
                                                rf"{lr} -> {2 * lr}\)"):
        run_demo(out, quick=True, methods=("hgpo",), budget=budget, base_model=tiny_model_dir)
    # a record from before start recipes were recorded names the missing entry once
    record = json.loads((out / "hft" / "demo-run.json").read_text())
    del record["start_recipe"]
    (out / "hft" / "demo-run.json").write_text(json.dumps(record))
    with pytest.raises(StaleResultsError, match=r"holds hft, hgpo .*\(start_recipe none -> recorded\); pass"):
        run_demo(out, quick=True, methods=("hgpo",), budget=budget, base_model=tiny_model_dir)
    # ... and a later run of another method leaves those rows out of its table
    run_demo(out, quick=True, methods=("grpo",), budget=budget, base_model=tiny_model_dir)
    assert list(json.loads((out / "results.json").read_text())["methods"]) == ["base", "grpo"]


def test_litereason_in_the_demo_builds_its_start_model_and_reports_latent_steps(tmp_path, tiny_model_dir, monkeypatch):
    from dataclasses import asdict, replace

    from thinklean.data.arith import generate_problems
    from thinklean.data.formats import LATENT, LATENT_END
    from thinklean.data.jsonl import write_jsonl
    from thinklean.data.litereason import litereason_prompt
    from thinklean.demo import method_config
    from thinklean.methods.litereason import PAPER_RECIPE

    budget = DemoBudget(steps=1, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=6, lr=1e-3, n_eval=4)
    out = tmp_path / "demo"
    # The untrained tiny model samples no correct trace, so the start model's data is given (the
    # builder reuses OUTPUT/litereason-sft/litereason.jsonl); every row opens a latent segment.
    rows = [{"prompt": litereason_prompt(p.question), "answer": str(p.answer),
             "solution": f"<think> {LATENT}2{LATENT_END} </think> \\boxed{{{p.answer}}}"}
            for p in generate_problems(8, "train", 0)]
    write_jsonl(out / "litereason-sft" / "litereason.jsonl", rows)
    # The paper's projector: with this random tiny LM and recipe, whether the start model opens
    # segments itself depends on the latents' scale, and only output_norm="none" gives rows that do.
    monkeypatch.setattr(thinklean.methods.litereason, "start_recipe",
                        lambda quick: replace(PAPER_RECIPE, problems=8, k=1, epochs=12, lr=1e-2, output_norm="none"))
    started, real = {}, thinklean.demo.train_method

    def recording_train_method(name, budget, run_dir, seed, base_model=None, **kwargs):
        started[name] = Path(base_model)
        return real(name, budget, run_dir, seed, base_model, **kwargs)

    monkeypatch.setattr(thinklean.demo, "train_method", recording_train_method)
    run_demo(out, methods=("grpo", "litereason"), budget=budget, base_model=tiny_model_dir)
    saved = json.loads((out / "results.json").read_text())["methods"]
    assert list(saved) == ["base", "grpo", "litereason-sft", "litereason"]
    start = out / "litereason-sft" / "model"
    assert (start / "projector.safetensors").is_file() and (out / "litereason" / "model" / "projector.json").is_file()
    assert started == {"grpo": tiny_model_dir, "litereason": start}
    assert "latent_steps_mean" not in saved["grpo"] and "latent_steps_mean" in saved["litereason"]
    # 12 epochs at lr 1e-2 on rows that all open a segment: the start model writes some itself
    assert saved["litereason-sft"]["latent_rows"] > 0 and saved["litereason-sft"]["latent_steps_mean"] > 0
    report = (out / "report" / "report.md").read_text().split("## Reasoning tokens vs latent steps")[1]
    assert "| litereason-sft |" in report and "| grpo |" in report and "latent steps per response" in report
    sft_row = next(line for line in report.splitlines() if line.startswith("| litereason-sft |"))
    assert sft_row.endswith(" - |")  # built by SFT: its logged SFT step times are not RL seconds per step
    grpo, litereason = asdict(method_config("grpo", budget, 0)), asdict(method_config("litereason", budget, 0))
    # same prompts, budget and lr
    assert {k for k in grpo if grpo[k] != litereason[k]} == {"method", "method_kwargs"}
