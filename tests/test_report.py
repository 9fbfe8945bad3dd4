import json
import re

import pytest
from matplotlib.image import imread

from thinklean.cli import main
from thinklean.eval.report import collect_runs, comparison_rows, hybrid_rows, write_report


def _demo_fixture(root):
    methods = {
        "base": {"accuracy": 0.8, "mean_response_tokens": 100.0, "format_error_rate": 0.0},
        "grpo": {"accuracy": 0.82, "mean_response_tokens": 90.0, "format_error_rate": 0.0},
        "hmpo": {"accuracy": 0.81, "mean_response_tokens": 45.0, "format_error_rate": 0.01},
    }
    (root / "results.json").write_text(json.dumps({"methods": methods, "config": {"methods": ["grpo", "hmpo"], "quick": False}}))
    for name, start in (("grpo", 95), ("hmpo", 95)):
        (root / name).mkdir()
        lines = [{"step": s, "reward": 0.5, "accuracy": 0.8, "length_mean": start - s * (5 if name == "hmpo" else 1),
                  **({"eval_accuracy": 0.8, "eval_length_mean": start - s} if s % 2 == 0 else {})} for s in range(1, 5)]
        (root / name / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return methods


def test_compression_columns_by_hand(tmp_path):
    _demo_fixture(tmp_path)
    from thinklean.eval.report import collect_runs

    rows = {r["method"]: r for r in comparison_rows(collect_runs([tmp_path]))}
    assert rows["hmpo"]["compression_vs_base"] == pytest.approx(0.55)  # 1 - 45/100
    assert rows["hmpo"]["compression_vs_grpo"] == pytest.approx(0.5)  # 1 - 45/90
    assert rows["grpo"]["compression_vs_grpo"] is None and rows["base"]["compression_vs_base"] is None


def test_hybrid_table_pools_think_ratios_by_problem_count(tmp_path):
    _demo_fixture(tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    per = {"1": {"n": 10, "think_ratio": 0.1}, "2": {"n": 10, "think_ratio": 0.5},
           "5": {"n": 10, "think_ratio": 0.7}, "6": {"n": 30, "think_ratio": 1.0}}
    results["methods"]["hmpo"]["hybrid"] = {"n": 60, "hacc": 0.75, "think_ratio": 0.7, "accuracy": 0.8,
                                            "mean_response_tokens": 30.0, "forced_think_accuracy": 0.9,
                                            "forced_no_think_accuracy": 0.2, "per_difficulty": per}
    (tmp_path / "results.json").write_text(json.dumps(results))
    rows = hybrid_rows(collect_runs([tmp_path]))
    assert [r["method"] for r in rows] == ["hmpo"]  # only runs with hybrid metrics
    assert rows[0]["think_ratio_easy"] == pytest.approx(0.1)
    assert rows[0]["think_ratio_hard"] == pytest.approx((10 * 0.7 + 30 * 1.0) / 40)  # 0.925, not the plain mean 0.85
    assert rows[0]["hacc"] == 0.75
    paths = write_report([tmp_path], tmp_path / "report")
    assert "<table id=hybrid><tr><th>method</th><th>HAcc</th>" in paths["html"].read_text()
    assert "| hmpo | 75.0% | 70.0% | 10.0% | 92.5% | 80.0% | 30.0 | 90.0% | 20.0% |" in paths["markdown"].read_text()


def test_report_html_images_decode_and_table_matches_json(tmp_path):
    methods = _demo_fixture(tmp_path)
    paths = write_report([tmp_path], tmp_path / "report")
    page = paths["html"].read_text()
    for name in ("pareto", "curves"):
        assert imread(paths[name]).shape[0] > 100
    assert page.count("data:image/png;base64,") == 2
    cells = re.findall(r"<tr><td>(\w+)</td><td>([\d.]+)%</td><td>([\d.]+)</td>", page)
    assert {m: (float(a) / 100, float(t)) for m, a, t in cells} == {
        m: (pytest.approx(s["accuracy"]), pytest.approx(s["mean_response_tokens"])) for m, s in methods.items()
    }
    assert "thinklean demo --methods grpo,hmpo" in page
    assert json.loads(paths["table"].read_text())[2]["method"] == "hmpo"


def test_report_on_a_missing_dir_is_a_usage_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope"), "--output", str(tmp_path / "r")]) == 2
    assert "results.json" in capsys.readouterr().err


def test_iso_accuracy_columns_interpolate_along_logged_evaluations(tmp_path):
    _demo_fixture(tmp_path)
    # hmpo's periodic evaluations trade accuracy for tokens: (0.90, 90 tokens) at step 2, (0.70, 50) at step 4
    lines = [{"step": 2, "reward": 0.5, "accuracy": 0.9, "length_mean": 90, "eval_accuracy": 0.9, "eval_length_mean": 90.0},
             {"step": 4, "reward": 0.6, "accuracy": 0.7, "length_mean": 50, "eval_accuracy": 0.7, "eval_length_mean": 50.0}]
    (tmp_path / "hmpo" / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    paths = write_report([tmp_path], tmp_path / "report")
    rows = {r["method"]: r for r in json.loads(paths["table"].read_text())}
    # base accuracy 0.80 is reached halfway from 90 to 50 tokens -> 70; 1 - 70/100
    assert rows["hmpo"]["iso_compression_vs_base"] == pytest.approx(0.30)
    # GRPO accuracy 0.82: (0.82 - 0.90) / (0.70 - 0.90) = 0.4 of the way -> 90 - 0.4 * 40 = 74; 1 - 74/90
    assert rows["hmpo"]["iso_compression_vs_grpo"] == pytest.approx(1 - 74 / 90)
    # grpo's evaluations stay at 0.80 (93 then 91 tokens): cheapest at base accuracy is 91
    assert rows["grpo"]["iso_compression_vs_base"] == pytest.approx(0.09)
    assert rows["base"]["iso_compression_vs_base"] is None and rows["grpo"]["iso_compression_vs_grpo"] is None
    assert "| hmpo | 81.0% | 45.0 | 55.0% | 50.0% | 30.0% | 17.8% | 1.0% |" in paths["markdown"].read_text()
    assert "<td>30.0%</td><td>17.8%</td>" in paths["html"].read_text()


def test_runs_without_periodic_evaluations_have_no_iso_accuracy(tmp_path):
    _demo_fixture(tmp_path)
    (tmp_path / "hmpo" / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward": 0.1, "accuracy": 0.5, "length_mean": 9}) + "\n")
    rows = {r["method"]: r for r in comparison_rows(collect_runs([tmp_path]))}
    assert rows["hmpo"]["iso_compression_vs_base"] is None


def test_the_latent_table_shows_each_runs_last_latent_probe(tmp_path):
    _demo_fixture(tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    results["methods"]["hmpo"].update(latent_steps_mean=2.0, latent_rows=0.5)
    (tmp_path / "results.json").write_text(json.dumps(results))
    probe = {"probe_latent_norm": 2.5, "probe_latent_norm_max": 3.0e6, "probe_embedding_norm": 2.83,
             "probe_latent_cosine": 0.62, "probe_swap_kl": 0.0007}
    lines = [{"step": 1, "reward": 0.5, **probe}, {"step": 2, "reward": 0.5, **probe, "probe_swap_kl": 1.5},
             {"step": 3, "reward": 0.5}]
    (tmp_path / "hmpo" / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    table = write_report([tmp_path], tmp_path / "report")["markdown"].read_text().split("## Reasoning tokens vs latent steps")[1]
    assert "| latent norm (median) | latent norm (max) | token-embedding norm | latent cosine | swap-KL (nats) |" in table
    assert "| 2.5 | 3e+06 | 2.83 | 0.620 | 1.5 |" in next(line for line in table.splitlines() if line.startswith("| hmpo |"))
    assert next(line for line in table.splitlines() if line.startswith("| grpo |")).endswith("| - | - | - | - | - | - |")
