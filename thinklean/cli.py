"""``thinklean`` command line: demo | data | sft | litereason-sft | train | eval | analyze | explain-tokens | report.

Every command accepts ``--seed`` and writes into ``--output``. Bad input (data file, model
directory, config, flag value) ends with one ``error: ...`` line naming the file or flag and exit
code 2, before any training or generation; Ctrl-C ends with one ``interrupted: ...`` line saying
what was saved and exit code 130 (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import inspect
import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from thinklean.data.formats import NO_THINK, THINK, format_prompt
from thinklean.data.jsonl import DataError

DEFAULTS = argparse.ArgumentDefaultsHelpFormatter


class UsageError(Exception):
    """A user-facing error; printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one ``error:`` line (exit code 2) instead of the usage text."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _number(kind: type, low: float | None = None, high: float | None = None,
            above: bool = False) -> Callable[[str], int | float]:
    """An argparse ``type``: a finite ``kind`` (int or float) in ``[low, high]`` (``above``: over ``low``)."""
    noun = "an integer" if kind is int else "a number"
    bounds = (f"more than {low}" if above else f"at least {low}") if high is None else f"between {low} and {high}"
    expected = noun if low is None else f"{bounds} ({noun})"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not math.isfinite(value) or (low is not None and (value < low or (above and value == low))) or (
                high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


AT_LEAST_0, AT_LEAST_1 = _number(int, 0), _number(int, 1)
ABOVE_0, NOT_NEGATIVE, FINITE = _number(float, 0, above=True), _number(float, 0), _number(float)
RATE, SHARE = _number(float, 0, 1), _number(float, 0, 1, above=True)


def _add_common(p: argparse.ArgumentParser, output: str) -> None:
    p.add_argument("--seed", type=int, default=0, help="random seed (data order, sampling, init)")
    p.add_argument("--output", type=Path, default=Path(output), help="output directory")


def _add_style(p: argparse.ArgumentParser) -> None:
    from thinklean.data.arith import BASE_CHECK_RATE, BASE_STYLE_WEIGHTS, REPAIR_RATE, STYLES

    base_mix = ",".join(f"{name}={weight}" for name, weight in BASE_STYLE_WEIGHTS.items())
    p.add_argument("--style", type=_style_weights, default="base", metavar="STYLE|STYLE=W,...",
                   help=f"arith solutions: which steps are checked: 'base' = base-v3's build mix ({base_mix}; "
                        f"its rows also use --check-rate {BASE_CHECK_RATE} --mask-products), "
                        "'terse' none, 'full' every step, 'partial' each with probability --check-rate, 'risky' the "
                        "multiplications only; or a mix drawn per row, e.g. partial=0.8,terse=0.2")
    p.add_argument("--repair-rate", dest="repair_rate", type=RATE, default=REPAIR_RATE,
                   help="arith solutions: share of checked risky steps first written wrong and repaired by the "
                        "check (the wrong digits are masked from the SFT loss via masked_spans)")
    p.add_argument("--check-rate", dest="check_rate", type=RATE, default=0.5,
                   help="arith solutions, style 'partial': the chance that each step is checked")
    p.add_argument("--mask-products", dest="mask_products", action="store_true",
                   help="arith solutions: mask every multiplication's first-written result from the SFT loss, "
                        "right or wrong, so SFT never teaches one-shot products (docs/task.md)")


def _add_model_and_data(p: argparse.ArgumentParser, model: str = "base",
                        model_help: str = "'base' (shipped), a local HF model directory (safetensors) or a .gguf file",
                        data_help: str = "'arith' (embedded task; 'arith:x7x9', 'arith:every-risky' and "
                        "'arith:x7x9-kinds' its control arms, docs/task.md); a JSONL, .parquet, .arrow or .csv file or a "
                        "datasets save_to_disk directory with prompt (or question), answer columns (GSM8K's "
                        "'... #### 72' is read as 72; tables need pip install 'thinklean[datasets]'); or "
                        "reasoning-gym:TASK, e.g. reasoning-gym:gsm_symbolic (N problems generated offline from "
                        "--seed; needs pip install 'thinklean[reasoning-gym]')") -> None:
    p.add_argument("--model", default=model, help=model_help)
    p.add_argument("--data", default="arith", help=data_help)
    p.add_argument("--trust-remote-code", action="store_true", help="allow custom model code from --model")


def _add_fields(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt-field", dest="prompt_field", default="prompt",
                   help="--data file: the field or column holding the prompt ('prompt' falls back to 'question')")
    p.add_argument("--answer-field", dest="answer_field", default="answer",
                   help="--data file: the field or column holding the answer")


def _add_report_to(p: argparse.ArgumentParser, default: str | None = "none") -> None:
    from thinklean.train.trackers import CHOICES

    p.add_argument("--report-to", dest="report_to", default=default, metavar="TRACKER",
                   help=f"experiment trackers that receive metrics.jsonl's metrics, the config and the final "
                        f"evaluation: {', '.join(CHOICES)} (every installed one), or a comma-separated list; "
                        f"each needs its extra, e.g. pip install 'thinklean[tensorboard]'"
                        + ("" if default else " (config default: none)"))


def _add_run_dir_flags(p: argparse.ArgumentParser, resume: bool = True) -> None:
    """``--overwrite`` (and ``--resume``) for a command that writes a run directory."""
    if resume:
        p.add_argument("--resume", action="store_true",
                       help="continue from OUTPUT/checkpoints/latest (an error without one)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in OUTPUT (its checkpoints, "
                   f"metrics and model); without it{' or --resume' if resume else ''} such a directory is refused")


def _add_plugin(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", type=Path, metavar="FILE.py",
                   help="a Python file that registers methods, rewards or estimators (thinklean.methods."
                        "register_method, docs/methods.md), imported before the command runs (repeatable)")


def _flag_dest(flag: str) -> str:
    return "method_flag_" + flag.lstrip("-").replace("-", "_")


def _load_plugins(argv: Sequence[str]) -> None:
    """Import each ``--plugin FILE`` of a ``train``, ``demo`` or ``data`` command line, before the
    parser is built, so that its methods are ``--method`` choices and its flags and data tasks exist."""
    if not argv or argv[0] not in ("train", "demo", "data"):
        return
    from thinklean.methods import load_plugin

    paths = [value for flag, value in zip(argv, argv[1:]) if flag == "--plugin"]
    paths += [arg.partition("=")[2] for arg in argv if arg.startswith("--plugin=")]
    for path in paths:
        try:
            load_plugin(path)
        except Exception as e:  # the user's code: any error is one line naming the file
            raise UsageError(f"--plugin {path}: {type(e).__name__}: {e}") from e


def _check_report_to(report_to: str) -> None:
    """Stop before any work when ``report_to`` names an unknown or uninstalled tracker."""
    from thinklean.train.trackers import TrackerError, resolve_report_to

    try:
        resolve_report_to(report_to)
    except TrackerError as e:
        raise UsageError(f"--report-to {report_to}: {e}") from e


def _is_arith(data: str) -> bool:
    """Whether ``--data`` names the embedded task: ``arith`` or ``arith:VARIANT``."""
    return data == "arith" or data.startswith("arith:")


def _arith_variant(data: str) -> Any:
    """The :class:`~thinklean.data.arith.Variant` an ``arith[:VARIANT]`` ``--data`` names."""
    from thinklean.data.arith import TASK, VARIANTS

    name = data.partition(":")[2] or TASK.name
    if name not in VARIANTS:
        raise UsageError(f"--data {data}: unknown task variant {name!r} (available: {', '.join(VARIANTS)})")
    return VARIANTS[name]


def _load_examples(data: str, n: int, split: str, seed: int, require_solution: bool = False,
                   prompt_field: str = "prompt", answer_field: str = "answer") -> list[Any]:
    """``arith`` (the embedded task; ``arith:VARIANT`` another generator of
    :data:`thinklean.data.arith.VARIANTS`), ``reasoning-gym:TASK`` (generated) or a data file
    (JSONL, parquet, arrow, CSV or a ``save_to_disk`` directory)."""
    from thinklean.data.tables import load_examples
    from thinklean.eval.evaluate import REASONING_GYM, arith_examples, reasoning_gym_examples

    if n < 1 and (_is_arith(data) or data.startswith(REASONING_GYM)):
        raise UsageError(f"--n {n}: expected at least 1 problem (0 means every row only for a JSONL file)")
    if _is_arith(data):
        try:
            return arith_examples(n, split, seed, _arith_variant(data))
        except ValueError as e:
            raise UsageError(f"--n {n}: {e}") from e
    if data.startswith(REASONING_GYM):
        try:
            return reasoning_gym_examples(data.removeprefix(REASONING_GYM), n, seed)
        except (ImportError, ValueError) as e:
            raise UsageError(f"--data {data}: {e}") from e
    return load_examples(data, require_solution=require_solution, limit=n if n > 0 else None,
                         prompt_field=prompt_field, answer_field=answer_field, split=split)


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="where the model runs: auto (cuda when a GPU is visible, else cpu), cpu, cuda or cuda:N")


