"""lm1b/train.py, lm1b/runners.py, lm1b/checkpointing.py, lm1b/metrics_log.py.

In-process runs use the current Keras backend (both test passes); runs that
need a fresh process (logical devices, SIGKILL, another backend) are
subprocesses.
"""

import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lm1b import checkpointing
from lm1b import metrics_log
from lm1b import train
from lm1b.hparams import HParams
from lm1b.model import build_model_and_optimizers
from tests.subprocesses import ROOT
from tests.subprocesses import python_env as _env
from tests.subprocesses import run_python

TINY_CORPUS = os.path.join(ROOT, "data", "tiny_corpus")
TRAIN_PY = os.path.join(ROOT, "lm1b", "train.py")
TINY = ("vocab_size=1543,emb_size=32,state_size=64,projected_size=32,batch_size=16,"
        "num_steps=10,num_sampled=0,average_params=false")


def _train(logdir, hparams, **options):
    return train.run(train.Options(TINY_CORPUS, str(logdir), hparams=hparams, **options))


def _records(logdir, mode="train"):
    return [r for r in metrics_log.read(os.path.join(logdir, "metrics.jsonl")) if r["mode"] == mode]


def _step(path):
    return int(os.path.basename(path).split("-")[1])


def _python(code, *args, backend, timeout=300):
    """Runs ``code`` in a fresh interpreter; returns its last stdout line as JSON."""
    stdout = run_python(code, *args, backend=backend, timeout=timeout)
    return json.loads(stdout.strip().splitlines()[-1])


def test_tiny_model_learns_then_evaluates(tmp_path):
    _train(tmp_path, TINY + ",max_steps=120", log_every=20)
    records = _records(tmp_path)
    assert [r["step"] for r in records] == [20, 40, 60, 80, 100, 120]
    assert all({"loss", "wps", "elapsed", "time"} <= r.keys() for r in records)
    assert all(r["wps"] > 0 for r in records)
    assert [r["elapsed"] for r in records] == sorted(r["elapsed"] for r in records)
    first, last = records[0]["loss"], records[-1]["loss"]
    assert first > 6.0 and last < first - 1.0, (first, last)
    assert _step(checkpointing.latest(str(tmp_path))) == 120

    result = train.run(train.Options(TINY_CORPUS, str(tmp_path), mode="eval_full"))
    assert result["step"] == 120 and result["tokens"] == 4489
    assert result["perplexity"] < math.exp(last) * 1.5 < 1543 / 3
    assert _records(tmp_path, "eval") == [{**result, "time": _records(tmp_path, "eval")[0]["time"]}]


def test_sampled_softmax_training_learns(tmp_path):
    _train(tmp_path, TINY.replace("num_sampled=0", "num_sampled=32") + ",max_steps=100",
           log_every=50)
    records = _records(tmp_path)
    assert records[-1]["loss"] < records[0]["loss"] - 0.5
    result = train.run(train.Options(TINY_CORPUS, str(tmp_path), mode="eval_full"))
    assert result["perplexity"] < 700  # uniform: 1543


