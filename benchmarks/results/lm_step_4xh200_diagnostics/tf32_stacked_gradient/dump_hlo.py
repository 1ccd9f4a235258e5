"""Dumps the compiled HLO of the 1-GPU lm_step for some models and dtypes, and lists big concatenates/transposes.

As run on the 4xH200 machine (ninth session, commit 5dfb088's code) from the
repository root: KERAS_BACKEND=jax python <this file> OUT_DIR; the BIGLSTM
dumps are committed beside it, gzipped."""
import os, re, sys, types
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
import keras
import lm_step
from rnn_throughput import matmul_precision

out = sys.argv[1]
for model, dtype in [("BIGLSTM", "tf32"), ("BIG_F512", "tf32"), ("BIG_G4", "tf32"), ("BIGLSTM", "bf16")]:
    args = types.SimpleNamespace(vocab_size=793_470, batch_size=256, hparams="", dtype=dtype, lstm_update="sharded")
    with matmul_precision(dtype):
        runner, step = lm_step.make_step(model, "sparse", 1, args, unroll=True)
        import numpy as np
        rows = runner.hps.batch_size
        x = np.random.default_rng(0).integers(0, runner.hps.vocab_size, (rows, 20)).astype("int32")
        batch = tuple(runner.shard(a) for a in (x, np.roll(x, -1, 1), np.ones(x.shape, "float32")))
        text = runner._step.lower(runner._state, *batch, runner.states).compile().as_text()
    path = f"{out}/{model}_{dtype}.hlo.txt"
    open(path, "w").write(text)
    print("==", model, dtype, len(text))
    for line in text.splitlines():
        if re.search(r"(f32|bf16)\[(20,256,32768|5120,32768|20,256,4,8192|256,20,32768)\]", line) and ("fusion(" in line or "concatenate(" in line or "copy(" in line or "transpose(" in line):
            print("  ", line.strip()[:300])
    keras.backend.clear_session()
