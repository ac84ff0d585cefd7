/* One row of quantized weights against one row of activations: the dot products that
 * every kernel multiplying by llama.cpp blocks is built from (quant_matmul.c for whole
 * matrices, decode_layer.c for one token through a transformer block). This file holds the
 * loops of Q4_0, Q4_1 and Q8_0; those of Q5_0, Q5_1 and the K-quants are in piece_rows.h,
 * and dot_rows / dot_row_int8 (at the end) pick the one of a format.
 *
 * The block layouts, the formats' numbers and their block sizes: formats.h. NumPy
 * references: llama_np/quant/. A header of static inline functions
 * (not a cffi declaration file: those are the .h files directly in kernels/), so that each kernel gets
 * its own copy, inlined into its loops.
 */
#ifndef LLAMA_NP_QUANT_ROWS_H
#define LLAMA_NP_QUANT_ROWS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "formats.h"
#include "half.h"
#include "simd.h"

/* How far ahead of the block being multiplied to ask for memory, where a loop reads one row
 * at a time (the two-row loop asks for the next pair's block instead, see dot_rows). A
 * decode step streams ~100 MB of weights, far more than any cache: without the hint a core
 * waits on memory for a good part of the time. 512 bytes is the shortest distance that hid
 * the wait, and longer ones gained nothing (docs/benchmarks.md#decode-kernels). */
#define PREFETCH_BYTES 512

#ifdef USE_AVX2
#define PREFETCH(p) _mm_prefetch((const char *)(p), _MM_HINT_T0)
#else
#define PREFETCH(p) ((void)(p))
#endif

typedef weight_format quant_type;  /* one of the block formats: any but F32 and F16 */

/* The scale d: the first two bytes of every block format. */
static inline float block_scale(const uint8_t *block)
{
    uint16_t bits;
    memcpy(&bits, block, sizeof bits);
    return fp16_to_fp32(bits);
}

/* The 16 nibble bytes of a Q4_0 or Q4_1 block. */
static inline const uint8_t *nibbles_of(quant_type type, const uint8_t *block)
{
    return type == Q4_0 ? ((const block_q4_0 *)block)->qs : ((const block_q4_1 *)block)->qs;
}

#ifdef USE_AVX2
/* The 16 nibble bytes as 32 int32 lanes. Zero-extending 8 bytes to 8 int32 lanes puts
 * byte j's low nibble (weight j) in bits 0-3 and its high nibble (weight j + 16) in bits
 * 4-7 of lane j, so a mask and a shift separate them: q[0] weights 0-7, q[1] 8-15,
 * q[2] 16-23, q[3] 24-31. */
static inline void unpack_nibbles_avx2(const uint8_t qs[QK / 2], __m256i q[4])
{
    const __m256i low_nibble = _mm256_set1_epi32(0x0F);
    const __m256i bytes_0_7 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)qs));
    const __m256i bytes_8_15 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 8)));
    q[0] = _mm256_and_si256(bytes_0_7, low_nibble);
    q[1] = _mm256_and_si256(bytes_8_15, low_nibble);
    q[2] = _mm256_srli_epi32(bytes_0_7, 4);
    q[3] = _mm256_srli_epi32(bytes_8_15, 4);
}

/* A block's integers q as 4 × 8 int32 lanes, whatever the format: weights 0-7, 8-15,
 * 16-23, 24-31. */
static inline void block_ints_avx2(quant_type type, const uint8_t *block, __m256i q[4])
{
    if (type == Q8_0) {
        const int8_t *qs = ((const block_q8_0 *)block)->qs;
        for (int i = 0; i < 4; i++) q[i] = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 8 * i)));
    } else {
        unpack_nibbles_avx2(nibbles_of(type, block), q);
    }
}

/* The block's first four bytes as floats: (d, m, ·, ·) for Q4_1, (d, ·, ·, ·) for the others.
 * One load and one conversion for both of a Q4_1 block's scales. */
