"""RL step throughput: thinklean's ``RLTrainer`` against TRL's ``GRPOTrainer``, same GRPO setup.

    python benchmarks/rl_throughput.py                       # shipped base model, 5 timed steps
    python benchmarks/rl_throughput.py --model fresh --steps 2 --threads 1   # untrained tiny model

Both trainers run in this one process on copies of the same weights: 8 prompts x 8 samples per
step and one optimizer step over the 64 completions (micro-batches of 32), at most 160 new
tokens, temperature 1, one PPO epoch (TRL ``num_iterations=1``), no KL (``beta=0``), the same lr,
clip, Adam betas and grad clip, the correctness reward on the embedded arithmetic task, and
the loss aggregation of ``--loss-agg`` mapped to TRL's ``loss_type``. TRL gets plain-text
prompts formatted by ``format_prompt`` (no chat template), HF ``generate`` (no vLLM), no
gradient checkpointing, no logging; ``--bf16`` gives both bf16 (TRL's ``bf16=True``: the
accelerate autocast around every forward of the training model, generation included; thinklean's
``bf16`` autocast in the update and ``rollout_dtype="bfloat16"``: sampling from a bf16 copy of the
policy). Each trainer warms up for ``--warmup`` steps, then
``--steps`` steps are timed wall-clock, step end to step end.

Completion lengths are printed next to the times: a policy that writes longer takes longer,
so compare completion tokens/s as well as seconds/step. Where the time goes: thinklean's own
``rollout_time``/``update_time`` metrics; for TRL, timers around ``_generate`` (tokenize,
``generate``, decode), ``_generate_and_score_completions`` (that plus rewards and advantages:
the counterpart of thinklean's rollout) and the rest of the step (the update).

Against the hardware: before each trainer, a micro-benchmark times the model's own matmul shapes
(every ``nn.Linear``, the unembedding included) at the decode batch (``prompts x samples`` rows)
and at the update's micro-batch of tokens; that GFLOP/s is what the cores can give this model.
thinklean's rollout and update FLOPs are counted from each step's sequences (``flops_*`` below)
and shown as GFLOP/s and as a fraction of that rate. ``--profile`` adds a torch.profiler
breakdown of one extra rollout (matmul, attention, sampling, cache copies, other). Seconds and
tokens/s are medians over the timed steps; ``compile_s`` is the warm-up step's excess over the
median step (torch.compile with ``--decode static``), shown amortised over ``--amortise`` steps.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _results import write_result

# TRL's loss aggregation for each of thinklean's (the ones both implement).
LOSS_TYPES = {"token-mean": "dapo", "seq-mean-token-mean": "grpo", "seq-mean-token-sum-norm": "dr_grpo"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="base", help="HF model directory, 'base' (the shipped model) or 'fresh' (new untrained tiny model)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per trainer")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--prompts", type=int, default=8, help="prompts per step")
    p.add_argument("--samples", type=int, default=8, help="completions per prompt")
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--micro-batch", type=int, default=32, help="sequences per forward/backward")
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--loss-agg", default="token-mean", choices=sorted(LOSS_TYPES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--only", choices=("both", "thinklean", "trl"), default="both")
    p.add_argument("--decode", choices=("dynamic", "static"), default="dynamic", help="thinklean's SamplingConfig.decode")
    p.add_argument("--bf16", action="store_true",
                   help="thinklean: bf16=True, rollout_dtype='bfloat16'; TRL: bf16=True; matmul rates in bf16")
    p.add_argument("--profile", action="store_true", help="profile one extra thinklean rollout (torch.profiler)")
    p.add_argument("--amortise", type=int, default=40, help="run length over which compile time is spread")
    p.add_argument("--out", default="benchmarks/results/rl_throughput.json")
    args = p.parse_args(argv)
    if (args.prompts * args.samples) % args.micro_batch:
        p.error(f"--micro-batch {args.micro_batch} must divide prompts x samples = {args.prompts * args.samples}")
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    return args


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def resolve_model(name: str, workdir: Path) -> Path:
    """A model directory; ``fresh`` builds and saves an untrained tiny model into ``workdir``."""
    from thinklean.models.tiny import build_model, build_tokenizer, resolve_model_path, save_pretrained

    if name == "fresh":
        tokenizer = build_tokenizer()
        path = workdir / "fresh-model"
        save_pretrained(build_model(tokenizer, seed=0), tokenizer, path)
        return path
    path = resolve_model_path(name)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json (expected a Hugging Face model directory)")
    return path


def summarize(steps: list[dict[str, float]]) -> dict[str, float]:
    """Means over the timed steps (and the std of the step time), and medians of step time and tokens/s."""
    times = [s["step_time"] for s in steps]
    completions = sum(s["completions"] for s in steps)
    tokens = sum(s["completion_tokens"] for s in steps)
    out = {
        "median_seconds_per_step": statistics.median(times),
        "median_completion_tokens_per_second": statistics.median(s["completion_tokens"] / s["step_time"] for s in steps),
        "seconds_per_step": statistics.mean(times),
        "seconds_per_step_std": statistics.stdev(times) if len(times) > 1 else 0.0,
        "steps_per_second": len(times) / sum(times),
        "completions_per_second": completions / sum(times),
        "completion_tokens_per_second": tokens / sum(times),
        "mean_completion_length": tokens / completions,
    }
    for key in ("rollout_time", "generate_time", "update_time", "accuracy"):
        values = [s[key] for s in steps if s.get(key) is not None]
        if values:
            out[key] = statistics.mean(values)
    for kind in ("rollout", "update"):  # FLOPs per second of the median step's phase
        if all(s.get(f"{kind}_flops") for s in steps):
            out[f"{kind}_gflops_per_s"] = statistics.median(s[f"{kind}_flops"] / s[f"{kind}_time"] for s in steps) / 1e9
    return out


# ------------------------------------------------------------------------------- FLOPs and rate


def matmul_rate(model: torch.nn.Module, rows: int, repeats: int = 20, dtype: torch.dtype | None = None) -> float:
    """GFLOP/s of the model's matmul shapes (each ``nn.Linear`` weight, ``[rows, in] @ [in, out]``,
    in ``dtype`` (default: the model's) on its device), median of ``repeats`` passes over all of them."""
    weights = [m.weight.detach().to(dtype or m.weight.dtype) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = {w.shape[1]: torch.randn(rows, w.shape[1], dtype=w.dtype, device=w.device) for w in weights}
    flops = sum(2 * rows * w.numel() for w in weights)
    times = []
    for _ in range(repeats + 2):
        _sync()
        start = time.perf_counter()
        for w in weights:
            torch.nn.functional.linear(inputs[w.shape[1]], w)
        _sync()
        times.append(time.perf_counter() - start)
    return flops / statistics.median(times[2:]) / 1e9


def attention_flops_per_position(config: Any) -> int:
    """Attention FLOPs (scores and weighted values, forward) per query position per key position."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 4 * config.num_hidden_layers * config.num_attention_heads * head_dim


def rollout_flops(config: Any, n_matmul: int, prompt_lengths: list[int], response_lengths: list[int], samples: int) -> float:
    """Forward FLOPs a rollout needs: each distinct prompt prefilled once (rows are prompt-major,
    ``samples`` per prompt), then one position per response token attending to everything before."""
    attention = attention_flops_per_position(config)
    prefill = sum(2 * n_matmul * p + attention * p * (p + 1) / 2 for p in prompt_lengths[::samples])
    decode = sum(2 * n_matmul * r + attention * (p * r + r * (r + 1) / 2) for p, r in zip(prompt_lengths, response_lengths))
    return float(prefill + decode)


def update_flops(config: Any, n_matmul: int, lengths: list[int]) -> float:
    """Forward + backward FLOPs of scoring every sequence (as ``benchmarks/gpu.py`` counts them)."""
    return float(sum(6 * n_matmul * n + 3 * attention_flops_per_position(config) * n * (n + 1) / 2 for n in lengths))


PROFILE_GROUPS = {  # torch.profiler op name fragments -> where a decode step's time goes
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear"),
    "attention": ("scaled_dot_product", "flash_attention"),
    "sampling": ("exponential", "multinomial", "log_softmax", "softmax", "argmax", "aten::sort", "cumsum", "aten::exp"),
    "cache copies": ("index_select", "aten::copy_", "aten::index", "aten::cat"),
}


def profile_rollout(trainer: Any, examples: list[Any]) -> dict[str, float]:
    """Seconds of self CPU (and CUDA) time per op group over one rollout, plus the wall time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        trainer.rollout(examples, trainer.step_index)
        _sync()
    wall = time.perf_counter() - start
    groups = dict.fromkeys([*PROFILE_GROUPS, "other ops"], 0.0)
    for event in prof.key_averages():
        seconds = (event.self_cpu_time_total + getattr(event, "self_device_time_total", 0)) / 1e6
        group = next((g for g, keys in PROFILE_GROUPS.items() if any(k in event.key for k in keys)), "other ops")
        groups[group] += seconds
    groups["python and dispatch"] = max(0.0, wall - sum(groups.values()))  # time outside any op
    return {"wall_s": wall} | {f"{group}_s": seconds for group, seconds in groups.items()}


# ----------------------------------------------------------------------------------- thinklean


def run_thinklean(args: argparse.Namespace, model_dir: Path, examples: list[Any], workdir: Path) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """Per-step records, and the run's extras: matmul rates, FLOP counts' basis, profile."""
    import dataclasses

    from gpu import matmul_parameters

    from thinklean.models.tiny import load_pretrained
    from thinklean.train.rl import RLConfig, RLTrainer

    class CountingTrainer(RLTrainer):
        """Uses ``--decode`` and keeps each step's rollout sequences and examples for the FLOP count."""

        def sampling_config(self, step):
            return dataclasses.replace(super().sampling_config(step), decode=args.decode)

        def rollout(self, examples, step, round_=0):
            self.last_examples = examples
            self.last_rollout = super().rollout(examples, step, round_)
            return self.last_rollout

    model, tokenizer = load_pretrained(model_dir)
    n = args.prompts * args.samples
    dtype = torch.bfloat16 if args.bf16 else None
    extras: dict[str, Any] = {"matmul_gflops_decode": matmul_rate(model, n, dtype=dtype),
                              "matmul_gflops_update": matmul_rate(model, 1024, dtype=dtype),
                              "matmul_parameters": matmul_parameters(model)}
    print(f"  matmul rate of the model's shapes{' in bf16' if args.bf16 else ''}: {extras['matmul_gflops_decode']:.0f} "
          f"GFLOP/s at {n} rows, {extras['matmul_gflops_update']:.0f} GFLOP/s at 1024 rows", flush=True)
    config = RLConfig(
        method="grpo", steps=args.warmup + args.steps + args.profile, prompts_per_step=args.prompts, samples_per_prompt=args.samples,
        max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=1.0, reward="correctness", advantage="grpo",
        loss_agg=args.loss_agg, clip_low=0.2, clip_high=0.2, kl_coef=0.0, lr=args.lr, adam_beta2=0.99, grad_clip=1.0,
        ppo_epochs=1, mini_batches=1, micro_batch_size=args.micro_batch, rollout_batch_size=n,
        save_every=0, seed=args.seed, bf16=args.bf16, rollout_dtype="bfloat16" if args.bf16 else "model",
    )
    trainer = CountingTrainer(model, tokenizer, config, examples, workdir / "thinklean-run")
    trainer.model, trainer.optimizer = trainer.accelerator.prepare(trainer.model, trainer.optimizer)  # as train() does
    records = []
    for i in range(args.warmup + args.steps):
        _sync()
        start = time.perf_counter()
        metrics = trainer.step()
        _sync()
        elapsed = time.perf_counter() - start
        r = trainer.last_rollout
        prompts, responses = r.prompt_mask.sum(1).tolist(), r.response_mask.sum(1).tolist()
        records.append({
            "step_time": elapsed, "completions": n, "completion_tokens": metrics["length_mean"] * n,
            "mean_completion_length": metrics["length_mean"], "accuracy": metrics["accuracy"],
            "rollout_time": metrics["rollout_time"], "update_time": metrics.get("update_time", 0.0), "warmup": i < args.warmup,
            "rollout_flops": rollout_flops(model.config, extras["matmul_parameters"], prompts, responses, args.samples),
            "update_flops": update_flops(model.config, extras["matmul_parameters"], [p + q for p, q in zip(prompts, responses)]),
        })
        print(f"  thinklean step {i + 1}/{args.warmup + args.steps}: {elapsed:.2f}s, mean length {metrics['length_mean']:.1f}", flush=True)
    if args.profile:
        extras["profile"] = profile_rollout(trainer, trainer.last_examples)
    return records, extras


# ----------------------------------------------------------------------------------------- TRL


def trl_config_kwargs(args: argparse.Namespace, output_dir: Path) -> dict[str, Any]:
    """GRPOConfig arguments matching thinklean's RLConfig in :func:`run_thinklean`."""
    import dataclasses

    from trl import GRPOConfig

    batch = args.prompts * args.samples
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir), max_steps=args.warmup + args.steps,
        per_device_train_batch_size=args.micro_batch, gradient_accumulation_steps=batch // args.micro_batch,
        num_generations=args.samples, max_completion_length=args.max_new_tokens,  # generation batch = one step's 64
        temperature=1.0, top_p=1.0, top_k=0, num_iterations=1, beta=0.0, epsilon=0.2, epsilon_high=0.2,
        loss_type=LOSS_TYPES[args.loss_agg], scale_rewards="group", mask_truncated_completions=False,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, adam_beta1=0.9,
        adam_beta2=0.99, max_grad_norm=1.0, use_vllm=False, bf16=args.bf16, fp16=False, use_cpu=not torch.cuda.is_available(),
        logging_strategy="no", report_to="none", save_strategy="no", disable_tqdm=True, log_completions=False,
        dataloader_num_workers=0, seed=args.seed,
    )
    fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    # transformers 5 renamed gradient checkpointing; TRL's default for it is True
    kwargs["activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"] = False
    return kwargs


