"""The G-LSTM's gate-major Pallas kernels (interpreted on CPU) against float64 numpy.

The kernels compile only for a GPU; `interpret` runs the same kernel bodies,
block indexing included, as JAX code. Float32 is admitted here so that the
comparison is tight (on GPU they run for 16-bit operands only).
"""

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from keras_flstm import GLSTM
from keras_flstm import GLSTMCell
from keras_flstm import jax_grouped_matmul as gm
from tests.cells import reference as ref


@pytest.fixture
def kernels_on_cpu(monkeypatch):
    monkeypatch.setattr(gm, "KERNEL_PLATFORMS", ("gpu", "cpu"))
    monkeypatch.setattr(gm, "KERNEL_DTYPES", ("bfloat16", "float16", "float32"))


def _dense_block_gradient(dense_grad, groups, depth, unit):
    """The (k, A, 4n/k) kernel gradient inside a block-diagonal dense one."""
    n = unit * groups
    return np.stack([
        np.concatenate([dense_grad[j * depth:(j + 1) * depth, g * n + j * unit:g * n + (j + 1) * unit]
                        for g in range(4)], axis=1)
        for j in range(groups)
    ])


@pytest.mark.parametrize(
    "groups,rows,depth,unit",
    # rows 48 and depth 32 take tiles smaller than the defaults; unit 256
    # spans several column tiles per gate and group.
    [(2, 32, 16, 32), (4, 48, 32, 16), (8, 16, 16, 64), (2, 64, 128, 256)],
)
def test_kernels_match_float64_equations(kernels_on_cpu, groups, rows, depth, unit):
    rng = np.random.default_rng(groups)
    v = rng.normal(0, 1, (rows, groups * depth))
    kernel = rng.normal(0, 0.5, (groups, depth, 4 * unit))
    dz = rng.normal(0, 1, (rows, 4 * groups * unit))
    assert gm.supported(rows, kernel.shape, "float32", "float32")
    dense = ref.glstm_as_dense(kernel)

    z, vjp = jax.vjp(gm.gate_major, jnp.asarray(v, jnp.float32), jnp.asarray(kernel, jnp.float32))
    dv, dkernel = vjp(jnp.asarray(dz, jnp.float32))

    np.testing.assert_allclose(np.asarray(z), v @ dense, atol=2e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(dv), dz @ dense.T, atol=2e-4, rtol=0)
    want = _dense_block_gradient(v.T @ dz, groups, depth, unit)
    np.testing.assert_allclose(np.asarray(dkernel), want, atol=5e-4, rtol=0)


def test_leading_axes_are_kept(kernels_on_cpu):
    v = jnp.ones((4, 8, 32), jnp.float32)
    kernel = jnp.ones((2, 16, 64), jnp.float32)
    z = gm.gate_major(v, kernel)
    assert z.shape == (4, 8, 128)
    np.testing.assert_array_equal(np.asarray(z), 16.0)


@pytest.mark.parametrize(
    "rows,shape,dtypes,why",
    [
        (32, (2, 16, 64), ("bfloat16", "float32"), "operands of different dtypes"),
        (32, (1, 16, 64), ("bfloat16", "bfloat16"), "one group: a plain GEMM"),
        (32, (2, 24, 64), ("bfloat16", "bfloat16"), "A not a power of two"),
        (32, (2, 16, 96), ("bfloat16", "bfloat16"), "n/k not a power of two"),
        (40, (2, 16, 64), ("bfloat16", "bfloat16"), "rows not a multiple of 16"),
        (None, (2, 16, 64), ("bfloat16", "bfloat16"), "rows unknown"),
        (32, (2, 8, 64), ("bfloat16", "bfloat16"), "A below Triton's 16"),
    ],
)
def test_supported_declines(monkeypatch, rows, shape, dtypes, why):
    monkeypatch.setattr(gm, "KERNEL_PLATFORMS", ("gpu", "cpu"))
    assert gm.supported(32, (2, 16, 64), "bfloat16", "bfloat16")
    assert not gm.supported(rows, shape, *dtypes), why


def test_only_16_bit_operands_and_gpus_by_default():
    assert not gm.supported(32, (2, 16, 64), "float32", "float32")
    on_gpu = jax.default_backend() == "gpu"
    assert gm.supported(32, (2, 16, 64), "bfloat16", "bfloat16") == on_gpu


def _model(layer, seed):
    inputs = keras.Input((4, 32))
    model = keras.Model(inputs, layer(inputs))
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.3, w.shape) for w in model.get_weights()])
    return model


@pytest.mark.parametrize("fused", [True, False], ids=["GLSTM", "RNN(GLSTMCell)"])
def test_glstm_runs_the_kernels_on_jax_only(kernels_on_cpu, monkeypatch, fused):
    """Outputs and weight gradients equal those of the einsum path; on the
    TensorFlow backend the kernels are never called."""
    calls = []
    original = gm.gate_major
    monkeypatch.setattr(gm, "gate_major", lambda *a: calls.append(1) or original(*a))
    x = np.random.default_rng(0).normal(0, 1, (16, 4, 32)).astype("float32")

    def layer():
        if fused:
            return GLSTM(32, groups=2, projection_units=32, return_sequences=True)
        return keras.layers.RNN(GLSTMCell(32, groups=2, projection_units=32), return_sequences=True)

    def outputs_and_grads(model):
        from tests.cells.autodiff import loss_and_grad_fns

        probe = np.random.default_rng(1).normal(0, 1, (16, 4, 32))
        loss, grad = loss_and_grad_fns(model, lambda y: keras.ops.sum(y * probe), x)
        weights = [np.asarray(v) for v in model.trainable_variables]
        return np.asarray(model(x)), loss(weights), grad(weights)

    with_kernels = outputs_and_grads(_model(layer(), seed=2))
    used = len(calls)
    monkeypatch.setattr(gm, "KERNEL_PLATFORMS", ())
    without = outputs_and_grads(_model(layer(), seed=2))
    assert len(calls) == used
    if keras.backend.backend() != "jax":
        assert used == 0
        return
    assert used > 0
    np.testing.assert_allclose(with_kernels[0], without[0], atol=1e-5, rtol=0)
    assert abs(with_kernels[1] - without[1]) < 1e-3
    for a, b in zip(with_kernels[2], without[2]):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
