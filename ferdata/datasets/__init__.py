"""Dataset readers, registered by name. Importing this package registers them all."""
from ferdata.datasets.base import COMMON_OPTIONS, READERS, DatasetLayoutError, DatasetReader, open_reader
from ferdata.datasets import affectnet, ckplus, expw, fer2013, folder, jaffe, rafdb, sfew  # noqa: F401  (registers)

__all__ = ["COMMON_OPTIONS", "READERS", "DatasetLayoutError", "DatasetReader", "open_reader"]
