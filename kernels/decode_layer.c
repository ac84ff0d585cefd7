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
 * 5 barriers (after q/k/v, attention, Wo, gate/up, Wdown; each `omp for` ends in one). The small
 * steps in between — the norms, the per-block sums of an activation row — every thread does
 * for itself, on its own copy, which is cheaper than one more meeting: every barrier is a
 * wait for the slowest thread (fewer barriers, faster decoding:
 * docs/benchmarks.md#decode-kernels).
 *
 * decode_layers_f32 runs n_layers blocks one after the other in the same call and the same
 * team (layers[l] the weights of block l, whose cache is k_cache + l · layer_bytes): between
 * two blocks the threads only meet at a barrier, where between two calls they would wait
 * for Python and fall asleep, and waking them again cost more than a small block's work
 * (docs/benchmarks.md#decode-kernels); one block is n_layers = 1.
 *
 * Weights: any mix of F32 and the block formats of internal/formats.h (dot_rows,
 * internal/quant_rows.h), one format per matrix: a K-quant file's Q4_K and Q6_K matrices
 * beside its Q5_0 / Q8_0 fall-backs for rows that are not multiples of 256.
 * With int8_activations every activation row is rounded to 8 bits per block first
 * (llama.cpp's arithmetic); F32 weights always see fp32 activations.
 * h [dim] is updated in place; k_cache, v_cache [max_len, n_kv_heads, head_dim] are this
 * layer's cache, stored in kv_format (F32, F16 or Q8_0; internal/kv_rows.h): the new row is
 * rounded into it once, here, and attention reads every row back through kv_load_rows.
 *
 * Attention streams the cache once per step with every thread: the work is cut into
 * (key/value heads, block of KEY_BLOCK positions) pieces, each computing the partial
 * softmaxes of the query heads that share those key/value heads, so that every key and
 * value is read once for all of them. A piece takes as many neighbouring heads as leaves
 * two pieces per thread (heads_per_piece: a long context reads whole cache rows, a short
 * one still keeps every thread busy); threads take pieces as they come (3 key/value heads
 * over 2 threads would leave one idle half the time if split by head alone). The partials
 * are merged exactly (internal/attend_block.h) by every thread into its own copy of the
 * output, which saves a barrier; the result does not depend on the thread count.
 * Returns 0, or -1 when there is no memory for the scratch buffers.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "decode_layer.h"
#include "norm.h"
#include "internal/attend_block.h"
#include "internal/kv_rows.h"
#include "internal/quant_rows.h"
#include "internal/rotary.h"
#include "internal/swiglu.h"

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
    const int64_t cols = m->cols;
    if (m->format == F32) {
        for (int64_t i = 0; i < n; i++) out[i] = dot_f32((const float *)m->data + (r0 + i) * cols, a->x, cols);
        return;
    }
    const quant_type type = (quant_type)m->format;
    const int64_t n_blocks = cols / BLOCK_WEIGHTS[type], row_bytes = n_blocks * BLOCK_BYTES[type];
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

static inline int64_t max3(int64_t a, int64_t b, int64_t c) { return a > b ? (a > c ? a : c) : (b > c ? b : c); }

int decode_layers_f32(float *h, const block_weights *const *layers, int64_t n_layers, const block_shape *shape,
                      uint8_t *k_cache, uint8_t *v_cache, int64_t layer_bytes, int32_t kv_format, int64_t position,
                      int n_threads)
{
    const int64_t dim = shape->dim, head_dim = shape->head_dim, hidden = shape->hidden_dim;
    const int64_t n_heads = shape->n_heads, n_kv_heads = shape->n_kv_heads;
    const int64_t n_q = n_heads * head_dim, n_kv = n_kv_heads * head_dim;   /* row widths */
    const int64_t rep = n_heads / n_kv_heads, n_seen = position + 1;
    const int int8 = shape->int8_activations;
    const int64_t widest = max3(dim, n_q, hidden), blocks = widest / QK;

    const int64_t n_blocks = (n_seen + KEY_BLOCK - 1) / KEY_BLOCK, n_head_blocks = n_kv_heads * n_blocks;
    const int64_t group = heads_per_piece(n_kv_heads, head_dim, n_blocks, n_threads);
    const int64_t n_groups = n_kv_heads / group;                          /* pieces per block */
    const int64_t row_bytes = kv_bytes(kv_format, n_kv), head_bytes = kv_bytes(kv_format, head_dim);
    const int64_t buffers = kv_format == F32 ? 0 : SUB_BLOCK * group * head_dim;

    /* shared: q [n_q], act [hidden], rope cos and sin [head_dim / 2] each, the new k and v
     * rows [n_kv] each, each piece's weighted values [rep, head_dim] and partials [rep];
     * per thread: x [dim], block sums [blocks], its copy of the attention output attn [n_q],
     * scores [group · rep, KEY_BLOCK], SUB_BLOCK positions of a piece's keys or values as
     * float32 (not for F32), 8-bit blocks [blocks] */
    const int64_t part_floats = (int64_t)(sizeof(softmax_part) / sizeof(float));
    const size_t shared = n_q + hidden + head_dim + 2 * n_kv + n_head_blocks * rep * (head_dim + part_floats);
    const size_t own = dim + blocks + n_q + group * rep * KEY_BLOCK + buffers;
    float *scratch = malloc((shared + n_threads * own) * sizeof(float)
                            + n_threads * blocks * sizeof(block_q8_act));
    if (scratch == NULL) return -1;
    float *q = scratch, *act = q + n_q, *cos_t = act + hidden, *sin_t = cos_t + head_dim / 2;
    float *k_new = cos_t + head_dim, *v_new = k_new + n_kv, *o_parts = v_new + n_kv;   /* [n_kv] ×2 */
    softmax_part *parts = (softmax_part *)(o_parts + n_head_blocks * rep * head_dim); /* [n_blocks, n_kv_heads, rep] */
    block_q8_act *all_xq = (block_q8_act *)(scratch + shared + n_threads * own);
    float inv_freq[head_dim / 2];
    rope_frequencies(inv_freq, shape->rope_inv_freq, head_dim, shape->rope_theta);
    rope_angles(cos_t, sin_t, inv_freq, position, head_dim);
    if (shape->rope_inv_freq != NULL) rope_scale_angles(cos_t, sin_t, shape->rope_attention_factor, head_dim);

    #pragma omp parallel num_threads(n_threads)
    for (int64_t layer = 0; layer < n_layers; layer++) {
        const block_weights *w = layers[layer];
        uint8_t *k_layer = k_cache + layer * layer_bytes, *v_layer = v_cache + layer * layer_bytes;
        uint8_t *k_row = k_layer + position * row_bytes, *v_row = v_layer + position * row_bytes;
#ifdef _OPENMP
        const int thread = omp_get_thread_num();
#else
        const int thread = 0;
#endif
        float *x = scratch + shared + thread * own, *attn = x + dim + blocks, *scores = attn + n_q;
        float *kv_buffer = scores + group * rep * KEY_BLOCK;
        activations a = {x, x + dim, all_xq + thread * blocks};

        /* attention branch: h += attention(rope(x Wq), rope(x Wk), x Wv) Wo */
        rmsnorm_f32(x, h, w->attn_norm, 1, dim, shape->norm_eps);
        prepare(&a, x, dim, int8);
        #pragma omp for schedule(static)
        for (int64_t head = 0; head < n_heads + 2 * n_kv_heads; head++) {  /* the q, k, v heads */
            const int is_q = head < n_heads, is_k = !is_q && head < n_heads + n_kv_heads;
            const weight_matrix *m = is_q ? &w->q : is_k ? &w->k : &w->v;
            const int64_t first = (is_q ? head : is_k ? head - n_heads : head - n_heads - n_kv_heads) * head_dim;
            float *out = (is_q ? q : is_k ? k_new : v_new) + first;          /* [head_dim] */
            rows_dot(m, first, head_dim, &a, int8, out);
            if (is_q || is_k) rope_rotate(out, cos_t, sin_t, head_dim);
            if (!is_q) kv_from_f32(kv_format, (is_k ? k_row : v_row) + kv_bytes(kv_format, first), out, head_dim);
        }
        /* attention: each piece (key/value heads g0 … g0 + group - 1, block b) → partials of
         * their query heads, at (b · n_kv_heads + g) · rep + j for query head g · rep + j */
        #pragma omp for schedule(dynamic, 1)
        for (int64_t piece = 0; piece < n_blocks * n_groups; piece++) {
            const int64_t g0 = piece % n_groups * group, b = piece / n_groups, b0 = b * KEY_BLOCK;
            const int64_t n_block = n_seen - b0 < KEY_BLOCK ? n_seen - b0 : KEY_BLOCK;
            const int64_t at = (b * n_kv_heads + g0) * rep;
            int64_t seen[group * rep];
            const float *q_rows[group * rep];
            for (int64_t r = 0; r < group * rep; r++) q_rows[r] = q + (g0 * rep + r) * head_dim, seen[r] = n_block;
            block_partials_cached(parts + at, o_parts + at * head_dim, q_rows, seen, rep, group, kv_format,
                                  k_layer + g0 * head_bytes, v_layer + g0 * head_bytes, row_bytes, b0, n_block,
                                  head_dim, scores, kv_buffer);
        }
        for (int64_t head = 0; head < n_heads; head++) {   /* merged block by block, in order */
            const int64_t g = head / rep, j = head % rep;
            softmax_part acc = EMPTY_PART;
            for (int64_t b = 0; b < n_blocks; b++) {
                const int64_t at = (b * n_kv_heads + g) * rep + j;
                softmax_merge(&acc, attn + head * head_dim, parts[at], o_parts + at * head_dim, head_dim);
            }
            softmax_finish(attn + head * head_dim, acc, attn + head * head_dim, head_dim);
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
            swiglu_row(act + i0, gate, up, n);
        }
        prepare(&a, act, hidden, int8);
        #pragma omp for schedule(static)                 /* the next block reads all of h */
        for (int64_t r0 = 0; r0 < dim; r0 += ROW_CHUNK) add_rows_dot(h, &w->down, r0, &a, int8);
    }
    free(scratch);
    return 0;
}
