/* The kernels' weight formats as Python can ask for them (internal/formats.h), so that a
 * test can hold them to llama_np.quant.formats.FORMATS (tests/test_formats.py). */
#include <stdint.h>

#include "formats.h"
#include "internal/formats.h"

/* The weights and bytes of one block of `format`; 0, or -1 for a number that is no format. */
int kernel_format_block(int32_t format, int64_t *block_weights, int64_t *block_bytes)
{
    if (format < 0 || format >= N_FORMATS) return -1;
    *block_weights = BLOCK_WEIGHTS[format];
    *block_bytes = BLOCK_BYTES[format];
    return 0;
}
