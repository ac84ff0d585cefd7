"""What every benchmark script in this folder sets up first, and what it prints of the machine.

    import bench_env                       # first: the script's own folder is on sys.path
    bench_env.REPO                         # the checkout, for subprocesses' cwd and output paths
    bench_env.machine_description()        # "AMD EPYC, 2 cores, AVX2, 24 GiB RAM, Python 3.11.7"
    bench_env.commit()                     # the checkout's short commit, printed with results
    bench_env.blas_description()           # "NumPy's BLAS: OpenBLAS 0.3.31, SkylakeX kernels, ..."

Importing it puts the checkout on the import path (a script runs from a checkout without
installing) and, unless LLAMA_NP_DATA is set, names the data mirror beside the checkout
(../shared/data), where .ci/run finds it too (docs/data.md#how-files-are-found).
"""
import os
import platform
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
_MIRROR = os.path.join(REPO, "..", "shared", "data")
if not os.environ.get("LLAMA_NP_DATA") and os.path.isdir(_MIRROR):
    os.environ["LLAMA_NP_DATA"] = _MIRROR


def machine_description():
    """CPU model, cores, the widest SIMD the kernels use here, RAM, Python: one line."""
    from llama_np.kernels.cpu import cpu_flags, cpu_model, widest_simd
    flags = cpu_flags()
    simd = widest_simd(flags) if flags else "?"
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024 ** 3
    return f"{cpu_model()}, {os.cpu_count()} cores, {simd}, {memory_gib:.0f} GiB RAM, Python {platform.python_version()}"


def blas_description():
    """Which BLAS NumPy runs and which of its CPU kernels, one line (threadpoolctl reports it).

    OpenBLAS picks its kernels for the CPU when it loads, unless OPENBLAS_CORETYPE names a
    set; some machines set that variable for old OpenBLAS builds, and then a current NumPy
    multiplies with narrower kernels (on a Zen 5, Haswell's AVX2 instead of SkylakeX's
    AVX-512: training ~1.6x slower). The line says so when the variable is set."""
    import numpy  # noqa: F401  (loads the BLAS, so that threadpoolctl finds it)
    try:
        import threadpoolctl
    except ImportError:
        return "NumPy's BLAS: ? (pip install threadpoolctl to see it)"
    blas = [i for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
    if not blas:
        return "NumPy's BLAS: ?"
    # NumPy's wheels carry their own OpenBLAS (in numpy.libs); SciPy, once imported, another
    info = next((i for i in blas if "numpy" in i.get("filepath", "")), blas[0])
    line = (f"NumPy's BLAS: {info['internal_api']} {info.get('version') or '?'}, "
            f"{info.get('architecture') or '?'} kernels, {info['num_threads']} threads")
    forced = {var: os.environ[var] for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if var in os.environ}
    if forced:
        line += " (set by the environment: " + ", ".join(f"{k}={v}" for k, v in forced.items()) + ")"
    return line


def commit():
    """The checkout's short commit ("?" outside git)."""
    out = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "?"
