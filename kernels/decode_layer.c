/* One decoding step of one transformer block, in a single call: the block of
 * llama_np/model.py (Llama.block) for one new token, T = 1.
 *
 *   x = rmsnorm(h)                      q, k, v = x Wqᵀ, x Wkᵀ, x Wvᵀ
 *   rope(q, k) at `position`            k, v → the cache row `position`
 *   a = attention(q, cache rows 0 … position)
 *   h += a Woᵀ
 *   x = rmsnorm(h)                      g, u = x Wgateᵀ, x Wupᵀ
 *   h += (silu(g) ⊙ u) Wdownᵀ
 *
 * Why fuse: a token's work is ~3.5 M multiply-adds per block, a few hundred µs. Done op
 * by op from Python it is ~10 kernel calls per block, each paying for its Python wrapper,
 * its argument checks and the start and end of its own OpenMP team: more than a tenth of
 * the decode time. Here one OpenMP team does the whole block, its threads meeting at a
 * barrier between steps (each `omp single` / `omp for` ends in one).
 *
 * Weights: any mix of Q4_0, Q4_1, Q8_0 (dot_row, internal/quant_rows.h) and F32.
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
#include "rope.h"
#include "internal/attend.h"
#include "internal/quant_rows.h"

enum { FORMAT_F32 = 3 };   /* after Q4_0 = 0, Q4_1 = 1, Q8_0 = 2 of quant_type */

/* An activation row as each weight format wants it: the floats, the Σ x of each block
 * (Q4_0 / Q4_1, fp32 path) and the 8-bit blocks (int8 path). */
typedef struct { const float *x; float *sums; block_q8_act *xq; } activations;

static void prepare(activations *a, const float *x, int64_t n, int int8_activations)
{
    a->x = x;
    block_sums(a->sums, x, n / QK);
    if (int8_activations) quantize_activations(a->xq, x, n / QK);
}

/* Row r of weight matrix m times the activations. */
static inline float row_dot(const weight_matrix *m, int64_t r, const activations *a, int int8_activations)
{
    if (m->format == FORMAT_F32) return dot_f32((const float *)m->data + r * m->cols, a->x, m->cols);
    const int64_t n_blocks = m->cols / QK;
    const uint8_t *row = m->data + r * n_blocks * BLOCK_BYTES[m->format];
    if (int8_activations) return dot_row_int8((quant_type)m->format, row, a->xq, n_blocks);
    return dot_row((quant_type)m->format, row, a->x, a->sums, n_blocks);
}

static inline float silu(float g) { return g / (1.0f + expf(-g)); }

int decode_layer_f32(float *h, const block_weights *w, const block_shape *shape, float *k_cache,
                     float *v_cache, int64_t position, int n_threads)
{
    const int64_t dim = shape->dim, head_dim = shape->head_dim, hidden = shape->hidden_dim;
    const int64_t n_q = shape->n_heads * head_dim, n_kv = shape->n_kv_heads * head_dim;
    const int64_t rep = shape->n_heads / shape->n_kv_heads, n_seen = position + 1;
    const int int8 = shape->int8_activations;
    const int64_t widest = hidden > n_q ? (hidden > dim ? hidden : dim) : (n_q > dim ? n_q : dim);

    /* scratch: x [dim], qkv [n_q + 2 n_kv], attn [n_q], act [hidden], block sums and 8-bit
     * blocks of the widest activation row, attention scores [n_threads, n_seen] */
    const size_t floats = dim + n_q + 2 * n_kv + n_q + hidden + widest / QK + (size_t)n_threads * n_seen;
    float *scratch = malloc(floats * sizeof(float) + (widest / QK) * sizeof(block_q8_act));
    if (scratch == NULL) return -1;
    float *x = scratch, *q = x + dim, *k = q + n_q, *v = k + n_kv, *attn = v + n_kv;
    float *act = attn + n_q, *sums = act + hidden, *scores = sums + widest / QK;
    activations a = {x, sums, (block_q8_act *)(scores + (size_t)n_threads * n_seen)};

    #pragma omp parallel num_threads(n_threads)
    {
        /* attention branch: h += attention(rope(x Wq), rope(x Wk), x Wv) Wo */
        #pragma omp single
        {
            rmsnorm_f32(x, h, w->attn_norm, 1, dim, shape->norm_eps);
            prepare(&a, x, dim, int8);
        }
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < n_q + 2 * n_kv; r++) {           /* q, k, v: one output row each */
            if (r < n_q) q[r] = row_dot(&w->q, r, &a, int8);
            else if (r < n_q + n_kv) k[r - n_q] = row_dot(&w->k, r - n_q, &a, int8);
            else v[r - n_q - n_kv] = row_dot(&w->v, r - n_q - n_kv, &a, int8);
        }
        #pragma omp single
        {
            rope_f32(q, &position, 1, shape->n_heads, head_dim, shape->rope_theta);
            rope_f32(k, &position, 1, shape->n_kv_heads, head_dim, shape->rope_theta);
            for (int64_t i = 0; i < n_kv; i++) {
                k_cache[position * n_kv + i] = k[i];
                v_cache[position * n_kv + i] = v[i];
            }
        }
#ifdef _OPENMP
        float *p = scores + (int64_t)omp_get_thread_num() * n_seen;  /* [n_seen] this thread's */
#else
        float *p = scores;
#endif
        #pragma omp for schedule(static)
        for (int64_t head = 0; head < shape->n_heads; head++) {
            const int64_t g = head / rep;                             /* its key/value head */
            attend_one_query(attn + head * head_dim, q + head * head_dim, k_cache + g * head_dim,
                             v_cache + g * head_dim, n_kv, n_seen, head_dim, p);
        }
        #pragma omp single
        prepare(&a, attn, n_q, int8);
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < dim; r++) h[r] += row_dot(&w->o, r, &a, int8);

        /* MLP branch: h += (silu(x Wgate) ⊙ x Wup) Wdown */
        #pragma omp single
        {
            rmsnorm_f32(x, h, w->mlp_norm, 1, dim, shape->norm_eps);
            prepare(&a, x, dim, int8);
        }
        #pragma omp for schedule(static)
        for (int64_t i = 0; i < hidden; i++)
            act[i] = silu(row_dot(&w->gate, i, &a, int8)) * row_dot(&w->up, i, &a, int8);
        #pragma omp single
        prepare(&a, act, hidden, int8);
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < dim; r++) h[r] += row_dot(&w->down, r, &a, int8);
    }
    free(scratch);
    return 0;
}