def test_max_steps_and_max_time_count_across_restarts_model_hparams_stay(tmp_path):
    _train(tmp_path, TINY + ",max_steps=30", log_every=10)
    _train(tmp_path, TINY + ",max_steps=50", log_every=10)  # resumes at 30
    records = _records(tmp_path)
    assert [r["step"] for r in records] == [10, 20, 30, 40, 50]
    assert records[3]["elapsed"] > records[2]["elapsed"]  # elapsed carried over
    assert _train(tmp_path, TINY + ",max_steps=50") is None
    # More than a second was spent already (compilation included).
    assert _train(tmp_path, TINY + ",max_steps=1000,max_time=1") is None
    assert _step(checkpointing.latest(str(tmp_path))) == 50
    state = checkpointing.read_state(checkpointing.latest(str(tmp_path)))
    assert state["elapsed"] == pytest.approx(records[-1]["elapsed"])
    assert HParams.from_dict(state["hparams"]).max_steps == 50
    with pytest.raises(ValueError, match="state_size=128.*state_size=64.*new --logdir"):
        _train(tmp_path, TINY.replace("state_size=64", "state_size=128"))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    _train(tmp_path, TINY + ",max_steps=10")
    with pytest.raises(train.TrainingDiverged, match=r"loss is (nan|inf).*ckpt-10"):
        _train(tmp_path, TINY + ",max_steps=500,learning_rate=1e30", log_every=5)
    assert checkpointing._steps(str(tmp_path)) == [10]


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(mode="eval"), "No checkpoint in --logdir"),
        (dict(mode="evaluate"), "--mode='evaluate' must be one of train, eval, eval_full"),
        (dict(hparams="vocab_size=1000,num_sampled=10"), "has 1543 tokens but vocab_size=1000"),
        (dict(log_every=0), "--log_every=0 must be an integer >= 1"),
        (dict(mode="eval", eval_steps=0), "--eval_steps=0 must be an integer >= 1"),
        (dict(keep_checkpoints=-1), "--keep_checkpoints=-1 must be an integer >= 1"),
        (dict(keep_checkpoints=0), "--keep_checkpoints=0 must be an integer >= 1"),
        (dict(num_gpus=0), "--num_gpus=0 must be an integer >= 1"),
        (dict(data_errors="ignore"), "--data_errors='ignore' must be one of strict, replace"),
    ],
)
def test_clear_errors(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        train.run(train.Options(TINY_CORPUS, str(tmp_path), **options))


@pytest.mark.parametrize("mode", train.MODES)
def test_a_datadir_without_vocabulary_is_named_and_leaves_no_logdir(tmp_path, mode):
    logdir = tmp_path / "run"
    if mode != "train":
        _train(logdir, TINY + ",max_steps=2")
    with pytest.raises(ValueError, match=r"No vocabulary file '.*nowhere.*1b_word_vocab.txt'.*LM1B layout"):
        train.run(train.Options(str(tmp_path / "nowhere"), str(logdir), mode=mode, hparams=TINY))
    assert os.path.isdir(logdir) == (mode != "train")


def test_resuming_checks_the_preset_against_the_checkpoint(tmp_path):
    small = "vocab_size=1543,batch_size=4,num_steps=5,num_sampled=0,max_steps=2,average_params=false"
    # BIG_G4 with the tiny sizes: its group count (4) shapes the weights.
    shrink = ",emb_size=16,state_size=32,projected_size=16,num_layers=1"
    _train(tmp_path, small + shrink, preset="BIG_G4")
    # The command that started the run resumes it.
    assert _train(tmp_path, small.replace("max_steps=2", "max_steps=3") + shrink, preset="BIG_G4")["step"] == 3
    with pytest.raises(ValueError, match=r"--preset BIG_G2 gives num_of_groups=2 "
                                         r"but the checkpoint .* has num_of_groups=4.*new --logdir"):
        _train(tmp_path, small + shrink, preset="BIG_G2")


def test_eval_takes_an_averaging_runs_own_weights_when_asked(tmp_path):
    _train(tmp_path, TINY.replace("average_params=false", "average_params=true") + ",max_steps=30")
    averaged = train.run(train.Options(TINY_CORPUS, str(tmp_path), mode="eval", eval_steps=3))
    raw = train.run(train.Options(TINY_CORPUS, str(tmp_path), mode="eval", eval_steps=3,
                                  hparams="average_params=false"))
    # The reference: the checkpoint's trained weights, restored as training does.
    hps = HParams.from_dict(checkpointing.read_state(checkpointing.latest(str(tmp_path)))["hparams"])
    model, optimizers = build_model_and_optimizers(hps)
    checkpointing.restore(checkpointing.latest(str(tmp_path)), model, optimizers)
    ema, _ = checkpointing.restore_for_eval(checkpointing.latest(str(tmp_path)), hps)
    plain, _ = checkpointing.restore_for_eval(checkpointing.latest(str(tmp_path)), hps, use_average=False)
    for want, got in zip(model.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(got, want)
    assert any(not np.array_equal(a, b) for a, b in zip(ema.get_weights(), plain.get_weights()))
    assert raw["perplexity"] != averaged["perplexity"]
    with pytest.raises(ValueError, match="state_size=128 but the checkpoint.*as it was trained"):
        train.run(train.Options(TINY_CORPUS, str(tmp_path), mode="eval", hparams="state_size=128"))


def test_sigkill_then_resume_then_sigterm(tmp_path):
    """A run killed with SIGKILL resumes from its last checkpoint; SIGTERM
    stops a run after a final checkpoint."""
    cmd = [sys.executable, TRAIN_PY, "--datadir", TINY_CORPUS, "--logdir", str(tmp_path),
           "--log_every", "10", "--hparams",
           TINY + ",max_steps=1000000,max_time=600,save_model_every_min=0.01"]

    def start_and_wait(until):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=_env())
        deadline = time.time() + 180
        while not until() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        return proc

    def steps():
        return checkpointing._steps(str(tmp_path))

    proc = start_and_wait(lambda: max(steps(), default=0) >= 100)
    proc.kill()
    proc.communicate()
    killed_at = _step(checkpointing.latest(str(tmp_path)))
    os.mkdir(tmp_path / ".tmp-ckpt-halfwritten")  # what a save killed midway leaves

    proc = start_and_wait(lambda: max(steps()) >= killed_at + 20)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, output[-3000:]
    assert f"Resumed from {os.path.join(str(tmp_path), f'ckpt-{killed_at}')}: step {killed_at}" in output
    assert ".tmp-ckpt-halfwritten" not in os.listdir(tmp_path)
    final = _records(tmp_path)[-1]
    assert _step(checkpointing.latest(str(tmp_path))) == final["step"] > killed_at + 20, output[-2000:]
    resumed = [r for r in _records(tmp_path) if r["step"] > killed_at][0]
    first = _records(tmp_path)[0]
    assert resumed["loss"] < first["loss"] - 0.5  # trained weights, not fresh ones
    assert len(steps()) <= 3  # keep_checkpoints


_REPLICAS = r"""
import dataclasses, json, os, sys
import keras, numpy as np
from lm1b import data, train
from lm1b.hparams import HParams
from lm1b.runners import RUNNERS

backend = keras.backend.backend()
vocab = data.Vocabulary.from_file(os.path.join(sys.argv[1], train.VOCAB))
heldout = list(data.Dataset(vocab, os.path.join(sys.argv[1], train.HELDOUT_FILES),
                            deterministic=True).iterate_once(8, 6))
batches = heldout[:3] + heldout[-3:]  # the last are padded: replicas get unequal tokens

def place(runner, arrays):
    if backend == "jax":
        return tuple(runner.shard(a) for a in arrays)
    import tensorflow as tf
    rows = 8 // runner.num_replicas
    return runner.strategy.experimental_distribute_values_from_function(
        lambda ctx: tuple(tf.constant(a[ctx.replica_id_in_sync_group * rows:][:rows]) for a in arrays))

def initial_states(runner, rows):
    states = runner.model.initial_state(rows)
    if backend == "jax":
        return [[runner.shard(s) for s in layer] for layer in states]
    return runner.strategy.experimental_distribute_values_from_function(lambda ctx: states)

result = {}
for clip in sys.argv[2:]:
    hps = HParams.parse("vocab_size=1543,emb_size=16,state_size=32,projected_size=16,batch_size=2,"
                        f"num_steps=6,keep_prob=1,num_sampled=0,num_gpus=4,max_grad_norm={clip}")
    keras.utils.set_random_seed(1)
    four = RUNNERS[backend](hps)
    initial = four.model.get_weights()
    one = RUNNERS[backend](dataclasses.replace(hps, num_gpus=1))
    one.model.set_weights(initial)
    one.load()
    # Same hparams (so the same f-lm embedding factor B = 2): one replica of 8 rows.
    one.states = initial_states(one, 8)
    losses = {r.num_replicas: [float(l) / float(t) for l, t in
                               (r.train_step(place(r, b)) for b in batches)]
              for r in (four, one)}
    for r in (four, one):
        r.sync()
    diff = max(float(np.abs(a - b).max())
               for a, b in zip(one.model.get_weights(), four.model.get_weights()))
    result[clip] = {"one": losses[1], "four": losses[4], "weight_diff": diff}

# The same as "one" of the last run, but with the states reset before every batch.
reset = RUNNERS[backend](dataclasses.replace(hps, num_gpus=1))
reset.model.set_weights(initial)
reset.load()
result["reset"] = []
for b in batches:
    reset.states = initial_states(reset, 8)
    l, t = reset.train_step(place(reset, b))
    result["reset"].append(float(l) / float(t))
print(json.dumps(result))
"""


@pytest.mark.tf_backend
def test_four_tf_replicas_match_one_on_the_same_global_batch():
    """MirroredStrategy over 4 logical CPUs: global token normalisation, the
    all-reduced and clipped LSTM gradient, Keras's replica sum, per-replica
    states. Clipping active at every step (0.05), and never (1e6)."""
    result = _python(_REPLICAS, TINY_CORPUS, "0.05", "1e6", backend="tensorflow")
    for clip in ("0.05", "1e6"):
        np.testing.assert_allclose(result[clip]["four"], result[clip]["one"], rtol=1e-6)
        assert result[clip]["weight_diff"] < 1e-6
    assert result["0.05"]["one"][2] != pytest.approx(result["1e6"]["one"][2], rel=1e-5)
    _assert_states_carried(result["1e6"]["one"], result["reset"])


def _assert_states_carried(carried, reset):
    """The first batch starts from zero states either way; the next ones
    must see the carried states."""
    assert carried[0] == pytest.approx(reset[0], rel=1e-6)
    assert all(abs(a - b) > 1e-4 for a, b in zip(carried[1:], reset[1:]))


@pytest.mark.tf_backend
def test_four_jax_devices_match_one_on_the_same_global_batch():
    result = _python(_REPLICAS, TINY_CORPUS, "0.05", backend="jax")
    np.testing.assert_allclose(result["0.05"]["four"], result["0.05"]["one"], rtol=1e-6)
    assert result["0.05"]["weight_diff"] < 1e-6
    _assert_states_carried(result["0.05"]["one"], result["reset"])


_SPARSE_VOCAB = r"""
import jax
jax.config.update("jax_num_cpu_devices", 2)
import dataclasses, json, keras, numpy as np
from lm1b.hparams import HParams
from lm1b.runners import JaxRunner

hps = HParams.parse("vocab_size=1543,emb_size=16,state_size=32,projected_size=16,batch_size=4,"
                    "num_steps=6,keep_prob=0.8,num_sampled=64,num_gpus=2,average_params=true")
rng = np.random.default_rng(0)
batches = []
for _ in range(3):
    x = rng.integers(0, 1543, (8, 6)).astype("int32")
    batches.append((x, np.roll(x, -1, 1), (rng.random(x.shape) > 0.2).astype("float32")))
# Repeated words and the last id (padding reads row V-1): the hard cases.
batches[0][0][:, :3] = 1542
result = {}
for name, optimizer, policy in (("adagrad", 0, "float32"), ("sgd", 4, "float32"),
                                ("bf16", 0, "mixed_bfloat16")):
    keras.config.set_dtype_policy(policy)
    for sparse in (False, None):
        keras.utils.set_random_seed(1)
        runner = JaxRunner(dataclasses.replace(hps, optimizer=optimizer), sparse_vocab=sparse)
        losses = [float(runner.train_step(tuple(runner.shard(a) for a in b))[0]) for b in batches]
        runner.sync()
        result[f"{name}_{runner.sparse_vocab}"] = {"losses": losses, "values": [
            v.numpy().astype("float32").tolist()
            for v in runner.model.weights + runner.optimizers[1].variables]}
keras.config.set_dtype_policy("float32")
adam = HParams.parse("vocab_size=1543,emb_size=16,state_size=32,projected_size=16,batch_size=4,"
                     "num_steps=6,num_sampled=64,num_gpus=2,optimizer=2")
result["adam_default"] = JaxRunner(adam).sparse_vocab
try:
    JaxRunner(adam, sparse_vocab=True)
except ValueError as e:
    result["adam_error"] = str(e)
print(json.dumps(result))
"""


@pytest.mark.tf_backend
def test_jax_sparse_vocabulary_updates_equal_the_dense_ones():
    """Two JAX devices, sampled softmax, dropout, padding, a repeated word:
    updating only the rows the batch reads (Adagrad, SGD; float32 and mixed
    bfloat16) leaves every weight and accumulator as the dense update does;
    Adam, which moves zero-gradient rows, keeps the dense update."""
    result = _python(_SPARSE_VOCAB, backend="jax")
    # bf16: the sparse update takes E's gradient per token in bfloat16 (the
    # compute dtype the model casts E's rows to) before summing it in float32,
    # where XLA may keep the dense path's cotangents in float32; row V-1, read
    # 24 times, then differs by that rounding (~5e-5 here). A wrong or missed
    # row is off by ~1e-2.
    for name, tolerance in (("adagrad", 1e-6), ("sgd", 1e-6), ("bf16", 1e-4)):
        dense, sparse = result[f"{name}_False"], result[f"{name}_True"]
        np.testing.assert_allclose(sparse["losses"], dense["losses"], rtol=tolerance)
        assert len(set(dense["losses"])) == 3
        for a, b in zip(sparse["values"], dense["values"]):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=tolerance)
    assert result["adam_default"] is False
    assert "optimizer=2" in result["adam_error"] and "sparse_vocab=None" in result["adam_error"]


