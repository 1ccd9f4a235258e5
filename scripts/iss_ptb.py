#!/usr/bin/env python3
"""Wen et al.'s ISS recipe on a PTB-style corpus: baseline, ISS, prune, fine-tune, direct design.

The model is Zaremba et al.'s "large" word LM: Embedding(V, H) -> 2 stacked
LSTMs of H units (keras_flstm LSTMP layers without projection, stateful:
truncated BPTT over `--num_steps`) -> Dense(V), with dropout on the
embedding and on every LSTM output. Settings (defaults): H = 1500, 35 steps,
batch 20, weights uniform in ±0.04 (biases 0, no forget bias), SGD lr 1.0 with
the gradient's global norm clipped to 10. The loss is the sum over the 35
steps of the batch-mean cross entropy (so λ means what it means in the paper).

Phases, each optional through its epoch count:

1. baseline: keep 0.35; lr 1.0, × `--lr_decay` (1/1.15) per epoch from
   epoch `--decay_start` (14) on.
2. ISS: starts from the baseline (as Wen et al.'s run.sh; `--iss_init
   scratch` to start fresh), keep 0.6, loss + λ·Σ_k ‖component_k‖₂ with
   λ = 0.00245, and `iss.ZeroOut(1e-4)` after every batch; lr 1.0 × 0.1 every
   epochs//3 epochs (their "sparselarge" schedule). The decays matter: on
   our H200 runs units reached exact zeros only after the first one
   (docs/iss.md).
3. prune: `iss.prune` builds the smaller dense model (same perplexity).
4. fine-tune (optional, `--finetune_epochs`): the pruned model, no penalty,
   lr `--finetune_lr` × `--finetune_lr_decay` per epoch.
5. direct design: the pruned sizes trained from scratch (keep 0.55, the
   baseline's schedule).

`--strength` may list several λ (`0.002,0.004`): phases 2-4 then run for
each from the same baseline, and the direct design and timing use the run
that cuts the most hidden units within `--ppl_budget` (1%) of the
baseline's validation perplexity (or, if none does, the lowest perplexity).

Reports hidden sizes, parameter counts, mult-adds per word, valid/test
perplexity (token-weighted, state carried across batches, batch 20 × 35
steps), and the inference time of the whole model at batch 10 × 30 steps
(jitted forward pass, median of `--timing_runs`) before and after pruning,
with the speedup, on the current backend's default device and, on JAX with
an accelerator, on the CPU too. Writes all of it as JSON to `--out`.

Data (`--data_dir`): one sentence per line, words split on whitespace,
`<eos>` appended to every line (as Zaremba's reader). Either
`ptb.{train,valid,test}.txt`, `{train,valid,test}.txt`, or the LM1B layout
of scripts/prepare_corpus.py (training shards -> train, heldout shard 00000
-> test, the other heldout shards -> valid; with a single heldout shard its
first half is valid and its second half test). The vocabulary is the
`--max_vocab` most frequent training words (<unk> for the rest).

Smoke test (CPU, a minute):

    python scripts/iss_ptb.py --data_dir data/tiny_corpus --hidden 64 \\
        --epochs 1 --max_steps 50 --out /tmp/iss_smoke.json
"""

import argparse
import collections
import glob
import json
import math
import os
import platform
import sys
import time

import keras
import numpy as np
from keras import ops

from keras_flstm import LSTMP
from keras_flstm import iss

# The paper's PTB numbers (Wen et al., ICLR 2018, Table 1), for the JSON.
PAPER = {
    "baseline": {"keep": 0.35, "valid": 82.57, "test": 78.57, "hidden": [1500, 1500], "params": 66.0e6, "time_ms": 157.0},
    "iss": {"keep": 0.6, "valid": 82.59, "test": 78.65, "hidden": [373, 315], "params": 21.8e6, "time_ms": 14.82, "speedup": 10.59, "mult_add_reduction": 7.48},
    "direct_design": {"keep": 0.55, "valid": 90.31, "test": 85.66, "hidden": [373, 315], "params": 21.8e6},
}


# --- data ------------------------------------------------------------------


def _read_lines(paths):
    lines = []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines.extend(line.split() for line in f)
    return [words for words in lines if words]


