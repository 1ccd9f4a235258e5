"""Atomic, backend-neutral training checkpoints in a log directory.

A checkpoint is a directory ``LOGDIR/ckpt-<step>`` holding

- ``model.weights.h5``: ``model.save_weights`` (Keras's backend-neutral H5);
- ``optimizers.npz``: every optimizer variable (iteration counts,
  accumulators, the EMA of the LSTM weights), keyed ``<optimizer>/<index>``;
- ``state.json``: step, elapsed training seconds, hparams, backend, and the
  optimizer variable paths.

It is written into a temporary directory and renamed into place with
``os.replace`` (atomic on POSIX), so a crash or SIGKILL leaves either the
complete checkpoint or none; leftover temporary directories are removed by
:func:`remove_partial`. A checkpoint written on JAX loads on TensorFlow and
vice versa.
"""

import json
import os
import re
import shutil
import tempfile

import keras
import numpy as np

from lm1b.model import build_model_and_optimizers

_NAME = re.compile(r"^ckpt-(\d+)$")
_TMP_PREFIX = ".tmp-ckpt-"


def latest(logdir):
    """Path of the checkpoint with the highest step in ``logdir``, or None."""
    step = latest_step(logdir)
    return None if step is None else os.path.join(logdir, f"ckpt-{step}")


def latest_step(logdir):
    """Step of the latest checkpoint in ``logdir``, or None."""
    steps = _steps(logdir)
    return max(steps) if steps else None


def read_state(path):
    """The ``state.json`` dict of checkpoint ``path``."""
    with open(os.path.join(path, "state.json")) as f:
        return json.load(f)


def save(logdir, step, model, optimizers, state, keep=3):
    """Writes checkpoint ``ckpt-<step>`` atomically and keeps the newest ``keep``.

    Args:
        logdir: the run's directory.
        step: the training step, part of the name.
        model: a built Keras model.
        optimizers: built Keras optimizers, saved under their ``name``.
        state: a JSON-serialisable dict; ``step`` and the optimizer variable
            paths are added.
        keep: how many checkpoints to keep, >= 1.

    Returns:
        The checkpoint's path. A checkpoint that exists already for ``step``
        is left as it is.
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep={keep!r} must be an integer >= 1: the newest checkpoint is always kept.")
    final = os.path.join(logdir, f"ckpt-{step}")
    if os.path.exists(final):
        return final
    tmp = tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=logdir)
    model.save_weights(os.path.join(tmp, "model.weights.h5"))
    arrays, paths = {}, {}
    for optimizer in optimizers:
        paths[optimizer.name] = [v.path for v in optimizer.variables]
        for i, variable in enumerate(optimizer.variables):
            arrays[f"{optimizer.name}/{i}"] = keras.ops.convert_to_numpy(variable)
    np.savez(os.path.join(tmp, "optimizers.npz"), **arrays)
    with open(os.path.join(tmp, "state.json"), "w") as f:
        json.dump({**state, "step": step, "optimizer_variables": paths}, f, indent=1)
    for name in os.listdir(tmp):
        _fsync(os.path.join(tmp, name))
    os.replace(tmp, final)
    _fsync(logdir)
    for old in sorted(_steps(logdir))[:-keep]:
        shutil.rmtree(os.path.join(logdir, f"ckpt-{old}"), ignore_errors=True)
    return final


def restore(path, model, optimizers):
    """Loads checkpoint ``path`` into a built model and built optimizers.

    Returns:
        The checkpoint's state dict.

    Raises:
        ValueError: if the model or an optimizer does not match the
            checkpoint (different hparams), naming what differs.
    """
    state = read_state(path)
    try:
        model.load_weights(os.path.join(path, "model.weights.h5"))
    except ValueError as e:
        raise ValueError(
            f"Checkpoint {path!r} does not fit this model ({e}). It was written "
            f"with hparams {state.get('hparams')}; use those, or a new logdir."
        ) from None
    with np.load(os.path.join(path, "optimizers.npz")) as arrays:
        for optimizer in optimizers:
            saved = state["optimizer_variables"].get(optimizer.name)
            if saved is None or len(saved) != len(optimizer.variables):
                raise ValueError(
                    f"Checkpoint {path!r} has {0 if saved is None else len(saved)} "
                    f"variables for {optimizer.name!r}, this run has "
                    f"{len(optimizer.variables)}: optimizer or average_params "
                    "changed. Use the checkpoint's hparams, or a new logdir."
                )
            for i, variable in enumerate(optimizer.variables):
                value = arrays[f"{optimizer.name}/{i}"]
                if tuple(value.shape) != tuple(variable.shape):
                    raise ValueError(
                        f"Checkpoint {path!r}: {saved[i]} has shape {value.shape}, "
                        f"this run's {variable.path} has {tuple(variable.shape)}."
                    )
                variable.assign(value)
    return state


def restore_for_eval(path, hparams, use_average=True):
    """The model of checkpoint ``path``, as evaluation and export use it.

    With ``average_params`` (``hparams``'s, which must be the checkpoint's)
    and ``use_average``, its LSTM weights are replaced by their moving
    average, unless the optimizer never took a step: Keras fills the average
    in on the first step, so before it there is none (all zeros).
    ``use_average=False`` keeps the weights the optimizer trained.

    Returns:
        (model, the checkpoint's state dict).
    """
    model, optimizers = build_model_and_optimizers(hparams)
    state = restore(path, model, optimizers)
    lstm_optimizer = optimizers[0]
    if hparams.average_params and use_average and int(lstm_optimizer.iterations) > 0:
        lstm_optimizer.finalize_variable_values(model.lstm_variables)
    return model, state


def remove_partial(logdir):
    """Deletes temporary directories left by a save that was killed midway."""
    for name in os.listdir(logdir):
        if name.startswith(_TMP_PREFIX):
            shutil.rmtree(os.path.join(logdir, name), ignore_errors=True)


def _steps(logdir):
    if not os.path.isdir(logdir):
        return []
    return [int(m.group(1)) for m in map(_NAME.match, os.listdir(logdir)) if m]


def _fsync(path):
    # Durable before the rename, so a power loss cannot publish empty files.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
