"""ferdata: FER dataset readers, face backends, geometry, derive, shards and the CLI."""
__version__ = "0.1.0"
