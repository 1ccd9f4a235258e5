"""The Keras RNN-cell contract, for every cell: config, saving, wrappers, masks, state, dropout, precision, XLA."""

import keras
import numpy as np
import pytest

import keras_flstm
from keras_flstm import FLSTMCell, GLSTMCell, LSTMPCell
from tests.subprocesses import run_python

D = 8
CELLS = {
    "lstmp": lambda **kw: LSTMPCell(12, projection_units=4, **kw),
    "lstm": lambda **kw: LSTMPCell(8, **kw),
    "flstm": lambda **kw: FLSTMCell(12, factor_size=3, projection_units=4, **kw),
    "glstm": lambda **kw: GLSTMCell(12, groups=2, projection_units=4, **kw),
}
cell_params = pytest.mark.parametrize("make_cell", CELLS.values(), ids=CELLS.keys())


def _x(b=3, t=5, seed=0):
    return np.random.default_rng(seed).normal(0, 1, (b, t, D)).astype("float32")


def _model(cell, **rnn_kwargs):
    inputs = keras.Input((None, D))
    return keras.Model(inputs, keras.layers.RNN(cell, **rnn_kwargs)(inputs))


@cell_params
def test_config_round_trip(make_cell):
    cell = make_cell(dropout=0.1, recurrent_dropout=0.2, cell_clip=3.0, seed=4, use_peepholes=True)
    config = keras.saving.serialize_keras_object(cell)
    assert config["module"] is None or "keras_flstm" in str(config)
    clone = keras.saving.deserialize_keras_object(config)
    assert type(clone) is type(cell)
    assert clone.get_config() == cell.get_config()


@cell_params
def test_keras_file_save_and_load(make_cell, tmp_path):
    model = _model(make_cell(use_peepholes=True), return_sequences=True)
    x = _x()
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)


@cell_params
def test_bidirectional(make_cell):
    cell = make_cell()
    layer = keras.layers.Bidirectional(keras.layers.RNN(cell, return_sequences=True))
    x = _x()
    y = np.asarray(layer(x))
    assert y.shape == (3, 5, 2 * cell.output_size)
    # The backward half is the same cell type run over the reversed sequence.
    backward = keras.layers.RNN(type(cell).from_config(cell.get_config()), return_sequences=True)
    backward.build(x.shape)
    backward.set_weights(layer.backward_layer.get_weights())
    want = np.asarray(backward(x[:, ::-1]))[:, ::-1]
    np.testing.assert_allclose(y[..., cell.output_size :], want, atol=1e-6)


@cell_params
def test_masking_keeps_state_through_padding(make_cell):
    ids = np.array([[3, 4, 5, 0, 0], [1, 2, 3, 4, 5]])
    inputs = keras.Input((None,), dtype="int32")
    emb = keras.layers.Embedding(10, D, mask_zero=True)
    rnn = keras.layers.RNN(make_cell(), return_sequences=True, return_state=True)
    model = keras.Model(inputs, rnn(emb(inputs)))
    seq, h, c = (np.asarray(t) for t in model(ids))
    # Masked steps repeat the last real output, and the final state is the
    # state after the last real token: equal to running the prefix alone.
    np.testing.assert_allclose(seq[0, 3], seq[0, 2], atol=1e-7)
    _, h_prefix, c_prefix = (np.asarray(t) for t in model(ids[:1, :3]))
    np.testing.assert_allclose(h[0], h_prefix[0], atol=1e-6)
    np.testing.assert_allclose(c[0], c_prefix[0], atol=1e-6)


@cell_params
def test_return_state_and_initial_state_continue_a_sequence(make_cell):
    cell = make_cell()
    rnn = keras.layers.RNN(cell, return_sequences=True, return_state=True)
    x = _x(t=6)
    full, h, c = rnn(x)
    first, h1, c1 = rnn(x[:, :3])
    second, h2, c2 = rnn(x[:, 3:], initial_state=[h1, c1])
    assert tuple(h.shape) == (3, cell.output_size) and tuple(c.shape) == (3, cell.units)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), full, atol=1e-6)
    np.testing.assert_allclose(h2, h, atol=1e-6)
    np.testing.assert_allclose(c2, c, atol=1e-6)


@cell_params
def test_stateful_carries_state_between_calls(make_cell):
    x = _x(t=6)
    stateful = keras.layers.RNN(make_cell(), stateful=True, return_sequences=True)
    stateful.build((3, None, D))
    plain = keras.layers.RNN(make_cell(), return_sequences=True)
    plain.build((3, None, D))
    plain.set_weights(stateful.get_weights())
    got = np.concatenate([stateful(x[:, :2]), stateful(x[:, 2:4]), stateful(x[:, 4:])], axis=1)
    np.testing.assert_allclose(got, plain(x), atol=1e-6)
    stateful.reset_states()
    np.testing.assert_allclose(stateful(x[:, :2]), np.asarray(plain(x))[:, :2], atol=1e-6)


