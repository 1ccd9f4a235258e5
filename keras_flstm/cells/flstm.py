"""F-LSTM: the LSTM whose affine map is factorized to rank r (Kuchaiev & Ginsburg, 2017)."""

from keras import constraints
from keras import initializers
from keras import ops
from keras import regularizers
from keras.saving import register_keras_serializable

from keras_flstm.cells.base import COMMON_ARGS_DOC
from keras_flstm.cells.base import ProjectedLSTMCellBase
from keras_flstm.cells.base import check_positive_int


@register_keras_serializable(package="keras_flstm")
class FLSTMCell(ProjectedLSTMCellBase):
    __doc__ = (
        """Cell of a factorized LSTM (F-LSTM), for `keras.layers.RNN`.

    The LSTMP affine map `[x, h]·W + b`, W of shape `(d+p, 4n)`, becomes a
    rank-r product `W ≈ W1·W2`:

    ```
    z   = ([x, h_{t-1}]·W1)·W2 + b
        = (x·W1_x + h_{t-1}·W1_h)·W2 + b     W1_x: (d, r)  W1_h: (p, r)
                                               W2: (r, 4n)   b: (4n,)
    i, f, g, o = σ(z_i), σ(z_f), tanh(z_c), σ(z_o)
    c_t = f ⊙ c_{t-1} + i ⊙ g
    m_t = o ⊙ tanh(c_t)
    h_t = m_t·P                              P: (n, p), no bias
    ```

    W1 is stored as its x-rows `kernel` W1_x `(d, r)` and its h-rows
    `recurrent_kernel` W1_h `(p, r)`, so that a fused sequence layer can
    compute x·W1_x for all time steps at once. `factor_kernel` is W2
    `(r, 4n)`. The affine map has `r·(d+p) + 4n·r` weights instead of
    `4n·(d+p)`.

    Args:
        factor_size: Positive int, the rank r of the factorization, at
            most min(d + p, 4n) (checked when the cell is built).
        factor_initializer: Initializer of `factor_kernel` (W2).
        factor_regularizer: Optional regularizer of `factor_kernel`.
        factor_constraint: Optional constraint of `factor_kernel`.
"""
        + COMMON_ARGS_DOC
    )

    def __init__(
        self,
        units,
        factor_size,
        projection_units=None,
        factor_initializer="glorot_uniform",
        factor_regularizer=None,
        factor_constraint=None,
        **kwargs,
    ):
        factor_size = check_positive_int(
            "factor_size",
            factor_size,
            "It is the rank r of W ≈ W1·W2; the paper's F512 uses 512.",
        )
        super().__init__(units, projection_units=projection_units, **kwargs)
        self.factor_size = factor_size
        self.factor_initializer = initializers.get(factor_initializer)
        self.factor_regularizer = regularizers.get(factor_regularizer)
        self.factor_constraint = constraints.get(factor_constraint)

    def build_affine(self, input_dim):
        r = self.factor_size
        # W1·W2 stands for a (d+p)×4n matrix: a larger rank only adds weights.
        rank = min(input_dim + self.output_units, 4 * self.units)
        if r > rank:
            raise ValueError(
                f"factor_size={r} exceeds the largest useful rank {rank} = "
                f"min(input size {input_dim} + output size {self.output_units}, "
                f"4 * units {4 * self.units}) of W1·W2. Use factor_size <= "
                f"{rank}, or an LSTMPCell for the full-rank map."
            )
        self.kernel = self.add_weight(
            shape=(input_dim, r),
            name="kernel",
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        self.recurrent_kernel = self.add_weight(
            shape=(self.output_units, r),
            name="recurrent_kernel",
            initializer=self.recurrent_initializer,
            regularizer=self.recurrent_regularizer,
            constraint=self.recurrent_constraint,
        )
        self.factor_kernel = self.add_weight(
            shape=(r, 4 * self.units),
            name="factor_kernel",
            initializer=self.factor_initializer,
            regularizer=self.factor_regularizer,
            constraint=self.factor_constraint,
        )

    def input_term(self, x):
        """u = x·W1_x (in factor space, rank r), for inputs of any rank."""
        return ops.matmul(x, self.kernel)

    def recurrent_term(self, h):
        """h·W1_h, in factor space (rank r)."""
        return ops.matmul(h, self.recurrent_kernel)

    def expand(self, s):
        """z = s·W2 + b, from the factors s = x·W1_x + h·W1_h."""
        return self.add_bias(ops.matmul(s, self.factor_kernel))

    def get_config(self):
        return {
            **super().get_config(),
            "factor_size": self.factor_size,
            "factor_initializer": initializers.serialize(
                self.factor_initializer
            ),
            "factor_regularizer": regularizers.serialize(
                self.factor_regularizer
            ),
            "factor_constraint": constraints.serialize(self.factor_constraint),
        }