def run_trl(args: argparse.Namespace, model_dir: Path, examples: list[Any], workdir: Path) -> list[dict[str, float]]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from thinklean.data.formats import format_prompt
    from thinklean.integrations.trl import reward_funcs
    from thinklean.models.tiny import load_pretrained

    class TimedGRPOTrainer(GRPOTrainer):
        """Accumulates seconds spent in generation and in generate-and-score, and completion lengths."""

        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.timers = {"generate_time": 0.0, "rollout_time": 0.0}
            self.completion_lengths: list[int] = []

        def _generate(self, prompts):
            _sync()
            start = time.perf_counter()
            out = super()._generate(prompts)
            _sync()
            self.timers["generate_time"] += time.perf_counter() - start
            return out

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            self.completion_lengths.extend(len(ids) for ids in completion_ids_list)  # EOS included, as in thinklean
            return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)

        def _generate_and_score_completions(self, inputs):
            _sync()
            start = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            _sync()
            self.timers["rollout_time"] += time.perf_counter() - start
            return out

    model, tokenizer = load_pretrained(model_dir)
    dataset = Dataset.from_list([{"prompt": format_prompt(e.prompt, tokenizer), "answer": e.answer} for e in examples])
    trainer = TimedGRPOTrainer(
        model=model, reward_funcs=reward_funcs(["correctness"], tokenizer=tokenizer),
        args=GRPOConfig(**trl_config_kwargs(args, workdir / "trl-run")), train_dataset=dataset, processing_class=tokenizer,
    )
    records: list[dict[str, float]] = []
    total = args.warmup + args.steps

    class StepTimer(TrainerCallback):
        """Wall-clock between consecutive optimizer steps, split by the trainer's timers."""

        def on_train_begin(self, *a: Any, **kw: Any) -> None:
            _sync()
            self.last = time.perf_counter()

        def on_step_end(self, *a: Any, **kw: Any) -> None:
            _sync()
            now = time.perf_counter()
            elapsed, self.last = now - self.last, now
            lengths = trainer.completion_lengths
            accuracy = trainer._metrics["train"]["rewards/correctness/mean"]  # logging is off: never cleared
            records.append({
                "step_time": elapsed, "completions": len(lengths), "completion_tokens": float(sum(lengths)),
                "mean_completion_length": sum(lengths) / max(1, len(lengths)), "accuracy": accuracy[-1] if accuracy else None,
                "generate_time": trainer.timers["generate_time"], "rollout_time": trainer.timers["rollout_time"],
                "update_time": elapsed - trainer.timers["rollout_time"], "warmup": len(records) < args.warmup,
            })
            print(f"  TRL step {len(records)}/{total}: {elapsed:.2f}s, mean length {records[-1]['mean_completion_length']:.1f}", flush=True)
            trainer.timers = dict.fromkeys(trainer.timers, 0.0)
            trainer.completion_lengths = []

    trainer.add_callback(StepTimer())
    trainer.train()
    return records


