"""The manifest of a sharded set, and the marker file that ties each shard to it.

A sharded set is a directory::

    <directory>/manifest.json            written last, atomically: the set exists
    <directory>/shard-00000/shard.json   this shard's set id, index and shard count
    <directory>/shard-00000/store/       the shard's PayloadStore
    ...

``manifest.json`` (UTF-8 JSON, one object)::

    {"format": "diskhash-sharded-set", "version": 1,
     "set_id": "<32 hex digits>", "shards": N,
     "routing": {"hash": "fmix64-chain-v1", "seed": <u64, nonzero>},
     "locations": [{"path": "shard-00000", "host": null}, ...]}

``locations[i].path`` is relative to the set's directory, or absolute when
the shard lives elsewhere (a worker's local disk); ``host`` is the machine
that holds it (``null``: any machine that sees the path, e.g. a shared
filesystem).  The manifest is written only once every shard is complete
(temp file, fsync, rename, directory fsync), so a crash or a failed build
leaves shard directories without a manifest, which never opens.  Each
``shard.json`` repeats the set id, its index and the shard count, so a
manifest cannot silently pair with a shard of another set or another slot.

``ShardedStore(directory, shards=N)`` creates a set under ``manifest.lock``
(an exclusive ``flock``, see ``creation_lock``): concurrent creators take
turns, and each one re-reads the manifest once it holds the lock, so the
first creates and the others open what it made.  A creation that died
(SIGKILL, power loss) leaves shard directories of empty stores and no
manifest; the next creator removes them (``clear_unfinished``) and starts
again, but never removes a shard that holds a record.
"""

from __future__ import annotations

import json
import operator
import os
import re
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from diskhash._fs import files as _files
from diskhash._shards.routing import MAX_SHARDS, ROUTING_HASH
from diskhash.errors import ManifestError, ShardMismatchError

__all__ = [
    "CREATION_LOCK",
    "FORMAT",
    "MANIFEST_NAME",
    "SHARD_MARKER",
    "STORE_SUBDIR",
    "VERSION",
    "Location",
    "Manifest",
    "check_no_extra_shards",
    "check_shard",
    "clear_unfinished",
    "creation_lock",
    "is_ours",
    "new_manifest",
    "read_manifest",
    "shard_name",
    "write_manifest",
    "write_shard_marker",
]

MANIFEST_NAME = "manifest.json"
#: The lock file creators take turns on (gone again once a creation ends).
CREATION_LOCK = "manifest.lock"
SHARD_MARKER = "shard.json"
STORE_SUBDIR = "store"
FORMAT = "diskhash-sharded-set"
SHARD_FORMAT = "diskhash-shard"
VERSION = 1
#: Larger manifests are refused before parsing (a 65536-shard manifest is ~4 MiB).
MAX_MANIFEST_BYTES = 64 << 20
_SHARD_RE = re.compile(r"^shard-(\d{5,})$")
_M64 = (1 << 64) - 1


def shard_name(index: int) -> str:
    """The directory name of shard ``index`` inside a set: ``shard-00007``."""
    return f"shard-{index:05d}"


