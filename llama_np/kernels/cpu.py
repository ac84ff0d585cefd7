"""What this CPU is and which instruction sets it has, as Linux's /proc/cpuinfo tells it.

The C kernels are compiled for the host CPU (-march=native), so what they run with follows
from these flags: AVX-512 where `avx512f` is present, else AVX2, else the scalar loops. The
benchmarks print the model name with every result, and training reads the flags to tell
when NumPy's BLAS was held to narrower kernels (llama_np/training/blas_kernels.py).
Elsewhere than Linux the file is absent: no flags, and the model name comes from `platform`.
"""
import platform


def _first_cpu_field(name, cpuinfo_path):
    """The value of field `name` of the first CPU listed in /proc/cpuinfo, or None."""
    try:
        with open(cpuinfo_path) as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_flags(cpuinfo_path="/proc/cpuinfo"):
    """The instruction-set flags of the first CPU (a set of names such as 'avx2'; empty where unknown)."""
    flags = _first_cpu_field("flags", cpuinfo_path)
    return set(flags.split()) if flags else set()


def cpu_model(cpuinfo_path="/proc/cpuinfo"):
    """The CPU's model name (a virtual machine may show only the family, e.g. 'AMD EPYC')."""
    return _first_cpu_field("model name", cpuinfo_path) or platform.processor() or platform.machine()


def widest_simd(flags):
    """'AVX-512', 'AVX2' or 'no AVX2': the widest vectors the C kernels use with these flags."""
    return "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
