/* SwiGLU, the gate of LLaMA's MLP: out_i = silu(g_i) · u_i with silu(g) = g · σ(g), shared by
 * swiglu.c (a prompt's rows), decode_layer.c (one token) and decode_layer_batch.c (one token
 * of each of several sequences), so that all three compute the same numbers.
 *
 * σ(g) = 1 / (1 + e^-g) needs e^-g, which for g < 0 grows without bound; written with
 * e = e^-|g| (always in (0, 1]) it is
 *
 *     σ(g) = 1 / (1 + e)   for g >= 0,      σ(g) = e / (1 + e)   for g < 0
 *
 * the same function, and e is what exp.h's 8-lane exponential computes (it takes x <= 0).
 * NumPy reference: llama_np.ops.swiglu_forward.
 */
#ifndef LLAMA_NP_SWIGLU_H
#define LLAMA_NP_SWIGLU_H

#include <math.h>
#include <stdint.h>

#include "exp.h"
#include "simd.h"

static inline float silu_times(float g, float u)
{
    const float e = expf(-fabsf(g));
    return g * ((g >= 0.0f ? 1.0f : e) / (1.0f + e)) * u;
}

/* out[i] = silu(gate[i]) · up[i], i < n (out may be gate or up) */
static inline void swiglu_row(float *out, const float *gate, const float *up, int64_t n)
{
    int64_t i = 0;
#ifdef USE_AVX2
    const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i);
        const __m256 e = exp_negative_avx2(_mm256_or_ps(g, sign));                  /* e^-|g| */
        const __m256 numerator = _mm256_blendv_ps(one, e, _mm256_cmp_ps(g, _mm256_setzero_ps(), _CMP_LT_OQ));
        const __m256 sigma = _mm256_div_ps(numerator, _mm256_add_ps(one, e));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(g, sigma), _mm256_loadu_ps(up + i)));
    }
#endif
    for (; i < n; i++) out[i] = silu_times(gate[i], up[i]);
}

#endif
