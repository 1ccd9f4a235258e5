"""What every projected LSTM cell shares: arguments, projection, state, config.

A subclass only defines its affine map `T(x, h) -> z` (the gate
pre-activations), `z = expand(input_term(x) + recurrent_term(h))`, by
implementing its hooks:

- `build_affine(input_dim)`: create the weights of `T`;
- `input_term(x)`: the part of `T` that reads `x` alone. It accepts any
  number of leading axes, so a fused sequence layer can compute it for all
  time steps in one GEMM;
- `recurrent_term(h)`: the part that reads the previous output `h` alone,
  in the same space as `input_term`;
- `expand(s)`, optional: z from their sum s. The identity, unless the map
  is factorized (F-LSTM: `s·W2 + b`). Kept apart so that the fused layers'
  backward pass can reuse the gradient of s it already has for the weight
  gradients of `recurrent_term`, instead of multiplying by W2 again.
"""

import math
import numbers

import keras
from keras import activations
from keras import constraints
from keras import initializers
from keras import ops
from keras import random
from keras import regularizers
from keras.layers import Layer
from keras.src.layers.rnn.dropout_rnn_cell import DropoutRNNCell

from keras_flstm.cells.gates import lstm_gates


def check_positive_int(name, value, fix):
    """`value` as an int; a ValueError unless it is an integer >= 1.

    NumPy integers pass (sizes often come from array shapes); bools do not.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(
            f"`{name}` must be a positive integer, got {name}={value!r}. {fix}"
        )
    return int(value)


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_positive_clip(name, value):
    """`value` as a float (or None); a ValueError unless it is None or finite > 0."""
    if value is None:
        return None
    if not _is_real(value) or not 0 < value < math.inf:
        raise ValueError(
            f"`{name}` must be None (no clipping) or a positive float, got "
            f"{name}={value!r}. Pass None to disable clipping."
        )
    return float(value)


def check_rate(name, value):
    """`value` as a float; a ValueError unless it is a number in [0, 1)."""
    if not _is_real(value) or not 0.0 <= value < 1.0:
        raise ValueError(
            f"`{name}` must be a float in [0, 1), got {name}={value!r}. It is "
            "the fraction of units to drop."
        )
    return float(value)


class _ForgetBiasOne(initializers.Initializer):
    """`[b_i, 1, b_c, b_o]`: the forget-gate bias starts at 1.

    As keras.layers.LSTMCell: the cell starts by remembering (equal at
    initialisation to TF1's run-time forget_bias=1.0). An Initializer object,
    not a closure, because Keras jits initializers under a distribution.
    """

    def __init__(self, initializer, units):
        self.initializer = initializer
        self.units = units

    def __call__(self, shape, dtype=None):
        n = self.units
        return ops.concatenate(
            [
                self.initializer((n,), dtype=dtype),
                ops.ones((n,), dtype=dtype),
                self.initializer((2 * n,), dtype=dtype),
            ]
        )


@ops.custom_gradient
def _add_bias_with_float32_gradient(z, bias):
    """z + bias, whose bias gradient sums the rows in float32.

    The gradient of a broadcast add is a sum over all batch (and, in the
    fused layers, time) rows; summed in bf16 it loses about 10% over a few
    hundred rows. Summing in float32 keeps it within bf16 rounding.
    """

    def grad(*args, upstream=None):
        if upstream is None:
            (upstream,) = args
        rows = tuple(range(len(upstream.shape) - 1))
        d_bias = ops.sum(ops.cast(upstream, "float32"), axis=rows)
        return upstream, ops.cast(d_bias, bias.dtype)

    return z + bias, grad


class ProjectedLSTMCellBase(Layer, DropoutRNNCell):
    """Base class of LSTMPCell, FLSTMCell and GLSTMCell; see their docs."""

    def __init__(
        self,
        units,
        projection_units=None,
        activation="tanh",
        recurrent_activation="sigmoid",
        use_bias=True,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        projection_initializer="glorot_uniform",
        bias_initializer="zeros",
        peephole_initializer="zeros",
        unit_forget_bias=True,
        kernel_regularizer=None,
        recurrent_regularizer=None,
        projection_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        recurrent_constraint=None,
        projection_constraint=None,
        bias_constraint=None,
        dropout=0.0,
        recurrent_dropout=0.0,
        cell_clip=None,
        projection_clip=None,
        use_peepholes=False,
        seed=None,
        **kwargs,
    ):
        units = check_positive_int("units", units, "It is the cell-state size n.")
        if projection_units is not None:
            projection_units = check_positive_int(
                "projection_units",
                projection_units,
                "Pass None for a cell without projection.",
            )
        cell_clip = check_positive_clip("cell_clip", cell_clip)
        projection_clip = check_positive_clip("projection_clip", projection_clip)
        if projection_clip is not None and projection_units is None:
            raise ValueError(
                f"`projection_clip={projection_clip}` needs a projection; set "
                "`projection_units` or use `cell_clip`."
            )
        dropout = check_rate("dropout", dropout)
        recurrent_dropout = check_rate("recurrent_dropout", recurrent_dropout)
        super().__init__(**kwargs)
        self.units = units
        self.projection_units = projection_units
        self.activation = activations.get(activation)
        self.recurrent_activation = activations.get(recurrent_activation)
        self.use_bias = use_bias
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.recurrent_initializer = initializers.get(recurrent_initializer)
        self.projection_initializer = initializers.get(projection_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.peephole_initializer = initializers.get(peephole_initializer)
        self.unit_forget_bias = unit_forget_bias
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = regularizers.get(recurrent_regularizer)
        self.projection_regularizer = regularizers.get(projection_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.recurrent_constraint = constraints.get(recurrent_constraint)
        self.projection_constraint = constraints.get(projection_constraint)
        self.bias_constraint = constraints.get(bias_constraint)
        self.dropout = dropout
        self.recurrent_dropout = recurrent_dropout
        self.cell_clip = cell_clip
        self.projection_clip = projection_clip
        self.use_peepholes = use_peepholes
        self.seed = seed
        self.seed_generator = random.SeedGenerator(seed=seed)

    @property
    def output_units(self):
        """Size p of the output h: `projection_units`, or `units` without."""
        return self.projection_units or self.units

    @property
    def state_size(self):
        # h first, as keras.layers.LSTMCell orders its states.
        return [self.output_units, self.units]

    @property
    def output_size(self):
        return self.output_units

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(
                f"{type(self).__name__} needs a known input size (last axis), "
                f"got input shape {tuple(input_shape)}. Give the Input layer "
                "a fixed feature size."
            )
        self.build_affine(int(input_dim))
        if self.use_bias:
            self.bias = self.add_weight(
                shape=(4 * self.units,),
                name="bias",
                initializer=self._gate_bias_initializer(),
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
        else:
            self.bias = None
        if self.use_peepholes:
            self.peepholes = tuple(
                self.add_weight(
                    shape=(self.units,),
                    name=f"{gate}_peephole",
                    initializer=self.peephole_initializer,
                )
                for gate in ("input", "forget", "output")
            )
        else:
            self.peepholes = None
        if self.projection_units is not None:
            self.projection_kernel = self.add_weight(
                shape=(self.units, self.projection_units),
                name="projection_kernel",
                initializer=self.projection_initializer,
                regularizer=self.projection_regularizer,
                constraint=self.projection_constraint,
            )
        else:
            self.projection_kernel = None
        self.built = True

    def _gate_bias_initializer(self):
        if not self.unit_forget_bias:
            return self.bias_initializer
        return _ForgetBiasOne(self.bias_initializer, self.units)

    # z's layout (see `lstm_gates`): 1 is gate-major; GLSTMCell's is
    # group-major, which its grouped GEMMs write in place.
    gate_groups = 1

    def bias_in_z_layout(self):
        """The bias, stored gate-major `(4n,)`, in z's layout."""
        return self.bias

    def add_bias(self, z):
        if self.bias is None:
            return z
        bias = self.bias_in_z_layout()
        if keras.backend.standardize_dtype(z.dtype) in ("bfloat16", "float16"):
            # Read (and cast) the variable outside the custom-gradient op.
            return _add_bias_with_float32_gradient(z, ops.cast(bias, z.dtype))
        return z + bias

    def build_affine(self, input_dim):
        raise NotImplementedError

    def input_term(self, x):
        raise NotImplementedError

    def recurrent_term(self, h):
        raise NotImplementedError

    def expand(self, s):
        """z from s = input_term(x) + recurrent_term(h): the identity here.

        An identity must return `s` itself: the fused layers test
        `expand(s) is s` and otherwise also save s for the backward pass
        (correct, but a second [T, B, 4n] array)."""
        return s

    def gate_preactivations(self, u, h):
        """z = expand(u + recurrent_term(h)), from u = input_term(x).

        Not a hook: the fused layers' JAX path calls `recurrent_term` and
        `expand` directly, so a subclass defines those."""
        return self.expand(u + self.recurrent_term(h))

    def project(self, m):
        """h = clip(m·P): the output of the cell from the gated output m."""
        if self.projection_kernel is None:
            return m
        h = ops.matmul(m, self.projection_kernel)
        if self.projection_clip is not None:
            h = ops.clip(h, -self.projection_clip, self.projection_clip)
        return h

    def gates(self, z, c_prev):
        """(m, c) from the gate pre-activations z; see `lstm_gates`.

        m comes back in z's dtype, since it feeds the projection GEMM. c keeps
        c_prev's dtype, so a caller may carry c in float32 under a bfloat16
        policy (the fused layers do: c sums over the whole sequence).
        """
        m, c = lstm_gates(
            z,
            c_prev,
            self.activation,
            self.recurrent_activation,
            self.cell_clip,
            self.peepholes,
            self.gate_groups,
        )
        return ops.cast(m, z.dtype), c

    def step(self, u, h_prev, c_prev):
        """One recurrence step from the precomputed input term `u`."""
        m, c = self.gates(self.gate_preactivations(u, h_prev), c_prev)
        return self.project(m), c

    def call(self, inputs, states, training=False):
        h_prev, c_prev = states[0], states[1]
        # DropoutRNNCell semantics: one mask per sequence, reused each step.
        if training and self.dropout > 0:
            inputs = inputs * self.get_dropout_mask(inputs)
        if training and self.recurrent_dropout > 0:
            h_prev = h_prev * self.get_recurrent_dropout_mask(h_prev)
        h, c = self.step(self.input_term(inputs), h_prev, c_prev)
        return h, [h, c]

    def get_initial_state(self, batch_size=None):
        return [
            ops.zeros((batch_size, size), dtype=self.compute_dtype)
            for size in self.state_size
        ]

    def get_config(self):
        ser = initializers.serialize
        config = {
            "units": self.units,
            "projection_units": self.projection_units,
            "activation": activations.serialize(self.activation),
            "recurrent_activation": activations.serialize(
                self.recurrent_activation
            ),
            "use_bias": self.use_bias,
            "kernel_initializer": ser(self.kernel_initializer),
            "recurrent_initializer": ser(self.recurrent_initializer),
            "projection_initializer": ser(self.projection_initializer),
            "bias_initializer": ser(self.bias_initializer),
            "peephole_initializer": ser(self.peephole_initializer),
            "unit_forget_bias": self.unit_forget_bias,
            "kernel_regularizer": regularizers.serialize(
                self.kernel_regularizer
            ),
            "recurrent_regularizer": regularizers.serialize(
                self.recurrent_regularizer
            ),
            "projection_regularizer": regularizers.serialize(
                self.projection_regularizer
            ),
            "bias_regularizer": regularizers.serialize(self.bias_regularizer),
            "kernel_constraint": constraints.serialize(self.kernel_constraint),
            "recurrent_constraint": constraints.serialize(
                self.recurrent_constraint
            ),
            "projection_constraint": constraints.serialize(
                self.projection_constraint
            ),
            "bias_constraint": constraints.serialize(self.bias_constraint),
            "dropout": self.dropout,
            "recurrent_dropout": self.recurrent_dropout,
            "cell_clip": self.cell_clip,
            "projection_clip": self.projection_clip,
            "use_peepholes": self.use_peepholes,
            "seed": self.seed,
        }
        return {**super().get_config(), **config}


COMMON_ARGS_DOC = """
    Common arguments (shared by LSTMPCell, FLSTMCell and GLSTMCell):
        units: Positive int, the cell-state size n.
        projection_units: Optional positive int p. When set, the output is
            projected, `h = m·P` with `P` of shape `(n, p)` and no bias
            (weight `projection_kernel`). When None, `h = m` and p = n.
        activation: Cell input/output activation. Default `"tanh"`.
        recurrent_activation: Gate activation. Default `"sigmoid"`.
        use_bias: Whether the gates have a bias `b` (weight `bias`, `(4n,)`).
        kernel_initializer: Initializer of the input weights.
        recurrent_initializer: Initializer of the recurrent weights.
        projection_initializer: Initializer of `projection_kernel`.
        bias_initializer: Initializer of `bias`.
        peephole_initializer: Initializer of the peephole weights.
        unit_forget_bias: If True (default), b_f starts at 1, as in
            keras.layers.LSTMCell (TF1 added `forget_bias=1` at run time
            instead; both are the same function at initialisation).
        kernel_regularizer, recurrent_regularizer, projection_regularizer,
        bias_regularizer: Optional regularizers of those weights.
        kernel_constraint, recurrent_constraint, projection_constraint,
        bias_constraint: Optional constraints of those weights.
        dropout: Fraction in [0, 1) of the inputs x to drop (one mask per
            sequence, as keras.layers.LSTMCell).
        recurrent_dropout: Fraction in [0, 1) of h_{t-1} to drop (one mask
            per sequence).
        cell_clip: Optional positive float; clips c_t to ±cell_clip.
        projection_clip: Optional positive float; clips h_t to
            ±projection_clip (needs `projection_units`).
        use_peepholes: If True, adds TF1-style diagonal peepholes
            (`input_peephole`, `forget_peephole`, `output_peephole`, `(n,)`):
            `i = σ(z_i + w_i ⊙ c_{t-1})`, `f = σ(z_f + w_f ⊙ c_{t-1})`,
            `o = σ(z_o + w_o ⊙ c_t)`.
        seed: Optional int seed of the dropout masks.

    States are `[h (p), c (n)]`, h first; the output is h.
    Gate order in every `4n` axis is i, f, c, o, as in keras.layers.LSTMCell.
"""
