"""The RMSNorm, RoPE and SwiGLU C kernels against their NumPy references, and the guards that keep
bad arguments away from C."""
import numpy as np
import pytest

from llama_np import kernels
from llama_np import ops

pytestmark = pytest.mark.skipif(not kernels.AVAILABLE, reason="C kernels not built")


@pytest.mark.parametrize("rows,dim", [(1, 1), (3, 7), (17, 576), (33, 65)])
def test_rmsnorm_matches_numpy(rng, rows, dim):
    x = rng.standard_normal((rows, dim)).astype(np.float32)
    w = rng.standard_normal(dim).astype(np.float32)
    expected = ops.rmsnorm_forward(x, w, 1e-5)[0]
    np.testing.assert_allclose(kernels.rmsnorm(x, w, 1e-5), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tokens,heads,head_dim,start", [(1, 1, 2, 0), (5, 3, 64, 100), (19, 9, 6, 2040)])
def test_rope_matches_numpy(rng, tokens, heads, head_dim, start):
    x = rng.standard_normal((tokens, heads, head_dim)).astype(np.float32)
    positions = np.arange(start, start + tokens, dtype=np.int64)
    expected = ops.rope_forward(x, positions, 10000.0)[0]
    np.testing.assert_allclose(kernels.rope_(x.copy(), positions, 10000.0), expected, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("rows,width", [(1, 1), (3, 7), (9, 33), (2, 1999), (17, 1536)])
def test_swiglu_matches_numpy(rng, rows, width):
    """Odd widths take the 8-lane loop and the scalar tail; the oracle is NumPy in float64."""
    gate = (8 * rng.standard_normal((rows, width))).astype(np.float32)
    up = rng.standard_normal((rows, width)).astype(np.float32)
    expected = ops.swiglu_forward(gate.astype(np.float64), up.astype(np.float64))[0]
    np.testing.assert_allclose(kernels.swiglu(gate, up), expected, rtol=1e-6, atol=1e-30)


def test_swiglu_at_the_ends_of_the_range():
    """Both signs far out, zero, and the infinities and NaN as NumPy's formula gives them (13
    values a row, so that the scalar tail runs too). Below g = -87 the 8-lane e^-|g| is 0, so
    silu(g), of the order of 1e-36 there, comes out as 0: hence the absolute tolerance."""
    gate = np.array([-100, -88, -87.5, -20, -1e-30, 0, 1e-30, 20, 88, 100, np.inf, -np.inf, np.nan] * 3,
                    dtype=np.float32).reshape(3, -1)
    up = np.full_like(gate, 1.5)
    with np.errstate(all="ignore"):
        expected = ops.swiglu_forward(gate.astype(np.float64), up.astype(np.float64))[0]
    np.testing.assert_allclose(kernels.swiglu(gate, up), expected, rtol=1e-6, atol=1e-35)


def test_guards_reject_bad_arguments(rng):
    x = rng.standard_normal((4, 8)).astype(np.float32)
    w = np.ones(8, np.float32)
    with pytest.raises(TypeError, match="float32"):
        kernels.rmsnorm(x.astype(np.float64), w, 1e-5)
    with pytest.raises(ValueError, match="contiguous"):
        kernels.rmsnorm(np.asfortranarray(x), w, 1e-5)
    with pytest.raises(ValueError, match="entries"):
        kernels.rmsnorm(x, np.ones(7, np.float32), 1e-5)
    with pytest.raises(TypeError, match="int64"):
        kernels.rope_(x.reshape(4, 1, 8), np.arange(4, dtype=np.int32), 1e4)
    with pytest.raises(ValueError, match="positions"):
        kernels.rope_(x.reshape(4, 1, 8), np.arange(3), 1e4)
    with pytest.raises(ValueError, match="shape"):
        kernels.swiglu(x, x[:3].copy())
    with pytest.raises(TypeError, match="float32"):
        kernels.swiglu(x, x.astype(np.float64))
    with pytest.raises(ValueError, match="read-only"):
        ro = x.reshape(4, 1, 8).copy()
        ro.flags.writeable = False
        kernels.rope_(ro, np.arange(4), 1e4)
