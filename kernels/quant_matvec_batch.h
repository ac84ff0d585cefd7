int quant_matvec_batch_f32(int format, float *out, const uint8_t *w, const float *x, int64_t n_rows_x, int64_t out_features, int64_t in_features, int int8_activations, int n_threads);
