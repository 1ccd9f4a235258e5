"""Profiles lm1b's JAX training step (benchmarks/lm_step.py) and says where a step's time goes.

    KERAS_BACKEND=jax python benchmarks/profile_lm_step.py --model BIGLSTM --num_gpus 4

For the first device it prints, per step: the wall time, the time some GPU
kernel runs (busy), the all-reduce (NCCL) kernel time and how much of it
runs while no other kernel does (exposed), both also per collective kind,
kernel time by the model part
whose JAX name scope launched it (the recurrent layers rnn_0, rnn_1, ...;
kernels that XLA replays from a CUDA graph carry no scope and count as
"unattributed"), and the kernels that take the most time. jax.profiler only,
no TensorFlow or TensorBoard. With ``--dump_hlo PATH`` it also writes the
compiled step's optimized HLO, where each kernel's name is a fusion's name:
what a kernel computes, and from which model code (its ``op_name``).
"""

import argparse
import collections
import glob
import json
import os
import re
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lm_step import PAPER  # noqa: E402
from lm_step import make_step  # noqa: E402
from lm_step import random_batch  # noqa: E402
from machine_info import command_line  # noqa: E402
from rnn_throughput import matmul_precision  # noqa: E402


def union_ns(intervals):
    """Total length of the union of (start, end) intervals."""
    total, reach = 0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


def scope_of(stats):
    """The model part that launched a kernel, from its JAX name scope: e.g.
    'jit(_train_step)/transpose(jvp(language_model))/rnn_1/while' -> 'rnn_1'."""
    name = stats.get("name")
    if not name:
        return "unattributed"
    parts = [p for p in re.sub(r"[a-z_]+\(|\)", "", name).split("/")[1:]
             if p and p not in ("shard_map", "language_model")]
    return parts[0] if parts else "step"


def is_collective(name):
    """Whether a GPU kernel is an NCCL collective (else it computes)."""
    return "nccl" in name.lower()


def collective_kind(name):
    """'ncclDevKernel_AllGather_RING_LL(...)' -> 'AllGather'."""
    match = re.match(r"ncclDevKernel_([A-Za-z]+)", name)
    return match.group(1) if match else name.split("(")[0]


def exposed_in_one_step(kernels, steps, min_ms=0.02):
    """[(at_ms, ms, kind)]: the spans of one step (the second of ``steps``,
    each launching the same kernels) where a collective runs and no compute
    kernel does, at least ``min_ms`` long, timed from that step's first kernel."""
    kernels = sorted(kernels, key=lambda k: k[1])
    per_step = len(kernels) // steps
    step = kernels[per_step: 2 * per_step] if steps > 1 else kernels
    if not step:
        return []
    origin = step[0][1]
    compute = sorted((s, e) for name, s, e, _ in step if not is_collective(name))
    spans = []
    for name, start, end, _ in step:
        if not is_collective(name):
            continue
        free = [(start, end)]  # the parts of [start, end) no compute kernel covers
        for s, e in compute:
            free = [piece for a, b in free for piece in ((a, min(b, s)), (max(a, e), b)) if piece[1] > piece[0]]
        spans += [(a, b, collective_kind(name)) for a, b in free]
    return [(round((a - origin) / 1e6, 3), round((b - a) / 1e6, 3), kind)
            for a, b, kind in sorted(spans) if (b - a) / 1e6 >= min_ms]


