"""``thinklean demo``: base model -> RL methods with one budget -> held-out eval -> report.

A thin script over library calls, driven by the method registry (:mod:`thinklean.methods`).
Every method starts from the shipped base model (or from the start model its spec builds from
it, reported as a row of its own) with the same step budget, prompts, samples and seed, and is
evaluated (sampled at ``DemoBudget.eval_temperature``, default 1.0, with one seed) on the same
held-out problems; the same problems are evaluated during training (``DemoBudget.eval_every``),
so the report can interpolate compression at the base model's accuracy. A method's spec may
replace the evaluation, add entries to a row's summary and add images to the report. Each row's
directory records what it was made with (``OUTPUT/METHOD/demo-run.json``: budget, seed,
``quick``, the SHA-256 of the base model's weights and, for a start row and the rows trained from
it, the start model's recipe). A row whose ``eval.json`` exists under
this run's record is not re-run, and an interrupted one resumes from its checkpoint; a row
recorded under another one (or finished with no record) stops the demo before any work with
:class:`StaleResultsError`, unless ``overwrite``, which deletes and re-runs it.
``OUTPUT/results.json`` is shaped ``{"methods": {"base": {...}, "grpo": {...}, ...}, "config":
{...}}`` with accuracy as a fraction; later methods add entries under the same keys.

``--methods all`` runs every demo row of the registry (:data:`DEMO_METHODS`), plugins' included.
Methods are evaluated on the plain questions (L1 without its length target).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console

from thinklean.data.jsonl import Example

from thinklean.methods import DEMO_ROWS, METHODS, DemoStage, MethodSpec

# The model, evaluation and report modules are imported where used.

# row name -> (method, config overrides on top of its config), in registration order; each row
# trains from the base model or from its method's start model, which the demo builds first
DEMO_METHODS = DEMO_ROWS
DEFAULT_METHODS = ("grpo", "hmpo")
RUN_RECORD = "demo-run.json"  # in each row's directory: what the row was made with


class StaleResultsError(ValueError):
    """The output directory holds rows made with another budget, seed or base model."""


@dataclass
class DemoBudget:
    """What every method gets: the same steps, prompts, samples, response cap and trained weights
    (``train_only``: a regular expression over parameter names, ``""`` every weight); the learning
    rate is ``lr`` except for the rows in ``lr_by_row``, which train at their own."""

    steps: int = 40
    prompts_per_step: int = 8
    samples_per_prompt: int = 8
    # the base model's longest responses (6 operations, every step checked) average 289 tokens and
    # reach 321 (1 of 100 references); none of its 2,000 samples was cut (docs/task.md)
    max_new_tokens: int = 320
    # GRPO's best lr over 5 seeds (3e-5 of 1e-5 / 3e-5 / 5e-5, MLPs only; docs/task.md), so the baseline
    # is not weakened; HMPO: 91.7% here, 90.7% at 2e-5 on cand-restate (docs/results-v3.md)
    lr: float = 3e-5
    lr_by_row: dict[str, float] = field(default_factory=dict)
    # the MLP weights only: GRPO and HMPO are both more accurate than with every weight (docs/task.md)
    train_only: str = "mlp"
    n_eval: int = 500
    eval_every: int = 20  # held-out evaluations during training (0: none), for iso-accuracy
    # sampled evaluation: the base model's greedy answer is always its terse style, so greedy
    # scores cannot show a method moving the style mix; T=1 scores the policy as it samples
    eval_temperature: float = 1.0

    def lr_of(self, row: str) -> float:
        """The learning rate demo row ``row`` trains at."""
        return self.lr_by_row.get(row, self.lr)


# base-v3's figures (docs/results-v3.md) were measured with every weight trained, GRPO at the best lr
# of its sweep then (1e-5 of 1e-5 / 2e-5 / 3e-5 / 1e-4) and BuPO, GRPO after an internal-policy
# phase, at GRPO's
BASE_V3_BUDGET = DemoBudget(lr_by_row={"grpo": 1e-5, "bupo": 1e-5}, train_only="")


def default_budget(base_model: str | Path | None = None) -> DemoBudget:
    """The demo's budget for ``base_model`` (default: the shipped one): base-v3 keeps the budget
    its figures were measured with, every other model gets :class:`DemoBudget`'s defaults."""
    from thinklean.models.tiny import BASE_V3_MODEL_DIR, resolve_model_path

    if base_model is not None and resolve_model_path(base_model).resolve() == BASE_V3_MODEL_DIR.resolve():
        return BASE_V3_BUDGET
    return DemoBudget()


QUICK = DemoBudget(steps=3, prompts_per_step=4, samples_per_prompt=4, max_new_tokens=200, n_eval=40, eval_every=2)


def start_rows() -> dict[str, MethodSpec]:
    """Start-model row -> the (first) method whose spec builds it."""
    out: dict[str, MethodSpec] = {}
    for spec in METHODS.values():
        if spec.start is not None:
            out.setdefault(spec.start.row, spec)
    return out


