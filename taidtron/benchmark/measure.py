"""How the benchmarks measure: device-synced timers, interleaved rounds and their medians, peak memory, the machine,
the copy bandwidth and the bandwidth floors of docs/losses.md.

    timer = DeviceTimer(device)
    times = interleaved_rounds({"a": step_a, "b": step_b}, repeats=7, warmup=2, timer=timer, rotate=True)
    statistics.median(times["a"])                      # seconds

    probe = PeakMemory(device)                         # the allocation (CUDA) or resident set (CPU) now is the base
    run()
    probe.extra_bytes()                                # what run() added at its peak

Extra memory on CPU is the peak resident set (VmHWM, reset through /proc/self/clear_refs) minus the resident set
when the probe started, after `malloc_trim` gave freed heap pages back; on CUDA it is
`torch.cuda.max_memory_allocated()` minus the memory allocated when the probe started. Both include whatever the
measured code allocates, outputs and gradients too.
"""

from __future__ import annotations

import ctypes
import os
import platform
import resource
import time
from collections.abc import Callable


class DeviceTimer:
    """Seconds a callable takes. On CUDA, between CUDA events recorded on the current stream around it, after a
    device sync (earlier queued work is not counted) and with a sync after (its queued kernels are)."""

    def __init__(self, device):
        import torch

        self._torch = torch
        self.cuda = getattr(device, "type", str(device)) == "cuda"

    def __call__(self, fn: Callable[[], object]) -> float:
        if not self.cuda:
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start
        cuda = self._torch.cuda
        cuda.synchronize()
        begin, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        cuda.synchronize()
        return begin.elapsed_time(end) / 1e3


def interleaved_rounds(
    steps: dict[str, Callable[[], object]], *, repeats: int, warmup: int, timer: DeviceTimer, rotate: bool = False
) -> dict[str, list[float]]:
    """Each round runs every step once; `warmup` untimed rounds, then `repeats` timed ones. Interleaving makes noise
    on a shared machine hit every step alike; `rotate` also changes which step goes first each round (so none always
    inherits a cold cache or a warm one). Returns the timed seconds per step, in round order."""
    order = list(steps)
    times: dict[str, list[float]] = {key: [] for key in order}
    for round_ in range(warmup + repeats):
        shift = round_ % len(order) if rotate else 0
        for key in order[shift:] + order[:shift]:
            seconds = timer(steps[key])
            if round_ >= warmup:
                times[key].append(seconds)
    return times


# ---- memory ----------------------------------------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_hwm() -> bool:
    """Reset the peak resident set to the current one (Linux: /proc/self/clear_refs); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def malloc_trim() -> None:
    """Give freed heap pages back to the system, so a starting resident set holds nothing reusable."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Extra memory at the peak since construction (see the module docstring for the method on each device)."""

    def __init__(self, device, *, require_reset: bool = False):
        import torch

        self._torch = torch
        self.cuda = getattr(device, "type", str(device)) == "cuda"
        if self.cuda:
            torch.cuda.synchronize()
            self.base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            self.method = "torch.cuda.max_memory_allocated - allocated at the start"
            return
        malloc_trim()
        self.base = rss_bytes()
        self._hwm = reset_hwm()
        if not self._hwm and require_reset:
            raise RuntimeError("cannot reset VmHWM (/proc/self/clear_refs not writable): no CPU peak measurement")
        self.method = "VmHWM after clear_refs - RSS at the start"
        if not self._hwm:
            self.method = "ru_maxrss - RSS at the start (an upper bound)"

    def extra_bytes(self) -> int:
        if self.cuda:
            self._torch.cuda.synchronize()
            return int(self._torch.cuda.max_memory_allocated() - self.base)
        peak = hwm_bytes() if self._hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return int(peak - self.base)


def machine_name(device: str) -> str:
    """The GPU's name, or the CPU model and core count."""
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "cpu"
    return f"{model}, {os.cpu_count()} cpus"


# ---- bandwidth -------------------------------------------------------------------------------------------------------


def copy_bandwidth(source, *, repeats: int, warmup: int) -> dict:
    """The memory bandwidth of this device in this run: median time to copy `source` into a tensor like it (one read
    and one write of its bytes)."""
    import torch

    timer = DeviceTimer(source.device)
    with torch.no_grad():
        target = torch.empty_like(source)
        times = interleaved_rounds({"copy": lambda: target.copy_(source)}, repeats=repeats, warmup=warmup, timer=timer)
    times_ms = sorted(t * 1e3 for t in times["copy"])
    median_ms = times_ms[len(times_ms) // 2]
    return {
        "median_ms": median_ms,
        "times_ms": [round(t, 4) for t in times_ms],
        "bandwidth_bytes_per_s": 2 * source.numel() * source.element_size() / (median_ms / 1e3),
    }


def floor_ms(passes: int, tensor_bytes: int, bandwidth_bytes_per_s: float) -> float:
    """The time `passes` reads or writes of a `tensor_bytes` tensor take at the measured bandwidth: no loss that
    moves that much memory can be faster (docs/losses.md, "Memory traffic and the bandwidth floor")."""
    return passes * tensor_bytes / bandwidth_bytes_per_s * 1e3
