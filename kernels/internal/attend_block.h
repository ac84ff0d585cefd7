/* Attention a block of keys at a time, with partial softmaxes merged afterwards: the body
 * of attention.c (a prompt, in tiles) and decode_layer.c (one new token, split over
 * threads). NumPy reference: llama_np.ops.attention_forward, the textbook form; notebook 01
 * shows the identity used here.
 *
 * The keys a query sees are cut into blocks of KEY_BLOCK positions (block b holds
 * positions b·KEY_BLOCK …). Over one block a query row keeps its partial softmax
 *
 *   m_b = max_s z_s,   l_b = Σ_s e^(z_s - m_b),   o_b = Σ_s e^(z_s - m_b) v_s,   z_s = q·k_s / √hd
 *
 * and two partials merge exactly (softmax_merge) into those of the union:
 *
 *   m = max(m_1, m_2),   l = l_1 e^(m_1 - m) + l_2 e^(m_2 - m),   o = o_1 e^(m_1 - m) + o_2 e^(m_2 - m)
 *
 * with out = o / l at the end. Each factor e^(m_i - m) is ≤ 1, so nothing overflows however
 * far apart the scores of two blocks are; a block far below the other simply weighs 0.
 * A prompt's tile of queries folds its blocks in one after the other (the flash-attention
 * loop: a block's keys and values are read once for all queries of the tile and stay in
 * cache meanwhile); a decoding step computes the blocks of every key/value head in
 * parallel and merges them in the same order. Either way the result depends only on where
 * the blocks start, never on the thread count.
 *
 * Within one block the arithmetic is attend.h's attend_one_query's, operation for
 * operation: the same dot products (8 lanes, hsum_avx2, then the scale), the same
 * exponentials (8 at a time, the last n mod 8 by expf), the same sums. A query that sees at
 * most KEY_BLOCK keys therefore gets exactly the floats it got before the cache had
 * formats and blocks (merging one block changes nothing).
 */
#ifndef LLAMA_NP_ATTEND_BLOCK_H
#define LLAMA_NP_ATTEND_BLOCK_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "attend.h"
#include "kv_rows.h"
#include "simd.h"

/* Positions per block: the keys and values of one head over 256 positions are 128 KiB as
 * float32 at hd = 64, which stays in a core's L2 while every query of a tile meets them;
 * and a query that sees ≤ 256 keys is computed as one block, exactly as before. */
#define KEY_BLOCK 256
#define SUB_BLOCK 32       /* keys a row group meets at a time within a block (L1) */

#ifdef USE_AVX2
/* [hsum_avx2(a), hsum_avx2(b), hsum_avx2(c), hsum_avx2(d)], the very same additions in the
 * same order ((x0+x4) + (x2+x6)) + ((x1+x5) + (x3+x7)), four lanes' worth at once:
 * halves added, then lanes 2 apart, then neighbours. */
static inline __m128 hsum4_avx2(__m256 a, __m256 b, __m256 c, __m256 d)
{
    const __m256 ab = _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
    const __m256 cd = _mm256_add_ps(_mm256_permute2f128_ps(c, d, 0x20), _mm256_permute2f128_ps(c, d, 0x31));
    const __m256 t = _mm256_add_ps(_mm256_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm256_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));  /* [a c | b d] pairs */
    const __m256 r = _mm256_add_ps(_mm256_shuffle_ps(t, t, _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm256_shuffle_ps(t, t, _MM_SHUFFLE(3, 1, 3, 1)));  /* [a c . . | b d . .] */
    return _mm_unpacklo_ps(_mm256_castps256_ps128(r), _mm256_extractf128_ps(r, 1));
}
#endif

/* scores[r · KEY_BLOCK + j] = q_r · k_j / √hd, for rows r < n_rows and keys j < n_keys.
 * q_rows[r] is row r's query; key j is k + j · k_stride. Three rows and four keys at a time
 * (12 accumulators), each dot product summed as attend_one_query sums it. */
