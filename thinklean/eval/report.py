"""``thinklean report``: Markdown + self-contained HTML comparing runs.

Inputs are demo output directories (``results.json`` + one sub-directory per method with
``metrics.jsonl`` and ``eval.json``) or single training runs (``metrics.jsonl``, ``config.json``,
``eval.json``). The report has the comparison table, an accuracy-vs-tokens Pareto plot (final
evaluations and, when logged, periodic evaluations along training), training curves (reward,
accuracy and mean length vs step) and the command lines that reproduce each run. Images are
PNG files next to ``report.md`` and base64-embedded in ``report.html``.

Hybrid think / no-think models (summaries with a ``"hybrid"`` entry, as the demo writes for
``hft`` and ``hgpo``) get a second table: HAcc, think ratio overall, on 1-operation and on
5-6-operation problems, and the forced-mode accuracies.

LiteReason runs (summaries with ``latent_steps_mean``) add a table of discrete reasoning tokens
against latent steps per response and RL seconds per step, with every other run for reference,
and the last latent probe each run logged (:mod:`thinklean.eval.latent_probe`: latent and
token-embedding norms, cross-problem cosine, swap-KL).

Runs that logged periodic evaluations (``eval_accuracy`` / ``eval_length_mean`` in
``metrics.jsonl``, e.g. ``--eval-every``) also get compression at iso-accuracy against the base
model and GRPO (:func:`thinklean.eval.metrics.iso_accuracy_compression`).

Runs without evaluations (no ``eval.json``, no periodic evaluations) get :data:`NO_EVALUATIONS`
in place of the table, and no Pareto plot; the training curves need only ``metrics.jsonl``.
"""

from __future__ import annotations

import base64
import html
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from thinklean.eval.metrics import compression, iso_accuracy_compression
from thinklean.runlog import read_metrics


def _eval_summary(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text())["summary"] if path.is_file() else None


def collect_runs(run_dirs: Sequence[str | Path]) -> dict[str, dict[str, Any]]:
    """``name -> {"summary", "metrics", "config", "command"}`` for every method found."""
    runs: dict[str, dict[str, Any]] = {}
    for run_dir in map(Path, run_dirs):
        results = run_dir / "results.json"
        if results.is_file():
            data = json.loads(results.read_text())
            budget = data.get("config", {}).get("budget", {})
            for name, summary in data["methods"].items():
                metrics_path = run_dir / name / "metrics.jsonl"
                runs[name] = {
                    "summary": summary,
                    "metrics": read_metrics(metrics_path) if metrics_path.is_file() else [],
                    "command": f"thinklean demo --methods {','.join(data['config'].get('methods', []))} --output {run_dir}"
                    + (" --quick" if data["config"].get("quick") else ""),
                    "budget": budget,
                }
        elif (run_dir / "metrics.jsonl").is_file() or (run_dir / "eval.json").is_file():
            config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
            runs[run_dir.name] = {
                "summary": _eval_summary(run_dir / "eval.json"),
                "metrics": read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else [],
                "command": f"thinklean train --method {config.get('method', '?')} --steps {config.get('steps', '?')} --output {run_dir}",
                "budget": {},
            }
        else:
            raise FileNotFoundError(f"{run_dir}: neither results.json (demo) nor metrics.jsonl/eval.json (run) found")
    return runs


def checkpoint_curve(metrics: Sequence[Mapping[str, Any]]) -> list[tuple[float, float]]:
    """``(accuracy, mean tokens)`` of each periodic evaluation logged in ``metrics.jsonl``, by step."""
    return [(m["eval_accuracy"], m["eval_length_mean"]) for m in sorted(metrics, key=lambda m: m["step"])
            if "eval_accuracy" in m]


