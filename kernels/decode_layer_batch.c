/* One decoding step of the transformer blocks for B sequences at once, each bringing one
 * new token: decode_layer.c's blocks (the block_forward of llama_np/llama/model.py for
 * T = 1) on B rows, where row b belongs to its own sequence, with its own KV cache and its
 * own position: block l of row b reads and writes k_bases[b] + l · layer_bytes[b] (and
 * v_bases[b] + …; each cache its own length), rows of kv_format (internal/kv_rows.h). layers[l] are block l's weights;
 * the n_layers blocks run one after the other in one OpenMP team, as in decode_layers_f32.
 *
 * Why: decoding one token reads and unpacks every weight of the block for ~3.5 M
 * multiply-adds; B tokens of B sequences can share that reading (continuous batching, the
 * server of llama_np.serve). Each weight block is unpacked once and meets the B rows
 * (dot_rows_batch, internal/quant_rows_batch.h). Attention stays per sequence, over its
 * own cache, cut into the pieces (row, key/value heads, block of KEY_BLOCK positions) that
 * decode_layer.c cuts one row's into, and merged in the same order.
 *
 * Exactly decode_layer.c's arithmetic for every row — the same norms, products, RoPE
 * angles, attention and SwiGLU, in the same order — so that a sequence's tokens never
 * depend on what else is decoded beside it, and equal those of the one-token kernel bit
 * for bit (tests/test_serve_batch.py). The same 5 barriers per block as decode_layer.c,
 * now shared by the B rows.
 *
 * The products hand out their rows `schedule(guided)`, in chunks that shrink towards the
 * end, not in one fixed share per thread: a server shares its cores with its event loop
 * and its clients, and a thread the system pauses then holds up only the chunk it has,
 * while the other threads take the rest, where with fixed shares every barrier would wait
 * for the paused thread's whole share (docs/benchmarks.md#decode-kernels).
 *
 * A scaled RoPE (llama_np/llama/rope_scaling.py) passes each row's frequencies
 * rope_inv_freqs[t] [head_dim / 2] and attention factor rope_attention_factors[t]; a NULL
 * table (or a NULL rope_inv_freqs) is θ^(-2i/hd), unscaled, as in decode_layer.c; the
 * block_shape's own RoPE table is not read.
 *
 * h [B, dim] is updated in place. Returns 0, or -1 when there is no memory for the
 * scratch buffers.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "decode_layer.h"
#include "norm.h"
#include "internal/attend_block.h"
#include "internal/kv_rows.h"
#include "internal/quant_rows_batch.h"
#include "internal/rotary.h"
#include "internal/swiglu.h"

#define ROW_CHUNK 16       /* output rows a thread takes at a time (as decode_layer.c) */

/* B activation rows of width n as each weight format wants them: the floats, the Σ x of
 * each block, the 8-bit blocks (int8 path). */
typedef struct { const float *x; float *sums; block_q8_act *xq; int64_t n, n_rows; } activations;

static void prepare(activations *a, const float *x, int64_t n, int64_t n_rows, int int8_activations)
{
    a->x = x, a->n = n, a->n_rows = n_rows;
    for (int64_t t = 0; t < n_rows; t++) {
        block_sums(a->sums + t * (n / QK), x + t * n, n / QK);
        if (int8_activations) quantize_activations(a->xq + t * (n / QK), x + t * n, n / QK);
    }
}