static inline void block_scores(float *scores, const float *const *q_rows, int64_t n_rows,
                                const float *k, int64_t k_stride, int64_t n_keys, int64_t head_dim)
{
    const float scale = 1.0f / sqrtf((float)head_dim);
#ifdef USE_AVX2
    if (head_dim % 8 == 0) {
        int64_t r = 0;
        for (; r + 3 <= n_rows; r += 3) {
            const float *q0 = q_rows[r], *q1 = q_rows[r + 1], *q2 = q_rows[r + 2];
            float *s0 = scores + r * KEY_BLOCK, *s1 = s0 + KEY_BLOCK, *s2 = s1 + KEY_BLOCK;
            int64_t j = 0;
            for (; j + 4 <= n_keys; j += 4) {
                const float *k0 = k + j * k_stride, *k1 = k0 + k_stride, *k2 = k1 + k_stride, *k3 = k2 + k_stride;
                __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;
                __m256 a10 = a00, a11 = a00, a12 = a00, a13 = a00;
                __m256 a20 = a00, a21 = a00, a22 = a00, a23 = a00;
                for (int64_t i = 0; i < head_dim; i += 8) {
                    const __m256 x0 = _mm256_loadu_ps(k0 + i), x1 = _mm256_loadu_ps(k1 + i);
                    const __m256 x2 = _mm256_loadu_ps(k2 + i), x3 = _mm256_loadu_ps(k3 + i);
                    __m256 y = _mm256_loadu_ps(q0 + i);
                    a00 = _mm256_fmadd_ps(y, x0, a00), a01 = _mm256_fmadd_ps(y, x1, a01);
                    a02 = _mm256_fmadd_ps(y, x2, a02), a03 = _mm256_fmadd_ps(y, x3, a03);
                    y = _mm256_loadu_ps(q1 + i);
                    a10 = _mm256_fmadd_ps(y, x0, a10), a11 = _mm256_fmadd_ps(y, x1, a11);
                    a12 = _mm256_fmadd_ps(y, x2, a12), a13 = _mm256_fmadd_ps(y, x3, a13);
                    y = _mm256_loadu_ps(q2 + i);
                    a20 = _mm256_fmadd_ps(y, x0, a20), a21 = _mm256_fmadd_ps(y, x1, a21);
                    a22 = _mm256_fmadd_ps(y, x2, a22), a23 = _mm256_fmadd_ps(y, x3, a23);
                }
                const __m128 scale4 = _mm_set1_ps(scale);
                _mm_storeu_ps(s0 + j, _mm_mul_ps(hsum4_avx2(a00, a01, a02, a03), scale4));
                _mm_storeu_ps(s1 + j, _mm_mul_ps(hsum4_avx2(a10, a11, a12, a13), scale4));
                _mm_storeu_ps(s2 + j, _mm_mul_ps(hsum4_avx2(a20, a21, a22, a23), scale4));
            }
            for (; j < n_keys; j++) {
                const float *kj = k + j * k_stride;
                __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0;
                for (int64_t i = 0; i < head_dim; i += 8) {
                    const __m256 x = _mm256_loadu_ps(kj + i);
                    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + i), x, a0);
                    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q1 + i), x, a1);
                    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(q2 + i), x, a2);
                }
                s0[j] = hsum_avx2(a0) * scale, s1[j] = hsum_avx2(a1) * scale, s2[j] = hsum_avx2(a2) * scale;
            }
        }
        for (; r < n_rows; r++) {                                       /* the last 1 or 2 rows */
            const float *q0 = q_rows[r];
            float *s0 = scores + r * KEY_BLOCK;
            for (int64_t j = 0; j < n_keys; j++) {
                const float *kj = k + j * k_stride;
                __m256 a = _mm256_setzero_ps();
                for (int64_t i = 0; i < head_dim; i += 8)
                    a = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + i), _mm256_loadu_ps(kj + i), a);
                s0[j] = hsum_avx2(a) * scale;
            }
        }
        return;
    }
#endif
    for (int64_t r = 0; r < n_rows; r++)
        for (int64_t j = 0; j < n_keys; j++) {
            const float *kj = k + j * k_stride;
            float dot = 0.0f;
            for (int64_t i = 0; i < head_dim; i++) dot += q_rows[r][i] * kj[i];
            scores[r * KEY_BLOCK + j] = dot * scale;
        }
}

/* Scores p[0 … n) → their softmax numerators e^(p_s - m), in place; returns m, and the sum
 * of the numerators in *total. */
