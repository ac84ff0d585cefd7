"""Whether NumPy's products run with narrower CPU kernels than this CPU has, and a note saying so.

Training is mostly fp32 matrix products, and NumPy hands them to OpenBLAS, which carries
kernels for many CPUs and picks one set when it loads. The environment variable
OPENBLAS_CORETYPE overrides that choice; some machines set it for older OpenBLAS builds that
misbehave on their processor. Set to an AVX2 set (Haswell, Zen) on a CPU with AVX-512, the
products run 8 lanes wide instead of 16: on a Zen 5 a LoRA step took 3.8-4.1 s instead of
2.2-2.5 s (docs/benchmarks.md#zen-5). llama_np leaves the variable alone (it is someone's
choice) and says what it costs.
"""
import functools
import os
import sys

from llama_np.kernels.cpu import cpu_flags

# OpenBLAS's core names whose sgemm kernels use AVX-512
AVX512_CORES = {"skylakex", "cooperlake", "sapphirerapids"}
AVX512_FLAGS = {"avx512f", "avx512bw", "avx512dq", "avx512vl"}   # what those kernels need


def narrower_kernels_note(environ=os.environ, flags=None):
    """One line for the user when OPENBLAS_CORETYPE holds OpenBLAS back from this CPU's AVX-512
    kernels, else None."""
    core = environ.get("OPENBLAS_CORETYPE")
    if not core or core.lower() in AVX512_CORES:
        return None
    flags = cpu_flags() if flags is None else flags
    if not AVX512_FLAGS <= flags:
        return None
    return (f"note: OPENBLAS_CORETYPE={core} is set, so NumPy's products run OpenBLAS's {core} kernels "
            f"although this CPU has AVX-512 (training ran 1.6x faster without it on a Zen 5); with a "
            f"recent NumPy, unset it and OPENBLAS_L2_SIZE: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE ...")


@functools.cache
def warn_if_narrower_kernels():
    """Print the note (once a process) to stderr."""
    note = narrower_kernels_note()
    if note:
        print(note, file=sys.stderr)
