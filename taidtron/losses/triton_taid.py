"""Triton kernels of the fused TAID loss: per-token statistics in one pass, the gradient in one pass.

They compute exactly what `_math.taid_chunk_stats` and `_math.taid_chunk_grad` compute (same base-2 units, same
outputs), but each reads the logits once from memory and keeps every intermediate in registers:

    forward   _taid_stats_kernel  reads s and T once        -> references [N, 2], sums [N, 3 or 4]   (fp32)
    backward  _taid_grad_kernel   reads s and T once, writes the gradient [N, V_local] once (logits' dtype)

The autograd Function, the two all-reduces and `taid_finalize` stay in `vocab_parallel.py`, so the TP
collectives are the same whichever implementation runs. Notation as in `_math.py`: x_z = log2(e)·((1-t)·s + t·T),
x_s = log2(e)·s. The sums are relative to per-token references r_z, r_s within RESCALE_THRESHOLD below the maxima
m_z = max x_z, m_s = max x_s (the torch path uses the maxima themselves; any reference <= the maximum is exact).

One program handles BLOCK_M rows (tokens) and walks the vocabulary in tiles of BLOCK_V columns. The forward keeps
the references per row and running sums per row *and lane* ([BLOCK_M, BLOCK_V] fp32 accumulators, summed over
lanes once at the end), so a tile costs one block-wide max (the rescale test) and no sum reduction; the
accumulators are re-expressed (the online-softmax recurrence) only when a tile exceeds the references by more than
RESCALE_THRESHOLD. The backward needs no reduction at all.

Importing this module imports Triton; `vocab_parallel.py` imports it lazily, only when the Triton path runs. Under
TRITON_INTERPRET=1 (set before the first import) the kernels run on CPU tensors in Triton's interpreter (tests).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

_LOG2E = tl.constexpr(1.4426950408889634)  # log2(e), as _math.LOG2E
_MIN_SHIFT = tl.constexpr(-1.0e30)  # a finite stand-in for -inf, so that (-inf) * 0 never makes a nan

# Launch configuration. A tile of 1024 values over 4 warps is 8 values per thread per tensor: one 16-byte load of
# bf16 per tensor and iteration, 4 x 8 fp32 lane accumulators. ptxas (sm_90a, bf16) gives the forward 80 registers
# (96 with the entropy sum), no spills: 6 programs = 24 warps per SM, each thread with 32 bytes of loads in flight,
# ~24 KB per SM, about what HBM3e needs (bandwidth x latency / SMs); 16 values per thread would take 168 registers
# and halve that. The backward needs 32 registers (full occupancy). BLOCK_V is the vocabulary tile; BLOCK_M =
# TILE_ELEMENTS // BLOCK_V rows share a program when the local vocabulary is small. Fixed rather than autotuned:
# every run takes the same reduction order (bitwise reproducible runs and resumes) and no rank spends its first step
# benchmarking. `tools/bench_loss.py --triton-sweep` times other settings on a GPU; NUM_STAGES None leaves Triton's
# default software pipelining.
TILE_ELEMENTS = 1024
MAX_BLOCK_V = 1024  # tests lower it to walk several tiles of a small vocabulary
NUM_WARPS = 4
NUM_STAGES: int | None = None
# The forward's statistics are relative to a per-row reference r that it raises to the running maximum only when a
# tile holds a value above r + RESCALE_THRESHOLD (base 2), rather than on every increase: the rescaling of the lane
# accumulators (several operations per value) then runs on the first tile and rarely after, and the values summed
# stay below 2^RESCALE_THRESHOLD = 256 (no overflow). r is what the kernel returns as "maxima": any reference at or
# below the true maximum keeps the statistics exact, and the TP all-reduce(MAX) of r gives a common one. Tests set
# it to 0 (rescale on every increase) too.
RESCALE_THRESHOLD = 8.0


def _launch_config(n_rows: int, n_cols: int) -> tuple[int, int, dict]:
    """(BLOCK_M, BLOCK_V, launch options) for a [n_rows, n_cols] pass."""
    block_v = max(16, min(MAX_BLOCK_V, TILE_ELEMENTS, triton.next_power_of_2(max(1, n_cols))))
    block_m = max(1, min(TILE_ELEMENTS // block_v, triton.next_power_of_2(max(1, n_rows))))
    options = {"num_warps": NUM_WARPS} | ({} if NUM_STAGES is None else {"num_stages": NUM_STAGES})
    return block_m, block_v, options


@triton.jit
def _stats_tile(
    s,
    te,
    ok,
    ref_z,
    ref_s,
    acc_zz,
    acc_zs,
    acc_a,
    acc_b,
    coef_s,
    coef_t,
    MASKED: tl.constexpr,
    WITH_ENTROPY: tl.constexpr,
    THRESHOLD: tl.constexpr,
):
    """Add one [BLOCK_M, BLOCK_V] tile of fp32 logits to the running statistics (ok: [1, BLOCK_V] valid lanes)."""
    d_s = s * _LOG2E - ref_s[:, None]  # x_s - r_s
    d_z = s * coef_s + (te * coef_t - ref_z[:, None])  # x_z - r_z
    above = tl.maximum(d_s, d_z)
    if MASKED:
        above = tl.where(ok, above, float("-inf"))
    if tl.max(tl.max(above, axis=1), axis=0) > THRESHOLD:  # always on the first tile (r = -inf), rarely after
        x_s = s * _LOG2E
        x_z = s * coef_s + te * coef_t
        if MASKED:
            new_ref_s = tl.maximum(ref_s, tl.max(tl.where(ok, x_s, float("-inf")), axis=1))
            new_ref_z = tl.maximum(ref_z, tl.max(tl.where(ok, x_z, float("-inf")), axis=1))
        else:
            new_ref_s = tl.maximum(ref_s, tl.max(x_s, axis=1))
            new_ref_z = tl.maximum(ref_z, tl.max(x_z, axis=1))
        # shifts <= 0; -inf before the first tile, clamped so that shift * (empty sum 0) is 0, not nan
        shift_s = tl.maximum(ref_s - new_ref_s, _MIN_SHIFT)[:, None]
        shift_z = tl.maximum(ref_z - new_ref_z, _MIN_SHIFT)[:, None]
        scale_z = tl.exp2(shift_z)
        # re-express the running sums relative to the new references (as _math.rescale_partial_stats)
        acc_a = scale_z * (acc_a + shift_s * acc_zz)
        if WITH_ENTROPY:
            acc_b = scale_z * (acc_b + shift_z * acc_zz)
        acc_zz = scale_z * acc_zz
        acc_zs = tl.exp2(shift_s) * acc_zs
        ref_s = new_ref_s
        ref_z = new_ref_z
        d_s = x_s - ref_s[:, None]
        d_z = x_z - ref_z[:, None]
    if MASKED:
        e_z = tl.exp2(tl.where(ok, d_z, float("-inf")))  # 0 in padding lanes; d_s, d_z stay finite there
        e_s = tl.exp2(tl.where(ok, d_s, float("-inf")))
    else:
        e_z = tl.exp2(d_z)
        e_s = tl.exp2(d_s)
    acc_zz += e_z
    acc_zs += e_s
    acc_a += e_z * d_s
    if WITH_ENTROPY:
        acc_b += e_z * d_z
    return ref_z, ref_s, acc_zz, acc_zs, acc_a, acc_b


@triton.jit
def _taid_stats_kernel(
    s_ptr,
    t_ptr,
    maxes_ptr,
    sums_ptr,
    n_rows,
    n_valid,
    n_full,
    stride_s,
    stride_t,
    stride_sums,
    coef_s,
    coef_t,
    WITH_ENTROPY: tl.constexpr,
    THRESHOLD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """Per row over columns [0, n_valid): maxes[row] = (r_z, r_s), sums[row] = (Z_z, Z_s, A[, B]) (base 2).

    n_full = n_valid rounded down to BLOCK_V: those tiles load without a mask (full-width vector loads whatever
    n_valid is); the rest is one masked tile.
    """
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    row_ok = rows < n_rows
    rows = tl.minimum(rows, n_rows - 1).to(tl.int64)  # the last block re-reads the last row: no masked row loads
    s_rows = s_ptr + rows[:, None] * stride_s  # [BLOCK_M, 1]
    t_rows = t_ptr + rows[:, None] * stride_t
    lanes = tl.arange(0, BLOCK_V)[None, :]  # [1, BLOCK_V]

    ref_z = tl.full([BLOCK_M], float("-inf"), tl.float32)
    ref_s = tl.full([BLOCK_M], float("-inf"), tl.float32)
    acc_zz = tl.zeros([BLOCK_M, BLOCK_V], tl.float32)  # sum 2^(x_z - r_z)
    acc_zs = tl.zeros([BLOCK_M, BLOCK_V], tl.float32)  # sum 2^(x_s - r_s)
    acc_a = tl.zeros([BLOCK_M, BLOCK_V], tl.float32)  # sum 2^(x_z - r_z) (x_s - r_s)
    acc_b = tl.zeros([BLOCK_M, BLOCK_V], tl.float32)  # sum 2^(x_z - r_z) (x_z - r_z), with the entropy only
    for start in range(0, n_full, BLOCK_V):
        s = tl.load(s_rows + start + lanes).to(tl.float32)  # [BLOCK_M, BLOCK_V]
        te = tl.load(t_rows + start + lanes).to(tl.float32)
        ref_z, ref_s, acc_zz, acc_zs, acc_a, acc_b = _stats_tile(
            s,
            te,
            lanes,
            ref_z,
            ref_s,
            acc_zz,
            acc_zs,
            acc_a,
            acc_b,
            coef_s,
            coef_t,
            False,
            WITH_ENTROPY,
            THRESHOLD,
        )
    if n_full < n_valid:  # the partial last tile; padding columns are never read
        cols = n_full + lanes
        ok = cols < n_valid
        s = tl.load(s_rows + cols, mask=ok, other=0.0).to(tl.float32)
        te = tl.load(t_rows + cols, mask=ok, other=0.0).to(tl.float32)
        ref_z, ref_s, acc_zz, acc_zs, acc_a, acc_b = _stats_tile(
            s,
            te,
            ok,
            ref_z,
            ref_s,
            acc_zz,
            acc_zs,
            acc_a,
            acc_b,
            coef_s,
            coef_t,
            True,
            WITH_ENTROPY,
            THRESHOLD,
        )

    tl.store(maxes_ptr + rows * 2, ref_z, mask=row_ok)
    tl.store(maxes_ptr + rows * 2 + 1, ref_s, mask=row_ok)
    out = sums_ptr + rows * stride_sums
    tl.store(out, tl.sum(acc_zz, axis=1), mask=row_ok)
    tl.store(out + 1, tl.sum(acc_zs, axis=1), mask=row_ok)
    tl.store(out + 2, tl.sum(acc_a, axis=1), mask=row_ok)
    if WITH_ENTROPY:
        tl.store(out + 3, tl.sum(acc_b, axis=1), mask=row_ok)


@triton.jit
def _grad_tile(s_rows, t_rows, grad_rows, cols, ok, store_ok, lse_z, lse_s, g, coef_s, coef_t, MASKED: tl.constexpr):
    if MASKED:
        s = tl.load(s_rows + cols, mask=ok, other=0.0).to(tl.float32)
        te = tl.load(t_rows + cols, mask=ok, other=0.0).to(tl.float32)
    else:
        s = tl.load(s_rows + cols).to(tl.float32)
        te = tl.load(t_rows + cols).to(tl.float32)
    q = tl.exp2(s * _LOG2E - lse_s)
    p = tl.exp2(s * coef_s + (te * coef_t - lse_z))
    grad = (q - p) * g
    if MASKED:
        grad = tl.where(ok, grad, 0.0)  # padding columns: exactly zero
    tl.store(grad_rows + cols, grad.to(grad_rows.dtype.element_ty), mask=store_ok)


@triton.jit
def _taid_grad_kernel(
    s_ptr,
    t_ptr,
    grad_ptr,
    lse_ptr,
    g_ptr,
    n_rows,
    n_valid,
    n_full,
    n_cols,
    stride_s,
    stride_t,
    stride_grad,
    coef_s,
    coef_t,
    BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """grad[row, v] = g[row] (2^(x_s - lse_s) - 2^(x_z - lse_z)) = g (q - p_t) for v < n_valid, 0 up to n_cols.

    Tiles below n_full (n_valid rounded down to BLOCK_V) load without a mask; the rest, padding included, masked.
    """
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows[:, None] < n_rows  # [BLOCK_M, 1]
    rows = tl.minimum(rows, n_rows - 1).to(tl.int64)
    lse_z = tl.load(lse_ptr + rows * 2)[:, None]  # [BLOCK_M, 1], base 2, global (after the all-reduces)
    lse_s = tl.load(lse_ptr + rows * 2 + 1)[:, None]
    g = tl.load(g_ptr + rows).to(tl.float32)[:, None]  # any sign: no split, no host sync
    s_rows = s_ptr + rows[:, None] * stride_s
    t_rows = t_ptr + rows[:, None] * stride_t
    grad_rows = grad_ptr + rows[:, None] * stride_grad
    lanes = tl.arange(0, BLOCK_V)[None, :]
    for start in range(0, n_full, BLOCK_V):
        _grad_tile(s_rows, t_rows, grad_rows, start + lanes, lanes, row_ok, lse_z, lse_s, g, coef_s, coef_t, False)
    for start in range(n_full, n_cols, BLOCK_V):
        cols = start + lanes
        _grad_tile(
            s_rows,
            t_rows,
            grad_rows,
            cols,
            cols < n_valid,
            row_ok & (cols < n_cols),
            lse_z,
            lse_s,
            g,
            coef_s,
            coef_t,
            True,
        )


def _on_device(x: torch.Tensor):
    """Launch on x's GPU even when another one is current (Triton launches on the current device)."""
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()


