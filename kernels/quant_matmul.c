/* Quantized weights times fp32 activations: out [T, out_features] = x [T, in_features] @ W.T,
 * W stored row by row as llama.cpp blocks: Q4_0, Q4_1, Q8_0, Q5_0, Q5_1 (32 weights a block)
 * or the K-quants Q4_K, Q5_K, Q6_K (256; layouts in internal/formats.h).
 *
 * NumPy reference: llama_np.quant.quant_matmul. The row dot products come from
 * internal/quant_rows.h. Two regimes:
 *
 *   T = 1 (one-token decode): a matrix-vector product. Every weight byte is used once, so
 *     the aim is to stream the blocks at memory speed: each block is decoded in registers
 *     and multiplied into the dot product at once, nothing is written back (dot_rows).
 *   T >= 2 (prompt prefill, training): a matrix-matrix product. Every weight is used T
 *     times, so decode each block once: TILE_ROWS rows are decoded into an fp32 scratch
 *     tile, which then meets the T activation rows, packed in panels of PANEL tokens, in
 *     a register-blocked micro-kernel (gemm_tile).
 *
 * Both are split over output rows with OpenMP. With AVX2 + FMA (and F16C for the scales)
 * the inner loops use 8-lane intrinsics; otherwise plain C computes the same sums.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal/decode_rows.h"
#include "internal/quant_rows.h"

/* Tile sizes: the micro-kernel (gemm_tile) multiplies TILE_ROWS decoded weight rows by PANEL
 * tokens at once, 6 × 16 filling the 16 AVX2 registers. Decoding once pays off from 2
 * tokens on. */
#define TILE_ROWS 6        /* weight rows the GEMM micro-kernel multiplies at once */
#define PANEL 16           /* tokens the GEMM micro-kernel multiplies at once (AVX-512: one register) */
#define GEMM_MIN_TOKENS 2  /* fewer tokens: GEMV, decoding each block in registers */
#define GEMV_ROWS 16       /* rows a GEMV thread takes at a time */

/* ---------------------------------------------------------------------------------------
 * The fp32 GEMM micro-kernel: TILE_ROWS decoded weight rows w [TILE_ROWS, n] times one
 * panel of PANEL tokens, packed k-major: panel [n, PANEL], panel[k * PANEL + j] = x[t0 + j, k].
 *
 *   for each k:  acc[r][:] += w[r, k] · panel[k, :]      (r < TILE_ROWS; PANEL lanes)
 *
 * an outer product per k: one broadcast weight times the PANEL tokens' activations, so
 * every accumulator lane is one finished output, w[r] · x[t0 + j], with no horizontal sums
 * at the end. 6 rows × 16 tokens = 12 accumulators of 8 lanes, plus 2 activation vectors
 * and 1 broadcast weight: 15 of the 16 AVX2 registers. Per k, 12 FMAs for 8 loads; with
 * AVX-512 one 16-lane register per row, 6 FMAs for 7 loads, every lane the same sums.
 * Writes out[j * out_stride + r] for the n_valid (<= PANEL) real tokens of the panel. */
