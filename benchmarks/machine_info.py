"""What the benchmarks record about the machine they ran on."""

import os
import platform
import sys


def cpu_model():
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def command_line(backend):
    """The command that is running, as one line for the record (its
    arguments are not shell-quoted).

    XLA and NCCL settings change the timings, so the variables that hold
    them come first, after ``KERAS_BACKEND``.
    """
    settings = [f"{k}='{v}'" for k, v in sorted(os.environ.items())
                if k == "XLA_FLAGS" or (k.startswith("NCCL_") and k != "NCCL_VERSION")]
    return " ".join([f"KERAS_BACKEND={backend}", *settings, "python", *sys.argv])
