"""The linear layer y = x Wᵀ and its gradients (weights in the Hugging Face layout [out, in])."""
import numpy as np


def linear_forward(x, weight):
    """y = x Wᵀ with W in the Hugging Face layout [out, in]. `weight` is a float32 array or a
    `quant.QuantizedMatrix` (multiplied block by block, never dequantized whole)."""
    # x: [..., in] -> y: [..., out]
    y = x @ weight.T if isinstance(weight, np.ndarray) else weight.matmul(x)
    return y, (x, weight)


def linear_backward(dy, cache, weight_grad=True):
    """Gradients of y = x Wᵀ:  dx = dy W  and  dW = dyᵀ x  (summed over all leading axes).

    A frozen weight (the base model under LoRA) needs only dx: pass weight_grad=False and
    the [out, in] product is never formed. A quantized W gives dx through its blocks
    (`matmul_t`), which is how gradients reach a LoRA adapter sitting on a 4-bit base
    (QLoRA, Dettmers et al. 2023) without a dequantized copy of the model."""
    x, weight = cache
    # dy: [..., out], x: [..., in]
    dx = dy @ weight if isinstance(weight, np.ndarray) else weight.matmul_t(dy)  # [..., in]
    if not weight_grad:
        return dx, None
    dweight = dy.reshape(-1, dy.shape[-1]).T @ x.reshape(-1, x.shape[-1])      # [out, in]
    return dx, dweight
