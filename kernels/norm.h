void rmsnorm_f32(float *out, const float *x, const float *weight, int64_t n_rows, int64_t dim, float eps);