def row_spec(name: str) -> MethodSpec | None:
    """The spec behind demo row ``name`` (a method row or a start row); ``None`` for ``base``."""
    if name in DEMO_ROWS:
        return METHODS[DEMO_ROWS[name][0]]
    return start_rows().get(name)


def methods_with_starts(methods: Sequence[str]) -> tuple[str, ...]:
    """``methods`` with each start model's row (e.g. ``hft``) before the first method that needs it."""
    names: list[str] = []
    for m in methods:
        start = METHODS[DEMO_ROWS[m][0]].start
        if start is not None and start.row not in names:
            names.append(start.row)
        names.append(m)
    return tuple(names)


def check_methods(methods: Sequence[str]) -> None:
    """``ValueError`` naming any method that is not in the demo."""
    unknown = [m for m in methods if m not in DEMO_ROWS]
    if unknown:
        raise ValueError(f"not a demo method: {', '.join(unknown)}; available: {', '.join(DEMO_ROWS)}, all")


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


def row_record(record: dict[str, Any], name: str) -> dict[str, Any]:
    """``record`` plus ``start_recipe`` when row ``name`` is a start model or trains from one."""
    spec = row_spec(name)
    start = spec.start if spec is not None else None
    if start is None or start.recipe is None:
        return record
    # as it reads back from demo-run.json: dataclasses as dicts, tuples as lists
    recipe = json.loads(json.dumps(start.recipe(record["quick"]), default=asdict))
    return {**record, "start_recipe": recipe}


def _row_dirs(output: Path, name: str) -> list[Path]:
    """The directories a row's work lives in (a start row's build may use more, e.g. ``hft-build``)."""
    spec = start_rows().get(name)
    return [output / name, *(output / d for d in (spec.start.work_dirs if spec else ()))]


def _has_work(output: Path, name: str) -> bool:
    """Whether row ``name`` was started: a record, an evaluation, checkpoints or a model."""
    entries = [output / name / entry for entry in (RUN_RECORD, "eval.json", "checkpoints", "model")]
    return any(p.exists() for p in entries) or any(d.exists() for d in _row_dirs(output, name)[1:])


