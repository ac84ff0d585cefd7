/* Quantized weight rows expanded to fp32: each block decoded (its integers times its scale,
 * plus its offset), the weights a GEMM tile multiplies (quant_matmul.c) and what
 * dequantize.c returns. NumPy reference: llama_np.quant.dequantize, equal bit for bit: an
 * fp16 scale times a small integer is exact in fp32, so whether Q4_1's d · q + m is one
 * fused multiply-add (here) or a product and a sum (NumPy), it is rounded once, at the add.
 *
 *   decode_row(type, w, row, n_blocks)     w[0 … n_blocks · block weights) = row, as fp32
 */
#ifndef LLAMA_NP_DECODE_ROWS_H
#define LLAMA_NP_DECODE_ROWS_H

#include "quant_rows.h"

/* ---------------------------------------------------------------------------------------
 * Decoding one block: 32 weights as fp32.
 * Scalar versions write w[32]; AVX2 versions return them in 4 registers of 8 lanes,
 * lanes 0-7, 8-15, 16-23, 24-31 of the block. */

static inline void decode_block_q4_0(const block_q4_0 *b, float w[QK])
{
    const float d = fp16_to_fp32(b->d);
    for (int j = 0; j < QK / 2; j++) {
        w[j] = ((b->qs[j] & 0x0F) - 8) * d;
        w[j + QK / 2] = ((b->qs[j] >> 4) - 8) * d;
    }
}

static inline void decode_block_q4_1(const block_q4_1 *b, float w[QK])
{
    const float d = fp16_to_fp32(b->d), m = fp16_to_fp32(b->m);
    for (int j = 0; j < QK / 2; j++) {
        w[j] = (b->qs[j] & 0x0F) * d + m;
        w[j + QK / 2] = (b->qs[j] >> 4) * d + m;
    }
}

static inline void decode_block_q8_0(const block_q8_0 *b, float w[QK])
{
    const float d = fp16_to_fp32(b->d);
    for (int j = 0; j < QK; j++) w[j] = b->qs[j] * d;
}

#ifdef USE_AVX2
typedef struct { __m256 v[4]; } f32x32;   /* one decoded block in registers */

static inline f32x32 decode_block_q4_0_avx2(const block_q4_0 *b)
{
    const __m256 d = _mm256_set1_ps(fp16_to_fp32(b->d));
    const __m256i eight = _mm256_set1_epi32(8);
    __m256i q[4];
    unpack_nibbles_avx2(b->qs, q);
    f32x32 w;
    for (int i = 0; i < 4; i++)
        w.v[i] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q[i], eight)), d);
    return w;
}

static inline f32x32 decode_block_q4_1_avx2(const block_q4_1 *b)
{
    const __m256 d = _mm256_set1_ps(fp16_to_fp32(b->d));
    const __m256 m = _mm256_set1_ps(fp16_to_fp32(b->m));
    __m256i q[4];
    unpack_nibbles_avx2(b->qs, q);
    f32x32 w;
    for (int i = 0; i < 4; i++) w.v[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q[i]), d, m);
    return w;
}

static inline f32x32 decode_block_q8_0_avx2(const block_q8_0 *b)
{
    const __m256 d = _mm256_set1_ps(fp16_to_fp32(b->d));
    f32x32 w;
    for (int i = 0; i < 4; i++) {
        const __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b->qs + 8 * i)));
        w.v[i] = _mm256_mul_ps(_mm256_cvtepi32_ps(q), d);
    }
    return w;
}

#endif

/* ---------------------------------------------------------------------------------------
 * decode_row: a row of n_blocks blocks of any format as fp32 into a scratch row (GEMM). */

#ifdef USE_AVX2
static inline f32x32 decode_block_avx2(quant_type type, const uint8_t *block)
{
    switch (type) {
    case Q4_0: return decode_block_q4_0_avx2((const block_q4_0 *)block);
    case Q4_1: return decode_block_q4_1_avx2((const block_q4_1 *)block);
    default:   return decode_block_q8_0_avx2((const block_q8_0 *)block);
    }
}
#else
static inline void decode_block(quant_type type, const uint8_t *block, float w[QK])
{
    switch (type) {
    case Q4_0: decode_block_q4_0((const block_q4_0 *)block, w); break;
    case Q4_1: decode_block_q4_1((const block_q4_1 *)block, w); break;
    default:   decode_block_q8_0((const block_q8_0 *)block, w); break;
    }
}
#endif

static inline void decode_row(quant_type type, float *w, const uint8_t *row, int64_t n_blocks)
{
    if (is_piece_format(type)) {       /* internal/piece_rows.h */
        decode_row_pieces(type, w, row, n_blocks);
        return;
    }
    for (int64_t b = 0; b < n_blocks; b++) {
#ifdef USE_AVX2
        const f32x32 wb = decode_block_avx2(type, row + b * BLOCK_BYTES[type]);
        for (int i = 0; i < 4; i++) _mm256_storeu_ps(w + b * QK + 8 * i, wb.v[i]);
#else
        decode_block(type, row + b * BLOCK_BYTES[type], w + b * QK);
#endif
    }
}

#endif
