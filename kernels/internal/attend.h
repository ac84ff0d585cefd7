/* Attention of one query over the keys it may see: the body shared by attention.c (every
 * token and head of a prompt) and decode_layer.c (one new token).
 *
 *   out = Σ_s p_s v_s,   p = softmax(q · k_s / √hd),   s = 0 … n_seen - 1
 *
 * k and v point at position 0 of one key/value head; position s is kv_stride floats
 * further on (the cache is [S, H_kv, hd], so kv_stride = H_kv · hd). p: scratch of
 * n_seen floats. */
#ifndef LLAMA_NP_ATTEND_H
#define LLAMA_NP_ATTEND_H

#include <math.h>
#include <stdint.h>

static inline void attend_one_query(float *out, const float *q, const float *k, const float *v,
                                    int64_t kv_stride, int64_t n_seen, int64_t head_dim, float *p)
{
    const float scale = 1.0f / sqrtf((float)head_dim);
    float max_score = -INFINITY;
    for (int64_t s = 0; s < n_seen; s++) {
        const float *ks = k + s * kv_stride;
        float dot = 0.0f;
        #pragma omp simd reduction(+:dot)
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
        #pragma omp simd
        for (int64_t i = 0; i < head_dim; i++) out[i] += weight * vs[i];
    }
}

#endif
