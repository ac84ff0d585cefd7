"""Reading the GGUF container (llama.cpp's single-file model format, version 2 and 3).

Layout, all little-endian:

    magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
    n_kv × (key: string, value_type u32, value)              -- the metadata
    n_tensors × (name: string, n_dims u32, dims u64[n_dims], ggml_type u32, offset u64)
    padding to `general.alignment` (default 32)
    tensor data (each tensor at data_start + offset)

A string is a u64 byte length and UTF-8 bytes; an array is (element type u32, count u64,
elements). `dims` lists the fastest-varying dimension first, so a GGUF [576, 1536] tensor is
the NumPy array [1536, 576].

The `gguf` package reads this too, but builds a Python object for each of the ~100k
tokenizer strings of a small model, which takes seconds; this reader does not, which is
what keeps the chat's time to first token short (docs/benchmarks.md#loading-and-start-up).
Tensor data is memory-mapped, or, for a model about to run, read into memory
(`read_into_memory`). Writing GGUF files is left to `gguf.GGUFWriter`.
"""
import os
import struct

import numpy as np

from llama_np.quant.formats import FORMATS, FORMATS_BY_GGML_TYPE, ggml_type_name, tensor_nbytes

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32  # gguf.h GGUF_DEFAULT_ALIGNMENT
MAX_ARRAY_NESTING = 4   # arrays of arrays of …: llama.cpp reads none; deeper is a corrupt file

# metadata value types (gguf.h gguf_type): struct format of the scalars
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                   10: "<Q", 11: "<q", 12: "<d"}
_NUMPY_DTYPES = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?",
                 10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9


class GGUFError(ValueError):
    """A file that is not a readable GGUF, or a tensor in it llama_np cannot use."""


class TensorInfo:
    """Where one tensor lives in the file, and how it is stored."""

    def __init__(self, name, shape, ggml_type, offset):
        self.name = name
        self.shape = shape          # NumPy order: (rows, cols)
        self.ggml_type = ggml_type
        self.offset = offset        # from the start of the data section

    @property
    def type_name(self):
        return ggml_type_name(self.ggml_type)

    @property
    def nbytes(self):
        return tensor_nbytes(int(np.prod(self.shape, dtype=np.int64)), self.type_name)


_U64 = struct.Struct("<Q")


