"""Ctrl-C, noticed whatever a library turns it into.

PySpark replaces the SIGINT handler when it starts a SparkContext: its handler cancels the
running jobs, then raises ``KeyboardInterrupt``. On Spark 3.5 that exception often surfaces
as a ``Py4JError`` ("An error occurred while calling ...collectAndServe") from the call that
was waiting, which would read as an internal error, or as a failed training attempt to
retry. :func:`watch` chains a handler in front of whatever is installed that records the
signal first, so :func:`received` tells the truth either way."""
import signal
import threading

_received = threading.Event()


def received() -> bool:
    """Whether SIGINT reached this process since :func:`watch` was first called."""
    return _received.is_set()


def watch() -> None:
    """Record SIGINT in front of the current handler (call again after a library installs
    its own). Only the main thread can set handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGINT)
    if getattr(previous, "sparkeras_watch", False):
        return

    def handler(signum, frame):
        _received.set()
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt

    handler.sparkeras_watch = True
    signal.signal(signal.SIGINT, handler)
