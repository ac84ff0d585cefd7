/* The weight formats the C kernels take, by the number llama_np gives each
 * (llama_np.quant.formats, TensorFormat.kernel_format), and the weights and bytes of one
 * block of each:
 *
 *   0  Q4_0  32 weights  18 bytes  d:f16, qs[16]          w = (q - 8) * d
 *   1  Q4_1  32 weights  20 bytes  d:f16, m:f16, qs[16]   w = q * d + m
 *   2  Q8_0  32 weights  34 bytes  d:f16, qs:int8[32]     w = q * d
 *   3  F32    1 weight    4 bytes  a float                (the fused decode step; the KV cache)
 *   4  F16    1 weight    2 bytes  an IEEE half           (the KV cache only, internal/kv_rows.h)
 *
 * The block formats are llama.cpp's (ggml-common.h). Nibbles: byte j of qs holds weight j
 * in its low 4 bits and weight j + 16 in its high 4. kernel_format_block (formats.c) gives
 * these numbers to Python, where tests/test_formats.py holds them to llama_np's table.
 */
#ifndef LLAMA_NP_FORMATS_H
#define LLAMA_NP_FORMATS_H

#include <stdint.h>

typedef enum { Q4_0 = 0, Q4_1 = 1, Q8_0 = 2, F32 = 3, F16 = 4, N_FORMATS } weight_format;

#define QK 32              /* weights per block (llama.cpp QK4_0 = QK4_1 = QK8_0) */

typedef struct { uint16_t d; uint8_t qs[QK / 2]; } block_q4_0;
typedef struct { uint16_t d, m; uint8_t qs[QK / 2]; } block_q4_1;
typedef struct { uint16_t d; int8_t qs[QK]; } block_q8_0;
_Static_assert(sizeof(block_q4_0) == 18, "block_q4_0 must be 18 bytes");
_Static_assert(sizeof(block_q4_1) == 20, "block_q4_1 must be 20 bytes");
_Static_assert(sizeof(block_q8_0) == 34, "block_q8_0 must be 34 bytes");

static const int64_t BLOCK_WEIGHTS[N_FORMATS] = {
    [Q4_0] = QK, [Q4_1] = QK, [Q8_0] = QK, [F32] = 1, [F16] = 1,
};
static const int64_t BLOCK_BYTES[N_FORMATS] = {
    [Q4_0] = sizeof(block_q4_0), [Q4_1] = sizeof(block_q4_1), [Q8_0] = sizeof(block_q8_0),
    [F32] = sizeof(float), [F16] = sizeof(uint16_t),
};

#endif