static inline float block_exp(float *p, int64_t n, float *total)
{
    float max_score = -INFINITY;   /* a maximum is exact in any order; fmaxf would be a call */
    int64_t s = 0;
#ifdef USE_AVX2
    __m256 running = _mm256_set1_ps(-INFINITY);
    for (; s + 8 <= n; s += 8) running = _mm256_max_ps(running, _mm256_loadu_ps(p + s));
    __m128 half = _mm_max_ps(_mm256_castps256_ps128(running), _mm256_extractf128_ps(running, 1));
    half = _mm_max_ps(half, _mm_movehl_ps(half, half));
    max_score = _mm_cvtss_f32(_mm_max_ss(half, _mm_movehdup_ps(half)));
#endif
    for (; s < n; s++) max_score = p[s] > max_score ? p[s] : max_score;
    s = 0;
    float sum = 0.0f;
#ifdef USE_AVX2
    const __m256 max8 = _mm256_set1_ps(max_score);
    __m256 total8 = _mm256_setzero_ps();
    for (; s + 8 <= n; s += 8) {
        const __m256 e = exp_negative_avx2(_mm256_sub_ps(_mm256_loadu_ps(p + s), max8));
        _mm256_storeu_ps(p + s, e);
        total8 = _mm256_add_ps(total8, e);
    }
    sum = hsum_avx2(total8);
#endif
    for (; s < n; s++) {
        p[s] = expf(p[s] - max_score);
        sum += p[s];
    }
    *total = sum;
    return max_score;
}

/* o_r = Σ_s p_r[s] v_s over s < n, for the n_rows (1 or 2) rows whose numerators start at
 * p (rows KEY_BLOCK apart) and whose sums go to o (rows head_dim apart); value s is
 * v + s · v_stride. Per output dimension the terms are added in the order of s, as
 * attend_one_query adds them (32 or 64 dimensions at a time); two rows share every load of v. */
static inline void block_values(float *o, const float *p, int64_t n_rows, const float *v,
                                int64_t v_stride, int64_t n, int64_t head_dim, int accumulate)
{
#ifdef USE_AVX2
#define START(at) (accumulate ? _mm256_loadu_ps(at) : _mm256_setzero_ps())
    if (head_dim % 8 == 0) {
        int64_t i = 0;
        if (n_rows == 2) {
            const float *p1 = p + KEY_BLOCK;
            for (; i + 32 <= head_dim; i += 32) {
                __m256 a0 = START(o + i), a1 = START(o + i + 8), a2 = START(o + i + 16), a3 = START(o + i + 24);
                const float *ob = o + head_dim + i;
                __m256 b0 = START(ob), b1 = START(ob + 8), b2 = START(ob + 16), b3 = START(ob + 24);
                for (int64_t s = 0; s < n; s++) {
                    const float *vs = v + s * v_stride + i;
                    const __m256 x0 = _mm256_loadu_ps(vs), x1 = _mm256_loadu_ps(vs + 8);
                    const __m256 x2 = _mm256_loadu_ps(vs + 16), x3 = _mm256_loadu_ps(vs + 24);
                    const __m256 w0 = _mm256_set1_ps(p[s]), w1 = _mm256_set1_ps(p1[s]);
                    a0 = _mm256_fmadd_ps(w0, x0, a0), a1 = _mm256_fmadd_ps(w0, x1, a1);
                    a2 = _mm256_fmadd_ps(w0, x2, a2), a3 = _mm256_fmadd_ps(w0, x3, a3);
                    b0 = _mm256_fmadd_ps(w1, x0, b0), b1 = _mm256_fmadd_ps(w1, x1, b1);
                    b2 = _mm256_fmadd_ps(w1, x2, b2), b3 = _mm256_fmadd_ps(w1, x3, b3);
                }
                _mm256_storeu_ps(o + i, a0), _mm256_storeu_ps(o + i + 8, a1);
                _mm256_storeu_ps(o + i + 16, a2), _mm256_storeu_ps(o + i + 24, a3);
                float *o1 = o + head_dim + i;
                _mm256_storeu_ps(o1, b0), _mm256_storeu_ps(o1 + 8, b1);
                _mm256_storeu_ps(o1 + 16, b2), _mm256_storeu_ps(o1 + 24, b3);
            }
        } else {
            /* one row: 64 dimensions at a time, so that 8 chains of FMAs keep both FMA units busy */
            for (; i + 64 <= head_dim; i += 64) {
                __m256 a0 = START(o + i), a1 = START(o + i + 8), a2 = START(o + i + 16), a3 = START(o + i + 24);
                __m256 a4 = START(o + i + 32), a5 = START(o + i + 40), a6 = START(o + i + 48), a7 = START(o + i + 56);
                for (int64_t s = 0; s < n; s++) {
                    const float *vs = v + s * v_stride + i;
                    const __m256 w = _mm256_set1_ps(p[s]);
                    a0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vs), a0);
                    a1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vs + 8), a1);
                    a2 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vs + 16), a2);
                    a3 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vs + 24), a3);
                    a4 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vs + 32), a4);
                    a5 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vs + 40), a5);
                    a6 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vs + 48), a6);
                    a7 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vs + 56), a7);
                }
                _mm256_storeu_ps(o + i, a0), _mm256_storeu_ps(o + i + 8, a1);
                _mm256_storeu_ps(o + i + 16, a2), _mm256_storeu_ps(o + i + 24, a3);
                _mm256_storeu_ps(o + i + 32, a4), _mm256_storeu_ps(o + i + 40, a5);
                _mm256_storeu_ps(o + i + 48, a6), _mm256_storeu_ps(o + i + 56, a7);
            }
            for (; i + 32 <= head_dim; i += 32) {
                __m256 a0 = START(o + i), a1 = START(o + i + 8), a2 = START(o + i + 16), a3 = START(o + i + 24);
                for (int64_t s = 0; s < n; s++) {
                    const float *vs = v + s * v_stride + i;
                    const __m256 w = _mm256_set1_ps(p[s]);
                    a0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vs), a0);
                    a1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vs + 8), a1);
                    a2 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vs + 16), a2);
                    a3 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vs + 24), a3);
                }
                _mm256_storeu_ps(o + i, a0), _mm256_storeu_ps(o + i + 8, a1);
                _mm256_storeu_ps(o + i + 16, a2), _mm256_storeu_ps(o + i + 24, a3);
            }
        }
        for (; i < head_dim; i += 8)                                   /* head_dim % 32 = 8, 16, 24 */
            for (int64_t r = 0; r < n_rows; r++) {
                __m256 a = START(o + r * head_dim + i);
                for (int64_t s = 0; s < n; s++)
                    a = _mm256_fmadd_ps(_mm256_set1_ps(p[r * KEY_BLOCK + s]), _mm256_loadu_ps(v + s * v_stride + i), a);
                _mm256_storeu_ps(o + r * head_dim + i, a);
            }
        return;
    }
