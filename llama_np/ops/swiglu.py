"""SwiGLU, the gated activation of LLaMA's MLP, forward and backward."""
import numpy as np


def silu(x):
    """SiLU (swish): x · σ(x)."""
    return x / (1.0 + np.exp(-x))


def swiglu_forward(gate, up):
    """SwiGLU (Shazeer 2020): silu(gate) ⊙ up, the gated hidden layer of LLaMA's MLP."""
    # gate, up: [T, F]
    return (silu(gate) * up).astype(gate.dtype, copy=False), (gate, up)


def swiglu_backward(dout, cache):
    """Gradients of silu(gate) ⊙ up. With σ the logistic function,
    silu'(g) = σ(g) (1 + g (1 - σ(g))), so

        dgate = dout ⊙ up ⊙ σ(g)(1 + g(1 - σ(g))),   dup = dout ⊙ silu(g)"""
    gate, up = cache
    # dout, gate, up: [T, F]; computed in place, the arrays are large
    sig = np.exp(-gate)
    sig += 1.0
    np.reciprocal(sig, out=sig)                                                  # σ(g), [T, F]
    silu_g = gate * sig                                                          # [T, F]
    dup = dout * silu_g                                                          # [T, F]
    dgate = 1.0 - sig                                                            # σ' / σ
    dgate *= silu_g
    dgate += sig                                                                 # silu'(g) = σ + silu·(1 - σ)
    dgate *= up
    dgate *= dout                                                                # [T, F]
    return dgate.astype(gate.dtype, copy=False), dup.astype(gate.dtype, copy=False)
