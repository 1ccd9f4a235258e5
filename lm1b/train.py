"""Trains and evaluates f-lm's LSTM language model on data in LM1B layout.

    python lm1b/train.py --datadir DATA --logdir LOGDIR [--preset BIGLSTM] [--hparams k=v,...]
    python lm1b/train.py --mode eval_full --datadir DATA --logdir LOGDIR

DATA holds ``1b_word_vocab.txt``, ``training-monolingual.tokenized.shuffled/*``
and ``heldout-monolingual.tokenized.shuffled/news.en.heldout-00000-of-*``
(f-lm evaluates on that first held-out file).

Modes:
    train: trains until max_steps or max_time (both counted over restarts).
        A LOGDIR with a checkpoint resumes from its latest one; the run then
        starts from the checkpoint's hparams with --hparams applied on top.
    eval: evaluates the latest checkpoint on at most --eval_steps held-out
        batches; eval_full on the whole held-out file. Full softmax, no
        dropout, the EMA of the LSTM weights with average_params (the raw
        weights with --hparams average_params=false), and perplexity
        exp(Σ w·ℓ / Σ w) over real tokens.

Backends (KERAS_BACKEND; the model is the same, see lm1b.model):
    tensorflow: tf.distribute.MirroredStrategy over --num_gpus GPUs (logical
        CPU devices when there is none), MultiWorkerMirroredStrategy when
        TF_CONFIG names several workers; tf.data input (lm1b.input_pipeline);
        each replica's forward and backward pass is one XLA computation.
    jax: keras.distribution.DataParallel over --num_gpus local devices; numpy
        input (lm1b.data); the whole step is one jax.jit computation.

Every replica carries its own LSTM states across batches (rows continue, as
in f-lm). The gradient is f-lm's (lm1b.model.flm_gradients) over the global
batch, the LSTM part clipped by its global norm (f-lm clips each replica's
gradient before averaging; we clip the average, so that R replicas compute
exactly what one does on the same global batch). See docs/training.md.
"""

import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time

if __name__ == "__main__":
    # Run as a script: import lm1b from the repository root, and keep lm1b/
    # itself off sys.path so that its modules cannot shadow others.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import keras
from absl import app
from absl import flags

from lm1b import checkpointing
from lm1b import data
from lm1b import metrics_log
from lm1b.hparams import HParams
from lm1b.runners import RUNNERS
from lm1b.runners import stateless_call
from lm1b.runners import visible_gpus

VOCAB = data.VOCAB_FILE
TRAIN_FILES = "training-monolingual.tokenized.shuffled/*"
HELDOUT_FILES = "heldout-monolingual.tokenized.shuffled/news.en.heldout-00000-of-*"
# hparams that change the weights or the optimizer state: a resumed run
# cannot change them.
_STRUCTURE_KEYS = (
    "vocab_size", "emb_size", "state_size", "projected_size", "num_layers",
    "fact_size", "num_of_groups", "use_peepholes", "use_residual", "optimizer",
    "average_params",
)
MODES = ("train", "eval", "eval_full")


