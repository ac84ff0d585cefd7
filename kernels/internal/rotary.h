/* The two halves of rotary position embedding (Hugging Face "rotate-half" layout), shared
 * by rope.c (whole prompts) and decode_layer.c (one token):
 *
 *   rope_inverse_frequencies   theta^(-2i / head_dim), i < head_dim / 2
 *   rope_frequencies   those, or a scaled model's own table (llama_np/llama/rope_scaling.py)
 *   rope_angles   cos and sin of angle_i = pos · theta^(-2i / head_dim)
 *   rope_scale_angles   cos and sin times an attention factor (YaRN's), when it is not 1
 *   rope_rotate   one head in place:  x[i]        <- x[i] cos_i - x[i + half] sin_i
 *                                     x[i + half] <- x[i + half] cos_i + x[i] sin_i
 *
 * The angles depend on the position only, so one table serves every head of a token. */
#ifndef LLAMA_NP_ROTARY_H
#define LLAMA_NP_ROTARY_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

static inline void rope_inverse_frequencies(float *inv_freq, int64_t head_dim, float theta)
{
    /* in float32, as the reference computes them */
    for (int64_t i = 0; i < head_dim / 2; i++)
        inv_freq[i] = (float)(1.0 / pow((double)theta, (double)(2 * i) / (double)head_dim));
}

/* inv_freq <- table when there is one (a scaled RoPE), else theta^(-2i / head_dim) */
static inline void rope_frequencies(float *inv_freq, const float *table, int64_t head_dim, float theta)
{
    if (table == NULL) {
        rope_inverse_frequencies(inv_freq, head_dim, theta);
        return;
    }
    for (int64_t i = 0; i < head_dim / 2; i++) inv_freq[i] = table[i];
}

static inline void rope_angles(float *cos_t, float *sin_t, const float *inv_freq, int64_t position, int64_t head_dim)
{
    for (int64_t i = 0; i < head_dim / 2; i++) {
        const float angle = (float)position * inv_freq[i];
        cos_t[i] = cosf(angle);
        sin_t[i] = sinf(angle);
    }
}

static inline void rope_scale_angles(float *cos_t, float *sin_t, float attention_factor, int64_t head_dim)
{
    if (attention_factor == 1.0f) return;
    for (int64_t i = 0; i < head_dim / 2; i++) {
        cos_t[i] *= attention_factor;
        sin_t[i] *= attention_factor;
    }
}

static inline void rope_rotate(float *x, const float *cos_t, const float *sin_t, int64_t head_dim)
{
    const int64_t half = head_dim / 2;
    for (int64_t i = 0; i < half; i++) {
        const float a = x[i], b = x[i + half];
        x[i] = a * cos_t[i] - b * sin_t[i];
        x[i + half] = b * cos_t[i] + a * sin_t[i];
    }
}

#endif
