void swiglu_f32(float *out, const float *gate, const float *up, int64_t n_rows, int64_t width);