def load_splits(data_dir):
    """(train, valid, test) lists of tokenized sentences from `data_dir`."""
    for prefix in ("ptb.", ""):
        names = [os.path.join(data_dir, f"{prefix}{split}.txt") for split in ("train", "valid", "test")]
        if all(os.path.isfile(name) for name in names):
            return tuple(_read_lines([name]) for name in names)
    train = sorted(glob.glob(os.path.join(data_dir, "training-monolingual.tokenized.shuffled", "*")))
    heldout = sorted(glob.glob(os.path.join(data_dir, "heldout-monolingual.tokenized.shuffled", "*")))
    if not train or not heldout:
        raise SystemExit(
            f"--data_dir={data_dir!r} holds neither ptb.{{train,valid,test}}.txt, "
            "{train,valid,test}.txt nor the LM1B layout of "
            "scripts/prepare_corpus.py. Point it at a PTB-style directory."
        )
    if len(heldout) == 1:
        lines = _read_lines(heldout)
        half = len(lines) // 2
        return _read_lines(train), lines[:half], lines[half:]
    return _read_lines(train), _read_lines(heldout[1:]), _read_lines(heldout[:1])


def build_vocab(train, max_vocab):
    counts = collections.Counter(word for words in train for word in words)
    counts["<eos>"] = len(train)
    counts.pop("<unk>", None)
    # Most frequent first, ties by word; <unk> takes the last slot.
    words = sorted(counts, key=lambda w: (-counts[w], w))[: max_vocab - 1]
    return {word: i for i, word in enumerate(words + ["<unk>"])}


def to_ids(sentences, vocab):
    unk = vocab["<unk>"]
    return np.array(
        [vocab.get(word, unk) for words in sentences for word in words + ["<eos>"]],
        dtype=np.int32,
    )


def batches(ids, batch_size, num_steps):
    """(x, y) of shape [num_batches·batch_size, num_steps]; batch i continues batch i-1.

    As Zaremba's `ptb_producer`: the stream is cut into `batch_size` rows,
    and batch i holds window i of every row, so a stateful model carries
    each row's state from one batch to the next.
    """
    row_len = len(ids) // batch_size
    rows = ids[: row_len * batch_size].reshape(batch_size, row_len)
    num_batches = (row_len - 1) // num_steps
    if num_batches < 1:
        raise SystemExit(
            f"A split of {len(ids)} tokens is too short for batch_size="
            f"{batch_size} × num_steps={num_steps}; use a bigger corpus or "
            "smaller --batch_size/--num_steps."
        )
    x = np.stack([rows[:, i * num_steps : (i + 1) * num_steps] for i in range(num_batches)])
    y = np.stack([rows[:, i * num_steps + 1 : (i + 1) * num_steps + 1] for i in range(num_batches)])
    return x.reshape(-1, num_steps), y.reshape(-1, num_steps)


# --- model -----------------------------------------------------------------


def build_lm(vocab_size, embed, hidden, keep, init_scale, batch_size, num_steps, stateful=True):
    """Zaremba's LM: Embedding -> Dropout -> [LSTM -> Dropout]* -> Dense."""
    init = keras.initializers.RandomUniform(-init_scale, init_scale)
    rate = 1.0 - keep
    inputs = keras.Input(batch_shape=(batch_size, num_steps), dtype="int32")
    x = keras.layers.Embedding(vocab_size, embed, embeddings_initializer=init)(inputs)
    x = keras.layers.Dropout(rate)(x)
    for i, units in enumerate(hidden):
        x = LSTMP(
            units,
            return_sequences=True,
            stateful=stateful,
            kernel_initializer=init,
            recurrent_initializer=init,
            unit_forget_bias=False,
            name=f"lstm{i + 1}",
        )(x)
        x = keras.layers.Dropout(rate)(x)
    logits = keras.layers.Dense(vocab_size, kernel_initializer=init, name="softmax")(x)
    return keras.Model(inputs, logits)


def hidden_sizes(model):
    return [layer.cell.units for layer in model.layers if isinstance(layer, keras.layers.RNN)]


