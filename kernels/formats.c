/* The kernels' weight formats as Python can ask for them (internal/formats.h), so that a
 * test can hold them to llama_np.quant.formats.FORMATS (tests/test_formats.py). */
#include <stdint.h>

#include "formats.h"
#include "internal/formats.h"
#include "internal/kv_rows.h"

/* The weights and bytes of one block of `format`; 0, or -1 for a number that is no format. */
int kernel_format_block(int32_t format, int64_t *block_weights, int64_t *block_bytes)
{
    if (format < 0 || format >= N_FORMATS) return -1;
    *block_weights = BLOCK_WEIGHTS[format];
    *block_bytes = BLOCK_BYTES[format];
    return 0;
}

/* n floats stored as a KV cache row of `format` (F32, F16, Q8_0) and read back: the
 * conversions of internal/kv_rows.h, for tests/test_kv_cache.py to hold to llama_np.quant.kv_rows. */
void kv_rows_store(int32_t format, uint8_t *dst, const float *src, int64_t n)
{
    kv_from_f32(format, dst, src, n);
}

void kv_rows_load(int32_t format, float *dst, const uint8_t *src, int64_t n)
{
    kv_to_f32(format, dst, src, n);
}
