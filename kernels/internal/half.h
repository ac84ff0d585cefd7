/* IEEE half → float, for the fp16 scales of every block format (internal/quant_rows.h,
 * internal/block_pieces.h) and the f16 KV cache (internal/kv_rows.h). */
#ifndef LLAMA_NP_HALF_H
#define LLAMA_NP_HALF_H

#include <stdint.h>
#include <string.h>
#if defined(__F16C__)
#include <immintrin.h>     /* _cvtsh_ss */
#endif

/* IEEE half → float. F16C does it in one instruction; the portable version rebuilds the
 * bits: sign, exponent rebiased from 15 to 127, mantissa widened from 10 to 23 bits. */
static inline float fp16_to_fp32(uint16_t h)
{
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    const uint32_t exponent = (h >> 10) & 0x1F;
    const uint32_t mantissa = h & 0x3FF;
    uint32_t bits;
    if (exponent == 0x1F) {                 /* infinity or NaN */
        bits = sign | 0x7F800000u | (mantissa << 13);
    } else if (exponent != 0) {             /* normal number */
        bits = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
    } else {                                /* zero or subnormal: mantissa * 2^-24, exact */
        const float magnitude = (float)mantissa * 0x1p-24f;
        return sign ? -magnitude : magnitude;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
#endif
}

#endif
