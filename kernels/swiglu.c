/* SwiGLU of a prompt's MLP: out[t, :] = silu(gate[t, :]) ⊙ up[t, :], rows split over the
 * threads (the arithmetic: internal/swiglu.h, which the one-token kernels share).
 * NumPy reference: llama_np.ops.swiglu_forward. */
#include <stdint.h>

#include "internal/swiglu.h"

void swiglu_f32(float *out, const float *gate, const float *up, int64_t n_rows, int64_t width)
{
    #pragma omp parallel for if (n_rows > 8) schedule(static)
    for (int64_t t = 0; t < n_rows; t++) swiglu_row(out + t * width, gate + t * width, up + t * width, width);
}
