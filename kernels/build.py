"""cffi build script for llama_np's C kernels (module `llama_np.kernels._c`).

Every `kernels/*.c` is compiled into one extension; the declarations cffi needs are the
plain prototypes of `kernels/*.h` (no preprocessor lines in those headers). Each kernel
has a NumPy reference of the same name in llama_np, and a test that the two agree.

Build flags: -O3 and OpenMP always; `-march=native` (SIMD for this CPU) unless the
environment sets LLAMA_NP_PORTABLE=1, which builds for any x86-64/arm64 CPU.
"""
import glob
import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
sources = sorted(glob.glob(os.path.join(HERE, "*.c")))
headers = sorted(glob.glob(os.path.join(HERE, "*.h")))                     # cffi declarations
internal = sorted(glob.glob(os.path.join(HERE, "internal", "*.h")))        # shared inline code

ffibuilder = FFI()
ffibuilder.cdef("\n".join(open(h).read() for h in headers))

compile_args = ["-O3", "-fopenmp", "-std=c11", "-ffp-contract=fast"]
if os.environ.get("LLAMA_NP_PORTABLE", "") not in ("1", "true", "yes"):
    compile_args.append("-march=native")

ffibuilder.set_source(
    "llama_np.kernels._c",
    "#include <stddef.h>\n#include <stdint.h>\n"
    + "\n".join(f'#include "{os.path.basename(h)}"' for h in headers),
    sources=[os.path.relpath(s) for s in sources],
    depends=[os.path.relpath(h) for h in headers + internal],  # a changed header rebuilds too
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=compile_args,
    extra_link_args=["-fopenmp"],
    libraries=["m"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
