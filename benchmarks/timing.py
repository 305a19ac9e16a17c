"""Shared benchmark helpers: the machine description and fair side-by-side timing
(warm-up first, interleaved repeats, the median)."""

from __future__ import annotations

import platform
import statistics
import time

import torch


def machine() -> str:
    """The CPU (with its native-bf16 flags), threads, torch and Python: the header of every report."""
    from fmlab.model.precision import cpu_name

    capability = torch.backends.cpu.get_cpu_capability()
    return (
        f"{cpu_name()}, torch CPU capability {capability}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )


def interleaved(fns: dict, repeats: int = 5, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, timed round-robin so drift hits all sides alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
