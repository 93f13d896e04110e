"""Shared fixtures for the face tests: real photos shipped inside pip packages, one loaded
embedded backend per session, and an ``offline`` guard (autouse in the face test files).

Photos: ``astronaut`` (skimage, 1 face), ``grace_hopper`` (matplotlib, 1 face), ``t1``
(insightface's group photo, 6 faces), ``lfw_faces`` / ``lfw_nonfaces`` (skimage's
``lfw_subset``: 100 tight 25x25 face crops, 100 non-face patches).
"""
from __future__ import annotations

import socket
from pathlib import Path

import cv2
import numpy as np
import pytest

_real_getaddrinfo = socket.getaddrinfo


def _local_only_getaddrinfo(host, *args, **kwargs):
    if host in (None, "localhost", "127.0.0.1", "::1") or (isinstance(host, str) and host.startswith("127.")):
        return _real_getaddrinfo(host, *args, **kwargs)
    raise socket.gaierror(socket.EAI_NONAME, f"name resolution blocked in tests ({host!r})")


@pytest.fixture
def offline(monkeypatch):
    """No name resolution for non-loopback hosts (the suite-wide conftest also blocks
    ``connect``), so an accidental download fails at once the way it does offline."""
    monkeypatch.setattr(socket, "getaddrinfo", _local_only_getaddrinfo)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _rgb(path: Path | str) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(path)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def package_photo_paths() -> dict[str, Path]:
    """Paths of the package-shipped photos (no download involved)."""
    import importlib.util

    import matplotlib.cbook
    import skimage

    insightface_dir = Path(importlib.util.find_spec("insightface").submodule_search_locations[0])
    return {
        "astronaut": Path(skimage.__file__).parent / "data" / "astronaut.png",
        "grace_hopper": Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)),
        "t1": insightface_dir / "data" / "images" / "t1.jpg",
    }


@pytest.fixture(scope="session")
def photo_paths() -> dict[str, Path]:
    return package_photo_paths()


@pytest.fixture(scope="session")
def photos(photo_paths) -> dict[str, np.ndarray]:
    """RGB uint8 arrays: astronaut, grace_hopper, t1 (6 faces)."""
    return {name: _rgb(p) for name, p in photo_paths.items()}


@pytest.fixture(scope="session")
def lfw() -> tuple[np.ndarray, np.ndarray]:
    """(faces, non_faces): 100 each, 25x25 grey crops as RGB uint8, upscaled x8 with a border
    so the detector sees them at a realistic size (it then finds ~97 of the faces)."""
    import skimage.data

    data = np.clip(np.rint(skimage.data.lfw_subset() * 255), 0, 255).astype(np.uint8)
    up = np.stack([cv2.copyMakeBorder(cv2.resize(x, (200, 200), interpolation=cv2.INTER_CUBIC),
                                      50, 50, 50, 50, cv2.BORDER_REPLICATE) for x in data])
    rgb = np.repeat(up[..., None], 3, axis=-1)
    return rgb[:100], rgb[100:]


@pytest.fixture(scope="session")
def embedded():
    """One loaded embedded backend for the session (dlib's predictor takes ~1 s to load)."""
    from ferdata.faces.embedded import EmbeddedBackend

    backend = EmbeddedBackend()
    backend.load()
    return backend
