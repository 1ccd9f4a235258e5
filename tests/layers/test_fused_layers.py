"""Fused LSTMP/FLSTM/GLSTM layers equal keras.layers.RNN(cell), on every path."""

import keras
import numpy as np
import pytest

import keras_flstm
from keras_flstm import FLSTM, GLSTM, LSTMP, FLSTMCell, GLSTMCell, LSTMPCell
from tests.cells.autodiff import loss_and_grad_fns
from tests.cells.test_numerics import tanh64
from tests.subprocesses import run_python

D = 8
KINDS = {
    "lstmp": (LSTMP, LSTMPCell, (12,), {"projection_units": 4}),
    "lstm": (LSTMP, LSTMPCell, (8,), {}),
    "lstmp_peep_clip": (LSTMP, LSTMPCell, (12,), {"projection_units": 4, "use_peepholes": True, "cell_clip": 0.5, "projection_clip": 0.3}),
    "flstm": (FLSTM, FLSTMCell, (12, 3), {"projection_units": 4}),
    # F-LSTM's expand (s·W2 + b) with peepholes and clips, and unprojected.
    "flstm_peep_clip": (FLSTM, FLSTMCell, (12, 3), {"projection_units": 4, "use_peepholes": True, "cell_clip": 0.5, "projection_clip": 0.3}),
    "flstm_unprojected": (FLSTM, FLSTMCell, (12, 3), {}),
    "glstm": (GLSTM, GLSTMCell, (12, 2), {"projection_units": 4}),
    # k = 4 groups of 3 units: the group-major scan layout's peepholes,
    # clips and the unprojected h.
    "glstm4_peep_clip": (GLSTM, GLSTMCell, (12, 4), {"projection_units": 4, "use_peepholes": True, "cell_clip": 0.5, "projection_clip": 0.3}),
    "glstm4_unprojected": (GLSTM, GLSTMCell, (12, 4), {}),
}
kinds = pytest.mark.parametrize("kind", KINDS)


def _pair(kind, dtype="float32", **layer_kwargs):
    """A fused layer and the RNN(cell) with the same weights."""
    layer_cls, cell_cls, args, cell_kwargs = KINDS[kind]
    if dtype == "float64":
        cell_kwargs = {**cell_kwargs, "activation": tanh64}
    fused = layer_cls(*args, **cell_kwargs, **layer_kwargs, dtype=dtype)
    cell = cell_cls(*args, **cell_kwargs, dtype=dtype)
    plain = keras.layers.RNN(cell, **layer_kwargs, dtype=dtype)
    shape = (3, None, D)
    fused.build(shape)
    plain.build(shape)
    rng = np.random.default_rng(0)
    values = [rng.normal(0, 0.5, w.shape) for w in fused.weights]
    fused.set_weights(values)
    plain.set_weights(values)
    return fused, plain


def _x(t=6, seed=1, dtype="float32"):
    return np.random.default_rng(seed).normal(0, 1, (3, t, D)).astype(dtype)


def _close(got, want, atol=1e-5):
    got = got if isinstance(got, (list, tuple)) else [got]
    want = want if isinstance(want, (list, tuple)) else [want]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=atol, rtol=0)


@kinds
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_outputs_equal_rnn_of_cell(kind, go_backwards, return_sequences):
    fused, plain = _pair(kind, return_sequences=return_sequences, return_state=True, go_backwards=go_backwards)
    x = _x()
    _close(fused(x), plain(x))


@kinds
def test_initial_state(kind):
    fused, plain = _pair(kind, return_sequences=True)
    rng = np.random.default_rng(2)
    cell = plain.cell
    state = [rng.normal(0, 1, (3, cell.output_units)).astype("float32"), rng.normal(0, 1, (3, cell.units)).astype("float32")]
    x = _x()
    _close(fused(x, initial_state=state), plain(x, initial_state=state))