class _Cursor:
    """Sequential little-endian reads over a bytes-like buffer, with truncation checks."""

    def __init__(self, buf, path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n):
        if self.pos + n > len(self.buf):
            raise GGUFError(f"{self.path}: truncated or corrupt header "
                            f"(wanted {n} bytes at offset {self.pos}, file has {len(self.buf)})")
        start = self.pos
        self.pos += n
        return self.buf[start:self.pos]

    def scalar(self, fmt):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self):
        n = self.scalar("<Q")
        return bytes(self.take(n)).decode("utf-8", errors="replace")

    def strings(self, count):
        """`count` consecutive strings: the tokenizer's vocabulary and merges, ~100k of
        them, so this loop is kept tight (it dominates the time to open a model)."""
        buf, pos, end = self.buf, self.pos, len(self.buf)
        if pos + 8 * count > end:  # each string has at least its 8-byte length
            self.take(8 * count)   # raises the truncation error
        out = []
        append, length_at = out.append, _U64.unpack_from
        for _ in range(count):
            if pos + 8 > end:
                self.pos = pos
                self.take(8)  # raises the truncation error
            n, = length_at(buf, pos)
            pos += 8
            if pos + n > end:
                self.pos = pos
                self.take(n)  # raises the truncation error
            append(str(buf[pos:pos + n], "utf-8", "replace"))
            pos += n
        self.pos = pos
        return out

    def value(self, vtype, depth=0):
        if vtype in _SCALAR_FORMATS:
            return self.scalar(_SCALAR_FORMATS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            elem_type, count = self.scalar("<I"), self.scalar("<Q")
            if elem_type in _NUMPY_DTYPES:  # numeric arrays in one go
                dtype = np.dtype(_NUMPY_DTYPES[elem_type])
                return np.frombuffer(self.take(count * dtype.itemsize), dtype=dtype).tolist()
            if elem_type == _STRING:
                return self.strings(count)
            if depth >= MAX_ARRAY_NESTING:
                raise GGUFError(f"{self.path}: metadata arrays nested more than {MAX_ARRAY_NESTING} "
                                f"deep at offset {self.pos} (corrupt header?)")
            return [self.value(elem_type, depth + 1) for _ in range(count)]
        raise GGUFError(f"{self.path}: unknown metadata value type {vtype} at offset {self.pos}")


def read_file(path):
    """The whole file at `path` as a writable uint8 array in ordinary memory. The copy out
    of the page cache runs with the GIL released, so another thread can work meanwhile."""
    with open(path, "rb") as f:
        data = np.empty(os.fstat(f.fileno()).st_size, dtype=np.uint8)
        if f.readinto(memoryview(data)) != len(data):
            raise GGUFError(f"{path}: changed while being read")
    return data


def has_gguf_magic(path):
    """Whether the file at `path` starts as a GGUF file does (its first 4 bytes); False for
    one that cannot be read (GGUFFile then says why)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


class GGUFFile:
    """A GGUF file opened for reading: `metadata` (dict), `tensors` (name → TensorInfo),
    and `tensor_data(name)`, a view of one tensor's bytes (read-only and memory-mapped,
    unless `read_into_memory` was called)."""

    def __init__(self, path):
        self.path = str(path)
        try:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        except FileNotFoundError:
            raise GGUFError(f"{self.path}: no such file") from None
        except (OSError, ValueError) as e:  # a directory, an empty file, no permission
            raise GGUFError(f"{self.path}: cannot read ({e})") from None
        buf = memoryview(self._map)
        cur = _Cursor(buf, self.path)
        magic = bytes(buf[:4])
        if magic != GGUF_MAGIC:
            raise GGUFError(f"{self.path}: not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
        cur.pos = 4
        self.version = cur.scalar("<I")
        if self.version not in (2, 3):
            raise GGUFError(f"{self.path}: GGUF version {self.version} is not supported (2 or 3)")
        n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
        if n_tensors > len(buf) or n_kv > len(buf):
            raise GGUFError(f"{self.path}: corrupt header ({n_tensors} tensors, {n_kv} keys)")

        self.metadata = {}
        for _ in range(n_kv):
            key = cur.string()
            if key in self.metadata:
                raise GGUFError(f"{self.path}: metadata key {key!r} appears twice")
            self.metadata[key] = cur.value(cur.scalar("<I"))
        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not (type(alignment) is int and 0 < alignment <= 2**20 and alignment & (alignment - 1) == 0):
            raise GGUFError(f"{self.path}: general.alignment {alignment!r} is not a power of 2 "
                            f"(32 by default)")

        self.tensors = {}
        for _ in range(n_tensors):
            name = cur.string()
            if name in self.tensors:
                raise GGUFError(f"{self.path}: tensor {name!r} appears twice in the tensor table")
            n_dims = cur.scalar("<I")
            if not 1 <= n_dims <= 4:
                raise GGUFError(f"{self.path}: tensor {name!r} has {n_dims} dimensions (corrupt header?)")
            dims = [cur.scalar("<Q") for _ in range(n_dims)]
            ggml_type, offset = cur.scalar("<I"), cur.scalar("<Q")
            # no ggml type stores less than a bit per weight (IQ1_S: 1.56), so a file holds at
            # most 8 weights per byte, whatever types llama_np itself reads
            if min(dims) < 1 or int(np.prod(dims, dtype=object)) > 8 * len(buf):
                raise GGUFError(f"{self.path}: tensor {name!r} has shape {dims}, more than "
                                f"the file's {len(buf)} bytes can hold (corrupt header?)")
            if offset % alignment:
                raise GGUFError(f"{self.path}: tensor {name!r} starts at offset {offset}, "
                                f"not a multiple of the alignment {alignment}")
            self.tensors[name] = TensorInfo(name, tuple(reversed(dims)), ggml_type, offset)

        self.data_start = (cur.pos + alignment - 1) // alignment * alignment

    @property
    def n_bytes(self):
        """The size of the file."""
        return len(self._map)

    def read_into_memory(self, data=None):
        """Serve tensors from one writable array in ordinary memory instead of from the
        mapping: the file's bytes, read here, or `data` if they were read already
        (`read_file`, say in a thread started before this header was parsed).

        Why: a decode step streams every weight once. A mapped file sits in 4 KiB pages, and
        ~100 MB of them is ~25,000 pages, too many for the TLB, so page-table walks join the
        work; one large NumPy allocation gets 2 MiB pages where the kernel allows it (NumPy
        asks with madvise, Linux transparent huge pages), and decoding gets faster. The
        memory used is the same (the mapped pages were resident too), and reading the file
        takes a small part of start-up. The measurements:
        docs/benchmarks.md#loading-and-start-up."""
        if data is None:
            data = read_file(self.path)
        if len(data) != len(self._map):
            raise GGUFError(f"{self.path}: changed while being read")
        self._map = data

    @property
    def in_memory(self):
        """Whether tensors come from ordinary memory (read_into_memory), not the mapping."""
        return not isinstance(self._map, np.memmap)

    def tensor_data(self, name):
        """The raw bytes of tensor `name`, shaped [rows, row_bytes] (1-D tensors: [row_bytes]),
        a view, not a copy. Raises GGUFError for an unsupported type or a truncated file."""
        info = self.tensors.get(name)
        if info is None:
            raise GGUFError(f"{self.path}: tensor {name!r} is missing")
        if info.ggml_type not in FORMATS_BY_GGML_TYPE:
            raise GGUFError(f"{self.path}: tensor {name!r} has type {info.type_name}, "
                            f"which llama_np does not support ({', '.join(FORMATS)})")
        block_size = FORMATS_BY_GGML_TYPE[info.ggml_type].block_weights
        if info.shape[-1] % block_size:
            raise GGUFError(f"{self.path}: tensor {name!r} row length {info.shape[-1]} "
                            f"is not a multiple of the {info.type_name} block size {block_size}")
        start = self.data_start + info.offset
        end = start + info.nbytes
        if end > len(self._map):
            raise GGUFError(f"{self.path}: tensor {name!r} is truncated (needs bytes {start}..{end}, "
                            f"file has {len(self._map)})")
        raw = self._map[start:end]
        if len(info.shape) == 1:
            return raw
        rows = int(np.prod(info.shape[:-1]))
        return raw.reshape(rows, -1)

    def tensor_float(self, name):
        """An F32/F16/BF16 tensor as float32, in its NumPy shape (F32: a view of the file's bytes)."""
        info = self.tensors.get(name)
        raw = self.tensor_data(name)
        kind = info.type_name
        if kind == "F32":
            return raw.view(np.float32).reshape(info.shape)
        if kind == "F16":
            return raw.view(np.float16).astype(np.float32).reshape(info.shape)
        if kind == "BF16":  # bfloat16 is the upper half of a float32
            return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(info.shape)
        raise GGUFError(f"{self.path}: tensor {name!r} is {kind}, not a float type")
