/* Rows of the piece formats (Q5_0, Q5_1, Q2_K … Q6_K; internal/block_pieces.h) against
 * activation rows: the dot products of the one-row product (decode), the batched one (B
 * sequences, one token each), the decoded tiles of the GEMM (prefill), and llama.cpp-style
 * int8 activations. Included by internal/quant_rows.h, whose PREFETCH and int8 activation
 * blocks (block_q8_act) it uses, and whose dispatchers (dot_rows, dot_row_int8) and those of
 * internal/quant_rows_batch.h send these formats here; not to be included on its own.
 *
 * With SIMD, a piece whose 32 weights share one scale and offset (Q5_0, Q5_1, Q4_K, Q5_K)
 * factors them out, as dot_two_rows does for Q4_0 / Q4_1:
 *
 *   Σ w x = d · Σ q x  +  m · Σ x            (Σ x of every 32 activations: x_sums)
 *
 * its integers q become floats once (piece_ints), and each activation row costs the
 * products q ⊙ x summed into one register, one FMA by d and one scalar FMA for the offset.
 * A Q2_K, Q3_K or Q6_K piece has two scales, one per 16 weights, so it is decoded into fp32 weights once,
 * w = d_h · q + m_h (piece_weights), and each activation row costs one FMA per register —
 * factoring would save nothing there. Plain C decodes every format.
 *
 * The one-row product takes two weight rows a call (n_w = 2, n_x = 1: two independent FMA
 * chains), the batch one one weight row against up to BATCH_GROUP activation rows
 * (n_w = 1): for every (weight row, activation row) the same products in the same order
 * into the same lanes, so a batched row equals the one-row product bit for bit
 * (tests/test_serve_batch.py).
 *
 * Registers: AVX-512 holds a piece's 32 weights in 2 registers of 16 lanes, AVX2 in 4 of 8,
 * plain C in an array of 32 (the accumulators likewise). NumPy reference: the weights of
 * gguf.quants.dequantize times x (tests/test_piece_kernels.py).
 */
#ifndef LLAMA_NP_PIECE_ROWS_H
#define LLAMA_NP_PIECE_ROWS_H

#include "block_pieces.h"

#define PIECE_ACCUMULATORS 8   /* n_w · n_x of one call: BATCH_GROUP activation rows, or 2 × 1 */
#define CACHE_LINE 64

#if defined(USE_AVX512)
typedef struct { __m512 v[2]; } piece_f32;      /* 32 floats: weights 0-15, 16-31 */
#elif defined(USE_AVX2)
typedef struct { __m256 v[4]; } piece_f32;      /* weights 0-7, 8-15, 16-23, 24-31 */
#else
typedef struct { float v[PIECE]; } piece_f32;
#endif

/* Whether a format's pieces have one scale and offset for all 32 weights (see above). */
static inline int piece_uniform(weight_format type)
{
    return type != Q6_K && type != Q2_K && type != Q3_K;
}

/* a · b + c for the scalar sums beside the registers: one rounding where the CPU has FMA,
 * written out so that no context contracts it differently (the batched rows must equal the
 * one-row product bit for bit, and -ffp-contract=fast fuses a * b + c where it sees fit). */
static inline float mul_add(float a, float b, float c)
{
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
    return __builtin_fmaf(a, b, c);
#else
    return a * b + c;
#endif
}

/* Piece j of a block as fp32 weights, its block's scales s already unpacked. */
static inline __attribute__((always_inline)) piece_f32
piece_weights(weight_format type, const uint8_t *block, int j, const piece_scales *s)
{
    const float d0 = s->d[2 * j], d1 = s->d[2 * j + 1], m0 = s->m[2 * j], m1 = s->m[2 * j + 1];
    piece_f32 w;
#if defined(USE_AVX512)
    __m512i q[2];
    block_piece_ints_avx512(type, block, j, q);
    w.v[0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q[0]), _mm512_set1_ps(d0), _mm512_set1_ps(m0));
    w.v[1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q[1]), _mm512_set1_ps(d1), _mm512_set1_ps(m1));