static void gemm_tile(float *out, int64_t out_stride, const float *w, const float *panel, int64_t n,
                      int64_t n_valid)
{
    float acc[TILE_ROWS][PANEL];                        /* out[t0 + j, r0 + r] = acc[r][j] */
#if defined(USE_AVX512)
    /* a row's 16 tokens in one 16-lane register: lane by lane the AVX2 loop below (each lane
     * the same FMAs in the same order), with half its FMA instructions */
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0;
    for (int64_t k = 0; k < n; k++) {
        const __m512 xk = _mm512_loadu_ps(panel + k * PANEL);
#define ROW(r, a) a = _mm512_fmadd_ps(_mm512_set1_ps(w[r * n + k]), xk, a);
        ROW(0, a0) ROW(1, a1) ROW(2, a2) ROW(3, a3) ROW(4, a4) ROW(5, a5)
#undef ROW
    }
    const __m512 rows[TILE_ROWS] = {a0, a1, a2, a3, a4, a5};
    for (int r = 0; r < TILE_ROWS; r++) _mm512_storeu_ps(acc[r], rows[r]);
#elif defined(USE_AVX2)
    /* the 12 accumulators as named variables: GCC kept an array of them on the stack */
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00;
    __m256 a30 = a00, a31 = a00, a40 = a00, a41 = a00, a50 = a00, a51 = a00;
    if (n_valid > 8) {
        for (int64_t k = 0; k < n; k++) {
            const __m256 x0 = _mm256_loadu_ps(panel + k * PANEL), x1 = _mm256_loadu_ps(panel + k * PANEL + 8);
            __m256 wk;
#define ROW(r, lo, hi) wk = _mm256_broadcast_ss(w + r * n + k); \
                       lo = _mm256_fmadd_ps(wk, x0, lo); hi = _mm256_fmadd_ps(wk, x1, hi);
            ROW(0, a00, a01) ROW(1, a10, a11) ROW(2, a20, a21) ROW(3, a30, a31) ROW(4, a40, a41) ROW(5, a50, a51)
#undef ROW
        }
    } else {                                            /* a last panel of <= 8 tokens: half the work */
        for (int64_t k = 0; k < n; k++) {
            const __m256 x0 = _mm256_loadu_ps(panel + k * PANEL);
#define ROW(r, lo) lo = _mm256_fmadd_ps(_mm256_broadcast_ss(w + r * n + k), x0, lo);
            ROW(0, a00) ROW(1, a10) ROW(2, a20) ROW(3, a30) ROW(4, a40) ROW(5, a50)
#undef ROW
        }
    }
    const __m256 rows[TILE_ROWS][2] = {{a00, a01}, {a10, a11}, {a20, a21}, {a30, a31}, {a40, a41}, {a50, a51}};
    for (int r = 0; r < TILE_ROWS; r++) {
        _mm256_storeu_ps(acc[r], rows[r][0]);
        _mm256_storeu_ps(acc[r] + 8, rows[r][1]);
    }
#else
    for (int r = 0; r < TILE_ROWS; r++)
        for (int j = 0; j < PANEL; j++) acc[r][j] = 0.0f;
    for (int64_t k = 0; k < n; k++)
        for (int r = 0; r < TILE_ROWS; r++)
            for (int j = 0; j < PANEL; j++) acc[r][j] += w[r * n + k] * panel[k * PANEL + j];
#endif
    for (int64_t j = 0; j < n_valid; j++)
        for (int r = 0; r < TILE_ROWS; r++) out[j * out_stride + r] = acc[r][j];
}

/* x [T, n] as panels [ceil(T / PANEL), n, PANEL] for gemm_tile, the last one zero-padded. */
static void pack_panels(float *panels, const float *x, int64_t n_tokens, int64_t n)
{
    const int64_t n_panels = (n_tokens + PANEL - 1) / PANEL;
    #pragma omp for schedule(static)
    for (int64_t p = 0; p < n_panels; p++)
        for (int64_t j = 0; j < PANEL; j++) {
            const int64_t t = p * PANEL + j;
            float *column = panels + p * n * PANEL + j;     /* panel p, token j: stride PANEL */
            for (int64_t k = 0; k < n; k++) column[k * PANEL] = t < n_tokens ? x[t * n + k] : 0.0f;
        }
}

/* ---------------------------------------------------------------------------------------
 * The driver shared by the three formats. */

/* out[t, r] for rows r0 <= r < r1, every token, decoding each block once per token;
 * x_sums [T, in / 32]: the Σ x of every 32 activations. */
static void gemv_rows(quant_type type, float *out, const uint8_t *w, const float *x,
                      const float *x_sums, int64_t n_tokens, int64_t out_features,
                      int64_t in_features, int64_t r0, int64_t r1)
{
    const int64_t n_blocks = in_features / BLOCK_WEIGHTS[type];
    const int64_t row_bytes = n_blocks * BLOCK_BYTES[type];
    for (int64_t t = 0; t < n_tokens; t++)
        dot_rows(type, w + r0 * row_bytes, r1 - r0, x + t * in_features, x_sums + t * (in_features / QK),
                 n_blocks, out + t * out_features + r0);
}

