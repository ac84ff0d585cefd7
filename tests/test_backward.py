"""Every hand-written backward in llama_np.ops against central finite differences (float64).

The check: pick a random cotangent R shaped like the output, let L = Σ y ⊙ R, and compare the
backward's gradient of L with (L(x + h e_i) - L(x - h e_i)) / 2h for every element i of every
input. Agreement is measured as ‖g_backward - g_fd‖ / ‖g_fd‖ (relative error ≤ 1e-6).
"""
import numpy as np
import pytest

from llama_np import ops

RTOL = 1e-6
STEP = 1e-6


def rand(rng, *shape):
    return rng.standard_normal(shape)  # float64


def finite_difference(loss, x):
    """Central differences of the scalar loss() with respect to every element of x (in place)."""
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + STEP
        up = loss()
        flat[i] = saved - STEP
        down = loss()
        flat[i] = saved
        gflat[i] = (up - down) / (2 * STEP)
    return grad


def relative_error(got, expected):
    return np.linalg.norm(got - expected) / max(np.linalg.norm(expected), 1e-300)


def check_grads(forward, inputs, backward, rng):
    """forward(*inputs) -> y; backward(dy) -> one gradient per input (None to skip)."""
    y = forward(*inputs)
    dy = rand(rng, *np.shape(y))
    grads = backward(dy)
    for x, g in zip(inputs, grads):
        if g is None:
            continue
        fd = finite_difference(lambda: float(np.sum(forward(*inputs) * dy)), x)
        assert g.dtype == np.float64
        assert relative_error(g, fd) <= RTOL, relative_error(g, fd)


def test_linear_backward_matches_finite_differences(rng):
    x, w = rand(rng, 2, 3, 5), rand(rng, 4, 5)
    check_grads(lambda x, w: ops.linear_forward(x, w)[0], [x, w],
                lambda dy: ops.linear_backward(dy, ops.linear_forward(x, w)[1]), rng)


def test_linear_backward_skips_frozen_weight(rng):
    x, w = rand(rng, 3, 5), rand(rng, 4, 5)
    dx, dw = ops.linear_backward(rand(rng, 3, 4), ops.linear_forward(x, w)[1], weight_grad=False)
    assert dw is None and dx.shape == x.shape


def test_linear_backward_through_quantized_weight_equals_dequantized(rng):
    """QLoRA-style: the input gradient through a Q4_1 matrix is the one through its
    dequantized values (the blocks are never expanded whole)."""
    from llama_np.quant import QuantizedMatrix
    w = QuantizedMatrix.from_float(rng.standard_normal((48, 64)), "Q4_1")
    dy = rng.standard_normal((5, 48)).astype(np.float32)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    dx, _ = ops.linear_backward(dy, ops.linear_forward(x, w)[1], weight_grad=False)
    np.testing.assert_allclose(dx, dy @ w.dequantize(), rtol=1e-5, atol=1e-5)


def test_embedding_backward_matches_finite_differences(rng):
    ids, table = np.array([3, 1, 3, 0, 5, 3]), rand(rng, 7, 4)
    check_grads(lambda t: ops.embedding_forward(ids, t)[0], [table],
                lambda dh: [ops.embedding_backward(dh, ops.embedding_forward(ids, table)[1])], rng)


def test_embedding_backward_trains_only_chosen_rows(rng):
    ids, table = np.array([3, 1, 3, 0, 5, 6]), rand(rng, 7, 4)
    dh = rand(rng, 6, 4)
    full = ops.embedding_backward(dh, ops.embedding_forward(ids, table)[1])
    new_rows = np.arange(5, 7)  # e.g. the rows of tokens appended to the vocabulary
    part = ops.embedding_backward(dh, ops.embedding_forward(ids, table)[1], trainable_rows=new_rows)
    np.testing.assert_array_equal(part[5:], full[5:])
    assert not part[:5].any()


def test_embedding_backward_adds_into_a_tied_heads_gradient(rng):
    """One table used twice, as a tied model uses it: looked up (the embedding) and
    multiplied by (the output head). Its gradient is the head's dW with the lookup's rows
    added into that same array."""
    ids, table, x = np.array([3, 1, 3, 0, 5, 3]), rand(rng, 7, 4), rand(rng, 2, 4)

    def forward(t):   # [6·4 + 2·7]: the looked-up rows and the head's logits, side by side
        return np.concatenate([ops.embedding_forward(ids, t)[0].ravel(), ops.linear_forward(x, t)[0].ravel()])

    def backward(dy):
        dh, dlogits = dy[:24].reshape(6, 4), dy[24:].reshape(2, 7)
        _, dhead = ops.linear_backward(dlogits, ops.linear_forward(x, table)[1])
        dtable = ops.embedding_backward(dh, ops.embedding_forward(ids, table)[1], into=dhead)
        assert dtable is dhead                                      # in place, no second table
        return [dtable]

    check_grads(forward, [table], backward, rng)


