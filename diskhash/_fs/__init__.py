"""Durable file operations (create, publish, fsync, allocate) and the sidecar lock file."""
