"""G-LSTM: the LSTM whose affine map is split into k independent groups (Kuchaiev & Ginsburg, 2017)."""

from keras import constraints
from keras import initializers
from keras import ops
from keras.saving import register_keras_serializable

from keras_flstm.cells.base import COMMON_ARGS_DOC
from keras_flstm.cells.base import ProjectedLSTMCellBase
from keras_flstm.cells.base import check_positive_int


def _check_divides(groups, name, size, fix):
    if size % groups:
        raise ValueError(
            f"`groups={groups}` must divide {name}={size}: every group "
            f"reads an equal, contiguous slice. {fix}"
        )


class _BlockDiagonal(initializers.Initializer):
    """Draws the diagonal blocks of a dense 2-D initializer's matrix.

    Each group then starts with exactly the scale that the equivalent dense
    LSTMP weight would have: a G-LSTM is an LSTMP whose W is block-diagonal.
    Drawing one matrix (not one per group) also keeps groups distinct, since
    Keras initializers return the same values on every call. (An Initializer
    object, not a closure, because Keras jits initializers under a
    distribution.)
    """

    def __init__(self, initializer):
        self.initializer = initializer

    def __call__(self, shape, dtype=None):
        groups, rows, cols = shape
        dense = self.initializer((groups * rows, groups * cols), dtype=dtype)
        return ops.stack(
            [
                dense[j * rows : (j + 1) * rows, j * cols : (j + 1) * cols]
                for j in range(groups)
            ]
        )


class _PerGroup(constraints.Constraint):
    """Applies a 2-D weight constraint to each group's block `(a, 4n/k)`.

    Exactly what the constraint does to the equivalent block-diagonal dense
    weight, for Keras's constraints (elementwise, or norms along rows or
    columns): a row or column of that matrix is zero outside its block.
    Applied to the stored `(k, a, 4n/k)` kernel as it is, a norm along axis
    0 would mix the groups instead.
    """

    def __init__(self, constraint):
        self.constraint = constraint

    def __call__(self, w):
        return ops.stack([self.constraint(w[j]) for j in range(w.shape[0])])


@register_keras_serializable(package="keras_flstm")
class GLSTMCell(ProjectedLSTMCellBase):
    __doc__ = (
        """Cell of a group LSTM (G-LSTM), for `keras.layers.RNN`.

    x ∈ R^d and h ∈ R^p are split into k contiguous, equal parts
    x = [x¹ … xᵏ], h = [h¹ … hᵏ]. Group j has its own affine map, with no
    weights across groups:

    ```
    zʲ  = xʲ·W_xʲ + h_{t-1}ʲ·W_hʲ          W_xʲ: (d/k, 4n/k)  W_hʲ: (p/k, 4n/k)
    z   = [z_i¹…z_iᵏ, z_f¹…z_fᵏ, z_c¹…z_cᵏ, z_o¹…z_oᵏ] + b        b: (4n,)
    i, f, g, o = σ(z_i), σ(z_f), tanh(z_c), σ(z_o)
    c_t = f ⊙ c_{t-1} + i ⊙ g
    m_t = o ⊙ tanh(c_t)
    h_t = m_t·P                            P: (n, p), full: groups mix here
    ```

    Each group's `4n/k` outputs are ordered i, f, c, o. In the equations
    (and in the stored bias) the groups' parts are concatenated per gate, so
    c and m hold group j in units `[j·n/k, (j+1)·n/k)` (f-lm's
    group-contiguous layout); the code never forms that gate-major z (see
    below). With `groups=1` this is exactly `LSTMPCell`.

    Weights: `kernel` `(k, d/k, 4n/k)`, `recurrent_kernel` `(k, p/k, 4n/k)`,
    `bias` `(4n,)` (gate-major, as above), and the full `projection_kernel`
    `(n, p)`. The affine map has `4n·(d+p)/k` weights. All groups run as one
    einsum batched over the groups, which computes z group-major,
    `[z¹ … zᵏ]` (`lstm_gates(..., groups=k)`); the bias is permuted to
    match.

    Different `groups` per layer (the paper's "hierarchical" G4-G8) is just
    a different `groups` in each stacked cell.

    `kernel_constraint` and `recurrent_constraint` act on each group's
    block `(d/k, 4n/k)` or `(p/k, 4n/k)`, as they would on the equivalent
    block-diagonal dense weight.

    Args:
        groups: Positive int k; it must divide d, n and p.
"""
        + COMMON_ARGS_DOC
    )

    def __init__(self, units, groups, projection_units=None, **kwargs):
        groups = check_positive_int(
            "groups", groups, "It is the number k of independent groups."
        )
        super().__init__(units, projection_units=projection_units, **kwargs)
        fix = "Choose a group count that divides every size, or resize."
        _check_divides(groups, "units", self.units, fix)
        if self.projection_units is not None:
            _check_divides(groups, "projection_units", self.projection_units, fix)
        self.groups = groups

    def build_affine(self, input_dim):
        k, n = self.groups, self.units
        _check_divides(
            k,
            "the input size",
            input_dim,
            "Resize the input (e.g. the embedding or the previous layer's "
            "output) or choose another `groups`.",
        )
        self.kernel = self.add_weight(
            shape=(k, input_dim // k, 4 * n // k),
            name="kernel",
            initializer=_BlockDiagonal(self.kernel_initializer),
            regularizer=self.kernel_regularizer,
            constraint=self._per_group(self.kernel_constraint),
        )
        self.recurrent_kernel = self.add_weight(
            shape=(k, self.output_units // k, 4 * n // k),
            name="recurrent_kernel",
            initializer=_BlockDiagonal(self.recurrent_initializer),
            regularizer=self.recurrent_regularizer,
            constraint=self._per_group(self.recurrent_constraint),
        )

    @staticmethod
    def _per_group(constraint):
        return None if constraint is None else _PerGroup(constraint)

    def _grouped_matmul(self, v, kernel):
        """Applies every group's map to its slice of v, in one einsum.

        `v` is `(..., k·a)`; the result is `(..., 4n)`, group-major.
        """
        k = self.groups
        lead = ops.shape(v)[:-1]
        v = ops.reshape(v, (-1, k, kernel.shape[1]))
        # Group-major z is what a GEMM batched over the groups writes in
        # place (rows, then the group, then its 4n/k columns), and its
        # gradients read it in place too: no transposed or repeated operand
        # in the forward or backward pass. Gate-major z would split each row
        # as (gate, group, unit) around the batch axis.
        z = ops.einsum("bka,kau->bku", v, kernel)
        return ops.reshape(z, (*lead, kernel.shape[0] * kernel.shape[2]))

    @property
    def gate_groups(self):
        """z is group-major: `lstm_gates(..., groups=k)` reads it."""
        return self.groups

    def bias_in_z_layout(self):
        """The gate-major bias `(4, k, n/k)` permuted to group-major."""
        k, n = self.groups, self.units
        per_gate = ops.reshape(self.bias, (4, k, n // k))
        return ops.reshape(ops.transpose(per_gate, (1, 0, 2)), (4 * n,))

    def input_term(self, x):
        """u = [x¹·W_x¹ … xᵏ·W_xᵏ] (group-major) + b, for inputs of any rank."""
        return self.add_bias(self._grouped_matmul(x, self.kernel))

    def recurrent_term(self, h):
        """[h¹·W_h¹ … hᵏ·W_hᵏ] (group-major); z = u + this."""
        return self._grouped_matmul(h, self.recurrent_kernel)

    def get_config(self):
        return {**super().get_config(), "groups": self.groups}