def mult_adds_per_word(embed, hidden, vocab_size):
    """Multiply-adds of the matrix products per word: 4n(d+n) per LSTM, n·V for the softmax."""
    total, d = 0, embed
    for n in hidden:
        total += 4 * n * (d + n)
        d = n
    return total + d * vocab_size


def sequence_loss(y_true, logits):
    """Per sequence, the sum over steps of the cross entropy; fit averages it over the batch."""
    ce = keras.losses.sparse_categorical_crossentropy(y_true, logits, from_logits=True)
    return ops.sum(ce, axis=-1)


def reset_states(model):
    for layer in model.layers:
        if isinstance(layer, keras.layers.RNN) and layer.stateful:
            layer.reset_state()


# --- training --------------------------------------------------------------


class Progress(keras.callbacks.Callback):
    """Prints perplexity, penalty and words/s every `every` batches; stops at a deadline."""

    def __init__(self, phase, epoch, num_batches, words_per_batch, num_steps, every, deadline):
        super().__init__()
        self.phase, self.epoch, self.num_batches = phase, epoch, num_batches
        self.words_per_batch, self.num_steps, self.every = words_per_batch, num_steps, every
        self.deadline = deadline
        self.batches = 0

    def on_train_begin(self, logs=None):
        self.last_time, self.last_batch = time.time(), 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches = batch + 1
        now = time.time()
        if self.batches % self.every == 0 or self.batches == self.num_batches:
            logs = logs or {}
            # The logged loss includes λΩ; the perplexity is of the data loss.
            penalty = float(logs.get("group_lasso", 0.0))
            ppl = math.exp(min((float(logs.get("loss", 0.0)) - penalty) / self.num_steps, 50.0))
            rate = self.words_per_batch * (self.batches - self.last_batch) / (now - self.last_time)
            print(
                f"[{self.phase}] epoch {self.epoch + 1} step {self.batches}/{self.num_batches}  "
                f"train ppl {ppl:8.2f}" + (f"  λΩ {penalty:.3f}" if "group_lasso" in logs else "")
                + f"  {rate:,.0f} words/s" + (" (incl. compile)" if self.last_batch == 0 and self.epoch == 0 else ""),
                flush=True,
            )
            self.last_time, self.last_batch = now, self.batches
        if now > self.deadline:
            self.model.stop_training = True


def perplexity(model, x, y, batch_size, num_steps):
    if not model.compiled:  # a pruned model, or one trained inside GroupLasso
        model.compile(loss=sequence_loss)
    reset_states(model)
    loss = model.evaluate(x, y, batch_size=batch_size, verbose=0, return_dict=True)["loss"]
    reset_states(model)
    return math.exp(loss / num_steps)


def train(phase, model, data, args, epochs, lr_at, strength=0.0):
    """Trains `model` for `epochs` (capped by --max_steps and the phase's minutes); returns stats."""
    (x, y), (xv, yv) = data["train"], data["valid"]
    b, t = args.batch_size, args.num_steps
    trainer = iss.GroupLasso(model, strength) if strength > 0 else model
    optimizer = keras.optimizers.SGD(learning_rate=lr_at(0), global_clipnorm=args.max_grad_norm)
    trainer.compile(optimizer=optimizer, loss=sequence_loss)
    callbacks = [iss.ZeroOut(args.zero_threshold)] if strength > 0 else []
    num_batches = len(x) // b
    minutes = args.iss_minutes if phase == "iss" and args.iss_minutes is not None else args.phase_minutes
    deadline = time.time() + 60 * minutes
    stats = {"epochs": [], "steps": 0, "seconds": 0.0}
    for epoch in range(epochs):
        steps = min(num_batches, args.max_steps - stats["steps"]) if args.max_steps else num_batches
        if steps <= 0 or time.time() > deadline:
            break
        optimizer.learning_rate.assign(lr_at(epoch))
        reset_states(model)
        progress = Progress(phase, epoch, steps, b * t, t, args.log_every, deadline)
        start = time.time()
        trainer.fit(
            x[: steps * b], y[: steps * b], batch_size=b, epochs=1, shuffle=False,
            verbose=0, callbacks=[*callbacks, progress],
        )
        seconds = time.time() - start
        stats["steps"] += progress.batches
        stats["seconds"] += seconds
        valid = perplexity(model, xv, yv, b, t)
        record = {"epoch": epoch + 1, "lr": round(lr_at(epoch), 6), "steps": progress.batches,
                  "seconds": round(seconds, 2), "words_per_s": round(progress.batches * b * t / seconds),
                  "valid_ppl": round(valid, 3)}
        if strength > 0:
            report = iss.sparsity_report(model)
            record["alive"] = [len(layer.alive) for layer in report.layers]
            record["penalty"] = round(float(trainer.penalty()), 4)
        stats["epochs"].append(record)
        print(f"[{phase}] epoch {epoch + 1} done: " + ", ".join(f"{k} {v}" for k, v in record.items()), flush=True)
    return stats


