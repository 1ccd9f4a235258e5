"""Bad arguments raise a ValueError that names the value and the fix."""

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
    ],
)
def test_bad_constructor_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


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
