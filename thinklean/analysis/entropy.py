"""BuPO entropy dynamics across depth (``thinklean analyze``): numbers, CSV/JSON, plots, table.

Sample responses from the model, then average each internal policy's entropy over the response
tokens (see :mod:`thinklean.models.internal` and ``shared/design/bupo.md``). The *boundary
layer* is the last layer whose FFN still expands entropy (``dH_ffn > 0``); thinklean suggests
it as BuPO's IPA layer. That is a thinklean heuristic: the authors choose the layer by hand.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from thinklean.models.internal import entropy_summary, layer_entropy_sums
from thinklean.rollout import SamplingConfig, generate

__all__ = ["analyze_model", "boundary_layer", "write_analysis", "print_analysis"]

CSV_COLUMNS = ("layer", "H", "dH", "dH_attn", "dH_ffn", "H_attn", "H_attn_in", "H_ffn", "H_ffn_in")


def boundary_layer(dH_ffn: list[float | None]) -> int | None:
    """Last layer ``l >= 1`` with ``dH_ffn[l] > 0`` (list indexed by layer), or None."""
    expanding = [layer for layer, value in enumerate(dH_ffn) if value is not None and value > 0]
    return expanding[-1] if expanding else None


def analyze_model(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    seed: int = 0,
    num_samples: int = 1,
    variant: str = "module",
    apply_final_norm: bool = False,
    batch_size: int = 16,
    rollout_batch_size: int = 64,
    name: str | None = None,
) -> dict[str, Any]:
    """Sample responses to ``prompts`` and measure per-layer entropies over the response tokens.

    ``prompts`` are already formatted (``formats.format_prompt``). Sampling (``num_samples``
    per prompt, ``rollout_batch_size`` rows decoded together) uses a generator seeded with
    ``seed`` on the model's device; the entropy pass runs ``batch_size`` rows at a time and the
    averages are weighted by tokens, so the result does not depend on ``batch_size``.
    Returns a JSON-able dict: ``"layers"`` ``[0..L]`` and, indexed by layer, ``"H"``, ``"dH"``,
    ``"dH_attn"``, ``"dH_ffn"`` and the module entropies (``None`` at layer 0 for the
    differences), ``"boundary_layer"`` (:func:`boundary_layer`), ``"model"`` and the settings.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, batch_size=rollout_batch_size)
    rollout = generate(model, tokenizer, prompts, num_samples, sampling, generator=generator)

    totals: dict[str, torch.Tensor] = {}
    for start in range(0, rollout.response_ids.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        input_ids = torch.cat([rollout.prompt_ids[rows], rollout.response_ids[rows]], 1)
        attention_mask = torch.cat([rollout.prompt_mask[rows], rollout.response_mask[rows]], 1)
        token_mask = torch.cat([torch.zeros_like(rollout.prompt_mask[rows]), rollout.response_mask[rows]], 1)
        sums = layer_entropy_sums(
            model, input_ids.to(device), attention_mask.to(device), token_mask.to(device),
            variant=variant, apply_final_norm=apply_final_norm,
        )
        totals = {key: totals[key] + value if key in totals else value for key, value in sums.items()}

    summary = entropy_summary(totals)
    config = getattr(model, "config", None)
    return {
        "model": name or getattr(config, "_name_or_path", "") or type(model).__name__,
        **summary,
        "boundary_layer": boundary_layer(summary["dH_ffn"]),
        "apply_final_norm": apply_final_norm,
        "num_prompts": len(prompts),
        "num_responses": int(rollout.response_ids.shape[0]),
        "mean_response_length": float(rollout.lengths.float().mean()),
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "seed": seed,
    }


def _label(result: Mapping[str, Any], fallback: str) -> str:
    return str(result.get("label") or result.get("model") or fallback)


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows([["" if value is None else value for value in row] for row in rows])


def _figure(rows: int = 1):
    # A bare Figure with the Agg canvas: no pyplot, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 3.6 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, [figure.add_subplot(rows, 1, i + 1) for i in range(rows)]


def _plot_entropy(path: Path, series: list[tuple[str, Mapping[str, Any]]]) -> None:
    from matplotlib.ticker import MaxNLocator

    figure, (axes,) = _figure()
    for label, result in series:
        axes.plot(result["layers"], result["H"], marker="o", label=label)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers, not fractions (any depth)
    axes.set_xlabel("layer (0 = embeddings)")
    axes.set_ylabel("entropy of internal layer policy (nats)")
    axes.set_title("H^l = H(softmax(h^l E_u^T)) over response tokens")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.savefig(path, dpi=100)


def _plot_module_deltas(path: Path, series: list[tuple[str, Mapping[str, Any]]]) -> None:
    figure, all_axes = _figure(len(series))
    for axes, (label, result) in zip(all_axes, series):
        layers = result["layers"][1:]
        axes.bar([l - 0.2 for l in layers], result["dH_attn"][1:], width=0.4, label="ΔH_attn")
        axes.bar([l + 0.2 for l in layers], result["dH_ffn"][1:], width=0.4, label="ΔH_ffn")
        axes.axhline(0.0, color="black", linewidth=0.8)
        if result.get("boundary_layer") is not None:
            axes.axvline(result["boundary_layer"], color="grey", linestyle="--", label="boundary layer")
        axes.set_xticks(layers)
        axes.set_xlabel("layer")
        axes.set_ylabel("entropy change (nats)")
        axes.set_title(f"module entropy change ({result.get('variant', 'module')}): {label}")
        axes.legend()
    figure.savefig(path, dpi=100)


def _plot_change(path: Path, layers: list[int], changes: Mapping[str, list[float]], before: str) -> None:
    figure, (axes,) = _figure()
    width = 0.8 / len(changes)
    for i, (label, change) in enumerate(changes.items()):
        axes.bar([l + (i - (len(changes) - 1) / 2) * width for l in layers], change, width=width, label=label)
    axes.set_xticks(layers)
    axes.set_xlabel("layer (0 = embeddings)")
    axes.set_ylabel("|H_after - H_before| (nats)")
    axes.set_title(f"per-layer entropy change from {before}")
    axes.legend()
    figure.savefig(path, dpi=100)


def write_analysis(
    result: Mapping[str, Any], out_dir: str | Path, compare: Mapping[str, Any] | None = None,
    others: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Path]:
    """Write ``result`` (from :func:`analyze_model`) as JSON, CSV and PNG plots into ``out_dir``.

    Always: ``analysis.json`` (``result`` as is), ``analysis.csv`` (one row per layer,
    :data:`CSV_COLUMNS`, empty cells for undefined values), ``entropy.png`` (``H^l``) and
    ``module_entropy.png`` (``ΔH_attn``/``ΔH_ffn`` bars). With ``compare`` (the model *before*;
    ``result`` and any ``others`` are *after*, e.g. two methods trained from it; all with the
    same layers): every curve overlaid, one bar panel each, plus ``comparison.json``
    (``{"before": ..., "after": [...], "abs_H_change": {label: [per layer]}}``),
    ``comparison.csv`` (one row per after model and layer: ``H_before``, ``H_after``,
    ``abs_H_change``, ``dH_ffn_before``, ``dH_ffn_after``) and ``entropy_change.png`` with
    ``|H^l_after - H^l_before|`` per layer, i.e. how far each internal policy moved.
    Returns ``{kind: path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "analysis.json",
        "csv": out / "analysis.csv",
        "entropy_plot": out / "entropy.png",
        "module_plot": out / "module_entropy.png",
    }
    paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    _write_csv(paths["csv"], list(CSV_COLUMNS),
               [[result[column][i] if column != "layer" else layer for column in CSV_COLUMNS]
                for i, layer in enumerate(result["layers"])])

    series = [(_label(result, "after"), result)]
    if compare is not None:
        afters = [result, *others]
        for after in afters:
            if list(compare["layers"]) != list(after["layers"]):
                raise ValueError(
                    f"compare has layers {compare['layers']} but {_label(after, 'after')} has {after['layers']}; "
                    "compare checkpoints of the same architecture"
                )
        before = _label(compare, "before")
        labels = [_label(after, f"after {i + 1}") for i, after in enumerate(afters)]
        if len(set(labels)) < len(labels):
            labels = [f"{label} ({i + 1})" for i, label in enumerate(labels)]
        if before in labels:
            before = f"{before} (before)"
        series = [(before, compare), *zip(labels, afters)]
        changes = {label: [abs(a - b) for a, b in zip(after["H"], compare["H"])] for label, after in zip(labels, afters)}
        paths["comparison_json"] = out / "comparison.json"
        paths["comparison_csv"] = out / "comparison.csv"
        paths["change_plot"] = out / "entropy_change.png"
        paths["comparison_json"].write_text(json.dumps(
            {"before": compare, "after": afters, "abs_H_change": changes}, indent=2) + "\n")
        _write_csv(paths["comparison_csv"],
                   ["after", "layer", "H_before", "H_after", "abs_H_change", "dH_ffn_before", "dH_ffn_after"],
                   [[label, layer, compare["H"][i], after["H"][i], changes[label][i], compare["dH_ffn"][i],
                     after["dH_ffn"][i]]
                    for label, after in zip(labels, afters) for i, layer in enumerate(after["layers"])])
        _plot_change(paths["change_plot"], list(result["layers"]), changes, before)
    _plot_entropy(paths["entropy_plot"], series)
    _plot_module_deltas(paths["module_plot"], series)
    return paths


def print_analysis(result: Mapping[str, Any], console: Console | None = None) -> None:
    """Print the per-layer entropies as a rich table and the suggested BuPO layer."""
    console = console or Console()
    boundary = result.get("boundary_layer")
    table = Table(title=f"internal policy entropy: {_label(result, 'model')} "
                        f"({result.get('num_tokens', '?')} response tokens, nats)")
    for column in ("layer", "H", "ΔH", "ΔH_attn", "ΔH_ffn"):
        table.add_column(column, justify="right")

    def cell(value: float | None) -> str:
        return "" if value is None else f"{value:+.4f}"

    for i, layer in enumerate(result["layers"]):
        table.add_row(
            f"{layer}{' (boundary)' if layer == boundary else ''}",
            f"{result['H'][i]:.4f}",
            cell(result["dH"][i]),
            cell(result["dH_attn"][i]),
            cell(result["dH_ffn"][i]),
            style="bold" if layer == boundary else None,
        )
    console.print(table)
    if boundary is None:
        console.print("boundary layer: none (no layer's FFN expands entropy); pick the BuPO layer by hand")
    else:
        console.print(f"boundary layer: {boundary} (last layer with ΔH_ffn > 0); suggested BuPO layer "
                      f"(a thinklean heuristic, not the paper's rule)")
