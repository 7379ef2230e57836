"""The index layer: DiskHashIndex (compiled table, conversions, batch calls, locks) and its async twin."""
