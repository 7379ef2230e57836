"""The commands' progress bar: tqdm on stderr when it is a terminal (or with
--progress), nothing on a pipe, nothing and no error without tqdm.

In-process, with a fake terminal for stderr: the bar's decision is made on
the stream the command sees.
"""

from __future__ import annotations

import io
import sys
import threading

import pytest

from diskhash import DiskHashIndex, PayloadMeta, PayloadStore
from diskhash._cli import main, progress


class Tty(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _bar_at_once(monkeypatch):
    monkeypatch.setattr(progress, "SHOW_AFTER", 0.0)


@pytest.fixture
def tqdm_installed(monkeypatch):
    tqdm = pytest.importorskip("tqdm")
    # No tqdm monitor thread left in this worker: a later fork() test would
    # warn that the process is multi-threaded (3.12+).
    monkeypatch.setattr(tqdm.tqdm, "monitor_interval", 0)


def _stderr(monkeypatch, stream: io.StringIO) -> io.StringIO:
    monkeypatch.setattr(sys, "stderr", stream)
    return stream


@pytest.fixture
def big_index(tmp_path):
    path = tmp_path / "big.idx"
    with DiskHashIndex(path) as idx:
        for k in range(20_000):
            idx.insert(k, PayloadMeta(k, k, 1, 0, 1))
    return path


def test_dump_draws_a_tqdm_bar_when_stderr_is_a_terminal(big_index, monkeypatch, capsys, tqdm_installed):
    term = _stderr(monkeypatch, Tty())
    assert main(["dump", str(big_index)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 20_000
    drawn = term.getvalue()
    assert "dump:" in drawn and "20.0k" in drawn and "%|" in drawn, drawn
    assert drawn.endswith("\r")                       # the line is cleared at the end
    term = _stderr(monkeypatch, Tty())
    assert main(["dump", "--no-progress", str(big_index)]) == 0
    assert term.getvalue() == ""


def test_store_commands_draw_the_same_bar(tmp_path, monkeypatch, capsys, tqdm_installed):
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        s.put_many(range(100), [b"x%d" % k for k in range(100)])
    term = _stderr(monkeypatch, Tty())
    assert main(["store", "export", str(d), "-", "--format", "tsv"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 100
    assert "export:" in term.getvalue() and "/100 " in term.getvalue(), term.getvalue()


def test_no_bar_on_a_pipe_unless_asked(big_index, monkeypatch, capsys, tqdm_installed):
    """tqdm's own decision (``disable=None``): off when the stream is not a terminal."""
    pipe = _stderr(monkeypatch, io.StringIO())
    assert progress.Progress("x", 10).drawing is False
    assert progress.Progress("x", 10, enabled=False).drawing is False
    with progress.Progress("x", 10, enabled=True) as bar:
        assert bar.drawing is True
        bar.update(10)
    assert "x:" in pipe.getvalue()
    pipe = _stderr(monkeypatch, io.StringIO())
    for cmd in ("dump", "verify", "repair"):
        assert main([cmd, str(big_index)]) == 0
    assert pipe.getvalue() == ""
    _stderr(monkeypatch, Tty())
    assert progress.Progress("x", 10).drawing is True
    monkeypatch.setattr(sys, "stderr", None)             # started with stderr closed (`2>&-`)
    assert progress.Progress("x", 10, enabled=True).drawing is False


def test_without_tqdm_no_bar_and_no_error(big_index, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)         # import tqdm raises ImportError
    term = _stderr(monkeypatch, Tty())
    assert progress.Progress("x", 10, enabled=True).drawing is False
    assert main(["dump", "--progress", str(big_index)]) == 0
    assert main(["verify", "--progress", str(big_index)]) == 0
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        s.put(1, b"one")
    assert main(["store", "rebuild", str(d), "--progress"]) == 0
    assert term.getvalue() == ""
    assert "index rebuilt, 1 entries" in capsys.readouterr().out


class CountingTty(Tty):
    """A terminal that says when ``label`` has been drawn ``times`` times."""

    def __init__(self, label: str, times: int) -> None:
        super().__init__()
        self.label, self.times = label, times
        self.drawn = threading.Event()

    def write(self, s: str) -> int:
        n = super().write(s)
        if self.getvalue().count(self.label) >= self.times:
            self.drawn.set()
        return n


def test_a_heartbeat_bar_redraws_the_elapsed_time_while_one_call_runs(monkeypatch, tqdm_installed):
    """verify and repair are single calls that report no progress: the bar
    is redrawn from a helper thread so the user sees they are working."""
    term = _stderr(monkeypatch, CountingTty("verify:", 3))
    with progress.Progress("verify", heartbeat=True) as bar:
        assert bar.drawing
        assert term.drawn.wait(30), term.getvalue()       # drawn again with nothing reported
    text = term.getvalue()
    assert "verify: 00:0" in text and "it/s" not in text, text
    assert text.endswith("\r")
    assert not any(t.name == "diskhash-progress" for t in threading.enumerate())
