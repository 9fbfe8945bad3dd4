"""``thinklean demo``: base model -> RL methods with one budget -> held-out eval -> report.

A thin script over library calls. Every method starts from the shipped base model (HGPO from
a hybrid model built from it, see below) with the same step budget, prompts, samples and seed, and is evaluated (sampled at
``DemoBudget.eval_temperature``, default 1.0, with one seed) on the same held-out problems;
the same problems are evaluated during training (``DemoBudget.eval_every``), so the report can
interpolate compression at the base model's accuracy. Each row's directory records what it was
made with (``OUTPUT/METHOD/demo-run.json``: budget, seed, ``quick`` and the SHA-256 of the base
model's weights). A row whose ``eval.json`` exists under this run's record is not re-run, and an
interrupted one resumes from its checkpoint; a row recorded under another one (or finished with
no record) stops the demo before any work with :class:`StaleResultsError`, unless ``overwrite``,
which deletes and re-runs it.
``OUTPUT/results.json`` is shaped ``{"methods": {"base": {...}, "grpo": {...}, ...}, "config":
{...}}`` with accuracy as a fraction; later methods add entries under the same keys.

``--methods all`` runs every entry of :data:`DEMO_METHODS`. L1 is trained with
"Think for N tokens." prompts but evaluated, like every method here, on the plain questions.
HGPO starts from a hybrid model that the demo first builds from the base model
(:func:`thinklean.methods.lhrm.build_hft_model`, in ``OUTPUT/hft-build``) and reports as the
``hft`` row; both rows also get the hybrid metrics (HAcc, think ratio) under ``"hybrid"``.
LiteReason starts from a model with a trained projector that the demo first builds from the base
model (:func:`thinklean.methods.litereason.build_start_model`, in ``OUTPUT/litereason-sft``) and
reports as the ``litereason-sft`` row; both rows are evaluated with latent decoding from the
LiteReason prompt, and their summaries add ``latent_steps_mean`` and ``latent_rows``.
With BuPO, the report also shows the per-layer entropies of the base, GRPO and BuPO models
(:func:`entropy_comparison`, in ``OUTPUT/analyze``).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console

from thinklean.data.jsonl import Example

# The model, evaluation and report modules are imported where used, so that the CLI can read
# the method lists below for its --help without loading torch.

# name -> (trainer method, config overrides on top of its YAML); each trains from the base model or, for
# the methods in STARTS, from the start model the demo builds from it first
DEMO_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "grpo": ("grpo", {}),
    "drgrpo": ("drgrpo", {}),
    "dapo": ("dapo", {}),
    "rloo": ("rloo", {}),
    "hmpo": ("hmpo", {}),
    "kimi": ("grpo", {"reward": "kimi"}),
    "shorterbetter": ("grpo", {"reward": "shorterbetter"}),
    "l1": ("l1", {}),
    "thinkprune": ("thinkprune", {}),
    # GRPO's optimisation (not bupo.yaml's token-mean, dual clip and weight decay), so that the
    # IPA phase (BUPO_IPA_SHARE of the steps) is the only difference from the grpo row
    "bupo": ("bupo", {"loss_agg": "seq-mean-token-mean", "dual_clip": None, "weight_decay": 0.0}),
    "iapo": ("iapo", {}),
    "hgpo": ("hgpo", {}),  # from the hft row's model; 8 samples per prompt = 4 forced per mode
    # from the litereason-sft row's model (LM + trained projector); the prompts GRPO sees (RLConfig's
    # default pool, not litereason.yaml's 400 for a projector refresh every 100 steps)
    "litereason": ("litereason", {"train_problems": 20000}),
}
# methods that start from the hybrid (HFT) model, which the demo builds first and reports as a row
HYBRID_METHODS = ("hgpo",)
HYBRID_START = "hft"
# LiteReason starts from a model the demo builds first (data litereason + litereason-sft), also a row
LITEREASON_START = "litereason-sft"
STARTS = {**{m: HYBRID_START for m in HYBRID_METHODS}, "litereason": LITEREASON_START}
DEFAULT_METHODS = ("grpo", "hmpo")
BUPO_IPA_SHARE = 0.1  # BuPO's IPA phase: this share of the demo's steps, at least 1 (bupo.md: about 10%)
ANALYZE_PROMPTS = 32  # held-out prompts for the report's entropy plots, as `thinklean analyze --n 32`
RUN_RECORD = "demo-run.json"  # in each row's directory: what the row was made with


class StaleResultsError(ValueError):
    """The output directory holds rows made with another budget, seed or base model."""


@dataclass
class DemoBudget:
    """What every method gets: the same steps, prompts, samples and response cap."""

    steps: int = 40
    prompts_per_step: int = 8
    samples_per_prompt: int = 8
    max_new_tokens: int = 320  # the longest checking responses (6 operations, every step checked) are ~280
    lr: float = 3e-5  # 1e-4 collapsed GRPO entropy (0.15 -> 0.05 nats) and accuracy (69 -> 54% by step 20)
    n_eval: int = 500
    eval_every: int = 20  # held-out evaluations during training (0: none), for iso-accuracy
    # sampled evaluation: the base model's greedy answer is always its terse style, so greedy
    # scores cannot show a method moving the style mix; T=1 scores the policy as it samples
    eval_temperature: float = 1.0


QUICK = DemoBudget(steps=3, prompts_per_step=4, samples_per_prompt=4, max_new_tokens=200, n_eval=40, eval_every=2)
HYBRID_K = 4  # forced samples per mode behind each prompt's correct mode (hybrid metrics)


def hft_stages(quick: bool) -> tuple[Any, ...]:
    """The HFT recipe the demo builds (a few steps of each stage with ``quick``)."""
    from thinklean.methods.lhrm import HFT_STAGES, HFTStage
    from thinklean.train.sft import SFTConfig

    if not quick:
        return HFT_STAGES
    return tuple(HFTStage(s.name, SFTConfig(steps=3, batch_size=8, lr=s.config.lr), 120, s.no_think_rule,
                          s.no_think_share, s.no_think_upsample) for s in HFT_STAGES)


def methods_with_starts(methods: Sequence[str]) -> tuple[str, ...]:
    """``methods`` with each start model's row (:data:`STARTS`: ``hft``, ``litereason-sft``)
    before the first method that needs it."""
    names: list[str] = []
    for m in methods:
        if m in STARTS and STARTS[m] not in names:
            names.append(STARTS[m])
        names.append(m)
    return tuple(names)


def check_methods(methods: Sequence[str]) -> None:
    """``ValueError`` naming any method that is not in the demo."""
    unknown = [m for m in methods if m not in DEMO_METHODS]
    if unknown:
        raise ValueError(f"not a demo method: {', '.join(unknown)}; available: {', '.join(DEMO_METHODS)}, all")


def _earlier_methods(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Method entries of an earlier demo in the same output directory, if it used the same seed,
    budget and base model weights (so the table can put them side by side with this run's)."""
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    same = all(earlier.get("config", {}).get(key) == config[key] for key in ("seed", "budget", "base_model_sha256"))
    return earlier.get("methods", {}) if same else {}


