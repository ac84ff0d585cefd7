/* The newer block formats read 32 weights at a time: Q5_0 and Q5_1, whose block is one
 * such piece, and the K-quants Q2_K … Q6_K, whose 256-weight super-block is eight.
 * Every kernel that multiplies by them (internal/piece_rows.h: one row or a batch of
 * activation rows, the GEMM's decoded tiles, int8 activations) reads a block through the
 * two functions of this file, so each bit layout is written once:
 *
 *   block_piece_scales(type, block, &s)   once per block: every piece's scales
 *   block_piece_q(type, block, j)         piece j's 32 stored integers q (unsigned bytes)
 *   block_piece_ints_avx512(...)          the same as two registers of 16 int32 lanes
 *
 * and then, for weight l of piece j (h = l / 16, the half it lies in),
 *
 *   w[l] = s.d[2j + h] · q[l] + s.m[2j + h]
 *
 * Q5_0  q = nibble | fifth bit << 4          d = d              m = -16 d
 * Q5_1  q = nibble | fifth bit << 4          d = d              m = m
 * Q4_K  q = nibble                           d = d · sc_j       m = -dmin · m_j
 * Q5_K  q = nibble | fifth bit << 4          d = d · sc_j       m = -dmin · m_j
 * Q6_K  q = 4 low | 2 high bits << 4         d = d · sc_{2j+h}  m = -32 d · sc_{2j+h}
 * Q2_K  q = 2 bits                           d = d · sc_{2j+h}  m = -dmin · m_{2j+h}
 * Q3_K  q = 2 low | 1 high bit << 2          d = d · (sc_{2j+h} - 32)   m = -4 d · (sc_{2j+h} - 32)
 *
 * (two scales a piece because the sub-blocks of Q2_K, Q3_K and Q6_K are 16 weights; the
 * others repeat one). The offsets of Q5_0, Q6_K and Q3_K are whole multiples of d, so one
 * FMA, d · q + m, rounds to exactly llama.cpp's d · (q - 16), d_h · (q - 32), d_h · (q - 4);
 * where activations are integers too (int8), Q6_K's and Q3_K's offsets, one for each half,
 * are subtracted from q instead (piece_int_offset).
 * The layouts are llama.cpp's (ggml-common.h; dequantize_row_* in ggml-quants.c); the
 * reference they are tested against is gguf.quants.dequantize. With AVX2 a piece's integers
 * are one 256-bit register (byte l = weight l), built with byte shuffles and masks; with
 * AVX-512 (fp32 activations) 32 int32 lanes straight from the bytes, which saves widening
 * them twice; in plain C a byte array. A header of static inline functions, like every
 * file in internal/.
 */
#ifndef LLAMA_NP_BLOCK_PIECES_H
#define LLAMA_NP_BLOCK_PIECES_H

#include <stdint.h>
#include <string.h>

#include "formats.h"
#include "half.h"
#include "simd.h"

#define PIECE 32           /* weights a piece holds: what every kernel reads at once */

typedef struct { float d[QK_K / 16], m[QK_K / 16]; } piece_scales;   /* [2 j + h]: piece j, half h */

static inline int is_piece_format(weight_format type)
{
    return type == Q5_0 || type == Q5_1 || type == Q4_K || type == Q5_K || type == Q6_K || type == Q2_K
        || type == Q3_K;
}

static inline int pieces_per_block(weight_format type)
{
    return (int)(BLOCK_WEIGHTS[type] / PIECE);
}

/* For the int8 path: the integer that a format's offset per half is a multiple of d_h of
 * (m_h = -offset · d_h), subtracted from q there: 32 for Q6_K, 4 for Q3_K. 0 for formats
 * whose offset is one number for the whole piece (Q5_0's -16 d among them), which the
 * int8 path adds as m · Σ x. */
static inline int piece_int_offset(weight_format type)
{
    return type == Q6_K ? 32 : type == Q3_K ? 4 : 0;
}

