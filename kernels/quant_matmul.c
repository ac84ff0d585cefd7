/* Quantized weights times fp32 activations: out [T, out_features] = x [T, in_features] @ W.T,
 * W stored row by row as llama.cpp blocks of QK = 32 weights (layouts in llama_np/quant.py):
 *
 *   Q4_0  18 bytes  d:f16, qs[16]        w = (q - 8) * d
 *   Q4_1  20 bytes  d:f16, m:f16, qs[16] w = q * d + m
 *   Q8_0  34 bytes  d:f16, qs:int8[32]   w = q * d
 *
 * NumPy reference: llama_np.quant.quant_matmul. Two regimes:
 *
 *   T = 1 (one-token decode): a matrix-vector product. Every weight byte is used once, so
 *     the aim is to stream the blocks at memory speed: each block is decoded in registers
 *     and multiplied into the dot product at once, nothing is written back. (On a Zen 3
 *     core the int → float conversions, not the memory, turn out to be the limit.)
 *   T >= 2 (prompt prefill, training): a matrix-matrix product. Every weight is used T
 *     times, so decode each block once: TILE_ROWS rows are decoded into an fp32 scratch
 *     tile, which then meets all T activation rows in a register-blocked micro-kernel.
 *
 * Both are split over output rows with OpenMP. With AVX2 + FMA (and F16C for the scales)
 * the inner loops use 8-lane intrinsics; otherwise plain C computes the same sums.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define USE_AVX2 1
#elif defined(__F16C__)
#include <immintrin.h>
#endif

#define QK 32              /* weights per block (llama.cpp QK4_0 = QK4_1 = QK8_0) */
/* Tile sizes, measured on a 2-core Zen 3: a 6 × 2 micro-kernel keeps 12 accumulators,
 * 2 activation vectors and 1 weight vector in the 16 AVX2 registers (4 × 2: 35-45 GFLOP/s
 * per core, 6 × 2: 45-64). Decoding once pays off from 2 tokens on. */
#define TILE_ROWS 6        /* weight rows the GEMM micro-kernel multiplies at once */
#define TILE_TOKENS 2      /* activation rows the GEMM micro-kernel multiplies at once */
#define GEMM_MIN_TOKENS 2  /* fewer tokens: GEMV, decoding each block in registers */

typedef struct { uint16_t d; uint8_t qs[QK / 2]; } block_q4_0;
typedef struct { uint16_t d, m; uint8_t qs[QK / 2]; } block_q4_1;
typedef struct { uint16_t d; int8_t qs[QK]; } block_q8_0;
_Static_assert(sizeof(block_q4_0) == 18, "block_q4_0 must be 18 bytes");
_Static_assert(sizeof(block_q4_1) == 20, "block_q4_1 must be 20 bytes");
_Static_assert(sizeof(block_q8_0) == 34, "block_q8_0 must be 34 bytes");

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

/* ---------------------------------------------------------------------------------------
 * Decoding one block: 32 weights as fp32.
 * Scalar versions write w[32]; AVX2 versions return them in 4 registers of 8 lanes,
 * lanes 0-7, 8-15, 16-23, 24-31 of the block. */

static inline void decode_block_q4_0(const block_q4_0 *b, float w[QK])
{
    const float d = fp16_to_fp32(b->d);
    for (int j = 0; j < QK / 2; j++) {
        w[j] = ((b->qs[j] & 0x0F) - 8) * d;
        w[j + QK / 2] = ((b->qs[j] >> 4) - 8) * d;
    }
}

static inline void decode_block_q4_1(const block_q4_1 *b, float w[QK])
{
    const float d = fp16_to_fp32(b->d), m = fp16_to_fp32(b->m);
    for (int j = 0; j < QK / 2; j++) {
        w[j] = (b->qs[j] & 0x0F) * d + m;
        w[j + QK / 2] = (b->qs[j] >> 4) * d + m;
    }
}

