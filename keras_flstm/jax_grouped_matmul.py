"""The G-LSTM's grouped map as GPU kernels that read and write gate-major z.

Only `keras_flstm.cells.glstm` imports this, and only on the JAX backend.

With k groups of A = p/k inputs and n/k cell units each, the map is

    z[:, g·n + j·n/k + u] = Σ_a v[:, j·A + a] · W[j, a, g·n/k + u]

for gate g ∈ {i, f, c, o}, group j and unit u < n/k: gate-major z, the
layout the gate math reads. XLA runs it as a batched GEMM whose batch axis
(the group) must be the outermost of both operands and of the result, so it
transposes v into `[k, rows, A]` and the result from `[k, rows, 4, n/k]`
into `[rows, 4, k, n/k]`, and in the backward pass dz the other way: a full
read and write of z at every step of the recurrence (2.2 of G4's 11.1 ms
per training step at LM1B size on an H200). The Pallas (Triton) kernels
here index the groups' blocks in place instead:

    forward:  tile (rows r, columns of gate g, group j) = v[r, j] · W[j][:, g]
    backward: dv[r, j] = Σ_g dz[r, g·n + j·n/k : …] · W[j][:, g]ᵀ

and the weight gradient dW[j] = v[:, j]ᵀ · dz[:, group j] stays one XLA
einsum (it runs once per layer over all time steps, not per step).

The kernels accumulate in float32 and run for 16-bit operands only: with
float32 operands Triton's dot would round to TF32, where XLA's einsum
honours the matmul precision setting.
"""

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

# Where the kernels run compiled; tests add "cpu" to run them interpreted.
KERNEL_PLATFORMS = ("gpu",)
KERNEL_DTYPES = ("bfloat16", "float16")

# Largest tile sides (powers of two; Triton's dot needs every side >= 16).
# Chosen by benchmarks/grouped_matmul.py on an H200 (docs/benchmarks.md).
FORWARD_TILE = {"rows": 64, "cols": 128, "depth": 64, "num_warps": 4, "num_stages": 3}
BACKWARD_TILE = {"rows": 64, "cols": 64, "depth": 64, "num_warps": 4, "num_stages": 3}


def _tile(size, largest):
    """The largest power of two <= `largest` that divides `size`, or 0 below 16."""
    side = largest
    while side >= 16 and size % side:
        side //= 2
    return side if side >= 16 else 0


def supported(rows, kernel_shape, dtype, kernel_dtype):
    """Whether the kernels can run `rows` rows of `dtype` through a `(k, A, 4n/k)` kernel here."""
    groups, depth, cols = kernel_shape
    if jax.default_backend() not in KERNEL_PLATFORMS or rows is None:
        return False
    if str(dtype) != str(kernel_dtype) or str(dtype) not in KERNEL_DTYPES:
        return False
    unit = cols // 4
    # Triton's blocks have power-of-two sides: the kernels load a group's
    # A inputs and a gate's n/k units as blocks.
    if groups < 2 or cols % 4 or depth & (depth - 1) or unit & (unit - 1):
        return False
    return all(_tile(size, 16) for size in (rows, depth, unit))


def gate_major(v, kernel):
    """`v` `(..., k·A)` through the grouped `kernel` `(k, A, 4n/k)`: `(..., 4n)`, gate-major.

    Call only where :func:`supported` says so for `v`'s rows.
    """
    groups, depth, cols = kernel.shape
    lead = v.shape[:-1]
    z = _grouped(v.reshape(-1, groups * depth), kernel)
    return z.reshape(*lead, groups * cols)


@jax.custom_vjp
def _grouped(v, kernel):
    return _forward(v, kernel)


def _grouped_fwd(v, kernel):
    return _forward(v, kernel), (v, kernel)


def _grouped_bwd(residuals, dz):
    v, kernel = residuals
    groups, depth, cols = kernel.shape
    rows, unit = v.shape[0], cols // 4
    dv = _backward(dz.astype(v.dtype), kernel)
    dkernel = jnp.einsum(
        "rja,rgju->jagu",
        v.reshape(rows, groups, depth),
        dz.reshape(rows, 4, groups, unit),
        preferred_element_type=jnp.float32,
    )
    return dv, dkernel.reshape(kernel.shape).astype(kernel.dtype)