def _load(model: str, trust_remote_code: bool = False, device: str | None = None) -> tuple[Any, Any]:
    """Model and tokenizer; moved to ``device`` (a ``--device`` value) when given. Trainers place
    the model themselves (accelerate), so their commands pass none."""
    import torch

    from thinklean.models.tiny import load_pretrained

    if device is not None:
        device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError(f"--device {device}: no CUDA GPU is visible (use --device cpu)")
    try:
        model, tokenizer = load_pretrained(model, trust_remote_code=trust_remote_code)
    except (FileNotFoundError, OSError, ValueError, ImportError) as e:  # ImportError: a GGUF without `gguf`
        raise UsageError(f"--model {model}: {e}") from e
    if device is not None:
        try:
            model.to(device)
        except RuntimeError as e:  # e.g. cuda:3 on a 2-GPU machine
            raise UsageError(f"--device {device}: {e}") from e
    return model, tokenizer


def _check_prompt_lengths(model: Any, tokenizer: Any, examples: Sequence[Any], max_new_tokens: int, data: str) -> None:
    """``UsageError`` naming the first prompt (``FILE:LINE`` for JSONL) that leaves the model fewer
    than ``max_new_tokens`` positions to answer in."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if not limit:
        return
    room = limit - max_new_tokens
    if room < 1:
        raise UsageError(f"--max-new-tokens {max_new_tokens}: the model has {limit} positions (expected fewer tokens)")
    prompts = [format_prompt(e.prompt, tokenizer) for e in examples]
    lengths = [len(ids) for ids in tokenizer(prompts, verbose=False)["input_ids"]]
    for index, (example, length) in enumerate(zip(examples, lengths), start=1):
        if length > room:
            where = f"{data}:{example.line}" if example.line else f"--data {data}, problem {index}"
            raise UsageError(f"{where}: the prompt is {length} tokens; the model has {limit} positions, so prompts "
                             f"may be at most {room} tokens with --max-new-tokens {max_new_tokens}")


def _check_output(args: argparse.Namespace) -> None:
    """``UsageError`` when ``--output`` is an existing file (or lies under one) where a directory
    is written; ``data`` may name a ``.jsonl`` file."""
    file_ok = args.command == "data" and args.output.suffix == ".jsonl"
    for path in (args.output, *args.output.parents):
        if path.exists():
            if not path.is_dir() and not (file_ok and path == args.output):
                raise UsageError(f"--output {args.output}: {path} is an existing file (expected a directory)")
            return


def _prepare_run_dir(args: argparse.Namespace) -> None:
    """Refuse a new run over an earlier one (unless ``--overwrite``) and ``--resume`` without a checkpoint."""
    from thinklean.train.checkpoint import CheckpointError, check_run_dir

    try:
        check_run_dir(args.output, getattr(args, "resume", False), args.overwrite)
    except CheckpointError as e:
        raise UsageError(str(e)) from e


def _start_run(args: argparse.Namespace, train: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Clear the earlier run when ``--overwrite`` (all inputs checked by now), then ``train``; an
    unusable checkpoint is a usage error."""
    from thinklean.train.checkpoint import CheckpointError, clear_run

    if args.overwrite:
        clear_run(args.output)
    try:
        return train()
    except CheckpointError as e:
        raise UsageError(str(e)) from e


def _saved_when_interrupted(args: argparse.Namespace | None) -> str:
    """What an interrupted command left behind, for its one line."""
    if args is None or not hasattr(args, "output"):
        return "nothing was saved"
    latest = args.output / "checkpoints" / "latest"
    if args.command in ("train", "sft") and latest.is_file():
        return f"the last checkpoint is {latest.parent / latest.read_text().strip()}; continue with --resume"
    if args.command == "demo" and (args.output / "results.json").is_file():
        return (f"finished methods are in {args.output / 'results.json'}; run the same command again to continue "
                "(training resumes from its last checkpoint)")
    return f"nothing was saved to {args.output}"


