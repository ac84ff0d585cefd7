/* Quantized weight rows against several activation rows at once: the dot products of a
 * batched decode step (decode_layer_batch.c, quant_matvec_batch.c), where B sequences each
 * bring one token.
 *
 * Decoding is bound by reading and unpacking weights; the multiply-adds are the small part
 * (internal/quant_rows.h, dot_rows). So each block is unpacked once — its integers turned
 * into floats, its scales read — and then meets the B activation rows in turn. For each
 * (weight row, activation row) the arithmetic is *exactly* dot_rows': the same products in
 * the same order into the same accumulators, so a sequence's numbers do not depend on what
 * else is in the batch, and equal those of the one-token kernels bit for bit
 * (tests/test_serve_batch.py).
 *
 *   dot_rows_batch(type, rows, n_rows, x, x_stride, x_sums, sums_stride, n_x, n_blocks, out, out_stride)
 *     out[t · out_stride + i] = dot_rows(type, rows, n_rows, x + t · x_stride, ...)[i],  t < n_x
 *
 * Activation rows go BATCH_GROUP at a time, so that their accumulators stay in L1. This file
 * holds Q4_0, Q4_1 and Q8_0 (with AVX-512, Q4_0 / Q4_1 take quant_rows.h's dot_two_rows_avx512,
 * the one-token loop itself, which serves up to 8 activation rows, and Q8_0 rows go two to a
 * 16-lane register too); Q5_0, Q5_1 and the K-quants
 * go to internal/piece_rows.h, whose one-row and batched loops are one function.
 */
#ifndef LLAMA_NP_QUANT_ROWS_BATCH_H
#define LLAMA_NP_QUANT_ROWS_BATCH_H

#include "quant_rows.h"

#define BATCH_GROUP 8   /* activation rows one pass over a weight row serves */
#if defined(USE_AVX512) && BATCH_GROUP > TWO_ROWS_MAX_X
#error "dot_two_rows_avx512 (quant_rows.h) serves at most TWO_ROWS_MAX_X activation rows"
#endif

/* CALL(T, N) with N = n as a constant, 1 … BATCH_GROUP: each group size gets its own copy of
 * the always-inlined loops, whose per-row accumulators then live in registers (with n known
 * only at run time they live in memory, and a batch of one runs a third slower than the
 * one-row kernels). */
#define WITH_GROUP_SIZE(n, CALL, T) switch (n) {                                  \
    case 1: CALL(T, 1); break; case 2: CALL(T, 2); break; case 3: CALL(T, 3); break; \
    case 4: CALL(T, 4); break; case 5: CALL(T, 5); break; case 6: CALL(T, 6); break; \
    case 7: CALL(T, 7); break; default: CALL(T, BATCH_GROUP); }

#if defined(USE_AVX2) && !defined(USE_AVX512)
/* Two Q4_0 / Q4_1 rows against n_x <= BATCH_GROUP activation rows: dot_two_rows for each. */
static inline __attribute__((always_inline)) void
dot_two_rows_batch(quant_type type, const uint8_t *row0, const uint8_t *row1, const float *x,
                   int64_t x_stride, const float *x_sums, int64_t sums_stride, int64_t n_x,
                   int64_t n_blocks, int64_t ahead, float *out0, float *out1, int64_t out_stride)
{
    const int64_t block_bytes = BLOCK_BYTES[type];
    __m256 acc0[BATCH_GROUP], acc1[BATCH_GROUP];         /* Σ d · Σ q x, per activation row */
    /* Σ (d0, m0, d1, m1) · Σ x: dot_two_rows' two offset accumulators' lanes 0 and 1 side by
     * side in one register, lane by lane the same sums, one FMA for both rows */
    __m128 offset01[BATCH_GROUP];
    for (int64_t t = 0; t < n_x; t++) {
        acc0[t] = acc1[t] = _mm256_setzero_ps();
        offset01[t] = _mm_setzero_ps();
    }
    for (int64_t b = 0; b < n_blocks; b++) {
        const uint8_t *block0 = row0 + b * block_bytes, *block1 = row1 + b * block_bytes;
        PREFETCH(block0 + ahead);
        PREFETCH(block1 + ahead);
        __m256i q0[4], q1[4];
        block_ints_avx2(type, block0, q0);
        block_ints_avx2(type, block1, q1);
        __m256 w0[4], w1[4];                                /* the block's integers as floats, once */
        for (int k = 0; k < 4; k++) {
            w0[k] = _mm256_cvtepi32_ps(q0[k]);
            w1[k] = _mm256_cvtepi32_ps(q1[k]);
        }
        const __m128 scales0 = block_scales_avx2(block0), scales1 = block_scales_avx2(block1);
        const __m256 d0 = _mm256_broadcastss_ps(scales0), d1 = _mm256_broadcastss_ps(scales1);
        const __m128 scales01 = _mm_movelh_ps(scales0, scales1);           /* (d0, m0, d1, m1) */
        for (int64_t t = 0; t < n_x; t++) {
            const float *xb = x + t * x_stride + b * QK;
            __m256 sum0 = _mm256_setzero_ps(), sum1 = _mm256_setzero_ps();
            for (int k = 0; k < 4; k++) {
                const __m256 xk = _mm256_loadu_ps(xb + 8 * k);
                sum0 = _mm256_fmadd_ps(w0[k], xk, sum0);
                sum1 = _mm256_fmadd_ps(w1[k], xk, sum1);
            }
            acc0[t] = _mm256_fmadd_ps(d0, sum0, acc0[t]);
            acc1[t] = _mm256_fmadd_ps(d1, sum1, acc1[t]);
            offset01[t] = _mm_fmadd_ps(scales01, _mm_broadcast_ss(x_sums + t * sums_stride + b), offset01[t]);
        }
    }
    for (int64_t t = 0; t < n_x; t++)
        finish_two_rows(type, acc0[t], acc1[t], offset01[t], out0 + t * out_stride, out1 + t * out_stride);
}

