"""Build a sharded set on Dask, and serve lookups from Dask actors.

The public home of the Dask integration (the ``dask`` extra:
``pip install ".[dask]"``; docs/guide/dask.md has the walk-through); the code lives in ``diskhash._shards.dask``
beside ``ShardedStore``.  The rest of diskhash never imports this module.
The task-key prefixes and ``INLINE_KEYS`` are re-exported to read.
"""

from diskhash._shards.dask import ACTOR_TASK as ACTOR_TASK
from diskhash._shards.dask import INLINE_KEYS as INLINE_KEYS
from diskhash._shards.dask import SPLIT_TASK as SPLIT_TASK
from diskhash._shards.dask import WRITE_TASK as WRITE_TASK
from diskhash._shards.dask import LookupService, ShardActor, build_store

__all__ = ["LookupService", "ShardActor", "build_store"]
