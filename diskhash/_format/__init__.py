"""Byte layouts, defined once: the SOCHIDX2 index file, the payload log's frame and files."""
