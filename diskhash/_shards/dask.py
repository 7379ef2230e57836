# mypy: disable-error-code="attr-defined,no-untyped-call"
# (Dask's packages re-export implicitly and ship partial annotations:
# dask.delayed, dask.compute, distributed.comm.get_address_host.)
"""Build a sharded set on Dask, and serve lookups from Dask actors.

Needs the ``dask`` extra (``pip install ".[dask]"``); the rest of
diskhash never imports this module.  docs/guide/dask.md has the walk-through.

* ``build_store(collection, directory, shards=N)`` writes a ``ShardedStore``
  set from a Dask DataFrame (Parquet read with Arrow columns, or pandas) or
  Bag.  Every input partition is split by shard (numpy routing over the key
  buffer) into Arrow record batches, and each shard is then written by exactly one task
  (``put_many`` into a fresh directory, renamed into place when complete),
  so there is one writer per shard.  The manifest is written by the caller's
  process only after every shard task has succeeded.
* ``LookupService(client, directory)`` puts one ``ShardActor`` per shard on
  a worker that sees the shard's files; ``get_many(keys)`` routes the batch,
  calls the owning actors concurrently (one call per worker process, which
  answers for all of its shards) and returns the payloads in key order.
"""

from __future__ import annotations

import os
import pickle
import shutil
import threading
import uuid
import weakref
from collections.abc import Sequence
from types import TracebackType
from typing import Any

try:
    import dask
    import distributed
    from distributed.comm import get_address_host
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise ImportError('diskhash.dask needs Dask: the "dask" extra of diskhash-sochidx '
                      '(pip install ".[dask]" in its checkout)') from exc

from diskhash._fs import files as _files
from diskhash._index.dtypes import KEY_DTYPE, np
from diskhash._shards import arrow_answers as _answers
from diskhash._shards import manifest as _manifest
from diskhash._shards import pieces as _pieces
from diskhash._shards import routing as _routing
from diskhash._shards import sharded as _sharded
from diskhash._shards.manifest import Location, Manifest
from diskhash._shards.sharded import directory_path
from diskhash.errors import IndexClosedError, ShardBuildError, ShardMismatchError

__all__ = ["LookupService", "ShardActor", "build_store"]

#: Prefix of the task keys of a build (how they are grouped in the dashboard).
SPLIT_TASK = "diskhash-split"
WRITE_TASK = "diskhash-write-shard"
ACTOR_TASK = "diskhash-shard-actor"
#: Actor calls of at most this many keys run on the worker's event loop;
#: larger ones in a thread, so a cold-disk batch does not stall the worker.
INLINE_KEYS = 16384


# ---------------------------------------------------------------------------
# One shard, written by one task

def _worker_host() -> str | None:
    try:
        return str(get_address_host(distributed.get_worker().address))
    except ValueError:              # not on a worker (local scheduler)
        return None


def _clear_attempts(root: str, name: str) -> None:
    """Remove this shard's temp directories left by earlier (killed) attempts."""
    prefix = f".{name}."
    try:
        entries = os.listdir(root)
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.startswith(prefix) and entry.endswith(_files.TMP_SUFFIX):
            shutil.rmtree(os.path.join(root, entry), ignore_errors=True)


def _write_shard(root: str, manifest: Manifest, index: int, store_kwargs: dict[str, Any],
                 compression: Any, *pieces: Any) -> dict[str, Any]:
    """Write shard ``index`` from scratch under ``root`` and return where it is.

    The shard is built in a fresh temp directory and renamed into place only
    when complete (store saved and closed, marker written, all fsynced); a
    previous attempt's directory is removed first.  So a rerun after a
    killed worker starts clean, and a shard directory is always whole.
    """
    name = _manifest.shard_name(index)
    os.makedirs(root, exist_ok=True)
    _clear_attempts(root, name)
    final = os.path.join(root, name)
    tmp = os.path.join(root, f".{name}.{uuid.uuid4().hex}{_files.TMP_SUFFIX}")
    os.mkdir(tmp)
    try:
        store = _sharded.payload_store_class()(os.path.join(tmp, _manifest.STORE_SUBDIR), **store_kwargs)
        try:
            keys, payloads = _pieces.shard_records(pieces)
            if len(keys):   # one put_many: one index reserve, frames in 16 MiB runs
                store.put_many(keys, payloads, compression=compression)
            store.save()
            entries = len(store)
        finally:
            store.close()
        _manifest.write_shard_marker(tmp, manifest, index)
        _files.fsync_dir(tmp)
        if os.path.lexists(final):
            shutil.rmtree(final)
        os.rename(tmp, final)
        _files.fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"index": index, "path": final, "host": _worker_host(), "entries": entries}


