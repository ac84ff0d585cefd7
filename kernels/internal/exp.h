/* e^x for x <= 0, 8 lanes at a time: the exponentials of softmax (attend.h, attend_block.h:
 * scores minus their maximum) and of SiLU (swiglu.h: e^-|g|), which expf would take one at a
 * time. */
#ifndef LLAMA_NP_EXP_H
#define LLAMA_NP_EXP_H

#include "simd.h"

#ifdef USE_AVX2
/* e^x for x <= 0, 8 lanes (Cephes' expf): e^x = 2^n · e^r with n = round(x / ln 2) and
 * |r| <= ln 2 / 2, e^r by a degree-6 polynomial; relative error ~2e-7, like expf. Below
 * -87 (where e^x < 2^-126) it returns 0. */
static inline __m256 exp_negative_avx2(__m256 x)
{
    const __m256 tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_LT_OQ);
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    /* r = x - n ln 2, with ln 2 split in two so that n · ln2_hi is exact */
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 poly = _mm256_set1_ps(1.9875691500e-4f);
    poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.3981999507e-3f));
    poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(8.3334519073e-3f));
    poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(4.1665795894e-2f));
    poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.6666665459e-1f));
    poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(5.0000001201e-1f));
    poly = _mm256_fmadd_ps(poly, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    /* 2^n: n + 127 into the exponent bits */
    const __m256i two_n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(tiny, _mm256_mul_ps(poly, _mm256_castsi256_ps(two_n)));
}
#endif

#endif