@dataclasses.dataclass
class Options:
    """What the command-line flags set; see their help texts."""

    datadir: str
    logdir: str
    mode: str = "train"
    hparams: str = ""
    preset: str | None = None
    num_gpus: int | None = None
    eval_steps: int = 70
    log_every: int = 20
    seed: int = 0
    keep_checkpoints: int = 3
    data_errors: str = "strict"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"--mode={self.mode!r} must be one of {', '.join(MODES)}.")
        for name in ("eval_steps", "log_every", "keep_checkpoints"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name}={value!r} must be an integer >= 1.")
        if self.num_gpus is not None and (not isinstance(self.num_gpus, int) or self.num_gpus < 1):
            raise ValueError(f"--num_gpus={self.num_gpus!r} must be an integer >= 1, or unset "
                             "for the visible GPUs.")
        if self.data_errors not in data.DECODE_ERRORS:
            raise ValueError(f"--data_errors={self.data_errors!r} must be one of "
                             f"{', '.join(data.DECODE_ERRORS)}.")


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; nothing was saved after it."""


def run(options):
    """Runs ``options.mode``; returns the last metrics record (a dict)."""
    if options.mode == "train":
        return train(options)
    return evaluate(options)


def train(options):
    """Trains from scratch or from the latest checkpoint in ``options.logdir``."""
    ckpt = checkpointing.latest(options.logdir)
    saved = checkpointing.read_state(ckpt) if ckpt else None
    hps = resolve_hparams(options, saved)
    vocab = _vocabulary(options.datadir, hps)  # before making --logdir: a bad --datadir leaves nothing
    os.makedirs(options.logdir, exist_ok=True)
    checkpointing.remove_partial(options.logdir)
    step, elapsed = (saved["step"], saved["elapsed"]) if saved else (0, 0.0)
    # Offset by the step, so that a resumed run does not replay the same
    # dropout masks, samples and data order.
    keras.utils.set_random_seed(options.seed + step)
    runner = RUNNERS[keras.backend.backend()](hps)
    if ckpt:
        checkpointing.restore(ckpt, runner.model, runner.optimizers)
        for optimizer in runner.optimizers:  # --hparams may change it on resume
            optimizer.learning_rate = hps.learning_rate
        runner.load()
        print(f"Resumed from {ckpt}: step {step}, {elapsed:.0f}s trained.", flush=True)
    _print_setup(hps, runner)
    log = metrics_log.MetricsLog(options.logdir) if runner.is_chief else None
    batches = runner.batches(vocab, os.path.join(options.datadir, TRAIN_FILES), options.seed + step,
                             errors=options.data_errors)

    def record_and_save():
        # The record checks the loss, so no checkpoint follows a NaN.
        nonlocal pending, record
        if pending:
            record = _record(pending, step, elapsed, last, hps, log, options.logdir)
            pending = []
        if runner.is_chief and step != checkpointing.latest_step(options.logdir):
            runner.sync()
            state = {"elapsed": elapsed, "hparams": hps.to_dict(),
                     "backend": keras.backend.backend(), "replicas": runner.num_replicas}
            path = checkpointing.save(options.logdir, step, runner.model, runner.optimizers,
                                      state, keep=options.keep_checkpoints)
            print(f"Saved {path}", flush=True)

    pending = []  # (Σ w·ℓ, Σ w) of each step since the last record, on device
    record = None
    last = {"time": time.time(), "step": step}
    start, last_save = time.time() - elapsed, time.time()
    with _StopOnSignal() as stop:
        while step < hps.max_steps and elapsed < hps.max_time and not stop.requested:
            pending.append(runner.train_step(next(batches)))
            step += 1
            elapsed = time.time() - start
            if time.time() - last_save >= 60 * hps.save_model_every_min:
                record_and_save()
                last_save = time.time()
            elif step % options.log_every == 0:
                record = _record(pending, step, elapsed, last, hps, log, options.logdir)
                pending = []
        record_and_save()  # at max_steps, max_time or a signal
    if record is None:
        print(f"Nothing to do: step {step} of max_steps={hps.max_steps}, "
              f"{elapsed:.0f}s of max_time={hps.max_time}s.", flush=True)
    return record


def evaluate(options):
    """Evaluates the latest checkpoint in ``options.logdir`` on the held-out data."""
    ckpt = checkpointing.latest(options.logdir)
    if ckpt is None:
        raise ValueError(
            f"No checkpoint in --logdir={options.logdir!r}; train there first "
            "(--mode train)."
        )
    saved = checkpointing.read_state(ckpt)
    hps = resolve_hparams(options, saved)
    vocab = _vocabulary(options.datadir, hps)
    # --hparams average_params=false evaluates an averaging run's own weights.
    trained_with_average = saved["hparams"].get("average_params", hps.average_params)
    model, state = checkpointing.restore_for_eval(
        ckpt, dataclasses.replace(hps, average_params=trained_with_average),
        use_average=hps.average_params)
    step = state["step"]

    def loss_sums(tv, ntv, x, y, w, states):
        return stateless_call(model, tv, ntv, lambda: model.loss_sums(x, y, w, states))[0]

    compiled = RUNNERS[keras.backend.backend()].compile(loss_sums)
    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]
    rows = hps.batch_size * hps.num_gpus  # as f-lm: the training global batch
    states = model.initial_state(rows)
    loss_sum = tokens = 0.0
    heldout = data.Dataset(vocab, os.path.join(options.datadir, HELDOUT_FILES), deterministic=True,
                           errors=options.data_errors)
    full = options.mode == "eval_full"
    batches = 0
    for x, y, w in heldout.iterate_once(rows, hps.num_steps):
        if not full and batches >= options.eval_steps:
            break
        batch_loss, batch_tokens, states = compiled(tv, ntv, x, y, w, states)
        loss_sum += float(batch_loss)
        tokens += float(batch_tokens)
        batches += 1
    log_ppl = loss_sum / tokens
    record = {"mode": "eval", "step": step, "perplexity": math.exp(log_ppl),
              "log_perplexity": log_ppl, "tokens": int(tokens), "batches": batches,
              "full": full}
    print(f"eval at step {step}: perplexity {record['perplexity']:.3f} "
          f"(log {log_ppl:.4f}) over {int(tokens)} tokens in {batches} batches "
          f"of {rows}x{hps.num_steps}{', EMA weights' if hps.average_params else ''}.",
          flush=True)
    metrics_log.MetricsLog(options.logdir).write(record)
    return record


def resolve_hparams(options, saved):
    """The run's HParams: a checkpoint's (``saved``) or the preset's, then
    --hparams on top, and num_gpus from --num_gpus (default: the visible
    GPUs, or 1)."""
    if saved is None:
        hps = (HParams.from_preset(options.preset, options.hparams) if options.preset
               else HParams.parse(options.hparams))
    else:
        base = HParams.from_dict(saved["hparams"])
        hps = base.override(options.hparams)
        # A preset is checked against the checkpoint, not applied: rerunning
        # the command that started a run resumes it.
        asked = HParams.from_preset(options.preset, options.hparams) if options.preset else hps
        flag = f"--preset {options.preset}" if options.preset else "--hparams"
        keys = _STRUCTURE_KEYS
        if options.mode != "train" and not hps.average_params:
            keys = tuple(k for k in keys if k != "average_params")  # evaluates the raw weights
        changed = [k for k in keys if getattr(asked, k) != getattr(base, k)]
        if changed:
            fix = ("Use a new --logdir to train another model." if options.mode == "train"
                   else "Evaluate the model of that --logdir as it was trained.")
            raise ValueError(
                f"{flag} gives {', '.join(f'{k}={getattr(asked, k)}' for k in changed)} "
                f"but the checkpoint in {options.logdir!r} has "
                f"{', '.join(f'{k}={getattr(base, k)}' for k in changed)}: these "
                f"shape the weights. {fix}"
            )
    if options.mode == "train" or options.num_gpus:
        num_gpus = options.num_gpus or max(visible_gpus(keras.backend.backend()), 1)
        hps = dataclasses.replace(hps, num_gpus=num_gpus)
    return hps


def _vocabulary(datadir, hps):
    vocab = data.Vocabulary.from_file(os.path.join(datadir, VOCAB))
    data.check_vocab_size(vocab, hps.vocab_size)
    return vocab


def _record(pending, step, elapsed, last, hps, log, logdir):
    """Prints and logs the mean loss of the ``pending`` steps; raises on NaN/Inf."""
    loss_sum = sum(float(loss) for loss, _ in pending)
    tokens = sum(float(count) for _, count in pending)
    loss = loss_sum / tokens
    if not math.isfinite(loss):
        good = checkpointing.latest(logdir)
        raise TrainingDiverged(
            f"Training loss is {loss} over steps {step - len(pending) + 1}..{step}. "
            f"Stopped without saving; the last good checkpoint is "
            f"{good or 'none (no checkpoint yet)'}. Lower learning_rate or "
            "max_grad_norm, then rerun to resume from it."
        )
    now = time.time()
    wps = tokens / max(now - last["time"], 1e-9)
    steps_per_second = (step - last["step"]) / max(now - last["time"], 1e-9)
    eta = metrics_log.eta_seconds(step, elapsed, steps_per_second, hps.max_steps, hps.max_time)
    print(metrics_log.progress_line(step, loss, wps, elapsed, eta), flush=True)
    record = {"mode": "train", "step": step, "loss": loss, "wps": wps, "elapsed": elapsed}
    if log is not None:
        log.write(record)
    last.update(time=now, step=step)
    return record


def _print_setup(hps, runner):
    rnn = sum(math.prod(v.shape) for v in runner.model.lstm_variables)
    total = sum(math.prod(v.shape) for v in runner.model.trainable_variables)
    print(f"{hps.cell_type} model: {rnn:,} RNN parameters, {total:,} in all; "
          f"{runner.num_replicas} replica(s) x {hps.batch_size} rows x "
          f"{hps.num_steps} steps on {keras.backend.backend()}; vocabulary updates "
          f"{'sparse (the rows each batch reads)' if runner.sparse_vocab else 'dense'}.", flush=True)
    print(f"hparams: {json.dumps(hps.to_dict())}", flush=True)


class _StopOnSignal:
    """Turns SIGTERM and SIGINT into a request to stop after the current step
    (and save); a second signal stops at once. In the main thread only:
    elsewhere signals keep their handlers."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second one: stop now, without saving
            raise KeyboardInterrupt
        print(f"Signal {signum}: stopping after this step (again: at once, unsaved).", flush=True)
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