/* Q3_K's 16 6-bit scales from 12 bytes: the low 4 bits of scale s are the low (s < 8) or
 * high (s >= 8) nibble of byte s % 8; its high 2 bits are bits 2 (s / 4), 2 (s / 4) + 1 of
 * byte 8 + s % 4. Unpacked four at a time as 32-bit words (llama.cpp's kmask trick);
 * stored with 32 added, returned as they are stored. */
static inline void unpack_q3_k_scales(const uint8_t packed[K_SCALE_SIZE], uint8_t sc[16])
{
    uint32_t u[4];
    memcpy(u, packed, K_SCALE_SIZE);
    const uint32_t low4 = 0x0F0F0F0F, low2 = 0x03030303, high = u[2];
    u[2] = ((u[0] >> 4) & low4) | (((high >> 4) & low2) << 4);     /* scales 8..11 */
    u[3] = ((u[1] >> 4) & low4) | (((high >> 6) & low2) << 4);     /* 12..15 */
    u[0] = (u[0] & low4) | ((high & low2) << 4);                   /* 0..3 */
    u[1] = (u[1] & low4) | (((high >> 2) & low2) << 4);            /* 4..7 */
    memcpy(sc, u, 16);
}

/* ---------------------------------------------------------------------------------------
 * The scales. Q4_K and Q5_K pack the 6-bit scale sc_j and min m_j of their 8 sub-blocks
 * into 12 bytes (bits of byte i, most significant first; A-H the scales, a-h the mins):
 *
 *   0-3   EE AAAAAA, FF BBBBBB, GG CCCCCC, HH DDDDDD   low 6 bits: sc_0..3, top 2: sc_4..7's high bits
 *   4-7   ee aaaaaa, ff bbbbbb, gg cccccc, hh dddddd   low 6 bits: m_0..3,  top 2: m_4..7's high bits
 *   8-11  eeee EEEE, ffff FFFF, gggg GGGG, hhhh HHHH   low 4 bits of sc_4..7 and m_4..7
 *
 * Unpacked four at a time as 32-bit words (llama.cpp's kmask trick), little-endian. */
static inline void unpack_k_scales(const uint8_t packed[K_SCALE_SIZE], uint8_t sc[8], uint8_t mins[8])
{
    uint32_t u[4];
    memcpy(u, packed, K_SCALE_SIZE);
    const uint32_t low6 = 0x3F3F3F3F, low4 = 0x0F0F0F0F, low2 = 0x03030303;
    u[3] = ((u[2] >> 4) & low4) | (((u[1] >> 6) & low2) << 4);     /* m_4..7 */
    const uint32_t mins_0_3 = u[1] & low6;
    u[1] = (u[2] & low4) | (((u[0] >> 6) & low2) << 4);            /* sc_4..7 */
    u[0] &= low6;                                                  /* sc_0..3 */
    u[2] = mins_0_3;
    memcpy(sc, u, 8);
    memcpy(mins, u + 2, 8);
}

static inline void block_piece_scales(weight_format type, const uint8_t *block, piece_scales *s)
{
    switch (type) {
    case Q5_0: {
        const block_q5_0 *b = (const block_q5_0 *)block;
        s->d[0] = s->d[1] = fp16_to_fp32(b->d);
        s->m[0] = s->m[1] = -16.0f * s->d[0];
        break;
    }
    case Q5_1: {
        const block_q5_1 *b = (const block_q5_1 *)block;
        s->d[0] = s->d[1] = fp16_to_fp32(b->d);
        s->m[0] = s->m[1] = fp16_to_fp32(b->m);
        break;
    }
    case Q4_K: case Q5_K: {
        /* the d, dmin and scales of the two layouts lie at the same offsets */
        const block_q4_K *b = (const block_q4_K *)block;
        const float d = fp16_to_fp32(b->d), dmin = fp16_to_fp32(b->dmin);
        uint8_t sc[8], mins[8];
        unpack_k_scales(b->scales, sc, mins);
#ifdef USE_AVX2
        /* d · sc_j and -dmin · m_j, 8 lanes at once, each written twice: [2j] and [2j + 1] */
        const __m256 dsc = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)sc))),
                                         _mm256_set1_ps(d));
        const __m256 dmn = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)mins))),
                                         _mm256_set1_ps(-dmin));
        const __m256 d_lo = _mm256_unpacklo_ps(dsc, dsc), d_hi = _mm256_unpackhi_ps(dsc, dsc);  /* 0 0 1 1 4 4 5 5, 2 2 3 3 6 6 7 7 */
        const __m256 m_lo = _mm256_unpacklo_ps(dmn, dmn), m_hi = _mm256_unpackhi_ps(dmn, dmn);
        _mm256_storeu_ps(s->d, _mm256_permute2f128_ps(d_lo, d_hi, 0x20));
        _mm256_storeu_ps(s->d + 8, _mm256_permute2f128_ps(d_lo, d_hi, 0x31));
        _mm256_storeu_ps(s->m, _mm256_permute2f128_ps(m_lo, m_hi, 0x20));
        _mm256_storeu_ps(s->m + 8, _mm256_permute2f128_ps(m_lo, m_hi, 0x31));
