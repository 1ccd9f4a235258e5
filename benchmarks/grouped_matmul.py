"""The G-LSTM's grouped map: the gate-major Pallas kernels against XLA's einsum, on one GPU.

    KERAS_BACKEND=jax python benchmarks/grouped_matmul.py --out benchmarks/results/grouped_matmul_h200.json

For each shape (the recurrence's per-step rows B = 256 and the hoisted input
term's T·B = 5120 rows, at the paper's sizes A = 1024/k and n = 8192) it
checks the kernels against the einsum (forward, dv and dW, bfloat16), then
times the forward alone and dv (what the recurrence's
backward scan needs it) for the einsum the cell otherwise runs and for each
tile setting in `--tiles`. Median of `--iters` calls after warm-up, in one
process, so the ratio is measured under the same conditions.
"""

import argparse
import itertools
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from keras_flstm import jax_grouped_matmul as gm  # noqa: E402


# Calls per timed scan.
REPS = 10


def einsum_map(v, kernel):
    groups, depth, cols = kernel.shape
    z = jnp.einsum("bka,kagu->bgku", v.reshape(-1, groups, depth), kernel.reshape(groups, depth, 4, cols // 4))
    return z.reshape(v.shape[0], -1)


def timed(fn, *args, iters):
    """Seconds per call of jitted ``fn``, which maps ``REPS`` stacked inputs."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) / REPS)
    return statistics.median(times)


def over_reps(fn):
    """``fn`` mapped over a leading axis of REPS inputs by one scan, so a
    call's launch cost is not in the time (as in the recurrence's scan)."""
    def mapped(vs, kernel, *rest):
        def body(_, xs):
            return None, fn(*xs[:1], kernel, *xs[1:])
        return jax.lax.scan(body, None, (vs, *rest))[1]
    return jax.jit(mapped)


def forward_backward(fn):
    """dv of <fn(v, W), dz>: what a recurrence step's backward needs."""
    return over_reps(lambda v, kernel, dz: jax.vjp(lambda v_: fn(v_, kernel), v)[1](dz)[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", default="2,4,8")
    parser.add_argument("--rows", default="256,5120")
    parser.add_argument("--units", type=int, default=8192)
    parser.add_argument("--inputs", type=int, default=1024)
    parser.add_argument("--tiles", default="64x128x64,128x128x64,64x256x64,128x64x64",
                        help="forward tiles rows x cols x depth; the backward keeps its own unless --bwd_tiles")
    parser.add_argument("--bwd_tiles", default="64x64x64,32x64x128,64x128x64,32x32x128")
    parser.add_argument("--warps", default="4,8")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    result = {
        "command": " ".join(["KERAS_BACKEND=jax python"] + sys.argv),
        "machine": f"{len(jax.devices())}x {jax.devices()[0].device_kind}",
        "backend": "jax",
        "jax": jax.__version__,
        "dtype": "bfloat16",
        "timing": f"median of {args.iters} jitted scans of {REPS} calls each, after one warm-up scan",
        "rows": [],
    }
    print(f"{'k':>2s} {'rows':>5s} {'op':8s} {'impl':26s} {'us':>8s} {'vs einsum':>9s} {'TFLOP/s':>8s}", flush=True)
    for groups, rows in itertools.product(map(int, args.groups.split(",")), map(int, args.rows.split(","))):
        depth, cols = args.inputs // groups, 4 * args.units // groups
        vs = jnp.asarray(rng.normal(0, 1, (REPS, rows, groups * depth)), jnp.bfloat16)
        kernel = jnp.asarray(rng.normal(0, 0.05, (groups, depth, cols)), jnp.bfloat16)
        dzs = jnp.asarray(rng.normal(0, 1, (REPS, rows, groups * cols)), jnp.bfloat16)
        v, dz = vs[0], dzs[0]
        assert gm.supported(rows, kernel.shape, v.dtype, kernel.dtype)
        # Correctness on this GPU, against the einsum in float32.
        want_z, want_vjp = jax.vjp(lambda a, b: einsum_map(a.astype(jnp.float32), b.astype(jnp.float32)), v, kernel)
        got_z, got_vjp = jax.vjp(gm.gate_major, v, kernel)
        errors = {"z": got_z.astype(jnp.float32) - want_z}
        (errors["dv"], errors["dW"]) = [g.astype(jnp.float32) - w for g, w in zip(got_vjp(dz), want_vjp(dz.astype(jnp.float32)))]
        scale = {"z": want_z, "dv": want_vjp(dz.astype(jnp.float32))[0], "dW": want_vjp(dz.astype(jnp.float32))[1]}
        rel = {k: float(jnp.linalg.norm(e) / jnp.linalg.norm(scale[k])) for k, e in errors.items()}
        assert all(r < 1e-2 for r in rel.values()), rel
        flops = 2 * rows * groups * depth * cols
        base = {"forward": timed(over_reps(einsum_map), vs, kernel, iters=args.iters),
                "dv": timed(forward_backward(einsum_map), vs, kernel, dzs, iters=args.iters)}
        shape = {"groups": groups, "rows": rows, "depth": depth, "units": args.units, "rel_error": rel}
        for op, seconds in base.items():
            result["rows"].append({**shape, "op": op, "impl": "xla_einsum", "us": 1e6 * seconds, "ratio": 1.0})
            print(f"{groups:2d} {rows:5d} {op:8s} {'xla einsum':26s} {1e6 * seconds:8.1f} {1.0:9.2f} "
                  f"{flops / seconds / 1e12:8.0f}", flush=True)
        saved = dict(gm.FORWARD_TILE), dict(gm.BACKWARD_TILE)
        for tile, warps in itertools.product(args.tiles.split(","), map(int, args.warps.split(","))):
            gm.FORWARD_TILE.update(zip(("rows", "cols", "depth"), map(int, tile.split("x"))), num_warps=warps)
            seconds = timed(over_reps(gm.gate_major), vs, kernel, iters=args.iters)
            name = f"pallas {tile} w{warps}"
            result["rows"].append({**shape, "op": "forward", "impl": name, "tile": dict(gm.FORWARD_TILE),
                                   "us": 1e6 * seconds, "ratio": base["forward"] / seconds})
            print(f"{groups:2d} {rows:5d} {'forward':8s} {name:26s} {1e6 * seconds:8.1f} "
                  f"{base['forward'] / seconds:9.2f} {flops / seconds / 1e12:8.0f}", flush=True)
        gm.FORWARD_TILE.update(saved[0])
        for tile, warps in itertools.product(args.bwd_tiles.split(","), map(int, args.warps.split(","))):
            gm.BACKWARD_TILE.update(zip(("rows", "cols", "depth"), map(int, tile.split("x"))), num_warps=warps)
            seconds = timed(forward_backward(gm.gate_major), vs, kernel, dzs, iters=args.iters)
            name = f"pallas bwd {tile} w{warps}"
            result["rows"].append({**shape, "op": "dv", "impl": name, "tile": dict(gm.BACKWARD_TILE),
                                   "us": 1e6 * seconds, "ratio": base["dv"] / seconds})
            print(f"{groups:2d} {rows:5d} {'dv':8s} {name:26s} {1e6 * seconds:8.1f} "
                  f"{base['dv'] / seconds:9.2f} {flops / seconds / 1e12:8.0f}", flush=True)
        gm.BACKWARD_TILE.update(saved[1])
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
