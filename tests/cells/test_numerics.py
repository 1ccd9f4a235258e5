"""Cell outputs against float64 numpy equations, keras.layers.LSTMCell and identities."""

import keras
import numpy as np
import pytest

from keras_flstm import FLSTMCell, GLSTMCell, LSTMPCell
from keras_flstm.cells import lstm_gates
from tests.cells import reference as ref

B, T, D, N, P = 3, 6, 8, 12, 4


def tanh64(v):
    """tanh that stays float64 on every backend.

    keras.ops.tanh on JAX computes float64 inputs in float32 (Keras's
    64->32 promotion rule), which would hide any error below 1e-7.
    """
    return 2.0 * keras.ops.sigmoid(2.0 * v) - 1.0


def _rnn(cell, d=D, dtype="float64"):
    cell.dtype_policy = dtype
    layer = keras.layers.RNN(cell, return_sequences=True, return_state=True, dtype=dtype)
    layer.build((None, None, d))
    return layer


def _randomize(layer, rng, scale=0.5):
    for w in layer.weights:
        w.assign(rng.normal(0, scale, w.shape))
    return [np.asarray(w) for w in layer.weights]


def _inputs(rng, d=D):
    return rng.normal(0, 1, (B, T, d))


def _state(rng, p, n):
    return rng.normal(0, 0.5, (B, p)), rng.normal(0, 0.5, (B, n))


def _check(layer, x, h0, c0, expect, atol):
    hs, h, c = layer(x, initial_state=[h0, c0])
    np.testing.assert_allclose(np.asarray(hs), expect[0], atol=atol, rtol=0)
    np.testing.assert_allclose(np.asarray(h), expect[1], atol=atol, rtol=0)
    np.testing.assert_allclose(np.asarray(c), expect[2], atol=atol, rtol=0)


@pytest.mark.parametrize("peepholes", [False, True])
@pytest.mark.parametrize("clips", [(None, None), (0.3, 0.2)])
def test_lstmp_matches_float64_equations(peepholes, clips):
    rng = np.random.default_rng(0)
    cell = LSTMPCell(N, projection_units=P, activation=tanh64, use_peepholes=peepholes, cell_clip=clips[0], projection_clip=clips[1])
    layer = _rnn(cell)
    w = _randomize(layer, rng)
    Wx, Wh, b = w[:3]
    peep = w[3:6] if peepholes else None
    Pm = w[-1]
    x, (h0, c0) = _inputs(rng), _state(rng, P, N)
    expect = ref.run(ref.lstmp_affine(Wx, Wh, b), x, h0, c0, P=Pm, cell_clip=clips[0], proj_clip=clips[1], peep=peep)
    _check(layer, x, h0, c0, expect, atol=1e-12)


def test_flstm_matches_float64_equations():
    rng = np.random.default_rng(1)
    layer = _rnn(FLSTMCell(N, factor_size=5, projection_units=P, activation=tanh64))
    W1x, W1h, W2, b, Pm = _randomize(layer, rng)
    x, (h0, c0) = _inputs(rng), _state(rng, P, N)
    expect = ref.run(ref.flstm_affine(W1x, W1h, W2, b), x, h0, c0, P=Pm)
    _check(layer, x, h0, c0, expect, atol=1e-12)


@pytest.mark.parametrize("groups,proj", [(2, P), (4, P), (2, None), (4, None)])
def test_glstm_matches_float64_equations(groups, proj):
    rng = np.random.default_rng(2)
    layer = _rnn(GLSTMCell(N, groups=groups, projection_units=proj, activation=tanh64))
    w = _randomize(layer, rng)
    Kx, Kh, b = w[:3]
    Pm = w[3] if proj else None
    x, (h0, c0) = _inputs(rng), _state(rng, proj or N, N)
    expect = ref.run(ref.glstm_affine(Kx, Kh, b), x, h0, c0, P=Pm)
    _check(layer, x, h0, c0, expect, atol=1e-12)