static inline void decode_block_q8_0(const block_q8_0 *b, float w[QK])
{
    const float d = fp16_to_fp32(b->d);
    for (int j = 0; j < QK; j++) w[j] = b->qs[j] * d;
}

#ifdef USE_AVX2
typedef struct { __m256 v[4]; } f32x32;   /* one decoded block in registers */

/* The 16 nibble bytes as 32 int32 lanes. Zero-extending 8 bytes to 8 int32 lanes puts
 * byte j's low nibble (weight j) in bits 0-3 and its high nibble (weight j + 16) in bits
 * 4-7 of lane j, so a mask and a shift separate them. */
static inline void unpack_nibbles_avx2(const uint8_t qs[QK / 2], __m256i q[4])
{
    const __m256i low_nibble = _mm256_set1_epi32(0x0F);
    const __m256i bytes_0_7 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)qs));
    const __m256i bytes_8_15 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 8)));
    q[0] = _mm256_and_si256(bytes_0_7, low_nibble);     /* weights 0-7 */
    q[1] = _mm256_and_si256(bytes_8_15, low_nibble);    /* weights 8-15 */
    q[2] = _mm256_srli_epi32(bytes_0_7, 4);             /* weights 16-23 */
    q[3] = _mm256_srli_epi32(bytes_8_15, 4);            /* weights 24-31 */
}

static inline f32x32 decode_block_q4_0_avx2(const block_q4_0 *b)
{
    const __m256 d = _mm256_set1_ps(fp16_to_fp32(b->d));
    const __m256i eight = _mm256_set1_epi32(8);
    __m256i q[4];
    unpack_nibbles_avx2(b->qs, q);
    f32x32 w;
    for (int i = 0; i < 4; i++)
        w.v[i] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q[i], eight)), d);
    return w;
}

static inline f32x32 decode_block_q4_1_avx2(const block_q4_1 *b)
{
    const __m256 d = _mm256_set1_ps(fp16_to_fp32(b->d));
    const __m256 m = _mm256_set1_ps(fp16_to_fp32(b->m));
    __m256i q[4];
    unpack_nibbles_avx2(b->qs, q);
    f32x32 w;
    for (int i = 0; i < 4; i++) w.v[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q[i]), d, m);
    return w;
}

static inline f32x32 decode_block_q8_0_avx2(const block_q8_0 *b)
{
    const __m256 d = _mm256_set1_ps(fp16_to_fp32(b->d));
    f32x32 w;
    for (int i = 0; i < 4; i++) {
        const __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b->qs + 8 * i)));
        w.v[i] = _mm256_mul_ps(_mm256_cvtepi32_ps(q), d);
    }
    return w;
}

static inline float hsum_avx2(__m256 v)   /* sum of the 8 lanes */
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

/* ---------------------------------------------------------------------------------------
 * Two operations on a row of n_blocks blocks of any format (x: n_blocks * 32 floats):
 *   dot_row     Σ_k w[k] x[k], decoding each block in registers  (GEMV)
 *   decode_row  w[0 .. n_blocks*32) as fp32 into a scratch row   (GEMM)
 * The format switch sits inside the block loop for readability; the compiler hoists it
 * out (loop unswitching), leaving one tight loop per format. */

typedef enum { Q4_0, Q4_1, Q8_0 } quant_type;

static const int64_t BLOCK_BYTES[] = {
    [Q4_0] = sizeof(block_q4_0), [Q4_1] = sizeof(block_q4_1), [Q8_0] = sizeof(block_q8_0),
};

#ifdef USE_AVX2
static inline f32x32 decode_block_avx2(quant_type type, const uint8_t *block)
{
    switch (type) {
    case Q4_0: return decode_block_q4_0_avx2((const block_q4_0 *)block);
    case Q4_1: return decode_block_q4_1_avx2((const block_q4_1 *)block);
    default:   return decode_block_q8_0_avx2((const block_q8_0 *)block);
    }
}
#else
static inline void decode_block(quant_type type, const uint8_t *block, float w[QK])
{
    switch (type) {
    case Q4_0: decode_block_q4_0((const block_q4_0 *)block, w); break;
    case Q4_1: decode_block_q4_1((const block_q4_1 *)block, w); break;
    default:   decode_block_q8_0((const block_q8_0 *)block, w); break;
    }
}
#endif