static inline __m128 block_scales_avx2(const uint8_t *block)
{
    int32_t bits;
    memcpy(&bits, block, sizeof bits);
    return _mm_cvtph_ps(_mm_cvtsi32_si128(bits));
}
#endif

#ifdef USE_AVX2
/* The two-row loops' last step, for one activation row: each row's 8 lanes summed, plus its
 * offset from (Σ d0 Σx, Σ m0 Σx, Σ d1 Σx, Σ m1 Σx): Σ m Σx (Q4_1), or -8 × Σ d Σx (Q4_0). */
static inline void finish_two_rows(quant_type type, __m256 acc0, __m256 acc1, __m128 offset01, float *out0,
                                   float *out1)
{
    const int lane = type == Q4_1 ? 1 : 0;
    const float factor = type == Q4_1 ? 1.0f : -8.0f;
    float lanes[4];
    _mm_storeu_ps(lanes, offset01);
    *out0 = hsum_avx2(acc0) + factor * lanes[lane];
    *out1 = hsum_avx2(acc1) + factor * lanes[2 + lane];
}
#endif

#ifdef USE_AVX512
/* Two rows in one 16-lane register: the AVX2 loops' 8-lane registers of row 0 in lanes 0-7
 * and of row 1 in lanes 8-15. A 16-lane FMA then does, lane by lane, exactly the arithmetic
 * of the two 8-lane FMAs it replaces, and half as many instructions go through the core.
 *
 * block_pair_floats: a block of each row as 4 such registers, register k holding weights
 * 8k … 8k + 7 of both (block_ints_avx2's q[k] of both, as floats). Q4_0 / Q4_1: the 8 low
 * nibble bytes of both rows zero-extended in one go, then masked and shifted; Q8_0: 8 bytes
 * of each row side by side, sign-extended. */
static inline void block_pair_floats_avx512(quant_type type, const uint8_t *block0, const uint8_t *block1,
                                            __m512 w[4])
{
    if (type == Q8_0) {
        const int8_t *qs0 = ((const block_q8_0 *)block0)->qs, *qs1 = ((const block_q8_0 *)block1)->qs;
        for (int k = 0; k < 4; k++) {
            const __m128i bytes = _mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i *)(qs0 + 8 * k)),
                                                     _mm_loadl_epi64((const __m128i *)(qs1 + 8 * k)));
            w[k] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes));
        }
        return;
    }
    const __m128i nibbles0 = _mm_loadu_si128((const __m128i *)nibbles_of(type, block0));
    const __m128i nibbles1 = _mm_loadu_si128((const __m128i *)nibbles_of(type, block1));
    const __m512i bytes_0_7 = _mm512_cvtepu8_epi32(_mm_unpacklo_epi64(nibbles0, nibbles1));
    const __m512i bytes_8_15 = _mm512_cvtepu8_epi32(_mm_unpackhi_epi64(nibbles0, nibbles1));
    const __m512i low_nibble = _mm512_set1_epi32(0x0F);
    w[0] = _mm512_cvtepi32_ps(_mm512_and_si512(bytes_0_7, low_nibble));
    w[1] = _mm512_cvtepi32_ps(_mm512_and_si512(bytes_8_15, low_nibble));
    w[2] = _mm512_cvtepi32_ps(_mm512_srli_epi32(bytes_0_7, 4));
    w[3] = _mm512_cvtepi32_ps(_mm512_srli_epi32(bytes_8_15, 4));
}

/* a in lanes 0-7, b in lanes 8-15 (the casts move no bits: AVX512F has the 4 × 64-bit forms) */
static inline __m512 join_halves_avx512(__m256 a, __m256 b)
{
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(a)), _mm256_castps_pd(b), 1));
}

/* x[0 … 7] in both halves. */
static inline __m512 load_8_twice_avx512(const float *x)
{
    return _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(_mm256_loadu_ps(x))));
}

