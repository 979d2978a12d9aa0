"""Benchmarks and the one-call GPU check: the library behind `tools/bench_loss.py`, `tools/bench_step.py`,
`tools/bench_attention.py`, `tools/bench_cache.py`, `tools/bench_checkpoint.py`, `tools/bench_convert_memory.py`,
`tools/bench_preprocess.py` and `tools/gpu_check.py` (docs/performance.md, docs/checkpoints.md, docs/cluster.md).

    measure      timers that sync the device, median of N interleaved rounds, peak-memory probes, the machine's
                 name, measured copy bandwidth and the bandwidth floors of the loss (docs/losses.md)
    batches      synthetic micro-batches shared by every timed variant
    loss         the TAID loss, forward + backward: every implementation against the official formula, their
                 agreement with a float64 reference, the five-pass floor
    step         a distillation step against a student step plus a teacher forward; throughput and MFU
    cache        the teacher cache: bytes per token, write throughput, top-K error, held-out loss, and the step
                 from a cache against the student and online steps (tools/bench_cache.py, bench_step.py --cache)
    attention    one decoder layer with each core attention
    convert_memory  peak resident memory of `tools/convert.py import` / `export` against generated models' size
    checkpoint   checkpoint file digests against a plain read: per GiB, in the smoke save, a 1.5B student's estimate
    environment  versions, the device and its peak FLOP/s (the GPU check's first record)
    runner       running checks in their own process groups under budgets and one deadline (standard library only)
    gpu_check    the checks of `tools/gpu_check.py` and its command line (standard library only)

Nothing here is imported by training; `runner` and `gpu_check` import no third-party package, so the GPU check
starts on an image where torch or megatron-core is missing or broken and says so.
"""