_SHARDED_LSTM = r"""
import jax
jax.config.update("jax_num_cpu_devices", 4)
import dataclasses, json, keras, numpy as np
from lm1b.hparams import HParams
from lm1b.runners import JaxRunner

rng = np.random.default_rng(0)
batches = []
for _ in range(3):
    x = rng.integers(0, 1543, (8, 6)).astype("int32")
    batches.append((x, np.roll(x, -1, 1), (rng.random(x.shape) > 0.2).astype("float32")))
common = "vocab_size=1543,batch_size=2,num_steps=6,keep_prob=0.8,num_sampled=64,average_params=true"
result = {}
# "odd": P is (6, 6), which 4 devices do not divide: it stays replicated
# next to the sliced W and b. max_grad_norm=0.05 clips at every step.
# "one": shard_lstm=True on one device, where there is nothing to slice.
# "odd16": the same under bfloat16, where W_x and W_h are sliced on their
# second axis and travel by all-to-all.
odd = "emb_size=6,state_size=6,projected_size=6,max_grad_norm=0.05,num_gpus=4"
for name, sizes, policy in (("odd", odd, "float32"), ("odd16", odd, "mixed_bfloat16"),
                            ("bf16", "emb_size=16,state_size=32,projected_size=16,num_gpus=4", "mixed_bfloat16"),
                            ("one", "emb_size=16,state_size=32,projected_size=16,num_gpus=1", "float32")):
    keras.config.set_dtype_policy(policy)
    for shard in (False, True):
        keras.utils.set_random_seed(1)
        runner = JaxRunner(HParams.parse(common + "," + sizes), shard_lstm=shard)
        rows = runner.hps.batch_size * runner.num_replicas
        # The collectives the step is built from, before any step runs.
        hlo = runner.lower(tuple(runner.shard(a[:rows]) for a in batches[0])).as_text(dialect="hlo")
        # HLO lines read "%name = f32[...] op(...)": keep each op's result type.
        collectives = {op: [line.split("=")[1].split()[0] for line in hlo.splitlines() if f" {op}(" in line]
                       for op in ("all-to-all", "reduce-scatter")}
        losses = []
        for i, b in enumerate(batches):
            losses.append(float(runner.train_step(tuple(runner.shard(a[:rows]) for a in b))[0]))
            if i == 1:
                runner.sync()  # as before a save; training goes on
        lstm_state = runner._state[2]
        slices = [[list(a.shape), list(a.addressable_shards[0].data.shape)] for a in lstm_state]
        # Whole copies the Keras variables still hold beside the step's arrays.
        copies = sum(not v.value.is_deleted() for variables in runner._variable_lists() for v in variables)
        runner.sync()
        result[f"{name}_{shard}"] = {"losses": losses, "slices": slices, "copies": copies,
                                     "collectives": collectives, "values": [
            v.numpy().astype("float32").tolist()
            for v in runner.model.weights + runner.optimizers[0].variables]}
print(json.dumps(result))
"""


