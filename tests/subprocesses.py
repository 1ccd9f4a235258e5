"""Running test code in a fresh interpreter: for another Keras backend,
logical devices, or anything that must not leak into the test process."""

import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
"""The repository root: the subprocesses import `keras_flstm`, `lm1b` and
`tests` from here, whatever the working directory."""


def python_env(backend=None, **extra):
    """The environment for a subprocess: this one's, with the repository on
    PYTHONPATH, TensorFlow's C++ logging quiet, and `backend` as
    KERAS_BACKEND when given."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT, **extra)
    if backend:
        env["KERAS_BACKEND"] = backend
    return env


def run_python(code, *args, backend=None, timeout=300, **extra_env):
    """Runs `code` (with `args` as sys.argv[1:]) in a fresh interpreter from
    the repository root; asserts that it succeeded, showing its stderr's
    tail if not, and returns its stdout."""
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=python_env(backend, **extra_env), cwd=ROOT, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout
