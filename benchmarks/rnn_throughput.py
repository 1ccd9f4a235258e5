"""Training throughput (forward + backward) of the fused layers, plain RNN(cell) and cuDNN LSTMP.

GPU sweep (the paper's RNN part: 2 layers, input 1024, n = 8192, p = 1024,
B = 256, T = 20), on the Keras JAX backend:

    KERAS_BACKEND=jax python benchmarks/rnn_throughput.py --out benchmarks/results/rnn_throughput_h200.json

For every cell (LSTMP, F512, G2, G4, G8), implementation (fused layer,
plain `keras.layers.RNN(cell)`) and dtype (fp32 with TF32 off, TF32,
bf16), it times the median of `--steps` training steps after warm-up. When
torch with CUDA is importable, `torch.nn.LSTM(proj_size=...)` on cuDNN runs
in the same process as the peer, and every row gets its ratio against it.

CPU mode (TensorFlow backend, XLA): the LSTMP layer without projection
against keras.layers.LSTM at the same shape:

    KERAS_BACKEND=tensorflow python benchmarks/rnn_throughput.py --cpu --out benchmarks/results/rnn_throughput_cpu.json

The JSON holds the command, machine, backend, shapes and one row per
measurement: {cell, impl, dtype, tokens_per_s, ratio_vs_cudnn_lstmp}.
It is rewritten after every row, so a cut-off run keeps what it measured.
"""

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from keras_flstm import FLSTM, GLSTM, LSTMP, FLSTMCell, GLSTMCell, LSTMPCell  # noqa: E402
from machine_info import command_line  # noqa: E402

CELLS = {
    "LSTMP": (LSTMP, LSTMPCell, {}),
    "F512": (FLSTM, FLSTMCell, {"factor_size": 512}),
    "G2": (GLSTM, GLSTMCell, {"groups": 2}),
    "G4": (GLSTM, GLSTMCell, {"groups": 4}),
    "G8": (GLSTM, GLSTMCell, {"groups": 8}),
}
DTYPES = ("fp32", "tf32", "bf16")


def build_model(cell_name, impl, layers, units, proj, dim, policy):
    layer_cls, cell_cls, extra = CELLS[cell_name]
    keras.config.set_dtype_policy(policy)
    try:
        inputs = keras.Input((None, dim))
        h = inputs
        for _ in range(layers):
            if impl in ("fused", "fused_unrolled"):
                layer = layer_cls(units, projection_units=proj, return_sequences=True, unroll=impl == "fused_unrolled", **extra)
            elif impl == "rnn_cell":
                layer = keras.layers.RNN(cell_cls(units, projection_units=proj, **extra), return_sequences=True)
            elif impl == "keras_lstm":
                layer = keras.layers.LSTM(units, return_sequences=True)
            else:
                raise ValueError(f"unknown impl {impl!r}")
            h = layer(h)
        return keras.Model(inputs, h)
    finally:
        keras.config.set_dtype_policy("float32")


def make_train_step(model, x, probe):
    """A compiled forward+backward step of sum(outputs · probe); returns a zero-arg callable."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        frozen = [v.value for v in model.non_trainable_variables]

        def loss(weights, x):
            y, _ = model.stateless_call(weights, frozen, x)
            return keras.ops.sum(keras.ops.cast(y, "float32") * probe)

        grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
        x = jax.device_put(x)  # the peer's inputs live on the device too
        return lambda: jax.block_until_ready(grad(trainable, x))
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(jit_compile=True)
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = model(x, training=True)
                loss = tf.reduce_sum(tf.cast(y, "float32") * probe)
            return tape.gradient(loss, model.trainable_variables + [x])

        x = tf.constant(x)
        return lambda: [g.numpy() for g in step(x)][:1]
    if backend == "torch":
        import torch

        xt = torch.tensor(x, requires_grad=True)
        pt = torch.tensor(probe)

        def step():
            model.zero_grad()
            (model(xt).float() * pt).sum().backward()
            if torch.cuda.is_available():
                torch.cuda.synchronize()

        return step
    raise ValueError(f"unsupported backend {backend!r}")


def time_steps(step, warmup, steps):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextlib.contextmanager
def matmul_precision(dtype):
    """fp32 means TF32 off; tf32 allows TF32 tensor cores; bf16 leaves defaults."""
    if keras.backend.backend() != "jax" or dtype == "bf16":
        yield
        return
    import jax

    with jax.default_matmul_precision("highest" if dtype == "fp32" else "tensorfloat32"):
        yield


def torch_cudnn_lstmp(args, dtype):
    """tokens/s of torch.nn.LSTM(proj_size) on cuDNN, or None without torch+CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    torch.backends.cudnn.allow_tf32 = dtype == "tf32"
    tdtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    lstm = torch.nn.LSTM(args.dim, args.units, num_layers=args.layers, proj_size=args.proj)
    lstm = lstm.to("cuda", tdtype)
    lstm.flatten_parameters()
    x = torch.randn(args.time, args.batch, args.dim, device="cuda", dtype=tdtype, requires_grad=True)
    probe = torch.randn(args.time, args.batch, args.proj, device="cuda", dtype=tdtype)

    def step():
        lstm.zero_grad(set_to_none=True)
        out, _ = lstm(x)
        (out * probe).float().sum().backward()
        torch.cuda.synchronize()

    seconds = time_steps(step, args.warmup, args.steps)
    del lstm, x, probe
    torch.cuda.empty_cache()
    return args.batch * args.time / seconds


