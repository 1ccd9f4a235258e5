"""Words/s of the full lm1b training step at the paper's true size (JAX backend, DataParallel).

    KERAS_BACKEND=jax python benchmarks/lm_step.py --num_gpus 1,4 --out benchmarks/results/lm_step_h200.json

The step is lm1b's own (`lm1b.runners.JaxRunner.train_step`): embedding,
2 recurrent layers, sampled softmax over V = 793,470 with 8,192 samples,
f-lm's gradient scaling, clipping of the LSTM gradients, Adagrad, and the
EMA of the LSTM weights. `--vocab_updates sparse,dense` times each model
with the runner's sparse vocabulary updates (the default) and with dense
ones (the whole V×d gradients, all-reduced and applied); `--unroll
false,true` times each model with its recurrence looped (lm1b's default)
and unrolled (`unroll=true`); `--lstm_update sharded,replicated` times each
model on several GPUs with the runner's sharded LSTM update (its default)
and with the replicated one, the same step as on one GPU, where nothing is
sharded and the model runs once. Settings are the
paper's (`--preset` values of lm1b/hparams.py): emb = p = 1024, n = 8192,
batch 256 per GPU, 20 steps. Inputs are random word ids (the step's cost
does not depend on them).

Each model's words/s is measured the way lm1b/train.py dispatches the step:
`--steps` steps back to back and the loss read after the last one (the
trainer reads it every log_every steps), median of `--windows` such windows
after warm-up; unlike the trainer, every step reuses one batch already on
the devices (`benchmarks/input_pipeline.py` times the input).
`words_per_s_waited` also gives the median of `--steps` single steps, each
waited for before the next is dispatched: that adds the host's dispatch
time to every step. The ratio is over BIGLSTM in the same run, and with
`--num_gpus 1,4` the scaling is over the same model on one GPU of the same
machine, in the same run. The JSON also holds every model's exact RNN
parameter count (paper Table 1), the paper's figures, and the model's GEMM
FLOP/s per GPU (`LanguageModel.train_flops_per_word` times words/s), to set
against the GPU's peak.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lm1b.hparams import HParams  # noqa: E402
from lm1b.runners import JaxRunner  # noqa: E402
from machine_info import command_line  # noqa: E402
from rnn_throughput import matmul_precision  # noqa: E402

# Paper Table 1 (4×V100): words/s and RNN parameters.
PAPER = {
    "BIGLSTM": {"words_per_s": 33_800, "rnn_params": 151_060_480},
    "BIG_F512": {"words_per_s": 56_500, "rnn_params": 52_494_336},
    "BIG_G2": {"words_per_s": 41_700, "rnn_params": 83_951_616},
    "BIG_G4": {"words_per_s": 56_000, "rnn_params": 50_397_184},
    "BIG_G8": {"words_per_s": 58_500, "rnn_params": 33_619_968},
    "BIG_G4_G8": {"words_per_s": None, "rnn_params": None},
}


def make_step(preset, vocab_updates, num_gpus, args, unroll, lstm_update):
    """(runner, step): lm1b's JaxRunner for one Table 1 model, and a function
    that runs one training step on a fixed random batch; ``step()`` waits for
    it, ``step(wait=False)`` only dispatches it and returns its loss sum."""
    overrides = (f"num_gpus={num_gpus},vocab_size={args.vocab_size},batch_size={args.batch_size},"
                 f"unroll={unroll}")
    hps = HParams.from_preset(preset, ",".join(filter(None, [overrides, args.hparams])))
    keras.config.set_dtype_policy("mixed_bfloat16" if args.dtype == "bf16" else "float32")
    try:
        runner = JaxRunner(hps, sparse_vocab=vocab_updates == "sparse",
                           # the runner's default: sharded only on several GPUs
                           shard_lstm=None if lstm_update == "sharded" else False)
    finally:
        keras.config.set_dtype_policy("float32")
    batch = random_batch(runner)

    def step(wait=True):
        loss_sum, _ = runner.train_step(batch)
        if wait:
            float(loss_sum)  # blocks until the step is done
        return loss_sum

    return runner, step


def random_batch(runner):
    """The fixed batch `make_step`'s steps run on: random word ids (seed 0)
    for every GPU, targets the inputs shifted by one, all weights 1; sharded."""
    hps = runner.hps
    rows = hps.batch_size * hps.num_gpus
    x = np.random.default_rng(0).integers(0, hps.vocab_size, (rows, hps.num_steps)).astype("int32")
    return tuple(runner.shard(a) for a in (x, np.roll(x, -1, axis=1), np.ones(x.shape, "float32")))


def time_model(preset, vocab_updates, num_gpus, args, unroll, lstm_update):
    runner, step = make_step(preset, vocab_updates, num_gpus, args, unroll, lstm_update)
    hps = runner.hps
    rows = hps.batch_size * num_gpus

    start = time.perf_counter()
    step()
    compile_s = time.perf_counter() - start
    for _ in range(args.warmup):
        step()
    windows = []
    for _ in range(args.windows):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss_sum = step(wait=False)
        float(loss_sum)
        windows.append((time.perf_counter() - t0) / args.steps)
    seconds = statistics.median(windows)
    waited = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        waited.append(time.perf_counter() - t0)
    waited_seconds = statistics.median(waited)
    rnn_params = sum(rnn.count_params() for rnn in runner.model.rnns)
    flops_per_word = runner.model.train_flops_per_word()
    words = rows * hps.num_steps
    words_per_s_per_gpu = words / seconds / num_gpus
    return {
        "model": preset,
        "num_gpus": num_gpus,
        "vocab_updates": vocab_updates,
        # What the layers were built with, not just what was asked for.
        "unroll": all(rnn.unroll for rnn in runner.model.rnns),
        "lstm_update": "sharded" if runner.shard_lstm else "replicated",
        "words_per_s": words / seconds,
        "words_per_s_per_gpu": words_per_s_per_gpu,
        "step_ms": round(1000 * seconds, 2),
        "words_per_s_waited": words / waited_seconds,
        "step_ms_waited": round(1000 * waited_seconds, 2),
        "compile_s": round(compile_s, 1),
        "rnn_params": rnn_params,
        "train_flops_per_word": flops_per_word,
        "model_tflops_per_gpu": round(words_per_s_per_gpu * flops_per_word / 1e12, 1),
        "paper_words_per_s_4xV100": PAPER[preset]["words_per_s"],
    }


def _compare(rows):
    """Adds each row's ratio over BIGLSTM (same GPU count, vocabulary
    updates, unroll and LSTM update), over the fastest BIGLSTM of that GPU
    count and vocabulary updates (looped or unrolled, sharded or replicated:
    the strongest baseline), and its scaling over the same model on one GPU."""
    paper_base = PAPER["BIGLSTM"]["words_per_s"]
    for r in rows:
        bases = [b["words_per_s"] for b in rows if b["model"] == "BIGLSTM" and
                 (b["num_gpus"], b["vocab_updates"]) == (r["num_gpus"], r["vocab_updates"])]
        r["ratio_vs_fastest_biglstm"] = round(r["words_per_s"] / max(bases), 3) if bases else None
        same = [b for b in rows if (b["vocab_updates"], b["unroll"]) == (r["vocab_updates"], r["unroll"])]
        base = next((b for b in same if b["model"] == "BIGLSTM" and b["num_gpus"] == r["num_gpus"]
                     and b["lstm_update"] == r["lstm_update"]), None)
        one = next((b for b in same if b["model"] == r["model"] and b["num_gpus"] == 1), None)
        r["ratio_vs_biglstm"] = round(r["words_per_s"] / base["words_per_s"], 3) if base else None
        r["scaling_vs_1_gpu"] = (round(r["words_per_s"] / one["words_per_s"], 3)
                                 if one and r["num_gpus"] > 1 else None)
        r["scaling_vs_1_gpu_waited"] = (round(r["words_per_s_waited"] / one["words_per_s_waited"], 3)
                                        if one and r["num_gpus"] > 1 else None)
        paper = PAPER[r["model"]]["words_per_s"]
        r["paper_ratio_vs_biglstm"] = round(paper / paper_base, 3) if paper else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(PAPER))
    parser.add_argument("--num_gpus", default="1", help="GPU counts to time, e.g. 1,4")
    parser.add_argument("--vocab_updates", default="sparse", help="sparse, dense, or both: sparse,dense")
    parser.add_argument("--unroll", default="false",
                        help="the recurrence looped (false, lm1b's default), unrolled (true), or both: false,true")
    parser.add_argument("--lstm_update", default="sharded",
                        help="on several GPUs, the runner's sharded LSTM update (its default), replicated, "
                             "or both: sharded,replicated")
    parser.add_argument("--dtype", choices=["fp32", "tf32", "bf16"], default="bf16",
                        help="bf16: mixed_bfloat16; tf32: float32 with TF32 matmuls; fp32: float32, TF32 off "
                             "(the paper's precision)")
    parser.add_argument("--vocab_size", type=int, default=793_470)
    parser.add_argument("--batch_size", type=int, default=256, help="per GPU")
    parser.add_argument("--hparams", default="", help="extra k=v overrides (e.g. for a small smoke run)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed window")
    parser.add_argument("--windows", type=int, default=5, help="timed windows (median)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    # Checked before any model is timed: a misspelt name would otherwise
    # fail only after the models before it had run.
    unknown = [m for m in args.models.split(",") if m not in PAPER]
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)}; the Table 1 models are {', '.join(PAPER)}")
    bad = set(args.vocab_updates.split(",")) - {"sparse", "dense"}
    if bad:
        parser.error(f"--vocab_updates takes sparse, dense or sparse,dense; got {args.vocab_updates!r}")
    lstm_updates = args.lstm_update.split(",")
    if set(lstm_updates) - {"sharded", "replicated"} or len(set(lstm_updates)) < len(lstm_updates):
        parser.error(f"--lstm_update takes sharded, replicated or sharded,replicated; got {args.lstm_update!r}")
    try:  # read as the hparam is, so the two accept the same spellings
        unrolls = [HParams.parse(f"unroll={u}").unroll for u in args.unroll.split(",")]
    except ValueError as e:
        parser.error(f"--unroll takes one value or two joined by ',' (e.g. false,true): {e}")
    try:
        gpu_counts = [int(n) for n in args.num_gpus.split(",")]
    except ValueError:
        parser.error(f"--num_gpus takes a comma-separated list of GPU counts, e.g. 1,4; got {args.num_gpus!r}")
    if keras.backend.backend() != "jax":
        parser.error("run with KERAS_BACKEND=jax: this measures the JAX DataParallel step")
    import jax

    result = {
        # NCCL_NVLS_ENABLE=0 in recorded commands is the lent machines' own setting.
        "command": command_line("jax"),
        "machine": f"{len(jax.devices())}x {jax.devices()[0].device_kind}",
        "backend": "jax",
        "dtype": args.dtype,
        "lstm_update": args.lstm_update,
        "shapes": {"vocab": args.vocab_size, "emb": 1024, "proj": 1024, "state": 8192, "layers": 2,
                   "num_sampled": 8192, "batch_per_gpu": args.batch_size, "num_steps": 20},
        "timing": (f"{args.warmup} warm-up steps; words_per_s: median of {args.windows} windows of "
                   f"{args.steps} steps dispatched back to back; words_per_s_waited: median of "
                   f"{args.steps} steps each waited for"),
        "host": platform.node(),
        "rows": [],
    }
    print(f"{'model':10s} {'GPUs':>4s} {'vocab':>6s} {'unroll':>6s} {'update':>10s} {'words/s':>10s} {'per GPU':>10s} {'vs BIGLSTM':>10s} {'vs fastest':>10s} "
          f"{'scaling':>8s} {'waited':>10s} {'scaling':>8s} {'paper':>8s} {'RNN params':>12s} {'TFLOP/s/GPU':>11s}",
          flush=True)
    # A model's looped and unrolled (sharded and replicated) steps run one
    # after the other (with BIGLSTM first, the fastest BIGLSTM is known when
    # the other models' rows are printed; the final ratios are printed at the
    # end). One GPU has no LSTM update to shard: its step is timed once.
    runs = [(m, v, n, u, s) for n in gpu_counts for v in args.vocab_updates.split(",")
            for m in args.models.split(",") for u in unrolls
            for s in (lstm_updates if n > 1 else ["replicated"])]
    for preset, vocab_updates, num_gpus, unroll, lstm_update in runs:
        with matmul_precision(args.dtype):  # the step compiles on its first call, inside
            row = time_model(preset, vocab_updates, num_gpus, args, unroll, lstm_update)
        result["rows"].append(row)
        _compare(result["rows"])
        ratio = f"{row['ratio_vs_biglstm']:.2f}x" if row["ratio_vs_biglstm"] else "-"
        fastest = f"{row['ratio_vs_fastest_biglstm']:.2f}x" if row["ratio_vs_fastest_biglstm"] else "-"
        scaling = f"{row['scaling_vs_1_gpu']:.2f}x" if row["scaling_vs_1_gpu"] else "-"
        waited = f"{row['scaling_vs_1_gpu_waited']:.2f}x" if row["scaling_vs_1_gpu_waited"] else "-"
        print(f"{preset:10s} {num_gpus:4d} {vocab_updates:>6s} {str(unroll).lower():>6s} {row['lstm_update']:>10s} "
              f"{row['words_per_s']:10,.0f} "
              f"{row['words_per_s_per_gpu']:10,.0f} {ratio:>10s} {fastest:>10s} {scaling:>8s} "
              f"{row['words_per_s_waited']:10,.0f} {waited:>8s} "
              f"{row['paper_words_per_s_4xV100'] or 0:8,} {row['rnn_params']:12,} "
              f"{row['model_tflops_per_gpu']:11.1f}", flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)
        keras.backend.clear_session()
    if len(unrolls) > 1 or len(lstm_updates) > 1:
        print("\nwords/s over the fastest BIGLSTM of the same GPU count, final:")
        for r in result["rows"]:
            fastest = r["ratio_vs_fastest_biglstm"]
            print(f"{r['model']:10s} {r['num_gpus']:4d} {r['vocab_updates']:>6s} {str(r['unroll']).lower():>6s} "
                  f"{r['lstm_update']:>10s} "
                  f"{f'{fastest:.3f}x' if fastest else '-':>10s}")


if __name__ == "__main__":
    main()
