"""The HTTP examples, each a real server process on 127.0.0.1, driven by httpx.

Every example (and the two server command lines, ``uvicorn starlette_app:app``
and ``hypercorn -k trio trio_app:app`` run in examples/, as docs/guide/servers.md says)
is started as a child process on a free port and asked real requests over
keep-alive connections: every route, bad ids, absent ids, many requests at
once; then it is stopped with SIGINT or SIGTERM (or both, the second during
the shutdown) and the store must have been closed, with its lock free for a
new writer.  Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.processes import subprocess_env

from diskhash import PayloadStore

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
TIMEOUT = 60.0

#: name -> (command line, how the port is learnt: "stdout" line or an inherited "fd")
SERVERS = {
    "aiohttp": (["examples/aiohttp_app.py"], "stdout"),
    "aiohttp-sendfile-all": (["examples/aiohttp_app.py", "--sendfile-min", "1"], "stdout"),
    "aiohttp-no-sendfile": (["examples/aiohttp_app.py", "--sendfile-min", "0"], "stdout"),
    "aiohttp-uvloop": (["examples/aiohttp_app.py", "--uvloop", "--sendfile-min", "1"], "stdout"),
    "starlette": (["examples/starlette_app.py"], "stdout"),
    "uvicorn-cli": (["-m", "uvicorn", "starlette_app:app", "--log-level", "warning", "--fd"], "fd"),
    "trio": (["examples/trio_app.py"], "stdout"),
    "hypercorn-cli": (["-m", "hypercorn", "-k", "trio", "trio_app:app", "--bind"], "fd"),
}
#: One of each way of starting a server (the aiohttp variants differ only in how GET sends bytes).
LAUNCHERS = ["aiohttp", "starlette", "uvicorn-cli", "trio", "hypercorn-cli"]


def _fast(names: list[str], *fast: str) -> list[Any]:
    """The cases of ``names`` outside ``fast`` run only with ``--run-slow``:
    the default run covers each behaviour once, CI covers every server."""
    return [n if n in fast else pytest.param(n, marks=pytest.mark.slow) for n in names]


@dataclass
class Server:
    name: str
    proc: asyncio.subprocess.Process
    port: int
    store: Path
    stdout: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, connections: int = 1) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=TIMEOUT,
                                 limits=httpx.Limits(max_connections=connections,
                                                     max_keepalive_connections=connections))

    async def stop(self, *signals: int, between: float = 0.0) -> tuple[int, str, str]:
        """Send ``signals`` (``between`` seconds apart); returns (exit status, stdout, stderr)."""
        for i, sig in enumerate(signals):
            if i:
                await asyncio.sleep(between)
            if self.proc.returncode is None:
                self.proc.send_signal(sig)
        try:
            out, err = await asyncio.wait_for(self.proc.communicate(), TIMEOUT)
        except BaseException:
            self.proc.kill()
            await self.proc.wait()
            raise
        assert self.proc.returncode is not None
        return self.proc.returncode, "\n".join(self.stdout) + "\n" + out.decode(), err.decode()


async def start(name: str, store: Path) -> Server:
    args, port_from = SERVERS[name]
    env = subprocess_env()
    env["DISKHASH_STORE"] = str(store)
    pass_fds: tuple[int, ...] = ()
    sock = None
    if port_from == "fd":
        sock = socket.create_server(("127.0.0.1", 0))      # listening: requests wait in its backlog
        fd = sock.fileno()
        args = [*args, str(fd) if args[1] == "uvicorn" else f"fd://{fd}"]
        pass_fds = (fd,)
    else:
        args = [*args, "--store", str(store), "--port", "0", "--shutdown-timeout", "3"]
    # The server command lines import the app from the working directory:
    # examples/ (in the repository root the source folder would shadow the
    # installed diskhash).
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=EXAMPLES if port_from == "fd" else ROOT, env=env, pass_fds=pass_fds,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    server = Server(name, proc, 0, store)
    try:
        if sock is not None:
            server.port = sock.getsockname()[1]
            sock.close()
            return server
        assert proc.stdout is not None and proc.stderr is not None
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)).decode()
            if not line:
                raise AssertionError(f"{name} exited early: {server.stdout} {(await proc.stderr.read()).decode()}")
            server.stdout.append(line.rstrip("\n"))
            if line.startswith("listening on http://127.0.0.1:"):
                server.port = int(line.rsplit(":", 1)[1])
                return server
    except BaseException:
        proc.kill()
        await proc.wait()
        raise


def exit_status(name: str, sig: int) -> int:
    """0 after a requested stop, except that uvicorn re-raises a SIGTERM once it
    has shut down, so the process reports that it died of it."""
    if sig == signal.SIGTERM and name in ("starlette", "uvicorn-cli"):
        return -signal.SIGTERM
    return 0


def etag_of(meta: dict) -> str:
    return f'"{meta["offset"]:x}-{meta["length"]:x}"'


def client_addr(response: httpx.Response) -> object:
    return response.extensions["network_stream"].get_extra_info("client_addr")


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


def assert_closed_and_free(out: str, store: Path, expected: dict[int, bytes]) -> None:
    """The app said it closed the store; a new writer opens it and finds ``expected``."""
    assert "store closed: True" in out, out
    with PayloadStore(store, timeout=0) as reopened:          # IndexLockedError if still held
        for edge_id, payload in expected.items():
            assert reopened.get(edge_id) == payload, edge_id
        assert len(reopened) == len(expected)


BAD_IDS = ["abc", "-1", "+1", str(2**128), "1" * 40, "1.5", "0x10", "1e3", "%201", "0123456789abcdef0123456789abcdef",
           "12345678-1234-5678-1234-56781234567", "{12345678-1234-5678-1234-567812345678}", "١٢"]


@pytest.mark.asyncio
@pytest.mark.parametrize("name", _fast(list(SERVERS), "aiohttp", "starlette", "trio"))
async def test_every_route_round_trips_over_one_keep_alive_connection(name, store_dir):
    server = await start(name, store_dir)
    rng = random.Random(12)
    stored: dict[int, bytes] = {}
    try:
        async with server.client() as client:
            first = await client.get("/stats")
            assert first.status_code == 200 and first.json()["entries"] == 0, first.text
            connection = client_addr(first)

            sizes = [0, 1, 100, 64 << 10, (64 << 10) + 1, 300_000, 1 << 20]
            for size in sizes:
                edge_id = rng.getrandbits(128)
                payload = rng.randbytes(size)
                r = await client.put(f"/payload/{edge_id}", content=payload)
                assert r.status_code == 200, r.text
                meta = r.json()
                assert meta["edge_id"] == str(edge_id) and meta["length"] == size
                assert meta["compression"] == "NONE" and meta["uncompressed_length"] == size
                assert meta["etag"] == etag_of(meta)
                stored[edge_id] = payload

                r = await client.get(f"/payload/{edge_id}")
                assert r.status_code == 200 and r.content == payload
                assert r.headers["content-length"] == str(size)
                assert r.headers["etag"] == meta["etag"]
                assert r.headers["content-type"] == "application/octet-stream"
                r = await client.get(f"/meta/{edge_id}")
                assert r.status_code == 200 and r.json() == meta

            # The UUID and the decimal spelling name the same entry.
            key = uuid.UUID(int=next(iter(stored)))
            assert (await client.get(f"/payload/{key}")).content == stored[key.int]
            assert (await client.get(f"/payload/{str(key).upper()}")).content == stored[key.int]

            # An overwrite is a new version: new bytes, new ETag.
            edge_id = next(iter(stored))
            old = (await client.get(f"/meta/{edge_id}")).json()
            r = await client.put(f"/payload/{edge_id}", content=b"second version")
            assert r.status_code == 200 and r.json()["etag"] != old["etag"]
            stored[edge_id] = b"second version"
            r = await client.get(f"/payload/{edge_id}")
            meta = (await client.get(f"/meta/{edge_id}")).json()
            assert r.content == b"second version" and r.headers["etag"] == meta["etag"]

            # DELETE: 204, then absent everywhere; a second DELETE is 404.
            gone = list(stored)[1]
            assert (await client.delete(f"/payload/{gone}")).status_code == 204
            del stored[gone]
            for r in (await client.get(f"/payload/{gone}"), await client.get(f"/meta/{gone}"),
                      await client.delete(f"/payload/{gone}")):
                assert r.status_code == 404 and "not found" in r.json()["error"], r.text

            absent = 2**128 - 1
            for path in (f"/payload/{absent}", f"/meta/{absent}", f"/payload/{uuid.UUID(int=absent)}"):
                r = await client.get(path)
                assert r.status_code == 404 and r.json()["error"] == f"edge {absent} not found", r.text

            for bad in BAD_IDS:
                for method, path in (("GET", "/payload/"), ("GET", "/meta/"), ("PUT", "/payload/"),
                                     ("DELETE", "/payload/")):
                    r = await client.request(method, path + bad, content=b"x" if method == "PUT" else None)
                    assert r.status_code == 400, (method, bad, r.status_code, r.text)
                    assert r.json()["error"].startswith("bad edge id"), r.text

            r = await client.get("/stats")
            assert r.status_code == 200 and r.json()["entries"] == len(stored), r.text
            assert client_addr(r) == connection           # every answer kept the one connection open
    finally:
        status, out, err = await server.stop(signal.SIGTERM)
    assert status == exit_status(name, signal.SIGTERM), err
    assert_closed_and_free(out, store_dir, stored)


@pytest.mark.asyncio
@pytest.mark.parametrize("name", _fast(["aiohttp", "aiohttp-sendfile-all", "starlette", "trio"], "aiohttp"))
async def test_many_concurrent_requests(name, store_dir):
    server = await start(name, store_dir)
    rng = random.Random(5)
    ids = [rng.getrandbits(64) for _ in range(60)]
    payloads = {edge_id: rng.randbytes(rng.choice([10, 5000, 70_000])) for edge_id in ids}
    try:
        async with server.client(connections=16) as client:
            puts = await asyncio.gather(*(client.put(f"/payload/{i}", content=p) for i, p in payloads.items()))
            assert [r.status_code for r in puts] == [200] * len(ids)
            wanted = [rng.choice(ids) for _ in range(300)]
            gets = await asyncio.gather(*(client.get(f"/payload/{i}") for i in wanted))
            for edge_id, r in zip(wanted, gets):
                assert r.status_code == 200 and r.content == payloads[edge_id], edge_id
            metas = await asyncio.gather(*(client.get(f"/meta/{i}") for i in ids),
                                         *(client.get(f"/payload/{i + 1}") for i in ids if i + 1 not in payloads))
            assert all(r.status_code == 200 for r in metas[:len(ids)])
            assert all(r.status_code == 404 for r in metas[len(ids):])
    finally:
        status, out, err = await server.stop(signal.SIGINT)
    assert status == exit_status(name, signal.SIGINT), err
    assert_closed_and_free(out, store_dir, payloads)


@pytest.mark.asyncio
@pytest.mark.parametrize("name", _fast(LAUNCHERS, "aiohttp", "trio"))
@pytest.mark.parametrize("sig", [pytest.param(signal.SIGINT, marks=pytest.mark.slow), signal.SIGTERM],
                         ids=["SIGINT", "SIGTERM"])
async def test_a_signal_stops_it_and_closes_the_store(name, sig, store_dir):
    """SIGINT in the default run: the other tests here stop their server with
    it and check the store closed and free (aiohttp and trio among them)."""
    server = await start(name, store_dir)
    try:
        async with server.client() as client:
            assert (await client.put("/payload/7", content=b"kept")).status_code == 200
    finally:
        status, out, err = await server.stop(sig)
    assert status == exit_status(name, sig), err
    assert_closed_and_free(out, store_dir, {7: b"kept"})


@pytest.mark.asyncio
@pytest.mark.parametrize("name", _fast(LAUNCHERS, "starlette"))
async def test_a_second_signal_during_the_shutdown_still_closes_the_store(name, store_dir):
    """A PUT whose body is still arriving holds the graceful shutdown open;
    a second signal lands during it.  The store is closed either way, and the
    PUT is stored whole or not at all.

    SIGTERM then SIGINT, except under the ``uvicorn`` command: there a SIGINT
    after a SIGTERM makes uvicorn re-raise the SIGTERM, which kills the
    process before the store closes (uvicorn's design, documented in the
    example); Ctrl-C twice is tested instead."""
    first, second = (signal.SIGINT, signal.SIGINT) if name == "uvicorn-cli" else (signal.SIGTERM, signal.SIGINT)
    server = await start(name, store_dir)
    sent_first = asyncio.Event()
    finish = asyncio.Event()

    async def slow_body():
        yield b"a" * 1000
        sent_first.set()
        await asyncio.wait_for(finish.wait(), TIMEOUT)
        yield b"b" * 1000

    async def slow_put(client: httpx.AsyncClient) -> int | None:
        try:
            r = await client.put("/payload/9", content=slow_body(), headers={"content-length": "2000"})
            return r.status_code
        except httpx.HTTPError:
            return None                                   # the server closed the connection first

    try:
        async with server.client() as client:
            assert (await client.put("/payload/8", content=b"before")).status_code == 200
            put = asyncio.ensure_future(slow_put(client))
            await asyncio.wait_for(sent_first.wait(), TIMEOUT)
            await asyncio.sleep(0.3)                      # the request has reached its handler
            server.proc.send_signal(first)
            await asyncio.sleep(0.3)                      # the shutdown has begun, waiting for the PUT
            server.proc.send_signal(second)
            await asyncio.sleep(0.2)
            finish.set()
            put_status = await asyncio.wait_for(put, TIMEOUT)
    finally:
        finish.set()
        status, out, err = await server.stop()
    assert status == exit_status(name, first), err
    assert "store closed: True" in out, out + err
    with PayloadStore(store_dir, timeout=0) as reopened:
        assert reopened.get(8) == b"before"
        assert reopened.get(9) in (None, b"a" * 1000 + b"b" * 1000)
        if put_status == 200:
            assert reopened.get(9) == b"a" * 1000 + b"b" * 1000


@pytest.mark.asyncio
@pytest.mark.parametrize("name", _fast(["aiohttp", "aiohttp-sendfile-all", "aiohttp-uvloop", "starlette", "trio"],
                                       "aiohttp-sendfile-all"))
async def test_head_answers_headers_only_and_the_connection_stays_usable(name, store_dir):
    """HEAD on a large payload (the sendfile path of the aiohttp app) sends no
    body bytes: the next answer on the same connection starts where it should."""
    server = await start(name, store_dir)
    try:
        async with server.client() as client:
            assert (await client.put("/payload/5", content=b"z" * 100_000)).status_code == 200
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(b"HEAD /payload/5 HTTP/1.1\r\nHost: t\r\n\r\nGET /meta/5 HTTP/1.1\r\nHost: t\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            assert head.startswith(b"HTTP/1.1 200") and b"content-length: 100000" in head.lower(), head
            second = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            assert second.startswith(b"HTTP/1.1 200"), second[:200]
            length = int(second.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            meta = json.loads(await asyncio.wait_for(reader.readexactly(length), TIMEOUT))
            assert meta["edge_id"] == "5" and meta["length"] == 100_000
        finally:
            writer.close()
    finally:
        status, out, err = await server.stop(signal.SIGINT)
    assert status == exit_status(name, signal.SIGINT), err
    assert_closed_and_free(out, store_dir, {5: b"z" * 100_000})


def test_each_example_documents_the_routes_it_serves():
    for name in ("aiohttp_app.py", "starlette_app.py", "trio_app.py"):
        doc = (EXAMPLES / name).read_text()
        for route in ("GET    /payload/{id}", "GET    /meta/{id}", "PUT    /payload/{id}",
                      "DELETE /payload/{id}", "GET    /stats"):
            assert route in doc, (name, route)


def test_the_id_parser_accepts_decimal_and_uuid_and_nothing_else():
    sys.path.insert(0, str(EXAMPLES))
    try:
        from payload_web import BadId, parse_edge_id
    finally:
        sys.path.remove(str(EXAMPLES))
    key = uuid.uuid4()
    assert parse_edge_id("0") == 0
    assert parse_edge_id(str(2**128 - 1)) == 2**128 - 1
    assert parse_edge_id(str(key)) == key.int == parse_edge_id(str(key).upper())
    for bad in BAD_IDS + ["", " ", "1 ", "\n1"]:
        with pytest.raises(BadId, match="bad edge id"):
            parse_edge_id(bad)


@pytest.fixture
def small_ext4(tmp_path: Path):
    """A 20 MiB ext4 file system on a loop device (root only): a real full disk
    (tmpfs would hide sparse-file effects)."""
    import shutil
    import subprocess

    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        pytest.skip("needs root and mkfs.ext4 for a loop-mounted file system")
    image, mountpoint = tmp_path / "fs.img", tmp_path / "mnt"
    mountpoint.mkdir()
    with open(image, "wb") as f:
        f.truncate(20 << 20)
    subprocess.run(["mkfs.ext4", "-q", str(image)], check=True, timeout=60)
    if subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=False, timeout=60).returncode:
        pytest.skip("cannot loop-mount here")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True, timeout=60)


@pytest.mark.asyncio
@pytest.mark.parametrize("name", _fast(["aiohttp", "starlette", "trio"], "trio"))
async def test_a_full_disk_answers_507_and_keeps_serving(name, small_ext4):
    store = small_ext4 / "store"
    server = await start(name, store)
    stored: dict[int, bytes] = {}
    try:
        async with server.client() as client:
            connection = None
            for i in range(40):
                payload = bytes([i]) * (1 << 20)
                r = await client.put(f"/payload/{i}", content=payload)
                connection = connection or client_addr(r)
                if r.status_code != 200:
                    assert r.status_code == 507, r.text
                    assert r.json()["error"].startswith("no space left for the payload"), r.text
                    break
                stored[i] = payload
            else:
                raise AssertionError("40 MiB fitted on a 20 MiB file system")
            assert stored, "not even one payload fitted"
            for edge_id, payload in stored.items():          # what was answered 200 reads back
                assert (await client.get(f"/payload/{edge_id}")).content == payload
            assert (await client.get("/stats")).json()["entries"] == len(stored)
            assert client_addr(await client.get("/stats")) == connection      # the 507 kept the connection
    finally:
        status, out, err = await server.stop(signal.SIGINT)
    assert status == exit_status(name, signal.SIGINT), err
    assert_closed_and_free(out, store, stored)


@pytest.mark.asyncio
@pytest.mark.parametrize("name", _fast(["aiohttp", "starlette", "trio"], "aiohttp"))
async def test_sigkill_loses_nothing_that_was_answered(name, store_dir):
    """No clean shutdown at all: what a PUT or DELETE was answered for is in the
    store when the next writer opens it (the apps buffer nothing of their own)."""
    server = await start(name, store_dir)
    rng = random.Random(9)
    expected: dict[int, bytes] = {}
    try:
        async with server.client(connections=4) as client:
            payloads = {rng.getrandbits(100): rng.randbytes(rng.choice([0, 50, 20_000])) for _ in range(40)}
            puts = await asyncio.gather(*(client.put(f"/payload/{i}", content=p) for i, p in payloads.items()))
            assert all(r.status_code == 200 for r in puts)
            expected.update(payloads)
            gone = list(payloads)[:5]
            for edge_id in gone:
                assert (await client.delete(f"/payload/{edge_id}")).status_code == 204
                del expected[edge_id]
    finally:
        server.proc.kill()
        await asyncio.wait_for(server.proc.wait(), TIMEOUT)
    with PayloadStore(store_dir, timeout=0) as reopened:
        assert len(reopened) == len(expected)
        for edge_id, payload in expected.items():
            assert reopened.get(edge_id) == payload


@pytest.mark.asyncio
@pytest.mark.parametrize("name", _fast(LAUNCHERS, "aiohttp", "starlette", "trio"))
async def test_an_oversized_content_length_is_refused_from_the_headers(name, store_dir):
    """A PUT whose Content-Length is over MAX_BODY gets 413 at once: the apps
    used to wait for the body (reading up to MAX_BODY of it) before refusing."""
    server = await start(name, store_dir)
    try:
        for length in ((64 << 20) + 1, 1 << 40):     # payload_web.MAX_BODY + 1
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                writer.write(b"PUT /payload/7 HTTP/1.1\r\nHost: t\r\n"
                             b"Content-Length: %d\r\n\r\n" % length)      # headers only, no body
                await writer.drain()
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                assert head.startswith(b"HTTP/1.1 413"), head[:200]
            finally:
                writer.close()
        async with server.client() as client:       # still serving; nothing stored
            assert (await client.get("/payload/7")).status_code == 404
            assert (await client.put("/payload/7", content=b"ok")).status_code == 200
    finally:
        status, out, err = await server.stop(signal.SIGINT)
    assert status == exit_status(name, signal.SIGINT), err
    assert_closed_and_free(out, store_dir, {7: b"ok"})


def test_body_too_large_reads_only_a_plain_decimal_length():
    sys.path.insert(0, str(EXAMPLES))
    try:
        from payload_web import MAX_BODY, body_too_large
    finally:
        sys.path.remove(str(EXAMPLES))
    assert MAX_BODY == 64 << 20
    assert body_too_large(str(MAX_BODY + 1)) and body_too_large(b"9" * 400)
    assert not body_too_large(str(MAX_BODY)) and not body_too_large(None)
    assert not body_too_large("１２") and not body_too_large("-5") and not body_too_large("")
