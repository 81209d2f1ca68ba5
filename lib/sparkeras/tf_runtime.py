"""TensorFlow process settings and tf.distribute strategies, from configuration.

Thread settings only apply before TensorFlow runs its first op in a process, so they are
applied once per process (the driver, or each reused Python worker).
"""
from __future__ import annotations

import os
import sys

from .logs import quiet_stderr

_configured = False


def configure_tensorflow(intra_op: int | None = None, inter_op: int | None = None):
    """Import TensorFlow with the configured thread pools; return the module."""
    global _configured
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules:
        # TensorFlow's C++ start-up lines (oneDNN, absl) ignore TF_CPP_MIN_LOG_LEVEL: they
        # go to the run's log file, or to the terminal if the import fails.
        with quiet_stderr():
            import tensorflow  # noqa: F401
    import tensorflow as tf
    if not _configured:
        env = os.environ.get
        intra = intra_op if intra_op is not None else int(env("SPARKERAS_TF_INTRA_OP_THREADS", "0"))
        inter = inter_op if inter_op is not None else int(env("SPARKERAS_TF_INTER_OP_THREADS", "0"))
        try:
            if intra:
                tf.config.threading.set_intra_op_parallelism_threads(intra)
            if inter:
                tf.config.threading.set_inter_op_parallelism_threads(inter)
        except RuntimeError:
            pass  # TensorFlow already initialised in this process: keep its pools
        _configured = True
    return tf


def make_strategy(name: str):
    """``mirrored``: MirroredStrategy over the local GPUs (or the CPU); ``default``: none."""
    tf = configure_tensorflow()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "default":
        return tf.distribute.get_strategy()
    raise ValueError(f"unknown strategy {name!r}")
