"""ShardedStore: N PayloadStores behind one PayloadStore API, routed by key hash.

The set's layout, manifest and marker files are ``diskhash._shards.manifest``'s; the
key-to-shard function is ``diskhash._shards.routing``'s.  This module only opens
the shards and fans calls out to them.  Batch calls route a whole numpy key
array at once (no Python loop per key) and hand each shard one sub-array.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, NamedTuple

from diskhash._shards import manifest as _manifest
from diskhash._shards import routing as _routing
from diskhash._shards.manifest import Manifest
from diskhash._store import arrow as _arrow
from diskhash._store.store import PayloadStore, closed_error
from diskhash.errors import IndexClosedError, ShardMismatchError

__all__ = ["ShardedStats", "ShardedStore", "ShardAccess", "directory_path", "payload_array",
           "payload_store_class"]

_MISSING: Any = object()


def payload_store_class() -> Any:
    """The class of every shard's store, looked up at each open: the one place
    that names it (the sharded build's workers open their shards through it
    too), so a test can make every shard die mid-write."""
    return PayloadStore


#: Keys per shard whose routing an open checks (``verify()`` checks every key).
_ROUTING_SAMPLE = 8
#: Walks of that sample an open tries while other writers change the shard.
_ROUTING_TRIES = 5


def _check_routing(directory: str, manifest: Manifest, index: int, store: Any,
                   limit: int | None) -> None:
    """Raise ``ShardMismatchError`` if shard ``index`` holds a key that routes
    elsewhere: its ``store/`` directory was swapped with another shard's (the
    markers beside it cannot tell), which would make gets answer None.

    The open's sample (``limit``) is taken again when another thread or
    process changes the shard's keys under it (the walk's RuntimeError: a
    creator racing this one, writers of a set in use); under writes that
    never pause it is left out -- ``verify()`` checks every key."""
    keys: "Iterable[int]" = store
    if limit is not None:
        for _ in range(_ROUTING_TRIES):
            try:
                keys = list(itertools.islice(store, limit))
                break
            except RuntimeError:
                continue
        else:
            return      # (keys changing all the while: left to verify())
    for key in keys:
        want = _routing.shard_of(key, manifest.seed, manifest.shards)
        if want != index:
            raise ShardMismatchError(
                os.path.join(directory, _manifest.MANIFEST_NAME),
                f"shard {index} at {manifest.shard_dir(directory, index)} holds edge id "
                f"{key:#x}, which routes to shard {want}: its store directory belongs "
                f"to another shard (swapped or copied?)")


class ShardedStats(NamedTuple):
    """``ShardedStore.stats()``: totals over the shards, then each shard's own
    ``StoreStats`` (index ``i`` is shard ``i``)."""

    entries: int
    data_bytes: int
    live_bytes: int
    shards: tuple[Any, ...]


def directory_path(directory: str | os.PathLike[str]) -> str:
    if isinstance(directory, (bytes, bytearray)) or not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"directory must be a str or os.PathLike, not {type(directory).__name__}")
    path = os.fspath(directory)
    if not isinstance(path, str):
        raise TypeError("directory must be a str path, not bytes")
    if not path or "\0" in path:
        raise ValueError(f"directory {path!r} is not a valid path")
    return os.path.abspath(path)


def payload_array(payloads: Any, count: int) -> Any:
    """``payloads`` checked (bytes-like, one per key) into a numpy object array,
    so each shard's share is taken by fancy indexing, not a Python loop."""
    from diskhash._index.dtypes import np

    if isinstance(payloads, (str, bytes, bytearray, memoryview)) or not hasattr(payloads, "__len__"):
        raise TypeError(f"payloads must be a sequence of bytes-like objects, "
                        f"not {type(payloads).__name__}")
    if len(payloads) != count:
        raise ValueError(f"{count} edge_ids but {len(payloads)} payloads")
    out = np.empty(count, dtype=object)
    for i, p in enumerate(payloads):
        if isinstance(p, str) or p is None:
            raise TypeError(f"payloads[{i}] must be bytes-like, not {type(p).__name__}")
        try:
            memoryview(p).release()
        except TypeError:
            raise TypeError(f"payloads[{i}] must be bytes-like, not {type(p).__name__}") from None
        out[i] = p
    return out


