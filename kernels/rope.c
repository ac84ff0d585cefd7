/* Rotary position embedding, Hugging Face "rotate-half" layout, in place.
 * x: [n_tokens, n_heads, head_dim]. For pair i < head_dim/2, angle = pos * theta^(-2i/head_dim):
 *   x[i]        <- x[i] cos - x[i + half] sin
 *   x[i + half] <- x[i + half] cos + x[i] sin
 * NumPy reference: llama_np.ops.rope_forward. */
#include <math.h>
#include <stdint.h>

void rope_f32(float *x, const int64_t *positions, int64_t n_tokens, int64_t n_heads, int64_t head_dim, float theta)
{
    const int64_t half = head_dim / 2;
    #pragma omp parallel for if (n_tokens > 8) schedule(static)
    for (int64_t t = 0; t < n_tokens; t++) {
        float cos_t[half], sin_t[half];  /* one rotation per frequency, shared by all heads */
        for (int64_t i = 0; i < half; i++) {
            /* float32 inverse frequency and angle, as the reference computes them */
            float inv_freq = (float)(1.0 / pow((double)theta, (double)(2 * i) / (double)head_dim));
            float angle = (float)positions[t] * inv_freq;
            cos_t[i] = cosf(angle);
            sin_t[i] = sinf(angle);
        }
        for (int64_t h = 0; h < n_heads; h++) {
            float *v = x + (t * n_heads + h) * head_dim;  /* [head_dim] */
            for (int64_t i = 0; i < half; i++) {
                float a = v[i], b = v[i + half];
                v[i] = a * cos_t[i] - b * sin_t[i];
                v[i + half] = b * cos_t[i] + a * sin_t[i];
            }
        }
    }
}
