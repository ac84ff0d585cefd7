int kernel_format_block(int32_t format, int64_t *block_weights, int64_t *block_bytes);
void kv_rows_store(int32_t format, uint8_t *dst, const float *src, int64_t n);
void kv_rows_load(int32_t format, float *dst, const uint8_t *src, int64_t n);
