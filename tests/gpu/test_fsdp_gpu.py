"""FSDP on two CUDA GPUs (NCCL): the CPU tests of ``tests/test_fsdp.py`` on the GPU path.

Skipped with fewer than two GPUs (two processes cannot share one GPU under NCCL). Run on a GPU
machine: ``python -m pytest tests/gpu/test_fsdp_gpu.py``. The single-process replay runs on one
GPU; kernels that are not bit-reproducible may need wider tolerances than on the CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the CPU tests' helpers

import test_fsdp  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")]


def test_fsdp_grpo_on_two_gpus_matches_one_gpu(tmp_path, tiny_tokenizer):
    test_fsdp.test_two_process_fsdp_grpo_matches_one_process(tmp_path, tiny_tokenizer)


@pytest.mark.filterwarnings("ignore:LiteReason. no trained projector")
def test_fsdp_litereason_on_two_gpus_matches_one_gpu(tmp_path, tiny_tokenizer):
    test_fsdp.test_two_process_litereason_matches_one_process_sampling_per_process(tmp_path, tiny_tokenizer,
                                                                                   test_fsdp.FSDP_CONFIG)


@pytest.mark.filterwarnings("ignore:LiteReason. no trained projector")
def test_fsdp_litereason_projector_refresh_on_two_gpus(tmp_path, tiny_tokenizer):
    test_fsdp.test_two_process_litereason_projector_refresh_matches_one_process(tmp_path, tiny_tokenizer,
                                                                                test_fsdp.FSDP_CONFIG)


@pytest.mark.filterwarnings("ignore:LiteReason. no trained projector")
def test_fsdp_litereason_sft_on_two_gpus(tmp_path, tiny_tokenizer):
    test_fsdp.test_two_process_fsdp_litereason_sft_with_the_probe_matches_one_process(tmp_path, tiny_tokenizer)


def test_fsdp_resume_on_two_gpus(tmp_path, tiny_tokenizer):
    test_fsdp.test_fsdp_killed_run_resumes_from_a_sharded_checkpoint(tmp_path, tiny_tokenizer)


def test_fsdp_sft_on_two_gpus_matches_one_gpu(tmp_path, tiny_tokenizer):
    test_fsdp.test_two_process_fsdp_sft_matches_one_process(tmp_path, tiny_tokenizer)
