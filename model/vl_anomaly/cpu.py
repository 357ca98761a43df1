"""CPU facts and settings that keep inference speed independent of the processor model.

**Subnormal floats.** Values below ``torch.finfo(float32).tiny`` (≈ 1.18e-38) are *subnormal*. On many Intel
cores every arithmetic operation that reads or produces one takes a microcode assist (on the order of a hundred
cycles instead of a few); AMD Zen cores handle most of them at full speed. The published ESPNet checkpoint holds
18 302 subnormal parameters (5 % of 368 341; its input is divided by 255 after normalisation, so training drove
many weights towards zero) and they turn 4 % of its activations subnormal at 512×1024 — measured by
``benchmarks/bench_denormals.py``. That is why the same network took 2252 ms on a 2-core Intel Xeon and 158 ms on
a 2-core AMD EPYC (issue 14). Two remedies, both applied by the core:

1. :func:`flush_subnormals_` zeroes subnormal parameters when weights are loaded (an absolute change below
   1.2e-38: no output changes). This removes the source: ESPNet's subnormal activations drop from 4 % to 0.05 %.
2. The x86 FTZ/DAZ flags treat the remaining subnormal *intermediate* values as zero during network forwards
   (:func:`flush_to_zero`, used by :class:`~vl_anomaly.AnomalyPredictor`). The flags are per thread: torch's
   OpenMP worker threads copy them only when they are created (the first parallel operation or
   ``torch.set_num_threads`` of the calling thread), so :func:`set_threads` creates them with the flags on; the
   calling thread gets them only inside the block: the flags would change NumPy's results on that thread too
   (metrics, post-processing), and those must stay IEEE.
"""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path

import torch

# Bit layouts: (integer view, exponent mask, mantissa mask). A value is subnormal when its exponent bits are all
# zero and its mantissa is not. Tested on the bits, not with comparisons: with DAZ on (enable_flush_to_zero) the
# CPU reads subnormal operands as zero, so ``x != 0`` would be False for them.
_LAYOUT = {
    torch.float16: (torch.int16, 0x7C00, 0x03FF),
    torch.bfloat16: (torch.int16, 0x7F80, 0x007F),
    torch.float32: (torch.int32, 0x7F800000, 0x007FFFFF),
    torch.float64: (torch.int64, 0x7FF0000000000000, 0x000FFFFFFFFFFFFF),
}


def subnormal_mask(tensor: torch.Tensor) -> torch.Tensor | None:
    """Bool tensor marking the subnormal entries of a floating-point tensor; None for other dtypes."""
    layout = _LAYOUT.get(tensor.dtype)
    if layout is None:
        return None
    int_dtype, exponent, mantissa = layout
    bits = tensor.detach().contiguous().view(int_dtype)
    return ((bits & exponent) == 0) & ((bits & mantissa) != 0)


def count_subnormal(tensor: torch.Tensor) -> int:
    """Number of subnormal entries of a floating-point tensor (0 for other dtypes)."""
    mask = subnormal_mask(tensor)
    return 0 if mask is None else int(mask.sum())


def flush_subnormals_(state_dict: dict[str, torch.Tensor]) -> int:
    """Set every subnormal entry of the floating-point tensors in ``state_dict`` to zero, in place.

    Returns:
        the number of entries changed.
    """
    changed = 0
    with torch.no_grad():
        for tensor in state_dict.values():
            mask = subnormal_mask(tensor) if torch.is_tensor(tensor) else None
            if mask is None:
                continue
            count = int(mask.sum())
            if count:
                tensor.masked_fill_(mask.view(tensor.shape), 0)
                changed += count
    return changed


def enable_flush_to_zero() -> bool:
    """Treat subnormal floats as zero on this thread (and the torch worker threads it creates from now on).

    This changes NumPy's results on this thread too: use :func:`flush_to_zero` around network forwards instead.

    Returns:
        True where the CPU supports it (x86-64 with SSE3), False elsewhere (nothing changes then).
    """
    return bool(torch.set_flush_denormal(True))


def disable_flush_to_zero() -> None:
    """Back to IEEE subnormals on this thread (the process default)."""
    torch.set_flush_denormal(False)


@contextlib.contextmanager
def flush_to_zero():
    """FTZ/DAZ on the calling thread for the duration of the block (a network forward), IEEE again after it, so
    metrics and post-processing computed on the same thread are unaffected. Torch's OpenMP workers keep the
    flags they were created with (:func:`set_threads`)."""
    enable_flush_to_zero()
    try:
        yield
    finally:
        disable_flush_to_zero()


def set_threads(threads: int) -> None:
    """``torch.set_num_threads(threads)`` (``threads > 0``) with flush-to-zero on while the calling thread's
    OpenMP workers are created, so they flush subnormals for good; the calling thread itself is IEEE again
    afterwards (it flushes only inside :func:`flush_to_zero`)."""
    with flush_to_zero():
        if threads > 0:
            torch.set_num_threads(threads)
        torch.ones(1 << 20).mul_(2.0)              # a parallel op: the workers exist now, with the flags


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``), e.g. ``AMD EPYC 7B13``; ``platform.processor()`` or the
    architecture where that file is missing. Recorded with every benchmark figure: speed depends on it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
