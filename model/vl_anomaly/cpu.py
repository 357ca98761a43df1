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
2. :func:`enable_flush_to_zero` sets the x86 FTZ/DAZ flags so the remaining subnormal *intermediate* values are
   treated as zero. The flags are per thread; torch's OpenMP worker threads copy them only when they are created,
   which happens at the first parallel operation or ``torch.set_num_threads`` of the calling thread. Hence
   :func:`set_threads` enables them first, and the node's model thread does so before any torch work.
"""

from __future__ import annotations

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

    Returns:
        True where the CPU supports it (x86-64 with SSE3), False elsewhere (nothing changes then).
    """
    return bool(torch.set_flush_denormal(True))


def set_threads(threads: int) -> None:
    """``torch.set_num_threads(threads)`` (``threads > 0``) after :func:`enable_flush_to_zero`, so the OpenMP
    workers created for this thread inherit the flags."""
    enable_flush_to_zero()
    if threads > 0:
        torch.set_num_threads(threads)


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