def test_glstm_with_peepholes_and_clips_matches_float64_equations():
    rng = np.random.default_rng(8)
    cell = GLSTMCell(N, groups=4, projection_units=P, activation=tanh64, use_peepholes=True, cell_clip=0.3, projection_clip=0.2)
    layer = _rnn(cell)
    Kx, Kh, b, w_i, w_f, w_o, Pm = _randomize(layer, rng)
    x, (h0, c0) = _inputs(rng), _state(rng, P, N)
    expect = ref.run(ref.glstm_affine(Kx, Kh, b), x, h0, c0, P=Pm, cell_clip=0.3, proj_clip=0.2, peep=(w_i, w_f, w_o))
    _check(layer, x, h0, c0, expect, atol=1e-12)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_lstm_gates_reads_z_group_major(groups):
    """z laid out as k groups of (i, f, c, o) gives the gate-major equations."""
    rng = np.random.default_rng(9)
    z, c_prev = rng.normal(0, 1, (B, 4 * N)), rng.normal(0, 0.5, (B, N))
    # Gate-major (gate, group, unit) -> group-major (group, gate, unit).
    z_grouped = z.reshape(B, 4, groups, N // groups).transpose(0, 2, 1, 3).reshape(B, 4 * N)
    m, c = lstm_gates(z_grouped, c_prev, tanh64, keras.activations.sigmoid, groups=groups)
    m_want, c_want = ref.lstmp_step(z, c_prev)
    np.testing.assert_allclose(np.asarray(m), m_want, atol=1e-12, rtol=0)
    np.testing.assert_allclose(np.asarray(c), c_want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype,atol", [("float64", 1e-12), ("float32", 1e-6)])
def test_lstmp_without_projection_is_keras_lstmcell(dtype, atol):
    rng = np.random.default_rng(3)
    ours = _rnn(LSTMPCell(N), dtype=dtype)
    theirs = _rnn(keras.layers.LSTMCell(N), dtype=dtype)
    assert [w.shape for w in ours.weights] == [w.shape for w in theirs.weights]
    for a, b in zip(theirs.weights, ours.weights):
        assert a.name == b.name
        b.assign(np.asarray(a))
    x = _inputs(rng).astype(dtype)
    for got, want in zip(ours(x), theirs(x)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=atol, rtol=0)


def test_same_initial_bias_as_keras_lstmcell():
    ours, theirs = _rnn(LSTMPCell(N)), _rnn(keras.layers.LSTMCell(N))
    np.testing.assert_array_equal(np.asarray(ours.weights[2]), np.asarray(theirs.weights[2]))
    assert np.asarray(ours.weights[2])[N : 2 * N].tolist() == [1.0] * N


@pytest.mark.parametrize("groups", [2, 4])
def test_glstm_is_lstmp_with_block_diagonal_weights(groups):
    rng = np.random.default_rng(4)
    g = _rnn(GLSTMCell(N, groups=groups, projection_units=P, activation=tanh64))
    Kx, Kh, b, Pm = _randomize(g, rng)
    l = _rnn(LSTMPCell(N, projection_units=P, activation=tanh64))
    for var, val in zip(l.weights, [ref.glstm_as_dense(Kx), ref.glstm_as_dense(Kh), b, Pm]):
        var.assign(val)
    x = _inputs(rng)
    for got, want in zip(g(x), l(x)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    "make_constraint",
    [
        lambda: keras.constraints.MaxNorm(0.5, axis=0),
        lambda: keras.constraints.MaxNorm(0.5, axis=1),
        lambda: keras.constraints.UnitNorm(axis=0),
    ],
    ids=["max_norm_columns", "max_norm_rows", "unit_norm"],
)
def test_glstm_constraints_act_as_on_the_block_diagonal_weight(make_constraint):
    # Keras optimizers apply `variable.constraint` after every update.
    rng = np.random.default_rng(7)
    g = _rnn(
        GLSTMCell(
            N, groups=2, projection_units=P,
            kernel_constraint=make_constraint(), recurrent_constraint=make_constraint(),
        )
    )
    _randomize(g, rng)
    for variable in (g.cell.kernel, g.cell.recurrent_kernel):
        got = ref.glstm_as_dense(np.asarray(variable.constraint(variable.value)))
        want = np.asarray(make_constraint()(ref.glstm_as_dense(np.asarray(variable))))
        np.testing.assert_allclose(got, want, atol=1e-12, rtol=0)


def test_glstm_with_one_group_is_lstmp():
    rng = np.random.default_rng(5)
    g = _rnn(GLSTMCell(N, groups=1, projection_units=P, activation=tanh64))
    Kx, Kh, b, Pm = _randomize(g, rng)
    l = _rnn(LSTMPCell(N, projection_units=P, activation=tanh64))
    for var, val in zip(l.weights, [Kx[0], Kh[0], b, Pm]):
        var.assign(val)
    x = _inputs(rng)
    for got, want in zip(g(x), l(x)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-12, rtol=0)


def test_flstm_is_lstmp_with_product_weights():
    rng = np.random.default_rng(6)
    f = _rnn(FLSTMCell(N, factor_size=3, projection_units=P, activation=tanh64))
    W1x, W1h, W2, b, Pm = _randomize(f, rng)
    l = _rnn(LSTMPCell(N, projection_units=P, activation=tanh64))
    for var, val in zip(l.weights, [W1x @ W2, W1h @ W2, b, Pm]):
        var.assign(val)
    x = _inputs(rng)
    for got, want in zip(f(x), l(x)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    "make_cell",
    [
        lambda: LSTMPCell(5, projection_units=3, activation=tanh64, use_peepholes=True, cell_clip=2.0),
        lambda: FLSTMCell(6, factor_size=2, projection_units=4, activation=tanh64),
        lambda: GLSTMCell(6, groups=2, projection_units=4, activation=tanh64),
    ],
    ids=["lstmp", "flstm", "glstm"],
)
def test_gradients_match_finite_differences(make_cell):
    from tests.cells.autodiff import loss_and_grad_fns

    rng = np.random.default_rng(7)
    d = 4
    inputs = keras.Input((3, d), dtype="float64")
    cell = make_cell()
    cell.dtype_policy = "float64"
    out = keras.layers.RNN(cell, return_sequences=True, dtype="float64")(inputs)
    model = keras.Model(inputs, out)
    weights = [rng.normal(0, 0.5, v.shape) for v in model.trainable_variables]
    x = rng.normal(0, 1, (2, 3, d))
    probe = rng.normal(0, 1, model.output_shape[1:])
    loss, grads = loss_and_grad_fns(model, lambda y: keras.ops.sum(y * probe), x)
    analytic = grads(weights)
    eps = 1e-6
    for i, w in enumerate(weights):
        for idx in list(np.ndindex(w.shape))[:: max(1, w.size // 6)]:
            values = []
            for sign in (1, -1):
                bumped = [v.copy() for v in weights]
                bumped[i][idx] += sign * eps
                values.append(loss(bumped))
            numeric = (values[0] - values[1]) / (2 * eps)
            assert abs(numeric - analytic[i][idx]) < 1e-6 * max(1.0, abs(numeric)), (i, idx, numeric, analytic[i][idx])