#elif defined(USE_AVX2)
    const __m256i q = block_piece_q(type, block, j);
    const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    const __m128i eighths[4] = {lo, _mm_unpackhi_epi64(lo, lo), hi, _mm_unpackhi_epi64(hi, hi)};
    for (int i = 0; i < 4; i++)
        w.v[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(eighths[i])),
                                 _mm256_set1_ps(i < 2 ? d0 : d1), _mm256_set1_ps(i < 2 ? m0 : m1));
#else
    uint8_t q[PIECE];
    block_piece_q(type, block, j, q);
    for (int l = 0; l < PIECE; l++) w.v[l] = mul_add(l < PIECE / 2 ? d0 : d1, (float)q[l], l < PIECE / 2 ? m0 : m1);
#endif
    return w;
}

#ifdef USE_AVX2
/* Piece j's integers q as floats (no scale), in the registers of a decoded piece. */
static inline __attribute__((always_inline)) piece_f32 piece_ints(weight_format type, const uint8_t *block, int j)
{
    piece_f32 q;
#if defined(USE_AVX512)
    __m512i ints[2];
    block_piece_ints_avx512(type, block, j, ints);
    for (int i = 0; i < 2; i++) q.v[i] = _mm512_cvtepi32_ps(ints[i]);
#else
    const __m256i bytes = block_piece_q(type, block, j);
    const __m128i lo = _mm256_castsi256_si128(bytes), hi = _mm256_extracti128_si256(bytes, 1);
    const __m128i eighths[4] = {lo, _mm_unpackhi_epi64(lo, lo), hi, _mm_unpackhi_epi64(hi, hi)};
    for (int i = 0; i < 4; i++) q.v[i] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(eighths[i]));
#endif
    return q;
}

/* acc.v[0] += d · (q ⊙ x summed over the piece's registers), lane by lane. */
static inline __attribute__((always_inline)) void
piece_scaled_dot(piece_f32 *acc, const piece_f32 *q, const float *x, float d)
{
#if defined(USE_AVX512)
    const __m512 sum = _mm512_fmadd_ps(q->v[1], _mm512_loadu_ps(x + 16), _mm512_mul_ps(q->v[0], _mm512_loadu_ps(x)));
    acc->v[0] = _mm512_fmadd_ps(sum, _mm512_set1_ps(d), acc->v[0]);
#else
    const __m256 sum = _mm256_add_ps(   /* two chains of two products */
        _mm256_fmadd_ps(q->v[1], _mm256_loadu_ps(x + 8), _mm256_mul_ps(q->v[0], _mm256_loadu_ps(x))),
        _mm256_fmadd_ps(q->v[3], _mm256_loadu_ps(x + 24), _mm256_mul_ps(q->v[2], _mm256_loadu_ps(x + 16))));
    acc->v[0] = _mm256_fmadd_ps(sum, _mm256_set1_ps(d), acc->v[0]);
#endif
}
#endif

static inline void piece_zero(piece_f32 *acc)
{
    memset(acc, 0, sizeof *acc);
}

/* acc += w ⊙ x[0..31] */
static inline __attribute__((always_inline)) void piece_fma(piece_f32 *acc, const piece_f32 *w, const float *x)
{
#if defined(USE_AVX512)
    for (int i = 0; i < 2; i++) acc->v[i] = _mm512_fmadd_ps(w->v[i], _mm512_loadu_ps(x + 16 * i), acc->v[i]);
#elif defined(USE_AVX2)
    for (int i = 0; i < 4; i++) acc->v[i] = _mm256_fmadd_ps(w->v[i], _mm256_loadu_ps(x + 8 * i), acc->v[i]);
#else
    for (int l = 0; l < PIECE; l++) acc->v[l] = mul_add(w->v[l], x[l], acc->v[l]);
#endif
}

static inline float piece_sum(const piece_f32 *acc)
{
#if defined(USE_AVX512)
    return _mm512_reduce_add_ps(_mm512_add_ps(acc->v[0], acc->v[1]));
#elif defined(USE_AVX2)
    return hsum_avx2(_mm256_add_ps(_mm256_add_ps(acc->v[0], acc->v[1]), _mm256_add_ps(acc->v[2], acc->v[3])));
#else
    float sum = 0.0f;
    for (int l = 0; l < PIECE; l++) sum += acc->v[l];
    return sum;
#endif
}

