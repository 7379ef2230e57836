"""The HTTP examples under several worker processes: uvicorn ``--workers 2``,
gunicorn ``-w 2`` (uvicorn's and aiohttp's workers, with and without
``--preload``) and hypercorn ``-w 2``, started as real servers in examples/
on a listening socket the test made (so no port race), driven by httpx.

Every answer names its worker (``X-Worker-Pid``).  Each request goes over a
new connection (no keep-alive), so the kernel hands them to either worker;
the tests ask until both have answered, and check that what a PUT served
by one worker stored is what the other one reads.  Every wait is bounded
and the server is killed in a ``finally``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from helpers.processes import subprocess_env

from diskhash import PayloadStore

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
TIMEOUT = 30.0
#: How long the other worker may take to answer once the first has: both are up by then.
OTHER_WORKER_WITHIN = 10.0
WORKERS = 2

_GUNICORN = ["-m", "gunicorn", "--no-control-socket", "--log-level", "warning", "-w", str(WORKERS),
             "--bind", "fd://{fd}"]
#: name -> the command line (``{fd}``: the listening socket), run in examples/
#: as docs/guide/servers.md says.
COMMANDS = {
    "uvicorn": ["-m", "uvicorn", "starlette_app:app", "--workers", str(WORKERS), "--log-level", "warning",
                "--fd", "{fd}"],
    "gunicorn-uvicorn": [*_GUNICORN, "-k", "uvicorn_worker.UvicornWorker", "starlette_app:app"],
    "gunicorn-uvicorn-preload": [*_GUNICORN, "--preload", "-k", "uvicorn_worker.UvicornWorker", "starlette_app:app"],
    "gunicorn-aiohttp": [*_GUNICORN, "-k", "aiohttp.GunicornWebWorker", "aiohttp_app:app"],
    "gunicorn-aiohttp-preload": [*_GUNICORN, "--preload", "-k", "aiohttp.GunicornWebWorker", "aiohttp_app:app"],
    "hypercorn-trio": ["-m", "hypercorn", "-k", "trio", "-w", str(WORKERS), "--bind", "fd://{fd}", "trio_app:app"],
    "hypercorn-starlette": ["-m", "hypercorn", "-w", str(WORKERS), "--bind", "fd://{fd}", "starlette_app:app"],
}
#: In the default run: one of each server program; the rest with --run-slow.
FAST = ("uvicorn", "gunicorn-uvicorn-preload", "hypercorn-trio")


def _cases(fast: tuple[str, ...] = FAST) -> list[object]:
    return [n if n in fast else pytest.param(n, marks=pytest.mark.slow) for n in COMMANDS]


class Workers:
    """A multi-worker server process and a client that opens a new
    connection for every request."""

    def __init__(self, name: str, store: Path, readonly: bool) -> None:
        self.name = name
        sock = socket.create_server(("127.0.0.1", 0))      # listening: requests wait in its backlog
        fd = sock.fileno()
        self.port = sock.getsockname()[1]
        env = subprocess_env()
        env["DISKHASH_STORE"] = str(store)
        env["DISKHASH_READONLY"] = "1" if readonly else "0"
        try:
            self.proc = subprocess.Popen(
                [sys.executable, *(a.format(fd=fd) for a in COMMANDS[name])], cwd=EXAMPLES, env=env,
                pass_fds=(fd,), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        finally:
            sock.close()
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=TIMEOUT,
                                   limits=httpx.Limits(max_keepalive_connections=0))
        self.pids: set[int] = set()

    def request(self, method: str, path: str, content: bytes | None = None) -> tuple[int, httpx.Response]:
        """(pid of the worker that answered, the answer)."""
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}: {self.proc.stderr.read()[-3000:]}")
        r = self.client.request(method, path, content=content)
        pid = int(r.headers["x-worker-pid"])
        self.pids.add(pid)
        return pid, r

    def from_another_worker(self, path: str, than: int) -> tuple[int, httpx.Response]:
        """GET ``path`` until a worker other than ``than`` answers; every
        answer on the way must agree with that one's (checked by the caller
        through the returned answer and here against each other)."""
        deadline = time.monotonic() + OTHER_WORKER_WITHIN
        first: httpx.Response | None = None
        while time.monotonic() < deadline:
            pid, r = self.request("GET", path)
            if first is None:
                first = r
            assert (r.status_code, r.content) == (first.status_code, first.content), (pid, r.text, first.text)
            if pid != than:
                return pid, r
        raise AssertionError(f"only worker {than} of {self.name} answered {path} "
                             f"for {OTHER_WORKER_WITHIN} s: {self.pids}")

    def stop(self) -> tuple[int, str, str]:
        """SIGTERM (each worker closes its store), then (exit status, stdout, stderr)."""
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=TIMEOUT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.communicate()
        return self.proc.returncode, out, err


def fill(store: Path, entries: dict[int, bytes]) -> None:
    with PayloadStore(store) as s:
        for edge_id, payload in entries.items():
            s.put(edge_id, payload)


def assert_stopped_cleanly(status: int, out: str, err: str, store: Path, expected: dict[int, bytes],
                           name: str = "") -> None:
    """Exit 0, every worker closed its store, and a new writer finds ``expected``.

    hypercorn is the exception: on SIGTERM it waits for the FIRST worker to
    exit, then terminates the others (hypercorn/run.py), so a slower worker
    can be cut off in its lifespan shutdown before it prints; its store is
    then left as by a crash, which the reopen below checks."""
    assert status == 0, err[-3000:]
    closed = out.count("store closed: True")
    if name.startswith("hypercorn"):
        assert closed >= 1, out + err[-3000:]                   # the first worker to exit closed it
        assert "store closed: False" not in out, out + err[-3000:]
    else:
        assert closed == WORKERS, out + err[-3000:]
    with PayloadStore(store, timeout=0) as reopened:          # IndexLockedError if a worker still held it
        assert {k: reopened.get(k) for k in expected} == expected
        assert len(reopened) == len(expected)


@pytest.mark.parametrize("name", _cases())
def test_every_worker_serves_a_store_opened_read_only(name, tmp_path):
    """Works without the shared store: each worker opens the store read-only
    in its lifespan (after the fork, ``--preload`` included), both answer,
    and writes are refused with 405."""
    store = tmp_path / "store"
    entries = {i: f"payload {i}".encode() * (i + 1) for i in range(20)}
    fill(store, entries)
    server = Workers(name, store, readonly=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        i = 0
        while len(server.pids) < WORKERS:
            assert time.monotonic() < deadline, f"only {server.pids} answered"
            _, r = server.request("GET", f"/payload/{i % 20}")
            assert r.status_code == 200 and r.content == entries[i % 20], r.text
            i += 1
        first, r = server.request("GET", "/meta/3")
        assert r.status_code == 200 and r.json()["length"] == len(entries[3])
        _, again = server.from_another_worker("/meta/3", than=first)
        assert again.json() == r.json()                     # the same record, the same ETag, from both
        for method in ("PUT", "DELETE"):
            _, r = server.request(method, "/payload/3", content=b"x" if method == "PUT" else None)
            assert r.status_code == 405 and "read-only" in r.json()["error"], r.text
            assert r.headers["allow"].replace(" ", "") == "GET,HEAD"
        assert len(server.pids) == WORKERS and os.getpid() not in server.pids
    finally:
        status, out, err = server.stop()
    assert_stopped_cleanly(status, out, err, store, entries, name)


@pytest.mark.parametrize("name", _cases())
def test_a_write_on_one_worker_is_read_by_the_other(name, tmp_path):
    """PUT, overwrite and DELETE served by one worker; a GET served by the
    other worker sees each at once.  Needs every worker to open the store
    writable at the same time."""
    store = tmp_path / "store"
    server = Workers(name, store, readonly=False)
    expected: dict[int, bytes] = {}
    try:
        for edge_id in range(6):
            payload = f"first version of {edge_id}".encode() * 50
            writer, r = server.request("PUT", f"/payload/{edge_id}", content=payload)
            assert r.status_code == 200, r.text
            expected[edge_id] = payload
            reader, r = server.from_another_worker(f"/payload/{edge_id}", than=writer)
            assert r.status_code == 200 and r.content == payload, (writer, reader, r.text)

            payload = f"second version of {edge_id}".encode()
            writer, r = server.request("PUT", f"/payload/{edge_id}", content=payload)
            assert r.status_code == 200, r.text
            etag = r.json()["etag"]
            expected[edge_id] = payload
            reader, r = server.from_another_worker(f"/payload/{edge_id}", than=writer)
            assert (r.status_code, r.content, r.headers["etag"]) == (200, payload, etag), (writer, reader)

        writer, r = server.request("DELETE", "/payload/0")
        assert r.status_code == 204, r.text
        del expected[0]
        _, r = server.from_another_worker("/payload/0", than=writer)
        assert r.status_code == 404, r.text
        _, r = server.from_another_worker("/stats", than=writer)
        assert r.json()["entries"] == len(expected), r.text
        assert len(server.pids) == WORKERS
    finally:
        status, out, err = server.stop()
    assert_stopped_cleanly(status, out, err, store, expected, name)
