import json
import math
import subprocess
import sys

import pytest
import torch

from thinklean.cli import build_parser, main


@pytest.mark.parametrize("command", ["demo", "data", "sft", "train", "eval", "analyze", "explain-tokens", "report"])
def test_every_command_has_help_with_defaults(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--seed" in out and "--output" in out and "default" in out


def test_help_without_a_method_list_does_not_import_torch():
    code = "import sys; from thinklean.cli import build_parser; build_parser('eval'); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_data_arith_writes_jsonl(tmp_path):
    out = tmp_path / "test.jsonl"
    assert main(["data", "arith", "--split", "test", "--n", "12", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12 and {"prompt", "answer", "difficulty"} <= set(rows[0])


def test_data_arith_writes_the_control_arm_variant_and_eval_reads_it_by_name(tmp_path, tiny_model_dir, capsys):
    from thinklean.cli import _load_examples

    out = tmp_path / "risky.jsonl"
    assert main(["data", "arith", "--variant", "every-risky", "--split", "test", "--n", "12", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["risky_steps"][0] == 0 for r in rows)
    # --data arith:every-risky draws the same problems as the file
    assert [e.prompt for e in _load_examples("arith:every-risky", 12, "test", 0)] == [r["prompt"] for r in rows]
    assert main(["eval", "--model", str(tiny_model_dir), "--data", "arith:every-risk", "--n", "2"]) == 2
    assert "--data arith:every-risk: unknown task variant 'every-risk' (available: two-digit, three-digit, x7x9, every-risky, x7x9-kinds, x7x9-kinds-ni, x7x9-restate)" \
        in capsys.readouterr().err


def test_sft_trains_on_the_variant_that_data_names_and_hft_refuses_one(tmp_path, tiny_model_dir, monkeypatch, capsys):
    import thinklean.train.sft as sft
    from thinklean.data.arith import EVERY_RISKY, detect_style, sft_records

    seen = {}
    monkeypatch.setattr(sft, "train_sft", lambda model, tokenizer, rows, *a, **k: seen.setdefault("rows", rows) and {})
    assert main(["sft", "--model", str(tiny_model_dir), "--data", "arith:every-risky", "--n", "6", "--steps", "1",
                 "--output", str(tmp_path / "sft")]) == 0
    assert [r["prompt"] for r in seen["rows"]] == [r["prompt"] for r in sft_records(6, variant=EVERY_RISKY)]
    assert all(r["risky_steps"][:1] == [0] for r in seen["rows"])
    assert main(["data", "hft", "--data", "arith:every-risky", "--n", "4", "--output", str(tmp_path / "h.jsonl")]) == 2
    assert "--data arith:every-risky: the hybrid mixture is built on the task itself" in capsys.readouterr().err
    # the style flags reach the rows: every step checked, every product masked
    out = tmp_path / "kinds.jsonl"
    assert main(["data", "arith", "--variant", "x7x9-kinds", "--solutions", "--style", "partial", "--check-rate", "1",
                 "--repair-rate", "0", "--mask-products", "--n", "30", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(detect_style(r["solution"]) == "full" for r in rows)
    assert all(len(r["masked_spans"]) == len(r["risky_steps"]) for r in rows) and any(r["risky_steps"] for r in rows)
    # a style mix is drawn per row in proportion to its weights
    assert main(["data", "arith", "--variant", "x7x9-kinds", "--solutions", "--style", "full=3,terse=1", "--n", "400",
                 "--output", str(out)]) == 0
    styles = [json.loads(line)["style"] for line in out.read_text().splitlines()]
    assert set(styles) == {"full", "terse"} and 0.15 < styles.count("terse") / 400 < 0.35
    for bad in ("full=3,terse", "full=0", "full=1,full=2", "fulll=1", "riskyy"):
        assert main(["data", "arith", "--solutions", "--style", bad, "--n", "2", "--output", str(out)]) == 2
        assert "argument --style:" in capsys.readouterr().err


def test_more_test_problems_than_exist_is_a_usage_error(tmp_path, capsys):
    assert main(["data", "arith", "--split", "test", "--n", "15000", "--output", str(tmp_path / "t.jsonl")]) == 2
    assert "--n 15000: found only" in capsys.readouterr().err
    assert not (tmp_path / "t.jsonl").exists()


def test_eval_with_bad_jsonl_reports_file_and_line_and_writes_nothing(tmp_path, tiny_model_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Start with 1. What is the result?", "answer": "1"}\n{"prompt": "x"}\n')
    out = tmp_path / "out"
    code = main(["eval", "--model", str(tiny_model_dir), "--data", str(bad), "--output", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{bad}:2:" in err and '"answer"' in err
    assert not (out / "eval.json").exists()


def test_eval_with_missing_model_dir_is_a_usage_error(tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]) == 2
    assert "config.json" in capsys.readouterr().err


def test_bad_gguf_paths_are_usage_errors(tmp_path, capsys, monkeypatch):
    assert main(["eval", "--model", str(tmp_path / "missing.gguf"), "--n", "1"]) == 2
    assert "no such GGUF file" in capsys.readouterr().err
    (tmp_path / "fake.gguf").write_text("not a gguf file")
    assert main(["eval", "--model", str(tmp_path / "fake.gguf"), "--n", "1"]) == 2
    assert "GGUF" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if the package were not installed
    assert main(["eval", "--model", str(tmp_path / "fake.gguf"), "--n", "1"]) == 2
    assert "pip install 'thinklean[gguf]'" in capsys.readouterr().err


def test_eval_on_a_jsonl_file_writes_metrics(tmp_path, tiny_model_dir):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "Start with 1. Add 2. What is the result?", "answer": "3", "difficulty": 1}\n')
    out = tmp_path / "out"
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--max-new-tokens", "8",
                 "--output", str(out)]) == 0
    summary = json.loads((out / "eval.json").read_text())["summary"]
    assert summary["n"] == 1 and 0.0 <= summary["accuracy"] <= 1.0
    assert summary["per_difficulty"]["1"]["n"] == 1


@pytest.mark.parametrize("mode", ["think", "no_think"])
def test_eval_force_mode_starts_every_response_with_the_tag(tmp_path, tiny_model_dir, mode):
    out = tmp_path / "out"
    assert main(["eval", "--model", str(tiny_model_dir), "--n", "3", "--max-new-tokens", "4", "--force-mode", mode,
                 "--output", str(out)]) == 0
    responses = json.loads((out / "eval.json").read_text())["responses"]
    assert len(responses) == 3 and all(r["mode"] == mode for r in responses)


@pytest.mark.parametrize("flags, mode_format", [([], True), (["--answer-only"], False)])
def test_eval_hybrid_grades_forced_rollouts_with_their_format_unless_answer_only(tmp_path, tiny_model_dir, flags,
                                                                                 mode_format):
    out = tmp_path / "out"
    assert main(["eval", "--model", str(tiny_model_dir), "--n", "2", "--max-new-tokens", "4", "--hybrid", "--k", "1",
                 *flags, "--output", str(out)]) == 0
    assert json.loads((out / "hybrid.json").read_text())["summary"]["config"]["mode_format"] is mode_format


def test_analyze_writes_plots_and_json(tmp_path, tiny_model_dir):
    out = tmp_path / "an"
    assert main(["analyze", "--model", str(tiny_model_dir), "--n", "2", "--max-new-tokens", "4", "--output", str(out)]) == 0
    result = json.loads((out / "analysis.json").read_text())
    assert len(result["H"]) == 3  # embeddings + 2 layers
    assert (out / "entropy.png").stat().st_size > 1000
    assert result["label"] == tiny_model_dir.name and not result["apply_final_norm"]
    normed = tmp_path / "an-normed"
    assert main(["analyze", "--model", str(tiny_model_dir), "--n", "2", "--max-new-tokens", "4", "--final-norm",
                 "--output", str(normed)]) == 0
    with_norm = json.loads((normed / "analysis.json").read_text())
    assert with_norm["apply_final_norm"] and with_norm["H"][1:] != result["H"][1:]


def test_analyze_compare_measures_each_after_model_against_before(tmp_path, tiny_model, tiny_tokenizer, tiny_model_dir,
                                                                   capsys):
    from thinklean.models.tiny import save_pretrained

    with torch.no_grad():  # a "trained" copy: layer 2's MLP output moved
        tiny_model.model.layers[1].mlp.down_proj.weight.mul_(3.0)
    moved = tmp_path / "moved" / "model"
    save_pretrained(tiny_model, tiny_tokenizer, moved)
    out = tmp_path / "cmp"
    args = ["analyze", "--n", "2", "--max-new-tokens", "4", "--output", str(out), "--compare"]
    assert main([*args, str(tiny_model_dir), str(tiny_model_dir), str(moved)]) == 0
    comparison = json.loads((out / "comparison.json").read_text())
    assert len(comparison["after"]) == 2
    same, changed = comparison["abs_H_change"].values()  # labels made unique: the first AFTER is BEFORE again
    assert same == [0.0, 0.0, 0.0]  # same weights, same seed, same samples
    assert changed[2] > 0.0  # layer 2's policy moved
    rows = (out / "comparison.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 3 and rows[0].startswith("after,layer,H_before,H_after,abs_H_change")
    assert (out / "entropy_change.png").stat().st_size > 1000
    assert main([*args, str(tiny_model_dir)]) == 2
    assert "--compare: expected BEFORE and at least one AFTER" in capsys.readouterr().err


def test_analyze_reads_a_llama_checkpoint_directory(tmp_path, tiny_tokenizer):
    """A SmolLM2-shaped checkpoint (LlamaForCausalLM, grouped-query attention, tied embeddings)
    saved as a plain HF directory goes through the same code path as the shipped Qwen2."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from thinklean.models.tiny import save_pretrained

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=48, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=3, num_key_value_heads=1, tie_word_embeddings=True,
                         pad_token_id=tiny_tokenizer.pad_token_id, eos_token_id=tiny_tokenizer.eos_token_id)
    llama_dir = tmp_path / "smollm2-like"
    save_pretrained(LlamaForCausalLM(config), tiny_tokenizer, llama_dir)
    out = tmp_path / "an"
    assert main(["analyze", "--model", str(llama_dir), "--n", "2", "--max-new-tokens", "4", "--output", str(out)]) == 0
    result = json.loads((out / "analysis.json").read_text())
    assert len(result["H"]) == 4  # embeddings + 3 layers
    assert all(0.0 < h <= math.log(len(tiny_tokenizer)) + 1e-4 for h in result["H"])
    assert all(path.stat().st_size > 1000 for path in out.glob("*.png")) and len(list(out.glob("*.png"))) >= 2


def test_explain_tokens_writes_a_coloured_page(tmp_path, tiny_model_dir):
    out = tmp_path / "ex"
    assert main(["explain-tokens", "--model", str(tiny_model_dir), "--n", "2", "--max-new-tokens", "5",
                 "--output", str(out)]) == 0
    page = (out / "tokens.html").read_text()
    assert page.count("<h3>") == 2 and page.count("title=\"s̃=") >= 2 and "rgba(" in page


def test_data_hft_writes_both_modes_and_rejects_bad_rules(tmp_path, capsys):
    out = tmp_path / "hft.jsonl"
    assert main(["data", "hft", "--n", "60", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    modes = {r["mode"] for r in rows}
    assert len(rows) == 60 and modes == {"think", "no_think"}
    assert all(r["difficulty"] == 1 and not r["risky_steps"] for r in rows if r["mode"] == "no_think")  # the default rule
    assert main(["data", "hft", "--no-think-rule", "easy", "--output", str(tmp_path / "x.jsonl")]) == 2
    assert "--no-think-rule" in capsys.readouterr().err


def test_data_hft_upsamples_no_think_rows_to_the_share(tmp_path, capsys):
    out = tmp_path / "hft.jsonl"
    assert main(["data", "hft", "--n", "60", "--no-think-rule", "difficulty<=1", "--no-think-share", "1",
                 "--no-think-upsample", "0.75", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # 50 think rows (difficulties 2-6) stay; the 10 direct answers repeat to 50 * 0.75 / 0.25 = 150 rows
    assert sum(r["mode"] == "think" for r in rows) == 50 and sum(r["mode"] == "no_think" for r in rows) == 150
    assert "200 rows: 50 think, 150 no_think" in capsys.readouterr().out
    assert main(["data", "hft", "--no-think-upsample", "1.5", "--output", str(tmp_path / "x.jsonl")]) == 2
    assert "--no-think-upsample: share must be in (0, 1)" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_device_cuda_without_a_gpu_is_a_usage_error(tmp_path, capsys):
    for command in (["eval"], ["analyze"], ["explain-tokens"], ["data", "hft", "--model", "base"]):
        assert main([*command, "--device", "cuda", "--output", str(tmp_path / "o")]) == 2
        assert "--device cuda: no CUDA GPU is visible" in capsys.readouterr().err


def test_eval_on_an_explicit_cpu_device(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    assert main(["eval", "--model", str(tiny_model_dir), "--n", "2", "--max-new-tokens", "4", "--device", "cpu",
                 "--output", str(out)]) == 0
    assert (out / "eval.json").is_file()
