"""Paper Figure 2, scaled down: every variant trains for the same wall-clock time, then is evaluated.

    KERAS_BACKEND=jax python benchmarks/equal_time.py --datadir CORPUS --workdir RUNS \
        --max_time 120 --out benchmarks/results/equal_time_h200.json

Each model runs `lm1b/train.py` for `--max_time` seconds of training (its
own clock, restarts included), then `--mode eval_full` on the whole
held-out set. With `--gpus 0,1,2,3` the models train at the same time, each
alone on its own GPU of the machine (one after another by default). The
models are BIGLSTM-shaped and scaled by the same factor: emb = p = 512,
n = 2048 (the paper: 1024, 1024, 8192), with F's rank at p/2 as in F512 and
the paper's group counts. The JSON holds each model's
hparams, steps reached, final training loss and held-out perplexity, and
the path of its metrics.jsonl (for scripts/plot_curves.py).
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

from machine_info import command_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCALED = (
    "num_layers=2,emb_size=512,projected_size=512,state_size=2048,num_sampled=8192,"
    "batch_size=256,num_steps=20,learning_rate=0.2,max_grad_norm=1.0,keep_prob=0.9,"
    # EMA(0.999) lags ~1000 steps behind: in runs of a few thousand steps it
    # would measure the lag, not the model. f-lm's week-long runs did not care.
    "average_params=false"
)
MODELS = {
    "LSTMP": "",
    "F256": "fact_size=256",
    "G2": "num_of_groups=2",
    "G4": "num_of_groups=4",
    "G4-G8": "num_of_groups=4:8",
}


def merge_hparams(*specs):
    """Joins 'k=v,...' strings; a later value of a key replaces an earlier one."""
    merged = {}
    for spec in specs:
        for item in filter(None, spec.split(",")):
            key, _, value = item.partition("=")
            merged[key] = value
    return ",".join(f"{k}={v}" for k, v in merged.items())


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datadir", required=True)
    parser.add_argument("--workdir", required=True, help="one logdir per model is made here")
    parser.add_argument("--max_time", type=int, default=120, help="training seconds per model")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--extra_hparams", default="", help="appended to every model's hparams")
    parser.add_argument("--eval_datadir", default=None,
                        help="datadir for eval_full (default --datadir); its heldout-00000 shard is evaluated")
    parser.add_argument("--eval_only", action="store_true", help="evaluate the existing runs in --workdir")
    parser.add_argument("--gpus", default=None,
                        help="e.g. 0,1,2,3: train the models concurrently, one per GPU")
    parser.add_argument("--out", required=True)
    parser.add_argument("--metrics_dir", default=None, help="copy each metrics.jsonl here as MODEL.jsonl")
    args = parser.parse_args()
    vocab_path = os.path.join(args.datadir, "1b_word_vocab.txt")
    with open(vocab_path) as f:
        vocab_size = sum(1 for line in f if line.strip())
    result = {
        "command": command_line(os.environ.get("KERAS_BACKEND", "?")),
        "machine": platform.node(),
        "gpus": args.gpus or "one, models one after another",
        "max_time_s": args.max_time,
        "scaled_hparams": SCALED,
        "vocab_size": vocab_size,
        "rows": [],
    }
    runs = []
    for name in args.models.split(","):
        hparams = merge_hparams(SCALED, f"vocab_size={vocab_size}", f"max_time={args.max_time}",
                                MODELS[name], args.extra_hparams)
        logdir = os.path.join(args.workdir, name)
        common = [sys.executable, os.path.join(ROOT, "lm1b", "train.py"), "--datadir", args.datadir,
                  "--logdir", logdir, "--hparams", hparams, "--num_gpus", "1"]
        runs.append((name, hparams, logdir, common))
    try:
        gpus = gpu_list(args.gpus)
    except ValueError as e:
        parser.error(str(e))
    train_failures = {}
    if not args.eval_only:
        for name, hparams, _, _ in runs:
            print(f"=== {name}: {hparams}", flush=True)
        train_failures = run_on_gpus([common + ["--log_every", "50"] for *_, common in runs], gpus)
    # A model whose training failed is left out; the others are still
    # evaluated and written.
    trained = [run for i, run in enumerate(runs) if i not in train_failures]
    eval_data = ["--datadir", args.eval_datadir] if args.eval_datadir else []
    eval_failures = run_on_gpus([common + ["--mode", "eval_full"] + eval_data for *_, common in trained], gpus)
    failed = list(train_failures.values()) + list(eval_failures.values())
    for name, hparams, logdir, _ in trained:
        records = read_jsonl(os.path.join(logdir, "metrics.jsonl"))
        train = [r for r in records if r.get("mode", "train") == "train"]
        evals = [r for r in records if r.get("mode") == "eval"]
        row = {
            "model": name,
            "hparams": hparams,
            "steps": train[-1]["step"] if train else 0,
            "final_train_loss": train[-1]["loss"] if train else None,
            "median_wps": sorted(r["wps"] for r in train)[len(train) // 2] if train else None,
            "heldout_perplexity": evals[-1]["perplexity"] if evals else None,
            "heldout_tokens": evals[-1]["tokens"] if evals else None,
        }
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
        if args.metrics_dir:
            os.makedirs(args.metrics_dir, exist_ok=True)
            shutil.copy(os.path.join(logdir, "metrics.jsonl"), os.path.join(args.metrics_dir, f"{name}.jsonl"))
    add_ratios(result["rows"])
    result["failed"] = failed
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    if failed:
        sys.exit("training or evaluation failed (the other models are in " + args.out + "):\n"
                 + "\n".join(failed))


def gpu_list(spec):
    """``--gpus`` as a list of CUDA device ids, or ``[None]`` (no --gpus)."""
    if not spec:
        return [None]
    gpus = spec.split(",")
    if len(set(gpus)) != len(gpus) or "" in gpus:
        raise ValueError(f"--gpus={spec} must name each GPU once, e.g. --gpus=0,1,2,3.")
    return gpus


def add_ratios(rows):
    """Adds each row's perplexity, words/s and steps over LSTMP's, when LSTMP ran."""
    base = next((r for r in rows if r["model"] == "LSTMP"), None)
    if base is None:
        return
    for row in rows:
        for key, field in (("perplexity_vs_lstmp", "heldout_perplexity"), ("wps_vs_lstmp", "median_wps"),
                           ("steps_vs_lstmp", "steps")):
            ok = row[field] is not None and base[field]
            row[key] = round(row[field] / base[field], 4) if ok else None


def run_on_gpus(commands, gpus):
    """Runs the commands, at most one per GPU at a time (CUDA_VISIBLE_DEVICES);
    ``gpus=[None]`` runs them one after another on what the process sees.
    Returns {index: 'exit CODE: COMMAND'} of those that failed, once all have
    ended; if this process is interrupted, the commands still running are
    stopped."""
    pending, running, failed = list(enumerate(commands)), {}, {}
    try:
        while pending or running:
            for gpu in gpus:
                if gpu not in running and pending:
                    env = dict(os.environ) if gpu is None else {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
                    index, command = pending.pop(0)
                    running[gpu] = (index, command, subprocess.Popen(command, env=env))
            for gpu, (index, command, process) in list(running.items()):
                if process.poll() is not None:
                    del running[gpu]
                    if process.returncode:
                        failed[index] = f"exit {process.returncode}: {' '.join(command)}"
            time.sleep(0.5)
    finally:
        for *_, process in running.values():
            process.terminate()
    return failed


if __name__ == "__main__":
    main()