# ---------------------------------------------------------------------------------------- main


def print_table(results: dict[str, dict[str, float]], ratio: dict[str, float]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="RL step throughput (timed steps only)")
    # rollout = sampling + rewards + advantages; "generate" = TRL's share of it spent in _generate
    for column in ("trainer", "s/step", "median s", "tokens/s", "median tok/s", "mean len", "rollout s", "generate s", "update s"):
        table.add_column(column, justify="left" if column == "trainer" else "right")
    for name, s in results.items():
        def cell(key: str, fmt: str = "{:.2f}") -> str:
            return fmt.format(s[key]) if key in s else "-"

        table.add_row(
            name, f"{s['seconds_per_step']:.2f} ± {s['seconds_per_step_std']:.2f}", cell("median_seconds_per_step"),
            cell("completion_tokens_per_second", "{:.0f}"), cell("median_completion_tokens_per_second", "{:.0f}"),
            cell("mean_completion_length", "{:.1f}"),
            cell("rollout_time"), cell("generate_time"), cell("update_time"),
        )
    console = Console(width=max(100, Console().width))
    console.print(table)
    if ratio:
        console.print(f"thinklean / TRL steps per second: [bold]{ratio['steps_per_second']:.2f}x[/bold]   "
                      f"completion tokens per second: [bold]{ratio['completion_tokens_per_second']:.2f}x[/bold] "
                      f"(medians: {ratio['median_completion_tokens_per_second']:.2f}x)")