static inline void piece_store(float *dst, const piece_f32 *w)
{
#if defined(USE_AVX512)
    for (int i = 0; i < 2; i++) _mm512_storeu_ps(dst + 16 * i, w->v[i]);
#elif defined(USE_AVX2)
    for (int i = 0; i < 4; i++) _mm256_storeu_ps(dst + 8 * i, w->v[i]);
#else
    memcpy(dst, w->v, sizeof w->v);
#endif
}

/* Ask for the block `ahead` bytes past this one, every cache line of it. Always inlined:
 * GCC takes a function that only prefetches for one without effects, and drops its calls. */
static inline __attribute__((always_inline)) void prefetch_block(const uint8_t *block, int64_t block_bytes,
                                                                 int64_t ahead)
{
    for (int64_t o = 0; o < block_bytes; o += CACHE_LINE) PREFETCH(block + ahead + o);
}

/* ---------------------------------------------------------------------------------------
 * fp32 activations. out[r + t · out_stride] = row r · x_t for the n_w rows from row0 (each
 * row_bytes long) and the n_x activation rows x_t = x + t · x_stride, whose Σ x of every 32
 * are x_sums + t · sums_stride; n_w · n_x at most PIECE_ACCUMULATORS. Always inlined into a
 * switch, so each format gets its own loop. */
static inline __attribute__((always_inline)) void
dot_pieces_of(weight_format type, const uint8_t *row0, int64_t row_bytes, int n_w, const float *x,
              int64_t x_stride, const float *x_sums, int64_t sums_stride, int64_t n_x, int64_t n_blocks,
              int64_t ahead, float *out, int64_t out_stride)
{
    const int64_t block_bytes = BLOCK_BYTES[type];
    const int n_pieces = pieces_per_block(type);
#ifdef USE_AVX2
    const int factored = piece_uniform(type);
#else
    const int factored = 0;
#endif
    piece_f32 acc[PIECE_ACCUMULATORS];                   /* [n_w, n_x] */
    float offset[PIECE_ACCUMULATORS];                    /* Σ m · Σ x (factored pieces) */
    for (int64_t i = 0; i < n_w * n_x; i++) piece_zero(&acc[i]), offset[i] = 0.0f;
    for (int64_t b = 0; b < n_blocks; b++) {
        piece_scales s[2];
        for (int r = 0; r < n_w; r++) {
            const uint8_t *block = row0 + r * row_bytes + b * block_bytes;
            prefetch_block(block, block_bytes, ahead);
            block_piece_scales(type, block, &s[r]);
        }
        _Pragma("GCC unroll 8")            /* j a constant in each copy: shifts, offsets, shared loads */
        for (int j = 0; j < n_pieces; j++) {
            const int64_t at = (b * n_pieces + j) * PIECE;   /* the piece's first weight */
            for (int r = 0; r < n_w; r++) {
                const uint8_t *block = row0 + r * row_bytes + b * block_bytes;
#ifdef USE_AVX2
                if (factored) {
                    const piece_f32 q = piece_ints(type, block, j);
                    const float d = s[r].d[2 * j], m = s[r].m[2 * j];
                    for (int64_t t = 0; t < n_x; t++) {
                        piece_scaled_dot(&acc[r * n_x + t], &q, x + t * x_stride + at, d);
                        offset[r * n_x + t] = mul_add(m, x_sums[t * sums_stride + at / PIECE], offset[r * n_x + t]);
                    }
                    continue;
                }
#endif
                const piece_f32 w = piece_weights(type, block, j, &s[r]);
                for (int64_t t = 0; t < n_x; t++) piece_fma(&acc[r * n_x + t], &w, x + t * x_stride + at);
            }
        }
    }
    for (int r = 0; r < n_w; r++)
        for (int64_t t = 0; t < n_x; t++) {
            const int64_t i = r * n_x + t;
            out[r + t * out_stride] = factored ? piece_sum(&acc[i]) + offset[i] : piece_sum(&acc[i]);
        }
}

