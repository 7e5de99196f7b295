"""Ctrl-C that is never lost.

Python turns SIGINT into ``KeyboardInterrupt`` at the next bytecode the main thread
runs. When that bytecode belongs to a callback whose exceptions Python ignores (a
weakref callback, a ``__del__`` run by the garbage collector), the exception is printed
as "Exception ignored" and dropped: a training told to stop kept going (seen once in
``test_two_trainings_into_one_run_directory_then_sigint``). Under :func:`catching`,
which the command line wraps every command in, a SIGINT is also remembered, and long
loops call :func:`check` at each step so that a dropped one still stops them.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["catching", "check"]

_pending = False


def _handler(signum, frame) -> None:
    global _pending
    _pending = True
    raise KeyboardInterrupt


@contextmanager
def catching() -> Iterator[None]:
    """Within: SIGINT raises ``KeyboardInterrupt`` as usual and is remembered for :func:`check`.

    Outside the main thread (where signal handlers cannot be set) it does nothing.
    """
    global _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _pending = False
    previous = signal.signal(signal.SIGINT, _handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _pending = False


def check() -> None:
    """Raise ``KeyboardInterrupt`` if a SIGINT arrived under :func:`catching` (even one whose
    exception Python dropped)."""
    if _pending:
        raise KeyboardInterrupt