def weights_sha256(model_dir: Path) -> str:
    """SHA-256 over the model directory's ``*.safetensors`` files (sorted by name)."""
    from thinklean.train.base_model import sha256_file

    return "-".join(sha256_file(f) for f in sorted(model_dir.glob("*.safetensors")))


def _row_dirs(output: Path, name: str) -> list[Path]:
    """The directories a row's work lives in (the hybrid row's model is built in ``hft-build``)."""
    return [output / name, *([output / "hft-build"] if name == HYBRID_START else [])]


def _has_work(output: Path, name: str) -> bool:
    """Whether row ``name`` was started: a record, an evaluation, checkpoints or a model."""
    entries = [output / name / entry for entry in (RUN_RECORD, "eval.json", "checkpoints", "model")]
    return any(p.exists() for p in entries) or (name == HYBRID_START and (output / "hft-build").exists())


def _is_stale(output: Path, name: str, record: dict[str, Any]) -> bool:
    """Whether row ``name`` holds work made under another record (or under none, or an unreadable one)."""
    saved = output / name / RUN_RECORD
    try:
        return json.loads(saved.read_text()) != record
    except (OSError, ValueError):
        return _has_work(output, name)


def _record_change(saved: Path, record: dict[str, Any]) -> str:
    """How the record in ``saved`` differs from ``record``, e.g. ``budget.steps 40 -> 5``."""
    def flat(r: dict[str, Any]) -> dict[str, Any]:
        return {**{k: v for k, v in r.items() if k != "budget"}, **{f"budget.{k}": v for k, v in r["budget"].items()}}

    try:
        before = flat(json.loads(saved.read_text()))
    except (OSError, ValueError, KeyError, AttributeError):
        return f"{saved.parent} has no readable {RUN_RECORD}"
    now = flat(record)
    return ", ".join(f"{k} {before.get(k)} -> {now.get(k)}" for k in sorted({*before, *now}) if before.get(k) != now.get(k))