#define PIECE_FORMAT_SWITCH(type, call)                      \
    switch (type) {                                          \
    case Q5_0: call(Q5_0); break;                            \
    case Q5_1: call(Q5_1); break;                            \
    case Q4_K: call(Q4_K); break;                            \
    case Q5_K: call(Q5_K); break;                            \
    case Q2_K: call(Q2_K); break;                            \
    case Q3_K: call(Q3_K); break;                            \
    default:   call(Q6_K);                                   \
    }

/* out[i] = row i · x for the n_rows rows at `rows`: two rows a call (an odd last one alone),
 * each asking for the same block of the next pair. */
static inline void dot_rows_pieces(weight_format type, const uint8_t *rows, int64_t n_rows, const float *x,
                                   const float *x_sums, int64_t n_blocks, float *out)
{
    const int64_t row_bytes = n_blocks * BLOCK_BYTES[type];
    for (int64_t i = 0; i < n_rows; i += 2) {
        /* n_w a constant in each call, so that the loops over the two rows unroll */
#define CALL(T) if (i + 1 < n_rows) \
                    dot_pieces_of(T, rows + i * row_bytes, row_bytes, 2, x, 0, x_sums, 0, 1, n_blocks, 2 * row_bytes, \
                                  out + i, 0); \
                else dot_pieces_of(T, rows + i * row_bytes, row_bytes, 1, x, 0, x_sums, 0, 1, n_blocks, 2 * row_bytes, \
                                   out + i, 0)
        PIECE_FORMAT_SWITCH(type, CALL)
#undef CALL
    }
}

/* out[t · out_stride + i] = row i · (x + t · x_stride), i < n_rows, t < n_x: each row once
 * against BATCH_GROUP activation rows at a time. */
static inline void dot_rows_pieces_batch(weight_format type, const uint8_t *rows, int64_t n_rows,
                                         const float *x, int64_t x_stride, const float *x_sums,
                                         int64_t sums_stride, int64_t n_x, int64_t n_blocks,
                                         float *out, int64_t out_stride)
{
    const int64_t row_bytes = n_blocks * BLOCK_BYTES[type];
    for (int64_t t0 = 0; t0 < n_x; t0 += PIECE_ACCUMULATORS) {
        const int64_t n = n_x - t0 < PIECE_ACCUMULATORS ? n_x - t0 : PIECE_ACCUMULATORS;
        for (int64_t i = 0; i < n_rows; i++) {
#define CALL(T) dot_pieces_of(T, rows + i * row_bytes, row_bytes, 1, x + t0 * x_stride, x_stride, \
                              x_sums + t0 * sums_stride, sums_stride, n, n_blocks, PREFETCH_BYTES, \
                              out + t0 * out_stride + i, out_stride)
            PIECE_FORMAT_SWITCH(type, CALL)
#undef CALL
        }
    }
}

/* A row of n_blocks blocks as fp32 weights w [n_blocks · block weights] (the GEMM's tiles). */
static inline __attribute__((always_inline)) void
decode_row_pieces_of(weight_format type, float *w, const uint8_t *row, int64_t n_blocks)
{
    const int n_pieces = pieces_per_block(type);
    for (int64_t b = 0; b < n_blocks; b++) {
        const uint8_t *block = row + b * BLOCK_BYTES[type];
        piece_scales s;
        block_piece_scales(type, block, &s);
        _Pragma("GCC unroll 8")            /* j a constant in each copy: shifts, offsets, shared loads */
        for (int j = 0; j < n_pieces; j++) {
            const piece_f32 piece = piece_weights(type, block, j, &s);
            piece_store(w + (b * n_pieces + j) * PIECE, &piece);
        }
    }
}

static inline void decode_row_pieces(weight_format type, float *w, const uint8_t *row, int64_t n_blocks)
{
#define CALL(T) decode_row_pieces_of(T, w, row, n_blocks)
    PIECE_FORMAT_SWITCH(type, CALL)
#undef CALL
}