/* out[t · out_stride + i] = row r0 + i of m times activation row t, for i < n, t < B. */
static void rows_dot(const weight_matrix *m, int64_t r0, int64_t n, const activations *a,
                     int int8_activations, float *out, int64_t out_stride)
{
    const int64_t cols = m->cols;
    if (m->format == F32) {
        for (int64_t t = 0; t < a->n_rows; t++)
            for (int64_t i = 0; i < n; i++)
                out[t * out_stride + i] = dot_f32((const float *)m->data + (r0 + i) * cols, a->x + t * a->n, cols);
        return;
    }
    const quant_type type = (quant_type)m->format;
    const int64_t n_blocks = cols / BLOCK_WEIGHTS[type], row_bytes = n_blocks * BLOCK_BYTES[type];
    const uint8_t *rows = m->data + r0 * row_bytes;                         /* row r0 */
    if (int8_activations) {
        dot_rows_int8_batch(type, rows, n, a->xq, cols / QK, a->n_rows, n_blocks, out, out_stride);
        return;
    }
    dot_rows_batch(type, rows, n, a->x, a->n, a->sums, cols / QK, a->n_rows, n_blocks, out, out_stride);
}

static inline int64_t chunk_rows(const weight_matrix *m, int64_t r0)
{
    return m->rows - r0 < ROW_CHUNK ? m->rows - r0 : ROW_CHUNK;
}

/* h[t, r] += row r of m times activation row t, for the chunk of rows from r0 (residual adds);
 * part: scratch [B, ROW_CHUNK]. */
static void add_rows_dot(float *h, int64_t dim, const weight_matrix *m, int64_t r0, const activations *a,
                         int int8_activations, float *part)
{
    const int64_t n = chunk_rows(m, r0);
    rows_dot(m, r0, n, a, int8_activations, part, ROW_CHUNK);
    for (int64_t t = 0; t < a->n_rows; t++)
        for (int64_t i = 0; i < n; i++) h[t * dim + r0 + i] += part[t * ROW_CHUNK + i];
}

static inline int64_t max3(int64_t a, int64_t b, int64_t c) { return a > b ? (a > c ? a : c) : (b > c ? b : c); }