def _clear_stale(output: Path, names: Sequence[str], record: dict[str, Any], overwrite: bool) -> None:
    """Delete the stale rows among ``names`` when ``overwrite``; else :class:`StaleResultsError`."""
    stale = [name for name in names if _is_stale(output, name, record)]
    if stale and not overwrite:
        raise StaleResultsError(
            f"{output} holds {', '.join(stale)} from another budget, seed or base model "
            f"({_record_change(output / stale[0] / RUN_RECORD, record)}); pass --overwrite to re-run "
            f"{'it' if len(stale) == 1 else 'them'}, or choose another --output")
    for name in stale:
        for path in _row_dirs(output, name):
            shutil.rmtree(path, ignore_errors=True)


def _load_summary(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text())["summary"] if path.is_file() else None


def _hybrid_summary(model_dir: Path, examples: Sequence[Example], budget: DemoBudget, seed: int, run_dir: Path,
                    console: Console) -> dict[str, Any]:
    """HAcc, think ratio and forced-mode accuracies of a hybrid model (``RUN_DIR/hybrid.json``)."""
    from thinklean.eval.hybrid import hybrid_accuracy, print_hybrid
    from thinklean.models.tiny import load_pretrained

    model, tokenizer = load_pretrained(model_dir)
    console.print(f"hybrid accuracy of {run_dir.name}: {HYBRID_K} forced samples per mode and one greedy answer per problem")
    summary = hybrid_accuracy(model, tokenizer, examples, k=HYBRID_K, max_new_tokens=budget.max_new_tokens, seed=seed,
                              output=run_dir / "hybrid.json")
    print_hybrid(summary, title=f"hybrid accuracy: {run_dir.name}", console=console)
    return {key: value for key, value in summary.items() if key != "config"}


def litereason_recipe(quick: bool) -> Any:
    """The recipe of the demo's LiteReason start model (a few problems and steps with ``quick``)."""
    from thinklean.methods.litereason import StartRecipe

    return StartRecipe(problems=8, k=2, max_new_tokens=120) if quick else StartRecipe()


def _latent_summary(model_dir: Path, examples: Sequence[Example], budget: DemoBudget, seed: int,
                    output: Path) -> dict[str, Any]:
    """:func:`~thinklean.methods.litereason.evaluate_latent` of a model with its projector, as the
    demo samples every model (``eval_temperature``, ``max_new_tokens``)."""
    from thinklean.methods.litereason import evaluate_latent, load_projector
    from thinklean.models.tiny import load_pretrained
    from thinklean.rollout import SamplingConfig

    model, tokenizer = load_pretrained(model_dir)
    sampling = SamplingConfig(max_new_tokens=budget.max_new_tokens, temperature=budget.eval_temperature)
    return evaluate_latent(model, tokenizer, load_projector(model), examples, sampling, seed, output)


def method_config(name: str, budget: DemoBudget, seed: int, eval_problems: int = 0, report_to: str = "none") -> Any:
    """The :class:`~thinklean.train.rl.RLConfig` the demo trains ``name`` with: the method's YAML,
    then the budget, then the entry's overrides in :data:`DEMO_METHODS` (and ``report_to``)."""
    from thinklean.train.config import load_config

    method, method_overrides = DEMO_METHODS[name]
    if method == "bupo":
        s_inter = max(1, round(BUPO_IPA_SHARE * budget.steps))
        method_overrides = {**method_overrides, "method_kwargs": {"s_inter": s_inter}}
    overrides = {k: (v, 0) for k, v in {**asdict(budget), **method_overrides}.items() if k != "n_eval"}
    overrides.update({"seed": (seed, 0), "save_every": (10, 0), "report_to": (report_to, 0)})
    if eval_problems:
        overrides["eval_problems"] = (eval_problems, 0)
    return load_config(method, None, overrides)


def entropy_comparison(output: Path, base_model: Path, names: Sequence[str], seed: int, max_new_tokens: int,
                       console: Console) -> list[Path]:
    """With ``bupo`` among ``names``: per-layer entropies of the base model against the trained
    ``grpo`` (when run) and ``bupo`` models, as ``thinklean analyze --compare base OUTPUT/grpo/model
    OUTPUT/bupo/model --n 32`` with ``max_new_tokens``, written to ``OUTPUT/analyze``. Returns the
    two plots for the report (none without a trained BuPO model)."""
    trained = [(m, output / m / "model") for m in ("grpo", "bupo") if m in names and (output / m / "model").is_dir()]
    if "bupo" not in dict(trained):
        return []
    from thinklean.analysis.entropy import analyze_model, write_analysis
    from thinklean.data.formats import format_prompt
    from thinklean.eval.evaluate import arith_examples
    from thinklean.models.tiny import load_pretrained

    console.print(f"per-layer entropies (thinklean analyze) of base, {', '.join(dict(trained))} -> {output / 'analyze'}")
    examples = arith_examples(ANALYZE_PROMPTS, "test", seed)
    results = []
    for label, model_dir in [("base", base_model), *trained]:
        model, tokenizer = load_pretrained(model_dir)
        prompts = [format_prompt(e.prompt, tokenizer) for e in examples]
        result = analyze_model(model, tokenizer, prompts, max_new_tokens=max_new_tokens, seed=seed, name=str(model_dir))
        results.append({**result, "label": label})
    paths = write_analysis(results[1], output / "analyze", compare=results[0], others=results[2:])
    return [paths["entropy_plot"], paths["change_plot"]]