#ifdef USE_AVX2
/* Σ_k q[k] x[k] over one block as 8 lane sums: the nibbles (or bytes) become floats, but the
 * scales wait until the block is summed. Two chains of two products each, so no FMA waits
 * for the one before it for long. */
static inline __m256 dot_block_q_avx2(const __m256 q[4], const float *xb)
{
    const __m256 s01 = _mm256_fmadd_ps(q[1], _mm256_loadu_ps(xb + 8), _mm256_mul_ps(q[0], _mm256_loadu_ps(xb)));
    const __m256 s23 = _mm256_fmadd_ps(q[3], _mm256_loadu_ps(xb + 24), _mm256_mul_ps(q[2], _mm256_loadu_ps(xb + 16)));
    return _mm256_add_ps(s01, s23);
}

static inline void nibbles_as_floats_avx2(const uint8_t qs[QK / 2], __m256 q[4])
{
    __m256i qi[4];
    unpack_nibbles_avx2(qs, qi);
    for (int i = 0; i < 4; i++) q[i] = _mm256_cvtepi32_ps(qi[i]);
}
#endif

/* dot_row for the GEMV. A block's weights are w = d·q + m (Q4_1), d·(q - 8) (Q4_0) or d·q
 * (Q8_0), so its share of the dot product factors as
 *
 *   Σ w x = d · Σ q x  +  m · Σ x        (Q4_0: m = -8 d)
 *
 * Σ x of each block (x_sums) is the same for every row: computed once per activation row,
 * it leaves one multiply by d per block instead of one per weight. */
static float dot_row(quant_type type, const uint8_t *row, const float *x, const float *x_sums,
                     int64_t n_blocks)
{
#ifdef USE_AVX2
    float offset = 0.0f;  /* Σ over blocks of m · Σ x */
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < n_blocks; b++) {
        const uint8_t *block = row + b * BLOCK_BYTES[type];
        __m256 q[4];
        float d;
        if (type == Q8_0) {
            const block_q8_0 *blk = (const block_q8_0 *)block;
            d = fp16_to_fp32(blk->d);
            for (int i = 0; i < 4; i++)
                q[i] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(blk->qs + 8 * i))));
        } else if (type == Q4_1) {
            const block_q4_1 *blk = (const block_q4_1 *)block;
            d = fp16_to_fp32(blk->d);
            offset += fp16_to_fp32(blk->m) * x_sums[b];
            nibbles_as_floats_avx2(blk->qs, q);
        } else {
            const block_q4_0 *blk = (const block_q4_0 *)block;
            d = fp16_to_fp32(blk->d);
            offset -= 8.0f * d * x_sums[b];
            nibbles_as_floats_avx2(blk->qs, q);
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), dot_block_q_avx2(q, x + b * QK), acc);
    }
    return hsum_avx2(acc) + offset;
#else
    float sum = 0.0f, w[QK];  /* plain C: decode each block, then multiply */
    (void)x_sums;
    for (int64_t b = 0; b < n_blocks; b++) {
        decode_block(type, row + b * BLOCK_BYTES[type], w);
        for (int j = 0; j < QK; j++) sum += w[j] * x[b * QK + j];
    }
    return sum;
#endif
}

static void decode_row(quant_type type, float *w, const uint8_t *row, int64_t n_blocks)
{
    for (int64_t b = 0; b < n_blocks; b++) {
#ifdef USE_AVX2
        const f32x32 wb = decode_block_avx2(type, row + b * BLOCK_BYTES[type]);
        for (int i = 0; i < 4; i++) _mm256_storeu_ps(w + b * QK + 8 * i, wb.v[i]);
#else
        decode_block(type, row + b * BLOCK_BYTES[type], w + b * QK);
#endif
    }
}