@kinds
def test_mask(kind):
    fused, plain = _pair(kind, return_sequences=True, return_state=True)
    x = _x()
    mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]], bool)
    _close(fused(x, mask=mask), plain(x, mask=mask))


@kinds
def test_stateful(kind):
    fused, plain = _pair(kind, return_sequences=True, stateful=True)
    x = _x()
    for chunk in (x[:, :2], x[:, 2:5], x[:, 5:]):
        _close(fused(chunk), plain(chunk))


@kinds
def test_dropout_is_off_at_inference_and_on_in_training(kind):
    fused, plain = _pair(kind, return_sequences=True)
    fused.cell.dropout = fused.cell.recurrent_dropout = 0.5
    x = _x()
    _close(fused(x, training=False), plain(x))
    assert not np.allclose(np.asarray(fused(x, training=True)), np.asarray(plain(x)), atol=1e-3)


@kinds
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("unroll", [False, True], ids=["looped", "unrolled"])
def test_gradients_equal_rnn_of_cell_in_float64(kind, go_backwards, unroll):
    # On JAX this checks the hand-written VJP of the fast path against
    # autodiff through keras.layers.RNN; on TF, the generic fused path.
    x = _x(dtype="float64")
    grads = []
    for layer in _pair(kind, dtype="float64", return_sequences=True, go_backwards=go_backwards, unroll=unroll):
        inputs = keras.Input((6, D), dtype="float64")
        model = keras.Model(inputs, layer(inputs))
        probe = np.random.default_rng(3).normal(0, 1, model.output_shape[1:])
        loss, grad = loss_and_grad_fns(model, lambda y: keras.ops.sum(y * probe), x)
        weights = [np.asarray(v) for v in model.trainable_variables]
        grads.append((loss(weights), grad(weights)))
    (loss_fused, g_fused), (loss_plain, g_plain) = grads
    assert abs(loss_fused - loss_plain) < 1e-10
    for a, b in zip(g_fused, g_plain):
        np.testing.assert_allclose(a, b, atol=1e-10, rtol=0)


@kinds
def test_config_round_trip_and_keras_file(kind, tmp_path):
    fused, _ = _pair(kind, return_sequences=True, go_backwards=True)
    clone = type(fused).from_config(fused.get_config())
    assert clone.get_config() == fused.get_config()
    inputs = keras.Input((None, D))
    model = keras.Model(inputs, fused(inputs))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    x = _x()
    _close(loaded(x), model(x), atol=1e-6)


def test_unknown_argument_names_the_layer_and_its_arguments():
    with pytest.raises(ValueError, match=r"passed to GLSTM: \['retrun_sequences'\].*GLSTMCell.*return_sequences"):
        GLSTM(8, 2, retrun_sequences=True)


def test_sequential_built_from_input_shape():
    with pytest.warns(UserWarning, match="input_shape"):  # Keras prefers keras.Input
        model = keras.Sequential([LSTMP(6, projection_units=3, return_sequences=True, input_shape=(5, D))])
    assert model.built
    assert model.layers[0].cell.kernel.shape == (D, 24)


def test_activity_regularizer_adds_a_loss():
    layer = LSTMP(6, projection_units=3, activity_regularizer="l2")
    out = np.asarray(layer(_x()))
    # Keras divides an activity regularizer's loss by the batch size.
    want = 0.01 * np.sum(np.square(out)) / out.shape[0]
    np.testing.assert_allclose(float(sum(layer.losses)), want, rtol=1e-5)


def test_weights_have_the_cell_names():
    fused, plain = _pair("lstmp_peep_clip")
    assert [w.name for w in fused.weights] == [w.name for w in plain.weights]
    assert [w.name for w in fused.weights][:3] == ["kernel", "recurrent_kernel", "bias"]