flags.DEFINE_string("datadir", None, "Directory in LM1B layout (see the module docstring).")
flags.DEFINE_string("logdir", None, "Run directory: checkpoints, metrics.jsonl, TensorBoard.")
flags.DEFINE_enum("mode", "train", MODES, "train, eval (--eval_steps batches) or eval_full.")
flags.DEFINE_string("hparams", "", "f-lm hparams overrides, 'k=v,k=v' (see lm1b/hparams.py).")
flags.DEFINE_string("preset", None, "A paper configuration, e.g. BIGLSTM, BIG_G4 (lm1b.hparams.PRESETS).")
flags.DEFINE_integer("num_gpus", None, "Replicas; default: the visible GPUs, or 1. "
                     "Without GPUs, N > 1 runs N replicas on CPU devices.")
flags.DEFINE_integer("eval_steps", 70, "Held-out batches evaluated in --mode eval.")
flags.DEFINE_integer("log_every", 20, "Print and log the training loss every this many steps.")
flags.DEFINE_integer("seed", 0, "Seed of weights, dropout, sampling and data order.")
flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept in --logdir (>= 1).")
flags.DEFINE_enum("data_errors", "strict", data.DECODE_ERRORS,
                  "Invalid UTF-8 in the corpus: strict stops with the file and line; "
                  "replace reads the bad bytes as U+FFFD.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        run(Options(**{f.name: flags.FLAGS[f.name].value for f in dataclasses.fields(Options)}))
    except (TrainingDiverged, ValueError) as e:
        sys.exit(f"ERROR: {e}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["datadir", "logdir"])
    app.run(main)