/* ---------------------------------------------------------------------------------------
 * The fp32 GEMM micro-kernel: TILE_ROWS decoded weight rows w [TILE_ROWS, n] against
 * TILE_TOKENS activation rows x [TILE_TOKENS, n]; out[t * out_stride + r] = w[r] · x[t].
 * Each loaded weight vector serves TILE_TOKENS products, each activation vector TILE_ROWS:
 * the TILE_ROWS × TILE_TOKENS accumulators stay in registers for the whole reduction.
 * n is a multiple of 32. */
static void dot_tile(float *out, int64_t out_stride, const float *w, const float *x, int64_t n)
{
#ifdef USE_AVX2
    __m256 acc[TILE_ROWS][TILE_TOKENS];
    for (int r = 0; r < TILE_ROWS; r++)
        for (int t = 0; t < TILE_TOKENS; t++) acc[r][t] = _mm256_setzero_ps();
    for (int64_t k = 0; k < n; k += 8) {
        __m256 xk[TILE_TOKENS];
        for (int t = 0; t < TILE_TOKENS; t++) xk[t] = _mm256_loadu_ps(x + t * n + k);
        for (int r = 0; r < TILE_ROWS; r++) {
            const __m256 wk = _mm256_loadu_ps(w + r * n + k);
            for (int t = 0; t < TILE_TOKENS; t++) acc[r][t] = _mm256_fmadd_ps(wk, xk[t], acc[r][t]);
        }
    }
    for (int r = 0; r < TILE_ROWS; r++)
        for (int t = 0; t < TILE_TOKENS; t++) out[t * out_stride + r] = hsum_avx2(acc[r][t]);
#else
    float acc[TILE_ROWS][TILE_TOKENS] = {{0.0f}};
    for (int64_t k = 0; k < n; k++)
        for (int r = 0; r < TILE_ROWS; r++)
            for (int t = 0; t < TILE_TOKENS; t++) acc[r][t] += w[r * n + k] * x[t * n + k];
    for (int r = 0; r < TILE_ROWS; r++)
        for (int t = 0; t < TILE_TOKENS; t++) out[t * out_stride + r] = acc[r][t];
#endif
}

/* One dot product of two fp32 rows of length n (a multiple of 32): the tiles' leftovers.
 * Four accumulators, so that consecutive FMAs do not wait for each other. */
static float dot_f32(const float *a, const float *b, int64_t n)
{
#ifdef USE_AVX2
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t k = 0; k < n; k += 32)
        for (int i = 0; i < 4; i++)
            acc[i] = _mm256_fmadd_ps(_mm256_loadu_ps(a + k + 8 * i), _mm256_loadu_ps(b + k + 8 * i), acc[i]);
    return hsum_avx2(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
#else
    float sum = 0.0f;
    for (int64_t k = 0; k < n; k++) sum += a[k] * b[k];
    return sum;
#endif
}

/* ---------------------------------------------------------------------------------------
 * The driver shared by the three formats. */

/* out[t, r] for rows r0 <= r < r1, every token, decoding each block once per token. */
static void gemv_rows(quant_type type, float *out, const uint8_t *w, const float *x,
                      const float *x_sums, int64_t n_tokens, int64_t out_features,
                      int64_t in_features, int64_t r0, int64_t r1)
{
    const int64_t n_blocks = in_features / QK;
    const int64_t row_bytes = n_blocks * BLOCK_BYTES[type];
    for (int64_t r = r0; r < r1; r++)
        for (int64_t t = 0; t < n_tokens; t++)
            out[t * out_features + r] = dot_row(type, w + r * row_bytes, x + t * in_features,
                                                x_sums + t * n_blocks, n_blocks);
}

