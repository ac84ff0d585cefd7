typedef struct { const uint8_t *data; int32_t format; int64_t rows, cols; } weight_matrix;
typedef struct { const float *attn_norm, *mlp_norm; weight_matrix q, k, v, o, gate, up, down; } block_weights;
typedef struct { int64_t dim, n_heads, n_kv_heads, head_dim, hidden_dim; float norm_eps, rope_theta; int32_t int8_activations;
                 const float *rope_inv_freq; float rope_attention_factor; } block_shape;  /* rope_inv_freq NULL: theta^(-2i/hd), unscaled (then the factor is not read) */
int decode_layers_f32(float *h, const block_weights *const *layers, int64_t n_layers, const block_shape *shape, uint8_t *k_cache, uint8_t *v_cache, int64_t layer_bytes, int32_t kv_format, int64_t position, int n_threads);