def _warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  line: str | None = None) -> str:
    return f"warning: {message}\n"


# --------------------------------------------------------------------------------- commands


def cmd_data(args: argparse.Namespace) -> None:
    from thinklean.data.arith import VARIANTS, generate_problems, problem_record
    from thinklean.data.jsonl import write_jsonl

    tasks = _data_tasks()
    if args.task == "hft":
        return _data_hft(args)
    if args.task in tasks:
        return _data_from_model(args, tasks[args.task])
    if args.task != "arith":
        raise UsageError(f"unknown data task {args.task!r} (available: arith, hft, {', '.join(tasks)})")
    variant = VARIANTS[args.variant]
    if args.split == "train" and args.solutions:
        rows = _arith_sft_rows(args, variant)
    else:
        try:
            rows = [problem_record(p) for p in generate_problems(args.n, args.split, args.seed, variant=variant)]
        except ValueError as e:
            raise UsageError(f"--n {args.n}: {e}") from e
    out = args.output if args.output.suffix == ".jsonl" else args.output / f"arith-{args.split}.jsonl"
    write_jsonl(out, rows)
    print(f"wrote {len(rows)} rows to {out}")


def _arith_sft_rows(args: argparse.Namespace, variant: Any) -> list[dict]:
    """``--n`` SFT rows of the embedded task in ``--style`` (see :func:`_add_style`)."""
    from thinklean.data.arith import sft_records

    return sft_records(args.n, seed=args.seed, style_weights=args.style, repair_rate=args.repair_rate,
                       variant=variant, check_rate=args.check_rate, mask_products=args.mask_products)


def _style_weights(style: str) -> dict[str, float]:
    """``--style``: ``base`` (the base model's mix), one of the task's styles alone, or a mix
    ``STYLE=W,...`` (positive weights, drawn per row in proportion)."""
    from thinklean.data.arith import BASE_STYLE_WEIGHTS, STYLES

    if style == "base":
        return dict(BASE_STYLE_WEIGHTS)
    if "=" not in style:
        if style not in STYLES:
            raise argparse.ArgumentTypeError(f"{style!r} is not base or one of {', '.join(STYLES)}")
        return {style: 1.0}
    weights: dict[str, float] = {}
    for part in style.split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        try:
            weight = ABOVE_0(value)
        except argparse.ArgumentTypeError:
            weight = None
        if name not in STYLES or weight is None or name in weights:
            raise argparse.ArgumentTypeError(f"{part!r}: expected STYLE=W with STYLE one of {', '.join(STYLES)} "
                                             "(each once) and W a positive number")
        weights[name] = weight
    return weights


def _data_hft(args: argparse.Namespace) -> None:
    """Hybrid SFT mixture (lhrm.md): the embedded task by rule or measurement, or a JSONL naming each row's mode."""
    from thinklean.data.arith import generate_problems
    from thinklean.data.hft import (ARITH_NO_THINK_RULE, format_mix_stats, hft_from_jsonl, hft_records, mix_stats,
                                    parse_no_think_rule, upsample_mode)
    from thinklean.data.jsonl import load_jsonl, write_jsonl
    from thinklean.methods.lhrm import measured_no_think

    if _is_arith(args.data) and args.data != "arith":
        raise UsageError(f"--data {args.data}: the hybrid mixture is built on the task itself (--data arith) or on a "
                         "JSONL file (e.g. one written by `thinklean data arith --variant NAME`)")
    rule = args.no_think_rule or (ARITH_NO_THINK_RULE if args.data == "arith" else None)
    try:
        if rule is not None:
            parse_no_think_rule(rule)
    except ValueError as e:
        raise UsageError(f"--no-think-rule: {e}") from e
    if args.model:  # measured: no-think = problems the model already answers right without reasoning
        model, tokenizer = _load(args.model, args.trust_remote_code, args.device)
        problems = generate_problems(args.n, "train", args.seed, distinct=False) if args.data == "arith" else load_jsonl(args.data)
        direct = measured_no_think(model, tokenizer, problems)
        rule = lambda row: row["prompt"] in direct  # noqa: E731
    if args.data == "arith":
        rows = hft_records(args.n, seed=args.seed, no_think_rule=rule, no_think_share=args.no_think_share)
    else:
        rows = hft_from_jsonl(args.data, mode_field=args.mode_field, no_think_rule=rule)
    if args.no_think_upsample is not None:
        try:
            rows = upsample_mode(rows, "no_think", args.no_think_upsample)
        except ValueError as e:
            raise UsageError(f"--no-think-upsample: {e}") from e
    out = args.output if args.output.suffix == ".jsonl" else args.output / "hft.jsonl"
    write_jsonl(out, rows)
    print(format_mix_stats(mix_stats(rows)))
    print(f"wrote {len(rows)} rows to {out}")


def _data_tasks() -> dict[str, Any]:
    """The methods' ``thinklean data`` tasks (:class:`~thinklean.methods.registry.DataTask`) by name."""
    from thinklean.methods import METHODS

    return {spec.data.name: spec.data for spec in METHODS.values() if spec.data is not None}


def _data_from_model(args: argparse.Namespace, task: Any) -> None:
    """A method's dataset (:class:`~thinklean.methods.registry.DataTask`) sampled from ``--model``."""
    from thinklean.data.jsonl import write_jsonl

    model, tokenizer = _load(args.model or "base", args.trust_remote_code, args.device)
    examples = _load_examples(args.data, args.n, "train", args.seed)
    rows = task.build(model, tokenizer, examples, seed=args.seed,
                      **{flag.key: getattr(args, _flag_dest(flag.flag)) for flag in task.flags})
    out = args.output if args.output.suffix == ".jsonl" else args.output / f"{task.name}.jsonl"
    write_jsonl(out, rows)
    print(task.summary(rows))
    print(f"wrote {len(rows)} rows to {out}")