@pytest.mark.tf_backend
def test_jax_sharded_lstm_update_equals_the_replicated_one():
    """Four JAX devices: keeping 1/4 of each LSTM weight and of its Adagrad
    accumulator and EMA per device (gathered for the step, gradients
    exchanged in the compute dtype and summed in float32) gives the weights, accumulators and averages of the
    replicated update, with clipping, float32 and mixed bfloat16, and with a
    weight that stays replicated because 4 divides none of its axes; on one
    device it is the replicated update. No whole copy stays on the devices
    beside the slices."""
    result = _python(_SHARDED_LSTM, backend="jax")
    for name, tolerance in (("odd", 1e-6), ("odd16", 1e-6), ("bf16", 2e-5), ("one", 0)):
        replicated, sharded = result[f"{name}_False"], result[f"{name}_True"]
        # The forward pass is the same computation: the first loss is equal.
        assert sharded["losses"][0] == replicated["losses"][0]
        np.testing.assert_allclose(sharded["losses"], replicated["losses"], rtol=tolerance)
        assert len(set(sharded["losses"])) == 3
        for a, b in zip(sharded["values"], replicated["values"]):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=tolerance)
        assert all(full == local for full, local in replicated["slices"])
        assert sharded["copies"] == replicated["copies"] == 0
    sliced = [(full, local) for full, local in result["bf16_True"]["slices"] if full != local]
    assert len(sliced) == 8  # the average and the accumulator of W_x, W_h, b and P
    for full, local in sliced:  # one axis, split in 4
        assert sum(f != l for f, l in zip(full, local)) == 1 and np.prod(full) == 4 * np.prod(local)
    odd = result["odd_True"]["slices"]
    assert [6, 6] in [local for _, local in odd] and any(f != l for f, l in odd)
    # Under bfloat16 each sliced weight's gradient travels in bfloat16 (one
    # all-to-all each); in float32 it is reduce-scattered; replicated, neither.
    bf16 = result["bf16_True"]["collectives"]
    assert len(bf16["all-to-all"]) == 4 and all(t.startswith("bf16[") for t in bf16["all-to-all"])
    assert not bf16["reduce-scatter"]
    odd = result["odd_True"]["collectives"]
    assert odd["reduce-scatter"] and all(t.startswith("f32[") for t in odd["reduce-scatter"])
    assert not odd["all-to-all"]
    odd16 = result["odd16_True"]["collectives"]
    assert odd16["all-to-all"] and all(t.startswith("bf16[") for t in odd16["all-to-all"])
    assert not odd16["reduce-scatter"]
    for name in ("odd", "odd16", "bf16", "one"):
        assert result[f"{name}_False"]["collectives"] == {"all-to-all": [], "reduce-scatter": []}


