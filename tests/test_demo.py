import json

from thinklean.demo import DemoBudget, run_demo


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

    stamp = (out / "grpo" / "eval.json").stat().st_mtime_ns
    run_demo(out, methods=("grpo", "hmpo"), budget=budget, base_model=tiny_model_dir)
    assert (out / "grpo" / "eval.json").stat().st_mtime_ns == stamp  # finished methods are not re-run
    assert "already done" in capsys.readouterr().out