class ShardedStore:
    """A set of ``shards`` PayloadStores in one directory, used as one store.

    ``ShardedStore(directory, shards=None, *, readonly=False, **store_kwargs)``

    * ``directory`` holds a set (``manifest.json`` present): it is opened,
      every shard checked against the manifest; ``shards``, if given, must
      equal the set's count.
    * otherwise, with ``shards=N`` and not ``readonly``, a new set of N empty
      shards is created, the manifest written last.  Creators in several
      processes take turns (``manifest.lock``): the first creates, the
      others open what it made.  What a creation that died part way left
      (empty shards, no manifest) is removed and the set created afresh.
    * ``store_kwargs`` (``compression``, ``timeout``, ``verify_checksums``,
      ``sync``) go to every shard's ``PayloadStore``.

    Raises ``ManifestError`` (bad manifest, or shards without one that hold
    records: an unfinished ``build_store``), ``ShardMismatchError`` (manifest and shard
    directories disagree), ``FileNotFoundError`` (no set here and nothing to
    create), and whatever a shard's ``PayloadStore`` raises on open
    (``IndexLockedError``, ``CorruptIndexError`` ...), with every shard
    already opened closed again.

    Keys route to shards by a seeded hash of the whole 128-bit id
    (``diskhash._shards.routing``).  Thread safety and durability are each shard's:
    ``save()`` saves every shard, one after the other, so a crash during it
    can leave some shards saved and others not (each consistent on its own).
    """

    def __init__(self, directory: str | os.PathLike[str], shards: int | None = None, *,
                 readonly: bool = False, **store_kwargs: Any) -> None:
        self._stores: tuple[Any, ...] = ()
        self._closed = True
        path = directory_path(directory)
        self._directory = path
        if shards is not None:
            shards = _manifest.check_shard_count(shards)
        store_cls = payload_store_class()
        if os.path.lexists(path) and not os.path.isdir(path):
            raise NotADirectoryError(20, "a sharded set is a directory; this is not one", path)
        if (not readonly and shards is not None
                and not os.path.lexists(os.path.join(path, _manifest.MANIFEST_NAME))):
            manifest = self._open_or_create(path, shards, store_cls, store_kwargs)
        else:
            try:
                manifest = _manifest.read_manifest(path)
            except FileNotFoundError:
                raise FileNotFoundError(
                    2, "no sharded set here (no manifest.json)"
                    + ("" if readonly else "; pass shards=N to create one"), path) from None
        if shards is not None and shards != manifest.shards:
            raise ShardMismatchError(os.path.join(path, _manifest.MANIFEST_NAME),
                                     f"the set has {manifest.shards} shards, "
                                     f"shards={shards} was asked for")
        self._stores = self._open(path, manifest, store_cls, readonly, store_kwargs)
        self._manifest = manifest
        self._readonly = bool(readonly)
        self._closed = False

    @classmethod
    def _open_or_create(cls, path: str, shards: int, store_cls: Any,
                        kwargs: dict[str, Any]) -> Manifest:
        """The set's manifest, creating the set first if nobody has.

        Creators take turns under the creation lock and look again once they
        hold it: the first one creates, later ones (another process, or a
        creator that lost the race) read what it wrote.  A creation that died
        part way is cleared first, if its shards hold no record."""
        os.makedirs(path, exist_ok=True)
        with _manifest.creation_lock(path):
            if os.path.lexists(os.path.join(path, _manifest.MANIFEST_NAME)):
                return _manifest.read_manifest(path)
            cls._check_no_foreign(path)
            _manifest.clear_unfinished(path, lambda d: store_cls(d, **{**kwargs, "timeout": 0.0}))
            return cls._create(path, shards, store_cls, kwargs)

    @staticmethod
    def _check_no_foreign(path: str) -> None:
        foreign = [n for n in os.listdir(path) if not _manifest.is_ours(n)]
        if foreign:
            raise FileExistsError(17, f"not creating a sharded set in a directory holding "
                                  f"other files ({', '.join(sorted(foreign)[:5])})", path)

    @staticmethod
    def _create(path: str, shards: int, store_cls: Any, kwargs: dict[str, Any]) -> Manifest:
        manifest = _manifest.new_manifest(shards)
        made: list[str] = []
        try:
            for i in range(shards):
                sdir = manifest.shard_dir(path, i)
                if not os.path.lexists(sdir):
                    made.append(sdir)
                os.makedirs(sdir, exist_ok=True)
                store = store_cls(os.path.join(sdir, _manifest.STORE_SUBDIR), **kwargs)
                try:
                    store.save()
                finally:
                    store.close()
                _manifest.write_shard_marker(sdir, manifest, i)
        except BaseException:
            # A bad argument (or a full disk) must not leave shard directories
            # without a manifest: that set would never open.  They are empty.
            for sdir in made:
                shutil.rmtree(sdir, ignore_errors=True)
            raise
        _manifest.write_manifest(path, manifest)
        return manifest

    @staticmethod
    def _open(path: str, manifest: Manifest, store_cls: Any, readonly: bool,
              kwargs: dict[str, Any]) -> tuple[Any, ...]:
        _manifest.check_no_extra_shards(path, manifest)
        dirs = [_manifest.check_shard(path, manifest, i) for i in range(manifest.shards)]
        stores: list[Any] = []
        try:
            for d in dirs:
                stores.append(store_cls(d, readonly=readonly, **kwargs))
            for i, store in enumerate(stores):
                _check_routing(path, manifest, i, store, _ROUTING_SAMPLE)
        except BaseException:
            for s in stores:
                s.close()
            raise
        return tuple(stores)

    # -- routing -----------------------------------------------------------
    def shard_of(self, edge_id: Any) -> int:
        """The index of the shard that holds (or would hold) ``edge_id``.

        Raises ``TypeError``, or ``KeyRangeError`` (a ``ValueError`` and an
        ``OverflowError``) for an int outside [0, 2**128)."""
        return _routing.shard_of(edge_id, self._manifest.seed, self._manifest.shards)

    def _store(self, edge_id: Any) -> Any:
        if not self._stores:
            self._check_open()
        return self._stores[_routing.shard_of(edge_id, self._manifest.seed, self._manifest.shards)]

    def _check_open(self) -> None:
        if self._closed or not self._stores:
            raise IndexClosedError(f"{getattr(self, '_directory', '?')}: sharded store is closed")
        if self._stores[0].closed:
            # Inherited across fork() (every shard is disabled in the child): refuse
            # before routing imports numpy, whose import lock a parent thread may
            # have held at the fork.
            raise closed_error(self._stores[0])

    def _route(self, edge_ids: Any) -> tuple[Any, Any, Any]:
        keys = _routing.key_array(edge_ids)
        sid = _routing.shards_of(keys, self._manifest.seed, self._manifest.shards)
        order, bounds = _routing.group_by_shard(sid, self._manifest.shards)
        return keys, order, bounds

    # -- single-key calls --------------------------------------------------
    def put(self, edge_id: Any, payload: Any, *, compression: Any = None) -> Any:
        """Store ``payload`` (bytes-like) under ``edge_id`` in its shard; returns
        the shard's ``PayloadMeta``.  Errors: the shard's ``put``'s."""
        return self._store(edge_id).put(edge_id, payload, compression=compression)

    def get(self, edge_id: Any, default: Any = None) -> Any:
        """The payload of ``edge_id`` (bytes), or ``default`` if absent."""
        return self._store(edge_id).get(edge_id, default)

    def __getitem__(self, edge_id: Any) -> bytes:
        """The payload of ``edge_id``; ``KeyError`` if absent."""
        payload: bytes = self._store(edge_id)[edge_id]
        return payload

    def meta(self, edge_id: Any) -> Any:
        """The ``PayloadMeta`` of ``edge_id`` in its shard, or None."""
        return self._store(edge_id).meta(edge_id)

    def payload_range(self, edge_id: Any) -> Any:
        """``(fd, offset, length)`` of an uncompressed payload in its shard's
        data file (see ``PayloadStore.payload_range``), or None."""
        return self._store(edge_id).payload_range(edge_id)

    def __setitem__(self, edge_id: Any, payload: Any) -> None:
        self.put(edge_id, payload)

    def __contains__(self, edge_id: object) -> bool:
        """Whether ``edge_id`` is stored; a bad key raises as ``PayloadStore``'s ``in`` does."""
        return edge_id in self._store(edge_id)

    def delete(self, edge_id: Any) -> bool:
        """Remove ``edge_id``; True if it was present."""
        return bool(self._store(edge_id).delete(edge_id))

    def __delitem__(self, edge_id: Any) -> None:
        del self._store(edge_id)[edge_id]

    def pop(self, edge_id: Any, default: Any = _MISSING) -> Any:
        """Remove ``edge_id`` and return its payload (``default``, or
        ``KeyError`` without one, if absent)."""
        store = self._store(edge_id)
        if default is _MISSING:
            return store.pop(edge_id)
        return store.pop(edge_id, default)

    def __len__(self) -> int:
        self._check_open()
        return sum(len(s) for s in self._stores)

    def __iter__(self) -> Iterator[int]:
        """Every key, shard after shard (int keys; order unspecified)."""
        self._check_open()
        for s in self._stores:
            yield from s

    def keys(self) -> Iterator[int]:
        return iter(self)

    # -- batch calls -------------------------------------------------------
    def put_many(self, edge_ids: Any, payloads: Sequence[Any], *, compression: Any = None) -> None:
        """Store ``payloads[i]`` under ``edge_ids[i]``, one ``put_many`` per shard.

        ``edge_ids``: a numpy ``KEY_DTYPE``/unsigned array (routed without a
        Python loop) or a sequence of keys.  Every key and payload is checked
        before any shard is written; a shard's own failure (disk full) can
        still leave earlier shards written.
        """
        self._check_open()
        if _arrow.is_arrow(edge_ids):
            edge_ids = _arrow.key_array(edge_ids)
        keys, order, bounds = self._route(edge_ids)
        if _arrow.is_arrow(payloads):
            _arrow.payload_pieces(payloads, len(keys))        # (checked whole before any shard is written)
            for s, store in enumerate(self._stores):
                if bounds[s + 1] > bounds[s]:
                    idx = order[bounds[s]:bounds[s + 1]]
                    store.put_many(keys[idx], _arrow.payload_share(payloads, idx), compression=compression)
            return
        data = payload_array(payloads, len(keys))
        for s, store in enumerate(self._stores):
            lo, hi = bounds[s], bounds[s + 1]
            if hi > lo:
                idx = order[lo:hi]
                store.put_many(keys[idx], data[idx].tolist(), compression=compression)

    def get_many(self, edge_ids: Any) -> list[bytes | None]:
        """The payload of each key (None where absent), in key order: one
        ``get_many`` per shard, results scattered back by position."""
        self._check_open()
        from diskhash._index.dtypes import np

        if _arrow.is_arrow(edge_ids):
            edge_ids = _arrow.key_array(edge_ids)
        keys, order, bounds = self._route(edge_ids)
        out = np.empty(len(keys), dtype=object)
        for s, store in enumerate(self._stores):
            lo, hi = bounds[s], bounds[s + 1]
            if hi > lo:
                idx = order[lo:hi]
                part = np.empty(hi - lo, dtype=object)
                part[:] = store.get_many(keys[idx])
                out[idx] = part
        return out.tolist()

    def get_many_arrow(self, edge_ids: Any) -> Any:
        """As ``PayloadStore.get_many_arrow``: one ``pyarrow.LargeBinaryArray``
        in key order (null where absent), one compiled fill per shard."""
        self._check_open()
        if _arrow.is_arrow(edge_ids):
            edge_ids = _arrow.key_array(edge_ids)
        keys, order, bounds = self._route(edge_ids)
        parts = []
        for s, store in enumerate(self._stores):
            if bounds[s + 1] > bounds[s]:
                idx = order[bounds[s]:bounds[s + 1]]
                parts.append((idx, store.get_many_arrow(keys[idx])))
        return _arrow.in_key_order(parts, len(keys))

    # -- whole-set calls ---------------------------------------------------
    def save(self) -> None:
        """Make every shard durable (each shard's ``save()``, in shard order)."""
        self._check_open()
        for s in self._stores:
            s.save()

    def compact(self, *, salvage: bool = False) -> None:
        """Compact every shard (``PayloadStore.compact``; ``salvage`` is passed on:
        each shard's ``last_salvage`` says what it dropped)."""
        self._check_open()
        for s in self._stores:
            s.compact(salvage=salvage)

    def rebuild_index(self, progress: Callable[[int, int], Any] | None = None, *,
                      salvage: bool = False) -> int:
        """Rebuild every shard's index from its data file (``PayloadStore.rebuild_index``);
        returns the entries indexed.  ``progress(done_bytes, total_bytes)``
        counts over the whole set; ``salvage`` goes to each shard (what a shard
        dropped: its ``last_salvage``)."""
        self._check_open()
        totals = [s.stats().data_bytes for s in self._stores] if progress is not None else []
        grand = sum(totals)
        done = 0
        entries = 0
        for i, s in enumerate(self._stores):
            if progress is None:
                entries += s.rebuild_index(salvage=salvage)
            else:
                base = done
                entries += s.rebuild_index(lambda d, _t, base=base: progress(base + d, grand),
                                           salvage=salvage)
                done += totals[i]
        return entries

    def verify(self) -> None:
        """Check the manifest and markers again, then every shard's ``verify()``;
        raises ``ShardMismatchError`` or the first shard's corruption error."""
        self._check_open()
        self._verify_layout()
        for s in self._stores:
            s.verify()

    def _verify_layout(self) -> None:
        _manifest.check_no_extra_shards(self._directory, self._manifest)
        for i in range(self._manifest.shards):
            _manifest.check_shard(self._directory, self._manifest, i)
        for i, store in enumerate(self._stores):
            _check_routing(self._directory, self._manifest, i, store, None)

    def stats(self) -> ShardedStats:
        """Totals and each shard's ``StoreStats``."""
        self._check_open()
        per = tuple(s.stats() for s in self._stores)
        return ShardedStats(sum(p.entries for p in per), sum(p.data_bytes for p in per),
                            sum(p.live_bytes for p in per), per)

    def close(self) -> None:
        """Close every shard (idempotent); later calls raise ``IndexClosedError``."""
        self._closed = True
        errors = []
        for s in self._stores:
            try:
                s.close()
            except Exception as exc:  # close the others anyway
                errors.append(exc)
        if errors:
            raise errors[0]

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def directory(self) -> str:
        return self._directory

    @property
    def readonly(self) -> bool:
        return self._readonly

    @property
    def shards(self) -> int:
        """The number of shards."""
        return self._manifest.shards

    @property
    def manifest(self) -> Manifest:
        """The set's manifest (set id, routing seed, shard locations)."""
        return self._manifest

    def __enter__(self) -> ShardedStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        manifest = getattr(self, "_manifest", None)
        if manifest is None:
            return f"<ShardedStore {getattr(self, '_directory', '?')!r} not open>"
        state = "closed" if self._closed else ("readonly" if self._readonly else "open")
        return f"<ShardedStore {self._directory!r} shards={manifest.shards} {state}>"


class ShardAccess:
    """The small interface the async twin (``AsyncShardedStore``) fans out
    through, instead of the set's private members: its shards' stores, the
    open check, the routing of a key array (keys, order, bounds) and the
    check of the set's layout (manifest, markers, each shard's keys)."""

    __slots__ = ("stores", "check_open", "route", "verify_layout")

    def __init__(self, store: ShardedStore) -> None:
        self.stores: tuple[Any, ...] = store._stores
        self.check_open: Callable[[], None] = store._check_open
        self.route: Callable[[Any], tuple[Any, Any, Any]] = store._route
        self.verify_layout: Callable[[], None] = store._verify_layout