def comparison_rows(runs: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per run with a final evaluation: accuracy, tokens, compression vs base/GRPO.

    ``iso_compression_vs_*`` is the compression at the reference's accuracy, interpolated along
    the run's periodic evaluations (``None`` without them, or when they never reach it).
    """
    summaries = {n: r["summary"] for n, r in runs.items() if r.get("summary")}
    base = summaries.get("base", {}).get("mean_response_tokens")
    grpo = summaries.get("grpo", {}).get("mean_response_tokens")

    def iso(curve: list[tuple[float, float]], reference: str) -> float | None:
        ref = summaries.get(reference)
        if not curve or ref is None or not ref["mean_response_tokens"]:
            return None
        return iso_accuracy_compression(curve, ref["accuracy"], ref["mean_response_tokens"])

    rows = []
    for name, s in summaries.items():
        tokens = s["mean_response_tokens"]
        curve = checkpoint_curve(runs[name]["metrics"])
        rows.append({
            "method": name,
            "accuracy": s["accuracy"],
            "mean_response_tokens": tokens,
            "compression_vs_base": compression(tokens, base) if base and name != "base" else None,
            "compression_vs_grpo": compression(tokens, grpo) if grpo and name not in ("base", "grpo") else None,
            "iso_compression_vs_base": iso(curve, "base") if name != "base" else None,
            "iso_compression_vs_grpo": iso(curve, "grpo") if name not in ("base", "grpo") else None,
            "format_error_rate": s.get("format_error_rate"),
        })
    return rows


def _fmt(value: Any, pct: bool | str = False) -> str:
    """``pct``: True: a percentage; False: one decimal; a string: that format spec."""
    if value is None:
        return "-"
    if isinstance(pct, str):
        return format(value, pct)
    text = f"{100 * value:.1f}%" if pct else f"{value:.1f}"
    return "0.0%" if text == "-0.0%" else text


# (header, row key, shown as a percentage / a format spec)
COLUMNS = (
    ("accuracy", "accuracy", True),
    ("mean tokens", "mean_response_tokens", False),
    ("saved vs base", "compression_vs_base", True),
    ("saved vs GRPO", "compression_vs_grpo", True),
    ("saved at base accuracy", "iso_compression_vs_base", True),
    ("saved at GRPO accuracy", "iso_compression_vs_grpo", True),
    ("format errors", "format_error_rate", True),
)
ISO_NOTE = ("Saved at base / GRPO accuracy: 1 - tokens / reference tokens, where tokens is the fewest mean tokens at "
            "which the run's periodic evaluations (linearly interpolated between checkpoints) reach the reference's "
            "accuracy; '-' when the run logged none or never reaches it.")


NO_EVALUATIONS = ("no evaluations in these runs, so no comparison table or accuracy-vs-tokens plot: train with "
                  "--eval-every N (the held-out problems are evaluated every N steps and at the end) or run "
                  "thinklean eval --model RUN/model")


HYBRID_COLUMNS = (
    ("HAcc", "hacc", True),
    ("think ratio", "think_ratio", True),
    ("think ratio, 1 op", "think_ratio_easy", True),
    ("think ratio, 5-6 ops", "think_ratio_hard", True),
    ("accuracy (greedy)", "accuracy", True),
    ("mean tokens (greedy)", "mean_response_tokens", False),
    ("forced think accuracy", "forced_think_accuracy", True),
    ("forced no-think accuracy", "forced_no_think_accuracy", True),
)
HYBRID_NOTE = ("Hybrid metrics (thinklean eval --hybrid): for each problem, sampled rollouts forced into each mode "
               "decide the correct mode (think only if it beats no-think by more than the margin); the greedy unforced "
               "answer's first tag is the chosen mode. HAcc = share of problems where the two agree.")


def hybrid_rows(runs: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per run whose summary has ``"hybrid"`` metrics; think ratios on 1-operation and
    5-6-operation problems are pooled over their problems (``None`` when there are none)."""
    rows = []
    for name, run in runs.items():
        hybrid = (run.get("summary") or {}).get("hybrid")
        if not hybrid:
            continue
        per = hybrid.get("per_difficulty", {})
        rows.append({"method": name, **{key: hybrid.get(key) for _, key, _ in HYBRID_COLUMNS},
                     "think_ratio_easy": pooled_think_ratio(per, ["1"]),
                     "think_ratio_hard": pooled_think_ratio(per, ["5", "6"])})
    return rows


def pooled_think_ratio(per_difficulty: Mapping[str, Mapping[str, Any]], difficulties: Sequence[str]) -> float | None:
    """Think ratio over the problems of ``difficulties`` (weighted by each one's ``n``); ``None``
    when none of them has problems."""
    parts = [per_difficulty[d] for d in difficulties if d in per_difficulty and per_difficulty[d]["n"]]
    n = sum(p["n"] for p in parts)
    return sum(p["think_ratio"] * p["n"] for p in parts) / n if n else None


LATENT_COLUMNS = (
    ("accuracy", "accuracy", True),
    ("reasoning tokens", "mean_reasoning_tokens", False),
    ("response tokens", "mean_response_tokens", False),
    ("latent steps per response", "latent_steps_mean", False),
    ("responses with latent steps", "latent_rows", True),
    ("latent norm (median)", "probe_latent_norm", ".3g"),
    ("latent norm (max)", "probe_latent_norm_max", ".3g"),
    ("token-embedding norm", "probe_embedding_norm", ".3g"),
    ("latent cosine", "probe_latent_cosine", ".3f"),
    ("swap-KL (nats)", "probe_swap_kl", ".3g"),
    ("RL seconds per step", "step_seconds", False),
)
LATENT_NOTE = ("LiteReason: reasoning and response tokens count discrete tokens only (tags and numbers included); "
               "latent steps are the projector steps run per response. RL seconds per step: mean logged step_time of the RL steps (none for SFT-built rows). "
               "Latent probe (last one logged in training, 8 held-out problems, 3 forced latent steps): L2 norms of the "
               "latent inputs and of the token embeddings, mean cross-problem cosine of the first latent input, and the "
               "next-token KL when two problems' latents are swapped (0: the latents change nothing).")


def latent_rows(runs: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Discrete reasoning tokens vs latent steps, one row per evaluated run, when some run's
    summary has ``latent_steps_mean`` (LiteReason); otherwise no rows. Runs without latent
    decoding show 0 latent steps."""
    summaries = {n: r["summary"] for n, r in runs.items() if r.get("summary")}
    if not any("latent_steps_mean" in s for s in summaries.values()):
        return []
    rows = []
    for name, s in summaries.items():
        metrics = runs[name]["metrics"]
        times = [m["step_time"] for m in metrics if "step_time" in m and "rollout_time" in m]  # RL steps
        probe = next((m for m in reversed(metrics) if "probe_latent_norm" in m), {})
        rows.append({"method": name, **{key: s.get(key) for _, key, _ in LATENT_COLUMNS},
                     "latent_steps_mean": s.get("latent_steps_mean", 0.0), "latent_rows": s.get("latent_rows", 0.0),
                     "step_seconds": sum(times) / len(times) if times else None,
                     **{key: probe.get(key) for _, key, _ in LATENT_COLUMNS if key.startswith("probe_")}})
    return rows


def _cells(row: Mapping[str, Any], columns: Sequence[tuple[str, str, bool]] = COLUMNS) -> list[str]:
    return [row["method"], *(_fmt(row[key], pct) for _, key, pct in columns)]


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, bool]] = COLUMNS) -> str:
    lines = ["| method | " + " | ".join(h for h, _, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += ["| " + " | ".join(_cells(r, columns)) + " |" for r in rows]
    return "\n".join(lines)


def html_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, bool]], table_id: str) -> str:
    header = "".join(f"<th>{html.escape(h)}</th>" for h in ("method", *(h for h, _, _ in columns)))
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(r, columns)) + "</tr>" for r in rows)
    return f"<table id={table_id}><tr>{header}</tr>{cells}</table>"


def plot_pareto(runs: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """Accuracy vs mean response tokens: final evals (large markers), periodic evals (lines), and
    the base model's accuracy (dotted) where the iso-accuracy saving is read off."""
    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    ax = fig.add_subplot()
    base = runs.get("base", {}).get("summary")
    if base:
        ax.axhline(100 * base["accuracy"], color="grey", ls=":", lw=1)
    for i, (name, run) in enumerate(runs.items()):
        colour = f"C{i % 10}"
        trail = checkpoint_curve(run["metrics"])
        if trail:
            ax.plot([t for _, t in trail], [100 * a for a, _ in trail], "-", color=colour, alpha=0.4, marker=".")
        if run.get("summary"):
            s = run["summary"]
            ax.scatter([s["mean_response_tokens"]], [100 * s["accuracy"]], s=70, color=colour, label=name, zorder=3)
    ax.set_xlabel("mean response tokens (held-out problems)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("accuracy vs tokens (up-left is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_curves(runs: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """Reward, sampled accuracy and mean response length per training step."""
    fig = Figure(figsize=(10, 3.2), dpi=120)
    axes = fig.subplots(1, 3)
    for i, (name, run) in enumerate(runs.items()):
        metrics = run["metrics"]
        if not metrics:
            continue
        steps = [m["step"] for m in metrics]
        for ax, key in zip(axes, ("reward", "accuracy", "length_mean")):
            ax.plot(steps, [m.get(key) for m in metrics], color=f"C{i % 10}", label=name, lw=1.2)
    for ax, title in zip(axes, ("reward", "rollout accuracy", "mean rollout length (tokens)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path, extra_images: Sequence[Path] = ()) -> dict[str, Path]:
    """Write ``report.md``, ``report.html``, ``table.json`` and PNGs into ``out_dir``.

    ``extra_images`` (PNGs made elsewhere, e.g. the demo's entropy plots) are copied into
    ``out_dir`` and shown after the report's own plots."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = collect_runs(run_dirs)
    rows = comparison_rows(runs)
    copies = []
    for image in map(Path, extra_images):
        if image.resolve() != (out / image.name).resolve():
            shutil.copyfile(image, out / image.name)
        copies.append(out / image.name)
    evaluated = bool(rows) or any(checkpoint_curve(r["metrics"]) for r in runs.values())
    images = [*([plot_pareto(runs, out / "pareto.png")] if evaluated else []),
              *([plot_curves(runs, out / "curves.png")] if any(r["metrics"] for r in runs.values()) else []), *copies]
    commands = sorted({r["command"] for r in runs.values()})
    (out / "table.json").write_text(json.dumps(rows, indent=1))
    hybrid = hybrid_rows(runs)
    table_md = [markdown_table(rows), "", ISO_NOTE] if rows else [f"Note: {NO_EVALUATIONS}."]
    md = ["# thinklean report", "", *table_md, ""]
    if hybrid:
        md += ["## Hybrid think / no-think", "", markdown_table(hybrid, HYBRID_COLUMNS), "", HYBRID_NOTE, ""]
    latent = latent_rows(runs)
    if latent:
        md += ["## Reasoning tokens vs latent steps", "", markdown_table(latent, LATENT_COLUMNS), "", LATENT_NOTE, ""]
    md += [f"![{p.stem}]({p.name})" for p in images]
    md += ["", "Reproduce:", "", "```bash", *commands, "```", ""]
    (out / "report.md").write_text("\n".join(md))
    embedded = "".join(
        f'<figure><img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}"></figure>'
        for p in images
    )
    page = (
        "<!doctype html><meta charset=utf-8><title>thinklean report</title>"
        "<style>body{font-family:sans-serif;max-width:64em;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}img{max-width:100%}</style>"
        "<h1>thinklean report</h1>"
        + (html_table(rows, COLUMNS, "results") + f"<p>{html.escape(ISO_NOTE)}</p>" if rows
           else f"<p>{html.escape(table_md[0])}</p>")
        + (f"<h2>Hybrid think / no-think</h2>{html_table(hybrid, HYBRID_COLUMNS, 'hybrid')}<p>{html.escape(HYBRID_NOTE)}</p>"
           if hybrid else "")
        + (f"<h2>Reasoning tokens vs latent steps</h2>{html_table(latent, LATENT_COLUMNS, 'latent')}"
           f"<p>{html.escape(LATENT_NOTE)}</p>" if latent else "")
        + embedded + "<h2>Reproduce</h2><pre>" + html.escape("\n".join(commands)) + "</pre>"
    )
    (out / "report.html").write_text(page)
    return {"markdown": out / "report.md", "html": out / "report.html", "table": out / "table.json",
            **{p.stem: p for p in images}}
