int matmul_q4_0_f32(float *out, const uint8_t *w, const float *x, int64_t n_rows_x, int64_t out_features, int64_t in_features, int n_threads);
int matmul_q4_1_f32(float *out, const uint8_t *w, const float *x, int64_t n_rows_x, int64_t out_features, int64_t in_features, int n_threads);
int matmul_q8_0_f32(float *out, const uint8_t *w, const float *x, int64_t n_rows_x, int64_t out_features, int64_t in_features, int n_threads);
int matmul_q4_0_f32_int8(float *out, const uint8_t *w, const float *x, int64_t n_rows_x, int64_t out_features, int64_t in_features, int n_threads);
int matmul_q4_1_f32_int8(float *out, const uint8_t *w, const float *x, int64_t n_rows_x, int64_t out_features, int64_t in_features, int n_threads);
int matmul_q8_0_f32_int8(float *out, const uint8_t *w, const float *x, int64_t n_rows_x, int64_t out_features, int64_t in_features, int n_threads);