#undef START
#endif
    for (int64_t r = 0; r < n_rows; r++) {
        float *out = o + r * head_dim;
        if (!accumulate)
            for (int64_t i = 0; i < head_dim; i++) out[i] = 0.0f;
        for (int64_t s = 0; s < n; s++) {
            const float *vs = v + s * v_stride;
            const float weight = p[r * KEY_BLOCK + s];
            for (int64_t i = 0; i < head_dim; i++) out[i] += weight * vs[i];
        }
    }
}

/* One query row's partial softmax over the keys it has met so far: the running maximum,
 * the sum of numerators and the numerator-weighted values (o, head_dim floats elsewhere). */
typedef struct { float max, total; } softmax_part;

static const softmax_part EMPTY_PART = {-INFINITY, 0.0f};

/* x·y + z, rounded once where the CPU has FMA (a portable build has no fast fmaf). */
static inline float multiply_add(float x, float y, float z)
{
#ifdef __FMA__
    return fmaf(x, y, z);
#else
    return x * y + z;
#endif
}

/* The partial of one more block (part, o_part) merged into (*acc, o_acc), exactly:
 * both sides rescaled to the larger maximum. Into an empty accumulator it is copied as
 * it is, so that one block alone is left untouched. */
static inline void softmax_merge(softmax_part *acc, float *o_acc, softmax_part part,
                                 const float *o_part, int64_t head_dim)
{
    if (part.max == -INFINITY) return;                                 /* the block had no keys */
    if (acc->max == -INFINITY) {
        *acc = part;
        memcpy(o_acc, o_part, head_dim * sizeof(float));
        return;
    }
    const float m = fmaxf(acc->max, part.max);
    const float a = expf(acc->max - m), b = expf(part.max - m);       /* one of them is 1 */
    acc->max = m;
    acc->total = multiply_add(part.total, b, acc->total * a);
    for (int64_t i = 0; i < head_dim; i++) o_acc[i] = multiply_add(o_part[i], b, o_acc[i] * a);
}

/* out = o / total: the attention output of a row whose partials are all merged. */
static inline void softmax_finish(float *out, softmax_part acc, const float *o, int64_t head_dim)
{
    const float inv_total = 1.0f / acc.total;
    for (int64_t i = 0; i < head_dim; i++) out[i] = o[i] * inv_total;
}