static inline __m256 upper_half_avx512(__m512 v)
{
    return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
}

#define TWO_ROWS_MAX_X 8

/* Two Q4_0 / Q4_1 rows against n_x <= TWO_ROWS_MAX_X activation rows, x_stride floats apart
 * (their block sums sums_stride apart): out0[t · out_stride] and out1[t · out_stride] are
 * row0 and row1 times row t. One token's decode calls it with n_x = 1 (dot_two_rows), the
 * batched step with up to 8 (quant_rows_batch.h); the weights' blocks are unpacked once for
 * all n_x. Lane by lane dot_two_rows' AVX2 loop, both rows in one register. */
static inline __attribute__((always_inline)) void
dot_two_rows_avx512(quant_type type, const uint8_t *row0, const uint8_t *row1, const float *x,
                    int64_t x_stride, const float *x_sums, int64_t sums_stride, int64_t n_x,
                    int64_t n_blocks, int64_t ahead, float *out0, float *out1, int64_t out_stride)
{
    const int64_t block_bytes = BLOCK_BYTES[type];
    __m512 acc[TWO_ROWS_MAX_X];                   /* (Σ d0 · Σ q x | Σ d1 · Σ q x), per activation row */
    __m128 offset01[TWO_ROWS_MAX_X];              /* Σ (d0, m0, d1, m1) · Σ x, per activation row */
    for (int64_t t = 0; t < n_x; t++) {
        acc[t] = _mm512_setzero_ps();
        offset01[t] = _mm_setzero_ps();
    }
    for (int64_t b = 0; b < n_blocks; b++) {
        const uint8_t *block0 = row0 + b * block_bytes, *block1 = row1 + b * block_bytes;
        PREFETCH(block0 + ahead);
        PREFETCH(block1 + ahead);
        __m512 w[4];
        block_pair_floats_avx512(type, block0, block1, w);
        const __m128 scales0 = block_scales_avx2(block0), scales1 = block_scales_avx2(block1);
        const __m512 d01 = join_halves_avx512(_mm256_broadcastss_ps(scales0), _mm256_broadcastss_ps(scales1));
        const __m128 scales01 = _mm_movelh_ps(scales0, scales1);           /* (d0, m0, d1, m1) */
        for (int64_t t = 0; t < n_x; t++) {
            const float *xb = x + t * x_stride + b * QK;
            __m512 sum = _mm512_setzero_ps();
            for (int k = 0; k < 4; k++) sum = _mm512_fmadd_ps(w[k], load_8_twice_avx512(xb + 8 * k), sum);
            acc[t] = _mm512_fmadd_ps(d01, sum, acc[t]);
            offset01[t] = _mm_fmadd_ps(scales01, _mm_broadcast_ss(x_sums + t * sums_stride + b), offset01[t]);
        }
    }
    for (int64_t t = 0; t < n_x; t++)
        finish_two_rows(type, _mm512_castps512_ps256(acc[t]), upper_half_avx512(acc[t]), offset01[t],
                        out0 + t * out_stride, out1 + t * out_stride);
}
#endif

/* Σ_k q[k] x[k] over one block in plain C (q the stored integers, before any scale). */
static inline float dot_block(quant_type type, const uint8_t *block, const float *xb)
{
    float sum = 0.0f;
    if (type == Q8_0) {
        const int8_t *qs = ((const block_q8_0 *)block)->qs;
        for (int j = 0; j < QK; j++) sum += qs[j] * xb[j];
    } else {
        const uint8_t *qs = nibbles_of(type, block);
        for (int j = 0; j < QK / 2; j++) sum += (qs[j] & 0x0F) * xb[j] + (qs[j] >> 4) * xb[j + QK / 2];
    }
    return sum;
}

