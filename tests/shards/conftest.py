"""One dask.distributed LocalCluster for the tests that need a real one.

Each cluster starts two worker processes that import dask, pandas, numpy and
diskhash: seconds of CPU.  The cluster tests of the default run
(``test_dask_build.py``, ``test_dask_grouped_lookups.py``) share this one:
one per xdist worker that runs any of them, where a cluster per module (and
per worker) was started before.  The tests that kill or restart workers
make their own."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def client():
    dask = pytest.importorskip("dask")
    distributed = pytest.importorskip("distributed")
    with dask.config.set({"dataframe.convert-string": False}):
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=":0") as cluster:
            with distributed.Client(cluster, direct_to_workers=True) as c:
                yield c
