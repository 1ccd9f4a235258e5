"""Inference time of an ISS-pruned LM against its unpruned baseline, at Wen et al.'s batch 10 × 30 steps.

    python benchmarks/iss_inference.py --out benchmarks/results/iss_inference_cpu.json

Times `scripts/iss_ptb.py`'s model (Embedding -> LSTMs without projection
-> Dense over the vocabulary) at the baseline's and at the pruned hidden
sizes (default: our H200 run's 1500, 1500 -> 373, 395 with 10,000 words,
`docs/iss.md`), with the script's own timing: the whole jitted forward
pass, the two models in turns, median of `--runs`. The weights are random:
a dense forward pass takes the same time whatever their values. On JAX with
an accelerator it times the accelerator and the CPU.

The peer is the unpruned baseline in the same run; the JSON holds the
command, machine, backend, dtype, shapes, times, tokens/s and speedups.
"""

import argparse
import importlib.util
import json
import os

import keras

from machine_info import command_line
from machine_info import cpu_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_iss_ptb():
    spec = importlib.util.spec_from_file_location("iss_ptb", os.path.join(ROOT, "scripts", "iss_ptb.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sizes(text):
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected hidden sizes like 1500,1500; got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"hidden sizes must be >= 1; got {text!r}")
    return values


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=sizes, default=[1500, 1500], help="hidden sizes before pruning")
    parser.add_argument("--pruned", type=sizes, default=[373, 395], help="hidden sizes after pruning")
    parser.add_argument("--embed", type=int, default=1500, help="embedding size (the script's --hidden)")
    parser.add_argument("--vocab", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if len(args.baseline) != len(args.pruned):
        parser.error(f"--baseline {args.baseline} and --pruned {args.pruned} must have as many layers")

    script = load_iss_ptb()
    keras.utils.set_random_seed(0)
    models = [script.build_lm(args.vocab, args.embed, hidden, 1.0, 0.04, args.batch, args.steps, stateful=False)
              for hidden in (args.baseline, args.pruned)]
    timing = argparse.Namespace(timing_batch=args.batch, timing_steps=args.steps, timing_runs=args.runs)
    mult_adds = [script.mult_adds_per_word(args.embed, hidden, args.vocab) for hidden in (args.baseline, args.pruned)]
    result = {
        "command": command_line(keras.backend.backend()),
        "machine": {**script.machine(), "cpu": cpu_model()},
        "backend": keras.backend.backend(),
        "dtype": "float32",
        "shapes": {"vocab": args.vocab, "embed": args.embed, "batch": args.batch, "steps": args.steps,
                   "baseline_hidden": args.baseline, "pruned_hidden": args.pruned},
        "timing": f"median of {args.runs} forward passes after 3 warm-up passes, models in turns",
        "params": {"baseline": models[0].count_params(), "pruned": models[1].count_params()},
        "mult_adds_per_word": {"baseline": mult_adds[0], "pruned": mult_adds[1]},
        "mult_add_reduction": round(mult_adds[0] / mult_adds[1], 3),
        "devices": {},
    }
    tokens = args.batch * args.steps
    print(f"{'device':8s} {'baseline ms':>12s} {'pruned ms':>10s} {'speedup':>8s} {'pruned tokens/s':>16s}")
    for name, device in script.timing_devices().items():
        before, after = script.inference_ms(models, args.embed, args.vocab, timing, device)
        result["devices"][name] = {
            "baseline_ms": round(before, 3), "pruned_ms": round(after, 3), "speedup": round(before / after, 3),
            "baseline_tokens_per_s": round(1000 * tokens / before), "pruned_tokens_per_s": round(1000 * tokens / after),
        }
        print(f"{name:8s} {before:12.3f} {after:10.3f} {before / after:7.2f}x {1000 * tokens / after:16,.0f}", flush=True)
    print(f"mult-add reduction {result['mult_add_reduction']:.2f}x")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
