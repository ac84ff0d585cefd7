"""The note on OpenBLAS's kernels (llama_np.training.blas_kernels): when it speaks, checked
against what threadpoolctl reports of the OpenBLAS NumPy really loaded."""
import os

import numpy as np  # noqa: F401  (loads NumPy's BLAS for threadpoolctl)
import pytest

from llama_np.kernels.cpu import cpu_flags
from llama_np.training.blas_kernels import AVX512_CORES, AVX512_FLAGS, narrower_kernels_note

AVX512 = {"fma", "avx2"} | AVX512_FLAGS


def test_note_only_for_an_avx2_core_forced_on_an_avx512_cpu():
    assert narrower_kernels_note({"OPENBLAS_CORETYPE": "Haswell"}, AVX512).startswith("note: OPENBLAS_CORETYPE=Haswell")
    assert narrower_kernels_note({"OPENBLAS_CORETYPE": "zen"}, AVX512) is not None
    assert narrower_kernels_note({"OPENBLAS_CORETYPE": "SkylakeX"}, AVX512) is None
    assert narrower_kernels_note({"OPENBLAS_CORETYPE": "COOPERLAKE"}, AVX512) is None
    assert narrower_kernels_note({}, AVX512) is None                                  # OpenBLAS chooses
    assert narrower_kernels_note({"OPENBLAS_CORETYPE": "Haswell"}, {"fma", "avx2"}) is None   # nothing wider
    assert narrower_kernels_note({"OPENBLAS_CORETYPE": "Haswell"}, AVX512 - {"avx512bw"}) is None


def test_the_note_tells_the_truth_about_this_process():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    openblas = [i for i in threadpoolctl.threadpool_info()
                if i.get("internal_api") == "openblas" and "numpy" in i.get("filepath", "")]
    if not openblas or not openblas[0].get("architecture"):
        pytest.skip("NumPy's BLAS here is not an OpenBLAS that names its kernels")
    running = openblas[0]["architecture"]
    note = narrower_kernels_note()
    if note is not None:       # it says the variable holds OpenBLAS to narrower kernels: it does
        assert running.lower() not in AVX512_CORES
        assert running.lower() == os.environ["OPENBLAS_CORETYPE"].lower()
    elif AVX512_FLAGS <= cpu_flags() and "OPENBLAS_CORETYPE" in os.environ:
        assert running.lower() in AVX512_CORES   # silent only where the kernels are the wide ones
