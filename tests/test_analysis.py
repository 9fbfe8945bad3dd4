"""Entropy analysis (``thinklean analyze``): per-layer numbers over rollouts, files, plots, table."""

from __future__ import annotations

import copy
import csv
import io
import json

import pytest
import torch
from matplotlib.image import imread
from rich.console import Console

from thinklean.analysis.entropy import analyze_model, boundary_layer, print_analysis, write_analysis
from thinklean.data.formats import format_prompt
from thinklean.models.internal import layer_entropies
from thinklean.rollout import SamplingConfig, generate

QUESTIONS = ["Start with 3. Add 4. What is the result?", "Start with 7. Multiply by 2. Subtract 5. What is the result?"]


def _crafted_result() -> dict:
    """A hand-made 3-layer result: the FFN expands entropy at layers 1 and 2, contracts at 3."""
    return {
        "model": "crafted",
        "layers": [0, 1, 2, 3],
        "H": [5.0, 4.5, 4.25, 2.0],
        "dH": [None, -0.5, -0.25, -2.25],
        "dH_attn": [None, -0.75, -0.5, -1.0],
        "dH_ffn": [None, 0.25, 0.125, -1.5],
        "H_attn": [None, 3.0, 3.0, 3.0],
        "H_attn_in": [None, 3.75, 3.5, 4.0],
        "H_ffn": [None, 3.25, 3.125, 1.5],
        "H_ffn_in": [None, 3.0, 3.0, 3.0],
        "num_tokens": 12,
        "variant": "module",
        "boundary_layer": 2,
    }


def test_boundary_layer_is_the_last_layer_whose_ffn_expands_entropy():
    assert boundary_layer([None, 0.1, -0.2, 0.3, -0.1]) == 3
    assert boundary_layer([None, -1.0, 0.0]) is None  # 0 is not an expansion
    assert boundary_layer([None, 0.5]) == 1


def test_analyze_model_reports_per_layer_entropies_over_response_tokens(tiny_model, tiny_tokenizer):
    prompts = [format_prompt(q, tiny_tokenizer) for q in QUESTIONS]
    result = analyze_model(tiny_model, tiny_tokenizer, prompts, max_new_tokens=6, seed=3, batch_size=1)

    # The same rollout scored in one batch by layer_entropies gives the same token averages.
    rollout = generate(tiny_model, tiny_tokenizer, prompts, 1, SamplingConfig(max_new_tokens=6, batch_size=64),
                       generator=torch.Generator().manual_seed(3))
    input_ids = torch.cat([rollout.prompt_ids, rollout.response_ids], 1)
    attention_mask = torch.cat([rollout.prompt_mask, rollout.response_mask], 1)
    token_mask = torch.cat([torch.zeros_like(rollout.prompt_mask), rollout.response_mask], 1)
    direct = layer_entropies(tiny_model, input_ids, attention_mask, token_mask)

    assert result["layers"] == [0, 1, 2]
    assert result["num_tokens"] == int(rollout.lengths.sum()) == direct["num_tokens"]
    for key in ("H", "dH", "dH_attn", "dH_ffn"):
        assert len(result[key]) == 3
        assert result[key][1:] == pytest.approx(direct[key][1:], abs=1e-6)
    assert result["dH"][0] is None and result["dH_ffn"][0] is None
    assert result["dH"][2] == pytest.approx(result["H"][2] - result["H"][1], abs=1e-9)
    assert result["dH_ffn"][1] == pytest.approx(result["H_ffn"][1] - result["H_ffn_in"][1], abs=1e-9)
    assert result["boundary_layer"] == boundary_layer(result["dH_ffn"])
    assert result["model"] == "Qwen2ForCausalLM"
    assert result["num_responses"] == 2
    assert json.loads(json.dumps(result)) == result


def test_write_analysis_files_decode_and_match_the_numbers(tmp_path):
    result = _crafted_result()
    before = copy.deepcopy(result)
    before["model"] = "base"
    before["H"] = [5.0, 4.0, 4.5, 2.5]  # |after - before| = 0, 0.5, 0.25, 0.5
    paths = write_analysis(result, tmp_path / "out", compare=before)

    assert set(paths) == {"json", "csv", "entropy_plot", "module_plot", "comparison_json", "comparison_csv",
                          "change_plot"}
    for key in ("entropy_plot", "module_plot", "change_plot"):
        image = imread(paths[key])
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert json.loads(paths["json"].read_text()) == result

    rows = list(csv.DictReader(paths["csv"].open()))
    assert [int(r["layer"]) for r in rows] == [0, 1, 2, 3]
    assert [float(r["H"]) for r in rows] == result["H"]
    assert rows[0]["dH_ffn"] == "" and [float(r["dH_ffn"]) for r in rows[1:]] == [0.25, 0.125, -1.5]
    comparison = list(csv.DictReader(paths["comparison_csv"].open()))
    assert [float(r["abs_H_change"]) for r in comparison] == [0.0, 0.5, 0.25, 0.5]
    assert {r["after"] for r in comparison} == {result["model"]}
    assert json.loads(paths["comparison_json"].read_text())["abs_H_change"] == {result["model"]: [0.0, 0.5, 0.25, 0.5]}

    other = {**copy.deepcopy(result), "model": "other", "H": [5.0, 5.0, 3.75, 2.5]}  # vs before: 0, 1, 0.75, 0
    paths = write_analysis(result, tmp_path / "two", compare=before, others=[other])
    saved = json.loads(paths["comparison_json"].read_text())
    assert saved["abs_H_change"] == {result["model"]: [0.0, 0.5, 0.25, 0.5], "other": [0.0, 1.0, 0.75, 0.0]}
    assert [a["model"] for a in saved["after"]] == [result["model"], "other"]
    assert len(list(csv.DictReader(paths["comparison_csv"].open()))) == 8
    with pytest.raises(ValueError, match=r"but other has \[0, 1\]"):
        write_analysis(result, tmp_path / "bad", compare=before, others=[{**other, "layers": [0, 1]}])


def test_write_analysis_without_compare_writes_four_files_and_rejects_other_depths(tmp_path):
    result = _crafted_result()
    paths = write_analysis(result, tmp_path)
    assert sorted(p.name for p in paths.values()) == ["analysis.csv", "analysis.json", "entropy.png",
                                                       "module_entropy.png"]
    shallow = {**result, "layers": [0, 1]}
    with pytest.raises(ValueError, match="same architecture"):
        write_analysis(result, tmp_path, compare=shallow)


def test_print_analysis_lists_every_layer_and_the_boundary():
    buffer = io.StringIO()
    print_analysis(_crafted_result(), Console(file=buffer, width=120, color_system=None))
    text = buffer.getvalue()
    for value in ("5.0000", "4.5000", "4.2500", "2.0000", "+0.1250", "-1.5000", "2 (boundary)"):
        assert value in text
    assert "boundary layer: 2" in text
    no_boundary = {**_crafted_result(), "boundary_layer": None}
    buffer = io.StringIO()
    print_analysis(no_boundary, Console(file=buffer, width=120, color_system=None))
    assert "boundary layer: none" in buffer.getvalue()