/* Returns 0, or -1 when there is no memory for the block sums of x. */
static int quant_matmul(quant_type type, float *out, const uint8_t *w, const float *x,
                        int64_t n_tokens, int64_t out_features, int64_t in_features, int n_threads)
{
    const int64_t n_blocks = in_features / QK;
    const int64_t row_bytes = n_blocks * BLOCK_BYTES[type];
    float *x_sums = malloc((n_tokens * n_blocks + 1) * sizeof(float));  /* [T, n_blocks]: Σ x per block */
    if (x_sums == NULL) return -1;
    for (int64_t i = 0; i < n_tokens * n_blocks; i++) {
        float sum = 0.0f;
        for (int j = 0; j < QK; j++) sum += x[i * QK + j];
        x_sums[i] = sum;
    }

    if (n_tokens < GEMM_MIN_TOKENS) {
        #pragma omp parallel for num_threads(n_threads) schedule(static)
        for (int64_t r = 0; r < out_features; r++)
            gemv_rows(type, out, w, x, x_sums, n_tokens, out_features, in_features, r, r + 1);
        free(x_sums);
        return 0;
    }

    #pragma omp parallel num_threads(n_threads)
    {
        float *w_tile = malloc(TILE_ROWS * in_features * sizeof(float));  /* [TILE_ROWS, in] */
        #pragma omp for schedule(static)
        for (int64_t r0 = 0; r0 < out_features; r0 += TILE_ROWS) {
            const int64_t r1 = r0 + TILE_ROWS < out_features ? r0 + TILE_ROWS : out_features;
            if (w_tile == NULL || r1 - r0 < TILE_ROWS) {  /* no scratch, or the last rows */
                gemv_rows(type, out, w, x, x_sums, n_tokens, out_features, in_features, r0, r1);
                continue;
            }
            for (int64_t r = r0; r < r1; r++)
                decode_row(type, w_tile + (r - r0) * in_features, w + r * row_bytes, n_blocks);
            int64_t t = 0;
            for (; t + TILE_TOKENS <= n_tokens; t += TILE_TOKENS)
                dot_tile(out + t * out_features + r0, out_features, w_tile, x + t * in_features, in_features);
            for (; t < n_tokens; t++)                    /* an odd token at the end */
                for (int64_t r = r0; r < r1; r++)
                    out[t * out_features + r] = dot_f32(w_tile + (r - r0) * in_features,
                                                        x + t * in_features, in_features);
        }
        free(w_tile);
    }
    free(x_sums);
    return 0;
}

int matmul_q4_0_f32(float *out, const uint8_t *w, const float *x, int64_t n_rows_x,
                    int64_t out_features, int64_t in_features, int n_threads)
{
    return quant_matmul(Q4_0, out, w, x, n_rows_x, out_features, in_features, n_threads);
}

int matmul_q4_1_f32(float *out, const uint8_t *w, const float *x, int64_t n_rows_x,
                    int64_t out_features, int64_t in_features, int n_threads)
{
    return quant_matmul(Q4_1, out, w, x, n_rows_x, out_features, in_features, n_threads);
}

int matmul_q8_0_f32(float *out, const uint8_t *w, const float *x, int64_t n_rows_x,
                    int64_t out_features, int64_t in_features, int n_threads)
{
    return quant_matmul(Q8_0, out, w, x, n_rows_x, out_features, in_features, n_threads);
}