_STEP_MODULES = r"""
import json, keras, numpy as np
from lm1b.hparams import HParams
from lm1b.runners import JaxRunner

small = "vocab_size=1000,emb_size=64,projected_size=48,state_size=128,batch_size=4,num_steps=5,unroll=true,num_gpus=1"
result = {}
for name, preset, extra, policy in (
        ("BIGLSTM", "BIGLSTM", "num_sampled=64", "float32"),
        ("F", "BIG_F512", "num_sampled=64,fact_size=32", "float32"),
        ("F_bf16_full_softmax", "BIG_F512", "num_sampled=0,fact_size=32", "mixed_bfloat16"),
        ("G4_G8", "BIG_G4_G8", "num_sampled=64", "float32")):
    keras.config.set_dtype_policy(policy)
    runner = JaxRunner(HParams.from_preset(preset, ",".join([small, extra])))
    x = np.random.default_rng(0).integers(0, 1000, (4, 5)).astype("int32")
    module = runner.lower(tuple(runner.shard(a) for a in (x, x, np.ones(x.shape, "float32")))).as_text()
    result[name] = {"module": module, "words": int(x.size),
                    "flops_per_word": runner.model.train_flops_per_word()}
    keras.backend.clear_session()
print(json.dumps(result))
"""


def _dot_flops(module):
    """2·(output size)·(contracted size) summed over every stablehlo.dot_general
    of a lowered module, each function counted as often as it is called.
    Loops are allowed only if no dot runs inside them (the sampler's RNG)."""
    functions, name, depth, loop_depth = {}, None, 0, None
    for line in module.splitlines():
        header = re.match(r"\s*func\.func (?:public |private )?@(\w+)", line)
        if header:
            name = header.group(1)
            functions[name] = {"flops": 0, "calls": []}
            continue
        if "stablehlo.while" in line:
            loop_depth = depth
        depth += line.count("{") - line.count("}")
        in_loop = loop_depth is not None and depth > loop_depth
        if loop_depth is not None and depth <= loop_depth and "stablehlo.while" not in line:
            loop_depth = None
        call = re.search(r"(?<!\w)(?:func\.)?call @(\w+)", line)  # not custom_call
        if call:
            functions[name]["calls"].append((call.group(1), in_loop))
        if "stablehlo.dot_general" in line:
            assert not in_loop, line
            contracted = re.search(r"contracting_dims = \[([\d, ]*)\] x", line).group(1)
            types = re.search(r": \(tensor<([\dx]+)x\w+>, tensor<[\dx]+x\w+>\) -> tensor<([\dx]+)x\w+>", line)
            lhs = [int(s) for s in types.group(1).split("x")]
            out = [int(s) for s in types.group(2).split("x")]
            functions[name]["flops"] += 2 * math.prod(out) * math.prod(lhs[int(i)] for i in contracted.split(","))

    def total(function):
        flops = functions[function]["flops"]
        for callee, in_loop in functions[function]["calls"]:
            callee_flops = total(callee)
            assert not (in_loop and callee_flops), callee
            flops += callee_flops
        return flops

    return total("main")


