/* Quantized weights times B activation rows, each row computed exactly as the one-row
 * product (quant_matmul.c with T = 1) computes it: out [B, out_features] = x [B, in] @ W.T.
 *
 * quant_matmul multiplies T >= 2 rows as a matrix-matrix product, whose sums run in another
 * order, so a sequence's logits would change with the number of sequences decoded beside
 * it. This is the batched decode step's product for the output head: each weight block is
 * unpacked once and meets the B rows (dot_rows_batch, internal/quant_rows_batch.h), every
 * row's arithmetic that of dot_rows. NumPy reference: llama_np.quant.quant_matmul, row by
 * row; tests/test_serve_batch.py holds it to the C one-row product bit for bit. Rows are
 * handed out schedule(guided), as in decode_layer_batch.c (why: there).
 */
#include <stdint.h>
#include <stdlib.h>

#include "internal/quant_rows_batch.h"

#define MATVEC_ROWS 16     /* weight rows a thread takes at a time */

/* Returns 0, or -1 when there is no memory for the block sums of x. int8_activations: each
 * row rounded to 8 bits per block first, as quant_matmul_f32 does (llama.cpp's arithmetic). */
int quant_matvec_batch_f32(int format, float *out, const uint8_t *w, const float *x, int64_t n_rows_x,
                           int64_t out_features, int64_t in_features, int int8_activations, int n_threads)
{
    const quant_type type = (quant_type)format;
    const int64_t n_blocks = in_features / BLOCK_WEIGHTS[type], n_x_blocks = in_features / QK;
    const int64_t row_bytes = n_blocks * BLOCK_BYTES[type];
    if (int8_activations) {
        block_q8_act *xq = malloc((n_rows_x * n_x_blocks + 1) * sizeof(block_q8_act));  /* [B, in / 32] */
        if (xq == NULL) return -1;
        for (int64_t t = 0; t < n_rows_x; t++)
            quantize_activations(xq + t * n_x_blocks, x + t * in_features, n_x_blocks);
        #pragma omp parallel for num_threads(n_threads) schedule(guided)
        for (int64_t r0 = 0; r0 < out_features; r0 += MATVEC_ROWS) {
            const int64_t n = out_features - r0 < MATVEC_ROWS ? out_features - r0 : MATVEC_ROWS;
            dot_rows_int8_batch(type, w + r0 * row_bytes, n, xq, n_x_blocks, n_rows_x, n_blocks, out + r0, out_features);
        }
        free(xq);
        return 0;
    }
    float *x_sums = malloc((n_rows_x * n_x_blocks + 1) * sizeof(float));  /* [B, in / 32] */
    if (x_sums == NULL) return -1;
    for (int64_t t = 0; t < n_rows_x; t++) block_sums(x_sums + t * n_x_blocks, x + t * in_features, n_x_blocks);
    #pragma omp parallel for num_threads(n_threads) schedule(guided)
    for (int64_t r0 = 0; r0 < out_features; r0 += MATVEC_ROWS) {
        const int64_t n = out_features - r0 < MATVEC_ROWS ? out_features - r0 : MATVEC_ROWS;
        dot_rows_batch(type, w + r0 * row_bytes, n, x, in_features, x_sums, n_x_blocks, n_rows_x, n_blocks,
                       out + r0, out_features);
    }
    free(x_sums);
    return 0;
}
