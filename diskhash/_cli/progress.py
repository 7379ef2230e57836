"""A small progress bar for the command line, drawn on a terminal only.

Built in rather than a dependency: the command line needs one line that
redraws itself on stderr, and nothing at all when stderr is a pipe or a file
(so logs and ``2>&1 | ...`` stay clean).  With a ``total`` it shows a
fraction; without one (a single long core call such as ``verify``, which
reports no progress of its own) it shows a moving marker and the elapsed
time, redrawn from a helper thread while the call runs.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Progress"]

#: Seconds between redraws.
REDRAW_INTERVAL = 0.1
#: A bar appears only once the work has taken this long (short runs stay silent).
SHOW_AFTER = 0.5


class Progress:
    """``with Progress(label, total=n) as bar: ... bar.update(k)``.

    ``enabled=None`` draws only when ``stream`` is a terminal.  Leaves the
    line blank when done, so the command's own output follows cleanly.
    """

    def __init__(self, label: str, total: int | None = None, *,
                 stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.stream: TextIO = stream if stream is not None else sys.stderr
        if enabled is None:
            enabled = _is_terminal(self.stream)
        self.enabled = enabled
        self._start = time.monotonic()
        self._last = 0.0
        self._drawn = False
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> Self:
        self._start = time.monotonic()
        if self.enabled and self.total is None:
            self._ticker = threading.Thread(target=self._tick, name="diskhash-progress", daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        with self._lock:
            if self._drawn:
                self.stream.write("\r" + " " * _width() + "\r")
                self.stream.flush()
                self._drawn = False

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done; redraws at most every REDRAW_INTERVAL."""
        self.done += n
        if self.enabled:
            now = time.monotonic()
            if now - self._last >= REDRAW_INTERVAL:
                self._last = now
                self._draw(now)

    def _tick(self) -> None:
        while not self._stop.wait(REDRAW_INTERVAL):
            self._draw(time.monotonic())

    def _draw(self, now: float) -> None:
        elapsed = now - self._start
        if elapsed < SHOW_AFTER:
            return
        line = render(self.label, self.done, self.total, elapsed, _width())
        with self._lock:
            if self._stop.is_set() and self._ticker is not None:
                return
            self.stream.write("\r" + line)
            self.stream.flush()
            self._drawn = True


def render(label: str, done: int, total: int | None, elapsed: float, width: int) -> str:
    """One line of at most ``width`` characters: label, bar, figures."""
    if total:
        frac = min(1.0, done / total)
        tail = f" {frac * 100:3.0f}% {done:,}/{total:,} {elapsed:.1f}s"
    else:
        frac = -1.0
        tail = f" {elapsed:.1f}s"
    room = max(10, width - len(label) - len(tail) - 4)
    if frac >= 0:
        filled = int(frac * room)
        bar = "#" * filled + "-" * (room - filled)
    else:                                   # no total: a marker sweeping to and fro
        pos = int(elapsed / REDRAW_INTERVAL) % (2 * (room - 3))
        pos = pos if pos < room - 3 else 2 * (room - 3) - pos
        bar = " " * pos + "<=>" + " " * (room - 3 - pos)
    return f"{label} [{bar}]{tail}"[:width]


def _width() -> int:
    return max(20, shutil.get_terminal_size((80, 24)).columns - 1)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
