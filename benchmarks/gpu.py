"""GPU throughput of thinklean's RL step: rollout tokens/s with the HF engine (dynamic cache, and
static cache + torch.compile/CUDA graphs) and with vLLM, update tokens/s and MFU, for a
Qwen2.5-0.5B-shaped model built from a config (random weights).

    python benchmarks/gpu.py                                       # CUDA machine: 0.5B shape, bf16
    python benchmarks/gpu.py --size tiny --device cpu --no-vllm    # smoke run anywhere (seconds)

Each backend runs ``RLTrainer.step`` (GRPO, correctness reward) ``--warmup`` + ``--steps`` times
on the embedded arithmetic prompts; the timed steps are averaged. Random weights almost never
write EOS, so every response runs to ``--max-new-tokens``: the rollout figure is steady-state
decoding of ``prompts x samples`` rows.

- backends: ``hf`` (``SamplingConfig.decode="dynamic"``), ``hf-static`` (``decode="static"``: its
  first, compiling step is the warm-up; ``compile_s`` = that step's rollout time minus the timed
  mean), ``vllm``.
- rollout tokens/s: response tokens / ``rollout_time`` (sampling + grading).
- update tokens/s: prompt + response tokens / ``update_time`` (log-probs, loss, backward, AdamW),
  with ``share_prompt_forward`` off so every row's prompt is computed (the FLOP count below).
- MFU: update FLOPs / ``update_time`` / the GPU's peak dense bf16 FLOP/s. FLOPs per sequence of
  ``L`` tokens, forward + backward: ``6 * N * L`` for the matmul weights (``N`` = linear layers,
  the unembedding included) plus ``12 * n_layers * n_heads * head_dim * L(L+1)/2`` for
  causal attention scores and values. Peak: ``--peak-tflops``, else a table for H100/H200/A100
  (SXM figures); MFU is null on CPU or an unlisted GPU.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from typing import Any

import torch
from _results import write_result

# Qwen2.5-0.5B's shape (494M parameters with its 151,936-token vocabulary); tiny: a smoke test.
SIZES: dict[str, dict[str, Any]] = {
    "0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, vocab_size=151936, rope_theta=1_000_000.0),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=512, rope_theta=10_000.0),
}
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}  # dense, SXM


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="0.5b")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--prompts", type=int, default=32, help="prompts per step")
    p.add_argument("--samples", type=int, default=8, help="responses per prompt")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--micro-batch-tokens", type=int, default=16384, help="padded tokens per forward/backward")
    p.add_argument("--steps", type=int, default=3, help="timed steps per backend")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--no-vllm", action="store_true", help="HF engine only")
    p.add_argument("--no-static", action="store_true", help="skip the hf-static backend (torch.compile)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.3, help="vLLM engine's share of the GPU")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak dense FLOP/s (TFLOP/s) for MFU")
    p.add_argument("--out", default="benchmarks/results/gpu.json")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA GPU here (run with --device cpu for a smoke run)")
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    return args


def build(size: str, dtype: torch.dtype):
    """The model (random weights, ``dtype``) and the embedded tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from thinklean.models.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    config = Qwen2Config(max_position_embeddings=4096, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id, **SIZES[size])
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).to(dtype), tokenizer


def matmul_parameters(model: torch.nn.Module) -> int:
    """Weights that take part in a matmul per token: every ``nn.Linear``, the unembedding
    (``lm_head``, tied to the embedding or not) included; the embedding lookup is not a matmul."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def training_flops(config: Any, n_matmul: int, lengths: list[int]) -> float:
    """Forward + backward FLOPs of sequences of ``lengths`` tokens (module docstring)."""
    head_dim = config.hidden_size // config.num_attention_heads
    attention = 12 * config.num_hidden_layers * config.num_attention_heads * head_dim
    return float(sum(6 * n_matmul * n + attention * n * (n + 1) / 2 for n in lengths))


def peak_flops(args: argparse.Namespace) -> tuple[float | None, str]:
    """Peak dense FLOP/s for MFU and the device's name."""
    if args.device != "cuda":
        return (args.peak_tflops * 1e12 if args.peak_tflops else None), platform.processor() or platform.machine()
    name = torch.cuda.get_device_name()
    if args.peak_tflops:
        return args.peak_tflops * 1e12, name
    known = next((tflops for key, tflops in PEAK_BF16_TFLOPS.items() if key in name), None)
    return (known * 1e12 if known and args.dtype == "bfloat16" else None), name


