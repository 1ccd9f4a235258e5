"""Tokens per second of the LM1B input pipelines: numpy (lm1b.data) and tf.data.

Measures training-mode batches (shuffled, endless) of ``--batch_size`` rows by
``--num_steps`` steps over the corpus in ``--data_dir`` (LM1B layout), on
three paths:

- ``numpy``: :meth:`lm1b.data.Dataset.iterate_forever`;
- ``tf.data->numpy``: :func:`lm1b.input_pipeline.make_dataset` read through
  ``as_numpy_iterator()``, as a JAX or NumPy training loop would;
- ``tf.data in tf.function``: the same dataset consumed inside a
  ``tf.function`` loop, as a TensorFlow training step would.

Prints a table and writes the figures with the command, machine and shapes
to ``--output`` as JSON.

    python benchmarks/input_pipeline.py --data_dir /tmp/english_corpus
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from lm1b import data, input_pipeline  # noqa: E402
from machine_info import command_line  # noqa: E402
from machine_info import cpu_model  # noqa: E402

TRAIN_PATTERN = os.path.join("training-monolingual.tokenized.shuffled", "*")


def time_python_iterator(iterator, warmup, batches):
    """Seconds to pull ``batches`` batches after ``warmup`` ones."""
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return time.perf_counter() - start


def time_tf_function(dataset, warmup, batches):
    """Seconds for a tf.function to consume ``batches`` batches after ``warmup`` ones."""
    iterator = iter(dataset)

    @tf.function
    def consume(n):
        total = tf.constant(0.0)
        for _ in tf.range(n):
            _, _, w = next(iterator)
            total += tf.reduce_sum(w)
        return total

    consume(tf.constant(warmup)).numpy()
    start = time.perf_counter()
    consume(tf.constant(batches)).numpy()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default="data/tiny_corpus", help="Corpus in LM1B layout.")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--num_steps", type=int, default=20)
    parser.add_argument("--batches", type=int, default=2000, help="Timed batches per path.")
    parser.add_argument("--warmup", type=int, default=100, help="Untimed batches first.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="benchmarks/results/input_pipeline_cpu.json")
    args = parser.parse_args()

    # Other processes skew the figures on a 2-core machine; record the load.
    load_before = os.getloadavg()[0]
    vocab = data.Vocabulary.from_file(os.path.join(args.data_dir, "1b_word_vocab.txt"))
    pattern = os.path.join(args.data_dir, TRAIN_PATTERN)
    shape = (args.batch_size, args.num_steps)

    def tf_dataset():
        return input_pipeline.make_dataset(vocab, pattern, *shape, forever=True, seed=args.seed)

    seconds = {
        "numpy": time_python_iterator(
            data.Dataset(vocab, pattern, seed=args.seed).iterate_forever(*shape),
            args.warmup,
            args.batches,
        ),
        "tf.data->numpy": time_python_iterator(
            tf_dataset().as_numpy_iterator(), args.warmup, args.batches
        ),
        "tf.data in tf.function": time_tf_function(tf_dataset(), args.warmup, args.batches),
    }
    tokens = args.batches * args.batch_size * args.num_steps
    tokens_per_s = {path: round(tokens / s) for path, s in seconds.items()}

    print(f"{'path':<24} {'tokens/s':>12}")
    for path, rate in tokens_per_s.items():
        print(f"{path:<24} {rate:>12,}")

    result = {
        "command": command_line(os.environ.get("KERAS_BACKEND", "tensorflow")),
        "machine": {
            "platform": platform.platform(),
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_1min_before": round(load_before, 2),
        },
        "backend": {
            "KERAS_BACKEND": os.environ.get("KERAS_BACKEND"),
            "tensorflow": tf.__version__,
            "tensorflow_text": tf_text.__version__,
            "numpy": np.__version__,
            "note": "the numpy path runs on every Keras backend; tf.data needs TensorFlow",
        },
        "corpus": {
            "data_dir": args.data_dir,
            "vocab_size": vocab.num_tokens,
            "train_files": len(data.Dataset(vocab, pattern).files),
        },
        "shapes": {"batch_size": args.batch_size, "num_steps": args.num_steps},
        "timed_batches": args.batches,
        "warmup_batches": args.warmup,
        "tokens_per_s": tokens_per_s,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