/* Returns 0, or -1 when there is no memory for the block sums of x. */
static int quant_matmul(quant_type type, float *out, const uint8_t *w, const float *x,
                        int64_t n_tokens, int64_t out_features, int64_t in_features, int n_threads)
{
    const int64_t n_blocks = in_features / BLOCK_WEIGHTS[type], n_sums = in_features / QK;
    const int64_t row_bytes = n_blocks * BLOCK_BYTES[type];
    float *x_sums = malloc((n_tokens * n_sums + 1) * sizeof(float));  /* [T, in / 32]: Σ x per 32 */
    if (x_sums == NULL) return -1;
    block_sums(x_sums, x, n_tokens * n_sums);

    if (n_tokens < GEMM_MIN_TOKENS) {
        #pragma omp parallel for num_threads(n_threads) schedule(static)
        for (int64_t r0 = 0; r0 < out_features; r0 += GEMV_ROWS) {
            const int64_t r1 = r0 + GEMV_ROWS < out_features ? r0 + GEMV_ROWS : out_features;
            gemv_rows(type, out, w, x, x_sums, n_tokens, out_features, in_features, r0, r1);
        }
        free(x_sums);
        return 0;
    }

    const int64_t n_panels = (n_tokens + PANEL - 1) / PANEL;
    float *panels = malloc(n_panels * PANEL * in_features * sizeof(float));  /* x, packed */
    if (panels == NULL) {
        free(x_sums);
        return -1;
    }
    #pragma omp parallel num_threads(n_threads)
    {
        pack_panels(panels, x, n_tokens, in_features);                      /* ends in a barrier */
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
            for (int64_t p = 0; p < n_panels; p++) {
                const int64_t t0 = p * PANEL, n_valid = n_tokens - t0 < PANEL ? n_tokens - t0 : PANEL;
                gemm_tile(out + t0 * out_features + r0, out_features, w_tile,
                          panels + p * PANEL * in_features, in_features, n_valid);
            }
        }
        free(w_tile);
    }
    free(panels);
    free(x_sums);
    return 0;
}

/* ---------------------------------------------------------------------------------------
 * Optional: int8 activations, llama.cpp's arithmetic (see internal/quant_rows.h). Every
 * activation row is rounded to 8 bits once, then each weight row meets it in integer dot
 * products. Returns 0, or -1 when the scratch for the quantized activations cannot be
 * allocated. */
static int quant_matmul_int8(quant_type type, float *out, const uint8_t *w, const float *x,
                             int64_t n_tokens, int64_t out_features, int64_t in_features, int n_threads)
{
    const int64_t n_blocks = in_features / BLOCK_WEIGHTS[type], n_x_blocks = in_features / QK;
    const int64_t row_bytes = n_blocks * BLOCK_BYTES[type];
    if (n_tokens == 0 || n_blocks == 0) {
        for (int64_t i = 0; i < n_tokens * out_features; i++) out[i] = 0.0f;
        return 0;
    }
    block_q8_act *xq = malloc(n_tokens * n_x_blocks * sizeof(block_q8_act));  /* [T, in / 32] */
    if (xq == NULL) return -1;
    #pragma omp parallel num_threads(n_threads)
    {
        #pragma omp for schedule(static)
        for (int64_t t = 0; t < n_tokens; t++)
            quantize_activations(xq + t * n_x_blocks, x + t * in_features, n_x_blocks);
        /* every token against a weight row while the row is in L1 */
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < out_features; r++)
            for (int64_t t = 0; t < n_tokens; t++)
                out[t * out_features + r] = dot_row_int8(type, w + r * row_bytes, xq + t * n_x_blocks, n_blocks);
    }
    free(xq);
    return 0;
}

/* The one entry point: `format` is a block format of internal/formats.h, checked by the caller
 * (llama_np.kernels.quant_matmul); int8_activations picks llama.cpp's arithmetic. */
int quant_matmul_f32(int format, float *out, const uint8_t *w, const float *x, int64_t n_rows_x,
                     int64_t out_features, int64_t in_features, int int8_activations, int n_threads)
{
    const quant_type type = (quant_type)format;
    return int8_activations
        ? quant_matmul_int8(type, out, w, x, n_rows_x, out_features, in_features, n_threads)
        : quant_matmul(type, out, w, x, n_rows_x, out_features, in_features, n_threads);
}