def run_backend(backend: str, args: argparse.Namespace, model, tokenizer, examples, workdir) -> dict[str, float]:
    import dataclasses

    from thinklean.train.rl import RLConfig, RLTrainer

    decode = "static" if backend == "hf-static" else "dynamic"

    class CountingTrainer(RLTrainer):
        """Records the real (unpadded) sequence lengths each update processes; decodes with ``decode``."""

        def sampling_config(self, step):
            return dataclasses.replace(super().sampling_config(step), decode=decode)

        def update(self, batch):
            r = batch.rollout
            self.update_lengths = (r.prompt_mask.sum(1) + r.response_mask.sum(1)).tolist()
            return super().update(batch)

    rows = args.prompts * args.samples
    config = RLConfig(
        steps=args.warmup + args.steps, prompts_per_step=args.prompts, samples_per_prompt=args.samples,
        max_new_tokens=args.max_new_tokens, micro_batch_tokens=args.micro_batch_tokens, micro_batch_size=rows,
        rollout_batch_size=rows, share_prompt_forward=False, save_every=0, lr=1e-6,
        rollout_backend="vllm" if backend == "vllm" else "hf",
        vllm_gpu_memory_utilization=args.gpu_memory_utilization,
    )
    trainer = CountingTrainer(model, tokenizer, config, examples, workdir / backend)
    trainer.model, trainer.optimizer = trainer.accelerator.prepare(trainer.model, trainer.optimizer)  # as train() does
    n_matmul = matmul_parameters(trainer.accelerator.unwrap_model(trainer.model))
    records = []
    for i in range(config.steps):
        metrics = trainer.step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        flops = training_flops(model.config, n_matmul, trainer.update_lengths)
        records.append({
            "rollout_tokens_per_s": metrics["rollout_tokens_per_s"],
            "update_tokens_per_s": sum(trainer.update_lengths) / metrics["update_time"],
            "update_flops_per_s": flops / metrics["update_time"],
            "rollout_time": metrics["rollout_time"], "update_time": metrics["update_time"],
            "response_tokens": metrics["length_mean"] * rows,
        })
        print(f"  {backend} step {i + 1}/{config.steps}{' (warmup)' if i < args.warmup else ''}: rollout "
              f"{metrics['rollout_time']:.2f}s, update {metrics['update_time']:.2f}s", flush=True)
    timed = records[args.warmup:]
    summary = {key: statistics.mean(r[key] for r in timed) for key in timed[0]}
    summary["compile_s"] = max(0.0, records[0]["rollout_time"] - summary["rollout_time"]) if args.warmup else None
    return summary


def main(argv: list[str] | None = None) -> int:
    import copy
    import tempfile
    from pathlib import Path

    from thinklean.eval.evaluate import arith_examples
    from thinklean.rollout.vllm_engine import vllm_problem

    args = parse_args(argv)
    dtype = getattr(torch, args.dtype)
    model, tokenizer = build(args.size, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    peak, device_name = peak_flops(args)
    examples = arith_examples(max(256, args.prompts), "train", 0)
    backends = ["hf"] + ([] if args.no_static else ["hf-static"])
    vllm_note = "skipped (--no-vllm)" if args.no_vllm else vllm_problem()
    if vllm_note is None:
        backends.append("vllm")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            print(f"{backend}: {args.prompts} prompts x {args.samples} samples, {args.max_new_tokens} new tokens", flush=True)
            results[backend] = run_backend(backend, args, copy.deepcopy(model), tokenizer, examples, Path(tmp))
            mfu = results[backend]["update_flops_per_s"] / peak if peak else None
            results[backend]["update_mfu"] = mfu

    result = {
        "device": args.device, "device_name": device_name, "gpu": device_name if args.device == "cuda" else None,
        "date": time.strftime("%Y-%m-%d"), "size": args.size, "parameters": n_params, "dtype": args.dtype,
        "peak_flops": peak, "torch": torch.__version__, "python": sys.version.split()[0],
        "settings": {k: getattr(args, k) for k in ("prompts", "samples", "max_new_tokens", "micro_batch_tokens",
                                                     "steps", "warmup", "gpu_memory_utilization")},
        "vllm": "ran" if "vllm" in results else vllm_note,
        "backends": results,
    }
    print(f"\n{args.size} ({n_params / 1e6:.1f}M parameters, {args.dtype}) on {device_name}")
    print(f"{'backend':10} {'rollout tok/s':>14} {'update tok/s':>13} {'update TFLOP/s':>15} {'MFU':>6} {'compile s':>10}")
    for backend, r in results.items():
        mfu = f"{100 * r['update_mfu']:.1f}%" if r["update_mfu"] is not None else "-"
        compile_s = f"{r['compile_s']:.1f}" if r["compile_s"] is not None else "-"
        print(f"{backend:10} {r['rollout_tokens_per_s']:14.0f} {r['update_tokens_per_s']:13.0f} "
              f"{r['update_flops_per_s'] / 1e12:15.3f} {mfu:>6} {compile_s:>10}")
    if "vllm" not in results:
        print(f"vLLM: {vllm_note}")
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
