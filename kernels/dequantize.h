void dequantize_f32(int format, float *out, const uint8_t *data, int64_t n_rows, int64_t cols, int n_threads);