# ---------------------------------------------------------------------------
# The build

def _spec(collection: Any, id_columns: str | Sequence[str], payload_column: str,
          id_byteorder: str) -> tuple[Any, ...]:
    import dask.bag

    if isinstance(collection, dask.bag.Bag):
        return ("bag",)
    try:
        import dask.dataframe
    except ImportError:  # pragma: no cover
        dask_df: tuple[type, ...] = ()
    else:
        dask_df = (dask.dataframe.DataFrame,)
    if not dask_df or not isinstance(collection, dask_df):
        raise TypeError(f"build_store takes a Dask DataFrame or Bag, not {type(collection).__name__}")
    cols = (id_columns,) if isinstance(id_columns, str) else tuple(id_columns)
    if not 1 <= len(cols) <= 2 or not all(isinstance(c, str) for c in cols):
        raise TypeError("id_columns must be a column name (16-byte or integer ids) "
                        "or a pair of names (low, high uint64 halves)")
    if not isinstance(payload_column, str):
        raise TypeError("payload_column must be a column name")
    if id_byteorder not in ("little", "big"):
        raise ValueError(f"id_byteorder must be 'little' or 'big', not {id_byteorder!r}")
    _pieces.check_dtypes(collection.dtypes, cols, payload_column)
    return ("frame", cols, payload_column, id_byteorder)