/* ---------------------------------------------------------------------------------------
 * int8 activations (llama.cpp's arithmetic; quant_rows.h's int8 section): each 32-weight
 * activation block (dx, sx = dx Σ qx, qx) meets one piece, whose halves h have scale d_h.
 * With q' = q - piece_int_offset (Q6_K, Q3_K: the offset as an integer; then m' = 0) or
 * q' = q and m' = m (one offset for the whole piece: Q5_0, Q5_1, Q4_K, Q5_K),
 *
 *   Σ w x  =  dx · (d_0 Σ_{l<16} q' qx  +  d_1 Σ_{l>=16} q' qx)  +  m' · sx
 *
 * Q2_K's offsets are floats of their own for each half: for it the halves' Σ qx are summed
 * too (the same integer dot, with ones for q), and dx · (m_0 Σ_{l<16} qx + m_1 Σ_{l>=16} qx)
 * takes the place of m' · sx.
 *
 * The integer sums: maddubs (unsigned × signed bytes, pairs added) wants its first operand
 * unsigned, so where q' can be negative (Q6_K, Q3_K) |q'| goes first and the sign of q' moves
 * onto qx; no pair can saturate (|q'| <= 32, |qx| <= 127): dot_bytes_avx2 (simd.h), one
 * dpbusd with VNNI, the same integer result either way. Eight int32 lanes: lanes 0-3 hold half 0's sums, 4-7 half 1's.
 * These are 32-weight activation blocks for every format, the K-quants included (llama.cpp
 * rounds their activations per 256 instead, as Q8_K: one scale for the super-block). */

/* out[r + t · out_stride] = row r · activation row t (xq + t · xq_stride), as dot_pieces_of. */
static inline __attribute__((always_inline)) void
dot_pieces_int8_of(weight_format type, const uint8_t *row0, int64_t row_bytes, int n_w, const block_q8_act *xq,
                   int64_t xq_stride, int64_t n_x, int64_t n_blocks, int64_t ahead, float *out, int64_t out_stride)
{
    const int64_t block_bytes = BLOCK_BYTES[type];
    const int n_pieces = pieces_per_block(type);
    float offset[PIECE_ACCUMULATORS];                    /* Σ m · sx */
#ifdef USE_AVX2
    __m256 acc[PIECE_ACCUMULATORS];
    for (int64_t i = 0; i < n_w * n_x; i++) acc[i] = _mm256_setzero_ps(), offset[i] = 0.0f;
#else
    float acc[PIECE_ACCUMULATORS];
    for (int64_t i = 0; i < n_w * n_x; i++) acc[i] = 0.0f, offset[i] = 0.0f;
#endif
    for (int64_t b = 0; b < n_blocks; b++) {
        piece_scales s[2];
        for (int r = 0; r < n_w; r++) {
            const uint8_t *block = row0 + r * row_bytes + b * block_bytes;
            prefetch_block(block, block_bytes, ahead);
            block_piece_scales(type, block, &s[r]);
        }
        _Pragma("GCC unroll 8")            /* j a constant in each copy: shifts, offsets, shared loads */
        for (int j = 0; j < n_pieces; j++) {
            for (int r = 0; r < n_w; r++) {
                const uint8_t *block = row0 + r * row_bytes + b * block_bytes;
                const int q_offset = piece_int_offset(type), half_offsets = type == Q2_K;
                const float d0 = s[r].d[2 * j], d1 = s[r].d[2 * j + 1];
                const float m = q_offset || half_offsets ? 0.0f : s[r].m[2 * j];
                const float m0 = s[r].m[2 * j], m1 = s[r].m[2 * j + 1];
#ifdef USE_AVX2
                const __m256i q = q_offset ? _mm256_sub_epi8(block_piece_q(type, block, j), _mm256_set1_epi8((char)q_offset))
                                           : block_piece_q(type, block, j);
                const __m256i abs_q = q_offset ? _mm256_sign_epi8(q, q) : q;
                const __m256 halves = piece_uniform(type) ? _mm256_set1_ps(d0)
                                    : _mm256_set_m128(_mm_set1_ps(d1), _mm_set1_ps(d0));  /* lanes 0-3: d0 */
                const __m256 half_mins = _mm256_set_m128(_mm_set1_ps(m1), _mm_set1_ps(m0));
#else
                uint8_t stored[PIECE];
                int q[PIECE];
                block_piece_q(type, block, j, stored);
                for (int l = 0; l < PIECE; l++) q[l] = stored[l] - q_offset;
#endif
                for (int64_t t = 0; t < n_x; t++) {
                    const block_q8_act *xb = xq + t * xq_stride + b * n_pieces + j;
                    const int64_t i = r * n_x + t;
                    offset[i] = mul_add(m, xb->s, offset[i]);
#ifdef USE_AVX2
                    const __m256i raw_qx = _mm256_loadu_si256((const __m256i *)xb->qs);
                    const __m256i signed_qx = q_offset ? _mm256_sign_epi8(raw_qx, q) : raw_qx;
                    const __m256 sums = _mm256_cvtepi32_ps(dot_bytes_avx2(abs_q, signed_qx));
                    const __m256 dx = _mm256_set1_ps(xb->d);
                    acc[i] = _mm256_fmadd_ps(sums, _mm256_mul_ps(halves, dx), acc[i]);
                    if (half_offsets) {
                        const __m256 x_sums = _mm256_cvtepi32_ps(dot_bytes_avx2(_mm256_set1_epi8(1), raw_qx));
                        acc[i] = _mm256_fmadd_ps(x_sums, _mm256_mul_ps(half_mins, dx), acc[i]);
                    }
#else
                    int32_t sum0 = 0, sum1 = 0, x_sum0 = 0, x_sum1 = 0;
                    for (int l = 0; l < PIECE / 2; l++) {
                        sum0 += q[l] * xb->qs[l], sum1 += q[l + 16] * xb->qs[l + 16];
                        x_sum0 += xb->qs[l], x_sum1 += xb->qs[l + 16];
                    }
                    acc[i] = mul_add(xb->d, mul_add(d0, (float)sum0, d1 * (float)sum1), acc[i]);
                    if (half_offsets) acc[i] = mul_add(xb->d, mul_add(m0, (float)x_sum0, m1 * (float)x_sum1), acc[i]);
#endif
                }
            }
        }
    }
    for (int r = 0; r < n_w; r++)
        for (int64_t t = 0; t < n_x; t++) {
            const int64_t i = r * n_x + t;
#ifdef USE_AVX2
            out[r + t * out_stride] = hsum_avx2(acc[i]) + offset[i];
#else
            out[r + t * out_stride] = acc[i] + offset[i];
#endif
        }
}

