"""Compile the TAID Triton kernels for a GPU architecture on a machine without one; print what ptxas reports.

    python -m tests.losses.triton_compile_check [sm_90a ...]   (repository root; TRITON_INTERPRET must be unset)

Triton's interpreter checks what the kernels compute, not that they compile: this runs the real pipeline (Triton
-> LLVM -> PTX -> cubin with the ptxas that ships in the Triton wheel) at the launch configuration of
`triton_taid.py`, for each kernel and logits dtype, and prints one JSON line per compilation: registers per thread,
spill bytes, and the 16-byte global loads/stores in the PTX (the full tiles must be vector accesses). Run by
`test_triton_taid.py::test_kernels_compile_for_h100_h200_without_spills_and_with_vector_loads`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler.compiler import ASTSource

from taidtron.losses import triton_taid as kernels

DTYPES = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}
# Arguments Triton specializes as multiples of 16 at a launch on real logits (pointers, row strides and n_full for
# a vocabulary slice padded to a multiple of 16, as megatron pads it).
ALIGNED = (
    "s_ptr",
    "t_ptr",
    "grad_ptr",
    "maxes_ptr",
    "sums_ptr",
    "lse_ptr",
    "g_ptr",
    "n_full",
    "n_cols",
    "stride_s",
    "stride_t",
    "stride_grad",
)


def _signature(fn, dtype: str) -> dict[str, str]:
    types = {
        "s_ptr": f"*{dtype}",
        "t_ptr": f"*{dtype}",
        "grad_ptr": f"*{dtype}",
        "maxes_ptr": "*fp32",
        "sums_ptr": "*fp32",
        "lse_ptr": "*fp32",
        "g_ptr": "*fp32",
        "coef_s": "fp32",
        "coef_t": "fp32",
    }
    return {name: ("constexpr" if name.isupper() else types.get(name, "i32")) for name in fn.arg_names}


def compile_one(fn, dtype: str, constants: dict, arch: str) -> dict:
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in ALIGNED if n in fn.arg_names}
    capability = int(re.match(r"sm_(\d+)", arch).group(1))
    block_m, block_v, options = kernels._launch_config(1 << 16, 1 << 17)  # many tokens, a large vocabulary
    compiled = triton.compile(
        ASTSource(fn, _signature(fn, dtype), dict(constants, BLOCK_M=block_m, BLOCK_V=block_v), attrs),
        target=GPUTarget("cuda", capability, 32),
        options=options,
    )
    ptx = compiled.asm["ptx"]
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        arch_flag = re.search(r"^\.target\s+(\S+)", ptx, re.M).group(1)
        report = subprocess.run(
            [str(ptxas), "-v", f"-arch={arch_flag}", str(src), "-o", str(Path(tmp) / "k.cubin")],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
    return {
        "kernel": fn.__name__,
        "dtype": dtype,
        "arch": arch_flag,
        **{k: v for k, v in constants.items()},
        "block_m": block_m,
        "block_v": block_v,
        "num_warps": options["num_warps"],
        "registers": int(re.search(r"Used (\d+) registers", report).group(1)),
        "spill_bytes": sum(int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", report)),
        "vector_loads": len(re.findall(r"ld\.global(?:\.nc)?\.v4\.", ptx)),
        "vector_stores": len(re.findall(r"st\.global\.v4\.", ptx)),
    }


def main(archs: list[str]) -> None:
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("unset TRITON_INTERPRET: the interpreter replaces the kernels that this compiles")
    for arch in archs:
        for dtype in DTYPES:
            for with_entropy in (False, True):
                constants = {"WITH_ENTROPY": with_entropy, "THRESHOLD": float(kernels.RESCALE_THRESHOLD)}
                print(json.dumps(compile_one(kernels._taid_stats_kernel, dtype, constants, arch)), flush=True)
            print(json.dumps(compile_one(kernels._taid_grad_kernel, dtype, {}, arch)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["sm_90a"])