def test_embedding_backward_into_keeps_only_chosen_rows_of_the_lookup(rng):
    ids, table, dh = np.array([3, 1, 6, 0, 5, 6]), rand(rng, 7, 4), rand(rng, 6, 4)
    cache = ops.embedding_forward(ids, table)[1]
    start = rand(rng, 7, 4)
    summed = ops.embedding_backward(dh, cache, trainable_rows=np.arange(5, 7), into=start.copy())
    np.testing.assert_allclose(summed, start + ops.embedding_backward(dh, cache, trainable_rows=np.arange(5, 7)),
                               rtol=1e-12)
    np.testing.assert_array_equal(summed[:5], start[:5])           # the frozen rows' lookups add nothing


def test_rmsnorm_backward_matches_finite_differences(rng):
    x, w = rand(rng, 5, 8), rand(rng, 8)
    check_grads(lambda x, w: ops.rmsnorm_forward(x, w, 1e-5)[0], [x, w],
                lambda dy: ops.rmsnorm_backward(dy, ops.rmsnorm_forward(x, w, 1e-5)[1]), rng)


def test_rope_backward_matches_finite_differences(rng):
    x, positions = rand(rng, 5, 3, 8), np.arange(7, 12)
    check_grads(lambda x: ops.rope_forward(x, positions, 10000.0)[0], [x],
                lambda dy: [ops.rope_backward(dy, ops.rope_forward(x, positions, 10000.0)[1])], rng)


def test_scaled_rope_backward_matches_finite_differences(rng):
    """With a scaled RoPE's own frequencies and YaRN's attention factor on cos and sin."""
    x, positions = rand(rng, 5, 3, 8), np.arange(70, 75)
    inv_freq = ops.rope_inverse_frequencies(8, 10000.0) / np.float32(4.0)
    rope = (10000.0, inv_freq, 1.2)
    check_grads(lambda x: ops.rope_forward(x, positions, *rope)[0], [x],
                lambda dy: [ops.rope_backward(dy, ops.rope_forward(x, positions, *rope)[1])], rng)


@pytest.mark.parametrize("n_tokens, n_keys", [(6, 6), (3, 7)], ids=["self", "with-cache"])
def test_attention_backward_matches_finite_differences(rng, n_tokens, n_keys):
    """Grouped-query (4 query heads over 2 key/value heads), causal, and with queries that
    are the last T of S positions."""
    q, k, v = rand(rng, n_tokens, 4, 6), rand(rng, n_keys, 2, 6), rand(rng, n_keys, 2, 6)
    check_grads(lambda q, k, v: ops.attention_forward(q, k, v)[0], [q, k, v],
                lambda dy: ops.attention_backward(dy, ops.attention_forward(q, k, v)[1]), rng)


def test_swiglu_backward_matches_finite_differences(rng):
    gate, up = rand(rng, 4, 6) * 3, rand(rng, 4, 6)
    check_grads(lambda g, u: ops.swiglu_forward(g, u)[0], [gate, up],
                lambda dy: ops.swiglu_backward(dy, ops.swiglu_forward(gate, up)[1]), rng)


def test_cross_entropy_backward_matches_finite_differences(rng):
    logits = rand(rng, 6, 9) * 2
    targets = np.array([4, ops.IGNORE_INDEX, 0, 8, ops.IGNORE_INDEX, 4])
    loss = lambda z: ops.cross_entropy_forward(z, targets)[0]
    dlogits = ops.cross_entropy_backward(ops.cross_entropy_forward(logits, targets)[1])
    assert not dlogits[[1, 4]].any()  # ignored positions get no gradient
    assert relative_error(dlogits, finite_difference(lambda: loss(logits), logits)) <= RTOL


def test_cross_entropy_in_place_gives_the_same_loss_and_gradient(rng):
    """overwrite=True (the trainer's output head) computes in the logits' own array; the
    loss and gradient are those of the copying form, which the test above checks."""
    logits = rand(rng, 6, 9) * 2
    targets = np.array([4, ops.IGNORE_INDEX, 0, 8, ops.IGNORE_INDEX, 4])
    loss, cache = ops.cross_entropy_forward(logits, targets)
    work = logits.copy()
    loss_in_place, cache_in_place = ops.cross_entropy_forward(work, targets, overwrite=True)
    assert loss_in_place == loss
    dlogits = ops.cross_entropy_backward(cache_in_place)
    assert np.shares_memory(dlogits, work)
    np.testing.assert_array_equal(dlogits, ops.cross_entropy_backward(cache))


def test_causal_lm_targets_shift_labels_left():
    labels = np.array([[5, 6, 7, ops.IGNORE_INDEX], [-100, -100, 3, 4]])
    np.testing.assert_array_equal(ops.causal_lm_targets(labels),
                                  [[6, 7, -100, -100], [-100, 3, 4, -100]])


def test_float32_forwards_stay_float32(rng):
    """The dtype-preserving changes leave the model's float32 path in float32."""
    q = rng.standard_normal((3, 4, 6)).astype(np.float32)
    k = rng.standard_normal((3, 2, 6)).astype(np.float32)
    out, (_, _, _, probs, _) = ops.attention_forward(q, k, k)
    assert out.dtype == probs.dtype == np.float32
    table = rng.standard_normal((5, 4)).astype(np.float32)
    assert ops.embedding_forward(np.array([1, 2]), table)[0].dtype == np.float32