#endif

#ifdef USE_AVX2
/* One Q8_0 row against n_x <= BATCH_GROUP activation rows: dot_row_q8_0 for each. */
static inline __attribute__((always_inline)) void dot_row_q8_0_batch(const uint8_t *row, const float *x, int64_t x_stride, int64_t n_x,
                                      int64_t n_blocks, float *out, int64_t out_stride)
{
    __m256 acc[BATCH_GROUP];
    for (int64_t t = 0; t < n_x; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < n_blocks; b++) {
        const uint8_t *block = row + b * sizeof(block_q8_0);
        PREFETCH(block + PREFETCH_BYTES);
        __m256i q[4];
        block_ints_avx2(Q8_0, block, q);
        __m256 w[4];
        for (int k = 0; k < 4; k++) w[k] = _mm256_cvtepi32_ps(q[k]);
        const __m256 d = _mm256_set1_ps(block_scale(block));
        for (int64_t t = 0; t < n_x; t++) {
            const float *xb = x + t * x_stride + b * QK;
            const __m256 sum = _mm256_add_ps(
                _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xb + 8), _mm256_mul_ps(w[0], _mm256_loadu_ps(xb))),
                _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xb + 24), _mm256_mul_ps(w[2], _mm256_loadu_ps(xb + 16))));
            acc[t] = _mm256_fmadd_ps(d, sum, acc[t]);
        }
    }
    for (int64_t t = 0; t < n_x; t++) out[t * out_stride] = hsum_avx2(acc[t]);
}
#endif

#ifdef USE_AVX512
/* From how many activation rows on the Q8_0 rows go two at a time: with fewer, the head is
 * read no faster than it streams, and the pairs' unpacking costs more than the FMAs saved
 * (docs/benchmarks.md#decode-kernels). */
#define Q8_0_TWO_ROWS_MIN_X 4

/* Two Q8_0 rows against n_x <= BATCH_GROUP activation rows: dot_row_q8_0 for each pair
 * (weight row, activation row), with the two weight rows in one 16-lane register as in
 * dot_two_rows_avx512 (row0 in lanes 0-7, row1 in lanes 8-15, the activations' 8 floats in
 * both halves). Lane by lane dot_row_q8_0's arithmetic, so the same sums; half the FMAs,
 * which is what each further activation row pays for. */
static inline __attribute__((always_inline)) void
dot_two_rows_q8_0_avx512(const uint8_t *row0, const uint8_t *row1, const float *x, int64_t x_stride,
                         int64_t n_x, int64_t n_blocks, float *out0, float *out1, int64_t out_stride)
{
    const int64_t next_pair = 2 * n_blocks * (int64_t)sizeof(block_q8_0);   /* as dot_rows: the next pair's block */
    __m512 acc[BATCH_GROUP];                      /* (Σ d0 · Σ q x | Σ d1 · Σ q x), per activation row */
    for (int64_t t = 0; t < n_x; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < n_blocks; b++) {
        const uint8_t *block0 = row0 + b * sizeof(block_q8_0), *block1 = row1 + b * sizeof(block_q8_0);
        PREFETCH(block0 + next_pair);
        PREFETCH(block1 + next_pair);
        __m512 w[4];                              /* weights 8k … 8k + 7 of both rows */
        block_pair_floats_avx512(Q8_0, block0, block1, w);
        const __m512 d01 = join_halves_avx512(_mm256_set1_ps(block_scale(block0)),
                                              _mm256_set1_ps(block_scale(block1)));
        for (int64_t t = 0; t < n_x; t++) {
            const float *xb = x + t * x_stride + b * QK;
            const __m512 sum = _mm512_add_ps(   /* dot_row_q8_0's two chains of two products */
                _mm512_fmadd_ps(w[1], load_8_twice_avx512(xb + 8), _mm512_mul_ps(w[0], load_8_twice_avx512(xb))),
                _mm512_fmadd_ps(w[3], load_8_twice_avx512(xb + 24), _mm512_mul_ps(w[2], load_8_twice_avx512(xb + 16))));
            acc[t] = _mm512_fmadd_ps(d01, sum, acc[t]);
        }
    }
    for (int64_t t = 0; t < n_x; t++) {
        out0[t * out_stride] = hsum_avx2(_mm512_castps512_ps256(acc[t]));
        out1[t * out_stride] = hsum_avx2(upper_half_avx512(acc[t]));
    }
}
#endif

