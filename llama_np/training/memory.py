"""Keeping the memory a training step frees for the next step.

Every step makes the same large arrays again: each layer's activations for the backward,
the output head's [C, V] logits, the [V, D] gradients of a trained embedding. By default
glibc hands arrays above 32 MB out as fresh mappings and unmaps them when freed, and gives
the top of its heap back to the kernel once enough of it is free; the next step's first
write to that memory then faults it in again, and the kernel zeroes every page of it first.
For a training process that is pure overhead (docs/benchmarks.md#how-speed-is-measured).
So the first batch a `TrainableLlama` runs asks glibc to serve every allocation from its
one heap and to keep what is freed there: the process then stays at its peak size until it
ends, which the peak already was.

Elsewhere than glibc (musl, macOS) nothing happens.
"""
import ctypes
import functools

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1          # free bytes at the heap's top before it is given back
M_MMAP_MAX = -4                # allocations that may be separate mappings at once
M_ARENA_MAX = -8               # heaps for the threads; one, so the shards' threads share it


@functools.cache
def keep_freed_memory():
    """Make this process keep freed memory for reuse (once; later calls do nothing).
    Returns whether the allocator took the settings."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # arenas first: the shard threads, made after this, then allocate from the main heap
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2 ** 31 - 1))
    return all(mallopt(parameter, value) == 1 for parameter, value in settings)
