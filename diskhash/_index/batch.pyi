"""Stubs for diskhash/_index/batch.pyx: the numpy batch calls behind DiskHashIndex.get_many & co."""

from collections.abc import Sequence
from typing import Any, SupportsIndex

import numpy as np
from numpy.typing import NDArray

from diskhash._index.table import DiskHashIndex

# Public names for the other modules' annotations (stub-only: no runtime object).
# Keys: an integer array (ids < 2**64), a KEY_DTYPE array (np.void rows: full
# 128-bit ids) or a sequence of ints numpy turns into one.
KeyArray = NDArray[np.integer[Any]] | NDArray[np.void] | Sequence[SupportsIndex]
# get_many's rows (RESULT_DTYPE) and insert_many's records (META_DTYPE).
ResultArray = NDArray[np.void]
MetaArray = NDArray[np.void]

def prefetch_distance() -> int: ...
def set_prefetch_distance(distance: int) -> None: ...
def get_many(index: DiskHashIndex, keys: KeyArray) -> ResultArray: ...
def contains_many(index: DiskHashIndex, keys: KeyArray) -> NDArray[np.bool_]: ...
def insert_many(index: DiskHashIndex, keys: KeyArray, records: MetaArray) -> None: ...
def prepare_inserts(index: DiskHashIndex, count: int) -> None: ...
