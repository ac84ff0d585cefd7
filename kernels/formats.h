int kernel_format_block(int32_t format, int64_t *block_weights, int64_t *block_bytes);