def _is_stale(output: Path, name: str, record: dict[str, Any]) -> bool:
    """Whether row ``name`` holds work made under another record (or under none, or an unreadable one)."""
    saved = output / name / RUN_RECORD
    try:
        return json.loads(saved.read_text()) != record
    except (OSError, ValueError):
        return _has_work(output, name)


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts and lists as one dict of leaves keyed by path: ``{"budget.lr_by_row.grpo": 1e-05}``."""
    if isinstance(value, (dict, list)):
        out: dict[str, Any] = {}
        for k, v in (value.items() if isinstance(value, dict) else enumerate(value)):
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def _record_change(saved: Path, record: dict[str, Any]) -> str:
    """How the record in ``saved`` differs from ``record``, e.g. ``budget.steps 40 -> 5`` or
    ``start_recipe.0.config.lr 0.0005 -> 0.0001`` (``None``: the entry is missing on that side)."""
    try:
        old = json.loads(saved.read_text())
    except (OSError, ValueError):
        old = None
    if not isinstance(old, dict):
        return f"{saved.parent} has no readable {RUN_RECORD}"
    # an entry one side lacks altogether is named once, not leaf by leaf
    whole = [f"{k} {'recorded' if k in old else 'none'} -> {'recorded' if k in record else 'none'}"
             for k in sorted({*old, *record} - (old.keys() & record.keys()))]
    now = _flat({k: v for k, v in record.items() if k in old})
    before = _flat({k: v for k, v in old.items() if k in record})
    return ", ".join(whole + [f"{k} {before.get(k)} -> {now.get(k)}" for k in sorted({*before, *now})
                              if before.get(k) != now.get(k)])


def _clear_stale(output: Path, names: Sequence[str], record: dict[str, Any], overwrite: bool) -> None:
    """Delete the stale rows among ``names`` when ``overwrite``; else :class:`StaleResultsError`."""
    stale = [name for name in names if _is_stale(output, name, row_record(record, name))]
    if stale and not overwrite:
        raise StaleResultsError(
            f"{output} holds {', '.join(stale)} from another budget, seed, base model or start recipe "
            f"({_record_change(output / stale[0] / RUN_RECORD, row_record(record, stale[0]))}); pass --overwrite "
            f"to re-run {'it' if len(stale) == 1 else 'them'}, or choose another --output")
    for name in stale:
        for path in _row_dirs(output, name):
            shutil.rmtree(path, ignore_errors=True)


def _load_summary(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text())["summary"] if path.is_file() else None


def method_config(name: str, budget: DemoBudget, seed: int, eval_problems: int = 0, report_to: str = "none") -> Any:
    """The :class:`~thinklean.train.rl.RLConfig` the demo trains ``name`` with: the method's YAML,
    then the budget (with the row's lr from ``lr_by_row``), then the row's overrides in
    :data:`DEMO_METHODS` and the spec's ``demo_settings`` for the budget's steps (and ``report_to``)."""
    from thinklean.methods.config import load_config

    method, method_overrides = DEMO_ROWS[name]
    spec = METHODS[method]
    if spec.demo_settings is not None:
        method_overrides = {**method_overrides, "method_kwargs": dict(spec.demo_settings(budget.steps))}
    shared = {k: v for k, v in asdict(budget).items() if k not in ("n_eval", "lr_by_row")}
    shared["lr"] = budget.lr_of(name)
    overrides = {k: (v, 0) for k, v in {**shared, **method_overrides}.items()}
    overrides.update({"seed": (seed, 0), "save_every": (10, 0), "report_to": (report_to, 0)})
    if eval_problems:
        overrides["eval_problems"] = (eval_problems, 0)
    return load_config(method, None, overrides)


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
    from thinklean.runlog import progress_bar

    base_model = Path(base_model or BASE_MODEL_DIR)
    console = Console()
    output = Path(output)
    budget = budget or (QUICK if quick else default_budget(base_model))
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

        console.print("[bold]rebuilding the base model[/bold] (SFT of base-v3 on safe checks that restate their result)")
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
    previous = _earlier_methods(output / "results.json", results["config"])
    earlier = {k: v for k, v in previous.items()
               if k not in names and not _is_stale(output, k, row_record(record, k))}
    starts = start_rows()

    def stage_of(row: str) -> DemoStage:
        return DemoStage(output, output / row, base_model, budget, seed, quick, report_to, console)

    for index, name in enumerate(names, start=1):
        run_dir = output / name
        spec = row_spec(name)
        summary = _load_summary(run_dir / "eval.json")
        if summary is None:
            t0 = time.time()
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / RUN_RECORD).write_text(json.dumps(row_record(record, name), indent=1))
            if name == "base":
                model_dir = base_model
            elif name in starts:
                users = [m for m in methods if getattr(row_spec(m).start, "row", None) == name]
                console.print(f"[{index}/{len(names)}] {name}: the start model of {', '.join(users)}")
                model_dir = spec.start.build(stage_of(name))
            else:
                console.print(f"[bold][{index}/{len(names)}] training {name}[/bold]: {budget.steps} steps × "
                              f"{budget.prompts_per_step} prompts × {budget.samples_per_prompt} samples, "
                              f"lr {budget.lr_of(name):g}")
                start_model = base_model if spec.start is None else spec.start.build(stage_of(spec.start.row))
                model_dir = train_method(name, budget, run_dir, seed, start_model, eval_examples=examples,
                                         report_to=report_to)
            # the trainer's last periodic evaluation already wrote eval.json for the final model
            summary = _load_summary(run_dir / "eval.json")
            if summary is None and spec is not None and spec.evaluate is not None:
                summary = spec.evaluate(stage_of(name), model_dir, examples)
            if summary is None:
                model, tokenizer = load_pretrained(model_dir)
                with progress_bar() as bar:
                    task = bar.add_task(f"[{index}/{len(names)}] evaluating {name}", total=len(examples), info="problems")
                    summary = evaluate(model, tokenizer, examples, eval_config, output=run_dir / "eval.json",
                                       on_progress=partial(bar.advance, task))
            if spec is not None and spec.extra_results is not None:
                summary.update(spec.extra_results(stage_of(name), model_dir, examples))
            summary["wall_seconds"] = round(time.time() - t0, 1)
            console.print(f"{name}: accuracy {100 * summary['accuracy']:.1f}%, {summary['mean_response_tokens']:.1f} tokens"
                          f" ({summary['wall_seconds']:.0f}s)")
        else:
            console.print(f"[{index}/{len(names)}] {name}: already done ({run_dir / 'eval.json'}), skipping")
            # the time it took when it ran and what its method's hooks added (e.g. the hybrid metrics)
            summary.update({k: v for k, v in previous.get(name, {}).items() if k not in summary})
            if spec is not None and spec.extra_results is not None and name not in previous:
                model_dir = spec.start.build(stage_of(name)) if name in starts else run_dir / "model"
                summary.update(spec.extra_results(stage_of(name), model_dir, examples))
        results["methods"][name] = summary
        if name == "base":  # earlier methods follow the base model, this run's come last
            results["methods"].update(earlier)
        (output / "results.json").write_text(json.dumps(results, indent=1))
    print_eval(results["methods"]["base"], "base model", console)
    print_comparison(results["methods"], console)
    results["config"]["total_seconds"] = round(time.time() - start, 1)
    (output / "results.json").write_text(json.dumps(results, indent=1))
    rows = list(results["methods"])
    extra_images = []
    for method in dict.fromkeys(DEMO_ROWS[row][0] for row in rows if row in DEMO_ROWS):
        if METHODS[method].report is not None:
            extra_images += METHODS[method].report(stage_of(method), rows)
    report = write_report([output], output / "report", extra_images=extra_images)
    console.print(f"wrote {output / 'results.json'} and {report['html']}; total {time.time() - start:.0f}s")
    return results
