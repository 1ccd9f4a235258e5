"""Fused sequence layers: LSTMP, FLSTM and GLSTM.

Each wraps its cell the way `keras.layers.LSTM` wraps `LSTMCell`, with the
same weights (names, shapes, order), so weights move freely between the
fused layer and `keras.layers.RNN(cell)`. The difference is speed: the input
contribution `u_t = input_term(x_t)` of all time steps is computed in one
GEMM over `[T·B, d]` before the recurrence, and only the recurrent part
`z_t = gate_preactivations(u_t, h_{t-1})` runs per step.

On the JAX backend, unmasked sequences take `keras_flstm.jax_recurrence`, a
scan with a hand-written VJP that computes the weight gradients as one large
GEMM after the backward scan. Everything else takes the generic path below,
built on `keras.ops` (and Keras's own backend `rnn` loop, which handles masks).
"""

import contextlib
import inspect

from keras import ops
from keras.layers import RNN
from keras.saving import register_keras_serializable
from keras.src import backend as keras_backend

from keras_flstm.cells import FLSTMCell
from keras_flstm.cells import GLSTMCell
from keras_flstm.cells import LSTMPCell

# Arguments that belong to the RNN layer; all others go to the cell.
_LAYER_ARGS = (
    "return_sequences",
    "return_state",
    "go_backwards",
    "stateful",
    "unroll",
    "zero_output_for_mask",
    "name",
    "dtype",
    "trainable",
    "activity_regularizer",
    "autocast",
    "input_shape",
)

_LAYER_DOC = """
    Layer arguments, as `keras.layers.RNN`:
        return_sequences: Return the whole output sequence (default: the
            last output only).
        return_state: Also return the final states `h` and `c`.
        go_backwards: Process the sequence backwards and return the outputs
            in processing order.
        stateful: Carry the final states of batch i to batch i of the next
            call (fixed batch size).
        unroll: Unroll the recurrence (static, short sequences only).
        zero_output_for_mask: Output zeros, not the last output, at masked
            steps.
        activity_regularizer: Optional regularizer of the layer's output.
        name, dtype, trainable, autocast, input_shape: As for
            any Keras layer; the cell shares the layer's dtype policy.

    Call arguments: `sequences` `(batch, time, features)`, optional `mask`
    `(batch, time)`, optional `initial_state` `[h, c]`, and `training`.
"""


def _state_dtype(c):
    return "float64" if keras_backend.standardize_dtype(c.dtype) == "float64" else "float32"


