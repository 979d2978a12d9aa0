"""Run megatron-core on CPU (gloo). Opt-in: `install()` is called by `taidtron.distributed` only when the process
runs without a GPU, so nothing here touches a GPU run. Checked against megatron-core 0.16.1 and 0.19.2
(`CHECKED_MEGATRON_CORE`).

megatron-core assumes CUDA in a handful of places. Each redirection below names the place it serves; none of them
is ever undone (a CPU process never gets a GPU later).

1. RNG. The model-parallel RNG tracker (`tensor_parallel.random`) forks `torch.cuda` generator states for
   dropout/initialisation inside TP regions; on CPU it forks the CPU default generator instead.
2. `torch.cuda.current_device()` is passed as `device=` for buffers in attention, TP gathers, p2p shape
   exchange and the DDP grad buffers: it returns the CPU device.
3. `torch.cuda.synchronize()` is called by the p2p schedule after batched isend/irecv: a no-op on CPU
   (gloo's wait() already synchronises).
4. Hard-coded `device="cuda"` / `.cuda()` tensors (schedules' token counters, optimizer scalars, clip_grads):
   a TorchFunctionMode maps the cuda device to cpu for factory calls and `.cuda()`/`.to("cuda")`.
5. The optimizer checks `param.type() == 'torch.cuda.FloatTensor'` (distributed optimizer, clip_grads): the
   same mode answers `Tensor.type()` for CPU tensors with the CUDA type name, so fp32 params are recognised.
6. megatron-core 0.19 (not 0.16.1) takes `torch.cuda.current_stream()` in every gradient sync
   (`_ParamAndGradBucketGroup.start_grad_sync`, to wait for CUDA-graph replays): it returns the CPU stream, whose
   `wait_event` is a no-op.

(Sequence parallelism with the local spec needs no patch: `taidtron.overrides.norms.RMSNorm` is a norm of our own whose
weight is tagged `sequence_parallel`, where megatron's `WrappedTorchNorm` refuses sequence parallelism.)
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from taidtron.overrides.versions import megatron_core_at_least

CHECKED_MEGATRON_CORE = ("0.16.1", "0.19.2")
_INSTALLED = False
_CPU = torch.device("cpu")
_FACTORIES = {
    torch.zeros,
    torch.ones,
    torch.empty,
    torch.full,
    torch.tensor,
    torch.arange,
    torch.rand,
    torch.randn,
    torch.randint,
    torch.zeros_like,
    torch.ones_like,
    torch.empty_like,
    torch.full_like,
    torch.as_tensor,
    torch.linspace,
    torch.eye,
}


def _is_cuda(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return False


class _CudaToCpu(TorchFunctionMode):
    """Maps `device='cuda'` to CPU (item 4) and reports CPU float tensors with CUDA type names (item 5)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _FACTORIES and _is_cuda(kwargs.get("device")):
            kwargs["device"] = _CPU
        elif func is torch.Tensor.cuda:
            return args[0]
        elif func is torch.Tensor.to:
            if _is_cuda(kwargs.get("device")):
                kwargs["device"] = _CPU
            args = tuple(_CPU if _is_cuda(a) else a for a in args)
        elif func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name.replace("torch.", "torch.cuda.", 1) if not name.startswith("torch.cuda.") else name
        return func(*args, **kwargs)


def install() -> None:
    """Apply the redirections above, once per process. Call before building any megatron-core object."""
    global _INSTALLED
    if _INSTALLED:
        return
    if torch.cuda.is_available():
        raise RuntimeError("taidtron.overrides.cpu is for processes without CUDA; it must not run on a GPU machine.")
    from megatron.core.tensor_parallel import random as mcore_random

    # 1. RNG: CUDA generator calls -> the CPU default generator.
    torch.cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    torch.cuda.random.get_rng_state = torch.cuda.get_rng_state
    torch.cuda.set_rng_state = lambda new_state, device="cuda": torch.set_rng_state(new_state)
    # Not torch.manual_seed: it calls torch.cuda.manual_seed_all, which must stay the (lazy, no-op) original.
    torch.cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(seed)
    mcore_random._get_cuda_rng_state = lambda device="cuda", clone=False, graph_safe=False: torch.get_rng_state()
    mcore_random._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: torch.set_rng_state(new_state)
    # 2. and 3.
    torch.cuda.current_device = lambda: _CPU
    torch.cuda.synchronize = lambda device=None: None
    # 6.
    if megatron_core_at_least("0.19"):
        torch.cuda.current_stream = lambda device=None: torch.cpu.current_stream()
    # 4. and 5. A process-wide mode; entering it here and never leaving is intentional.
    _CudaToCpu().__enter__()
    _INSTALLED = True


def installed() -> bool:
    return _INSTALLED