#else
        for (int j = 0; j < 8; j++) {
            s->d[2 * j] = s->d[2 * j + 1] = d * (float)sc[j];
            s->m[2 * j] = s->m[2 * j + 1] = -dmin * (float)mins[j];
        }
#endif
        break;
    }
    case Q2_K: {    /* scales: sc in the low nibble, m in the high one */
        const block_q2_K *b = (const block_q2_K *)block;
        const float d = fp16_to_fp32(b->d), dmin = fp16_to_fp32(b->dmin);
#ifdef USE_AVX2
        for (int i = 0; i < QK_K / 16; i += 8) {
            const __m256i bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(b->scales + i)));
            _mm256_storeu_ps(s->d + i, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_and_si256(bytes, _mm256_set1_epi32(0x0F))),
                                                     _mm256_set1_ps(d)));
            _mm256_storeu_ps(s->m + i, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(bytes, 4)),
                                                     _mm256_set1_ps(-dmin)));
        }
#else
        for (int i = 0; i < QK_K / 16; i++)
            s->d[i] = d * (float)(b->scales[i] & 0x0F), s->m[i] = -dmin * (float)(b->scales[i] >> 4);
#endif
        break;
    }
    case Q3_K: {
        const block_q3_K *b = (const block_q3_K *)block;
        const float d = fp16_to_fp32(b->d);
        uint8_t sc[16];
        unpack_q3_k_scales(b->scales, sc);
#ifdef USE_AVX2
        for (int i = 0; i < QK_K / 16; i += 8) {
            const __m256i stored = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(sc + i)));
            const __m256 di = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(stored, _mm256_set1_epi32(32))),
                                            _mm256_set1_ps(d));
            _mm256_storeu_ps(s->d + i, di);
            _mm256_storeu_ps(s->m + i, _mm256_mul_ps(di, _mm256_set1_ps(-4.0f)));
        }
#else
        for (int i = 0; i < QK_K / 16; i++) s->d[i] = d * (float)((int)sc[i] - 32), s->m[i] = -4.0f * s->d[i];
#endif
        break;
    }
    default: {  /* Q6_K */
        const block_q6_K *b = (const block_q6_K *)block;
        const float d = fp16_to_fp32(b->d);
#ifdef USE_AVX2
        for (int i = 0; i < QK_K / 16; i += 8) {
            const __m256 di = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
                _mm_loadl_epi64((const __m128i *)(b->scales + i)))), _mm256_set1_ps(d));
            _mm256_storeu_ps(s->d + i, di);
            _mm256_storeu_ps(s->m + i, _mm256_mul_ps(di, _mm256_set1_ps(-32.0f)));
        }
#else
        for (int i = 0; i < QK_K / 16; i++) s->d[i] = d * (float)b->scales[i], s->m[i] = -32.0f * s->d[i];
#endif
    }
    }
}

