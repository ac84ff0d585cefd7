"""The weight formats as the C kernels know them (kernels/internal/formats.h, reported by
kernel_format_block in kernels/formats.c) against llama_np's one table of formats,
llama_np.quant.formats.FORMATS."""
import pytest

from llama_np.kernels import native as kernels
from llama_np.quant.formats import FORMATS

pytestmark = pytest.mark.skipif(not kernels.AVAILABLE, reason="C kernels not built")

KERNEL_FORMATS = {name: fmt for name, fmt in FORMATS.items() if fmt.kernel_format is not None}


def c_block(kernel_format):
    """(status, weights per block, bytes per block) as the C side reports them."""
    weights, nbytes = kernels.ffi.new("int64_t *"), kernels.ffi.new("int64_t *")
    status = kernels.lib.kernel_format_block(kernel_format, weights, nbytes)
    return status, weights[0], nbytes[0]


@pytest.mark.parametrize("name", sorted(KERNEL_FORMATS))
def test_the_c_side_has_the_tables_block_size(name):
    fmt = KERNEL_FORMATS[name]
    assert c_block(fmt.kernel_format) == (0, fmt.block_weights, fmt.block_bytes), name


def test_the_kernel_numbers_are_the_c_formats_and_nothing_else():
    numbers = sorted(fmt.kernel_format for fmt in KERNEL_FORMATS.values())
    assert numbers == list(range(len(numbers))), "kernel formats must be 0, 1, … without gaps or repeats"
    assert c_block(len(numbers))[0] == -1, "the C side knows a format the table does not"
    assert c_block(-1)[0] == -1


def test_native_formats_agree_with_the_table():
    assert kernels.FORMATS == {name: fmt.kernel_format for name, fmt in KERNEL_FORMATS.items()}
