void rope_f32(float *x, const int64_t *positions, int64_t n_tokens, int64_t n_heads, int64_t head_dim, float theta, const float *inv_freq, float attention_factor);
