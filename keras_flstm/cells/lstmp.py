"""LSTMP: the LSTM with a recurrent projection layer (Sak et al., 2014)."""

from keras import ops
from keras.saving import register_keras_serializable

from keras_flstm.cells.base import COMMON_ARGS_DOC
from keras_flstm.cells.base import ProjectedLSTMCellBase


@register_keras_serializable(package="keras_flstm")
class LSTMPCell(ProjectedLSTMCellBase):
    __doc__ = (
        """Cell of an LSTM with projection (LSTMP), for `keras.layers.RNN`.

    For input x ∈ R^d, output h ∈ R^p and cell state c ∈ R^n:

    ```
    z   = x·W_x + h_{t-1}·W_h + b       W_x: (d, 4n)  W_h: (p, 4n)  b: (4n,)
    i, f, g, o = σ(z_i), σ(z_f), tanh(z_c), σ(z_o)
    c_t = f ⊙ c_{t-1} + i ⊙ g
    m_t = o ⊙ tanh(c_t)
    h_t = m_t·P                          P: (n, p), no bias
    ```

    Weights: `kernel` W_x `(d, 4n)`, `recurrent_kernel` W_h `(p, 4n)`,
    `bias` `(4n,)`, and `projection_kernel` P `(n, p)` only when
    `projection_units` is set. With `projection_units=None` this is exactly
    `keras.layers.LSTMCell` (same weights, states and outputs).

    Example:

    >>> rnn = keras.layers.RNN(LSTMPCell(64, projection_units=16))
    >>> rnn(np.zeros((2, 5, 8))).shape
    (2, 16)
"""
        + COMMON_ARGS_DOC
    )

    def build_affine(self, input_dim):
        self.kernel = self.add_weight(
            shape=(input_dim, 4 * self.units),
            name="kernel",
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        self.recurrent_kernel = self.add_weight(
            shape=(self.output_units, 4 * self.units),
            name="recurrent_kernel",
            initializer=self.recurrent_initializer,
            regularizer=self.recurrent_regularizer,
            constraint=self.recurrent_constraint,
        )

    def input_term(self, x):
        """u = x·W_x + b, for inputs of any rank."""
        return self.add_bias(ops.matmul(x, self.kernel))

    def recurrent_term(self, h):
        """h·W_h; z = u + h·W_h."""
        return ops.matmul(h, self.recurrent_kernel)