def _row_major(x: torch.Tensor) -> torch.Tensor:
    """The kernels step through columns with stride 1 (true of megatron's logits; a copy otherwise)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _coefficients(t: float) -> tuple[float, float]:
    """(log2(e) (1 - t), log2(e) t): x_z = coef_s s + coef_t T, as `_math.interpolate_log2`."""
    log2e = 1.4426950408889634
    return (1.0 - t) * log2e, t * log2e


def taid_stats(
    student: torch.Tensor, teacher: torch.Tensor, t: float, n_valid: int, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Local statistics of all tokens in one pass, as `_math.taid_chunk_stats` (same units and layout).

    student, teacher: [N, V_local] logits (any float dtype, unit column stride); only the first n_valid columns are
    read. Returns maxes [N, 2] (m_z, m_s) and sums [N, 3 or 4] (Z_z, Z_s, A[, B]), fp32, base 2, relative to this
    rank's maxima; a rank without valid columns (n_valid = 0) gives -inf maxima and zero sums.
    """
    student, teacher = _row_major(student), _row_major(teacher)
    n_rows = student.shape[0]
    maxes = torch.full((n_rows, 2), float("-inf"), dtype=torch.float32, device=student.device)
    sums = torch.zeros((n_rows, 4 if with_entropy else 3), dtype=torch.float32, device=student.device)
    if n_rows == 0 or n_valid == 0:
        return maxes, sums
    block_m, block_v, options = _launch_config(n_rows, n_valid)
    coef_s, coef_t = _coefficients(t)
    with _on_device(student):
        _taid_stats_kernel[(triton.cdiv(n_rows, block_m),)](
            student,
            teacher,
            maxes,
            sums,
            n_rows,
            n_valid,
            n_valid // block_v * block_v,
            student.stride(0),
            teacher.stride(0),
            sums.stride(0),
            coef_s,
            coef_t,
            WITH_ENTROPY=with_entropy,
            THRESHOLD=float(RESCALE_THRESHOLD),
            BLOCK_M=block_m,
            BLOCK_V=block_v,
            **options,
        )
    return maxes, sums


