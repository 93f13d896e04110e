"""Face backends, registered by name; heavy model imports happen on first use."""
from ferdata.faces.base import BACKENDS, Face, FaceBackend, MissingModelError, create_backend, select_face
from ferdata.faces import dataset, embedded, insightface_backend, fan, auto  # noqa: F401  (registers)

__all__ = ["BACKENDS", "Face", "FaceBackend", "MissingModelError", "create_backend", "select_face"]