def evaluate(name, model, data, args, embed, vocab_size):
    b, t = args.batch_size, args.num_steps
    hidden = hidden_sizes(model)
    result = {
        "hidden": hidden,
        "params": int(model.count_params()),
        "mult_adds_per_word": mult_adds_per_word(embed, hidden, vocab_size),
        "valid_ppl": round(perplexity(model, *data["valid"], b, t), 3),
        "test_ppl": round(perplexity(model, *data["test"], b, t), 3),
    }
    print(f"[{name}] hidden {hidden}, {result['params']:,} params, valid ppl {result['valid_ppl']}, test ppl {result['test_ppl']}", flush=True)
    return result


# --- inference timing --------------------------------------------------------


def forward_fn(model, device=None):
    """A compiled forward pass `f(x)` that returns when the logits are computed
    (on JAX, on `device` if given)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        trainable, non_trainable = jax.device_put(
            ([v.value for v in model.trainable_variables],
             [v.value for v in model.non_trainable_variables]), device)
        run = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=False)[0])
        return lambda x: run(trainable, non_trainable, jax.device_put(x, device)).block_until_ready()
    if backend == "tensorflow":
        import tensorflow as tf

        run = tf.function(lambda x: model(x, training=False), autograph=False)
        return lambda x: run(x).numpy()
    return lambda x: ops.convert_to_numpy(model(x, training=False))


def timing_devices():
    """{name: device} to time on: the default device, and the CPU as well on
    JAX with an accelerator (None: the backend's default)."""
    if keras.backend.backend() != "jax":
        return {"default": None}
    import jax

    default = jax.devices()[0]
    devices = {default.platform: default}
    devices.setdefault("cpu", jax.devices("cpu")[0])
    return devices


def inference_ms(models, embed, vocab_size, args, device=None):
    """Median ms of one forward pass of each model at batch `--timing_batch` × `--timing_steps`.

    The models run in turns, so that load from other processes falls on all
    of them alike.
    """
    b, t = args.timing_batch, args.timing_steps
    x = np.random.default_rng(0).integers(0, vocab_size, (b, t)).astype(np.int32)
    runs = []
    for model in models:
        copy = build_lm(vocab_size, embed, hidden_sizes(model), 1.0, 0.04, b, t, stateful=False)
        copy.set_weights(model.get_weights())
        runs.append(forward_fn(copy, device))
        for _ in range(3):  # compile and warm up
            runs[-1](x)
    times = [[] for _ in runs]
    for _ in range(args.timing_runs):
        for run, spent in zip(runs, times):
            start = time.perf_counter()
            run(x)
            spent.append(1000 * (time.perf_counter() - start))
    return [float(np.median(spent)) for spent in times]


def machine():
    info = {"node": platform.node(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "backend": keras.backend.backend(), "keras": keras.__version__, "python": platform.python_version()}
    if keras.backend.backend() == "jax":
        import jax

        info["jax"] = jax.__version__
        info["devices"] = [str(d.device_kind) for d in jax.devices()]
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
        info["devices"] = [d.name for d in tf.config.list_logical_devices()]
    return info


# --- main ------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True)
    p.add_argument("--out", required=True, help="JSON file for the results.")
    p.add_argument("--hidden", type=int, default=1500, help="LSTM units per layer, and the embedding size.")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--max_vocab", type=int, default=10000)
    p.add_argument("--num_steps", type=int, default=35)
    p.add_argument("--batch_size", type=int, default=20)
    p.add_argument("--init_scale", type=float, default=0.04)
    p.add_argument("--max_grad_norm", type=float, default=10.0)
    p.add_argument("--lr", type=float, default=1.0)
    p.add_argument("--lr_decay", type=float, default=1 / 1.15, help="Per-epoch decay of the baseline and direct design.")
    p.add_argument("--decay_start", type=int, default=14, help="Epochs at full lr before --lr_decay applies.")
    p.add_argument("--epochs", type=int, default=55, help="Epochs of the baseline, ISS and direct-design phases.")
    p.add_argument("--baseline_epochs", type=int, help="Overrides --epochs for the baseline (0 skips it).")
    p.add_argument("--iss_epochs", type=int, help="Overrides --epochs for ISS.")
    p.add_argument("--direct_epochs", type=int, help="Overrides --epochs for the direct design (0 skips it).")
    p.add_argument("--finetune_epochs", type=int, default=0)
    p.add_argument("--finetune_lr", type=float, default=0.1)
    p.add_argument("--finetune_lr_decay", type=float, default=1.0, help="Per-epoch factor of the fine-tuning lr.")
    p.add_argument("--keep", type=float, default=0.35, help="Baseline dropout keep probability.")
    p.add_argument("--iss_keep", type=float, default=0.6)
    p.add_argument("--direct_keep", type=float, default=0.55)
    p.add_argument("--strength", type=_strengths, default=[0.00245],
                   help="Group-lasso λ, or a comma-separated list of λ to sweep.")
    p.add_argument("--ppl_budget", type=float, default=0.01,
                   help="Relative validation-perplexity rise over the baseline a sweep's pick may have.")
    p.add_argument("--zero_threshold", type=float, default=1e-4)
    p.add_argument("--iss_init", choices=["baseline", "scratch"], default="baseline")
    p.add_argument("--iss_lr_decay", type=float, default=0.1, help="ISS lr factor every max(epochs//3, 1) epochs.")
    p.add_argument("--prune_threshold", type=float, default=0.0)
    p.add_argument("--max_steps", type=int, default=0, help="Cap on training batches per phase (0: none).")
    p.add_argument("--phase_minutes", type=float, default=1e9, help="Cap on the training time of each phase.")
    p.add_argument("--iss_minutes", type=float, help="Overrides --phase_minutes for the ISS phase.")
    p.add_argument("--log_every", type=int, default=100)
    p.add_argument("--timing_batch", type=int, default=10)
    p.add_argument("--timing_steps", type=int, default=30)
    p.add_argument("--timing_runs", type=int, default=20)
    p.add_argument("--save_dir", help="Saves the baseline, ISS, pruned and direct models (.keras) here.")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _strengths(text):
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected λ values like 0.00245 or 0.002,0.004; got {text!r}")
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"every λ must be > 0 (the penalty's strength); got {text!r}")
    return values


def pick(runs, baseline_ppl, budget):
    """The run that cuts the most hidden units with a final validation
    perplexity within `budget` of the baseline's; else the lowest perplexity."""
    within = [r for r in runs if r["final"]["valid_ppl"] <= baseline_ppl * (1 + budget)]
    if within:
        return min(within, key=lambda r: (sum(r["final"]["hidden"]), r["final"]["valid_ppl"]))
    return min(runs, key=lambda r: r["final"]["valid_ppl"])


def main(argv=None):
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    started = time.time()
    train_lines, valid_lines, test_lines = load_splits(args.data_dir)
    vocab = build_vocab(train_lines, args.max_vocab)
    v = len(vocab)
    b, t, h = args.batch_size, args.num_steps, args.hidden
    data = {name: batches(to_ids(lines, vocab), b, t) for name, lines in
            (("train", train_lines), ("valid", valid_lines), ("test", test_lines))}
    sizes = {name: int(x.size) for name, (x, _) in data.items()}
    print(f"backend {keras.backend.backend()}, vocab {v}, tokens per split {sizes}, "
          f"{len(data['train'][0]) // b} batches per epoch", flush=True)
    epochs = {phase: getattr(args, f"{phase}_epochs") if getattr(args, f"{phase}_epochs") is not None else args.epochs
              for phase in ("baseline", "iss", "direct")}

    def zaremba(epoch):
        return args.lr * args.lr_decay ** max(epoch + 1 - args.decay_start, 0)

    def iss_schedule(epoch):
        return args.lr * args.iss_lr_decay ** (epoch // max(epochs["iss"] // 3, 1))

    def save(model, name):
        if args.save_dir:
            os.makedirs(args.save_dir, exist_ok=True)
            model.save(os.path.join(args.save_dir, f"{name}.keras"))

    results = {"command": " ".join([sys.executable, *sys.argv]), "backend": keras.backend.backend(), "machine": machine(),
               "args": vars(args), "vocab": v, "tokens": sizes, "paper": PAPER}

    def build(hidden, keep):
        return build_lm(v, h, hidden, keep, args.init_scale, b, t)

    baseline = build([h] * args.layers, args.keep)
    if epochs["baseline"] > 0:
        results["baseline_training"] = train("baseline", baseline, data, args, epochs["baseline"], zaremba)
    results["baseline"] = evaluate("baseline", baseline, data, args, h, v)
    save(baseline, "baseline")

    runs = []
    for strength in args.strength:
        tag = f"λ={strength:g}"
        model = build([h] * args.layers, args.iss_keep)
        if args.iss_init == "baseline":
            model.set_weights(baseline.get_weights())
        run = {"strength": strength}
        run["iss_training"] = train("iss", model, data, args, epochs["iss"], iss_schedule, strength)
        report = iss.sparsity_report(model)
        print(report, flush=True)
        run["sparsity"] = report.as_dict()
        run["iss"] = evaluate(f"iss {tag}", model, data, args, h, v)
        pruned = iss.prune(model, args.prune_threshold)
        run["pruned"] = evaluate(f"pruned {tag}", pruned, data, args, h, v)
        run["final"] = run["pruned"]
        if args.finetune_epochs > 0:
            run["finetune_training"] = train("finetune", pruned, data, args, args.finetune_epochs,
                                             lambda epoch: args.finetune_lr * args.finetune_lr_decay ** epoch)
            run["finetuned"] = run["final"] = evaluate(f"finetuned {tag}", pruned, data, args, h, v)
        run["models"] = (model, pruned)
        runs.append(run)
    best = pick(runs, results["baseline"]["valid_ppl"], args.ppl_budget)
    print(f"picked λ={best['strength']:g}: hidden {best['final']['hidden']}, "
          f"valid ppl {best['final']['valid_ppl']}", flush=True)
    model, pruned = best.pop("models")
    for run in runs:
        run.pop("models", None)
    results["iss_runs"] = runs
    results.update({k: best[k] for k in ("strength", "sparsity", "iss", "pruned", "finetuned") if k in best})
    save(model, "iss")
    save(pruned, "finetuned" if args.finetune_epochs > 0 else "pruned")
    small = hidden_sizes(pruned)

    if epochs["direct"] > 0:
        direct = build(small, args.direct_keep)
        results["direct_training"] = train("direct", direct, data, args, epochs["direct"], zaremba)
        results["direct_design"] = evaluate("direct", direct, data, args, h, v)
        save(direct, "direct")

    results["inference"] = {"batch": args.timing_batch, "steps": args.timing_steps, "runs": args.timing_runs}
    mult_add_reduction = results["baseline"]["mult_adds_per_word"] / results["pruned"]["mult_adds_per_word"]
    for name, device in timing_devices().items():
        before, after = inference_ms([baseline, pruned], h, v, args, device)
        results["inference"][name] = {"baseline_ms": round(before, 3), "pruned_ms": round(after, 3),
                                      "speedup": round(before / after, 3)}
        print(f"inference on {name} at batch {args.timing_batch} × {args.timing_steps} steps: baseline "
              f"{before:.3f} ms, pruned {after:.3f} ms, speedup {before / after:.2f}×; hidden "
              f"{[h] * args.layers} -> {small}", flush=True)
    results["inference"]["mult_add_reduction"] = round(mult_add_reduction, 3)
    results["total_seconds"] = round(time.time() - started, 1)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
