/* What the kernels' SIMD code shares: whether to use AVX2 with FMA (USE_AVX2, when this
 * build targets a CPU with both: -march=native, unless LLAMA_NP_PORTABLE=1), whether also
 * AVX-512 with byte and 256-bit forms (USE_AVX512: F, BW and VL; the block formats of
 * internal/piece_rows.h, quant_rows.h's two Q4_0 / Q4_1 rows at once and quant_rows_batch.h's two Q8_0 rows use its 16-lane registers), the sum of the 8 lanes of a register, and
 * the byte dot products of the int8 paths. Included by every internal header with SIMD code
 * (attend.h, attend_block.h, block_pieces.h, exp.h, kv_rows.h, quant_rows.h, swiglu.h) and by
 * adamw.c; like every header in
 * internal/, static inline code, so that each kernel gets its own copy inlined into its loops.
 */
#ifndef LLAMA_NP_SIMD_H
#define LLAMA_NP_SIMD_H

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define USE_AVX2 1

/* The sum of the 8 lanes of v: the two halves added, then their pairs, then the last two. */
static inline float hsum_avx2(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 8 int32 lanes, lane i = Σ of the 4 products u[4i + j] · s[4i + j] (unsigned bytes u, signed
 * bytes s): the integer dot products of the int8-activation paths. With VNNI one instruction
 * (dpbusd); without, maddubs adds neighbouring products into int16 and madd adds neighbouring
 * int16: the same 4 products, exactly, as long as no int16 pair sum saturates, which the
 * callers' ranges guarantee (|u| <= 128 and |s| <= 127 give at most 2 · 128 · 127 = 32,512). */
static inline __m256i dot_bytes_avx2(__m256i u, __m256i s)
{
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define USE_AVX512 1
#endif
#endif

#endif
