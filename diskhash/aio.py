"""AsyncDiskHashIndex: the DiskHashIndex API for asyncio (uvloop too) and trio, on anyio.

The public home of the async index; the class lives in ``diskhash._index.aio``
beside the sync table (docs/guide/async.md).  ``INLINE_BATCH``, ``ITER_STEP_SLOTS``
and ``THREADS_PER_INDEX`` are its scheduling constants, re-exported to read.
"""

from diskhash._index.aio import INLINE_BATCH as INLINE_BATCH
from diskhash._index.aio import ITER_STEP_SLOTS as ITER_STEP_SLOTS
from diskhash._index.aio import THREADS_PER_INDEX as THREADS_PER_INDEX
from diskhash._index.aio import AsyncDiskHashIndex

__all__ = ["AsyncDiskHashIndex"]
