"""Model FLOPs and the hardware peak they are measured against (MFU), and honest parameter counts.

MFU = model FLOPs per token x tokens/s / (peak dense bf16 FLOP/s per GPU x GPUs). Model FLOPs per token follow the
PaLM convention (what `tools/plan.py` assumes, so a measured MFU compares with its 40%): every weight a token
multiplies through costs 2 FLOPs forward and 4 backward, attention 4·layers·width·seq forward (QK^T and AV, not
halved for causality), the teacher forward only:

    student  6 · matmul params + 12 · L · h · seq        teacher  2 · matmul params + 4 · L · h · seq

"matmul params" are the linear layers and the output layer; norms and the input embedding (a lookup) do no matmul.
Counted from the config, so the figure is the same whatever the layout (no replicated norm counted per TP rank, no
tied embedding counted on two pipeline stages).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.distributed as dist

from taidtron.config import ModelConfig

# ---- peak FLOP/s ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeakFlops:
    device: str
    """The product the device name was matched to (e.g. "H100 PCIe")."""
    tflops: float
    """Dense bf16 tensor-core peak, TFLOP/s per GPU."""

    @property
    def flops(self) -> float:
        return self.tflops * 1e12


# Dense bf16 tensor-core peaks from NVIDIA's datasheets. The datasheets print the "with sparsity" figure with an
# asterisk; the dense peak is half of it (e.g. H100 SXM: 1,979 sparse -> 989.5 dense). First match wins, so each
# variant comes before the name it extends (H100 NVL and H100 PCIe before plain H100, which is the SXM5 part that
# torch names "NVIDIA H100 80GB HBM3"). Sources:
#   H100 SXM 989.5, H100 PCIe 756.5, H100 NVL 835.5      NVIDIA H100 Tensor Core GPU datasheet
#   H200 SXM 989.5, H200 NVL 835.5                       NVIDIA H200 Tensor Core GPU datasheet
#   GH200 989.5                                          NVIDIA GH200 Grace Hopper Superchip datasheet
#   H800 SXM 989.5, H800 PCIe 756.5                      NVIDIA H800 product brief (H100 silicon, same peaks)
#   A100 (40/80 GB, SXM and PCIe) 312, A800 312           NVIDIA A100 Tensor Core GPU datasheet (dense BF16 312)
#   L40S 362.05, L40 181.05, L4 121                      NVIDIA L40S, L40 and L4 datasheets
#   A10 125, A30 165, A40 149.7                          NVIDIA A10, A30 and A40 datasheets
# Devices not listed (e.g. A10G, whose clocks differ from the A10) report no MFU rather than a guessed one.
PEAK_BF16_DENSE = (
    (r"GH200", "GH200", 989.5),
    (r"H200 NVL", "H200 NVL", 835.5),
    (r"H200", "H200 SXM", 989.5),
    (r"H100 NVL", "H100 NVL", 835.5),
    (r"H100 PCIe", "H100 PCIe", 756.5),
    (r"H100", "H100 SXM", 989.5),
    (r"H800 PCIe", "H800 PCIe", 756.5),
    (r"H800", "H800 SXM", 989.5),
    (r"A100", "A100", 312.0),
    (r"A800", "A800", 312.0),
    (r"L40S", "L40S", 362.05),
    (r"L40", "L40", 181.05),
    (r"L4", "L4", 121.0),
    (r"A10", "A10", 125.0),
    (r"A30", "A30", 165.0),
    (r"A40", "A40", 149.7),
)


def peak_flops(device_name: str | None) -> PeakFlops | None:
    """The dense bf16 peak of the device torch names `device_name` (torch.cuda.get_device_name()), or None when it
    is not a device of the table. Names are matched as whole words, case-insensitively ("NVIDIA A100-SXM4-80GB",
    "NVIDIA H100 PCIe", "NVIDIA H200"); "A10G" does not match "A10"."""
    if not device_name:
        return None
    for pattern, product, tflops in PEAK_BF16_DENSE:
        words = pattern.replace(" ", r"[\s_-]+")
        if re.search(rf"(?<![A-Za-z0-9]){words}(?![A-Za-z0-9])", device_name, flags=re.IGNORECASE):
            return PeakFlops(product, tflops)
    return None


# ---- model FLOPs ------------------------------------------------------------------------------------------------


def matmul_params_per_token(model: ModelConfig, padded_vocab: int) -> int:
    """Weights each token multiplies through (whole model, unsharded): all linear layers and the output layer."""
    h, f = model.hidden_size, model.ffn_hidden_size
    kv = model.num_query_groups * model.kv_channels
    return model.num_layers * (h * (h + 2 * kv) + h * h + 3 * h * f) + h * padded_vocab


def training_flops_per_token(model: ModelConfig, padded_vocab: int, seq_length: int) -> int:
    """Forward + backward FLOPs per token of a trained model."""
    return 6 * matmul_params_per_token(model, padded_vocab) + 12 * model.num_layers * model.hidden_size * seq_length


def forward_flops_per_token(model: ModelConfig, padded_vocab: int, seq_length: int) -> int:
    """Forward FLOPs per token (the frozen teacher)."""
    return 2 * matmul_params_per_token(model, padded_vocab) + 4 * model.num_layers * model.hidden_size * seq_length


def distillation_flops_per_token(
    student: ModelConfig, teacher: ModelConfig | None, padded_vocab: int, seq_length: int
) -> int:
    """Model FLOPs of one distillation token: the student trained, the teacher (if any) forward only."""
    teacher_flops = forward_flops_per_token(teacher, padded_vocab, seq_length) if teacher is not None else 0
    return training_flops_per_token(student, padded_vocab, seq_length) + teacher_flops


# ---- parameter counts -------------------------------------------------------------------------------------------


def count_parameters(
    model: torch.nn.Module | None,
    *,
    tp_group: dist.ProcessGroup | None,
    model_parallel_group: dist.ProcessGroup | None,
    device: torch.device,
) -> int:
    """Parameters of the whole model, each counted once, from this rank's shard.

    Each rank counts what it holds except the copies: a parameter that is replicated across the tensor-parallel
    group (norms, the bias of a row-parallel layer; megatron marks the sharded ones `tensor_model_parallel`) counts
    on TP rank 0 only, and the last stage's copy of tied embeddings (megatron marks it `shared`) not at all. One
    all-reduce over the model-parallel group adds up the stages and shards. `device` is where the group's backend
    can reduce (NCCL: the GPU)."""
    if model is None:
        return 0
    from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate
    from megatron.core.transformer.module import param_is_not_shared

    tp_rank = dist.get_rank(tp_group) if tp_group is not None else 0
    owned = sum(
        p.numel()
        for p in model.parameters()
        if param_is_not_shared(p) and (tp_rank == 0 or param_is_not_tensor_parallel_duplicate(p, tp_group))
    )
    total = torch.tensor([owned], dtype=torch.float64, device=device)
    if model_parallel_group is not None and dist.get_world_size(model_parallel_group) > 1:
        dist.all_reduce(total, group=model_parallel_group)
    return int(total.item())