def test_jax_fast_path_is_taken_on_jax_without_mask_only(monkeypatch):
    from keras_flstm import jax_recurrence

    calls = []
    original = jax_recurrence.run
    monkeypatch.setattr(jax_recurrence, "run", lambda *a, **k: calls.append(1) or original(*a, **k))
    fused, _ = _pair("glstm", return_sequences=True)
    x = _x()
    fused(x)
    fast = 1 if keras.backend.backend() == "jax" else 0
    assert len(calls) == fast
    fused(x, mask=np.ones((3, 6), bool))
    assert len(calls) == fast


def _bf16_matmul_error():
    """Relative error (norms) of the backend's bf16 GEMM against the exact
    product of the same bf16 inputs: the rounding a bf16 layer is built on.

    It is not the same everywhere: 0.17% on JAX (the output's rounding
    alone), 0.33% on TensorFlow on a CPU without AVX-512 BF16.
    """
    rng = np.random.default_rng(0)
    a = keras.ops.cast(rng.normal(size=(640, 64)), "bfloat16")
    b = keras.ops.cast(rng.normal(size=(64, 256)), "bfloat16")
    # numpy float64, not keras.ops.cast: JAX without x64 has no float64.
    exact = np.asarray(a).astype(np.float64) @ np.asarray(b).astype(np.float64)
    got = np.asarray(keras.ops.matmul(a, b)).astype(np.float64)
    return np.linalg.norm(got - exact) / np.linalg.norm(exact)


@pytest.mark.parametrize(
    "layer_cls,args",
    [(LSTMP, (64,)), (FLSTM, (64, 16)), (GLSTM, (64, 4))],
    ids=["lstmp", "flstm", "glstm"],
)
def test_bfloat16_close_to_float32(layer_cls, args):
    """Outputs and weight gradients under mixed_bfloat16, relative to float32
    (norms), within a multiple of the backend's own bf16 GEMM error ε.

    Measured, 20 steps, seeds 0-2: on JAX (ε = 0.17%) outputs 3.2-3.7 ε
    and gradients 3.7-5.2 ε (up to 0.6% and 0.9%); on TensorFlow on an
    AVX2-only CPU (ε = 0.33%) 2.3-3.3 ε and 3.7-6.4 ε (up to 1.1% and 2.1%).
    A fixed 1% passed JAX everywhere but failed TensorFlow there. ε itself is
    capped, so that a broken bf16 GEMM cannot loosen the bound with it.
    """
    eps = _bf16_matmul_error()
    assert eps < 0.005, f"the backend's bf16 GEMM errs by {eps:.2%}, more than bf16 rounding explains"
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(1).normal(0, 1, (32, 20, 32)).astype("float32")
    results, weights = {}, None
    for policy in ("float32", "mixed_bfloat16"):
        keras.config.set_dtype_policy(policy)
        try:
            inputs = keras.Input((20, 32))
            model = keras.Model(inputs, layer_cls(*args, projection_units=16, return_sequences=True)(inputs))
        finally:
            keras.config.set_dtype_policy("float32")
        weights = weights or model.get_weights()
        model.set_weights(weights)
        probe = np.random.default_rng(3).normal(0, 1, model.output_shape[1:]).astype("float32")
        _, grad = loss_and_grad_fns(model, lambda y: keras.ops.sum(keras.ops.cast(y, "float32") * probe), x)
        out = np.asarray(keras.ops.cast(model(x), "float32"))
        results[policy] = out, [np.asarray(g, "float32") for g in grad(weights)]
    (out32, g32), (out16, g16) = results["float32"], results["mixed_bfloat16"]
    out_error = np.linalg.norm(out16 - out32) / np.linalg.norm(out32)
    assert out_error <= 5 * eps, (out_error, eps)
    for a, b in zip(g16, g32):
        error = np.linalg.norm(a - b) / np.linalg.norm(b)
        assert error <= 8 * eps, (a.shape, error, eps)


def test_exported():
    assert {"LSTMP", "FLSTM", "GLSTM"} <= set(keras_flstm.__all__)


