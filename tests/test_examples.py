"""Every program in examples/ runs, small, and does what its docstring says.

The servers are started as child processes on a free port of 127.0.0.1, asked
real HTTP requests (http.client, keep-alive), and stopped with a signal; the
asyncio-only test code uses pytest-asyncio.  Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env

from diskhash import DiskHashIndex

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))
from payload_http import build_store, payload_for  # noqa: E402

TIMEOUT = 60


def run_example(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                          timeout=TIMEOUT, env=subprocess_env(), cwd=cwd)


def test_sync_script_builds_queries_and_reopens(tmp_path):
    r = run_example("sync_script.py", "--entries", "5000", "--dir", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FAIL" not in r.stdout
    for line in ("built 5,000 entries", "ok  reopened with 4,999 entries", "ok  every entry read back exactly",
                 "ok  a read-only index refuses writes", "ok  verify() finds no defect"):
        assert line in r.stdout, r.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("backend", ["asyncio", "uvloop", "trio"])
def test_bulk_loader_loads_while_serving_lookups(tmp_path, backend):
    if backend == "uvloop":
        pytest.importorskip("uvloop")
    r = run_example("bulk_loader.py", "--entries", "40000", "--readers", "2", "--report-every", "0.1",
                    "--backend", backend, "--dir", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all 40,000 checked entries read back exactly; 40,000 entries in the index; " \
           "0 wrong lookups during the load" in r.stdout, r.stdout
    summary = next(line for line in r.stdout.splitlines() if line.startswith("loaded 40,000 entries"))
    grows = int(summary.split(" with ")[1].split()[0])
    served = int(summary.split("; ")[1].split()[0].replace(",", ""))
    assert grows == 4 and served > 0, summary        # 4096 -> 65536 slots
    assert "lookups/s" in r.stdout                   # progress lines
    assert list(tmp_path.iterdir()) == []


# -- the servers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    directory = tmp_path_factory.mktemp("store")
    index_path, data_path, ids = build_store(str(directory), 300, seed=4)
    return index_path, data_path, ids


async def start_server(script: str, *args: str) -> tuple[asyncio.subprocess.Process, int, list[str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / script), "--port", "0", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=subprocess_env())
    lines: list[str] = []
    try:
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)).decode()
            if not line:
                raise AssertionError(f"{script} exited early: {lines} {(await proc.stderr.read()).decode()}")
            lines.append(line.strip())
            if line.startswith("listening on 127.0.0.1:"):
                return proc, int(line.rsplit(":", 1)[1]), lines
    except BaseException:
        proc.kill()
        await proc.wait()
        raise


async def stop_server(proc: asyncio.subprocess.Process, sig: int) -> str:
    proc.send_signal(sig)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode()
    return out.decode()


def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, str, bytes]:
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, resp.getheader("Content-Type"), resp.read()


def exercise(port: int, ids: list[int]) -> None:
    """Real requests over one keep-alive connection, then a second connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        for edge_id in ids[:50]:
            status, ctype, body = get(conn, f"/payload/{edge_id}")
            assert (status, ctype) == (200, "application/json"), body
            meta = json.loads(body)
            blob = payload_for(edge_id)
            assert meta["edge_id"] == edge_id and meta["length"] == len(blob)
            assert meta["compression"] == "NONE" and meta["uncompressed_length"] == len(blob)
            status, ctype, body = get(conn, f"/payload/{edge_id}/data")
            assert (status, ctype, body) == (200, "application/octet-stream", blob)
        sock = conn.sock
        assert sock is not None
        absent = next(i for i in range(1, 1000) if i not in set(ids))
        status, _, body = get(conn, f"/payload/{absent}")
        assert status == 404 and "not found" in json.loads(body)["error"]
        for bad in ("abc", "-1", str(2**128), "1.5"):
            status, _, body = get(conn, f"/payload/{bad}")
            assert status == 400 and "bad edge id" in json.loads(body)["error"], bad
        status, _, _ = get(conn, "/nowhere")
        assert status == 404
        assert conn.sock is sock              # every answer kept the connection open
    finally:
        conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request("POST", f"/payload/{ids[0]}", body=b"x")
        resp = conn.getresponse()
        assert resp.status == 405 and resp.getheader("Connection") == "close"
        resp.read()
    finally:
        conn.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("script", ["asyncio_server.py", "trio_lookup.py"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_server_answers_lookups_and_stops_cleanly(store, script, sig):
    index_path, data_path, ids = store
    proc, port, lines = await start_server(script, "--index", index_path, "--data", data_path)
    try:
        assert "index " + index_path + ": 300 entries" in lines
        await asyncio.to_thread(exercise, port, ids)
    finally:
        out = await stop_server(proc, sig)
    assert "shutting down" in out and "index closed: True" in out
    with DiskHashIndex(index_path, timeout=0) as idx:      # its lock is released
        assert len(idx) == 300 and idx.recovery is None


@pytest.mark.asyncio
@pytest.mark.parametrize("script", ["asyncio_server.py", "trio_lookup.py"])
async def test_server_builds_its_own_store(script):
    proc, port, lines = await start_server(script, "--entries", "200")
    try:
        edge_id = int(next(line for line in lines if line.startswith("try: GET /payload/")).rsplit("/", 1)[1])

        def fetch() -> tuple[int, str, bytes]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
            try:
                return get(conn, f"/payload/{edge_id}/data")
            finally:
                conn.close()

        status, _, body = await asyncio.to_thread(fetch)
        assert status == 200 and body == payload_for(edge_id)
    finally:
        out = await stop_server(proc, signal.SIGTERM)
    assert "index closed: True" in out