/* ---------------------------------------------------------------------------------------
 * dot_rows: Σ_k w[k] x[k] for each of a run of rows of n_blocks blocks, fp32 activations x.
 *
 * A block's weights are w = d·q + m (Q4_1), d·(q - 8) (Q4_0) or d·q (Q8_0), so its share
 * of the dot product factors as
 *
 *   Σ w x = d · Σ q x  +  m · Σ x        (Q4_0: m = -8 d;  Q8_0: m = 0)
 *
 * Σ x of each block (x_sums, see block_sums) is the same for every row: computed once per
 * activation row, it leaves one multiply by d per block instead of one per weight. The
 * integers q become floats in registers; nothing is written back.
 *
 * For 4-bit rows, turning integers into floats is most of the work (a Q4_1 matrix that fits
 * in L2 is multiplied no faster than one streamed from memory), so they go two rows at a
 * time: each x load serves both, the two rows' sums are independent chains the CPU can
 * overlap, and both of a Q4_1 block's scales come from one load and one conversion. Each
 * block asks for the same block of the next pair: that is where the loop goes next.
 * One row at a time against two: docs/benchmarks.md#decode-kernels. */

static inline void block_sums(float *x_sums, const float *x, int64_t n_blocks)
{
    for (int64_t b = 0; b < n_blocks; b++) {
        float sum = 0.0f;
        for (int j = 0; j < QK; j++) sum += x[b * QK + j];
        x_sums[b] = sum;
    }
}

/* out[0], out[1] = Q4_0 or Q4_1 rows row0, row1 times x, asking for memory `ahead` bytes
 * further on. Always inlined into dot_rows' switch, so each format gets its own loop with
 * no test inside. */
static inline __attribute__((always_inline)) void
dot_two_rows(quant_type type, const uint8_t *row0, const uint8_t *row1, const float *x,
             const float *x_sums, int64_t n_blocks, int64_t ahead, float out[2])
{
#if defined(USE_AVX512)       /* both rows in one register: the AVX2 loop below, lane by lane */
    dot_two_rows_avx512(type, row0, row1, x, 0, x_sums, 0, 1, n_blocks, ahead, &out[0], &out[1], 1);
#elif defined(USE_AVX2)
    const int64_t block_bytes = BLOCK_BYTES[type];
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();   /* Σ d · Σ q x, in 8 lanes */
    __m128 offset0 = _mm_setzero_ps(), offset1 = _mm_setzero_ps();   /* Σ (d, m, ·, ·) · Σ x */
    for (int64_t b = 0; b < n_blocks; b++) {
        const uint8_t *block0 = row0 + b * block_bytes, *block1 = row1 + b * block_bytes;
        PREFETCH(block0 + ahead);     /* the same block of the next pair of rows */
        PREFETCH(block1 + ahead);
        __m256i q0[4], q1[4];
        block_ints_avx2(type, block0, q0);
        block_ints_avx2(type, block1, q1);
        __m256 sum0 = _mm256_setzero_ps(), sum1 = _mm256_setzero_ps();  /* Σ q x of the block */
        for (int k = 0; k < 4; k++) {
            const __m256 xk = _mm256_loadu_ps(x + b * QK + 8 * k);
            sum0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q0[k]), xk, sum0);
            sum1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q1[k]), xk, sum1);
        }
        const __m128 scales0 = block_scales_avx2(block0), scales1 = block_scales_avx2(block1);
        acc0 = _mm256_fmadd_ps(_mm256_broadcastss_ps(scales0), sum0, acc0);
        acc1 = _mm256_fmadd_ps(_mm256_broadcastss_ps(scales1), sum1, acc1);
        const __m128 x_sum = _mm_broadcast_ss(x_sums + b);
        offset0 = _mm_fmadd_ps(scales0, x_sum, offset0);
        offset1 = _mm_fmadd_ps(scales1, x_sum, offset1);
    }
    finish_two_rows(type, acc0, acc1, _mm_movelh_ps(offset0, offset1), &out[0], &out[1]);
