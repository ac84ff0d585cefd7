/* Rotary position embedding, Hugging Face "rotate-half" layout, in place.
 * x: [n_tokens, n_heads, head_dim]. For pair i < head_dim/2, angle = pos * theta^(-2i/head_dim):
 *   x[i]        <- x[i] cos - x[i + half] sin
 *   x[i + half] <- x[i + half] cos + x[i] sin
 * A scaled RoPE passes its frequencies inv_freq [head_dim / 2] (NULL: the ones above, from
 * theta) and an attention factor that multiplies cos and sin (1: none).
 * (rope_angles and rope_rotate in internal/rotary.h). NumPy reference: llama_np.ops.rope_forward. */
#include <stdint.h>

#include "internal/rotary.h"

void rope_f32(float *x, const int64_t *positions, int64_t n_tokens, int64_t n_heads, int64_t head_dim, float theta,
              const float *table, float attention_factor)
{
    float inv_freq[head_dim / 2];
    rope_frequencies(inv_freq, table, head_dim, theta);
    #pragma omp parallel for if (n_tokens > 8) schedule(static)
    for (int64_t t = 0; t < n_tokens; t++) {
        float cos_t[head_dim / 2], sin_t[head_dim / 2];  /* one rotation per frequency, shared by all heads */
        rope_angles(cos_t, sin_t, inv_freq, positions[t], head_dim);
        rope_scale_angles(cos_t, sin_t, attention_factor, head_dim);
        for (int64_t h = 0; h < n_heads; h++) rope_rotate(x + (t * n_heads + h) * head_dim, cos_t, sin_t, head_dim);
    }
}