#ifdef USE_AVX2
static inline __attribute__((always_inline)) void
dot_rows_batch_of(quant_type type, const uint8_t *rows, int64_t n_rows, const float *x, int64_t x_stride,
                  const float *x_sums, int64_t sums_stride, int64_t n_x, int64_t n_blocks, float *out,
                  int64_t out_stride)
{
    const int64_t row_bytes = n_blocks * BLOCK_BYTES[type];
    if (type == Q8_0) {
        int64_t i = 0;
#ifdef USE_AVX512
        if (n_x >= Q8_0_TWO_ROWS_MIN_X)
            for (; i + 1 < n_rows; i += 2)
                dot_two_rows_q8_0_avx512(rows + i * row_bytes, rows + (i + 1) * row_bytes, x, x_stride, n_x,
                                         n_blocks, out + i, out + i + 1, out_stride);
#endif
        for (; i < n_rows; i++)   /* all rows, or an odd last one */
            dot_row_q8_0_batch(rows + i * row_bytes, x, x_stride, n_x, n_blocks, out + i, out_stride);
        return;
    }
    for (int64_t i = 0; i < n_rows; i += 2) {
        /* an odd last row is paired with itself, as in dot_rows: both write the same sums */
        const int64_t second = i + 1 < n_rows ? i + 1 : i;
#ifdef USE_AVX512   /* the loop of one token's decode (quant_rows.h), for n_x rows */
        dot_two_rows_avx512(type, rows + i * row_bytes, rows + second * row_bytes, x, x_stride, x_sums,
                            sums_stride, n_x, n_blocks, 2 * row_bytes, out + i, out + second, out_stride);
#else
        dot_two_rows_batch(type, rows + i * row_bytes, rows + second * row_bytes, x, x_stride, x_sums,
                           sums_stride, n_x, n_blocks, 2 * row_bytes, out + i, out + second, out_stride);
#endif
    }
}
#endif

static inline void dot_rows_batch(quant_type type, const uint8_t *rows, int64_t n_rows, const float *x,
                                  int64_t x_stride, const float *x_sums, int64_t sums_stride, int64_t n_x,
                                  int64_t n_blocks, float *out, int64_t out_stride)
{
    if (is_piece_format(type)) {    /* Q5_0, Q5_1, K-quants: internal/piece_rows.h */
        dot_rows_pieces_batch(type, rows, n_rows, x, x_stride, x_sums, sums_stride, n_x, n_blocks, out, out_stride);
        return;
    }
    for (int64_t t0 = 0; t0 < n_x; t0 += BATCH_GROUP) {
        const int64_t n = n_x - t0 < BATCH_GROUP ? n_x - t0 : BATCH_GROUP;
        const float *xg = x + t0 * x_stride, *sums_g = x_sums + t0 * sums_stride;
        float *out_g = out + t0 * out_stride;
#ifdef USE_AVX2
#define DOT_GROUP(T, N) dot_rows_batch_of(T, rows, n_rows, xg, x_stride, sums_g, sums_stride, N, n_blocks, \
                                         out_g, out_stride)
        switch (type) {
        case Q4_0: WITH_GROUP_SIZE(n, DOT_GROUP, Q4_0); break;
        case Q4_1: WITH_GROUP_SIZE(n, DOT_GROUP, Q4_1); break;
        default:   WITH_GROUP_SIZE(n, DOT_GROUP, Q8_0);
        }
#undef DOT_GROUP
#else
        /* plain C: one activation row at a time, dot_rows itself (scratch for its output row) */
        for (int64_t t = 0; t < n; t++) {
            for (int64_t i0 = 0; i0 < n_rows; i0 += 16) {
                float part[16];
                const int64_t m = n_rows - i0 < 16 ? n_rows - i0 : 16;
                dot_rows(type, rows + i0 * (n_blocks * BLOCK_BYTES[type]), m, xg + t * x_stride,
                         sums_g + t * sums_stride, n_blocks, part);
                for (int64_t i = 0; i < m; i++) out_g[t * out_stride + i0 + i] = part[i];
            }
        }
#endif
    }
}