def cmd_sft(args: argparse.Namespace) -> None:
    from thinklean.data.jsonl import example_to_dict
    from thinklean.data.tables import load_examples
    from thinklean.models.tiny import build_model, build_tokenizer
    from thinklean.train.sft import SFTConfig, train_sft

    _check_report_to(args.report_to)
    _prepare_run_dir(args)
    if _is_arith(args.data):
        rows = _arith_sft_rows(args, _arith_variant(args.data))
    else:
        examples = load_examples(args.data, require_solution=True, prompt_field=args.prompt_field,
                                 answer_field=args.answer_field)
        rows = [example_to_dict(e) for e in examples]
    if args.model == "tiny":
        tokenizer = build_tokenizer(seed=args.seed)
        model = build_model(tokenizer, seed=args.seed)
    else:
        model, tokenizer = _load(args.model, args.trust_remote_code)
    config = SFTConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, max_length=args.max_length,
        seed=args.seed, save_every=args.save_every, grad_accum=args.grad_accum, report_to=args.report_to,
    )
    summary = _start_run(args, lambda: train_sft(model, tokenizer, rows, config, args.output, resume=args.resume))
    print(json.dumps(summary))
    print(f"model saved to {args.output / 'model'}")


def cmd_litereason_sft(args: argparse.Namespace) -> None:
    from thinklean.data.jsonl import example_to_dict, load_jsonl
    from thinklean.methods.litereason import load_projector, projector_sft_config, train_projector

    _check_report_to(args.report_to)
    _prepare_run_dir(args)
    rows = [example_to_dict(e) for e in load_jsonl(args.data, require_solution=True)]
    model, tokenizer = _load(args.model, args.trust_remote_code)
    if args.source == "soft" and not args.with_lm:
        raise UsageError("--source soft has no weights of its own: add --with-lm (the LM learns to write the latents)")
    try:
        projector = load_projector(model, args.projector, warn=False, output_norm=args.output_norm, source=args.source)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"--projector {args.projector}: {e}") from e
    config = projector_sft_config(len(rows), lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                                  grad_accum=args.grad_accum, grad_clip=args.grad_clip, max_length=args.max_length,
                                  seed=args.seed, report_to=args.report_to, steps=args.steps)
    summary = _start_run(args, lambda: train_projector(model, tokenizer, projector, rows, args.output, config,
                                                       with_lm=args.with_lm, probe_every=args.probe_every))
    print(json.dumps(summary))
    print(f"model and projector saved to {args.output / 'model'}")


def _method_kwargs_from_flags(args: argparse.Namespace) -> dict[str, Any]:
    """``method_kwargs`` set by method-only flags (``MethodFlag``); a flag of another method than
    ``--method`` is a usage error."""
    from thinklean.methods import METHODS

    out = {}
    for spec in METHODS.values():
        for flag in spec.flags:
            value = getattr(args, _flag_dest(flag.flag))
            if value is None:
                continue
            if spec.name != args.method:
                raise UsageError(f"{flag.flag} applies to --method {spec.name} only (got --method {args.method})")
            out[flag.key] = value
    return out


