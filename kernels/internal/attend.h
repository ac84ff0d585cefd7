/* Attention of one query over the keys it may see: the body shared by attention.c (every
 * token and head of a prompt) and decode_layer.c (one new token).
 *
 *   out = Σ_s p_s v_s,   p = softmax(q · k_s / √hd),   s = 0 … n_seen - 1
 *
 * k and v point at position 0 of one key/value head; position s is kv_stride floats
 * further on (the cache is [S, H_kv, hd], so kv_stride = H_kv · hd). p: scratch of
 * n_seen floats. With AVX2 (and hd a multiple of 8) the dot products, the exponentials and
 * the weighted sum of values run 8 lanes at a time; decoding spends about a tenth of its
 * time here once the context holds a few hundred tokens.
 */
#ifndef LLAMA_NP_ATTEND_H
#define LLAMA_NP_ATTEND_H

#include <math.h>
#include <stdint.h>

#include "exp.h"
#include "simd.h"

static inline void attend_one_query(float *out, const float *q, const float *k, const float *v,
                                    int64_t kv_stride, int64_t n_seen, int64_t head_dim, float *p)
{
    const float scale = 1.0f / sqrtf((float)head_dim);
#ifdef USE_AVX2
    if (head_dim % 8 == 0) {
        /* scores, four keys at a time: four independent chains of FMAs */
        float max_score = -INFINITY;
        int64_t s = 0;
        for (; s + 4 <= n_seen; s += 4) {
            const float *k0 = k + s * kv_stride;
            __m256 d0 = _mm256_setzero_ps(), d1 = d0, d2 = d0, d3 = d0;
            for (int64_t i = 0; i < head_dim; i += 8) {
                const __m256 qi = _mm256_loadu_ps(q + i);
                d0 = _mm256_fmadd_ps(qi, _mm256_loadu_ps(k0 + i), d0);
                d1 = _mm256_fmadd_ps(qi, _mm256_loadu_ps(k0 + kv_stride + i), d1);
                d2 = _mm256_fmadd_ps(qi, _mm256_loadu_ps(k0 + 2 * kv_stride + i), d2);
                d3 = _mm256_fmadd_ps(qi, _mm256_loadu_ps(k0 + 3 * kv_stride + i), d3);
            }
            p[s] = hsum_avx2(d0) * scale, p[s + 1] = hsum_avx2(d1) * scale;
            p[s + 2] = hsum_avx2(d2) * scale, p[s + 3] = hsum_avx2(d3) * scale;
        }
        for (; s < n_seen; s++) {
            const float *ks = k + s * kv_stride;
            __m256 dot = _mm256_setzero_ps();
            for (int64_t i = 0; i < head_dim; i += 8)
                dot = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(ks + i), dot);
            p[s] = hsum_avx2(dot) * scale;
        }
        for (s = 0; s < n_seen; s++) max_score = fmaxf(max_score, p[s]);
        const __m256 max8 = _mm256_set1_ps(max_score);
        __m256 total8 = _mm256_setzero_ps();
        for (s = 0; s + 8 <= n_seen; s += 8) {                     /* softmax numerators */
            const __m256 e = exp_negative_avx2(_mm256_sub_ps(_mm256_loadu_ps(p + s), max8));
            _mm256_storeu_ps(p + s, e);
            total8 = _mm256_add_ps(total8, e);
        }
        float total = hsum_avx2(total8);
        for (; s < n_seen; s++) {
            p[s] = expf(p[s] - max_score);
            total += p[s];
        }
        /* Σ p_s v_s / total, 32 dimensions at a time: four accumulators in registers */
        const __m256 inv_total = _mm256_set1_ps(1.0f / total);
        int64_t i = 0;
        for (; i + 32 <= head_dim; i += 32) {
            __m256 o0 = _mm256_setzero_ps(), o1 = o0, o2 = o0, o3 = o0;
            for (s = 0; s < n_seen; s++) {
                const float *vs = v + s * kv_stride + i;
                const __m256 weight = _mm256_set1_ps(p[s]);
                o0 = _mm256_fmadd_ps(weight, _mm256_loadu_ps(vs), o0);
                o1 = _mm256_fmadd_ps(weight, _mm256_loadu_ps(vs + 8), o1);
                o2 = _mm256_fmadd_ps(weight, _mm256_loadu_ps(vs + 16), o2);
                o3 = _mm256_fmadd_ps(weight, _mm256_loadu_ps(vs + 24), o3);
            }
            _mm256_storeu_ps(out + i, _mm256_mul_ps(o0, inv_total));
            _mm256_storeu_ps(out + i + 8, _mm256_mul_ps(o1, inv_total));
            _mm256_storeu_ps(out + i + 16, _mm256_mul_ps(o2, inv_total));
            _mm256_storeu_ps(out + i + 24, _mm256_mul_ps(o3, inv_total));
        }
        for (; i < head_dim; i += 8) {                               /* head_dim % 32 = 8, 16, 24 */
            __m256 o = _mm256_setzero_ps();
            for (s = 0; s < n_seen; s++)
                o = _mm256_fmadd_ps(_mm256_set1_ps(p[s]), _mm256_loadu_ps(v + s * kv_stride + i), o);
            _mm256_storeu_ps(out + i, _mm256_mul_ps(o, inv_total));
        }
        return;
    }
#endif
    float max_score = -INFINITY;
    for (int64_t s = 0; s < n_seen; s++) {
        const float *ks = k + s * kv_stride;
        float dot = 0.0f;
        for (int64_t i = 0; i < head_dim; i++) dot += q[i] * ks[i];
        p[s] = dot * scale;
        max_score = fmaxf(max_score, p[s]);
    }
    float total = 0.0f;   /* softmax: subtract the maximum so exp cannot overflow */
    for (int64_t s = 0; s < n_seen; s++) {
        p[s] = expf(p[s] - max_score);
        total += p[s];
    }
    for (int64_t i = 0; i < head_dim; i++) out[i] = 0.0f;
    for (int64_t s = 0; s < n_seen; s++) {
        const float *vs = v + s * kv_stride;
        const float weight = p[s] / total;
        for (int64_t i = 0; i < head_dim; i++) out[i] += weight * vs[i];
    }
}

#endif
