"""The JAX fast path of the fused layers: a scan with a hand-written VJP.

Only `keras_flstm.layers` imports this, and only on the JAX backend.

Why a custom VJP: autodiff of a scan accumulates every weight gradient step
by step, T small GEMMs of `[B, ·]` rows each. Here the backward scan computes
only the activation gradients (dz_t, dh_{t-1}, dc_{t-1}) and stacks them; the
weight gradients then come from ONE vjp of the cell's maps over all T·B rows
at once (e.g. dW_h = H_prevᵀ·dZ, dP = Mᵀ·dH), which is how cuDNN does it.
This is exact because each step is row-wise and the weights are shared
across steps: Σ_t vjp_w(f, rows_t)[g_t] = vjp_w(f, ∪_t rows_t)[∪_t g_t].

The cell's own scan hooks (`scan_preactivations`, `scan_gates`,
`scan_project`; see `ProjectedLSTMCellBase`) are reused as pure functions of
explicit weights through `keras.StatelessScope`, so there is no second copy
of any cell's math. They work in the cell's scan layout, the one its GEMMs
emit (group-major for `GLSTMCell`), so no step transposes z.

The caller (`layers._FusedRNN.inner_loop`) hands c over in float32 even
under a bfloat16 policy, as on the generic path; it stays so through the
scan (see `ProjectedLSTMCellBase.gates`).
"""

import contextlib

import jax
import jax.numpy as jnp
from keras import StatelessScope
from keras.src.backend.common.variables import AutocastScope
from keras.src.backend.common.variables import get_autocast_scope


# Scan iterations unrolled when the layer does not ask for a full unroll:
# fewer loop trips (each has a fixed launch and sync cost on the GPU) at a
# modest cost in compile time.
PARTIAL_UNROLL = 4