/* ---------------------------------------------------------------------------------------
 * int8 activations (llama.cpp's arithmetic, --int8-activations): one weight row against
 * n_x quantized activation rows, dot_row_int8 for each. The weights' integers are unpacked
 * into one register once per block; each row then costs one multiply of bytes (maddubs),
 * one widening add, one conversion and one FMA, in dot_row_int8's order. */
static inline __attribute__((always_inline)) void
dot_row_int8_batch_of(quant_type type, const uint8_t *row, const block_q8_act *xq, int64_t xq_stride,
                      int64_t n_x, int64_t n_blocks, float *out, int64_t out_stride)
{
    float offset[BATCH_GROUP];   /* Σ over blocks of m · sx (Q4_1) or -8 dw · sx (Q4_0) */
#ifdef USE_AVX2
    __m256 acc[BATCH_GROUP];
    for (int64_t t = 0; t < n_x; t++) acc[t] = _mm256_setzero_ps(), offset[t] = 0.0f;
#else
    float acc[BATCH_GROUP];
    for (int64_t t = 0; t < n_x; t++) acc[t] = 0.0f, offset[t] = 0.0f;
#endif
    for (int64_t b = 0; b < n_blocks; b++) {
        const uint8_t *block = row + b * BLOCK_BYTES[type];
        PREFETCH(block + PREFETCH_BYTES);
        const float dw = block_scale(block);
        const float m = type == Q4_1 ? fp16_to_fp32(((const block_q4_1 *)block)->m) : 0.0f;
#ifdef USE_AVX2
        __m256i qw, w_sign;                               /* the weights' bytes, once */
        if (type == Q8_0) {
            const __m256i w = _mm256_loadu_si256((const __m256i *)((const block_q8_0 *)block)->qs);
            qw = _mm256_sign_epi8(w, w), w_sign = w;
        } else {
            const __m128i packed = _mm_loadu_si128((const __m128i *)nibbles_of(type, block));
            const __m128i low_nibble = _mm_set1_epi8(0x0F);
            qw = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(packed, 4), low_nibble),
                                  _mm_and_si128(packed, low_nibble));
            w_sign = qw;
        }
#endif
        for (int64_t t = 0; t < n_x; t++) {
            const block_q8_act *x = xq + t * xq_stride + b;
            if (type == Q4_0) offset[t] -= 8.0f * dw * x->s;
            if (type == Q4_1) offset[t] += m * x->s;
#ifdef USE_AVX2
            __m256i xv = _mm256_loadu_si256((const __m256i *)x->qs);
            if (type == Q8_0) xv = _mm256_sign_epi8(xv, w_sign);
            const __m256i sums = dot_bytes_avx2(qw, xv);
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * x->d), _mm256_cvtepi32_ps(sums), acc[t]);
#else
            acc[t] += dw * x->d * (float)dot_block_int8(type, block, x->qs);
#endif
        }
    }
    for (int64_t t = 0; t < n_x; t++) {
#ifdef USE_AVX2
        out[t * out_stride] = hsum_avx2(acc[t]) + offset[t];
#else
        out[t * out_stride] = acc[t] + offset[t];
#endif
    }
}

/* out[t · out_stride + i] = dot_row_int8(type, row i, xq + t · xq_stride), i < n_rows, t < n_x. */
static inline void dot_rows_int8_batch(quant_type type, const uint8_t *rows, int64_t n_rows,
                                       const block_q8_act *xq, int64_t xq_stride, int64_t n_x,
                                       int64_t n_blocks, float *out, int64_t out_stride)
{
    if (is_piece_format(type)) {
        dot_rows_pieces_int8_batch(type, rows, n_rows, xq, xq_stride, n_x, n_blocks, out, out_stride);
        return;
    }
    const int64_t row_bytes = n_blocks * BLOCK_BYTES[type];
    for (int64_t t0 = 0; t0 < n_x; t0 += BATCH_GROUP) {
        const int64_t n = n_x - t0 < BATCH_GROUP ? n_x - t0 : BATCH_GROUP;
        const block_q8_act *xg = xq + t0 * xq_stride;
        float *out_g = out + t0 * out_stride;
#define DOT_INT8_GROUP(T, N) for (int64_t i = 0; i < n_rows; i++) \
        dot_row_int8_batch_of(T, rows + i * row_bytes, xg, xq_stride, N, n_blocks, out_g + i, out_stride)
        switch (type) {
        case Q4_0: WITH_GROUP_SIZE(n, DOT_INT8_GROUP, Q4_0); break;
        case Q4_1: WITH_GROUP_SIZE(n, DOT_INT8_GROUP, Q4_1); break;
        default:   WITH_GROUP_SIZE(n, DOT_INT8_GROUP, Q8_0);
        }
#undef DOT_INT8_GROUP
    }
}

#endif