#else
    const int64_t block_bytes = BLOCK_BYTES[type];
    float acc0 = 0.0f, acc1 = 0.0f, offset0 = 0.0f, offset1 = 0.0f;
    for (int64_t b = 0; b < n_blocks; b++) {
        const uint8_t *block0 = row0 + b * block_bytes, *block1 = row1 + b * block_bytes;
        const float d0 = block_scale(block0), d1 = block_scale(block1);
        acc0 += d0 * dot_block(type, block0, x + b * QK);
        acc1 += d1 * dot_block(type, block1, x + b * QK);
        if (type == Q4_1) {
            offset0 += fp16_to_fp32(((const block_q4_1 *)block0)->m) * x_sums[b];
            offset1 += fp16_to_fp32(((const block_q4_1 *)block1)->m) * x_sums[b];
        } else {
            offset0 -= 8.0f * d0 * x_sums[b];
            offset1 -= 8.0f * d1 * x_sums[b];
        }
    }
    out[0] = acc0 + offset0;
    out[1] = acc1 + offset1;
#endif
}

/* One Q8_0 row times x. Q8_0 (the output head) reads 34 bytes a block, and from memory
 * one row at a time measured faster than two (docs/benchmarks.md#decode-kernels): the
 * stream is the limit, not the arithmetic. */
static inline float dot_row_q8_0(const uint8_t *row, const float *x, int64_t n_blocks)
{
#ifdef USE_AVX2
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < n_blocks; b++) {
        const uint8_t *block = row + b * sizeof(block_q8_0);
        PREFETCH(block + PREFETCH_BYTES);
        __m256i q[4];
        block_ints_avx2(Q8_0, block, q);
        const float *xb = x + b * QK;
        const __m256 sum = _mm256_add_ps(   /* two chains of two products */
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(q[1]), _mm256_loadu_ps(xb + 8),
                            _mm256_mul_ps(_mm256_cvtepi32_ps(q[0]), _mm256_loadu_ps(xb))),
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(q[3]), _mm256_loadu_ps(xb + 24),
                            _mm256_mul_ps(_mm256_cvtepi32_ps(q[2]), _mm256_loadu_ps(xb + 16))));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(block_scale(block)), sum, acc);
    }
    return hsum_avx2(acc);
#else
    float acc = 0.0f;
    for (int64_t b = 0; b < n_blocks; b++) {
        const uint8_t *block = row + b * sizeof(block_q8_0);
        acc += block_scale(block) * dot_block(Q8_0, block, x + b * QK);
    }
    return acc;
#endif
}

/* out[i] = row i of the n_rows consecutive rows at `rows` times x, for i < n_rows: Q4_0 and
 * Q4_1 two rows at a time (an odd last row is paired with itself), Q8_0 one. */
static inline __attribute__((always_inline)) void
dot_rows_of(quant_type type, const uint8_t *rows, int64_t n_rows, const float *x,
            const float *x_sums, int64_t n_blocks, float *out)
{
    const int64_t row_bytes = n_blocks * BLOCK_BYTES[type];
    if (type == Q8_0) {
        for (int64_t i = 0; i < n_rows; i++) out[i] = dot_row_q8_0(rows + i * row_bytes, x, n_blocks);
        return;
    }
    for (int64_t i = 0; i < n_rows; i += 2) {
        float pair[2];
        const int64_t second = i + 1 < n_rows ? i + 1 : i;
        dot_two_rows(type, rows + i * row_bytes, rows + second * row_bytes, x, x_sums, n_blocks,
                     2 * row_bytes, pair);
        out[i] = pair[0];
        if (second != i) out[second] = pair[1];
    }
}

/* One dot product of two fp32 rows of length n (a multiple of 32): fp32 weights in the fused
 * decode step. Four accumulators, so that consecutive FMAs do not wait for each other. */