def print_hardware(summary: dict[str, float], extras: dict[str, Any], amortise: int) -> None:
    """thinklean's FLOP rates against the measured matmul rate, compile time, and the profile."""
    for kind, rate in (("rollout", "matmul_gflops_decode"), ("update", "matmul_gflops_update")):
        if f"{kind}_gflops_per_s" in summary:
            print(f"thinklean {kind}: {summary[f'{kind}_gflops_per_s']:.1f} GFLOP/s = "
                  f"{summary[f'{kind}_fraction_of_matmul_rate']:.0%} of the measured {extras[rate]:.0f} GFLOP/s")
    print(f"compile/warm-up excess {summary['compile_s']:.1f}s; amortised over {amortise} steps: "
          f"{summary['amortised_seconds_per_step']:.2f} s/step")
    if "profile" in extras:
        p = extras["profile"]
        print(f"one rollout profiled ({p['wall_s']:.2f}s wall): " + ", ".join(
            f"{key[:-2]} {value / p['wall_s']:.0%}" for key, value in p.items() if key != "wall_s"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from thinklean.eval.evaluate import arith_examples

    examples = arith_examples(2000, "train", args.seed)
    with tempfile.TemporaryDirectory(prefix="thinklean-bench-") as tmp:
        workdir = Path(tmp)
        try:
            model_dir = resolve_model(args.model, workdir)
        except FileNotFoundError as error:
            print(f"error: {error} (use --model fresh for an untrained tiny model)", file=sys.stderr)
            return 2
        runs: dict[str, list[dict[str, float]]] = {}
        extras: dict[str, Any] = {}
        if args.only in ("both", "thinklean"):
            print(f"thinklean RLTrainer (decode={args.decode})", flush=True)
            runs["thinklean"], extras = run_thinklean(args, model_dir, examples, workdir)
        if args.only in ("both", "trl"):
            import trl

            print(f"TRL {trl.__version__} GRPOTrainer", flush=True)
            runs["trl"] = run_trl(args, model_dir, examples, workdir)

    results = {name: summarize([s for s in steps if not s["warmup"]]) for name, steps in runs.items()}
    for name, steps in runs.items():  # the warm-up step's excess: compilation, allocator and kernel warm-up
        warm = [s["step_time"] for s in steps if s["warmup"]]
        compile_s = max(0.0, warm[0] - results[name]["median_seconds_per_step"]) if warm else 0.0
        results[name]["compile_s"] = compile_s
        results[name]["amortised_seconds_per_step"] = results[name]["median_seconds_per_step"] + compile_s / args.amortise
    if "thinklean" in results:
        for kind, rate in (("rollout", "matmul_gflops_decode"), ("update", "matmul_gflops_update")):
            if f"{kind}_gflops_per_s" in results["thinklean"]:
                results["thinklean"][f"{kind}_fraction_of_matmul_rate"] = results["thinklean"][f"{kind}_gflops_per_s"] / extras[rate]
    ratio = {}
    if "thinklean" in results and "trl" in results:
        ratio = {key: results["thinklean"][key] / results["trl"][key]
                 for key in ("steps_per_second", "completions_per_second", "completion_tokens_per_second",
                             "median_completion_tokens_per_second")}
    print_table(results, ratio)
    if "thinklean" in results:
        print_hardware(results["thinklean"], extras, args.amortise)

    import accelerate
    import transformers

    versions = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
                "accelerate": accelerate.__version__}
    try:
        import trl

        versions["trl"] = trl.__version__
    except ImportError:
        pass
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "config": {k: v for k, v in vars(args).items() if k != "out"} | {"trl_loss_type": LOSS_TYPES[args.loss_agg]},
        "environment": versions | {
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()})",
            "torch_threads": torch.get_num_threads(),
        },
        "results": results,
        "thinklean_over_trl": ratio,
        "hardware": extras,
        "steps": runs,
    }
    write_result(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
