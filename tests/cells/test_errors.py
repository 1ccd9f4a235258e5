"""Bad arguments raise a ValueError that names the value and the fix."""

import json

import keras
import numpy as np
import pytest

from keras_flstm import FLSTMCell, GLSTMCell, LSTMPCell
from keras_flstm.cells import lstm_gates


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: LSTMPCell(0), r"positive integer, got units=0"),
        (lambda: LSTMPCell(-3), r"units=-3"),
        (lambda: LSTMPCell(8, projection_units=0), r"projection_units=0.*None"),
        (lambda: FLSTMCell(8, factor_size=0), r"factor_size=0.*rank"),
        (lambda: FLSTMCell(8, factor_size=2.5), r"factor_size=2.5"),
        (lambda: GLSTMCell(8, groups=0), r"groups=0"),
        (lambda: GLSTMCell(10, groups=4), r"groups=4.*units=10"),
        (lambda: GLSTMCell(8, groups=4, projection_units=6), r"groups=4.*projection_units=6"),
        (lambda: LSTMPCell(8, cell_clip=0.0), r"cell_clip=0.0.*None"),
        (lambda: LSTMPCell(8, projection_units=4, projection_clip=-1.0), r"projection_clip=-1.0"),
        (lambda: LSTMPCell(8, projection_clip=1.0), r"projection_clip=1.0.*projection_units"),
        (lambda: LSTMPCell(8, dropout=1.5), r"dropout=1.5"),
        (lambda: LSTMPCell(8, dropout=None), r"\[0, 1\), got dropout=None"),
        (lambda: LSTMPCell(8, recurrent_dropout="0.1"), r"recurrent_dropout='0.1'"),
        (lambda: LSTMPCell(8, recurrent_dropout=True), r"recurrent_dropout=True"),
        (lambda: LSTMPCell(8, cell_clip="3"), r"cell_clip='3'"),
        (lambda: LSTMPCell(8, cell_clip=True), r"cell_clip=True"),
        (lambda: LSTMPCell(8, cell_clip=float("inf")), r"cell_clip=inf"),
        (lambda: LSTMPCell(True), r"units=True"),
        (lambda: GLSTMCell(8, groups=np.float64(2)), r"groups=.*2\.0"),
    ],
)
def test_bad_constructor_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_numpy_sizes_and_rates_are_accepted_as_python_numbers():
    cell = GLSTMCell(
        np.int64(8), groups=np.int32(2), projection_units=np.int64(4),
        cell_clip=np.float32(3.0), dropout=np.float64(0.25),
    )
    config = cell.get_config()
    for key, kind in [("units", int), ("groups", int), ("projection_units", int), ("cell_clip", float), ("dropout", float)]:
        assert type(config[key]) is kind, key
    assert config["cell_clip"] == 3.0 and config["dropout"] == 0.25
    json.dumps(config)  # what a .keras file stores
    factored = FLSTMCell(8, factor_size=np.int64(3))
    assert type(factored.factor_size) is int


def test_factor_size_above_the_rank_of_the_dense_map_is_rejected_at_build():
    # W1·W2 stands for a (d+p)×4n matrix: rank <= min(5 + 4, 32) = 9.
    rnn = keras.layers.RNN(FLSTMCell(8, factor_size=10, projection_units=4))
    with pytest.raises(ValueError, match=r"factor_size=10 exceeds.*rank 9.*factor_size <= 9"):
        rnn(np.zeros((2, 3, 5), "float32"))
    ok = keras.layers.RNN(FLSTMCell(8, factor_size=9, projection_units=4))
    assert ok(np.zeros((2, 3, 5), "float32")).shape == (2, 4)


def test_groups_must_divide_the_input_size():
    rnn = keras.layers.RNN(GLSTMCell(8, groups=4))
    with pytest.raises(ValueError, match=r"groups=4.*input size=6"):
        rnn(np.zeros((2, 3, 6), "float32"))


def test_glstm_needs_a_known_input_size():
    with pytest.raises(ValueError, match=r"known input size.*None"):
        GLSTMCell(8, groups=2).build((None, None))


def test_lstm_gates_needs_z_to_hold_every_groups_gates():
    z, c = np.zeros((2, 24), "float32"), np.zeros((2, 6), "float32")
    tanh, sigmoid = keras.activations.tanh, keras.activations.sigmoid
    with pytest.raises(ValueError, match=r"groups=4.*24 entries.*multiple of 16"):
        lstm_gates(z, c, tanh, sigmoid, groups=4)
    with pytest.raises(ValueError, match=r"positive integer `groups`, got groups=0"):
        lstm_gates(z, c, tanh, sigmoid, groups=0)
    m, c_new = lstm_gates(z, c, tanh, sigmoid, groups=3)
    assert m.shape == c_new.shape == (2, 6)
