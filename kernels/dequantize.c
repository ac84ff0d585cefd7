/* Quantized weight rows back to fp32: out [n_rows, cols] = the rows of data, each
 * row_bytes = cols / block weights · block bytes long, decoded block by block
 * (internal/decode_rows.h), rows split over n_threads.
 *
 * NumPy reference: llama_np.quant.dequantize (equal bit for bit, see internal/decode_rows.h).
 * Training a LoRA adapter on a quantized base expands each block's frozen weights for the
 * products of its forward and again of its backward pass (llama_np/training/
 * training_layer.py), twice the model's weights a step: in NumPy several passes over arrays
 * of that size, here one.
 */
#include <stdint.h>

#include "internal/decode_rows.h"

void dequantize_f32(int format, float *out, const uint8_t *data, int64_t n_rows, int64_t cols, int n_threads)
{
    const quant_type type = (quant_type)format;
    const int64_t n_blocks = cols / BLOCK_WEIGHTS[type], row_bytes = n_blocks * BLOCK_BYTES[type];
    #pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t r = 0; r < n_rows; r++) decode_row(type, out + r * cols, data + r * row_bytes, n_blocks);
}
