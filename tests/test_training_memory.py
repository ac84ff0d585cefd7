"""training.memory.keep_freed_memory: after it, an array freed and made again is not
faulted in (and zeroed by the kernel) a second time. Each case runs in its own process,
since the setting is the process's."""
import subprocess
import sys
import textwrap

import pytest

PROGRAM = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from llama_np.training.memory import keep_freed_memory
    kept = keep_freed_memory() if sys.argv[1] == "keep" else None
    def faults_of_new_array():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        a = np.ones(50_000_000, dtype=np.float32)      # 200 MB, above glibc's mmap threshold
        del a
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    faults_of_new_array()                              # the first time it is new memory anyway
    print(kept, faults_of_new_array())
""")


def second_faults(mode):
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True)
    kept, faults = out.stdout.split()
    return kept, int(faults)


def test_freed_memory_is_reused_without_new_page_faults():
    kept, faults_kept = second_faults("keep")
    if kept != "True":
        pytest.skip("not glibc: mallopt is not there, and keep_freed_memory does nothing")
    _, faults_default = second_faults("default")
    assert faults_default >= 50          # 200 MB faulted in again: 2 MiB or 4 KiB pages
    assert faults_kept < faults_default / 10
