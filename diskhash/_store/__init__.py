"""The store layer: PayloadStore (log, index, recovery, compaction), codecs, compiled read/write, async twin."""
