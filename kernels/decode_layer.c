/* One decoding step of one transformer block, in a single call: the block of
 * llama_np/llama/model.py (block_forward) for one new token, T = 1.
 *
 *   x = rmsnorm(h)                      q, k, v = x Wqᵀ, x Wkᵀ, x Wvᵀ
 *   rope(q, k) at `position`            k, v → the cache row `position`
 *   a = attention(q, cache rows 0 … position)
 *   h += a Woᵀ
 *   x = rmsnorm(h)                      g, u = x Wgateᵀ, x Wupᵀ
 *   h += (silu(g) ⊙ u) Wdownᵀ
 *
 * Why fuse: a token's work is only ~3.5 M multiply-adds per block. Done op by op from
 * Python it is ~10 kernel calls per block, each paying for its Python wrapper, its argument
 * checks and the start and end of its own OpenMP team: a noticeable share of the step
 * (docs/benchmarks.md#decode-kernels). Here one OpenMP team does the whole block, and its
 * threads wait for each other only where a step needs the whole output of the one before:
 * 4 barriers (after q/k/v, attention, Wo, gate/up; each `omp for` ends in one). The small
 * steps in between — the norms, the per-block sums of an activation row — every thread does
 * for itself, on its own copy, which is cheaper than one more meeting: every barrier is a
 * wait for the slowest thread (fewer barriers, faster decoding:
 * docs/benchmarks.md#decode-kernels).
 *
 * Weights: any mix of Q4_0, Q4_1, Q8_0 (dot_rows, internal/quant_rows.h) and F32.
 * With int8_activations every activation row is rounded to 8 bits per block first
 * (llama.cpp's arithmetic); F32 weights always see fp32 activations.
 * h [dim] is updated in place; k_cache, v_cache [max_len, n_kv_heads, head_dim] are this
 * layer's cache. Returns 0, or -1 when there is no memory for the scratch buffers.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "decode_layer.h"
#include "norm.h"
#include "internal/attend.h"
#include "internal/quant_rows.h"
#include "internal/rotary.h"

#define ROW_CHUNK 16       /* output rows a thread takes at a time (Wo, gate/up, Wdown) */

/* An activation row as each weight format wants it: the floats, the Σ x of each block
 * (Q4_0 / Q4_1, fp32 path) and the 8-bit blocks (int8 path). */
typedef struct { const float *x; float *sums; block_q8_act *xq; } activations;

static void prepare(activations *a, const float *x, int64_t n, int int8_activations)
{
    a->x = x;
    block_sums(a->sums, x, n / QK);
    if (int8_activations) quantize_activations(a->xq, x, n / QK);
}

/* out[i] = row r0 + i of weight matrix m times the activations, for i < n. */
static void rows_dot(const weight_matrix *m, int64_t r0, int64_t n, const activations *a,
                     int int8_activations, float *out)
{
    const int64_t cols = m->cols, n_blocks = cols / QK;
    if (m->format == F32) {
        for (int64_t i = 0; i < n; i++) out[i] = dot_f32((const float *)m->data + (r0 + i) * cols, a->x, cols);
        return;
    }
    const quant_type type = (quant_type)m->format;
    const int64_t row_bytes = n_blocks * BLOCK_BYTES[type];
    const uint8_t *rows = m->data + r0 * row_bytes;                         /* row r0 */
    if (int8_activations) {
        for (int64_t i = 0; i < n; i++) out[i] = dot_row_int8(type, rows + i * row_bytes, a->xq, n_blocks);
        return;
    }
    dot_rows(type, rows, n, a->x, a->sums, n_blocks, out);
}

/* The number of rows of m from r0 on that one chunk takes: ROW_CHUNK, fewer at the end. */
static inline int64_t chunk_rows(const weight_matrix *m, int64_t r0)
{
    return m->rows - r0 < ROW_CHUNK ? m->rows - r0 : ROW_CHUNK;
}

/* h[r] += row r of m times the activations, for the chunk of rows from r0 (a residual add). */
static void add_rows_dot(float *h, const weight_matrix *m, int64_t r0, const activations *a, int int8_activations)
{
    float part[ROW_CHUNK];
    const int64_t n = chunk_rows(m, r0);
    rows_dot(m, r0, n, a, int8_activations, part);
    for (int64_t i = 0; i < n; i++) h[r0 + i] += part[i];
}

static inline float silu(float g) { return g / (1.0f + expf(-g)); }

static inline int64_t max3(int64_t a, int64_t b, int64_t c) { return a > b ? (a > c ? a : c) : (b > c ? b : c); }