def train_method(name: str, budget: DemoBudget, run_dir: Path, seed: int, base_model: str | Path | None = None,
                 show_progress: bool = True, eval_examples: Sequence[Example] = (), report_to: str = "none") -> Path:
    """Train one demo method from ``base_model`` (default: the shipped one); returns its final
    model directory. ``eval_examples`` are evaluated every ``budget.eval_every`` steps (logged
    in metrics.jsonl and to the ``report_to`` trackers)."""
    from thinklean.eval.evaluate import arith_examples
    from thinklean.methods import get_trainer_class
    from thinklean.models.tiny import BASE_MODEL_DIR, load_pretrained

    config = method_config(name, budget, seed, len(eval_examples), report_to)
    model, tokenizer = load_pretrained(base_model or BASE_MODEL_DIR)
    train: list[Example] = arith_examples(config.train_problems, "train", seed)
    trainer = get_trainer_class(config.method)(model, tokenizer, config, train, run_dir, eval_examples)
    trainer.train(resume=True, show_progress=show_progress)
    return run_dir / "model"


def run_demo(
    output: str | Path = "demo-out",
    quick: bool = False,
    rebuild: bool = False,
    seed: int = 0,
    n_eval: int | None = None,
    steps: int | None = None,
    methods: tuple[str, ...] = DEFAULT_METHODS,
    budget: DemoBudget | None = None,
    base_model: str | Path | None = None,
    report_to: str = "none",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the demo end to end and write ``OUTPUT/results.json``; returns the results dict.

    ``base_model`` defaults to the shipped base model; every training run (start models and
    methods) logs to the ``report_to`` trackers (:mod:`thinklean.train.trackers`). Rows that
    ``OUTPUT`` holds from another budget, seed or base model raise :class:`StaleResultsError`
    before any work, unless ``overwrite`` (they are deleted and re-run).
    """
    from thinklean.eval.evaluate import EvalConfig, arith_examples, evaluate
    from thinklean.eval.report import write_report
    from thinklean.eval.tables import print_comparison, print_eval
    from thinklean.models.tiny import BASE_MODEL_DIR, load_pretrained
    from thinklean.train.monitor import progress_bar

    base_model = Path(base_model or BASE_MODEL_DIR)
    console = Console()
    output = Path(output)
    budget = budget or (QUICK if quick else DemoBudget())
    if n_eval is not None:
        budget = DemoBudget(**{**asdict(budget), "n_eval": n_eval})
    if steps is not None:
        budget = DemoBudget(**{**asdict(budget), "steps": steps})
    check_methods(methods)
    names = ("base", *methods_with_starts(methods))
    record = {"seed": seed, "quick": quick, "budget": asdict(budget), "base_model_sha256": weights_sha256(base_model)}
    if rebuild and not overwrite and any(_has_work(output, name) for name in names):
        raise StaleResultsError(f"--rebuild: {output} holds results of the current base model; pass --overwrite to "
                                "re-run them on the rebuilt one, or choose another --output")
    _clear_stale(output, names, record, overwrite)
    output.mkdir(parents=True, exist_ok=True)
    start = time.time()
    if rebuild:
        from thinklean.train.base_model import build_base_model

        console.print("[bold]rebuilding the base model[/bold] (SFT of base-v1 on the checking styles)")
        info = build_base_model(base_model, output / "base-build", seed=seed)
        console.print(f"base model rebuilt: sha256 {info['sha256']}")
        record["base_model_sha256"] = weights_sha256(base_model)
        _clear_stale(output, names, record, overwrite=True)
    examples = arith_examples(budget.n_eval, "test", seed)
    eval_config = EvalConfig(max_new_tokens=budget.max_new_tokens, temperature=budget.eval_temperature, seed=seed)
    results: dict[str, Any] = {"methods": {}, "config": {"seed": seed, "quick": quick, "budget": asdict(budget),
                                                        "base_model": str(base_model),
                                                        "base_model_sha256": record["base_model_sha256"],
                                                        "methods": list(methods)}}
    earlier = {k: v for k, v in _earlier_methods(output / "results.json", results["config"]).items() if k not in names}
    stages = tuple(replace(s, config=replace(s.config, report_to=report_to)) for s in hft_stages(quick))
    start_models = {HYBRID_START: output / "hft-build" / stages[-1].name / "model",
                    LITEREASON_START: output / LITEREASON_START / "model"}
    latent_names = (LITEREASON_START, "litereason")
    for index, name in enumerate(names, start=1):
        run_dir = output / name
        summary = _load_summary(run_dir / "eval.json")
        if summary is None:
            t0 = time.time()
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / RUN_RECORD).write_text(json.dumps(record, indent=1))
            if name == "base":
                model_dir = base_model
            elif name == HYBRID_START:
                from thinklean.methods.lhrm import build_hft_model

                hybrid_model = start_models[HYBRID_START]
                if (hybrid_model / "model.safetensors").is_file():
                    console.print(f"[{index}/{len(names)}] hybrid model for {', '.join(HYBRID_METHODS)}: {hybrid_model}")
                else:
                    console.print(f"[bold][{index}/{len(names)}] building the hybrid model[/bold] for "
                                  f"{', '.join(HYBRID_METHODS)}: HFT with upsampled direct answers "
                                  "(thinklean.methods.lhrm.HFT_STAGES; about 50 min on 2 cores)")
                model_dir = build_hft_model(base_model, output / "hft-build", stages, seed)
            elif name == LITEREASON_START:
                from thinklean.methods.litereason import build_start_model

                recipe = litereason_recipe(quick)
                console.print(f"[bold][{index}/{len(names)}] building the LiteReason start model[/bold]: "
                              f"{recipe.k} traces of {recipe.problems} problems, correct ones with sentences made "
                              f"latent, then {recipe.epochs:g} epoch of projector + LM SFT (25 min on a shared 2-core machine)")
                model_dir = build_start_model(base_model, run_dir, recipe, seed, report_to=report_to)
            else:
                console.print(f"[bold][{index}/{len(names)}] training {name}[/bold]: {budget.steps} steps × "
                              f"{budget.prompts_per_step} prompts × {budget.samples_per_prompt} samples")
                start_model = start_models[STARTS[name]] if name in STARTS else base_model
                model_dir = train_method(name, budget, run_dir, seed, start_model, eval_examples=examples,
                                         report_to=report_to)
            # the trainer's last periodic evaluation already wrote eval.json for the final model
            summary = _load_summary(run_dir / "eval.json")
            if summary is None and name in latent_names:
                summary = _latent_summary(model_dir, examples, budget, seed, run_dir / "eval.json")
            if summary is None:
                model, tokenizer = load_pretrained(model_dir)
                with progress_bar() as bar:
                    task = bar.add_task(f"[{index}/{len(names)}] evaluating {name}", total=len(examples), info="problems")
                    summary = evaluate(model, tokenizer, examples, eval_config, output=run_dir / "eval.json",
                                       on_progress=partial(bar.advance, task))
            if name == HYBRID_START or name in HYBRID_METHODS:
                summary["hybrid"] = _hybrid_summary(model_dir, examples, budget, seed, run_dir, console)
            summary["wall_seconds"] = round(time.time() - t0, 1)
            console.print(f"{name}: accuracy {100 * summary['accuracy']:.1f}%, {summary['mean_response_tokens']:.1f} tokens"
                          f" ({summary['wall_seconds']:.0f}s)")
        else:
            console.print(f"[{index}/{len(names)}] {name}: already done ({run_dir / 'eval.json'}), skipping")
        results["methods"][name] = summary
        if name == "base":  # earlier methods follow the base model, this run's come last
            results["methods"].update(earlier)
        (output / "results.json").write_text(json.dumps(results, indent=1))
    print_eval(results["methods"]["base"], "base model", console)
    print_comparison(results["methods"], console)
    results["config"]["total_seconds"] = round(time.time() - start, 1)
    (output / "results.json").write_text(json.dumps(results, indent=1))
    entropy_plots = entropy_comparison(output, base_model, list(results["methods"]), seed, budget.max_new_tokens,
                                       console)
    report = write_report([output], output / "report", extra_images=entropy_plots)
    console.print(f"wrote {output / 'results.json'} and {report['html']}; total {time.time() - start:.0f}s")
    return results
