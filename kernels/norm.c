/* RMSNorm: out[t, :] = x[t, :] / sqrt(mean(x[t, :]^2) + eps) * weight.
 * NumPy reference: llama_np.ops.rmsnorm_forward. */
#include <math.h>
#include <stdint.h>

void rmsnorm_f32(float *out, const float *x, const float *weight, int64_t n_rows, int64_t dim, float eps)
{
    #pragma omp parallel for if (n_rows > 8) schedule(static)
    for (int64_t t = 0; t < n_rows; t++) {
        const float *xt = x + t * dim;   /* [dim] */
        float *ot = out + t * dim;       /* [dim] */
        double sum_sq = 0.0;   /* in double; `simd` lets 4 partial sums run side by side */
        #pragma omp simd reduction(+:sum_sq)
        for (int64_t i = 0; i < dim; i++) sum_sq += (double)xt[i] * xt[i];
        float inv_rms = (float)(1.0 / sqrt(sum_sq / dim + eps));
        for (int64_t i = 0; i < dim; i++) ot[i] = xt[i] * inv_rms * weight[i];
    }
}
