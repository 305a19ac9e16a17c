"""Device and precision: where a model runs and in which dtypes its weights, activations and KV cache
live, for training and for generation alike.

`f32` runs everything in fp32. `bf16-mixed` stores the frozen base matrices in bf16 (halving their
memory and sparing autocast a cast of every weight at every step), keeps LoRA weights, norms and
optimizer state in fp32, and runs matmuls under bf16 autocast; generation keeps its KV cache in bf16.
`f16-mixed` is the same with fp16 and a GradScaler; `bf16` casts the whole model.

`auto` (the default everywhere) picks bf16-mixed only where bf16 matmuls are really fast: CUDA with
bf16 support, and a CPU or MPS device where a short probe of matmuls shows bf16 at least as fast as
fp32; f32 elsewhere. Many CPUs (AVX2 without AVX512-BF16 or AMX) run a bf16 matmul tens of times
slower than an fp32 one, so bf16 there would make training and decoding crawl. Decoding on a CPU takes
f32 even where bf16 is native (`choose_precision(..., decoding=True)`). An explicit precision always
wins; `FMLAB_PRECISION` forces the choice of `auto` for every command and notebook.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import time
import warnings
from dataclasses import dataclass

import torch

from fmlab.errors import FmlabError

AUTO = "auto"
PRECISIONS = (AUTO, "f32", "bf16-mixed", "bf16", "f16-mixed")
ENV = "FMLAB_PRECISION"
_AUTOCAST = {"bf16-mixed": torch.bfloat16, "f16-mixed": torch.float16}


def _available(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_available()
    if device.type == "mps":
        return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    return True


def resolve_device(name: str | None = None) -> torch.device:
    """`name` if given, else the best available: CUDA, then MPS, then CPU."""
    if name:
        return torch.device(name)
    return next(d for d in map(torch.device, ("cuda", "mps", "cpu")) if _available(d))


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type in ("cpu", "mps")


@dataclass(frozen=True)
class PrecisionChoice:
    """What `auto` resolved to on a device, and why (printed once, recorded in a run's metrics)."""

    precision: str
    reason: str
    f32_gflops: float | None = None
    bf16_gflops: float | None = None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def matmul_gflops(
    device: torch.device, dtype: torch.dtype, size: int = 256, rows: int = 64, repeats: int = 5, budget_s: float = 0.03
) -> float:
    """(rows, size) @ (size, size) matmul throughput in GFLOP/s, from the fastest of up to `repeats`
    timed products after a warm-up (the fastest, because a busy machine only ever adds time). Stops
    early past `budget_s`, so a very slow dtype costs a product or two, not the whole budget."""
    a = torch.randn(rows, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b
    _synchronize(device)
    best, spent = float("inf"), 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        _synchronize(device)
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
        if spent > budget_s:
            break
    return 2 * rows * size * size / best / 1e9


PROBE_ROUNDS = 3


@functools.cache
def probe(device_type: str) -> PrecisionChoice:
    """The `auto` choice for a device type, measured once per process (~40 ms on a CPU)."""
    device = torch.device(device_type)
    if not _available(device):  # an estimate for a device this machine lacks: assume a modern one
        return PrecisionChoice("bf16-mixed", f"no {device.type} device here: assuming one with fast bf16")
    if device.type == "cuda":
        if bf16_supported(device):
            return PrecisionChoice("bf16-mixed", f"{torch.cuda.get_device_name(device)} supports bf16")
        return PrecisionChoice("f32", f"{torch.cuda.get_device_name(device)} has no bf16")
    # Alternating rounds, the best of each: a burst of load on a shared machine then slows one round of
    # each dtype, never the f32 measurement alone (which once made `auto` pick a 40x slower bf16). One
    # thread: whether bf16 is native is a property of a core, and a multi-threaded product on a busy
    # machine waits for its slowest thread (an AVX2 EPYC measured f32 at 0.5 GFLOP/s beside a test run).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        f32 = bf16 = 0.0
        for _ in range(PROBE_ROUNDS):
            f32 = max(f32, matmul_gflops(device, torch.float32, budget_s=0.01))
            bf16 = max(bf16, matmul_gflops(device, torch.bfloat16, budget_s=0.01))
    finally:
        torch.set_num_threads(threads)
    where = "one cpu thread" if device.type == "cpu" else f"this {device.type}"
    rates = f"bf16 matmul {bf16:.1f} GFLOP/s vs f32 {f32:.1f} GFLOP/s on {where}"
    if bf16 >= f32:
        return PrecisionChoice("bf16-mixed", rates, f32, bf16)
    return PrecisionChoice("f32", rates, f32, bf16)


def cpu_name() -> str:
    """This CPU's model name and its native-bf16 flags, e.g. "AMD EPYC (avx512_bf16: yes, amx: no)"."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:  # not Linux: the model name from platform is what there is
        return name
    yes = lambda flag: "yes" if flag in flags else "no"
    return f"{name} (avx512_bf16: {yes('avx512_bf16')}, amx: {yes('amx_bf16')})"


def choose_precision(
    precision: str | None, device: torch.device | str = "cpu", decoding: bool = False
) -> PrecisionChoice:
    """Resolve a requested precision: an explicit one wins, then `FMLAB_PRECISION`, then the probe.
    `decoding` (generation): on a CPU `auto` is f32 even where the probe picks bf16-mixed, because
    a decode step's matmuls are a row or a few, not the probe's: there autocast re-casts every fp32
    weight at every token, and the compiled step runs 2.3x slower than in f32 (189 vs 439 tokens/s for
    fmlab-tiny on an EPYC with avx512_bf16; eager, the two are equal)."""
    if precision not in (None, AUTO):
        if precision not in PRECISIONS:
            raise FmlabError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        return PrecisionChoice(precision, "asked for")
    forced = os.environ.get(ENV)
    if forced:
        if forced not in PRECISIONS[1:]:
            raise FmlabError(f"{ENV}={forced!r}: must be one of {', '.join(PRECISIONS[1:])}")
        return PrecisionChoice(forced, f"{ENV}={forced}")
    choice = probe(torch.device(device).type)
    if decoding and choice.precision == "bf16-mixed" and torch.device(device).type == "cpu":
        reason = f"decoding on cpu, where f32 is faster; training would take bf16-mixed: {choice.reason}"
        return PrecisionChoice("f32", reason, choice.f32_gflops, choice.bf16_gflops)
    return choice


def resolve_precision(precision: str | None, device: torch.device | str = "cpu", decoding: bool = False) -> str:
    """`choose_precision(...).precision`: the concrete precision to run at."""
    return choose_precision(precision, device, decoding).precision


def describe_choice(choice: PrecisionChoice) -> str:
    """One line for the CLI and notebooks: `precision: f32 (auto: bf16 matmul 0.8 GFLOP/s vs ...)`."""
    how = "asked for" if choice.reason == "asked for" else f"auto: {choice.reason}"
    return f"precision: {choice.precision} ({how})"


def autocast(precision: str, device: torch.device):
    """The autocast context of a mixed precision (a no-op for f32 and bf16), for training and generation."""
    dtype = _AUTOCAST.get(precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def cache_dtype(precision: str) -> torch.dtype | None:
    """The KV cache's dtype during generation; None keeps the model's (fp32)."""
    return torch.bfloat16 if precision == "bf16-mixed" else None


def cast_frozen(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Store frozen matrices in `dtype` (bf16 halves memory and skips autocast's per-step weight casts);
    trainable weights, norms and buffers stay fp32."""
    for p in model.parameters():
        if p.ndim == 2 and not p.requires_grad:
            p.data = p.data.to(dtype)


def prepare_precision(model, precision: str):
    """Cast weights for training at `precision`; returns a GradScaler for f16-mixed (Apple's has none)."""
    device = next(model.parameters()).device
    if precision == "bf16-mixed":
        cast_frozen(model, torch.bfloat16)  # frozen matmul weights only; trainable stay fp32
    elif precision == "bf16":
        warnings.warn(
            "--precision bf16 trains bf16 weights, which is reported to degenerate; bf16-mixed is the safe default",
            stacklevel=2,
        )
        model.to(torch.bfloat16)
    elif precision == "f16-mixed":
        if device.type == "cpu":
            warnings.warn("f16 matmuls are very slow on CPU; use bf16-mixed", stacklevel=2)
        return torch.amp.GradScaler(device.type)
    return None
