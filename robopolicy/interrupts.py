"""Clean Ctrl-C for long jobs: stop at an episode or step boundary, never inside a write.

Two tools, both no-ops outside the main thread (Python delivers signals there only):

* :class:`GracefulStop` -- a loop asks ``stop.requested`` at each boundary (an episode of
  demo generation, a training step). The first SIGINT only sets the flag and says so on stderr;
  a second one raises ``KeyboardInterrupt`` at once (the data written so far stays valid: the
  store's appends are crash-safe and checkpoints are written with a completion marker).
* :func:`defer_interrupts` -- a block that must not be cut in half (appending an episode,
  writing a checkpoint): a SIGINT during it is held and raised as ``KeyboardInterrupt`` when
  the block ends.

Worker processes call :func:`ignore_sigint` so that a terminal's Ctrl-C, which reaches the
whole process group, is handled by the main process alone.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def ignore_sigint() -> None:
    """Ignore SIGINT in this process (pool workers: the parent decides when to stop)."""
    if _in_main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


class GracefulStop:
    """``with GracefulStop("generation") as stop: ... if stop.requested: break``.

    ``what`` names the job in the message printed on the first Ctrl-C.
    """

    def __init__(self, what: str, boundary: str = "the next boundary") -> None:
        self.what = what
        self.boundary = boundary
        self.requested = False
        self._previous = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            f"\ninterrupt: stopping {self.what} at {self.boundary} (press Ctrl-C again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> GracefulStop:
        if _in_main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


@contextlib.contextmanager
def defer_interrupts() -> Iterator[None]:
    """Hold SIGINT for the duration of the block; raise ``KeyboardInterrupt`` after it if one came."""
    if not _in_main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught and previous is not signal.SIG_IGN:
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signal.SIGINT, None)  # e.g. a GracefulStop: let it set its flag
        else:
            raise KeyboardInterrupt
