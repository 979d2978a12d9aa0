"""taidtron.flops: the peak FLOP/s of each device MFU divides by, the model FLOPs per token, and parameter counts
that count each parameter once whatever the layout (torchrun workers at tp=2 x pp=2 against one process)."""

from __future__ import annotations

from pathlib import Path

import pytest

from taidtron.config import ModelConfig
from taidtron.flops import distillation_flops_per_token, matmul_params_per_token, peak_flops
from tests.support import run_torchrun
from tests.test_config import QWEN2_1_5B

WORKER = Path(__file__).with_name("flops_worker.py")


@pytest.mark.parametrize(
    "name, product, tflops",
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.5),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756.5),
        ("NVIDIA H100 NVL", "H100 NVL", 835.5),
        ("NVIDIA H200", "H200 SXM", 989.5),
        ("NVIDIA H200 NVL", "H200 NVL", 835.5),
        ("NVIDIA GH200 480GB", "GH200", 989.5),
        ("NVIDIA A100-SXM4-80GB", "A100", 312.0),
        ("NVIDIA A100-PCIE-40GB", "A100", 312.0),
        ("NVIDIA A100 80GB PCIe", "A100", 312.0),
        ("NVIDIA L40S", "L40S", 362.05),
        ("NVIDIA L40", "L40", 181.05),
        ("NVIDIA L4", "L4", 121.0),
        ("NVIDIA A10", "A10", 125.0),
    ],
)
def test_peak_flops_by_exact_device(name, product, tflops):
    peak = peak_flops(name)
    assert (peak.device, peak.tflops, peak.flops) == (product, tflops, tflops * 1e12)


@pytest.mark.parametrize("name", ["NVIDIA A10G", "Tesla T4", "NVIDIA GeForce RTX 4090", "", None])
def test_devices_outside_the_table_get_no_peak(name):
    assert peak_flops(name) is None


def test_model_flops_per_token_counts_every_matmul_once():
    """Qwen2-1.5B by hand: 28 layers of q/k/v (1536 -> 1536 + 2 * 256), o (1536 -> 1536) and the SwiGLU MLP
    (3 * 1536 * 8960), plus the output layer (tied, but it is a matmul: counted once); the embedding lookup is not."""
    student = ModelConfig(**QWEN2_1_5B)
    per_layer = 1536 * (1536 + 2 * 256) + 1536 * 1536 + 3 * 1536 * 8960
    assert matmul_params_per_token(student, 151936) == 28 * per_layer + 1536 * 151936
    seq = 4096
    training = 6 * (28 * per_layer + 1536 * 151936) + 12 * 28 * 1536 * seq
    assert distillation_flops_per_token(student, None, 151936, seq) == training
    forward = 2 * (28 * per_layer + 1536 * 151936) + 4 * 28 * 1536 * seq
    assert distillation_flops_per_token(student, student, 151936, seq) == training + forward


@pytest.mark.multiprocess
def test_parameter_counts_at_tp2_pp2_equal_the_single_process_count():
    (single,) = run_torchrun(WORKER, 1, "1", "1")
    assert single["student"] == single["student_naive"] and single["teacher"] == single["teacher_naive"]
    results = run_torchrun(WORKER, 4, "2", "2")
    for r in results:  # every rank gets the whole count
        assert (r["student"], r["teacher"]) == (single["student"], single["teacher"]), r
    # the naive sum is wrong in both ways the count avoids: norms once per TP rank, the tied embedding twice
    h_s, layers_s = 64, 4
    norms = (2 * layers_s + 1) * h_s
    assert results[0]["student_naive"] - single["student"] == norms + single["padded_vocab"] * h_s
    assert results[0]["teacher_naive"] - single["teacher"] == (2 * 4 + 1) * 96
