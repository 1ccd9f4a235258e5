"""Prints the collectives of BIGLSTM's compiled 4-GPU step (bf16, unrolled,
sparse vocabulary, sharded LSTM update) in XLA's schedule order. Run from
the repository root: KERAS_BACKEND=jax python benchmarks/results/lm_step_4xh200_diagnostics/bf16_exchange/hlo_collectives.py"""
import argparse
import re
import sys

import numpy as np

sys.path.insert(0, "benchmarks")
from lm_step import make_step
args = argparse.Namespace(vocab_size=793_470, batch_size=256, hparams="", dtype="bf16", lstm_update="sharded")
runner, step = make_step("BIGLSTM", "sparse", 4, args, True)
rows = 256 * 4
x = np.random.default_rng(0).integers(0, 793_470, (rows, 20)).astype("int32")
batch = tuple(runner.shard(a) for a in (x, np.roll(x, -1, axis=1), np.ones(x.shape, "float32")))
text = runner._step.lower(runner._state, *batch, runner.states).compile().as_text()
for line in text.splitlines():
    if re.search(r"(all-reduce|all-gather|all-to-all|reduce-scatter)(-start)?\(", line):
        print(line.strip()[:400])