int decode_layer_f32(float *h, const block_weights *w, const block_shape *shape, float *k_cache,
                     float *v_cache, int64_t position, int n_threads)
{
    const int64_t dim = shape->dim, head_dim = shape->head_dim, hidden = shape->hidden_dim;
    const int64_t n_heads = shape->n_heads, n_kv_heads = shape->n_kv_heads;
    const int64_t n_q = n_heads * head_dim, n_kv = n_kv_heads * head_dim;   /* row widths */
    const int64_t rep = n_heads / n_kv_heads, n_seen = position + 1;
    const int int8 = shape->int8_activations;
    const int64_t widest = max3(dim, n_q, hidden), blocks = widest / QK;

    /* shared: q [n_q], attn [n_q], act [hidden], rope cos and sin [head_dim / 2] each;
     * per thread: x [dim], block sums [blocks], scores [n_seen], 8-bit blocks [blocks] */
    const size_t shared = 2 * n_q + hidden + head_dim, own = dim + blocks + n_seen;
    float *scratch = malloc((shared + n_threads * own) * sizeof(float)
                            + n_threads * blocks * sizeof(block_q8_act));
    if (scratch == NULL) return -1;
    float *q = scratch, *attn = q + n_q, *act = attn + n_q, *cos_t = act + hidden, *sin_t = cos_t + head_dim / 2;
    block_q8_act *all_xq = (block_q8_act *)(scratch + shared + n_threads * own);
    float inv_freq[head_dim / 2];
    rope_frequencies(inv_freq, shape->rope_inv_freq, head_dim, shape->rope_theta);
    rope_angles(cos_t, sin_t, inv_freq, position, head_dim);
    if (shape->rope_inv_freq != NULL) rope_scale_angles(cos_t, sin_t, shape->rope_attention_factor, head_dim);
    float *k_row = k_cache + position * n_kv, *v_row = v_cache + position * n_kv;  /* [n_kv] each */

    #pragma omp parallel num_threads(n_threads)
    {
#ifdef _OPENMP
        const int thread = omp_get_thread_num();
#else
        const int thread = 0;
#endif
        float *x = scratch + shared + thread * own, *scores = x + dim + blocks;
        activations a = {x, x + dim, all_xq + thread * blocks};

        /* attention branch: h += attention(rope(x Wq), rope(x Wk), x Wv) Wo */
        rmsnorm_f32(x, h, w->attn_norm, 1, dim, shape->norm_eps);
        prepare(&a, x, dim, int8);
        #pragma omp for schedule(static)
        for (int64_t head = 0; head < n_heads + 2 * n_kv_heads; head++) {  /* the q, k, v heads */
            const int is_q = head < n_heads, is_k = !is_q && head < n_heads + n_kv_heads;
            const weight_matrix *m = is_q ? &w->q : is_k ? &w->k : &w->v;
            const int64_t first = (is_q ? head : is_k ? head - n_heads : head - n_heads - n_kv_heads) * head_dim;
            float *out = (is_q ? q : is_k ? k_row : v_row) + first;          /* [head_dim] */
            rows_dot(m, first, head_dim, &a, int8, out);
            if (is_q || is_k) rope_rotate(out, cos_t, sin_t, head_dim);
        }
        #pragma omp for schedule(static)
        for (int64_t head = 0; head < n_heads; head++) {
            const int64_t g = head / rep;                                     /* its key/value head */
            attend_one_query(attn + head * head_dim, q + head * head_dim, k_cache + g * head_dim,
                             v_cache + g * head_dim, n_kv, n_seen, head_dim, scores);
        }
        prepare(&a, attn, n_q, int8);
        #pragma omp for schedule(static)
        for (int64_t r0 = 0; r0 < dim; r0 += ROW_CHUNK) add_rows_dot(h, &w->o, r0, &a, int8);

        /* MLP branch: h += (silu(x Wgate) ⊙ x Wup) Wdown */
        rmsnorm_f32(x, h, w->mlp_norm, 1, dim, shape->norm_eps);
        prepare(&a, x, dim, int8);
        #pragma omp for schedule(static)
        for (int64_t i0 = 0; i0 < hidden; i0 += ROW_CHUNK) {
            float gate[ROW_CHUNK], up[ROW_CHUNK];
            const int64_t n = chunk_rows(&w->gate, i0);
            rows_dot(&w->gate, i0, n, &a, int8, gate);
            rows_dot(&w->up, i0, n, &a, int8, up);
            for (int64_t i = 0; i < n; i++) act[i0 + i] = silu(gate[i]) * up[i];
        }
        prepare(&a, act, hidden, int8);
        #pragma omp for schedule(static) nowait
        for (int64_t r0 = 0; r0 < dim; r0 += ROW_CHUNK) add_rows_dot(h, &w->down, r0, &a, int8);
    }
    free(scratch);
    return 0;
}