def device_kernels(path, device=0):
    """(name, start_ns, end_ns, stats) of the kernels on GPU ``device``."""
    data = jax.profiler.ProfileData.from_file(path)
    kernels = []
    for plane in data.planes:
        if plane.name != f"/device:GPU:{device}":
            continue
        for line in plane.lines:
            if "stream" not in line.name.lower():
                continue
            for event in line.events:
                kernels.append((event.name, event.start_ns, event.start_ns + event.duration_ns,
                                {k: str(v) for k, v in event.stats}))
    return kernels


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="BIGLSTM", choices=list(PAPER))
    parser.add_argument("--num_gpus", type=int, default=1)
    parser.add_argument("--vocab_updates", default="sparse", choices=["sparse", "dense"])
    parser.add_argument("--lstm_update", choices=["sharded", "replicated"], default="sharded")
    parser.add_argument("--unroll", action="store_true", help="unroll the recurrence (lm1b's unroll=true)")
    parser.add_argument("--dtype", choices=["fp32", "tf32", "bf16"], default="bf16",
                        help="as lm_step.py's --dtype")
    parser.add_argument("--vocab_size", type=int, default=793_470)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--hparams", default="")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--out", default=None, help="write the summary as JSON here")
    parser.add_argument("--dump_hlo", default=None, metavar="PATH",
                        help="also write the compiled step's optimized HLO text here (the "
                             "kernels' names in the profile are its fusions' names)")
    args = parser.parse_args()
    logdir = tempfile.mkdtemp()
    with matmul_precision(args.dtype):  # the step compiles on its first call, inside
        runner, step = make_step(args.model, args.vocab_updates, args.num_gpus, args, args.unroll, args.lstm_update)
        if args.dump_hlo:
            with open(args.dump_hlo, "w") as f:
                f.write(runner.lower(random_batch(runner)).compile().as_text())
        for _ in range(3):
            step()
        start = time.perf_counter()
        with jax.profiler.trace(logdir):
            for _ in range(args.steps):
                step()
        wall_ms = (time.perf_counter() - start) * 1e3 / args.steps
    path = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0]
    nccl, compute, by_kind = [], [], collections.defaultdict(list)
    totals, counts, examples, scopes = (collections.Counter(), collections.Counter(), {},
                                        collections.Counter())
    kernels = device_kernels(path)
    for name, s, e, stats in kernels:
        is_nccl = is_collective(name)
        (nccl if is_nccl else compute).append((s, e))
        if is_nccl:
            by_kind[collective_kind(name)].append((s, e))
        totals[name] += (e - s) / args.steps
        scopes["collectives" if is_nccl else scope_of(stats)] += (e - s) / args.steps
        counts[name] += 1 / args.steps
        examples.setdefault(name, stats)
    exposed_spans = exposed_in_one_step(kernels, args.steps)
    nccl_ns = union_ns(nccl)
    exposed_ns = union_ns(nccl + compute) - union_ns(compute)
    summary = {
        "command": command_line("jax"),
        "machine": f"{len(jax.devices())}x {jax.devices()[0].device_kind}",
        "num_gpus": args.num_gpus,
        "model": args.model,
        "lstm_update": args.lstm_update,
        "unroll": args.unroll,
        "wall_ms_per_step_profiled": round(wall_ms, 2),
        "busy_ms": round(union_ns(nccl + compute) / 1e6 / args.steps, 3),
        "kernel_ms": round(sum(totals.values()) / 1e6, 3),
        "kernels_per_step": round(sum(counts.values())),
        # All NCCL kernels (all-reduce, all-gather, reduce-scatter); the
        # names are kept from when the step only all-reduced.
        "allreduce_ms": round(nccl_ns / 1e6 / args.steps, 3),
        "allreduce_exposed_ms": round(exposed_ns / 1e6 / args.steps, 3),
        # Per NCCL kernel kind (AllGather, ReduceScatter, AllReduce, SendRecv:
        # XLA's all-to-all), its time and the part no compute kernel overlaps.
        "collectives_by_kind": {
            kind: {"ms": round(union_ns(spans) / 1e6 / args.steps, 3),
                   "exposed_ms": round((union_ns(spans + compute) - union_ns(compute)) / 1e6 / args.steps, 3)}
            for kind, spans in sorted(by_kind.items())},
        # When, in the second profiled step, a collective ran alone: ms from
        # the step's first kernel, for how long, which kind.
        "exposed_spans": exposed_spans,
        "kernel_ms_by_scope": {k: round(v / 1e6, 3) for k, v in scopes.most_common()},
        "top": [{"name": name[:160], "ms": round(ns / 1e6, 3), "count": round(counts[name]),
                 "stats": {k: v[:200] for k, v in examples[name].items()}}
                for name, ns in totals.most_common(args.top)],
    }
    print(f"{args.model} on {args.num_gpus} GPU(s): {wall_ms:.2f} ms/step (profiled); GPU 0 busy "
          f"{summary['busy_ms']} ms, {summary['kernels_per_step']} kernels; collectives "
          f"{summary['allreduce_ms']} ms, of which exposed {summary['allreduce_exposed_ms']} ms")
    if summary["collectives_by_kind"]:
        print("collectives (ms, exposed): " + ", ".join(
            f"{k} {v['ms']}, {v['exposed_ms']}" for k, v in summary["collectives_by_kind"].items()))
    if exposed_spans:
        print("exposed collectives in one step (at ms, for ms, kind): " + ", ".join(
            f"{at} {ms} {kind}" for at, ms, kind in exposed_spans))
    print("kernel ms by scope: " + ", ".join(f"{k} {v}" for k, v in summary["kernel_ms_by_scope"].items()))
    for row in summary["top"]:
        print(f"{row['ms']:8.3f} ms x{row['count']:4d}  {row['name'][:100]}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
