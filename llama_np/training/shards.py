"""Running the shards of a training batch at once: threads, each with a one-thread BLAS,
and the values they share (a layer's dequantized weights) made once.

NumPy releases the GIL inside its loops and BLAS calls, so shards in threads really run
at the same time, element-wise work included.
"""
import ctypes
import threading
from concurrent.futures import ThreadPoolExecutor


class SharedOnce:
    """What the shards of one batch all need, made once: the first shard to ask for a key
    makes the value (e.g. dequantizes a block's weights), the others take it, and it is
    dropped when all `n_users` have — so shards in step share, and nothing outlives its use."""

    def __init__(self, n_users):
        self.n_users = n_users
        self.entries = {}                 # key -> [lock, value, users left]
        self.lock = threading.Lock()

    def get(self, key, make):
        with self.lock:
            entry = self.entries.setdefault(key, [threading.Lock(), None, self.n_users])
        with entry[0]:                    # one shard makes it; one arriving meanwhile waits
            if entry[1] is None:
                entry[1] = make()
            value = entry[1]
        with self.lock:
            entry[2] -= 1
            if entry[2] == 0:
                del self.entries[key]
        return value


_pool = {"size": 0, "executor": None}


def thread_pool(size):
    """A pool of `size` worker threads, each with a single-threaded BLAS."""
    if _pool["size"] != size:
        if _pool["executor"] is not None:
            _pool["executor"].shutdown(wait=True)
        _pool["executor"] = ThreadPoolExecutor(size, thread_name_prefix="llama_np-shard",
                                               initializer=set_blas_threads_here, initargs=(1,))
        _pool["size"] = size
    return _pool["executor"]


def set_blas_threads_here(n):
    """Set the BLAS thread count of the calling thread only (OpenBLAS >= 0.3.27,
    `openblas_set_num_threads_local`, found among the loaded libraries). Where that is not
    available nothing happens: shards then share the cores with BLAS's own threads."""
    setter = _local_thread_setter()
    if setter is not None:
        setter(int(n))


def _local_thread_setter():
    if "setter" not in _pool:
        _pool["setter"] = None
        try:
            with open("/proc/self/maps") as maps:
                paths = {line.split()[-1] for line in maps if "openblas" in line and ".so" in line}
            for path in sorted(paths):
                setter = getattr(ctypes.CDLL(path), "openblas_set_num_threads_local", None)
                if setter is not None:
                    setter.argtypes, setter.restype = [ctypes.c_int], ctypes.c_int
                    _pool["setter"] = setter
                    break
        except (OSError, AttributeError):
            pass
    return _pool["setter"]