/* =======================================================================================
 * Optional: int8 activations — llama.cpp's arithmetic (ggml_vec_dot_q4_1_q8_1 and kin).
 * NumPy reference: llama_np.quant.quant_matmul_int8.
 *
 * Quantize every 32-block of an activation row the Q8_0 way, dx = max|x| / 127 and
 * qx = round(x / dx), and keep sx = dx · Σ qx. A block's dot product then needs integer
 * products only, and one scale multiply:
 *
 *   Q8_0   Σ (dw qw)(dx qx)       = dw dx · Σ qw qx
 *   Q4_1   Σ (dw qw + m)(dx qx)   = dw dx · Σ qw qx + m · sx
 *   Q4_0   Σ dw (qw - 8)(dx qx)   = dw dx · Σ qw qx - 8 dw · sx
 *
 * AVX2 multiplies 32 byte pairs and adds neighbours in one instruction (maddubs: unsigned
 * bytes × signed bytes → 16 int16), which is why llama.cpp is fast. The price: each
 * activation is rounded to 8 bits, an error of up to dx/2, i.e. of up to 1/254 of the
 * block's largest |x| — on top of the 4-bit weights' error (see quant_matmul_int8).
 * llama.cpp stores dx and sx as fp16 (block_q8_1); this scratch keeps them in fp32.
 */
typedef struct { float d, s; int8_t qs[QK]; } block_q8_act;  /* dx, sx = dx Σ qx, qx */

static void quantize_activations(block_q8_act *blocks, const float *x, int64_t n_blocks)
{
    for (int64_t b = 0; b < n_blocks; b++) {
        const float *xb = x + b * QK;  /* [32] */
        float amax = 0.0f;
        for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(xb[j]));
        const float d = amax / 127.0f;
        const float inv_d = d != 0.0f ? 1.0f / d : 0.0f;
        int32_t sum = 0;
        for (int j = 0; j < QK; j++) {
            const int32_t q = (int32_t)nearbyintf(xb[j] * inv_d);  /* round half to even */
            blocks[b].qs[j] = (int8_t)q;
            sum += q;
        }
        blocks[b].d = d;
        blocks[b].s = d * (float)sum;
    }
}

#ifdef USE_AVX2
/* Σ qw·qx over a block as 8 int32 partial sums, qw = 32 nibbles (0..15), qx signed bytes.
 * Low nibbles are weights 0-15, high nibbles 16-31: the two halves of one 256-bit register
 * line up with qx[0..15] and qx[16..31]. */
static inline __m256i dot_nibbles_int8_avx2(const uint8_t qs[QK / 2], const int8_t qx[QK])
{
    const __m128i packed = _mm_loadu_si128((const __m128i *)qs);
    const __m128i low_nibble = _mm_set1_epi8(0x0F);
    const __m256i qw = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(packed, 4), low_nibble),
                                        _mm_and_si128(packed, low_nibble));
    const __m256i pair_sums = _mm256_maddubs_epi16(qw, _mm256_loadu_si256((const __m256i *)qx));
    return _mm256_madd_epi16(pair_sums, _mm256_set1_epi16(1));
}

/* The same for signed qw: maddubs wants its first operand unsigned, so move the sign of
 * qw onto qx (|qw| · sign(qw) qx = qw qx). */
static inline __m256i dot_int8_int8_avx2(const int8_t qw[QK], const int8_t qx[QK])
{
    const __m256i w = _mm256_loadu_si256((const __m256i *)qw);
    const __m256i xv = _mm256_loadu_si256((const __m256i *)qx);
    const __m256i pair_sums = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(xv, w));
    return _mm256_madd_epi16(pair_sums, _mm256_set1_epi16(1));
}
#endif

/* The 16 nibble bytes of a Q4_0 or Q4_1 block. */
static inline const uint8_t *nibbles_of(quant_type type, const uint8_t *block)
{
    return type == Q4_0 ? ((const block_q4_0 *)block)->qs : ((const block_q4_1 *)block)->qs;
}

/* Σ qw·qx over one block, in plain C. */
static inline int32_t dot_block_int8(quant_type type, const uint8_t *block, const int8_t qx[QK])
{
    int32_t sum = 0;
    if (type == Q8_0) {
        const int8_t *qw = ((const block_q8_0 *)block)->qs;
        for (int j = 0; j < QK; j++) sum += qw[j] * qx[j];
    } else {
        const uint8_t *qs = nibbles_of(type, block);
        for (int j = 0; j < QK / 2; j++) sum += (qs[j] & 0x0F) * qx[j] + (qs[j] >> 4) * qx[j + QK / 2];
    }
    return sum;
}