@dataclass(frozen=True)
class Location:
    """Where one shard lives: ``path`` (relative to the set, or absolute) and
    ``host`` (None: wherever the set's directory is visible)."""

    path: str
    host: str | None = None


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` says (see the module docstring for the format)."""

    set_id: str
    shards: int
    seed: int
    locations: tuple[Location, ...] = field(default=())

    def shard_dir(self, directory: str, index: int) -> str:
        """The shard container directory of shard ``index`` on this machine."""
        path = self.locations[index].path
        return path if os.path.isabs(path) else os.path.join(directory, path)

    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT, "version": VERSION, "set_id": self.set_id,
            "shards": self.shards,
            "routing": {"hash": ROUTING_HASH, "seed": self.seed},
            "locations": [{"path": loc.path, "host": loc.host} for loc in self.locations],
        }, indent=1) + "\n"


def check_shard_count(shards: object) -> int:
    """``shards`` as an int in [1, MAX_SHARDS]; ``TypeError``/``ValueError`` otherwise."""
    if isinstance(shards, bool):
        raise TypeError("shards must be an int, not bool")
    try:
        count = operator.index(shards)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"shards must be an int, not {type(shards).__name__}") from None
    if not 1 <= count <= MAX_SHARDS:
        raise ValueError(f"shards must be in [1, {MAX_SHARDS}], got {count}")
    return count


def new_seed() -> int:
    """A routing seed, drawn on its own (never a shard's table seed)."""
    return _files.new_seed()


def new_manifest(shards: int, locations: list[Location] | None = None,
                 seed: int | None = None, set_id: str | None = None) -> Manifest:
    """A fresh manifest: new set id, new routing seed, shards at ``shard-NNNNN``."""
    shards = check_shard_count(shards)
    if locations is None:
        locations = [Location(shard_name(i)) for i in range(shards)]
    if len(locations) != shards:
        raise ValueError(f"{len(locations)} locations for {shards} shards")
    return Manifest(set_id or uuid.uuid4().hex, shards, seed or new_seed(), tuple(locations))


def _write_json_atomic(path: str, text: str) -> None:
    tmp = _files.temp_path(path, "create")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        data = text.encode("utf-8")
        while data:
            data = data[os.write(fd, data):]
        _files.publish(fd, tmp, path)
    except BaseException:
        os.close(fd)
        _files.discard_temp(tmp)
        raise
    os.close(fd)


def write_manifest(directory: str, manifest: Manifest) -> str:
    """Write ``manifest.json`` durably and atomically (the last step of a build);
    returns its path.  Raises ``OSError`` with the old manifest (if any) intact."""
    path = os.path.join(directory, MANIFEST_NAME)
    _write_json_atomic(path, manifest.to_json())
    return path


def is_ours(name: str) -> bool:
    """Whether a directory entry is one a sharded set creates (shards, manifest, temps)."""
    return (name in (MANIFEST_NAME, CREATION_LOCK) or bool(_SHARD_RE.match(name))
            or (name.startswith((f".{MANIFEST_NAME}.", ".shard-")) and name.endswith(_files.TMP_SUFFIX)))


@contextmanager
def creation_lock(directory: str) -> Iterator[None]:
    """Hold the set's creation lock (``<directory>/manifest.lock``) for the block.

    An exclusive ``flock`` on a lock file, waited for as long as the creator
    ahead takes (a creator that dies releases it with its descriptor).  On
    the way out the holder unlinks the file before unlocking; a process that
    was waiting then finds that the inode it locked is no longer at the path
    and locks the new file instead (``_files.IndexLock``), so no lock file
    is left behind and two holders never overlap.
    """
    lock = _files.IndexLock(os.path.join(directory, "manifest"), True, None,
                            name=os.path.join(directory, CREATION_LOCK))
    try:
        yield
    finally:
        lock.discard_file()


def _store_is_empty(store_dir: str, open_store: Callable[[str], Any]) -> bool:
    """Whether the PayloadStore at ``store_dir`` holds no live record.

    A store whose own MANIFEST was never written never accepted a put (its
    creation did not finish), so it is empty if its data files hold nothing
    past their header; one with a MANIFEST is opened and counted."""
    if not os.path.isdir(store_dir):
        return True
    from diskhash._format import payload as pfmt

    if not os.path.lexists(os.path.join(store_dir, pfmt.MANIFEST_NAME)):
        return all(os.lstat(os.path.join(store_dir, n)).st_size <= pfmt.DATA_HEADER_SIZE
                   for n in os.listdir(store_dir) if n.startswith("data-"))
    store = open_store(store_dir)
    try:
        return len(store) == 0
    finally:
        store.close()


def clear_unfinished(directory: str, open_store: Callable[[str], Any]) -> list[str]:
    """Remove what an interrupted creation left in ``directory`` (no manifest):
    shard directories (and their temp twins) whose stores hold no record,
    and manifest temp files.  Call it holding ``creation_lock``.  Returns the
    names removed.

    Raises ``ManifestError`` naming a shard that holds records, or that
    cannot be opened to find out (``open_store``'s error chained), before
    anything is removed: such a directory is an unfinished ``build_store``
    (build it again) or damage, never something to delete silently.
    """
    names = sorted(n for n in os.listdir(directory) if is_ours(n)
                   and n not in (MANIFEST_NAME, CREATION_LOCK))
    for n in names:
        path = os.path.join(directory, n)
        if os.path.islink(path) or not os.path.isdir(path):
            if n.endswith(_files.TMP_SUFFIX) and not os.path.islink(path):
                continue        # a manifest or marker temp file
            raise ManifestError(directory, f"shard directories but no manifest.json, and "
                                f"{path} is not a shard directory; not removing it")
        store_dir = os.path.join(path, STORE_SUBDIR)
        try:
            empty = _store_is_empty(store_dir, open_store)
        except Exception as exc:
            raise ManifestError(directory, f"shard directories but no manifest.json, and "
                                f"{store_dir} cannot be opened to check that it holds no "
                                f"record ({exc}); not removing it") from exc
        if not empty:
            raise ManifestError(directory, f"shard directories but no manifest.json, and "
                                f"{store_dir} holds records: an unfinished build_store "
                                f"(build the set again with build_store, which replaces it) "
                                f"or damage; nothing was removed")
    for n in names:
        path = os.path.join(directory, n)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    if names:
        _files.fsync_dir(directory)
    return names


def _load_json(path: str, what: str, error: type) -> dict[str, Any]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise error(path, f"cannot open the {what}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(path, f"the {what} is not a regular file")
        if st.st_size > MAX_MANIFEST_BYTES:
            raise error(path, f"the {what} is {st.st_size} bytes, larger than any valid one")
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError as exc:
        raise error(path, f"cannot read the {what}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    try:
        doc = json.loads(b"".join(chunks).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise error(path, f"the {what} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise error(path, f"the {what} is not a JSON object")
    return doc


def _is_int(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def read_manifest(directory: str) -> Manifest:
    """Parse and check ``<directory>/manifest.json``.

    Raises ``ManifestError`` listing every defect (unknown format or version,
    bad shard count, seed or locations); for a directory that holds shard
    directories but no manifest (an unfinished build) it says so.
    ``FileNotFoundError`` if there is neither (not a sharded set).
    """
    path = os.path.join(directory, MANIFEST_NAME)
    try:
        doc = _load_json(path, "manifest", ManifestError)
    except FileNotFoundError:
        if os.path.isdir(directory) and any(is_ours(n) for n in os.listdir(directory)):
            raise ManifestError(directory, "shard directories but no manifest.json: an "
                                "unfinished or failed build (or a creation still running); "
                                "ShardedStore(directory, shards=N) finishes an interrupted "
                                "creation of empty shards, build_store replaces a failed "
                                "build") from None
        raise FileNotFoundError(2, "no sharded set here (no manifest.json)", path) from None
    defects = []
    if doc.get("format") != FORMAT:
        defects.append(f"format is {doc.get('format')!r}, expected {FORMAT!r}")
    if doc.get("version") != VERSION:
        defects.append(f"version is {doc.get('version')!r}; this diskhash reads version {VERSION}")
    if defects:
        raise ManifestError(path, defects)
    set_id = doc.get("set_id")
    if not isinstance(set_id, str) or not re.fullmatch(r"[0-9a-f]{32}", set_id):
        defects.append(f"set_id {set_id!r} is not 32 lowercase hex digits")
    shards = doc.get("shards")
    if not _is_int(shards) or not 1 <= shards <= MAX_SHARDS:
        defects.append(f"shards {shards!r} is not an int in [1, {MAX_SHARDS}]")
    routing = doc.get("routing")
    seed = None
    if not isinstance(routing, dict):
        defects.append("routing is missing or not an object")
    else:
        if routing.get("hash") != ROUTING_HASH:
            defects.append(f"routing hash {routing.get('hash')!r} is unknown "
                           f"(this diskhash routes with {ROUTING_HASH!r})")
        seed = routing.get("seed")
        if not _is_int(seed) or not 0 < seed <= _M64:
            defects.append(f"routing seed {seed!r} is not a nonzero u64")
    locations = doc.get("locations")
    locs: list[Location] = []
    if not isinstance(locations, list):
        defects.append("locations is missing or not a list")
    else:
        if _is_int(shards) and len(locations) != shards:
            defects.append(f"{len(locations)} locations for {shards} shards")
        for i, loc in enumerate(locations):
            if (not isinstance(loc, dict) or not isinstance(loc.get("path"), str)
                    or not loc["path"] or "\0" in loc["path"]
                    or not (loc.get("host") is None or isinstance(loc.get("host"), str))):
                defects.append(f"locations[{i}] is not {{\"path\": non-empty str, \"host\": str or null}}")
                continue
            p = loc["path"]
            if not os.path.isabs(p) and (os.path.normpath(p).startswith("..") or p.startswith("~")):
                defects.append(f"locations[{i}] path {p!r} leaves the set's directory")
                continue
            locs.append(Location(p, loc.get("host")))
        paths = [os.path.normpath(loc.path) for loc in locs]
        if len(set(paths)) != len(paths):
            defects.append("two shards share one location")
    if defects:
        raise ManifestError(path, defects)
    return Manifest(set_id, shards, seed, tuple(locs))  # type: ignore[arg-type]


def write_shard_marker(shard_dir: str, manifest: Manifest, index: int) -> None:
    """Durably record in ``shard_dir`` which set and slot it belongs to."""
    text = json.dumps({"format": SHARD_FORMAT, "version": VERSION, "set_id": manifest.set_id,
                       "index": index, "shards": manifest.shards}) + "\n"
    _write_json_atomic(os.path.join(shard_dir, SHARD_MARKER), text)


def check_shard(directory: str, manifest: Manifest, index: int) -> str:
    """The PayloadStore directory of shard ``index``, after checking its marker.

    ``directory`` is the set's directory (relative locations resolve against
    it).  Raises ``ShardMismatchError`` if the shard directory is missing or
    its ``shard.json`` names another set, index or shard count.
    """
    sdir = manifest.shard_dir(directory, index)
    mpath = os.path.join(directory, MANIFEST_NAME)
    host = manifest.locations[index].host
    where = f" (host {host})" if host else ""
    marker = os.path.join(sdir, SHARD_MARKER)
    try:
        doc = _load_json(marker, "shard marker", ShardMismatchError)
    except FileNotFoundError:
        what = "shard directory" if not os.path.isdir(sdir) else "shard marker shard.json in"
        raise ShardMismatchError(mpath, f"shard {index}: {what} {sdir}{where} is missing") from None
    expect = {"format": SHARD_FORMAT, "version": VERSION, "set_id": manifest.set_id,
              "index": index, "shards": manifest.shards}
    wrong = [f"{k} is {doc.get(k)!r}, the manifest says {v!r}"
             for k, v in expect.items() if doc.get(k) != v]
    if wrong:
        raise ShardMismatchError(mpath, [f"shard {index} at {sdir}{where}: {w}" for w in wrong])
    store = os.path.join(sdir, STORE_SUBDIR)
    if not os.path.isdir(store):
        raise ShardMismatchError(mpath, f"shard {index}: store directory {store}{where} is missing")
    return store


def check_no_extra_shards(directory: str, manifest: Manifest) -> None:
    """``ShardMismatchError`` if ``directory`` holds a ``shard-NNNNN`` the
    manifest does not list (a set built with more shards, then shrunk)."""
    listed = {os.path.normpath(loc.path) for loc in manifest.locations if not os.path.isabs(loc.path)}
    extra = sorted(n for n in os.listdir(directory)
                   if _SHARD_RE.match(n) and n not in listed)
    if extra:
        raise ShardMismatchError(os.path.join(directory, MANIFEST_NAME),
                                 f"shard directories not in the manifest: {', '.join(extra[:10])}")