/* The partials of one block for the query rows of n_groups consecutive key/value heads,
 * rows_per_head rows each (row r = g · rows_per_head + j belongs to head g of the group):
 * parts[r] and o[r · head_dim …] from keys 0 … n_seen[r] - 1 of the block (rows that see
 * none get EMPTY_PART). The block is positions b0 … b0 + n_keys - 1 (n_keys = the largest
 * n_seen) stored in `format`: k_head and v_head point at the group's first head in position
 * 0, positions are row_bytes apart. scores: scratch [n_rows, KEY_BLOCK]; buffer: scratch
 * [SUB_BLOCK, n_groups · head_dim] (unused for F32, read in place).
 *
 * Keys and values are read SUB_BLOCK positions at a time, every head of the group together
 * (converted to float32 once, kv_load_rows): a position's heads lie side by side, so the
 * group's rows are one run of memory, which the CPU streams far faster than the strided
 * slices of one head alone; and while the scores of a piece of keys are computed, the values
 * at the same positions are already being fetched. Every row meets each piece while it is in
 * L1; per dimension the sums still run in the order of s, so how heads are grouped changes
 * no float. Rows of one head with equal n_seen side by side share their reads of v two at
 * a time. */
static inline void block_partials_cached(softmax_part *parts, float *o, const float *const *q_rows,
                                         const int64_t *n_seen, int64_t rows_per_head, int64_t n_groups,
                                         int32_t format, const uint8_t *k_head, const uint8_t *v_head,
                                         int64_t row_bytes, int64_t b0, int64_t n_keys, int64_t head_dim,
                                         float *scores, float *buffer)
{
    const int64_t n_rows = rows_per_head * n_groups, width = n_groups * head_dim;
    const int64_t width_bytes = kv_bytes(format, width);
    int64_t stride;
    for (int64_t j0 = 0; j0 < n_keys; j0 += SUB_BLOCK) {
        const int64_t n = n_keys - j0 < SUB_BLOCK ? n_keys - j0 : SUB_BLOCK;
        const float *keys = kv_load_rows(format, k_head, row_bytes, b0 + j0, n, width, buffer, &stride);
        for (int64_t s = 0; s < n; s++)                          /* the values of these positions */
            for (int64_t at = 0; at < width_bytes; at += 64)
                __builtin_prefetch(v_head + (b0 + j0 + s) * row_bytes + at, 0, 2);
        for (int64_t g = 0; g < n_groups; g++)
            block_scores(scores + g * rows_per_head * KEY_BLOCK + j0, q_rows + g * rows_per_head, rows_per_head,
                         keys + g * head_dim, stride, n, head_dim);
    }
    for (int64_t r = 0; r < n_rows; r++) {
        if (n_seen[r] <= 0) {
            parts[r] = EMPTY_PART;
            continue;
        }
        parts[r].max = block_exp(scores + r * KEY_BLOCK, n_seen[r], &parts[r].total);
    }
    for (int64_t s0 = 0; s0 < n_keys; s0 += SUB_BLOCK) {
        const float *values = kv_load_rows(format, v_head, row_bytes, b0 + s0,
                                           n_keys - s0 < SUB_BLOCK ? n_keys - s0 : SUB_BLOCK, width,
                                           buffer, &stride);
        for (int64_t g = 0; g < n_groups; g++)
            for (int64_t r = g * rows_per_head, end = r + rows_per_head; r < end;) {
                const int pair = r + 1 < end && n_seen[r + 1] == n_seen[r];
                const int64_t n = (n_seen[r] < s0 + SUB_BLOCK ? n_seen[r] : s0 + SUB_BLOCK) - s0;
                if (n > 0)
                    block_values(o + r * head_dim, scores + r * KEY_BLOCK + s0, pair ? 2 : 1,
                                 values + g * head_dim, stride, n, head_dim, s0 > 0);
                r += pair ? 2 : 1;
            }
    }
}

/* Key/value heads per decoding piece: a piece is a group of consecutive heads over one block
 * of positions (block_partials_cached), and whole groups make long contiguous reads, but
 * the threads need enough pieces to share out: the largest divisor of n_kv_heads whose
 * rows fit a SUB_BLOCK buffer of GROUP_FLOATS floats per position and that still leaves at
 * least two pieces per thread for `n_blocks` blocks (else one head per piece). */
#define GROUP_FLOATS 256
static inline int64_t heads_per_piece(int64_t n_kv_heads, int64_t head_dim, int64_t n_blocks, int n_threads)
{
    for (int64_t d = n_kv_heads; d > 1; d--)
        if (n_kv_heads % d == 0 && d * head_dim <= GROUP_FLOATS && n_kv_heads / d * n_blocks >= 2 * n_threads)
            return d;
    return 1;
}

#endif
