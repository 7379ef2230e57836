"""PayloadStore's open arguments: ``timeout=`` and ``sync=`` take what the
docs say and refuse the rest with a clear error."""

from __future__ import annotations

import pytest

from diskhash import (
    PayloadStore,
)


@pytest.mark.parametrize("timeout, exc", [(float("nan"), ValueError), (-1, ValueError),
                                          ("1", TypeError), (True, TypeError)])
def test_bad_timeouts(tmp_path, timeout, exc):
    """A hostile pass over PayloadStore found this."""
    with pytest.raises(exc):
        PayloadStore(tmp_path / "s", timeout=timeout)


def test_infinite_timeout_means_wait(tmp_path):
    """A hostile pass over PayloadStore found this."""
    with PayloadStore(tmp_path / "s", timeout=float("inf")) as s:
        s.put(1, b"x")


@pytest.mark.parametrize("sync", [float("nan"), float("inf"), 0, -5, "always", None, True])
def test_bad_sync(tmp_path, sync):
    """A hostile pass over PayloadStore found this."""
    with pytest.raises((TypeError, ValueError)):
        PayloadStore(tmp_path / "s", sync=sync)
