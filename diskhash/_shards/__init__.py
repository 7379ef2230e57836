"""The shards layer: ShardedStore and its async twin over N PayloadStores, routing, the manifest, the Dask build."""
