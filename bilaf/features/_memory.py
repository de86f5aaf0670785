"""Keep freed memory in the process for the next batch instead of handing it back to the kernel.

glibc serves allocations above a threshold (128 kB, adapting up to 32 MB) with fresh ``mmap``s and
unmaps them when freed. A CNN forward pass allocates activations of tens of MB per layer, so each
batch faulted in every page anew: on 2 cores the bare forward pass of tf_efficientnet_lite0 at
128 px took 367k minor page faults per batch of 64, and more system than user time. With the
thresholds below the same memory is reused: 3.7k faults per batch and about 2x the images per
second (``benchmarks/embedding_throughput.py``). Results are unchanged: only where memory comes from.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 << 20  # allocations below this come from the heap and are reused
TRIM_THRESHOLD = 1 << 30  # free heap kept before any is returned to the kernel


@functools.cache
def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); False where it is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
