/* What the kernels' SIMD code shares: whether to use AVX2 with FMA (USE_AVX2, when this
 * build targets a CPU with both: -march=native, unless LLAMA_NP_PORTABLE=1), whether also
 * AVX-512 with byte and 256-bit forms (USE_AVX512: F, BW and VL; the block formats of
 * internal/piece_rows.h use its 16-lane registers), and the sum of the 8 lanes of a register. Included by attend.h and quant_rows.h; like every header in
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

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define USE_AVX512 1
#endif
#endif

#endif
