"""Compiles the 1-GPU unrolled lm_step of BIG_G4 (bf16, TF32), writes its HLO and lists the big transpose/concatenate/copy fusions.

Run by run.sh beside it, from the repository root on the device machine:
KERAS_BACKEND=jax python benchmarks/results/glstm_gate_group_batch/hlo_check.py OUT_DIR (the dumps here are gzipped)."""
import os, re, sys, types
sys.path.insert(0, os.path.join(os.getcwd(), "benchmarks"))
import keras, numpy as np
import lm_step
from rnn_throughput import matmul_precision
out = sys.argv[1]
for model, dtype in [("BIG_G4", "bf16"), ("BIG_G4", "tf32")]:
    args = types.SimpleNamespace(vocab_size=793_470, batch_size=256, hparams="", dtype=dtype, lstm_update="sharded")
    with matmul_precision(dtype):
        runner, step = lm_step.make_step(model, "sparse", 1, args, unroll=True)
        x = np.random.default_rng(0).integers(0, runner.hps.vocab_size, (runner.hps.batch_size, 20)).astype("int32")
        batch = tuple(runner.shard(a) for a in (x, np.roll(x, -1, 1), np.ones(x.shape, "float32")))
        text = runner.lower(batch).compile().as_text()
    open(f"{out}/{model}_{dtype}.hlo.txt", "w").write(text)
    big = [l.strip()[:240] for l in text.splitlines()
           if re.search(r"= (f32|bf16)\[(20,256,32768|5120,32768|4,4,5120,2048|4,5120,8192|5120,4,4,2048|20,256,4,4,2048)\]", l)
           and re.search(r"(transpose|concatenate|copy)", l.split("=")[1].split("(")[0] + l.split("calls=")[-1][:40])]
    print("==", model, dtype, "big transpose/concat/copy fusions:", len(big))
    for l in big: print("   ", l)
    keras.backend.clear_session()