def machine_name():
    if keras.backend.backend() == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform == "gpu":
            return device.device_kind
    return f"{platform.processor() or platform.machine()} CPU ({os.cpu_count()} cores)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="CPU mode: LSTMP (p = n) vs keras.layers.LSTM")
    parser.add_argument("--cells", default=",".join(CELLS), help="comma-separated subset of " + ",".join(CELLS))
    parser.add_argument("--impls", default="fused,rnn_cell")
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--units", type=int, default=8192)
    parser.add_argument("--proj", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--time", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default=None, help="JSON path")
    args = parser.parse_args()
    if args.steps < 10:
        parser.error(f"--steps={args.steps}: report a median of at least 10 steps")
    if args.cpu:
        # keras_lstm last: it is the peer every row is divided by.
        args.cells, args.impls, args.dtypes = "LSTMP", "fused,rnn_cell,keras_lstm", "fp32"
        args.proj = None
    cells = args.cells.split(",")
    for name in cells:
        if name not in CELLS:
            parser.error(f"unknown cell {name!r}; choose from {', '.join(CELLS)}")

    result = {
        "command": command_line(keras.backend.backend()),
        "machine": machine_name(),
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "shapes": {k: getattr(args, k) for k in ("layers", "dim", "units", "proj", "batch", "time")},
        "timing": f"median of {args.steps} steps after {args.warmup} warm-up steps; forward+backward",
        "rows": [],
    }

    def save():
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)

    rng = np.random.default_rng(0)
    print(f"{'cell':6s} {'impl':11s} {'dtype':5s} {'tokens/s':>12s} {'vs cuDNN':>9s}", flush=True)
    for dtype in args.dtypes.split(","):
        peer = None if args.cpu else torch_cudnn_lstmp(args, dtype)
        rows = []
        if peer is not None:
            rows.append({"cell": "LSTMP", "impl": "torch_cudnn", "dtype": dtype, "tokens_per_s": peer})
        policy = "mixed_bfloat16" if dtype == "bf16" else "float32"
        x = rng.normal(0, 1, (args.batch, args.time, args.dim)).astype("float32")
        probe = rng.normal(0, 1, (args.batch, args.time, args.proj or args.units)).astype("float32")
        for name in cells:
            for impl in args.impls.split(","):
                with matmul_precision(dtype):
                    model = build_model(name, impl, args.layers, args.units, args.proj, args.dim, policy)
                    start = time.perf_counter()
                    step = make_train_step(model, x, probe)
                    step()
                    compile_s = time.perf_counter() - start
                    seconds = time_steps(step, args.warmup, args.steps)
                rows.append({"cell": name, "impl": impl, "dtype": dtype, "tokens_per_s": args.batch * args.time / seconds, "compile_s": round(compile_s, 1)})
                del model, step
                keras.backend.clear_session()
                for row in rows:
                    row["ratio_vs_cudnn_lstmp"] = round(row["tokens_per_s"] / peer, 3) if peer else None
                    if args.cpu and rows[-1]["impl"] == "keras_lstm":
                        # CPU mode's peer: keras.layers.LSTM at the same shape.
                        row["ratio_vs_keras_lstm"] = round(row["tokens_per_s"] / rows[-1]["tokens_per_s"], 3)
                row = rows[-1]
                ratio = f"{row['ratio_vs_cudnn_lstmp']:.2f}x" if peer else "-"
                print(f"{name:6s} {impl:11s} {dtype:5s} {row['tokens_per_s']:12,.0f} {ratio:>9s}", flush=True)
                result["rows"] = [r for r in result["rows"] if r["dtype"] != dtype] + rows
                save()
        if peer is not None:
            print(f"{'LSTMP':6s} {'torch_cudnn':11s} {dtype:5s} {peer:12,.0f} {'1.00x':>9s}", flush=True)
    save()


if __name__ == "__main__":
    main()