def cmd_train(args: argparse.Namespace) -> None:
    from thinklean.methods import get_trainer_class
    from thinklean.methods.config import ConfigError, load_config, parse_overrides

    method_kwargs = _method_kwargs_from_flags(args)
    _prepare_run_dir(args)
    try:
        overrides = parse_overrides(args.set or [])
    except ConfigError as e:
        raise UsageError(str(e)) from e
    for key in ("steps", "lr", "reward", "prompts_per_step", "samples_per_prompt", "max_new_tokens", "eval_every"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = (value, 0)
    if args.rollout is not None:
        overrides["rollout_backend"] = (args.rollout, 0)
    if args.rollout_dtype is not None:
        overrides["rollout_dtype"] = (args.rollout_dtype, 0)
    if args.bf16:
        overrides["bf16"] = (True, 0)
    if args.report_to is not None:
        overrides["report_to"] = (args.report_to, 0)
    overrides["seed"] = (args.seed, 0)
    if method_kwargs:
        overrides["method_kwargs"] = (method_kwargs, 0)
    try:
        config = load_config(args.method, args.config, overrides)
    except ConfigError as e:
        raise UsageError(str(e)) from e
    trainer_class = get_trainer_class(args.method)
    _check_report_to(config.report_to)
    train_examples = _load_examples(args.data, config.train_problems, "train", args.seed,
                                    prompt_field=args.prompt_field, answer_field=args.answer_field)
    eval_examples = _load_examples(args.data, config.eval_problems, "test", args.seed) if _is_arith(args.data) else []
    model, tokenizer = _load(args.model, args.trust_remote_code)
    _check_prompt_lengths(model, tokenizer, train_examples, config.max_new_tokens, args.data)
    try:
        trainer = trainer_class(model, tokenizer, config, train_examples, args.output, eval_examples)
    except (ConfigError, FileNotFoundError) as e:  # e.g. hgpo with an odd samples_per_prompt, a missing projector
        raise UsageError(str(e)) from e
    result = _start_run(args, lambda: trainer.train(resume=args.resume))
    print(json.dumps(result))


def cmd_eval(args: argparse.Namespace) -> None:
    from thinklean.eval.evaluate import EvalConfig, evaluate
    from thinklean.eval.tables import print_eval

    examples = _load_examples(args.data, args.n, "test", args.seed, prompt_field=args.prompt_field,
                              answer_field=args.answer_field)
    if args.instruction:
        examples = [dataclasses.replace(e, prompt=f"{e.prompt} {args.instruction}") for e in examples]
    engine = None
    if args.rollout == "vllm":
        from thinklean.models.tiny import is_gguf, resolve_model_path
        from thinklean.rollout.vllm_engine import VLLMRollout, vllm_problem

        if args.hybrid:
            raise UsageError("--hybrid runs on the hf engine; drop --rollout vllm")
        if problem := vllm_problem():
            raise UsageError(problem)
    # with vLLM the engine holds the weights on the GPU; the HF model only supplies the tokenizer and EOS ids
    model, tokenizer = _load(args.model, args.trust_remote_code, "cpu" if args.rollout == "vllm" else args.device)
    _check_prompt_lengths(model, tokenizer, examples, args.max_new_tokens, args.data)
    if args.rollout == "vllm":
        path = resolve_model_path(args.model)
        engine = VLLMRollout.launch(model, tokenizer, checkpoint=None if is_gguf(path) else path,
                                    gpu_memory_utilization=args.gpu_memory_utilization, seed=args.seed)
    if args.hybrid:
        from thinklean.eval.hybrid import hybrid_accuracy, print_hybrid

        summary = hybrid_accuracy(
            model, tokenizer, examples, k=args.k, margin=args.margin, max_new_tokens=args.max_new_tokens,
            temperature=args.temperature if args.temperature > 0 else 1.0, seed=args.seed,
            batch_size=args.batch_size, output=args.output / "hybrid.json", mode_format=not args.answer_only,
        )
        print_hybrid(summary, title=f"hybrid accuracy: {args.model}")
        print(f"wrote {args.output / 'hybrid.json'}")
        return
    config = EvalConfig(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, samples=args.samples,
        batch_size=args.batch_size, seed=args.seed, forced_prefix={"think": THINK, "no_think": NO_THINK}.get(args.force_mode, ""),
        answer_extraction=args.answer,
    )
    summary = evaluate(model, tokenizer, examples, config, output=args.output / "eval.json", engine=engine)
    print_eval(summary, title=f"eval: {args.model}")
    print(f"wrote {args.output / 'eval.json'}")


def cmd_analyze(args: argparse.Namespace) -> None:
    from thinklean.analysis.entropy import analyze_model, print_analysis, write_analysis

    examples = _load_examples(args.data, args.n, "test", args.seed, prompt_field=args.prompt_field,
                              answer_field=args.answer_field)

    def run(model_path: str) -> dict[str, Any]:
        model, tokenizer = _load(model_path, args.trust_remote_code, args.device)
        prompts = [format_prompt(e.prompt, tokenizer) for e in examples]
        try:
            result = analyze_model(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, seed=args.seed,
                                   variant=args.variant, apply_final_norm=args.final_norm, name=model_path)
        except ValueError as e:  # unsupported architecture
            raise UsageError(f"--model {model_path}: {e}") from e
        parts = Path(model_path).parts
        result["label"] = "/".join(parts[-2:]) if Path(model_path).name == "model" else parts[-1]  # for plots
        return result

    if args.compare:
        if len(args.compare) < 2:
            raise UsageError(f"--compare: expected BEFORE and at least one AFTER model, got {len(args.compare)} path")
        before, *afters = (run(m) for m in args.compare)
        for result in (before, *afters):
            print_analysis(result)
        paths = write_analysis(afters[0], args.output, compare=before, others=afters[1:])
    else:
        result = run(args.model)
        print_analysis(result)
        paths = write_analysis(result, args.output)
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def cmd_explain_tokens(args: argparse.Namespace) -> None:
    from thinklean.eval.explain import write_explanation
    from thinklean.methods.iapo import explain_tokens

    model, tokenizer = _load(args.model, args.trust_remote_code, args.device)
    examples = _load_examples(args.data, args.n, "test", args.seed, prompt_field=args.prompt_field,
                              answer_field=args.answer_field)
    items = explain_tokens(model, tokenizer, examples, args.max_new_tokens, args.temperature, args.seed)
    print(f"wrote {write_explanation(items, args.output)}")


def cmd_report(args: argparse.Namespace) -> None:
    from thinklean.eval.report import NO_EVALUATIONS, write_report

    try:
        paths = write_report(args.runs, args.output)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from e
    if not json.loads(paths["table"].read_text()):
        print(f"note: {NO_EVALUATIONS}")
    print(f"wrote {paths['markdown']} and {paths['html']}")


def cmd_demo(args: argparse.Namespace) -> None:
    from thinklean.demo import DEFAULT_METHODS, DEMO_METHODS, StaleResultsError, check_methods, run_demo

    methods = tuple(DEMO_METHODS) if args.methods == "all" else tuple(m for m in args.methods.split(",") if m)
    try:
        check_methods(methods)
    except ValueError as e:
        raise UsageError(f"--methods: {e}") from e
    _check_report_to(args.report_to)
    base_model = None
    if args.model != "base":
        from thinklean.models.tiny import resolve_model_path

        if args.rebuild:
            raise UsageError(f"--rebuild retrains the shipped base model; it cannot start from --model {args.model}")
        base_model = resolve_model_path(args.model)
        if not (base_model / "config.json").is_file():
            raise UsageError(f"--model {args.model}: no model directory (config.json) at {base_model}")
    try:
        run_demo(output=args.output, quick=args.quick, rebuild=args.rebuild, seed=args.seed, n_eval=args.n,
                 steps=args.steps, methods=methods or DEFAULT_METHODS, overwrite=args.overwrite,
                 report_to=args.report_to, base_model=base_model)
    except StaleResultsError as e:
        raise UsageError(str(e)) from e


# ----------------------------------------------------------------------------------- parser


def _add_method_flags(p: argparse.ArgumentParser, flags: Sequence[Any], where: str,
                      defaults: Callable[..., Any] | None = None) -> None:
    """A method's own flags (``MethodFlag``s), which apply to ``where`` only (e.g. ``--method bupo``);
    each defaults to None, or with ``defaults`` to that function's default for the flag's key."""
    parameters = inspect.signature(defaults).parameters if defaults is not None else {}
    for flag in flags:
        kind = _number(flag.type, flag.at_least) if flag.type in (int, float) else flag.type
        default = parameters[flag.key].default if flag.key in parameters else None
        try:
            p.add_argument(flag.flag, dest=_flag_dest(flag.flag), type=kind, default=default, choices=flag.choices,
                           metavar=flag.key.upper() if flag.choices is None else None, help=f"{where} only: {flag.help}")
        except argparse.ArgumentError as e:
            raise UsageError(f"{where}: its flag {flag.flag} clashes with another ({e})") from e


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    """``thinklean demo``'s arguments: the demo rows of every registered method."""
    from thinklean.demo import BASE_V3_BUDGET, DemoBudget
    from thinklean.methods import DEMO_ROWS, METHODS

    budget = DemoBudget()
    v3_own = ", ".join(f"{row} at {lr:g}" for row, lr in BASE_V3_BUDGET.lr_by_row.items())
    p.description += (f" Every row trains the weights matching {budget.train_only!r} (the MLPs) at learning rate "
                      f"{budget.lr:g}, GRPO's best of its sweep (docs/task.md); --model base-v3 keeps the budget "
                      f"its figures were measured with (every weight; {v3_own}).")

    starts = [f"{name} first builds {spec.start.description}, the '{spec.start.row}' row"
              for name, spec in METHODS.items() if spec.start is not None and name in DEMO_ROWS]
    p.add_argument("--methods", default="grpo,hmpo",
                   help=f"comma-separated: {', '.join(DEMO_ROWS)}, or 'all' (every one of these, in this order; "
                   f"l1 is evaluated without its length target; {'; '.join(starts)})")
    _add_plugin(p)
    p.add_argument("--quick", action="store_true", help="smoke run: 3 steps per method, 40 eval problems")
    p.add_argument("--rebuild", action="store_true", help="retrain the shipped base model from base-v3 first (about 5 min on 2 cores)")
    p.add_argument("--model", default="base",
                   help="the model every row starts from: 'base' (shipped), an earlier embedded base model "
                        "('base-v1' to 'base-v3'; docs/base-model.md) or a local directory of a model trained on the "
                        "embedded task (rows already in OUTPUT from another model are refused, see --overwrite)")
    p.add_argument("--n", type=AT_LEAST_1, default=None, help="held-out problems to evaluate (default 500, --quick 40)")
    p.add_argument("--steps", type=AT_LEAST_1, default=None,
                   help="RL steps per method (default 40, --quick 3); BuPO's IPA phase is 10%% of them")
    _add_report_to(p)
    p.add_argument("--overwrite", action="store_true",
                   help="re-run methods that OUTPUT holds from another budget, seed or base model (without it "
                        "the demo refuses to mix them)")
    _add_common(p, "demo-out")
    p.set_defaults(func=cmd_demo)


def _data_arguments(p: argparse.ArgumentParser) -> None:
    """``thinklean data``'s arguments, with the methods' data tasks and their flags."""
    from thinklean.data.arith import TASK, VARIANTS

    tasks = _data_tasks()
    p.add_argument("task", choices=["arith", "hft", *tasks],
                   help="dataset to build (hft: think/no-think SFT mixture"
                   + "".join(f"; {task.name}: {task.help}" for task in tasks.values()) + ")")
    p.add_argument("--n", type=AT_LEAST_1, default=1000, help="number of rows (a method's task: problems to sample)")
    p.add_argument("--split", choices=["train", "test"], default="train", help="problem split (disjoint by hash)")
    p.add_argument("--solutions", action="store_true", help="include think-mode solutions (SFT data) in --style")
    p.add_argument("--variant", choices=list(VARIANTS), default=TASK.name,
                   help=f"arith: the problem generator ({TASK.name}: the task, three-digit values multiplied by 7 "
                        "or 9, a kind's own check openers, no step undoing the one before; three-digit: multipliers "
                        "4-9, the same check opener for both kinds; x7x9: three-digit with multipliers 7 and 9; "
                        "x7x9-kinds: x7x9 with a kind's own openers; every-risky: every problem starts with a "
                        "multiplication; two-digit: base-v2's first stage; docs/task.md)")
    _add_style(p)
    _add_model_and_data(p, model=None, model_help="hft: send to no-think the problems this model answers right "
                        "when forced to '<no_think> \\boxed{' (replaces the rule); a method's task: the model whose "
                        "responses are sampled ('base' when not given)",
                        data_help="hft: 'arith' or a JSONL file whose rows name their mode; a method's task: 'arith' "
                        "or a JSONL file with prompt, answer")
    _add_device(p)
    p.add_argument("--mode-field", dest="mode_field", default="mode", help="hft JSONL: field holding think / no_think")
    p.add_argument("--no-think-rule", dest="no_think_rule", default=None,
                   help="hft: problems that may go no-think: terms on 'difficulty' and 'risky' (the number of "
                        "risky steps) joined by '&' (arith default 'difficulty<=1 & risky==0'), 'none', 'all'")
    p.add_argument("--no-think-share", dest="no_think_share", type=RATE, default=0.5,
                   help="hft arith: share of rule-selected problems written as no-think (the rest think)")
    p.add_argument("--no-think-upsample", dest="no_think_upsample", type=FINITE, default=None,
                   help="hft: repeat the no-think rows until they are this share of all rows (e.g. 0.75; a small "
                        "model needs many passes over direct answers)")
    for task in tasks.values():
        _add_method_flags(p, task.flags, f"`thinklean data {task.name}`", defaults=task.build)
    _add_plugin(p)
    _add_common(p, "data")
    p.set_defaults(func=cmd_data)


def _train_arguments(p: argparse.ArgumentParser) -> None:
    """``thinklean train``'s arguments, with every registered method and its flags."""
    from thinklean.core import list_rewards
    from thinklean.methods import METHODS

    p.add_argument("--method", default="grpo", choices=list(METHODS), metavar="METHOD",
                   help=f"registered method: {' | '.join(METHODS)}")
    _add_plugin(p)
    _add_model_and_data(p)
    p.add_argument("--config", type=Path, default=None, help="YAML file overriding the method's defaults")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config key (repeatable)")
    p.add_argument("--steps", type=AT_LEAST_1, default=None, help="rollout steps (config default: 100)")
    p.add_argument("--lr", type=ABOVE_0, default=None, help="learning rate")
    p.add_argument("--reward", default=None, help=f"registered reward: {', '.join(list_rewards())}")
    p.add_argument("--prompts-per-step", dest="prompts_per_step", type=AT_LEAST_1, default=None, help="prompts per rollout step")
    p.add_argument("--samples-per-prompt", dest="samples_per_prompt", type=AT_LEAST_1, default=None, help="G, samples per prompt")
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=AT_LEAST_1, default=None, help="response cap")
    p.add_argument("--eval-every", dest="eval_every", type=AT_LEAST_0, default=None, help="evaluate on held-out problems every N steps")
    for spec in METHODS.values():
        _add_method_flags(p, spec.flags, f"--method {spec.name}")
    p.add_argument("--rollout", choices=["hf", "vllm"], default=None,
                   help="rollout engine: hf (thinklean's decode loop, CPU or GPU) or vllm (colocated vLLM engine "
                        "on the training GPU, weights synced after each update; pip install 'thinklean[gpu]'); "
                        "config default: hf")
    p.add_argument("--rollout-dtype", choices=["model", "bfloat16"], default=None,
                   help="hf engine: sample with the policy as it is (model) or with a bfloat16 copy of it, refreshed "
                        "after every update (the loss re-scores with the policy; docs/scaling.md); config default: model")
    p.add_argument("--bf16", action="store_true",
                   help="run the update's forwards under bf16 autocast (fp32 weights and optimizer state)")
    _add_run_dir_flags(p)
    _add_fields(p)
    _add_report_to(p, default=None)
    _add_common(p, "runs/train")
    p.set_defaults(func=cmd_train)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``thinklean`` parser. ``command``: the only subcommand that gets its arguments (the
    others get their help line), so that ``thinklean --help`` or ``thinklean eval`` does not import
    the method registry, and with it torch, for the method lists of demo, data and train; ``None``:
    every subcommand in full."""
    parser = _Parser(
        prog="thinklean",
        description="Train language models to reason with fewer thinking tokens.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", formatter_class=DEFAULTS, help="base model -> RL methods -> held-out comparison",
                       description="Train each method from the shipped base model (or from a start model built from it) with "
                       "the same budget and seed, "
                       "evaluate all on the same held-out problems (also every 20 steps during training), print the "
                       "comparison and write OUTPUT/results.json and OUTPUT/report/. Finished methods are not re-run "
                       "when their budget, seed and base model (weights hash) are this run's; OUTPUT holding them from "
                       "another is refused unless --overwrite.")
    if command in (None, "demo"):
        _demo_arguments(p)

    p = sub.add_parser("data", formatter_class=DEFAULTS, help="generate datasets as JSONL",
                       description="Write embedded-task problems (optionally with mixed-style solutions) as JSONL.")
    if command in (None, "data"):
        _data_arguments(p)

    p = sub.add_parser("sft", formatter_class=DEFAULTS, help="supervised fine-tuning on prompt/solution pairs",
                       description="SFT with loss on response tokens only; checkpoints in OUTPUT/checkpoints, final model in OUTPUT/model.")
    _add_model_and_data(p, model="tiny", model_help="'tiny' (fresh embedded model), 'base' (shipped) or a local HF directory",
                        data_help="'arith' (or 'arith:VARIANT', a control arm); or a JSONL, .parquet, .arrow or .csv file or a datasets save_to_disk "
                        "directory with prompt (or question), answer, solution (tables need pip install "
                        "'thinklean[datasets]')")
    p.add_argument("--n", type=AT_LEAST_1, default=30000, help="rows to generate when --data arith[:VARIANT]")
    _add_style(p)
    p.add_argument("--steps", type=AT_LEAST_1, default=800, help="optimizer steps")
    p.add_argument("--batch-size", type=AT_LEAST_1, default=32, help="sequences per micro-batch")
    p.add_argument("--grad-accum", type=AT_LEAST_1, default=1, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=ABOVE_0, default=1.5e-3, help="peak learning rate (warm-up then cosine to 0.1x)")
    p.add_argument("--max-length", type=AT_LEAST_1, default=512, help="truncate prompt+response to this many tokens")
    p.add_argument("--save-every", type=AT_LEAST_0, default=100, help="checkpoint every N steps (0: final only)")
    _add_run_dir_flags(p)
    _add_fields(p)
    _add_report_to(p)
    _add_common(p, "runs/sft")
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("litereason-sft", formatter_class=DEFAULTS, help="LiteReason projector SFT (LM frozen)",
                       description="Train the Reasoning Projector on `thinklean data litereason` rows: the LM is frozen, "
                       "latent segments are unrolled into projector steps, loss on the tokens after the first segment. "
                       "Rows with latent_targets (`thinklean data litereason --stages N`) train the LM to read them and "
                       "the source to write them, stage by stage. "
                       "Writes OUTPUT/model (the LM with projector.json, and projector.safetensors for a projector, next "
                       "to it) for `thinklean train --method litereason --model OUTPUT/model`.")
    p.add_argument("--model", default="base", help="'base' (shipped), a local HF model directory (safetensors) or a .gguf file")
    p.add_argument("--data", type=Path, required=True, help="JSONL from `thinklean data litereason` (prompt, answer, solution)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow custom model code from --model")
    p.add_argument("--projector", default=None,
                   help="projector directory to start from; none: the --model directory's, else copies of its last MLP")
    p.add_argument("--source", choices=["projector", "soft"], default="projector",
                   help="a fresh latent source: 'projector' (the paper's Reasoning Projector) or 'soft' (no weights: the "
                   "LM's own next-token distribution times its embeddings; needs --with-lm; docs/litereason.md)")
    p.add_argument("--output-norm", dest="output_norm", choices=["embedding", "none"], default="embedding",
                   help="a fresh projector's output: 'embedding' scales every latent input to the median token-embedding "
                   "norm, 'none' is the paper's projector (docs/litereason.md)")
    p.add_argument("--probe-every", dest="probe_every", type=AT_LEAST_0, default=10,
                   help="steps between two latent probes (norms, cosine, swap-KL) logged to metrics.jsonl; 0: none")
    p.add_argument("--epochs", type=ABOVE_0, default=1.0, help="passes over the rows")
    p.add_argument("--steps", type=AT_LEAST_1, default=None,
                   help="optimizer steps instead of --epochs (rows with a stage: split evenly over the stages)")
    p.add_argument("--batch-size", type=AT_LEAST_1, default=16, help="sequences per micro-batch")
    p.add_argument("--grad-accum", type=AT_LEAST_1, default=1, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=ABOVE_0, default=1e-4, help="peak learning rate (10%% warm-up, then cosine to 0.1x)")
    p.add_argument("--grad-clip", dest="grad_clip", type=NOT_NEGATIVE, default=0.2, help="gradient-norm clip")
    p.add_argument("--max-length", type=AT_LEAST_1, default=512, help="truncate prompt+response to this many tokens")
    p.add_argument("--with-lm", dest="with_lm", action="store_true",
                   help="also fine-tune the LM, loss on every response token (for a model that cannot follow the "
                   "prompt's instruction to write segments, like the embedded one; the spec keeps the LM frozen)")
    _add_run_dir_flags(p, resume=False)
    _add_report_to(p)
    _add_common(p, "runs/litereason-sft")
    p.set_defaults(func=cmd_litereason_sft)

    p = sub.add_parser("train", formatter_class=DEFAULTS, help="RL training (GRPO, Dr.GRPO, DAPO, RLOO, HMPO, ...)",
                       description="Policy-gradient training from a base model. Settings come from "
                       "thinklean/configs/METHOD.yaml, then --config, then flags and --set KEY=VALUE.")
    if command in (None, "train"):
        _train_arguments(p)

    p = sub.add_parser("analyze", formatter_class=DEFAULTS, help="BuPO per-layer entropy diagnostics of a model",
                       description="Sample responses and measure, per layer, the entropy of the internal layer policy "
                       "softmax(h^l E_u^T) and the entropy change of attention and FFN modules; table, JSON/CSV and PNGs.")
    _add_model_and_data(p)
    _add_device(p)
    p.add_argument("--compare", nargs="+", metavar="MODEL",
                   help="BEFORE AFTER [AFTER ...]: overlay models and plot how far each AFTER moved every layer's "
                   "entropy from BEFORE (e.g. base grpo/model bupo/model)")
    p.add_argument("--n", type=AT_LEAST_1, default=64, help="prompts to sample")
    p.add_argument("--max-new-tokens", type=AT_LEAST_1, default=160, help="response cap")
    p.add_argument("--variant", choices=["module", "residual"], default="module",
                   help="module entropy change against the normed input (authors) or along the residual stream")
    p.add_argument("--final-norm", action="store_true",
                   help="apply the model's final norm before unembedding each layer (logit-lens style); "
                        "default: the raw residual stream, as the BuPO authors do")
    _add_fields(p)
    _add_common(p, "runs/analyze")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("explain-tokens", formatter_class=DEFAULTS, help="HTML page colouring tokens by IAPO information gain",
                       description="Sample responses and colour each token by its normalised information gain about "
                       "the final answer (IAPO's early-exit probe); writes OUTPUT/tokens.html.")
    _add_model_and_data(p)
    _add_device(p)
    p.add_argument("--n", type=AT_LEAST_1, default=5, help="responses to show")
    p.add_argument("--max-new-tokens", type=AT_LEAST_1, default=200, help="response cap")
    p.add_argument("--temperature", type=NOT_NEGATIVE, default=0.0, help="0 = greedy")
    _add_fields(p)
    _add_common(p, "runs/explain")
    p.set_defaults(func=cmd_explain_tokens)

    p = sub.add_parser("report", formatter_class=DEFAULTS, help="Markdown + HTML report comparing runs",
                       description="Comparison table, accuracy-vs-tokens Pareto plot and training curves for demo "
                       "output directories or training runs; images embedded in the HTML.")
    p.add_argument("runs", nargs="+", type=Path, help="demo output dirs (results.json) or training run dirs")
    _add_common(p, "report")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("eval", formatter_class=DEFAULTS, help="accuracy and token statistics of a model",
                       description="Generate on held-out problems, grade the last \\boxed{} answer, report accuracy and tokens.")
    _add_model_and_data(p)
    _add_device(p)
    p.add_argument("--rollout", choices=["hf", "vllm"], default="hf",
                   help="generation engine: hf (thinklean's decode loop) or vllm (CUDA; pip install 'thinklean[gpu]'; "
                        "serves the checkpoint directory in its own dtype, a .gguf through a float32 copy; the HF model, "
                        "used for the tokenizer and EOS ids, stays on the CPU whatever --device says)")
    p.add_argument("--gpu-memory-utilization", type=SHARE, default=0.85, help="--rollout vllm: share of the GPU vLLM may take")
    p.add_argument("--n", type=AT_LEAST_0, default=500, help="number of problems (JSONL: first N; 0 = all)")
    p.add_argument("--instruction", default="", help="text appended to every question, e.g. 'Please reason step by "
                   "step, and put your final answer within \\boxed{}.' for a real model (answers are graded on the "
                   "last \\boxed{})")
    p.add_argument("--answer", choices=["boxed", "flexible"], default="boxed",
                   help="what is graded: the last \\boxed{} (boxed), or that box and else the last number in the "
                        "response (flexible, for models that answer in prose)")
    p.add_argument("--max-new-tokens", type=AT_LEAST_1, default=320, help="generation cap per response")
    p.add_argument("--temperature", type=NOT_NEGATIVE, default=0.0, help="0 = greedy")
    p.add_argument("--samples", type=AT_LEAST_1, default=1, help="samples per problem (pass@k needs > 1 and temperature > 0)")
    p.add_argument("--batch-size", type=AT_LEAST_1, default=128, help="sequences decoded together")
    p.add_argument("--force-mode", choices=("think", "no_think"), default=None,
                   help="hybrid models: start every response with this mode's tag (e.g. the always-think accuracy)")
    p.add_argument("--hybrid", action="store_true", help="hybrid accuracy (HAcc): K sampled rollouts forced into each "
                   "mode decide the right mode; the unforced greedy answer's first tag is the chosen one")
    p.add_argument("--k", type=AT_LEAST_1, default=4, help="--hybrid: forced samples per mode (temperature 1 unless --temperature > 0)")
    p.add_argument("--margin", type=FINITE, default=0.2, help="--hybrid: think is right only if it beats no-think by more")
    p.add_argument("--answer-only", dest="answer_only", action="store_true",
                   help="--hybrid: grade forced rollouts on their answer alone (default: also well formed in their "
                        "mode, so a no-think rollout that reasons and closes with </think> does not count)")
    _add_fields(p)
    _add_common(p, "runs/eval")
    p.set_defaults(func=cmd_eval)
    return parser


def _end_distributed() -> None:
    """Destroy the process group a command started under ``accelerate launch`` while Python is alive.

    Gloo's worker threads finish collective work (the trainer's last ``gather_object`` and barrier)
    that holds Python-owned tensors, and releasing them takes the GIL. If the group outlives
    interpreter finalisation, a worker takes the GIL after Python has shut down and the process
    dies in ``std::terminate`` (seen on rank 1 of 2-process HGPO runs). ``destroy_process_group``
    alone does not free the group while the finished trainer and its DDP-wrapped model, left in
    reference cycles, still hold it; collecting those first lets the group join its threads here."""
    distributed = sys.modules.get("torch.distributed")  # only loaded if the command used torch
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        gc.collect()
        distributed.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    start = time.time()
    args = None
    formatwarning, warnings.formatwarning = warnings.formatwarning, _warning_line
    argv = sys.argv[1:] if argv is None else argv
    try:
        _load_plugins(argv)
        args = build_parser(argv[0] if argv else None).parse_args(argv)
        _check_output(args)
        args.func(args)
    except (UsageError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: {_saved_when_interrupted(args)}", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = formatwarning
        _end_distributed()
    print(f"done in {time.time() - start:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