_grouped.defvjp(_grouped_fwd, _grouped_bwd)


def _call(kernel_fn, tile, **kwargs):
    return pl.pallas_call(
        kernel_fn,
        interpret=jax.default_backend() != "gpu",
        compiler_params=pl_triton.CompilerParams(
            num_warps=tile["num_warps"], num_stages=tile["num_stages"]
        ),
        **kwargs,
    )


def _forward(v, kernel):
    groups, depth, cols = kernel.shape
    rows, unit = v.shape[0], cols // 4
    block_rows = _tile(rows, FORWARD_TILE["rows"])
    block_cols = _tile(unit, FORWARD_TILE["cols"])
    block_depth = _tile(depth, FORWARD_TILE["depth"])
    # Output column block c covers gate g, group j, units [u0, u0 + block).
    per_unit = unit // block_cols  # column blocks per (gate, group)
    per_gate = groups * per_unit

    def group_of(c):
        return (c % per_gate) // per_unit

    def kernel_col_block(c):  # gate g's units u0.. inside group j's 4n/k columns
        return (c // per_gate) * per_unit + c % per_unit

    def body(v_ref, w_ref, z_ref):
        def accumulate(s, acc):
            part = pl.ds(s * block_depth, block_depth)
            return acc + jnp.dot(v_ref[:, part], w_ref[part, :], preferred_element_type=jnp.float32)

        acc = jax.lax.fori_loop(
            0, depth // block_depth, accumulate,
            jnp.zeros((block_rows, block_cols), jnp.float32),
        )
        z_ref[...] = acc.astype(z_ref.dtype)

    return _call(
        body,
        FORWARD_TILE,
        out_shape=jax.ShapeDtypeStruct((rows, groups * cols), v.dtype),
        grid=(rows // block_rows, 4 * per_gate),
        in_specs=[
            pl.BlockSpec((block_rows, depth), lambda r, c: (r, group_of(c))),
            pl.BlockSpec((pl.squeezed, depth, block_cols),
                         lambda r, c: (group_of(c), 0, kernel_col_block(c))),
        ],
        out_specs=pl.BlockSpec((block_rows, block_cols), lambda r, c: (r, c)),
        name="glstm_gate_major_forward",
    )(v, kernel)


def _backward(dz, kernel):
    groups, depth, cols = kernel.shape
    rows, unit = dz.shape[0], cols // 4
    block_rows = _tile(rows, BACKWARD_TILE["rows"])
    block_cols = _tile(depth, BACKWARD_TILE["cols"])
    block_depth = _tile(unit, BACKWARD_TILE["depth"])
    per_group = depth // block_cols  # dv column blocks per group

    def body(dz_i, dz_f, dz_c, dz_o, w_ref, dv_ref):
        acc = jnp.zeros((block_rows, block_cols), jnp.float32)
        for gate, dz_ref in enumerate((dz_i, dz_f, dz_c, dz_o)):
            def accumulate(s, acc, gate=gate, dz_ref=dz_ref):
                start = s * block_depth
                w = w_ref[:, pl.ds(gate * unit + start, block_depth)]
                return acc + jnp.dot(dz_ref[:, pl.ds(start, block_depth)], w.T, preferred_element_type=jnp.float32)

            acc = jax.lax.fori_loop(0, unit // block_depth, accumulate, acc)
        dv_ref[...] = acc.astype(dv_ref.dtype)

    def gate_spec(gate):
        # Gate g of group j is column block g·k + j of width n/k.
        return pl.BlockSpec((block_rows, unit), lambda r, c: (r, gate * groups + c // per_group))

    return _call(
        body,
        BACKWARD_TILE,
        out_shape=jax.ShapeDtypeStruct((rows, groups * depth), dz.dtype),
        grid=(rows // block_rows, groups * per_group),
        in_specs=[
            *[gate_spec(gate) for gate in range(4)],
            pl.BlockSpec((pl.squeezed, block_cols, cols),
                         lambda r, c: (c // per_group, c % per_group, 0)),
        ],
        out_specs=pl.BlockSpec((block_rows, block_cols), lambda r, c: (r, c)),
        name="glstm_gate_major_backward",
    )(dz, dz, dz, dz, kernel)
