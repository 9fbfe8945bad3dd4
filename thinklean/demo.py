"""``thinklean demo``: base model -> RL methods with one budget -> held-out eval -> report.

A thin script over library calls. Every method starts from the shipped base model with the
same step budget, prompts, samples and seed, and is evaluated greedily on the same held-out
problems. A method whose ``OUTPUT/METHOD/eval.json`` exists is not re-run (the demo resumes
where it stopped). ``OUTPUT/results.json`` is shaped ``{"methods": {"base": {...}, "grpo":
{...}, ...}, "config": {...}}`` with accuracy as a fraction; later methods add entries under
the same keys.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from thinklean.eval.evaluate import EvalConfig, arith_examples, evaluate
from thinklean.eval.report import write_report
from thinklean.eval.tables import print_comparison, print_eval
from thinklean.models.tiny import BASE_MODEL_DIR, load_pretrained

# name -> (trainer method, reward override); every entry trains from the base model
DEMO_METHODS: dict[str, tuple[str, str | None]] = {
    "grpo": ("grpo", None),
    "hmpo": ("hmpo", None),
    "kimi": ("grpo", "kimi"),
    "shorterbetter": ("grpo", "shorterbetter"),
}
DEFAULT_METHODS = ("grpo", "hmpo")


@dataclass
class DemoBudget:
    """What every method gets: the same steps, prompts, samples and response cap."""

    steps: int = 40
    prompts_per_step: int = 8
    samples_per_prompt: int = 8
    max_new_tokens: int = 200
    lr: float = 2e-5
    n_eval: int = 500


QUICK = DemoBudget(steps=3, prompts_per_step=4, samples_per_prompt=4, max_new_tokens=200, n_eval=40)


def _load_summary(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text())["summary"] if path.is_file() else None


def train_method(name: str, budget: DemoBudget, run_dir: Path, seed: int, base_model: Path = BASE_MODEL_DIR,
                 show_progress: bool = True) -> Path:
    """Train one demo method from the base model; returns its final model directory."""
    from thinklean.data.jsonl import Example
    from thinklean.methods import get_trainer_class
    from thinklean.train.config import load_config

    method, reward = DEMO_METHODS[name]
    overrides = {k: (v, 0) for k, v in asdict(budget).items() if k != "n_eval"}
    overrides.update({"seed": (seed, 0), "save_every": (10, 0)})
    if reward is not None:
        overrides["reward"] = (reward, 0)
    config = load_config(method, None, overrides)
    model, tokenizer = load_pretrained(base_model)
    train: list[Example] = arith_examples(config.train_problems, "train", seed)
    trainer = get_trainer_class(method)(model, tokenizer, config, train, run_dir)
    trainer.train(resume=True, show_progress=show_progress)
    return run_dir / "model"


def run_demo(
    output: str | Path = "demo-out",
    quick: bool = False,
    rebuild: bool = False,
    seed: int = 0,
    n_eval: int | None = None,
    methods: tuple[str, ...] = DEFAULT_METHODS,
    budget: DemoBudget | None = None,
    base_model: str | Path = BASE_MODEL_DIR,
) -> dict[str, Any]:
    """Run the demo end to end and write ``OUTPUT/results.json``; returns the results dict."""
    console = Console()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    budget = budget or (QUICK if quick else DemoBudget())
    if n_eval is not None:
        budget = DemoBudget(**{**asdict(budget), "n_eval": n_eval})
    unknown = [m for m in methods if m not in DEMO_METHODS]
    if unknown:
        raise ValueError(f"unknown demo method(s) {unknown} (available: {', '.join(DEMO_METHODS)})")
    start = time.time()
    if rebuild:
        from thinklean.train.base_model import build_base_model

        console.print("[bold]rebuilding the base model[/bold] (SFT on mixed-verbosity arithmetic)")
        info = build_base_model(base_model, output / "base-build", seed=seed)
        console.print(f"base model rebuilt: sha256 {info['sha256']}")
    examples = arith_examples(budget.n_eval, "test", seed)
    eval_config = EvalConfig(max_new_tokens=budget.max_new_tokens, seed=seed)
    results: dict[str, Any] = {"methods": {}, "config": {"seed": seed, "quick": quick, "budget": asdict(budget),
                                                        "base_model": str(base_model), "methods": list(methods)}}
    for name in ("base", *methods):
        run_dir = output / name
        summary = _load_summary(run_dir / "eval.json")
        if summary is None:
            t0 = time.time()
            if name == "base":
                model_dir = Path(base_model)
            else:
                console.print(f"[bold]training {name}[/bold]: {budget.steps} steps × {budget.prompts_per_step} prompts × {budget.samples_per_prompt} samples")
                model_dir = train_method(name, budget, run_dir, seed, Path(base_model))
            model, tokenizer = load_pretrained(model_dir)
            with console.status(f"evaluating {name} on {len(examples)} held-out problems"):
                summary = evaluate(model, tokenizer, examples, eval_config, output=run_dir / "eval.json")
            summary["wall_seconds"] = round(time.time() - t0, 1)
            console.print(f"{name}: accuracy {100 * summary['accuracy']:.1f}%, {summary['mean_response_tokens']:.1f} tokens")
        else:
            console.print(f"{name}: already done ({run_dir / 'eval.json'}), skipping")
        results["methods"][name] = summary
        (output / "results.json").write_text(json.dumps(results, indent=1))
    print_eval(results["methods"]["base"], "base model", console)
    print_comparison(results["methods"], console)
    results["config"]["total_seconds"] = round(time.time() - start, 1)
    (output / "results.json").write_text(json.dumps(results, indent=1))
    report = write_report([output], output / "report")
    console.print(f"wrote {output / 'results.json'} and {report['html']}; total {time.time() - start:.0f}s")
    return results