static inline float dot_f32(const float *a, const float *b, int64_t n)
{
#ifdef USE_AVX2
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t k = 0; k < n; k += 32)
        for (int i = 0; i < 4; i++)
            acc[i] = _mm256_fmadd_ps(_mm256_loadu_ps(a + k + 8 * i), _mm256_loadu_ps(b + k + 8 * i), acc[i]);
    return hsum_avx2(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
#else
    float sum = 0.0f;
    for (int64_t k = 0; k < n; k++) sum += a[k] * b[k];
    return sum;
#endif
}

/* =======================================================================================
 * Optional: int8 activations — llama.cpp's arithmetic (ggml_vec_dot_q4_1_q8_1 and kin).
 * NumPy reference: llama_np.quant.quant_matmul_int8.
 *
 * Quantize every 32-block of an activation row the Q8_0 way, dx = max|x| / 127 and
 * qx = round(x / dx), and keep sx = dx · Σ qx. A block's dot product then needs integer
 * products only, and one scale multiply:
 *
 *   Q8_0   Σ (dw qw)(dx qx)       = dw dx · Σ qw qx
 *   Q4_1   Σ (dw qw + m)(dx qx)   = dw dx · Σ qw qx + m · sx
 *   Q4_0   Σ dw (qw - 8)(dx qx)   = dw dx · Σ qw qx - 8 dw · sx
 *
 * AVX2 multiplies 32 byte pairs and adds neighbours in one instruction (maddubs: unsigned
 * bytes × signed bytes → 16 int16; VNNI's dpbusd goes on to int32 sums of four), which is
 * why llama.cpp is fast. The price: each
 * activation is rounded to 8 bits, an error of up to dx/2, i.e. of up to 1/254 of the
 * block's largest |x| — on top of the 4-bit weights' error (see quant_matmul_int8).
 * llama.cpp stores dx and sx as fp16 (block_q8_1); this scratch keeps them in fp32.
 */
typedef struct { float d, s; int8_t qs[QK]; } block_q8_act;  /* dx, sx = dx Σ qx, qx */

static inline void quantize_activations(block_q8_act *blocks, const float *x, int64_t n_blocks)
{
    for (int64_t b = 0; b < n_blocks; b++) {
        const float *xb = x + b * QK;  /* [32] */
        float amax = 0.0f;
        for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(xb[j]));
        const float d = amax / 127.0f;
        const float inv_d = d != 0.0f ? 1.0f / d : 0.0f;
        int32_t sum = 0;
        for (int j = 0; j < QK; j++) {
            const int32_t q = (int32_t)nearbyintf(xb[j] * inv_d);  /* round half to even */
            blocks[b].qs[j] = (int8_t)q;
            sum += q;
        }
        blocks[b].d = d;
        blocks[b].s = d * (float)sum;
    }
}

#ifdef USE_AVX2
/* Σ qw·qx over a block as 8 int32 partial sums, qw = 32 nibbles (0..15), qx signed bytes.
 * Low nibbles are weights 0-15, high nibbles 16-31: the two halves of one 256-bit register
 * line up with qx[0..15] and qx[16..31]. */
static inline __m256i dot_nibbles_int8_avx2(const uint8_t qs[QK / 2], const int8_t qx[QK])
{
    const __m128i packed = _mm_loadu_si128((const __m128i *)qs);
    const __m128i low_nibble = _mm_set1_epi8(0x0F);
    const __m256i qw = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(packed, 4), low_nibble),
                                        _mm_and_si128(packed, low_nibble));
    return dot_bytes_avx2(qw, _mm256_loadu_si256((const __m256i *)qx));
}

/* The same for signed qw: maddubs wants its first operand unsigned, so move the sign of
 * qw onto qx (|qw| · sign(qw) qx = qw qx). */
static inline __m256i dot_int8_int8_avx2(const int8_t qw[QK], const int8_t qx[QK])
{
    const __m256i w = _mm256_loadu_si256((const __m256i *)qw);
    const __m256i xv = _mm256_loadu_si256((const __m256i *)qx);
    return dot_bytes_avx2(_mm256_sign_epi8(w, w), _mm256_sign_epi8(xv, w));
}
#endif

