/* AdamW's update of n float32 parameters in one pass over param, grad and the two moments:
 *
 *   param ← param · decay                          decay = 1 - lr·λ (decoupled weight decay)
 *   m ← β1 m + (1 - β1) g,   v ← β2 v + (1 - β2) g²
 *   param ← param - (lr / (1 - β1^t)) · m / (√v / √(1 - β2^t) + ε)
 *
 * NumPy reference: llama_np.training.trainer.AdamW's NumPy form, which makes each line a
 * pass over the whole array (a 30 M-element embedding: ten passes of 120 MB); here each
 * element is read once and written once. The floats are the reference's bit for bit: the
 * same operations in the same order, each rounded once (no fused multiply-adds, see
 * adamw_span), and a correctly rounded square root and division on both sides. The
 * constants come from Python, computed there as the reference computes them.
 */
#include <math.h>
#include <stdint.h>

#include "internal/simd.h"

#define SPAN 16384   /* elements a thread takes at a time */

/* One span. fp-contract is off for this function alone: the kernels are built with
 * -ffp-contract=fast, which would fuse β1·m + (1 - β1)·g into one FMA, rounded once
 * instead of the reference's three times. (Not inlined: an inlined body would take the
 * caller's flags; GCC keeps OpenMP's outlined loop body apart, which is why the parallel
 * loop is in adamw_f32 and the arithmetic here.) */
__attribute__((optimize("fp-contract=off"), noinline))
static void adamw_span(float *param, const float *grad, float *m, float *v, int64_t n, float decay,
                       float beta1, float one_minus_beta1, float beta2, float one_minus_beta2,
                       float sqrt_bias2, float eps, float lr_over_bias1)
{
    int64_t i = 0;
#ifdef USE_AVX2
    const __m256 decay8 = _mm256_set1_ps(decay), beta1_8 = _mm256_set1_ps(beta1);
    const __m256 one_minus_beta1_8 = _mm256_set1_ps(one_minus_beta1), beta2_8 = _mm256_set1_ps(beta2);
    const __m256 one_minus_beta2_8 = _mm256_set1_ps(one_minus_beta2), sqrt_bias2_8 = _mm256_set1_ps(sqrt_bias2);
    const __m256 eps8 = _mm256_set1_ps(eps), lr8 = _mm256_set1_ps(lr_over_bias1);
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(grad + i);
        const __m256 m_new = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(m + i), beta1_8),
                                           _mm256_mul_ps(g, one_minus_beta1_8));
        const __m256 v_new = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(v + i), beta2_8),
                                           _mm256_mul_ps(one_minus_beta2_8, _mm256_mul_ps(g, g)));
        const __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(v_new), sqrt_bias2_8), eps8);
        _mm256_storeu_ps(m + i, m_new);
        _mm256_storeu_ps(v + i, v_new);
        _mm256_storeu_ps(param + i, _mm256_sub_ps(_mm256_mul_ps(_mm256_loadu_ps(param + i), decay8),
                                                  _mm256_div_ps(_mm256_mul_ps(lr8, m_new), denom)));
    }
#endif
    for (; i < n; i++) {
        const float g = grad[i];
        const float m_new = m[i] * beta1 + g * one_minus_beta1;
        const float v_new = v[i] * beta2 + one_minus_beta2 * (g * g);
        const float denom = sqrtf(v_new) / sqrt_bias2 + eps;
        m[i] = m_new;
        v[i] = v_new;
        param[i] = param[i] * decay - (lr_over_bias1 * m_new) / denom;
    }
}

void adamw_f32(float *param, const float *grad, float *m, float *v, int64_t n, float decay, float beta1,
               float one_minus_beta1, float beta2, float one_minus_beta2, float sqrt_bias2, float eps,
               float lr_over_bias1, int n_threads)
{
    #pragma omp parallel for num_threads(n_threads) schedule(static) if (n > 4 * SPAN)
    for (int64_t start = 0; start < n; start += SPAN)
        adamw_span(param + start, grad + start, m + start, v + start, n - start < SPAN ? n - start : SPAN,
                   decay, beta1, one_minus_beta1, beta2, one_minus_beta2, sqrt_bias2, eps, lr_over_bias1);
}