@pytest.mark.tf_backend
def test_train_flops_per_word_counts_every_gemm_of_the_jax_step():
    """LanguageModel.train_flops_per_word times the batch's words equals the
    FLOPs of the matrix products in the JAX training step as lowered (an
    unrolled recurrence, so that each product appears as often as it runs):
    no product is missing from the count, and the step computes none twice.
    (Before the cells' expand hook, the F-LSTM's weight-gradient pass
    recomputed dS = dZ·W2ᵀ: 22% more than the count here.)"""
    result = _python(_STEP_MODULES, backend="jax")
    for name, case in result.items():
        assert _dot_flops(case["module"]) == case["flops_per_word"] * case["words"], name
    # The count itself, from the shapes (d = 64, p = 48, n = 128, r = 32, S = 64, V = 1000;
    # layer 1 reads p = 48): W_x, W_h, P per LSTMP layer; W1_x, W1_h, W2, P per F-LSTM layer.
    lstmp = (64 * 512 + 48 * 512 + 128 * 48) + (48 * 512 + 48 * 512 + 128 * 48)
    assert result["BIGLSTM"]["flops_per_word"] == 6 * lstmp + 6 * 48 * 64
    flstm = (64 * 32 + 48 * 32 + 32 * 512 + 128 * 48) + (48 * 32 + 48 * 32 + 32 * 512 + 128 * 48)
    assert result["F_bf16_full_softmax"]["flops_per_word"] == 6 * flstm + 6 * 48 * 1000