class _FusedRNN(RNN):
    """An RNN over a keras_flstm cell whose input GEMM is hoisted out of the loop."""

    cell_class = None

    def __init__(self, *cell_args, **kwargs):
        layer_kwargs = {k: kwargs.pop(k) for k in _LAYER_ARGS if k in kwargs}
        self._check_cell_kwargs(kwargs)
        cell = self.cell_class(
            *cell_args,
            dtype=layer_kwargs.get("dtype"),
            trainable=layer_kwargs.get("trainable", True),
            name=f"{self.cell_class.__name__.lower().replace('cell', '')}_cell",
            **kwargs,
        )
        super().__init__(cell, **layer_kwargs)

    @classmethod
    def _check_cell_kwargs(cls, kwargs):
        """Names this layer, not its cell, when an argument is unknown."""
        cell_args = set()
        for klass in cls.cell_class.__mro__:
            if "__init__" in vars(klass) and klass.__module__.startswith("keras_flstm"):
                cell_args.update(inspect.signature(klass.__init__).parameters)
        unknown = sorted(set(kwargs) - cell_args)
        if unknown:
            raise ValueError(
                f"Unrecognized keyword arguments passed to {cls.__name__}: "
                f"{unknown}. It takes the arguments of {cls.cell_class.__name__} "
                f"and the layer arguments {', '.join(_LAYER_ARGS)}."
            )

    def inner_loop(self, sequences, initial_state, mask, training=False):
        # keras.layers.RNN calls its cell through `__call__`, which casts the
        # inputs to the compute dtype and, under a mixed policy, reads the
        # weights in it. This layer uses the cell's weights directly and
        # relies on its own `__call__` for both; `Layer.stateless_call` runs
        # `call` without it, so do the same here (no-ops otherwise).
        dtype = self.cell.compute_dtype
        sequences = ops.cast(sequences, dtype)
        initial_state = [ops.cast(initial_state[0], dtype), *initial_state[1:]]
        with self._cell_autocast():
            return self._fused_loop(sequences, initial_state, mask, training)

    def _cell_autocast(self):
        """The autocast scope the cell's own `__call__` would open, if none is."""
        cell = self.cell
        if (
            keras_backend.get_autocast_scope() is not None
            or not cell.autocast
            or cell.compute_dtype == cell.variable_dtype
        ):
            return contextlib.nullcontext()
        return keras_backend.AutocastScope(cell.compute_dtype)

    def _fused_loop(self, sequences, initial_state, mask, training):
        cell = self.cell
        if training and cell.dropout > 0:
            # One input mask per sequence, as the cell uses step by step.
            sequences = sequences * ops.expand_dims(cell.get_dropout_mask(sequences[:, 0]), 1)
        recurrent_mask = None
        if training and cell.recurrent_dropout > 0:
            recurrent_mask = cell.get_recurrent_dropout_mask(initial_state[0])
        # c sums over the whole sequence: keep it at least float32 (bf16
        # policies) on every path; the RNN layer casts the final state back.
        initial_state = [initial_state[0], ops.cast(initial_state[1], _state_dtype(initial_state[1]))]

        if mask is None and keras_backend.backend() == "jax":
            from keras_flstm import jax_recurrence

            return jax_recurrence.run(
                cell,
                sequences,
                initial_state,
                recurrent_mask,
                go_backwards=self.go_backwards,
                unroll=self.unroll,
            )

        inputs = cell.input_term(sequences)

        def step(u_t, states):
            h_prev, c_prev = states[0], states[1]
            if recurrent_mask is not None:
                h_prev = h_prev * recurrent_mask
            h, c = cell.step(u_t, h_prev, c_prev)
            return h, [h, c]

        return keras_backend.rnn(
            step,
            inputs,
            initial_state,
            go_backwards=self.go_backwards,
            mask=mask,
            unroll=self.unroll,
            input_length=sequences.shape[1],
            zero_output_for_mask=self.zero_output_for_mask,
            return_all_outputs=self.return_sequences,
        )

    def get_config(self):
        config = super().get_config()
        cell_config = config.pop("cell")["config"]
        for key in ("name", "dtype", "trainable"):
            cell_config.pop(key, None)
        return {**cell_config, **config}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@register_keras_serializable(package="keras_flstm")
class LSTMP(_FusedRNN):
    __doc__ = (
        """Fused LSTM-with-projection layer over `LSTMPCell`.

    `LSTMP(units, projection_units=None, **cell_and_layer_args)` computes
    `keras.layers.RNN(LSTMPCell(units, projection_units, ...))` with the
    same weights, but `x·W_x + b` for all steps in one GEMM first. See
    `LSTMPCell` for the equations and the cell arguments.
"""
        + _LAYER_DOC
    )

    cell_class = LSTMPCell


@register_keras_serializable(package="keras_flstm")
class FLSTM(_FusedRNN):
    __doc__ = (
        """Fused factorized-LSTM layer over `FLSTMCell`.

    `FLSTM(units, factor_size, projection_units=None, ...)` computes
    `keras.layers.RNN(FLSTMCell(...))` with the same weights, but `x·W1_x`
    for all steps in one GEMM first; each step then computes
    `z = (u_t + h_{t-1}·W1_h)·W2 + b`. See `FLSTMCell` for the equations
    and the cell arguments.
"""
        + _LAYER_DOC
    )

    cell_class = FLSTMCell


@register_keras_serializable(package="keras_flstm")
class GLSTM(_FusedRNN):
    __doc__ = (
        """Fused group-LSTM layer over `GLSTMCell`.

    `GLSTM(units, groups, projection_units=None, ...)` computes
    `keras.layers.RNN(GLSTMCell(...))` with the same weights, but the
    grouped input maps `xʲ·W_xʲ + b` for all steps in one batched einsum
    first. See `GLSTMCell` for the equations and the cell arguments.
"""
        + _LAYER_DOC
    )

    cell_class = GLSTMCell
