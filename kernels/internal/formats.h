/* The weight formats the C kernels take, by the number llama_np gives each
 * (llama_np.quant.formats, TensorFormat.kernel_format), and the weights and bytes of one
 * block of each:
 *
 *   0  Q4_0  32 weights  18 bytes  d:f16, qs[16]          w = (q - 8) * d
 *   1  Q4_1  32 weights  20 bytes  d:f16, m:f16, qs[16]   w = q * d + m
 *   2  Q8_0  32 weights  34 bytes  d:f16, qs:int8[32]     w = q * d
 *   3  F32    1 weight    4 bytes  a float                (the fused decode step; the KV cache)
 *   4  F16    1 weight    2 bytes  an IEEE half           (the KV cache only, internal/kv_rows.h)
 *   5  Q5_0  32 weights  22 bytes  d:f16, qh:u32, qs[16]  w = (q - 16) * d,  q = nibble | bit << 4
 *   6  Q5_1  32 weights  24 bytes  d, m:f16, qh, qs[16]   w = q * d + m
 *   7  Q4_K 256 weights 144 bytes  d, dmin:f16, scales[12], qs[128]
 *                                  8 sub-blocks of 32:   w = d·sc_j · q - dmin·m_j  (6-bit sc_j, m_j)
 *   8  Q5_K 256 weights 176 bytes  d, dmin, scales[12], qh[32], qs[128]: Q4_K's, q = nibble | bit << 4
 *   9  Q6_K 256 weights 210 bytes  ql[128], qh[64], scales:int8[16], d:f16
 *                                  16 sub-blocks of 16:  w = d·sc_j · (q - 32),  q = 4 low | 2 high bits
 *  10  Q2_K 256 weights  84 bytes  scales[16], qs[64], d, dmin:f16
 *                                  16 sub-blocks of 16:  w = d·sc_j · q - dmin·m_j  (4-bit sc_j, m_j; 2-bit q)
 *  11  Q3_K 256 weights 110 bytes  hmask[32], qs[64], scales[12], d:f16
 *                                  16 sub-blocks of 16:  w = d·(sc_j - 32) · (q - 4),  q = 2 low | 1 high bit
 *
 * The block formats are llama.cpp's (ggml-common.h). Nibbles: byte j of qs holds weight j
 * in its low 4 bits and weight j + 16 in its high 4 (Q4_0, Q4_1, Q5_0, Q5_1); bit j of qh
 * is weight j's fifth bit. The K-quants' bit layouts are spelled out where they are read,
 * internal/block_pieces.h. kernel_format_block (formats.c) gives these numbers to Python,
 * where tests/test_formats.py holds them to llama_np's table.
 */
#ifndef LLAMA_NP_FORMATS_H
#define LLAMA_NP_FORMATS_H

#include <stdint.h>

typedef enum {
    Q4_0 = 0, Q4_1 = 1, Q8_0 = 2, F32 = 3, F16 = 4, Q5_0 = 5, Q5_1 = 6, Q4_K = 7, Q5_K = 8, Q6_K = 9,
    Q2_K = 10, Q3_K = 11, N_FORMATS
} weight_format;

#define QK 32              /* weights per block (llama.cpp QK4_0 = QK4_1 = QK8_0 = QK5_0 = QK5_1) */
#define QK_K 256           /* weights per K-quant super-block (llama.cpp QK_K) */
#define K_SCALE_SIZE 12    /* bytes of Q4_K / Q5_K packed 6-bit scales and mins (llama.cpp) */

typedef struct { uint16_t d; uint8_t qs[QK / 2]; } block_q4_0;
typedef struct { uint16_t d, m; uint8_t qs[QK / 2]; } block_q4_1;
typedef struct { uint16_t d; int8_t qs[QK]; } block_q8_0;
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[QK / 2]; } block_q5_0;
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[QK / 2]; } block_q5_1;
typedef struct { uint16_t d, dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qs[QK_K / 2]; } block_q4_K;
typedef struct { uint16_t d, dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2]; } block_q5_K;
typedef struct { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; uint16_t d; } block_q6_K;
typedef struct { uint8_t scales[QK_K / 16]; uint8_t qs[QK_K / 4]; uint16_t d, dmin; } block_q2_K;
typedef struct { uint8_t hmask[QK_K / 8]; uint8_t qs[QK_K / 4]; uint8_t scales[K_SCALE_SIZE]; uint16_t d; } block_q3_K;
_Static_assert(sizeof(block_q4_0) == 18, "block_q4_0 must be 18 bytes");
_Static_assert(sizeof(block_q4_1) == 20, "block_q4_1 must be 20 bytes");
_Static_assert(sizeof(block_q8_0) == 34, "block_q8_0 must be 34 bytes");
_Static_assert(sizeof(block_q5_0) == 22, "block_q5_0 must be 22 bytes");
_Static_assert(sizeof(block_q5_1) == 24, "block_q5_1 must be 24 bytes");
_Static_assert(sizeof(block_q4_K) == 144, "block_q4_K must be 144 bytes");
_Static_assert(sizeof(block_q5_K) == 176, "block_q5_K must be 176 bytes");
_Static_assert(sizeof(block_q6_K) == 210, "block_q6_K must be 210 bytes");
_Static_assert(sizeof(block_q2_K) == 84, "block_q2_K must be 84 bytes");
_Static_assert(sizeof(block_q3_K) == 110, "block_q3_K must be 110 bytes");

static const int64_t BLOCK_WEIGHTS[N_FORMATS] = {
    [Q4_0] = QK, [Q4_1] = QK, [Q8_0] = QK, [F32] = 1, [F16] = 1,
    [Q5_0] = QK, [Q5_1] = QK, [Q4_K] = QK_K, [Q5_K] = QK_K, [Q6_K] = QK_K,
    [Q2_K] = QK_K, [Q3_K] = QK_K,
};
static const int64_t BLOCK_BYTES[N_FORMATS] = {
    [Q4_0] = sizeof(block_q4_0), [Q4_1] = sizeof(block_q4_1), [Q8_0] = sizeof(block_q8_0),
    [F32] = sizeof(float), [F16] = sizeof(uint16_t),
    [Q5_0] = sizeof(block_q5_0), [Q5_1] = sizeof(block_q5_1), [Q4_K] = sizeof(block_q4_K),
    [Q5_K] = sizeof(block_q5_K), [Q6_K] = sizeof(block_q6_K), [Q2_K] = sizeof(block_q2_K),
    [Q3_K] = sizeof(block_q3_K),
};

/* The bytes of one row of `cols` weights of a block format (cols a multiple of its block). */
static inline int64_t format_row_bytes(weight_format format, int64_t cols)
{
    return cols / BLOCK_WEIGHTS[format] * BLOCK_BYTES[format];
}

#endif