/* One row against one quantized activation row. */
static inline float dot_row_pieces_int8(weight_format type, const uint8_t *row, const block_q8_act *xq,
                                        int64_t n_blocks)
{
    float out;
#define CALL(T) dot_pieces_int8_of(T, row, 0, 1, xq, 0, 1, n_blocks, PREFETCH_BYTES, &out, 0)
    PIECE_FORMAT_SWITCH(type, CALL)
#undef CALL
    return out;
}

/* out[t · out_stride + i] = row i · activation row t, i < n_rows, t < n_x (dot_row_pieces_int8 for each). */
static inline void dot_rows_pieces_int8_batch(weight_format type, const uint8_t *rows, int64_t n_rows,
                                              const block_q8_act *xq, int64_t xq_stride, int64_t n_x,
                                              int64_t n_blocks, float *out, int64_t out_stride)
{
    const int64_t row_bytes = n_blocks * BLOCK_BYTES[type];
    for (int64_t t0 = 0; t0 < n_x; t0 += PIECE_ACCUMULATORS) {
        const int64_t n = n_x - t0 < PIECE_ACCUMULATORS ? n_x - t0 : PIECE_ACCUMULATORS;
        for (int64_t i = 0; i < n_rows; i++) {
#define CALL(T) dot_pieces_int8_of(T, rows + i * row_bytes, row_bytes, 1, xq + t0 * xq_stride, xq_stride, n, \
                                   n_blocks, PREFETCH_BYTES, out + t0 * out_stride + i, out_stride)
            PIECE_FORMAT_SWITCH(type, CALL)
#undef CALL
        }
    }
}

#endif