int decode_layers_batch_f32(float *h, const block_weights *const *layers, int64_t n_layers, const block_shape *shape,
                            uint8_t **k_bases, uint8_t **v_bases, const int64_t *layer_bytes, int32_t kv_format,
                            const int64_t *positions, const float **rope_inv_freqs,
                            const float *rope_attention_factors, int64_t n_rows, int n_threads)
{
    const int64_t dim = shape->dim, head_dim = shape->head_dim, hidden = shape->hidden_dim;
    const int64_t n_heads = shape->n_heads, n_kv_heads = shape->n_kv_heads;
    const int64_t n_q = n_heads * head_dim, n_kv = n_kv_heads * head_dim;   /* row widths */
    const int64_t rep = n_heads / n_kv_heads, B = n_rows, half = head_dim / 2;
    const int int8 = shape->int8_activations;
    const int64_t widest = max3(dim, n_q, hidden), blocks = widest / QK;
    const int64_t row_bytes = kv_bytes(kv_format, n_kv), head_bytes = kv_bytes(kv_format, head_dim);
    /* row t's (key/value head, block of positions) partials are first[t] … first[t + 1] - 1,
     * numbered as decode_layer.c numbers one row's; its pieces, `group` heads each, are
     * first[t] / group … first[t + 1] / group - 1 */
    int64_t first[B + 1];
    first[0] = 0;
    for (int64_t t = 0; t < B; t++)
        first[t + 1] = first[t] + n_kv_heads * ((positions[t] + KEY_BLOCK) / KEY_BLOCK);
    const int64_t n_head_blocks = first[B];
    const int64_t group = heads_per_piece(n_kv_heads, head_dim, n_head_blocks / n_kv_heads, n_threads);
    const int64_t n_groups = n_kv_heads / group, n_pieces = n_head_blocks / group;
    const int64_t buffers = kv_format == F32 ? 0 : SUB_BLOCK * group * head_dim;

    /* shared: q [B, n_q], act [B, hidden], rope cos and sin [B, head_dim / 2] each, each
     * piece's weighted values [rep, head_dim] and partials [rep];
     * per thread: x [B, dim], block sums [B, blocks], its copy of the attention output
     * attn [B, n_q], products [B, ROW_CHUNK] ×2, new k or v rows [B, head_dim], scores
     * [group · rep, KEY_BLOCK], SUB_BLOCK positions of a piece's keys or values as float32
     * (not for F32); 8-bit blocks [B, blocks] */
    const int64_t part_floats = (int64_t)(sizeof(softmax_part) / sizeof(float));
    const size_t shared = B * (n_q + hidden + head_dim) + n_head_blocks * rep * (head_dim + part_floats);
    const size_t own = B * (dim + blocks + n_q + 2 * ROW_CHUNK + head_dim) + group * rep * KEY_BLOCK + buffers;
    float *scratch = malloc((shared + n_threads * own) * sizeof(float)
                            + n_threads * B * blocks * sizeof(block_q8_act));
    if (scratch == NULL) return -1;
    float *q = scratch, *act = q + B * n_q, *cos_t = act + B * hidden, *sin_t = cos_t + B * half;
    float *o_parts = sin_t + B * half;                                        /* [n_head_blocks, rep, hd] */
    softmax_part *parts = (softmax_part *)(o_parts + n_head_blocks * rep * head_dim);   /* [n_head_blocks, rep] */
    block_q8_act *all_xq = (block_q8_act *)(scratch + shared + n_threads * own);
    for (int64_t t = 0; t < B; t++) {       /* each row's RoPE, as decode_layer.c makes it */
        const float *table = rope_inv_freqs != NULL ? rope_inv_freqs[t] : NULL;
        float inv_freq[half];
        rope_frequencies(inv_freq, table, head_dim, shape->rope_theta);
        rope_angles(cos_t + t * half, sin_t + t * half, inv_freq, positions[t], head_dim);
        if (table != NULL) rope_scale_angles(cos_t + t * half, sin_t + t * half, rope_attention_factors[t], head_dim);
    }

    #pragma omp parallel num_threads(n_threads)
    for (int64_t layer = 0; layer < n_layers; layer++) {
        const block_weights *w = layers[layer];
#ifdef _OPENMP
        const int thread = omp_get_thread_num();
#else
        const int thread = 0;
#endif
        float *x = scratch + shared + thread * own, *sums = x + B * dim, *attn = sums + B * blocks;
        float *part = attn + B * n_q, *part2 = part + B * ROW_CHUNK, *head_out = part2 + B * ROW_CHUNK;
        float *scores = head_out + B * head_dim, *kv_buffer = scores + group * rep * KEY_BLOCK;
        activations a = {x, sums, all_xq + thread * B * blocks, 0, 0};

        /* attention branch: h += attention(rope(x Wq), rope(x Wk), x Wv) Wo */
        for (int64_t t = 0; t < B; t++) rmsnorm_f32(x + t * dim, h + t * dim, w->attn_norm, 1, dim, shape->norm_eps);
        prepare(&a, x, dim, B, int8);
        #pragma omp for schedule(guided)
        for (int64_t head = 0; head < n_heads + 2 * n_kv_heads; head++) {  /* the q, k, v heads */
            const int is_q = head < n_heads, is_k = !is_q && head < n_heads + n_kv_heads;
            const weight_matrix *m = is_q ? &w->q : is_k ? &w->k : &w->v;
            const int64_t first = (is_q ? head : is_k ? head - n_heads : head - n_heads - n_kv_heads) * head_dim;
            if (is_q) {
                rows_dot(m, first, head_dim, &a, int8, q + first, n_q);
                for (int64_t t = 0; t < B; t++)
                    rope_rotate(q + t * n_q + first, cos_t + t * half, sin_t + t * half, head_dim);
                continue;
            }
            rows_dot(m, first, head_dim, &a, int8, head_out, head_dim);      /* [B, head_dim] */
            for (int64_t t = 0; t < B; t++) {    /* row t of k or v goes to its own cache */
                float *row = head_out + t * head_dim;
                if (is_k) rope_rotate(row, cos_t + t * half, sin_t + t * half, head_dim);
                uint8_t *cache = (is_k ? k_bases[t] : v_bases[t]) + layer * layer_bytes[t];
                kv_from_f32(kv_format, cache + positions[t] * row_bytes + kv_bytes(kv_format, first), row, head_dim);
            }
        }
        /* attention: each piece (row t, key/value heads g0 … g0 + group - 1, block b) → partials of
         * their query heads, at (first[t] + b · n_kv_heads + g) · rep + j for query head g · rep + j */
        #pragma omp for schedule(dynamic, 1)
        for (int64_t piece = 0; piece < n_pieces; piece++) {
            int64_t t = 0;
            while (piece >= first[t + 1] / group) t++;
            const int64_t own_piece = piece - first[t] / group, n_seen = positions[t] + 1;
            const int64_t g0 = own_piece % n_groups * group, b = own_piece / n_groups, b0 = b * KEY_BLOCK;
            const int64_t n_block = n_seen - b0 < KEY_BLOCK ? n_seen - b0 : KEY_BLOCK;
            const int64_t at = (first[t] + b * n_kv_heads + g0) * rep;
            int64_t seen[group * rep];
            const float *q_rows[group * rep];
            for (int64_t r = 0; r < group * rep; r++) q_rows[r] = q + t * n_q + (g0 * rep + r) * head_dim, seen[r] = n_block;
            block_partials_cached(parts + at, o_parts + at * head_dim, q_rows, seen, rep, group, kv_format,
                                  k_bases[t] + layer * layer_bytes[t] + g0 * head_bytes,
                                  v_bases[t] + layer * layer_bytes[t] + g0 * head_bytes, row_bytes, b0,
                                  n_block, head_dim, scores, kv_buffer);
        }
        for (int64_t t = 0; t < B; t++)                    /* merged block by block, in order */
            for (int64_t head = 0; head < n_heads; head++) {
                const int64_t g = head / rep, j = head % rep, n_blocks = (positions[t] + KEY_BLOCK) / KEY_BLOCK;
                float *out = attn + t * n_q + head * head_dim;
                softmax_part acc = EMPTY_PART;
                for (int64_t b = 0; b < n_blocks; b++) {
                    const int64_t at = (first[t] + b * n_kv_heads + g) * rep + j;
                    softmax_merge(&acc, out, parts[at], o_parts + at * head_dim, head_dim);
                }
                softmax_finish(out, acc, out, head_dim);
            }
        prepare(&a, attn, n_q, B, int8);
        #pragma omp for schedule(guided)
        for (int64_t r0 = 0; r0 < dim; r0 += ROW_CHUNK) add_rows_dot(h, dim, &w->o, r0, &a, int8, part);

        /* MLP branch: h += (silu(x Wgate) ⊙ x Wup) Wdown */
        for (int64_t t = 0; t < B; t++) rmsnorm_f32(x + t * dim, h + t * dim, w->mlp_norm, 1, dim, shape->norm_eps);
        prepare(&a, x, dim, B, int8);
        #pragma omp for schedule(guided)
        for (int64_t i0 = 0; i0 < hidden; i0 += ROW_CHUNK) {
            const int64_t n = chunk_rows(&w->gate, i0);
            rows_dot(&w->gate, i0, n, &a, int8, part, ROW_CHUNK);
            rows_dot(&w->up, i0, n, &a, int8, part2, ROW_CHUNK);
            for (int64_t t = 0; t < B; t++)
                swiglu_row(act + t * hidden + i0, part + t * ROW_CHUNK, part2 + t * ROW_CHUNK, n);
        }
        prepare(&a, act, hidden, B, int8);
        #pragma omp for schedule(guided)                 /* the next block reads all of h */
        for (int64_t r0 = 0; r0 < dim; r0 += ROW_CHUNK) add_rows_dot(h, dim, &w->down, r0, &a, int8, part);
    }
    free(scratch);
    return 0;
}