@pytest.mark.tf_backend  # drives a JAX subprocess itself; once is enough
def test_layers_build_and_run_under_jax_data_parallel():
    """The layers build, take weights and compute the same under keras.distribution.DataParallel."""
    script = """
import jax
jax.config.update("jax_num_cpu_devices", 2)
import keras, numpy as np, keras_flstm as K
x = np.random.default_rng(0).normal(size=(4, 3, 8)).astype("float32")
for make in (lambda: K.LSTMP(16, projection_units=8), lambda: K.GLSTM(16, 2, projection_units=8), lambda: K.FLSTM(16, 4)):
    plain = make()
    want = np.asarray(plain(x))
    with keras.distribution.DataParallel(devices=jax.devices()[:2]).scope():
        layer = make()
        layer.build(x.shape)
    layer.set_weights(plain.get_weights())
    np.testing.assert_allclose(np.asarray(layer(x)), want, atol=1e-6)
    assert float(np.asarray(layer.cell.bias)[16]) == 1.0
print("ok")
"""
    assert run_python(script, backend="jax").strip().endswith("ok")


@pytest.mark.tf_backend  # drives a JAX subprocess itself; once is enough
def test_unrolled_bias_gradient_is_one_sum_over_all_steps_on_jax():
    """The unrolled backward pass's bias gradient compiles to one row sum
    over the stacked gate gradients, not to one sum per concatenated
    piece, which XLA makes of a float32 sum over a concatenation
    (`jax_recurrence._opaque_to_reduce_splitting`)."""
    script = """
import re, jax, keras, numpy as np, keras_flstm as K
x = np.random.default_rng(0).normal(size=(3, 6, 8)).astype("float32")
# The last: looped, 6 steps, where lax.scan (4 steps per trip) concatenates
# a remainder block of 2 to its loop's stack.
for make in (lambda: K.LSTMP(16, projection_units=8, unroll=True),
             lambda: K.GLSTM(16, 2, projection_units=8, unroll=True),
             lambda: K.FLSTM(16, 4, projection_units=8, unroll=True),
             lambda: K.LSTMP(16, projection_units=8)):
    layer = make()
    layer.build(x.shape)
    trainable = [v.value for v in layer.trainable_variables]
    fixed = [v.value for v in layer.non_trainable_variables]
    loss = lambda w: layer.stateless_call(w, fixed, x)[0].sum()
    hlo = jax.jit(jax.grad(loss)).lower(trainable).compile().as_text()
    # The bias is (4n,) = (64,): count the sums that make a float32[64].
    print(len(re.findall(r"= f32\[64\]\S* reduce\(", hlo)))
"""
    stdout = run_python(script, backend="jax", JAX_PLATFORMS="cpu")
    assert stdout.split() == ["1", "1", "1", "1"], stdout


@pytest.mark.parametrize("kind", ["lstmp", "flstm", "glstm"])
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_stateless_call_under_mixed_bfloat16_equals_call(kind, masked):
    """Layer.stateless_call skips the autocast scope that __call__ opens; the
    layer must still compute in bfloat16, as keras.layers.LSTM does."""
    layer_cls, _, args, cell_kwargs = KINDS[kind]
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        layer = layer_cls(*args, **cell_kwargs, return_sequences=True)
        layer.build((3, None, D))
    finally:
        keras.config.set_dtype_policy("float32")
    x = _x()
    mask = np.array([[True] * 6, [True] * 4 + [False] * 2, [True] * 6]) if masked else None
    want = layer(x, mask=mask)
    got, _ = layer.stateless_call(
        [v.value for v in layer.trainable_variables],
        [v.value for v in layer.non_trainable_variables],
        x,
        mask=mask,
    )
    assert keras.backend.standardize_dtype(got.dtype) == "bfloat16"
    np.testing.assert_array_equal(
        np.asarray(keras.ops.cast(got, "float32")), np.asarray(keras.ops.cast(want, "float32"))
    )
