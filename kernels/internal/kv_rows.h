/* The KV cache's row formats: how one head's keys or values at one position are stored,
 * and their conversion to and from float32. The formats are formats.h's numbers:
 *
 *   F32   hd floats                         (exact; what the cache held before F16)
 *   F16   hd IEEE halves                    (rounded once, to nearest even, when written)
 *   Q8_0  hd / 32 blocks of 34 bytes        (d = max|x| / 127 as fp16, q = roundf(x / d))
 *
 * A position's row holds its n_kv_heads heads back to back, so head g starts
 * kv_bytes(format, g · hd) bytes into it. Q8_0 needs hd to be a multiple of 32 (each
 * head whole blocks). The NumPy reference of every function here is llama_np/quant/kv_rows.py,
 * and writing a row then reading it back gives the same floats on both sides.
 *
 * Reading is done a block of positions at a time into a float32 scratch (kv_load_rows),
 * so that the attention arithmetic (attend_block.h) is one float32 code for every format;
 * F32 rows are read in place, not copied. The conversion uses the CPU's half-precision
 * instructions (F16C vcvtph2ps / vcvtps2ph) where the build has them.
 */
#ifndef LLAMA_NP_KV_ROWS_H
#define LLAMA_NP_KV_ROWS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "formats.h"
#include "half.h"          /* fp16_to_fp32, fp32_to_fp16 */
#include "simd.h"          /* USE_AVX2 */

/* Bytes that n values take in a cache of this format (n a multiple of QK for Q8_0). */
static inline int64_t kv_bytes(int32_t format, int64_t n)
{
    return format == F16 ? 2 * n : format == Q8_0 ? n / QK * (int64_t)sizeof(block_q8_0) : 4 * n;
}

/* dst[0 … n) = the n values stored at src in `format`, as floats. */
static inline void kv_to_f32(int32_t format, float *dst, const uint8_t *src, int64_t n)
{
    if (format == F32) {
        memcpy(dst, src, n * sizeof(float));
    } else if (format == F16) {
        const uint16_t *halves = (const uint16_t *)src;
        int64_t i = 0;
#if defined(__F16C__) && defined(USE_AVX2)
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(halves + i))));
#endif
        for (; i < n; i++) dst[i] = fp16_to_fp32(halves[i]);
    } else {                                       /* Q8_0: w = d · q */
        for (int64_t b = 0; b < n / QK; b++) {
            const block_q8_0 *block = (const block_q8_0 *)src + b;
            const float d = fp16_to_fp32(block->d);
            float *out = dst + b * QK;
#ifdef USE_AVX2
            const __m256 d8 = _mm256_set1_ps(d);
            for (int j = 0; j < QK; j += 8) {
                const __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(block->qs + j)));
                _mm256_storeu_ps(out + j, _mm256_mul_ps(d8, _mm256_cvtepi32_ps(q)));
            }
#else
            for (int j = 0; j < QK; j++) out[j] = d * (float)block->qs[j];
#endif
        }
    }
}

/* The n floats of src, stored at dst in `format` (n a multiple of QK for Q8_0). */
static inline void kv_from_f32(int32_t format, uint8_t *dst, const float *src, int64_t n)
{
    if (format == F32) {
        memcpy(dst, src, n * sizeof(float));
    } else if (format == F16) {
        uint16_t *halves = (uint16_t *)dst;
        int64_t i = 0;
#if defined(__F16C__) && defined(USE_AVX2)
        for (; i + 8 <= n; i += 8)
            _mm_storeu_si128((__m128i *)(halves + i),
                             _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
        for (; i < n; i++) halves[i] = fp32_to_fp16(src[i]);
    } else {                                       /* Q8_0, as llama.cpp's quantize_row_q8_0_ref */
        for (int64_t b = 0; b < n / QK; b++) {
            const float *x = src + b * QK;
            block_q8_0 *block = (block_q8_0 *)dst + b;
            float amax = 0.0f;
            for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[j]));
            const float d = amax / 127.0f, inverse = d != 0.0f ? 1.0f / d : 0.0f;
            for (int j = 0; j < QK; j++) block->qs[j] = (int8_t)roundf(x[j] * inverse);
            block->d = fp32_to_fp16(d);
        }
    }
}

/* Positions b0 … b0 + n_rows - 1 of one head as float32 rows, `*stride` floats apart:
 * `head` points at that head's slice of position 0, positions are row_bytes apart. F32 is
 * read where it lies; the others are converted into buffer [n_rows, head_dim]. */
static inline const float *kv_load_rows(int32_t format, const uint8_t *head, int64_t row_bytes,
                                        int64_t b0, int64_t n_rows, int64_t head_dim,
                                        float *buffer, int64_t *stride)
{
    if (format == F32) {
        *stride = row_bytes / (int64_t)sizeof(float);
        return (const float *)(head + b0 * row_bytes);
    }
    const int64_t bytes = kv_bytes(format, head_dim);
    for (int64_t s = 0; s < n_rows; s++) {
        /* ask for the row n_rows positions on (the next piece; a prefetch never faults) */
        const uint8_t *ahead = head + (b0 + s + n_rows) * row_bytes;
        for (int64_t at = 0; at < bytes; at += 64) __builtin_prefetch(ahead + at);
        kv_to_f32(format, buffer + s * head_dim, head + (b0 + s) * row_bytes, head_dim);
    }
    *stride = head_dim;
    return buffer;
}

#endif
