"""Quantize a weight matrix into any block format, and expand it back: the one entry point
over the formats' block functions (`quant.rtn` for the 32-weight formats, `quant.kquants`
for the 256-weight K-quant super-blocks).

    data = quantize(w, "Q4_K")        w [rows, cols] float32 → uint8 [rows, row_bytes]
    w2 = dequantize(data, "Q4_K")     → float32 [rows, cols]

The bytes are those llama.cpp's quantizer writes without an importance matrix, and the
floats those `gguf.quants.dequantize` gives (tests/test_quant.py, tests/test_kquants.py).
"""
import numpy as np

from llama_np.quant import kquants, rtn
from llama_np.quant.formats import BLOCK_DTYPES, FORMATS, as_blocks, check_cols, check_qtype

QUANTIZE_CHUNK_ROWS = 1024  # rows quantized at once: bounds the fp32 temporaries

QUANTIZE_BLOCKS = {**rtn.QUANTIZE_BLOCKS, **kquants.QUANTIZE_BLOCKS}
DEQUANTIZE_BLOCKS = {**rtn.DEQUANTIZE_BLOCKS, **kquants.DEQUANTIZE_BLOCKS}


def quantize(w, qtype):
    """Quantize a weight matrix w [rows, cols] (cols a multiple of the block size) to `qtype`.

    Returns uint8 [rows, cols // block_weights * block_bytes]: each row is its blocks back
    to back, exactly the bytes a GGUF file stores for that tensor.
    """
    check_qtype(qtype)
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"quantize expects a 2-D weight matrix [rows, cols], got shape {w.shape}")
    rows, cols = w.shape
    check_cols(cols, qtype)
    block_weights = FORMATS[qtype].block_weights
    n_blocks = cols // block_weights
    blocks = np.empty((rows, n_blocks), dtype=BLOCK_DTYPES[qtype])        # [rows, n_blocks]
    for start in range(0, rows, QUANTIZE_CHUNK_ROWS):
        stop = min(start + QUANTIZE_CHUNK_ROWS, rows)
        x = w[start:stop].reshape(stop - start, n_blocks, block_weights)  # [chunk, n_blocks, block]
        QUANTIZE_BLOCKS[qtype](x, blocks[start:stop])
    return blocks.view(np.uint8)                                          # [rows, row_bytes]


def dequantize(data, qtype):
    """Expand quantized rows data uint8 [rows, row_bytes] back to float32 [rows, cols]."""
    blocks = as_blocks(data, qtype)                                      # [rows, n_blocks]
    w = DEQUANTIZE_BLOCKS[qtype](blocks)                                  # [rows, n_blocks, block]
    return w.reshape(blocks.shape[0], -1)                                 # [rows, cols]


def quantization_error(w, qtype):
    """How much quantizing loses on w [rows, cols]: root-mean-square and largest absolute
    error, and the signal-to-noise ratio 10·log10(Σw² / Σ(w - ŵ)²) in dB (higher is better;
    each extra bit of precision adds about 6 dB)."""
    w = np.asarray(w, dtype=np.float32)
    error = dequantize(quantize(w, qtype), qtype).astype(np.float64) - w  # [rows, cols]
    signal_power = np.sum(np.square(w, dtype=np.float64))
    noise_power = np.sum(error * error)
    snr_db = np.inf if noise_power == 0 else 10 * np.log10(signal_power / noise_power)
    return dict(rmse=float(np.sqrt(np.mean(error * error))),
                max_abs=float(np.max(np.abs(error), initial=0.0)),
                snr_db=float(snr_db))