/* Σ qw·qx over one block, in plain C. */
static inline int32_t dot_block_int8(quant_type type, const uint8_t *block, const int8_t qx[QK])
{
    int32_t sum = 0;
    if (type == Q8_0) {
        const int8_t *qw = ((const block_q8_0 *)block)->qs;
        for (int j = 0; j < QK; j++) sum += qw[j] * qx[j];
    } else {
        const uint8_t *qs = nibbles_of(type, block);
        for (int j = 0; j < QK / 2; j++) sum += (qs[j] & 0x0F) * qx[j] + (qs[j] >> 4) * qx[j + QK / 2];
    }
    return sum;
}

/* Σ_k w[k] x[k] for one weight row against one quantized activation row. Always inlined
 * into dot_row_int8's switch, so each format gets its own loop with no test inside. */
static inline __attribute__((always_inline)) float
dot_row_int8_of(quant_type type, const uint8_t *row, const block_q8_act *xq, int64_t n_blocks)
{
    float offset = 0.0f;  /* Σ over blocks of m · sx (Q4_1) or -8 dw · sx (Q4_0) */
#ifdef USE_AVX2
    __m256 acc = _mm256_setzero_ps();
#else
    float acc = 0.0f;
#endif
    for (int64_t b = 0; b < n_blocks; b++) {
        const uint8_t *block = row + b * BLOCK_BYTES[type];
        PREFETCH(block + PREFETCH_BYTES);
        const float dw = block_scale(block);
        if (type == Q4_0) offset -= 8.0f * dw * xq[b].s;
        if (type == Q4_1) offset += fp16_to_fp32(((const block_q4_1 *)block)->m) * xq[b].s;
#ifdef USE_AVX2
        const __m256i sums = type == Q8_0
            ? dot_int8_int8_avx2(((const block_q8_0 *)block)->qs, xq[b].qs)
            : dot_nibbles_int8_avx2(nibbles_of(type, block), xq[b].qs);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dw * xq[b].d), _mm256_cvtepi32_ps(sums), acc);
#else
        acc += dw * xq[b].d * (float)dot_block_int8(type, block, xq[b].qs);
#endif
    }
#ifdef USE_AVX2
    return hsum_avx2(acc) + offset;
#else
    return acc + offset;
#endif
}

/* =======================================================================================
 * Which loop each format runs: Q4_0, Q4_1 and Q8_0 the loops above; Q5_0, Q5_1 and the
 * K-quants those of internal/piece_rows.h (32 weights decoded at a time). n_blocks counts
 * the format's own blocks (256 weights for a K-quant); x_sums, the Σ x of every 32 weights,
 * only Q4_0 and Q4_1 read. */
#include "piece_rows.h"

static inline void dot_rows(quant_type type, const uint8_t *rows, int64_t n_rows, const float *x,
                            const float *x_sums, int64_t n_blocks, float *out)
{
    switch (type) {
    case Q4_0: dot_rows_of(Q4_0, rows, n_rows, x, x_sums, n_blocks, out); break;
    case Q4_1: dot_rows_of(Q4_1, rows, n_rows, x, x_sums, n_blocks, out); break;
    case Q8_0: dot_rows_of(Q8_0, rows, n_rows, x, x_sums, n_blocks, out); break;
    default:   dot_rows_pieces(type, rows, n_rows, x, x_sums, n_blocks, out);
    }
}

static inline float dot_row_int8(quant_type type, const uint8_t *row, const block_q8_act *xq, int64_t n_blocks)
{
    switch (type) {
    case Q4_0: return dot_row_int8_of(Q4_0, row, xq, n_blocks);
    case Q4_1: return dot_row_int8_of(Q4_1, row, xq, n_blocks);
    case Q8_0: return dot_row_int8_of(Q8_0, row, xq, n_blocks);
    default:   return dot_row_pieces_int8(type, row, xq, n_blocks);
    }
}

#endif
