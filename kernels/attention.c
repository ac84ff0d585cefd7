/* Causal grouped-query attention over the KV cache, one (query token, head) pair at a time:
 *
 *   out[t, h] = Σ_s p_s v[s, h / rep],   p = softmax(q[t, h] · k[s, h / rep] / √hd),  s ≤ S - T + t
 *
 * q [T, H, hd], k and v [S, H_kv, hd] (the first S rows of a layer's cache), out [T, H·hd];
 * rep = H / H_kv query heads share each key/value head (GQA). The T queries are the last T
 * of the S positions, so query t sees keys 0 … S-T+t, never a later one.
 * NumPy reference: llama_np.ops.attention_forward. Decoding (T = 1) calls this 30 times a
 * token with S up to a few thousand: there the NumPy version's dozen small array
 * operations cost more than the arithmetic.
 *
 * scores: scratch of n_threads × S floats. Parallel over the T·H (token, head) pairs; the
 * work for one pair is attend_one_query (internal/attend.h). */
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "internal/attend.h"

void attention_forward_f32(float *out, const float *q, const float *k, const float *v,
                           float *scores, int64_t n_tokens, int64_t n_heads, int64_t n_kv_heads,
                           int64_t n_keys, int64_t head_dim, int n_threads)
{
    const int64_t rep = n_heads / n_kv_heads;
    #pragma omp parallel num_threads(n_threads)
    {
#ifdef _OPENMP
        float *p = scores + (int64_t)omp_get_thread_num() * n_keys;   /* [S] this thread's */
#else
        float *p = scores;
#endif
        #pragma omp for schedule(static)
        for (int64_t pair = 0; pair < n_tokens * n_heads; pair++) {
            const int64_t t = pair / n_heads, h = pair % n_heads, g = h / rep;
            const int64_t n_seen = n_keys - n_tokens + t + 1;       /* keys 0 … S-T+t */
            attend_one_query(out + pair * head_dim, q + pair * head_dim, k + g * head_dim,
                             v + g * head_dim, n_kv_heads * head_dim, n_seen, head_dim, p);
        }
    }
}
