"""The LSTM gate math shared by every cell and fused layer in keras_flstm."""

from keras import ops


def lstm_gates(
    z,
    c_prev,
    activation,
    recurrent_activation,
    cell_clip=None,
    peepholes=None,
    groups=1,
):
    """Applies the LSTM non-linearities to gate pre-activations.

    With `z = [z_i, z_f, z_c, z_o]` split along the last axis (Keras gate
    order; with `groups=k`, z is `[z¹ … zᵏ]` and each `zʲ = [zʲ_i, zʲ_f,
    zʲ_c, zʲ_o]` covers the units of group j), and optional diagonal
    peephole weights `(w_i, w_f, w_o)`:

    ```
    i   = recurrent_activation(z_i + w_i ⊙ c_prev)
    f   = recurrent_activation(z_f + w_f ⊙ c_prev)
    c   = f ⊙ c_prev + i ⊙ activation(z_c)
    c   = clip(c, -cell_clip, cell_clip)        # only if cell_clip is set
    o   = recurrent_activation(z_o + w_o ⊙ c)
    m   = o ⊙ activation(c)
    ```

    This is TF1's `LSTMCell` order: the clipped cell state feeds the output
    peephole and the output, and is the state carried to the next step.

    Args:
        z: Gate pre-activations, shape `(..., 4 * units)`.
        c_prev: Previous cell state, shape `(..., units)`.
        activation: Cell-input and cell-output activation (usually tanh).
        recurrent_activation: Gate activation (usually sigmoid).
        cell_clip: Optional positive float; clips `c` to `±cell_clip`.
        peepholes: Optional tuple `(w_i, w_f, w_o)` of `(units,)` tensors.
        groups: Positive int k, z's layout: k contiguous parts, one per
            group of `units / k` consecutive units, each ordered i, f, c, o.
            1 (the default) is Keras's gate-major layout.

    Returns:
        `(m, c)`: the gated output before any projection, and the new cell
        state, both of shape `(..., units)` and of `c_prev`'s dtype.
    """
    z_i, z_f, z_c, z_o = _split_gates(z, groups)
    # c may be carried in a wider dtype than z (float32 under a bf16
    # policy): the c path runs in c's dtype, the gates in z's.
    state_dtype = c_prev.dtype
    if peepholes is not None:
        w_i, w_f, w_o = peepholes
        c_narrow = ops.cast(c_prev, z.dtype)
        z_i = z_i + w_i * c_narrow
        z_f = z_f + w_f * c_narrow
    i = ops.cast(recurrent_activation(z_i), state_dtype)
    f = ops.cast(recurrent_activation(z_f), state_dtype)
    c = f * c_prev + i * ops.cast(activation(z_c), state_dtype)
    if cell_clip is not None:
        c = ops.clip(c, -cell_clip, cell_clip)
    if peepholes is not None:
        z_o = z_o + w_o * ops.cast(c, z.dtype)
    o = ops.cast(recurrent_activation(z_o), state_dtype)
    return o * activation(c), c


def _split_gates(z, groups):
    """`(z_i, z_f, z_c, z_o)`, each `(..., units)`, from z laid out by groups."""
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(
            f"lstm_gates needs a positive integer `groups`, got "
            f"groups={groups!r}. Pass 1 for gate-major z."
        )
    size = z.shape[-1]
    if size is not None and size % (4 * groups):
        raise ValueError(
            f"lstm_gates(groups={groups}) needs z's last axis to hold 4 "
            f"gates of each of {groups} equal groups, but it has "
            f"{size} entries, not a multiple of {4 * groups}. Pass "
            "the groups count z was computed with (1 for gate-major z)."
        )
    lead = ops.shape(z)[:-1]
    per_group = ops.reshape(z, (*lead, groups, 4, -1))
    # split along the gate axis, not indexing: its gradient is one
    # concatenation, where indexing's is a sum of four padded arrays. Even
    # for groups=1, XLA (GPU) then writes a backward step's dz in one fusion
    # instead of four gate gradients and a copy into dz (1-3% on BIGLSTM,
    # benchmarks/results/glstm_group_major_z/).
    return tuple(
        ops.reshape(gate, (*lead, -1)) for gate in ops.split(per_group, 4, axis=-2)
    )
