"""Times and profiles the G-LSTM RNN (paper size, bf16) with XLA's einsum, both Pallas kernels, and the forward kernel only."""
import collections, glob, os, sys, tempfile, time, statistics, json
sys.path.insert(0, "benchmarks"); sys.path.insert(0, ".")
import jax, jax.numpy as jnp, keras, numpy as np
from rnn_throughput import build_model, make_train_step
from keras_flstm import jax_grouped_matmul as gm

gm.BACKWARD_TILE.update(rows=32, cols=32, depth=128)
orig_backward = gm._backward
def xla_dv(dz, kernel):
    k, A, cols = kernel.shape
    u = cols // 4
    return jnp.einsum("rgju,jagu->rja", dz.reshape(-1, 4, k, u), kernel.reshape(k, A, 4, u)).reshape(-1, k * A)

def run(cell, variant):
    gm.KERNEL_PLATFORMS = () if variant == "xla" else ("gpu",)
    gm._backward = xla_dv if variant == "pallas_fwd_only" else orig_backward
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (256, 20, 1024)).astype("float32")
    probe = rng.normal(0, 1, (256, 20, 1024)).astype("float32")
    model = build_model(cell, "fused", 2, 8192, 1024, 1024, "mixed_bfloat16")
    step = make_train_step(model, x, probe)
    for _ in range(3): step()
    ts = []
    for _ in range(10):
        t = time.perf_counter(); step(); ts.append(time.perf_counter() - t)
    logdir = tempfile.mkdtemp()
    with jax.profiler.trace(logdir):
        for _ in range(3): step()
    path = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0]
    data = jax.profiler.ProfileData.from_file(path)
    totals, counts = collections.Counter(), collections.Counter()
    spans = []
    for plane in data.planes:
        if plane.name != "/device:GPU:0": continue
        for line in plane.lines:
            if "stream" not in line.name.lower(): continue
            for e in line.events:
                totals[e.name] += e.duration_ns / 3; counts[e.name] += 1 / 3
    tot = sum(totals.values())
    print(f"== {cell} {variant}: {256*20/statistics.median(ts):,.0f} tok/s, step {1e3*statistics.median(ts):.2f} ms, kernel {tot/1e6:.2f} ms, {sum(counts.values()):.0f} kernels", flush=True)
    for n, ns in totals.most_common(14):
        print(f"   {ns/1e6:7.3f} ms x{counts[n]:4.0f} {n[:90]}")
    keras.backend.clear_session()

for cell in sys.argv[1].split(","):
    for variant in ("xla", "pallas", "pallas_fwd_only"):
        run(cell, variant)