def test_hierarchical_groups_in_stacked_cells_and_stacked_layers():
    x = _x()
    cells = [GLSTMCell(16, groups=4, projection_units=8), GLSTMCell(16, groups=8, projection_units=8)]
    stacked = keras.layers.RNN(keras.layers.StackedRNNCells(cells), return_sequences=True)
    y = np.asarray(stacked(x))
    assert y.shape == (3, 5, 8)
    # Two RNN layers with the same weights compute the same thing.
    first = keras.layers.RNN(GLSTMCell(16, groups=4, projection_units=8), return_sequences=True)
    second = keras.layers.RNN(GLSTMCell(16, groups=8, projection_units=8), return_sequences=True)
    first.build((None, None, D))
    second.build((None, None, 8))
    first.set_weights([np.asarray(w) for w in cells[0].weights])
    second.set_weights([np.asarray(w) for w in cells[1].weights])
    np.testing.assert_allclose(second(first(x)), y, atol=1e-6)
    assert cells[1].kernel.shape == (8, 1, 8)


@cell_params
def test_dropout_semantics(make_cell):
    x = _x()
    cell = make_cell(dropout=0.5, recurrent_dropout=0.5, seed=1)
    rnn = keras.layers.RNN(cell, return_sequences=True)
    ref = keras.layers.RNN(make_cell(), return_sequences=True)
    ref.build(x.shape)
    rnn.build(x.shape)
    ref.set_weights(rnn.get_weights())
    np.testing.assert_allclose(rnn(x, training=False), ref(x), atol=1e-6)
    assert not np.allclose(rnn(x, training=True), ref(x), atol=1e-3)


@cell_params
def test_dropout_mask_is_shared_by_all_steps(make_cell):
    # With f ≈ 0 and no recurrent weights, c_t = i ⊙ g depends on x_t alone,
    # so a constant input gives a constant output iff the mask is per sequence.
    cell = make_cell(dropout=0.5, seed=3)
    rnn = keras.layers.RNN(cell, return_sequences=True)
    x = np.repeat(_x(t=1), 6, axis=1)
    rnn.build(x.shape)
    n = cell.units
    bias = np.zeros(4 * n, "float32")
    bias[n : 2 * n] = -1e4
    cell.bias.assign(bias)
    cell.recurrent_kernel.assign(np.zeros(cell.recurrent_kernel.shape, "float32"))
    y = np.asarray(rnn(x, training=True))
    np.testing.assert_allclose(y, np.repeat(y[:, :1], 6, axis=1), atol=1e-6)
    assert not np.allclose(y, np.asarray(rnn(x, training=False)), atol=1e-3)


@cell_params
def test_mixed_bfloat16_policy(make_cell):
    x = _x()
    ref = _model(make_cell(), return_sequences=True)
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        mixed = _model(make_cell(), return_sequences=True)
    finally:
        keras.config.set_dtype_policy("float32")
    mixed.set_weights(ref.get_weights())
    assert all(w.dtype == "float32" for w in mixed.weights)
    y = mixed(x)
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"
    want = np.asarray(ref(x))
    got = np.asarray(keras.ops.cast(y, "float32"))
    assert np.max(np.abs(got - want)) < 3e-2 * max(1.0, np.max(np.abs(want)))


@cell_params
@pytest.mark.tf_backend
def test_jit_compile_on_tensorflow_is_really_xla(make_cell):
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        pytest.fail("tf_backend tests must be deselected on other backends")
    model = _model(make_cell())
    model.compile(optimizer="adam", loss="mse", jit_compile=True)
    x, y = _x(), np.zeros((3, model.output_shape[-1]), "float32")
    history = model.fit(x, y, epochs=2, verbose=0)
    assert model.jit_compile is True  # Keras silently sets False when a layer opts out
    assert all(layer.supports_jit for layer in model._flatten_layers())
    assert np.isfinite(history.history["loss"]).all()
    # The forward pass lowers to one XLA computation with the recurrence in it.
    hlo = tf.function(model, jit_compile=True).experimental_get_compiler_ir(tf.constant(x))(stage="hlo")
    assert "while" in hlo


@cell_params
@pytest.mark.tf_backend  # drives both backends itself; once is enough
def test_keras_file_from_tensorflow_loads_on_jax(make_cell, tmp_path):
    """Save on TF in a subprocess, load on JAX in another; outputs must agree."""
    x = _x()
    np.save(tmp_path / "x.npy", x)
    name = [k for k, v in CELLS.items() if v is make_cell][0]
    script = f"""
import numpy as np, keras
from tests.cells.test_keras_contract import CELLS, _model
x = np.load({str(tmp_path / 'x.npy')!r})
if keras.backend.backend() == "tensorflow":
    model = _model(CELLS[{name!r}](use_peepholes=True), return_sequences=True)
    model.save({str(tmp_path / 'm.keras')!r})
else:
    model = keras.saving.load_model({str(tmp_path / 'm.keras')!r})
np.save({str(tmp_path)!r} + "/y_" + keras.backend.backend() + ".npy", np.asarray(model(x)))
"""
    for backend in ("tensorflow", "jax"):
        run_python(script, backend=backend)
    np.testing.assert_allclose(np.load(tmp_path / "y_jax.npy"), np.load(tmp_path / "y_tensorflow.npy"), atol=1e-5)


def test_public_names_are_exported():
    assert {"LSTMPCell", "FLSTMCell", "GLSTMCell"} <= set(keras_flstm.__all__)
    for name in ("LSTMPCell", "FLSTMCell", "GLSTMCell"):
        assert keras.saving.get_registered_object(f"keras_flstm>{name}") is getattr(keras_flstm, name)
