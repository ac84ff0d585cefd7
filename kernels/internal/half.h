/* IEEE half ↔ float: half → float for the fp16 scales of every block format
 * (internal/quant_rows.h, internal/block_pieces.h) and both ways for the f16 KV cache
 * (internal/kv_rows.h). */
#ifndef LLAMA_NP_HALF_H
#define LLAMA_NP_HALF_H

#include <stdint.h>
#include <string.h>
#if defined(__F16C__)
#include <immintrin.h>     /* _cvtsh_ss, _cvtss_sh */
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

/* float → IEEE half, rounded to nearest, ties to even (NumPy's astype(float16)). F16C does
 * it in one instruction; the portable version works on the bit fields. A half keeps 10
 * mantissa bits and exponents -14 … 15; below 2^-14 it is a fixed-point number in units of
 * 2^-24 (a subnormal). Both cases come down to one integer shifted right and rounded on the
 * bits it drops, and a carry out of the mantissa moves into the exponent by itself (the
 * largest half rounded up becomes infinity, 0x7C00, as it should). NaN stays NaN (quiet). */
static inline uint16_t fp32_to_fp16(float f)
{
#if defined(__F16C__)
    return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    const uint16_t sign = (uint16_t)((bits >> 16) & 0x8000u);
    const uint32_t magnitude = bits & 0x7FFFFFFFu;
    if (magnitude > 0x7F800000u) return sign | 0x7E00u;               /* NaN */
    const int32_t exponent = (int32_t)(magnitude >> 23) - 127 + 15;    /* the half's biased exponent */
    if (exponent >= 31) return sign | 0x7C00u;                         /* too large (or infinity) */
    uint32_t kept, dropped_bits;
    uint32_t significand = magnitude & 0x7FFFFFu;
    if (exponent >= 1) {            /* normal: exponent and mantissa side by side, 13 bits dropped */
        kept = ((uint32_t)exponent << 10) | (significand >> 13);
        dropped_bits = 13;
    } else {                        /* subnormal (or zero): 1.m · 2^(e - 15) in units of 2^-24 */
        significand |= 0x800000u;
        dropped_bits = (uint32_t)(14 - exponent);                     /* 14 … */
        if (dropped_bits > 24) return sign;                            /* below half the smallest */
        kept = significand >> dropped_bits;
    }
    const uint32_t dropped = significand & ((1u << dropped_bits) - 1u);
    const uint32_t halfway = 1u << (dropped_bits - 1u);
    if (dropped > halfway || (dropped == halfway && (kept & 1u))) kept += 1u;
    return (uint16_t)(sign | kept);
#endif
}

#endif