def taid_grad(
    student: torch.Tensor, teacher: torch.Tensor, t: float, n_valid: int, lse2: torch.Tensor, grad_loss: torch.Tensor
) -> torch.Tensor:
    """(q - p_t) * g for all tokens in one pass, as `_math.taid_chunk_grad`.

    student, teacher: [N, V_local]; lse2: [N, 2] fp32 base-2 log-partitions (`_math.taid_finalize`); grad_loss: [N]
    upstream gradient. Returns the gradient [N, V_local] in the logits' dtype, zero in the columns >= n_valid.
    """
    student, teacher = _row_major(student), _row_major(teacher)
    n_rows, n_cols = student.shape
    grad = torch.empty((n_rows, n_cols), dtype=student.dtype, device=student.device)
    if n_rows == 0:
        return grad
    block_m, block_v, options = _launch_config(n_rows, n_cols)
    coef_s, coef_t = _coefficients(t)
    with _on_device(student):
        _taid_grad_kernel[(triton.cdiv(n_rows, block_m),)](
            student,
            teacher,
            grad,
            lse2.contiguous(),
            grad_loss.reshape(-1).contiguous(),
            n_rows,
            n_valid,
            n_valid // block_v * block_v,
            n_cols,
            student.stride(0),
            teacher.stride(0),
            grad.stride(0),
            coef_s,
            coef_t,
            BLOCK_M=block_m,
            BLOCK_V=block_v,
            **options,
        )
    return grad
