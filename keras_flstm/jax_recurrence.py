"""The JAX fast path of the fused layers: a scan with a hand-written VJP.

Only `keras_flstm.layers` imports this, and only on the JAX backend.

Why a custom VJP: autodiff of a scan accumulates every weight gradient step
by step, T small GEMMs of `[B, ·]` rows each. Here the backward scan computes
only the activation gradients (dz_t, dh_{t-1}, dc_{t-1}) and stacks them; the
weight gradients then come from ONE vjp of the cell's maps over all T·B rows
at once (e.g. dW_h = H_prevᵀ·dZ, dP = Mᵀ·dH), which is how cuDNN does it.
This is exact because each step is row-wise and the weights are shared
across steps: Σ_t vjp_w(f, rows_t)[g_t] = vjp_w(f, ∪_t rows_t)[∪_t g_t].

The cell's own methods (`recurrent_term`, `expand`, `gates`, `project`)
are reused as pure functions of explicit weights through
`keras.StatelessScope`, so there is no second copy of any cell's math.

The backward step already computes ds_t, the gradient of the sum
s_t = u_t + recurrent_term(h_{t-1}) (it is also u's gradient), so the weight
pass takes recurrent_term's gradients from it: for the F-LSTM,
dW1_h = H_prevᵀ·dS, and dW2 = Sᵀ·dZ from the saved s. Differentiating the
whole map z = expand(u + recurrent_term(h)) instead would compute s and
dS = dZ·W2ᵀ a second time, a [T·B, p]×[p, r] and a [T·B, 4n]×[4n, r] GEMM
(together 19% on top of the F512 step's matmul FLOPs).

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


def _opaque_to_reduce_splitting(stack):
    """`stack`, exactly (rounded to its own precision), in an op that stops
    XLA from splitting a sum over it into one sum per scanned step.

    XLA rewrites reduce(concatenate(x_1..x_T)) into T reductions, one per
    step's slice. The bias gradient (a float32 row sum) of the stacked
    [T, B, 4n] dS is such a sum, and the stack is built anyway for the
    weight GEMMs; split, it is read twice, and the stack is a bare copy.
    Unsplit, one fusion writes the stack and sums it, as XLA already does
    under a bfloat16 policy, where the sum's cast to float32 stands in the
    rewrite's way.

    Exact for the IEEE-style float types the layers compute in (float16,
    bfloat16, float32, float64), not for the float8 types. XLA's GPU
    compiler removes no-op reduce_precision ops late in its pipeline;
    the sum stays whole there all the same (one fused concatenate-and-sum
    per layer in the H200 profiles, `benchmarks/results/bias_gradient_unsplit/`).
    """
    info = jnp.finfo(stack.dtype)
    return jax.lax.reduce_precision(stack, exponent_bits=info.nexp, mantissa_bits=info.nmant)


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

    recurrent_term = bound(cell.recurrent_term)
    expand = bound(cell.expand)
    project = bound(cell.project)
    gates = bound(cell.gates)

    def masked(h):
        return h if recurrent_mask is None else h * recurrent_mask

    def forward(w, u, h0, c0):
        def step(carry, u_t):
            h, c = carry
            s = u_t + recurrent_term(w, masked(h))  # gate_preactivations, in two parts
            z = expand(w, s)
            m, c_new = gates(w, z, c)
            h_new = project(w, m)
            # s is z itself unless the map is factorized: saved once.
            return (h_new, c_new), (h_new, c, z, m, None if z is s else s)

        (h, c), (hs, c_prevs, zs, ms, ss) = jax.lax.scan(
            step, (h0, c0), u, unroll=scan_unroll
        )
        return (hs, h, c), (c_prevs, zs, ms, ss)

    @jax.custom_vjp
    def recurrence(w, u, h0, c0):
        return forward(w, u, h0, c0)[0]

    def recurrence_fwd(w, u, h0, c0):
        outputs, (c_prevs, zs, ms, ss) = forward(w, u, h0, c0)
        hs = outputs[0]
        h_prevs = jnp.concatenate([h0[None], hs[:-1]], axis=0)
        return outputs, (w, masked(h_prevs), c_prevs, zs, ms, ss)

    def recurrence_bwd(residuals, cotangents):
        w, h_ins, c_prevs, zs, ms, ss = residuals
        d_hs, d_h_last, d_c_last = cotangents

        def step(carry, xs):
            d_h_next, d_c = carry
            d_h_out, h_in, c_prev, z, m, s = xs
            d_h = d_h_out + d_h_next
            d_m = jax.vjp(lambda m_: project(w, m_), m)[1](d_h)[0]
            d_z, d_c_prev = jax.vjp(lambda z_, c_: gates(w, z_, c_), z, c_prev)[1](
                (d_m, d_c)
            )
            if s is None:  # z = s: one gradient, stacked once
                d_s, d_z = d_z, None
            else:
                d_s = jax.vjp(lambda s_: expand(w, s_), s)[1](d_z)[0]
            d_h_in = jax.vjp(lambda h_: recurrent_term(w, h_), h_in)[1](d_s)[0]
            return (masked(d_h_in), d_c_prev), (d_s, d_z, d_m, d_c, d_h)

        (d_h0, d_c0), (d_s, d_z, d_m, d_c, d_h) = jax.lax.scan(
            step,
            (d_h_last, d_c_last),
            (d_hs, h_ins, c_prevs, zs, ms, ss),
            reverse=True,
            unroll=scan_unroll,
        )

        def rows(a):
            return a.reshape((-1,) + a.shape[2:])

        # lax.scan concatenates its stacked outputs when it unrolls them
        # all, or a remainder block, or its one trip; a loop of several
        # whole trips writes them in place, with nothing to split.
        steps = d_s.shape[0]
        if unroll or steps % PARTIAL_UNROLL or steps < 2 * PARTIAL_UNROLL:
            d_s = _opaque_to_reduce_splitting(d_s)
            if ss is not None:
                d_z = _opaque_to_reduce_splitting(d_z)
        if ss is None:
            ss, d_z = zs, d_s

        def all_steps(w_):
            return (
                expand(w_, rows(ss)),
                recurrent_term(w_, rows(h_ins)),
                gates(w_, rows(zs), rows(c_prevs)),
                project(w_, rows(ms)),
            )

        d_w = jax.vjp(all_steps, w)[1](
            (rows(d_z), rows(d_s), (rows(d_m), rows(d_c)), rows(d_h))
        )[0]
        # u enters only through s = u + recurrent_term(h): du = ds.
        return d_w, d_s, d_h0, d_c0

    recurrence.defvjp(recurrence_fwd, recurrence_bwd)

    # Time-major, so the scan slices the leading axis; transposing x (d wide)
    # is cheaper than transposing u (4n wide).
    x = jnp.swapaxes(sequences, 0, 1)
    if go_backwards:
        x = jnp.flip(x, axis=0)
    u = cell.input_term(x)
    h0, c0 = initial_state[0], initial_state[1]
    hs, h, c = recurrence(weights, u, h0, c0)
    return h, jnp.swapaxes(hs, 0, 1), [h, c]