def run(cell, sequences, initial_state, recurrent_mask, go_backwards, unroll):
    """Runs `cell` over `sequences` [B, T, d]; the inner loop of a fused layer.

    `unroll=True` unrolls the whole sequence; otherwise the scan unrolls
    `PARTIAL_UNROLL` steps per loop trip.

    Returns `(last_output, outputs [B, T, p], [h_T, c_T])` like
    `keras.src.backend.rnn` with `return_all_outputs=True`.
    """
    scan_unroll = True if unroll else PARTIAL_UNROLL
    variables = list(cell.weights)
    weights = tuple(v.value for v in variables)
    # The backward pass runs after the layer's call has returned, outside
    # its mixed-precision autocast scope: re-enter the same one.
    autocast = get_autocast_scope()
    autocast_dtype = autocast.dtype if autocast is not None else None

    def bound(fn):
        """`fn` with the cell's variables bound to explicit values `w`."""

        def pure(w, *args):
            # add_update maps the values as given (already in the compute
            # dtype), where state_mapping= would cast them back to the
            # variables' float32 and autocast them again at every use
            # inside the loop: two full weight copies per step.
            scope = StatelessScope()
            for variable, value in zip(variables, w):
                scope.add_update((variable, value))
            with contextlib.ExitStack() as stack:
                stack.enter_context(scope)
                if autocast_dtype is not None:
                    stack.enter_context(AutocastScope(autocast_dtype))
                return fn(*args)

        return pure

    recurrent = bound(cell.scan_preactivations)
    project = bound(cell.scan_project)
    gates = bound(cell.scan_gates)
    # u, z, c and m are in the cell's scan layout, their time axis at `axis`;
    # h and its cotangents are time-major.
    axis = cell.scan_time_axis
    steps = sequences.shape[1]

    def at(stacked, t):
        return jax.lax.dynamic_index_in_dim(stacked, t, axis, keepdims=False)

    def masked(h):
        return h if recurrent_mask is None else h * recurrent_mask

    def forward(w, u, h0, c0):
        def step(carry, t):
            h, c = carry
            z = recurrent(w, at(u, t), masked(h))
            m, c_new = gates(w, z, c)
            h_new = project(w, m)
            return (h_new, c_new), (h_new, (c, z, m))

        (h, c), (hs, (c_prevs, zs, ms)) = _scan(step, (h0, c0), steps, (0, axis), False, scan_unroll)
        return (hs, h, c), (c_prevs, zs, ms)

    @jax.custom_vjp
    def recurrence(w, u, h0, c0):
        return forward(w, u, h0, c0)[0]

    def recurrence_fwd(w, u, h0, c0):
        outputs, (c_prevs, zs, ms) = forward(w, u, h0, c0)
        hs = outputs[0]
        h_prevs = jnp.concatenate([h0[None], hs[:-1]], axis=0)
        return outputs, (w, u, masked(h_prevs), c_prevs, zs, ms)

    def recurrence_bwd(residuals, cotangents):
        w, u, h_ins, c_prevs, zs, ms = residuals
        d_hs, d_h_last, d_c_last = cotangents

        def step(carry, t):
            d_h_next, d_c = carry
            d_h = d_hs[t] + d_h_next
            d_m = jax.vjp(lambda m_: project(w, m_), at(ms, t))[1](d_h)[0]
            d_z, d_c_prev = jax.vjp(lambda z_, c_: gates(w, z_, c_), at(zs, t), at(c_prevs, t))[1](
                (d_m, d_c)
            )
            d_u, d_h_in = jax.vjp(lambda u_, h_: recurrent(w, u_, h_), at(u, t), h_ins[t])[1](d_z)
            return (masked(d_h_in), d_c_prev), (d_h, (d_u, d_z, d_m, d_c))

        (d_h0, d_c0), (d_h, (d_u, d_z, d_m, d_c)) = _scan(
            step, (d_h_last, d_c_last), steps, (0, axis), True, scan_unroll
        )

        # Every hook takes the stacked (time) axes as extra leading axes.
        def all_steps(w_):
            return (
                recurrent(w_, u, h_ins),
                gates(w_, zs, c_prevs),
                project(w_, ms),
            )

        d_w = jax.vjp(all_steps, w)[1]((d_z, (d_m, d_c), d_h))[0]
        return d_w, d_u, d_h0, d_c0

    recurrence.defvjp(recurrence_fwd, recurrence_bwd)

    # Time-major, so the scan slices the leading axis; transposing x (d wide)
    # is cheaper than transposing u (4n wide).
    x = jnp.swapaxes(sequences, 0, 1)
    if go_backwards:
        x = jnp.flip(x, axis=0)
    u = cell.scan_input_term(x)
    h0, c0 = initial_state[0], initial_state[1]
    hs, h, c = recurrence(weights, u, h0, cell.to_scan_state(c0))
    return h, jnp.swapaxes(hs, 0, 1), [h, cell.from_scan_state(c)]


def _scan(step, init, steps, axes, reverse, unroll):
    """`jax.lax.scan` of `step(carry, t)` over t < steps, stacking the outputs
    at `axes` (one per top-level output), not only at axis 0.

    The stacks are buffers updated in place, as scan's own outputs are, so a
    layout whose time axis is not the first costs no transpose.
    """
    out_shapes = jax.eval_shape(step, init, 0)[1]

    def empty(shape, axis):
        return jnp.zeros(shape.shape[:axis] + (steps,) + shape.shape[axis:], shape.dtype)

    stacks = tuple(jax.tree.map(lambda s, a=a: empty(s, a), out) for out, a in zip(out_shapes, axes))

    def body(carry, t):
        carry, stacks = carry
        carry, outs = step(carry, t)
        stacks = tuple(
            jax.tree.map(lambda stack, o, a=a: jax.lax.dynamic_update_index_in_dim(stack, o, t, a), st, out)
            for st, out, a in zip(stacks, outs, axes)
        )
        return (carry, stacks), None

    (carry, stacks), _ = jax.lax.scan(
        body, (init, stacks), jnp.arange(steps), reverse=reverse, unroll=unroll
    )
    return carry, stacks
