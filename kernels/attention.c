/* Causal grouped-query attention of T queries over the KV cache, in tiles:
 *
 *   out[t, h] = Σ_s p_s v[s, h / rep],   p = softmax(q[t, h] · k[s, h / rep] / √hd),  s ≤ S - T + t
 *
 * q [T, H, hd] float32; k and v the first S rows of a layer's cache, [S, H_kv, hd] as the
 * cache stores them (kv_format: F32, F16 or Q8_0, internal/kv_rows.h); out [T, H·hd].
 * rep = H / H_kv query heads share each key/value head (GQA). The T queries are the last T
 * of the S positions, so query t sees keys 0 … S-T+t, never a later one.
 * NumPy reference: llama_np.ops.attention_forward, over the dequantized cache.
 *
 * The flash-attention idea (Dao et al. 2022) on a CPU: a tile is TILE_TOKENS consecutive
 * queries times the rep heads that share one key/value head. It walks the keys it may see
 * a block of KEY_BLOCK positions at a time, SUB_BLOCK positions of it at a time, each piece
 * meeting every query of the tile while it is in L1, and each query's partial softmax over
 * the block is merged into its running one (online softmax, internal/attend_block.h). Blocks after a tile's last query are never
 * read: the masked half of the T × S score matrix is skipped, not computed and discarded.
 * Tiles are independent; threads take them largest first. The result does not depend on
 * the thread count.
 *
 * An F16 or Q8_0 cache is first converted to float32 whole, once, into scratch: every tile
 * of a head reads all of that head's keys and values it may see, and converting them anew
 * for each tile of 4 queries took a sixth of a long prompt's attention. The floats are
 * the same either way (the conversion is exact for F16, and one function for both).
 *
 * Returns 0, or -1 when there is no memory for the scratch buffers.
 */
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "attention.h"
#include "internal/attend_block.h"
#include "internal/kv_rows.h"

#define TILE_TOKENS 4      /* queries per tile (times rep heads): 12 rows for rep = 3 */

int attention_forward(float *out, const float *q, const uint8_t *k, const uint8_t *v, int32_t kv_format,
                      int64_t n_tokens, int64_t n_heads, int64_t n_kv_heads, int64_t n_keys,
                      int64_t head_dim, int n_threads)
{
    const int64_t rep = n_heads / n_kv_heads, max_rows = TILE_TOKENS * rep, width = n_kv_heads * head_dim;
    const int64_t stored_row_bytes = kv_bytes(kv_format, width);
    const int64_t n_tiles = (n_tokens + TILE_TOKENS - 1) / TILE_TOKENS, n_units = n_tiles * n_kv_heads;

    /* per thread: scores [rows, KEY_BLOCK], a block's and the running weighted values
     * [rows, hd] each; then the rows' query pointers, keys seen and partials */
    const int64_t floats = max_rows * KEY_BLOCK + 2 * max_rows * head_dim;
    const size_t own = floats * sizeof(float) + max_rows * (sizeof(const float *) + sizeof(int64_t)
                                                            + 3 * sizeof(softmax_part));
    const size_t own_aligned = (own + 63) / 64 * 64;
    /* and, for a cache not in F32, its keys and values as float32 [n_keys, width] each */
    const size_t converted = kv_format == F32 ? 0 : 2 * (size_t)n_keys * width * sizeof(float);
    uint8_t *scratch = malloc(own_aligned * (size_t)n_threads + converted);
    if (scratch == NULL) return -1;
    float *k_f32 = NULL, *v_f32 = NULL;
    if (kv_format != F32) {
        k_f32 = (float *)(scratch + own_aligned * (size_t)n_threads);
        v_f32 = k_f32 + n_keys * width;
    }
    const uint8_t *k_rows = k_f32 != NULL ? (const uint8_t *)k_f32 : k;
    const uint8_t *v_rows = v_f32 != NULL ? (const uint8_t *)v_f32 : v;
    const int64_t row_bytes = width * (int64_t)sizeof(float), head_bytes = head_dim * (int64_t)sizeof(float);

    #pragma omp parallel num_threads(n_threads)
    {
#ifdef _OPENMP
        uint8_t *mine = scratch + own_aligned * (size_t)omp_get_thread_num();
#else
        uint8_t *mine = scratch;
#endif
        if (k_f32 != NULL) {
            #pragma omp for schedule(static)
            for (int64_t s = 0; s < n_keys; s++) {
                kv_to_f32(kv_format, k_f32 + s * width, k + s * stored_row_bytes, width);
                kv_to_f32(kv_format, v_f32 + s * width, v + s * stored_row_bytes, width);
            }
        }
        float *scores = (float *)mine, *o_block = scores + max_rows * KEY_BLOCK;
        float *o_acc = o_block + max_rows * head_dim;
        const float **q_rows = (const float **)(mine + floats * sizeof(float));
        int64_t *limit = (int64_t *)(q_rows + max_rows), *seen = limit + max_rows;
        softmax_part *parts = (softmax_part *)(seen + max_rows), *acc = parts + max_rows;

        #pragma omp for schedule(dynamic, 1)
        for (int64_t unit = 0; unit < n_units; unit++) {
            const int64_t tile = n_tiles - 1 - unit / n_kv_heads, g = unit % n_kv_heads;   /* largest first */
            const int64_t t0 = tile * TILE_TOKENS;
            const int64_t n_rows = (n_tokens - t0 < TILE_TOKENS ? n_tokens - t0 : TILE_TOKENS) * rep;
            for (int64_t r = 0; r < n_rows; r++) {          /* row r: token t0 + r / rep, head g·rep + r % rep */
                const int64_t t = t0 + r / rep, h = g * rep + r % rep;
                q_rows[r] = q + (t * n_heads + h) * head_dim;
                limit[r] = n_keys - n_tokens + t + 1;
                acc[r] = EMPTY_PART;
            }
            const int64_t last = limit[n_rows - 1];          /* the tile's last query sees the most */
            for (int64_t b0 = 0; b0 < last; b0 += KEY_BLOCK) {
                const int64_t n_block = last - b0 < KEY_BLOCK ? last - b0 : KEY_BLOCK;
                for (int64_t r = 0; r < n_rows; r++) {
                    const int64_t n = limit[r] - b0;
                    seen[r] = n < 0 ? 0 : n > n_block ? n_block : n;
                }
                block_partials_cached(parts, o_block, q_rows, seen, n_rows, 1, F32, k_rows + g * head_bytes,
                                      v_rows + g * head_bytes, row_bytes, b0, n_block, head_dim, scores, NULL);
                for (int64_t r = 0; r < n_rows; r++)
                    softmax_merge(&acc[r], o_acc + r * head_dim, parts[r], o_block + r * head_dim, head_dim);
            }
            for (int64_t r = 0; r < n_rows; r++)
                softmax_finish(out + (q_rows[r] - q), acc[r], o_acc + r * head_dim, head_dim);
        }
    }
    free(scratch);
    return 0;
}
