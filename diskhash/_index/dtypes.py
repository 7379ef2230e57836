"""The numpy dtypes of the batch calls (``get_many``, ``contains_many``, ``insert_many``).

numpy is optional (``pip install ".[numpy]"``): this module is imported
only when a dtype or a batch call is first used, and raises an ``ImportError``
that says how to get numpy.  The layouts are fixed (little-endian, aligned
fields, explicit offsets) because ``_batch`` reads and writes them as C
structs; it checks them against its structs when it is imported.
"""

from __future__ import annotations

try:
    import numpy as np
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        'diskhash batch calls and dtypes need numpy: the "numpy" extra of diskhash-sochidx '
        '(pip install ".[numpy]" in its checkout)'
    ) from exc

__all__ = ["KEY_DTYPE", "RESULT_DTYPE", "META_DTYPE", "np"]

#: A full 128-bit key: ``lo`` the low 64 bits, ``hi`` the high 64 bits (16 bytes).
KEY_DTYPE = np.dtype({"names": ["lo", "hi"], "formats": ["<u8", "<u8"],
                      "offsets": [0, 8], "itemsize": 16}, align=True)

#: One row of ``get_many``: the slot's fields, zero where ``found`` is False
#: (24 bytes: found@0, compression@1, length@4, uncompressed_length@8, offset@16).
RESULT_DTYPE = np.dtype({
    "names": ["found", "offset", "length", "compression", "uncompressed_length"],
    "formats": ["?", "<u8", "<u4", "u1", "<u4"],
    "offsets": [0, 16, 4, 1, 8],
    "itemsize": 24,
}, align=True)

#: One record for ``insert_many`` (24 bytes: offset@0, length@8,
#: compression@12, uncompressed_length@16).
META_DTYPE = np.dtype({
    "names": ["offset", "length", "compression", "uncompressed_length"],
    "formats": ["<u8", "<u4", "u1", "<u4"],
    "offsets": [0, 8, 12, 16],
    "itemsize": 24,
}, align=True)