/* ---------------------------------------------------------------------------------------
 * The integers. Where the bits of weight l of piece j lie:
 *
 *   Q5_0, Q5_1  (j = 0) low 4 bits: qs[l % 16], low nibble for l < 16, high for l >= 16;
 *               fifth bit: bit l of the 32-bit qh
 *   Q4_K        qs[32 (j / 2) + l], low nibble for even j, high for odd j
 *   Q5_K        Q4_K's nibble; fifth bit: bit j of qh[l]
 *   Q6_K        with j = 4 h + k (h: which 128 weights, k < 4):
 *               low 4 bits: ql[64 h + 32 (k % 2) + l], low nibble for k < 2, high for k >= 2;
 *               high 2 bits: bits 2k, 2k + 1 of qh[32 h + l]
 *   Q2_K, Q3_K  with j = 4 h + k: low 2 bits: bits 2k, 2k + 1 of qs[32 h + l];
 *               Q3_K's third bit: bit j of hmask[l]
 */
#ifdef USE_AVX2
/* 16 bytes of nibbles as 32 bytes: low nibbles (weights 0-15), then high nibbles (16-31). */
static inline __m256i nibbles_16_avx2(const uint8_t qs[QK / 2])
{
    const __m128i packed = _mm_loadu_si128((const __m128i *)qs), low4 = _mm_set1_epi8(0x0F);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(packed, 4), low4), _mm_and_si128(packed, low4));
}

/* The low (shift 0) or high (shift 4) nibbles of 32 bytes. */
static inline __m256i nibbles_32_avx2(const uint8_t *qs, int shift)
{
    return _mm256_and_si256(_mm256_srli_epi16(_mm256_loadu_si256((const __m256i *)qs), shift),
                            _mm256_set1_epi8(0x0F));
}

/* 0x10 in byte l where bit l of the 32-bit word at qh is set. */
static inline __m256i fifth_bits_avx2(const uint8_t qh[4])
{
    uint32_t bits;
    memcpy(&bits, qh, sizeof bits);
#ifdef USE_AVX512
    return _mm256_maskz_mov_epi8(bits, _mm256_set1_epi8(0x10));   /* the bits are a byte mask */
#else
    /* byte l gets byte l / 8 of the word; OR-ing in every bit but bit l % 8 makes it all ones
     * exactly when bit l is set (llama.cpp's bytes_from_bits_32) */
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int32_t)bits),
        _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0));
    const __m256i all_but_bit = _mm256_set1_epi64x(0x7FBFDFEFF7FBFDFE);
    const __m256i set = _mm256_cmpeq_epi8(_mm256_or_si256(spread, all_but_bit), _mm256_set1_epi64x(-1));
    return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
#endif
}

/* Bits `bit`, `bit` + 1 of each of 32 bytes, moved to bits 4 and 5 (Q6_K's high bits). The
 * 16-bit shifts carry bits across bytes, but only into places the mask clears. */
static inline __m256i two_bits_at_4_avx2(__m256i bytes, int bit)
{
    const __m256i moved = bit < 4 ? _mm256_slli_epi16(bytes, 4 - bit)
                        : bit > 4 ? _mm256_srli_epi16(bytes, bit - 4) : bytes;
    return _mm256_and_si256(moved, _mm256_set1_epi8(0x30));
}

static inline __m256i block_piece_q(weight_format type, const uint8_t *block, int j)
{
    switch (type) {
    case Q5_0: {
        const block_q5_0 *b = (const block_q5_0 *)block;
        return _mm256_or_si256(nibbles_16_avx2(b->qs), fifth_bits_avx2(b->qh));
    }
    case Q5_1: {
        const block_q5_1 *b = (const block_q5_1 *)block;
        return _mm256_or_si256(nibbles_16_avx2(b->qs), fifth_bits_avx2(b->qh));
    }
    case Q4_K:
        return nibbles_32_avx2(((const block_q4_K *)block)->qs + 32 * (j / 2), 4 * (j % 2));
    case Q5_K: {
        const block_q5_K *b = (const block_q5_K *)block;
        const __m256i bit = _mm256_set1_epi8((char)(1 << j));
        const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_loadu_si256((const __m256i *)b->qh), bit), bit);
        return _mm256_or_si256(nibbles_32_avx2(b->qs + 32 * (j / 2), 4 * (j % 2)),
                               _mm256_and_si256(set, _mm256_set1_epi8(0x10)));
    }
    case Q2_K: case Q3_K: {
        const uint8_t *qs = (type == Q2_K ? ((const block_q2_K *)block)->qs : ((const block_q3_K *)block)->qs)
                            + 32 * (j / 4);
        const __m256i low = _mm256_and_si256(_mm256_srli_epi16(_mm256_loadu_si256((const __m256i *)qs), 2 * (j % 4)),
                                             _mm256_set1_epi8(0x03));
        if (type == Q2_K) return low;
        const __m256i bit = _mm256_set1_epi8((char)(1 << j));
        const __m256i hmask = _mm256_loadu_si256((const __m256i *)((const block_q3_K *)block)->hmask);
        const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(hmask, bit), bit);
        return _mm256_or_si256(low, _mm256_and_si256(set, _mm256_set1_epi8(0x04)));
    }
    default: {  /* Q6_K */
        const block_q6_K *b = (const block_q6_K *)block;
        const int h = j / 4, k = j % 4;
        const __m256i low = nibbles_32_avx2(b->ql + 64 * h + 32 * (k % 2), 4 * (k / 2));
        const __m256i high = two_bits_at_4_avx2(_mm256_loadu_si256((const __m256i *)(b->qh + 32 * h)), 2 * k);
        return _mm256_or_si256(low, high);
    }
    }
}