@pytest.mark.tf_backend
def test_jax_checkpoint_evaluates_the_same_on_tensorflow(tmp_path):
    common = ["--datadir", TINY_CORPUS, "--logdir", str(tmp_path)]
    out = subprocess.run([sys.executable, TRAIN_PY, *common, "--hparams", TINY + ",max_steps=20"],
                         capture_output=True, text=True, env=_env("jax"), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    perplexities = {}
    for backend in ("jax", "tensorflow"):
        out = subprocess.run([sys.executable, TRAIN_PY, *common, "--mode", "eval_full"],
                             capture_output=True, text=True, env=_env(backend), timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        perplexities[backend] = _records(tmp_path, "eval")[-1]["perplexity"]
    assert perplexities["tensorflow"] == pytest.approx(perplexities["jax"], rel=1e-5)


def test_cli_reports_errors_without_a_traceback(tmp_path):
    out = subprocess.run([sys.executable, TRAIN_PY, "--datadir", TINY_CORPUS,
                          "--logdir", str(tmp_path), "--mode", "eval"],
                         capture_output=True, text=True, env=_env(), timeout=300)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("ERROR: No checkpoint in --logdir")
    assert "Traceback" not in out.stderr


def _tiny_model_and_optimizers(hpconfig="vocab_size=30,emb_size=4,state_size=8,projected_size=4,num_sampled=5"):
    hps = HParams.parse(hpconfig)
    return (hps, *build_model_and_optimizers(hps))


def test_checkpoints_are_atomic_pruned_and_restorable(tmp_path):
    hps, model, optimizers = _tiny_model_and_optimizers()
    for step in (1, 2, 3, 4):
        optimizers[1].iterations.assign(step)
        path = checkpointing.save(str(tmp_path), step, model, optimizers,
                                  {"elapsed": step / 2, "hparams": hps.to_dict()}, keep=2)
    assert sorted(os.listdir(tmp_path)) == ["ckpt-3", "ckpt-4"]
    for keep in (0, -1):
        with pytest.raises(ValueError, match=f"keep={keep} must be an integer >= 1"):
            checkpointing.save(str(tmp_path), 5, model, optimizers, {}, keep=keep)
    assert sorted(os.listdir(tmp_path)) == ["ckpt-3", "ckpt-4"]
    assert checkpointing.latest(str(tmp_path)) == path
    os.mkdir(tmp_path / ".tmp-ckpt-x")
    os.mkdir(tmp_path / "ckpt-9-not-a-checkpoint")
    checkpointing.remove_partial(str(tmp_path))
    assert checkpointing.latest(str(tmp_path)) == path and not (tmp_path / ".tmp-ckpt-x").exists()

    _, clone, clone_optimizers = _tiny_model_and_optimizers()
    state = checkpointing.restore(path, clone, clone_optimizers)
    assert state["step"] == 4 and state["elapsed"] == 2.0
    assert int(clone_optimizers[1].iterations) == 4
    for a, b in zip(model.get_weights(), clone.get_weights()):
        np.testing.assert_array_equal(a, b)

    _, other, other_optimizers = _tiny_model_and_optimizers(
        "vocab_size=30,emb_size=4,state_size=8,projected_size=4,num_sampled=5,average_params=false")
    with pytest.raises(ValueError, match="lstm_optimizer.*average_params changed"):
        checkpointing.restore(path, other, other_optimizers)


def test_progress_line_and_eta():
    line = metrics_log.progress_line(200, 5.12345, 12345.0, 65.0, 40.2)
    assert line == "step 200 | loss 5.1235 | 12.3K words/s | elapsed 0:01:05 | ETA 0:00:40"
    # 100 steps left at 10 steps/s = 10 s, before max_time's 50 s.
    assert metrics_log.eta_seconds(900, 50.0, 10.0, 1000, 100) == 10.0
    assert metrics_log.eta_seconds(0, 95.0, 10.0, 10**6, 100) == 5.0


def test_metrics_log_appends(tmp_path):
    for step in (1, 2):
        log = metrics_log.MetricsLog(str(tmp_path), tensorboard=False)
        log.write({"mode": "train", "step": step, "loss": 1.0, "wps": 2.0, "elapsed": 3.0})
    assert [r["step"] for r in metrics_log.read(log.path)] == [1, 2]


def test_plot_curves_keeps_the_history_of_the_kept_weights(tmp_path):
    """scripts/plot_curves.py's data: a resumed run's replayed steps replace
    the abandoned ones (the PNG itself needs matplotlib)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "plot_curves", os.path.join(ROOT, "scripts", "plot_curves.py"))
    plot_curves = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot_curves)
    log = metrics_log.MetricsLog(str(tmp_path), tensorboard=False)
    for step, loss in ((10, 7.0), (20, 6.0), (30, 5.5), (20, 5.9), (30, 5.4), (40, 5.0)):
        log.write({"mode": "train", "step": step, "loss": loss, "wps": 1.0, "elapsed": step * 36.0})
    log.write({"mode": "eval", "step": 40, "perplexity": 100.0, "log_perplexity": 4.6})
    steps, hours, losses = plot_curves.load_curve(str(tmp_path))
    assert steps == [10, 20, 30, 40] and losses == [7.0, 5.9, 5.4, 5.0]
    assert hours == [0.1, 0.2, 0.3, 0.4]
    with pytest.raises(ValueError, match="metrics.jsonl does not exist"):
        plot_curves.load_curve(str(tmp_path / "missing"))


@pytest.mark.tf_backend
def test_tf_replicas_draw_their_own_dropout_and_samples():
    """Each replica offsets the seed states by its id (as f-lm's towers draw
    their own), and hands back the same advanced states to the mirrored
    variables."""
    import tensorflow as tf

    from lm1b.runners import TFRunner

    hps = HParams.parse(TINY.replace("num_sampled=0", "num_sampled=16")).override(
        "keep_prob=0.5,num_gpus=1,batch_size=2,num_steps=3")
    runner = TFRunner(hps)
    trainable = [tf.identity(v.value) for v in runner.model.trainable_variables]
    seeds = [tf.identity(v.value) for v in runner.model.non_trainable_variables]
    x = np.arange(6, dtype="int32").reshape(2, 3)
    w = np.ones((2, 3), "float32")
    out = {r: runner._gradients(trainable, seeds, x, x, w, runner.model.initial_state(2), r)
           for r in (0, 1)}
    again = runner._gradients(trainable, seeds, x, x, w, runner.model.initial_state(2), 0)
    assert float(out[0][0]) == float(again[0])  # same replica, same draws
    assert float(out[0][0]) != float(out[1][0])
    advanced = 0
    for a, b, before in zip(out[0][4], out[1][4], seeds):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        advanced += not np.array_equal(a.numpy(), before.numpy())
    assert advanced == 3  # both dropouts and the sampler (the cells draw nothing)


@pytest.mark.slow
@pytest.mark.tf_backend
def test_two_tf_workers_through_tf_config(tmp_path):
    """MultiWorkerMirroredStrategy: two local worker processes train in step
    (same losses); only the chief writes checkpoints and metrics."""
    import socket

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("localhost", 0))
            ports.append(s.getsockname()[1])
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = _env("tensorflow")
        env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen(
            [sys.executable, TRAIN_PY, "--datadir", TINY_CORPUS, "--logdir", str(tmp_path),
             "--log_every", "10", "--hparams", TINY + ",max_steps=30"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    lines = [[l for l in out.splitlines() if l.startswith("step ")] for out in outputs]
    assert len(lines[0]) == 3
    assert [l.split("|")[1] for l in lines[0]] == [l.split("|")[1] for l in lines[1]]
    assert "2 replica(s)" in outputs[0]
    assert checkpointing.latest_step(str(tmp_path)) == 30
    assert [r["step"] for r in _records(tmp_path)] == [10, 20, 30]


@pytest.mark.parametrize("changes, rows, reason", [
    ({"num_sampled": 0}, 4, "num_sampled=0"),
    ({"optimizer": 1}, 4, "optimizer=1"),
    ({"num_sampled": 1000}, 60, "not fewer than vocab_size=1543"),
])
def test_sparse_vocabulary_updates_only_where_they_equal_the_dense_ones(changes, rows, reason):
    from lm1b.runners import _check_sparse_vocab

    good = HParams.parse(TINY.replace("num_sampled=0", "num_sampled=64"))
    assert _check_sparse_vocab(good, 4, None) is True and _check_sparse_vocab(good, 4, False) is False
    hps = dataclasses.replace(good, **changes)
    assert _check_sparse_vocab(hps, rows, None) is False
    assert _check_sparse_vocab(hps, rows, False) is False
    with pytest.raises(ValueError, match=f"sparse_vocab=True is not possible here: .*{reason}"):
        _check_sparse_vocab(hps, rows, True)