def _prepare_directory(directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    names = os.listdir(directory)
    if _manifest.MANIFEST_NAME in names:
        raise FileExistsError(17, "a sharded set already exists here (manifest.json); "
                              "remove it before building another", directory)
    foreign = [n for n in names if not _manifest.is_ours(n)]
    if foreign:
        raise FileExistsError(17, f"not building a sharded set in a directory holding other "
                              f"files ({', '.join(sorted(foreign)[:5])})", directory)
    for n in names:    # an earlier failed build's shards: rebuilt or dropped
        shutil.rmtree(os.path.join(directory, n), ignore_errors=True)


def _get_client(client: Any) -> Any:
    if client is not None:
        return client
    try:
        return distributed.get_client()
    except ValueError:
        return None


def build_store(collection: Any, directory: str | os.PathLike[str], shards: int, *,
                id_columns: str | Sequence[str] = "edge_id", payload_column: str = "payload",
                id_byteorder: str = "little", compression: Any = None,
                local_dir: str | None = None, client: Any = None, progress: bool = False,
                store_kwargs: dict[str, Any] | None = None) -> Manifest:
    """Build a sharded set at ``directory`` from a Dask collection; returns its manifest.

    ``collection``: a Dask Bag of ``(edge_id, bytes)`` pairs, or a Dask
    DataFrame with the id in ``id_columns`` — one column of 16-byte ids
    (``fixed_size_binary(16)`` or bytes; ``id_byteorder`` "little" as
    ``int.to_bytes(16, "little")`` and ``KEY_DTYPE``, "big" as
    ``uuid.UUID.bytes``) or of integer ids below 2**64, or a pair of uint64
    columns (low half, high half) — and the payload in ``payload_column``
    (Arrow ``binary``/``large_binary``, or ``object`` bytes).  Read Parquet
    with ``dd.read_parquet(..., dtype_backend="pyarrow")``: its Arrow
    buffers then go to the shard writers without a Python object per record.
    A missing column (``KeyError``) or a column of the wrong dtype
    (``TypeError``) is refused before any task runs.  ``shards``: how many
    shards.

    ``directory`` is where the manifest goes, and the shards too unless
    ``local_dir`` is given: then each shard is written to
    ``<local_dir>/<set id>/shard-NNNNN`` on the local disk of the worker that
    ran its task, and the manifest records that worker's host and path
    (serve such a set with ``LookupService``).  ``directory`` must be empty,
    new, or hold only an earlier failed build (which is replaced).

    ``compression`` and ``store_kwargs`` go to each shard's PayloadStore;
    ``client`` defaults to the current ``distributed`` client (without one,
    the local scheduler runs the build); ``progress=True`` shows Dask's
    progress bar (the dashboard shows the tasks in any case: groups
    ``diskhash-split`` and ``diskhash-write-shard``).

    Duplicate ids keep the payload of the last occurrence in the collection's
    partition order.  A worker killed mid-build makes Dask rerun its tasks
    (a shard is rebuilt from scratch); a task that keeps failing, or bad
    input, raises ``ShardBuildError`` (the cause chained).  In every failure
    no manifest is written, so the partial set never opens.
    """
    shards = _manifest.check_shard_count(shards)
    directory = directory_path(directory)
    spec = _spec(collection, id_columns, payload_column, id_byteorder)
    if local_dir is not None:
        local_dir = directory_path(local_dir)
    client = _get_client(client)
    if local_dir is not None and client is None:
        raise ValueError("local_dir needs a distributed Client (the shard's host is its worker's)")
    _prepare_directory(directory)
    manifest = _manifest.new_manifest(shards)
    root = directory if local_dir is None else os.path.join(local_dir, manifest.set_id)
    kwargs = dict(store_kwargs or {})
    token = manifest.set_id[:12]

    parts = collection.to_delayed()
    splits = [dask.delayed(_pieces.split, pure=True, nout=shards)(
        p, spec, manifest.seed, shards, i, dask_key_name=f"{SPLIT_TASK}-{token}-{i}")
        for i, p in enumerate(parts)]
    pieces_of = [[sp[s] for sp in splits] for s in range(shards)]
    write_args = (root, manifest, kwargs, compression)
    if client is None:
        results = _run_local(pieces_of, write_args, token, progress, directory)
    else:
        results = _run(pieces_of, write_args, token, client, progress, directory)
    results.sort(key=lambda r: r["index"])
    if [r["index"] for r in results] != list(range(shards)):
        raise ShardBuildError(directory, None, "the shard tasks did not report every shard")
    if local_dir is None:
        locations = [Location(_manifest.shard_name(r["index"])) for r in results]
    else:
        locations = [Location(r["path"], r["host"]) for r in results]
    final = Manifest(manifest.set_id, shards, manifest.seed, tuple(locations))
    if local_dir is None:
        for i in range(shards):     # every shard whole before the manifest makes it a set
            _manifest.check_shard(directory, final, i)
        _clear_temps(directory)
    _manifest.write_manifest(directory, final)
    return final


def _clear_temps(directory: str) -> None:
    for n in os.listdir(directory):
        if n.startswith(".shard-") and n.endswith(_files.TMP_SUFFIX):
            shutil.rmtree(os.path.join(directory, n), ignore_errors=True)


def _build_failed(directory: str, exc: Exception) -> ShardBuildError:
    return ShardBuildError(directory, _failed_shard(exc), f"{type(exc).__name__}: {exc}")


def _run_local(pieces_of: list[list[Any]], write_args: tuple[Any, ...], token: str,
               progress: bool, directory: str) -> list[dict[str, Any]]:
    """The build on Dask's local threaded scheduler (no distributed Client)."""
    root, manifest, kwargs, compression = write_args
    writes = [dask.delayed(_write_shard, pure=False)(
        root, manifest, s, kwargs, compression, *pieces,
        dask_key_name=f"{WRITE_TASK}-{token}-{s}") for s, pieces in enumerate(pieces_of)]
    try:
        if progress:
            from dask.diagnostics import ProgressBar

            with ProgressBar():
                return list(dask.compute(*writes, scheduler="threads"))
        return list(dask.compute(*writes, scheduler="threads"))
    except Exception as exc:
        raise _build_failed(directory, exc) from exc


def _run(pieces_of: list[list[Any]], write_args: tuple[Any, ...], token: str, client: Any,
         progress: bool, directory: str) -> list[dict[str, Any]]:
    """The build on a distributed cluster.

    The split pieces are computed as futures, then each shard's writer task
    is submitted with a preferred worker, round-robin over the workers
    (``allow_other_workers``: a lost worker's writers still run elsewhere).
    Left to data locality, Dask put 5 of 8 writers on one of 2 workers (the
    one that had run more split tasks) and stole work back only late: the
    second worker sat idle for a writer's length.
    """
    root, manifest, kwargs, compression = write_args
    shards = len(pieces_of)
    parts = len(pieces_of[0]) if shards else 0
    writes: list[Any] = []
    try:
        flat = client.compute([p for pieces in pieces_of for p in pieces])
        workers = sorted(client.scheduler_info()["workers"])
        for s in range(shards):
            where = [workers[s % len(workers)]] if workers else None
            writes.append(client.submit(
                _write_shard, root, manifest, s, kwargs, compression,
                *flat[s * parts:(s + 1) * parts], key=f"{WRITE_TASK}-{token}-{s}",
                workers=where, allow_other_workers=where is not None, pure=False))
        # Only the writers hold the pieces now: each writer's pieces are
        # released when it finishes, not kept until the whole build ends.
        del flat
        if progress:
            distributed.progress(writes)
        return list(client.gather(writes))
    except Exception as exc:
        raise _build_failed(directory, exc) from exc
    finally:
        client.cancel(writes)


def _failed_shard(exc: BaseException) -> int | None:
    text = str(exc)
    marker = f"{WRITE_TASK}-"
    at = text.find(marker)
    if at < 0:
        return None
    tail = text[at + len(marker):].split("-", 1)[-1]
    digits = "".join(ch for ch in tail[:6] if ch.isdigit())
    return int(digits) if digits else None


# ---------------------------------------------------------------------------
# Serving

#: The ShardActors living in this process, by (service token, shard index):
#: how one actor answers for the other shards its worker process serves.
_SERVING: weakref.WeakValueDictionary[tuple[str, int], ShardActor] = weakref.WeakValueDictionary()


class ShardActor:
    """One shard of a set, opened read-only on the worker that holds its files.

    Created by ``LookupService`` with ``client.submit(ShardActor, ...,
    actor=True)``; the open checks the shard's marker against the manifest.
    Read-only opens share the files safely with any other reader, so a
    worker restart simply opens the shard again.  ``service``: the token of
    the ``LookupService`` that made it; the actor registers under it in its
    process, so that ``get_group`` on a sibling can reach its shard.
    """

    def __init__(self, directory: str, manifest: Manifest, index: int,
                 store_kwargs: dict[str, Any] | None = None, service: str | None = None) -> None:
        store_dir = _manifest.check_shard(directory, manifest, index)
        self.index = index
        self.service = service
        self.closed = False
        self.store = _sharded.payload_store_class()(store_dir, readonly=True, **(store_kwargs or {}))
        if service is not None:
            _SERVING[(service, index)] = self

    async def get_many(self, keys: Any) -> bytes:
        """Payloads of ``keys`` (a ``KEY_DTYPE`` array routed to this shard), as
        one pickled ``list[bytes | None]``.

        Pickled here because Dask serialises a returned list element by
        element (a frame per payload, which dominates the cost of a lookup);
        one ``bytes`` object costs one frame.  Small batches run on the worker's event loop,
        larger ones in a thread.
        """
        if len(keys) <= INLINE_KEYS:
            found = self.store.get_many(keys)
        else:
            import anyio.to_thread

            found = await anyio.to_thread.run_sync(self.store.get_many, keys)
        return pickle.dumps(found, protocol=pickle.HIGHEST_PROTOCOL)

    def _jobs(self, keys: Any, shards: list[int], counts: list[int]) -> list[tuple[Any, Any] | None]:
        """Per shard of a group call: (its store, its keys), or None when no
        live actor of this service serves it in this process."""
        jobs: list[tuple[Any, Any] | None] = []
        start = 0
        for s, n in zip(shards, counts):
            owner = self if s == self.index else (
                _SERVING.get((self.service, s)) if self.service is not None else None)
            if owner is None or owner.closed:
                jobs.append(None)
            else:
                jobs.append((owner.store, keys[start:start + n]))
            start += n
        return jobs

    async def get_group(self, keys: Any, shards: list[int], counts: list[int]) -> bytes:
        """Payloads for several shards of this actor's worker process in one call.

        ``keys``: a ``KEY_DTYPE`` array, the keys of ``shards[0]`` (its first
        ``counts[0]`` rows), then those of ``shards[1]``, ...  Each shard is
        answered by the ``ShardActor`` that owns it in this process (this one,
        or a sibling the same ``LookupService`` started here); a shard with no
        live actor here is answered None, and the caller asks its own actor.
        Returns one pickled list, per shard a ``list[bytes | None]`` or None.
        One call per worker instead of one per shard: a Dask actor call costs
        about a millisecond of CPU on each side, more than the store's own
        work for a 10,000-key batch split over a few shards.
        """
        if len(shards) != len(counts) or sum(counts) != len(keys):
            raise ValueError(f"get_group: {len(shards)} shards, {len(counts)} counts "
                             f"for {len(keys)} keys")
        jobs = self._jobs(keys, shards, counts)

        def run() -> list[Any]:
            return [None if job is None else job[0].get_many(job[1]) for job in jobs]

        if len(keys) <= INLINE_KEYS:
            found = run()
        else:
            import anyio.to_thread

            found = await anyio.to_thread.run_sync(run)
        return pickle.dumps(found, protocol=pickle.HIGHEST_PROTOCOL)

    async def get_many_arrow(self, keys: Any) -> Any:
        """Payloads of ``keys`` as a ``pyarrow.RecordBatch`` of one
        ``large_binary`` column (null where absent).

        distributed sends a record batch as one Arrow IPC stream (its
        ``pyarrow`` serializer): the data and offsets buffers cross as they
        are, with no Python object per payload on either side.
        """
        if len(keys) <= INLINE_KEYS:
            return _answers.batch(self.store.get_many_arrow(keys))
        import anyio.to_thread

        found = await anyio.to_thread.run_sync(self.store.get_many_arrow, keys)
        return _answers.batch(found)

    async def get_group_arrow(self, keys: Any, shards: list[int], counts: list[int]) -> Any:
        """``get_group`` in Arrow: a ``pyarrow.Table`` of one ``large_binary``
        column, the payloads of every shard it answered, in ``shards``'
        order (a chunk each); the schema's metadata ``answered`` lists, per
        shard, 1 (its rows are there) or 0 (no live actor here: no rows; the
        caller asks its own actor)."""
        if len(shards) != len(counts) or sum(counts) != len(keys):
            raise ValueError(f"get_group_arrow: {len(shards)} shards, {len(counts)} counts "
                             f"for {len(keys)} keys")
        jobs = self._jobs(keys, shards, counts)

        def run() -> list[Any]:
            return [None if job is None else job[0].get_many_arrow(job[1]) for job in jobs]

        if len(keys) <= INLINE_KEYS:
            found = run()
        else:
            import anyio.to_thread

            found = await anyio.to_thread.run_sync(run)
        return _answers.table(found)

    def count(self) -> int:
        """Entries in this shard."""
        return len(self.store)

    def where(self) -> tuple[str | None, int]:
        """(host, pid) of the worker process serving this shard."""
        return _worker_host(), os.getpid()

    def close(self) -> None:
        """Close the shard (the actor is unusable afterwards)."""
        self.closed = True
        if self.service is not None and _SERVING.get((self.service, self.index)) is self:
            del _SERVING[(self.service, self.index)]
        self.store.close()

    def __del__(self) -> None:  # the worker dropped the actor: close its files
        store = getattr(self, "store", None)
        if store is not None:
            store.close()


def _lost(exc: BaseException) -> bool:
    """Whether an actor call failed because the actor's worker went away."""
    if isinstance(exc, OSError):
        return True
    if isinstance(exc, RuntimeError) and "Actor" in str(exc):
        return True
    return isinstance(exc, KeyError)


class LookupService:
    """Lookups in a sharded set through one Dask actor per shard.

    ``LookupService(client, directory)`` reads the manifest at ``directory``
    and starts one ``ShardActor`` per shard: on a worker of the shard's host
    when the manifest records one (local disks), spread over the workers
    otherwise (``directory`` must then be visible at the same path on every
    worker).  Use ``Client(direct_to_workers=True)``: otherwise every actor
    call is relayed through the scheduler.

    ``get_many(keys)`` returns the payloads (None where absent) in key order.
    It makes one actor call per worker process, not per shard: the shards
    whose actors share a process are answered by one of them
    (``ShardActor.get_group``), since a Dask actor call costs more CPU than
    the store's work on a few thousand keys.  An actor whose worker died is
    started again (its shard reopened, read-only) and the call retried once;
    ``retries`` sets how often.
    Thread-safe: calls from several threads may overlap.
    """

    def __init__(self, client: Any, directory: str | os.PathLike[str], *,
                 store_kwargs: dict[str, Any] | None = None, retries: int = 1,
                 timeout: float | None = 120.0) -> None:
        if not callable(getattr(client, "submit", None)) or not callable(
                getattr(client, "scheduler_info", None)):
            raise TypeError(f"client must be a distributed.Client, not {type(client).__name__}")
        self._client = client
        self._directory = directory_path(directory)
        self._manifest = _manifest.read_manifest(self._directory)
        self._kwargs = dict(store_kwargs or {})
        self._retries = int(retries)
        self._timeout = timeout
        self._lock = threading.Lock()
        self._generation = [0] * self._manifest.shards
        self._futures: list[Any] = [None] * self._manifest.shards
        self._actors: list[Any] = [None] * self._manifest.shards
        #: (host, pid) of the worker process of each shard's actor: the shards
        #: of one process are asked in one call (``ShardActor.get_group``).
        self._places: list[Any] = [None] * self._manifest.shards
        self._token = uuid.uuid4().hex
        self._closed = False
        workers = sorted(client.scheduler_info()["workers"])
        hosts = {get_address_host(w) for w in workers}
        for s, loc in enumerate(self._manifest.locations):
            if loc.host is not None and loc.host not in hosts:
                raise ShardMismatchError(
                    os.path.join(self._directory, _manifest.MANIFEST_NAME),
                    f"shard {s} lives on host {loc.host}, which runs no worker of this cluster "
                    f"(worker hosts: {', '.join(sorted(hosts)) or 'none'})")
        try:
            for s in range(self._manifest.shards):
                self._futures[s] = self._submit(s, workers)
            for s in range(self._manifest.shards):
                self._actors[s] = self._futures[s].result(timeout=timeout)
            wheres = [self._actors[s].where() for s in range(self._manifest.shards)]
            for s, where in enumerate(wheres):
                self._places[s] = where.result(timeout=timeout)
        except BaseException:
            self.close()
            raise

    def _submit(self, s: int, workers: list[str]) -> Any:
        host = self._manifest.locations[s].host
        if host is not None:
            where, loose = [host], False
        elif workers:
            where, loose = [workers[s % len(workers)]], True
        else:           # (distributed refuses allow_other_workers without workers=)
            where, loose = None, False
        key = f"{ACTOR_TASK}-{self._manifest.set_id[:12]}-{s}-{self._generation[s]}"
        self._generation[s] += 1
        return self._client.submit(ShardActor, self._directory, self._manifest, s, self._kwargs,
                                   self._token, actor=True, key=key, workers=where,
                                   allow_other_workers=loose, pure=False)

    def _revive(self, s: int, dead: Any) -> Any:
        """A live actor for shard ``s`` (a new one if ``dead`` is still current)."""
        with self._lock:
            if self._actors[s] is dead:
                old = self._futures[s]
                workers = sorted(self._client.scheduler_info()["workers"])
                self._futures[s] = self._submit(s, workers)
                if old is not None:
                    old.release()
                self._actors[s] = self._futures[s].result(timeout=self._timeout)
                self._places[s] = None
                try:
                    self._places[s] = self._actors[s].where().result(timeout=self._timeout)
                except Exception:   # asked on its own until it answers
                    pass
            return self._actors[s]

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def shards(self) -> int:
        return self._manifest.shards

    def actor(self, shard: int) -> Any:
        """The ``distributed.Actor`` serving ``shard`` now."""
        return self._actors[shard]

    def get_many(self, edge_ids: Any) -> list[bytes | None]:
        """The payload of each key (None where absent), in key order.

        ``edge_ids``: a numpy ``KEY_DTYPE``/unsigned array or a sequence of
        keys.  Raises ``TypeError``/``KeyRangeError`` for bad keys (before any
        call), or the actor's error (after ``retries`` restarts for a lost
        worker).
        """
        self._check_open()
        keys = _routing.key_array(edge_ids)
        calls, order, bounds = self._start(keys, arrow=False)
        out = np.empty(len(keys), dtype=object)
        for members, idx, sub, fut in calls:
            if len(members) == 1:
                found = self._result(members[0], sub, fut)
            else:
                found = self._group_result(members, order, bounds, sub, fut)
            part = np.empty(len(idx), dtype=object)
            part[:] = found
            out[idx] = part
        return out.tolist()

    def _check_open(self) -> None:
        if self._closed:
            raise IndexClosedError(f"{self._directory}: LookupService is closed")

    def _start(self, keys: Any, *, arrow: bool) -> tuple[list[Any], Any, Any]:
        """Route ``keys`` and start one call per worker process: ``(calls,
        order, bounds)``, each call ``(shards, positions, keys, future)``."""
        shards = self._manifest.shards
        sid = _routing.shards_of(keys, self._manifest.seed, shards)
        order, bounds = _routing.group_by_shard(sid, shards)
        groups: dict[Any, list[int]] = {}
        for s in range(shards):
            if bounds[s + 1] > bounds[s]:
                place = self._places[s]
                groups.setdefault(s if place is None else place, []).append(s)
        calls = []
        for members in groups.values():
            idx = np.concatenate([order[bounds[s]:bounds[s + 1]] for s in members])
            sub = keys[idx]
            lead = self._actors[members[0]]
            if len(members) == 1:
                calls.append((members, idx, sub, self._call(lead, sub, arrow)))
            else:
                counts = [int(bounds[s + 1] - bounds[s]) for s in members]
                calls.append((members, idx, sub, self._call_group(lead, sub, members, counts, arrow)))
        return calls, order, bounds

    def get_many_arrow(self, edge_ids: Any) -> Any:
        """As ``get_many``, as one ``pyarrow.LargeBinaryArray`` (null where
        absent), in key order; Arrow keys as ``PayloadStore.get_many_arrow``
        takes them.  The actors answer in Arrow (``ShardActor.get_many_arrow``,
        ``get_group_arrow``): no Python object per payload crosses, and the
        answers are put in key order here with one Arrow ``take``."""
        from diskhash._store import arrow as _arrow

        pa = _arrow.pyarrow_module()
        self._check_open()
        keys = _arrow.key_array(edge_ids) if _arrow.is_arrow(edge_ids) else _routing.key_array(edge_ids)
        calls, order, bounds = self._start(keys, arrow=True)
        where: list[Any] = []
        chunks: list[Any] = []
        for members, idx, sub, fut in calls:
            if len(members) == 1:
                chunks += self._result(members[0], sub, fut, arrow=True)
            else:
                chunks += self._group_result(members, order, bounds, sub, fut, arrow=True)
            where.append(idx)
        n = len(keys)
        if not n:
            return pa.array([], type=pa.large_binary())
        got = pa.chunked_array(chunks, type=pa.large_binary()).combine_chunks()
        positions = np.concatenate(where)
        if np.array_equal(positions, np.arange(n)):
            return got
        inverse = np.empty(n, dtype=np.int64)
        inverse[positions] = np.arange(n, dtype=np.int64)
        return got.take(pa.array(inverse))

    def _result(self, s: int, sub: Any, fut: Any, arrow: bool = False) -> Any:
        """Shard ``s``'s answer to ``fut`` (its actor's ``get_many(sub)``, or
        with ``arrow`` ``get_many_arrow(sub)``: then a list of Arrow chunks),
        restarting the actor and asking again if its worker was lost."""
        actor = self._actors[s]
        attempt = 0
        while True:
            try:
                if isinstance(fut, Exception):
                    raise fut
                res = fut.result(timeout=self._timeout)
                break
            except Exception as exc:
                if not _lost(exc) or attempt >= self._retries:
                    raise
                attempt += 1
                actor = self._revive(s, actor)
                fut = self._call(actor, sub, arrow)
        if arrow:
            return _answers.batch_chunks(res, len(sub))
        found: list[bytes | None] = pickle.loads(res)
        return found

    def _group_result(self, members: list[int], order: Any, bounds: Any, sub: Any,
                      fut: Any, arrow: bool = False) -> Any:
        """The answers of a ``get_group`` call (``get_group_arrow`` with
        ``arrow``: then a list of Arrow chunks), in ``sub``'s order; the shards
        it could not answer (no live actor in that process, a lost worker)
        are asked one by one, each through its own actor."""
        try:
            if isinstance(fut, Exception):
                raise fut
            res = fut.result(timeout=self._timeout)
            parts = _answers.table_parts(res, [int(bounds[s + 1] - bounds[s]) for s in members]) if arrow \
                else pickle.loads(res)
        except Exception as exc:
            if not _lost(exc):
                raise
            parts = [None] * len(members)
        found: list[Any] = []
        start = 0
        for s, part in zip(members, parts):
            n = int(bounds[s + 1] - bounds[s])
            if part is None:
                one = sub[start:start + n]
                part = self._result(s, one, self._call(self._actors[s], one, arrow), arrow)
            found += part
            start += n
        return found

    @staticmethod
    def _call_group(actor: Any, sub: Any, members: list[int], counts: list[int],
                    arrow: bool = False) -> Any:
        """Start ``actor.get_group(...)`` (or ``get_group_arrow``): its future,
        or the exception raised at once."""
        try:
            if arrow:
                return actor.get_group_arrow(sub, members, counts)
            return actor.get_group(sub, members, counts)
        except Exception as exc:
            return exc

    @staticmethod
    def _call(actor: Any, sub: Any, arrow: bool = False) -> Any:
        """Start ``actor.get_many(sub)`` (or ``get_many_arrow``): its future, or
        the exception raised at once (Dask raises ``RuntimeError`` here when
        the actor's worker is gone)."""
        try:
            return actor.get_many_arrow(sub) if arrow else actor.get_many(sub)
        except Exception as exc:
            return exc

    def get(self, edge_id: Any, default: Any = None) -> Any:
        """The payload of one key, or ``default``."""
        lo, hi = _routing.key_halves(edge_id)
        found = self.get_many(np.array([(lo, hi)], dtype=KEY_DTYPE))[0]
        return default if found is None else found

    def close(self) -> None:
        """Release the actors (their shards close when the workers drop them)."""
        self._closed = True
        for f in self._futures:
            if f is not None:
                try:
                    f.release()
                except Exception:
                    pass
        self._actors = [None] * self._manifest.shards

    def __enter__(self) -> LookupService:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