#ifdef USE_AVX512
/* 16 bytes as 16 int32 lanes. */
static inline __m512i bytes_16_avx512(const uint8_t *bytes)
{
    return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)bytes));
}

/* Piece j's integers as int32 lanes: q[0] weights 0-15, q[1] weights 16-31. The fifth bits
 * are a 32-bit lane mask (one bit a weight), OR-ed in as 16 where set. */
static inline __attribute__((always_inline)) void
block_piece_ints_avx512(weight_format type, const uint8_t *block, int j, __m512i q[2])
{
    const __m512i low4 = _mm512_set1_epi32(0x0F), sixteen = _mm512_set1_epi32(16);
    switch (type) {
    case Q5_0: case Q5_1: {
        const uint8_t *qs = type == Q5_0 ? ((const block_q5_0 *)block)->qs : ((const block_q5_1 *)block)->qs;
        const uint8_t *qh = type == Q5_0 ? ((const block_q5_0 *)block)->qh : ((const block_q5_1 *)block)->qh;
        uint32_t fifth;
        memcpy(&fifth, qh, sizeof fifth);
        const __m512i bytes = bytes_16_avx512(qs);
        const __m512i low = _mm512_and_si512(bytes, low4), high = _mm512_srli_epi32(bytes, 4);
        q[0] = _mm512_mask_or_epi32(low, (__mmask16)fifth, low, sixteen);
        q[1] = _mm512_mask_or_epi32(high, (__mmask16)(fifth >> 16), high, sixteen);
        break;
    }
    case Q4_K: case Q5_K: {
        const uint8_t *qs = (type == Q4_K ? ((const block_q4_K *)block)->qs : ((const block_q5_K *)block)->qs)
                            + 32 * (j / 2);
        for (int i = 0; i < 2; i++) {
            const __m512i bytes = bytes_16_avx512(qs + 16 * i);
            q[i] = j % 2 ? _mm512_srli_epi32(bytes, 4) : _mm512_and_si512(bytes, low4);
        }
        if (type == Q5_K) {
            const __mmask32 fifth = _mm256_test_epi8_mask(
                _mm256_loadu_si256((const __m256i *)((const block_q5_K *)block)->qh), _mm256_set1_epi8((char)(1 << j)));
            q[0] = _mm512_mask_or_epi32(q[0], (__mmask16)fifth, q[0], sixteen);
            q[1] = _mm512_mask_or_epi32(q[1], (__mmask16)(fifth >> 16), q[1], sixteen);
        }
        break;
    }
    case Q2_K: case Q3_K: {
        const uint8_t *qs = (type == Q2_K ? ((const block_q2_K *)block)->qs : ((const block_q3_K *)block)->qs)
                            + 32 * (j / 4);
        for (int i = 0; i < 2; i++)
            q[i] = _mm512_and_si512(_mm512_srli_epi32(bytes_16_avx512(qs + 16 * i), 2 * (j % 4)), _mm512_set1_epi32(3));
        if (type == Q3_K) {
            const __mmask32 third = _mm256_test_epi8_mask(
                _mm256_loadu_si256((const __m256i *)((const block_q3_K *)block)->hmask), _mm256_set1_epi8((char)(1 << j)));
            const __m512i four = _mm512_set1_epi32(4);
            q[0] = _mm512_mask_or_epi32(q[0], (__mmask16)third, q[0], four);
            q[1] = _mm512_mask_or_epi32(q[1], (__mmask16)(third >> 16), q[1], four);
        }
        break;
    }
    default: {  /* Q6_K */
        const block_q6_K *b = (const block_q6_K *)block;
        const int h = j / 4, k = j % 4;
        for (int i = 0; i < 2; i++) {
            const __m512i low_bytes = bytes_16_avx512(b->ql + 64 * h + 32 * (k % 2) + 16 * i);
            const __m512i high_bytes = bytes_16_avx512(b->qh + 32 * h + 16 * i);
            const __m512i low = k / 2 ? _mm512_srli_epi32(low_bytes, 4) : _mm512_and_si512(low_bytes, low4);
            const __m512i high = 2 * k < 4 ? _mm512_slli_epi32(high_bytes, 4 - 2 * k)
                               : 2 * k > 4 ? _mm512_srli_epi32(high_bytes, 2 * k - 4) : high_bytes;
            /* low | (high & 0x30) in one instruction: truth table 0xF8 of (a, b, c) = a | (b & c) */
            q[i] = _mm512_ternarylogic_epi32(low, high, _mm512_set1_epi32(0x30), 0xF8);
        }
    }
    }
}
#endif
#else
/* The same integers in plain C, into q[32]. */
static inline void block_piece_q(weight_format type, const uint8_t *block, int j, uint8_t q[PIECE])
{
    switch (type) {
    case Q5_0: case Q5_1: {
        const uint8_t *qs = type == Q5_0 ? ((const block_q5_0 *)block)->qs : ((const block_q5_1 *)block)->qs;
        const uint8_t *qh_bytes = type == Q5_0 ? ((const block_q5_0 *)block)->qh : ((const block_q5_1 *)block)->qh;
        uint32_t qh;
        memcpy(&qh, qh_bytes, sizeof qh);
        for (int l = 0; l < QK / 2; l++) {
            q[l] = (uint8_t)((qs[l] & 0x0F) | ((qh >> l) & 1) << 4);
            q[l + QK / 2] = (uint8_t)((qs[l] >> 4) | ((qh >> (l + QK / 2)) & 1) << 4);
        }
        break;
    }
    case Q4_K: case Q5_K: {
        const uint8_t *qs = (type == Q4_K ? ((const block_q4_K *)block)->qs : ((const block_q5_K *)block)->qs)
                            + 32 * (j / 2);
        for (int l = 0; l < PIECE; l++) {
            int v = (qs[l] >> (4 * (j % 2))) & 0x0F;
            if (type == Q5_K) v |= ((((const block_q5_K *)block)->qh[l] >> j) & 1) << 4;
            q[l] = (uint8_t)v;
        }
        break;
    }
    case Q2_K: case Q3_K: {
        const uint8_t *qs = (type == Q2_K ? ((const block_q2_K *)block)->qs : ((const block_q3_K *)block)->qs)
                            + 32 * (j / 4);
        for (int l = 0; l < PIECE; l++) {
            int v = (qs[l] >> (2 * (j % 4))) & 0x03;
            if (type == Q3_K) v |= ((((const block_q3_K *)block)->hmask[l] >> j) & 1) << 2;
            q[l] = (uint8_t)v;
        }
        break;
    }
    default: {  /* Q6_K */
        const block_q6_K *b = (const block_q6_K *)block;
        const int h = j / 4, k = j % 4;
        for (int l = 0; l < PIECE; l++) {
            const int low = (b->ql[64 * h + 32 * (k % 2) + l] >> (4 * (k / 2))) & 0x0F;
            const int high = (b->qh[32 * h + l] >> (2 * k)) & 0x03;
            q[l] = (uint8_t)(low | high << 4);
        }
    }
    }
}
#endif

#endif