/* Σ_k w[k] x[k] for one weight row against one quantized activation row. */
static float dot_row_int8(quant_type type, const uint8_t *row, const block_q8_act *xq, int64_t n_blocks)
{
    float offset = 0.0f;  /* Σ over blocks of m · sx (Q4_1) or -8 dw · sx (Q4_0) */
#ifdef USE_AVX2
    __m256 acc = _mm256_setzero_ps();
#else
    float acc = 0.0f;
#endif
    for (int64_t b = 0; b < n_blocks; b++) {
        const uint8_t *block = row + b * BLOCK_BYTES[type];
        uint16_t d_bits;
        memcpy(&d_bits, block, sizeof d_bits);                     /* d comes first in every block */
        const float dw = fp16_to_fp32(d_bits);
        if (type == Q4_0) offset -= 8.0f * dw * xq[b].s;
        if (type == Q4_1) offset += fp16_to_fp32(((const block_q4_1 *)block)->m) * xq[b].s;
#ifdef USE_AVX2
        const __m256i sums = type == Q8_0
            ? dot_int8_int8_avx2(((const block_q8_0 *)block)->qs, xq[b].qs)
            : dot_nibbles_int8_avx2(nibbles_of(type, block), xq[b].qs);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dw * xq[b].d), _mm256_cvtepi32_ps(sums), acc);
#else
        acc += dw * xq[b].d * (float)dot_block_int8(type, block, xq[b].qs);
#endif
    }
#ifdef USE_AVX2
    return hsum_avx2(acc) + offset;
#else
    return acc + offset;
#endif
}

/* Returns 0, or -1 when the scratch for the quantized activations cannot be allocated. */
static int quant_matmul_int8(quant_type type, float *out, const uint8_t *w, const float *x,
                             int64_t n_tokens, int64_t out_features, int64_t in_features, int n_threads)
{
    const int64_t n_blocks = in_features / QK;
    const int64_t row_bytes = n_blocks * BLOCK_BYTES[type];
    if (n_tokens == 0 || n_blocks == 0) {
        for (int64_t i = 0; i < n_tokens * out_features; i++) out[i] = 0.0f;
        return 0;
    }
    block_q8_act *xq = malloc(n_tokens * n_blocks * sizeof(block_q8_act));  /* [T, n_blocks] */
    if (xq == NULL) return -1;
    #pragma omp parallel num_threads(n_threads)
    {
        #pragma omp for schedule(static)
        for (int64_t t = 0; t < n_tokens; t++)
            quantize_activations(xq + t * n_blocks, x + t * in_features, n_blocks);
        /* every token against a weight row while the row is in L1 */
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < out_features; r++)
            for (int64_t t = 0; t < n_tokens; t++)
                out[t * out_features + r] = dot_row_int8(type, w + r * row_bytes, xq + t * n_blocks, n_blocks);
    }
    free(xq);
    return 0;
}

int matmul_q4_0_f32_int8(float *out, const uint8_t *w, const float *x, int64_t n_rows_x,
                         int64_t out_features, int64_t in_features, int n_threads)
{
    return quant_matmul_int8(Q4_0, out, w, x, n_rows_x, out_features, in_features, n_threads);
}

int matmul_q4_1_f32_int8(float *out, const uint8_t *w, const float *x, int64_t n_rows_x,
                         int64_t out_features, int64_t in_features, int n_threads)
{
    return quant_matmul_int8(Q4_1, out, w, x, n_rows_x, out_features, in_features, n_threads);
}

int matmul_q8_0_f32_int8(float *out, const uint8_t *w, const float *x, int64_t n_rows_x,
                         int64_t out_features, int64_t in_features, int n_threads)
{
    return quant_matmul_int8(Q8_0, out, w, x, n_rows_x, out_features, in_features, n_threads);
}
