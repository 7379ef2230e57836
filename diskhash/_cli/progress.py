"""The command line's progress bar: tqdm on stderr, for the index and the store commands alike.

tqdm comes with the ``cli`` extra; without it the commands draw nothing and
say nothing about it.  By default a bar is drawn only when stderr is a
terminal (tqdm's own decision for ``disable=None``), so logs, cron mail and
``2>&1 | ...`` stay clean; ``--progress``/``--no-progress`` decide instead.
"""

from __future__ import annotations

import importlib
import sys
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Progress"]

#: Seconds before a bar appears: runs shorter than this draw nothing.
SHOW_AFTER = 0.5
#: Seconds between redraws.
REDRAW_INTERVAL = 0.1
#: What a bar without a total shows while one long call reports nothing.
ELAPSED_ONLY = "{desc}: {elapsed}"


class Progress:
    """``with Progress("dump", total=n) as bar: ... bar.update(k)``.

    ``enabled=None`` draws only when stderr is a terminal.  ``heartbeat``
    is for a single long call that reports no progress of its own
    (``verify``): the bar shows the elapsed time, redrawn from a helper
    thread, so the user sees the command is working, not how far it got.
    The line is cleared at the end, so the command's own output follows.
    """

    def __init__(self, label: str, total: int | None = None, *, enabled: bool | None = None,
                 unit: str = "it", heartbeat: bool = False) -> None:
        self._bar: Any = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        stream = sys.stderr
        if enabled is False or stream is None:
            return
        try:
            tqdm = importlib.import_module("tqdm").tqdm     # optional: the cli extra
        except ImportError:
            return
        self._bar = tqdm(total=total, desc=label, unit=unit, unit_scale=True, file=stream,
                         leave=False, disable=None if enabled is None else False,
                         delay=SHOW_AFTER, mininterval=REDRAW_INTERVAL,
                         bar_format=ELAPSED_ONLY if heartbeat else None)
        if self._bar.disable:
            self._bar = None
        elif heartbeat:
            self._ticker = threading.Thread(target=self._tick, name="diskhash-progress", daemon=True)

    @property
    def drawing(self) -> bool:
        """Whether a bar is on (it still waits SHOW_AFTER before it appears)."""
        return self._bar is not None

    def __enter__(self) -> Self:
        if self._ticker is not None:
            self._ticker.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        if self._bar is not None:
            self._bar.close()

    def update(self, n: int) -> None:
        """Count ``n`` more units done."""
        if self._bar is not None:
            self._bar.update(n)

    def to(self, done: int, total: int | None = None) -> None:
        """``done`` units of ``total`` done (a ``progress(done, total)`` callback)."""
        if self._bar is not None:
            if total is not None and self._bar.total != total:
                self._bar.total = total
            self._bar.update(done - self._bar.n)

    def _tick(self) -> None:
        # update(0) redraws (the elapsed time) once SHOW_AFTER and
        # REDRAW_INTERVAL allow, and lets close() know a line is to clear.
        while not self._stop.wait(REDRAW_INTERVAL):
            self._bar.update(0)
